"""Bayesian online change-point detection (Adams & MacKay 2007) per user, one event at a time.

Plain numpy/scipy, so the service and the offline evaluation run the very same code: the batch
:meth:`BocpdDetector.run` is a loop over :meth:`BocpdDetector.step`.

Model. A user's history is cut into segments (runs) of constant interests; a new run starts
before any event with the constant hazard ``H = 1 / hazard_lambda`` (the first event always
starts one). Within a run, every channel is an exchangeable conjugate model, so the predictive
probability of the next event given the run's earlier events is closed-form:

- ``topics``: Dirichlet-multinomial over ``n_topics`` topics (MovieLens genres), prior
  ``topic_strength * topic_base``. An event with several topics is counted fractionally
  (``1/len`` to each, as :func:`app.domain.drift.topic_weights` does) and scored by the mean of
  the per-topic predictive probabilities; an event with no topic leaves this channel out.
- ``vector``: ``vector_dim`` independent Normal-Gamma columns (Student-t predictive), e.g. a few
  principal components of the item embedding, scaled by the caller to about unit variance.
- ``value``: a scalar such as the rating, Normal-Gamma; may be missing.
- ``gap``: ``log1p`` of the seconds since the user's previous event, Normal-Gamma; missing for
  the first event.

A missing observation has likelihood 1 for its channel and leaves its statistics alone.

Run length. After event ``t`` (0-based) the run length ``r_t`` is the number of events of the
current run *before* ``t``: the run started at event ``t - r_t`` (``r_t = 0``: the interests
changed at ``t``). The posterior over ``r_t`` is kept for ``r = 0 .. max_run - 1``. Mass that
would grow past the cap is **merged** into the last bin, whose statistics are those of the last
``max_run`` events (a sliding window), so the "no change for a long time" hypothesis stays
alive on long histories instead of being pruned away. While ``t < max_run`` nothing is merged
and the posterior is exact. Because the statistics of bin ``r`` are always those of events
``t - r .. t`` (whatever the posterior), the state also gives the topic mix of any window of the
last ``max_run`` events (:meth:`BocpdState.window_topics`), which the kind classifier reads.

Alarm statistic after event ``t``: the log-odds that the current run started between
``min_age`` and ``max_age`` events ago, ``log P(min_age <= r_t <= max_age) - log P(otherwise)``
(clipped to +-``LOG_ODDS_CLIP``). A change right at ``t`` cannot be told from an outlier yet,
hence ``min_age``; a run much older than ``max_age`` was already reported, or never will be.
The located change is ``t - argmax_{min_age <= r <= max_age} P(r_t = r)``.
Cost per event: O(max_run x (n_topics + channel columns)), whatever the catalogue size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.special import gammaln

from app.domain.drift import COOLDOWN, MIN_EVENTS, alarm_indices

BocpdKind = Literal["abrupt", "gradual", "recurring"]
KINDS: tuple[BocpdKind, ...] = ("abrupt", "gradual", "recurring")  # code = position

LOG_ODDS_CLIP = 100.0  # keeps traces finite (JSON) when a range holds no mass yet


@dataclass(frozen=True, slots=True)
class BocpdConfig:
    """Hyper-parameters (JSON-serialisable: stored in a model bundle).

    Normal-Gamma priors are (mu, kappa, alpha, beta): prior mean, its pseudo-count, and the
    Gamma shape/rate on the precision (prior variance guess ``beta / alpha``).
    """

    hazard_lambda: float = 100.0  # expected run length in events (hazard 1/lambda)
    max_run: int = 200  # run-length posterior bins (cap R)
    min_age: int = 5  # alarm: the run started at least this many events ago ...
    max_age: int = 20  # ... and at most this many
    # topics: Dirichlet-multinomial
    use_topics: bool = True
    n_topics: int = 0
    topic_strength: float = 2.0  # total prior concentration
    topic_base: tuple[float, ...] | None = None  # prior mean mix (None: uniform)
    # vector: independent Normal-Gamma per column (caller-scaled to about unit variance)
    use_vector: bool = False
    vector_dim: int = 0
    vector_prior: tuple[float, float, float, float] = (0.0, 0.5, 2.0, 1.0)
    # value (rating)
    use_value: bool = False
    value_prior: tuple[float, float, float, float] = (3.5, 0.5, 2.0, 1.0)
    # log1p(gap in seconds)
    use_gap: bool = False
    gap_prior: tuple[float, float, float, float] = (5.0, 0.1, 1.0, 10.0)

    def __post_init__(self) -> None:
        if self.max_run < 2 or not 0 <= self.min_age <= self.max_age:
            raise ValueError("need max_run >= 2 and 0 <= min_age <= max_age")
        if self.hazard_lambda <= 1.0:
            raise ValueError("hazard_lambda must be above 1")
        if self.use_topics and self.n_topics <= 0:
            raise ValueError("the topics channel needs n_topics > 0")
        if self.topic_base is not None and len(self.topic_base) != self.n_topics:
            raise ValueError("topic_base must have n_topics entries")
        if self.use_vector and self.vector_dim <= 0:
            raise ValueError("the vector channel needs vector_dim > 0")

    @property
    def n_normal(self) -> int:
        """Normal-Gamma columns: the vector's, then the value's, then the gap's."""
        return (self.vector_dim if self.use_vector else 0) + int(self.use_value) + int(
            self.use_gap)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BocpdConfig:
        values = dict(data)
        for key in ("vector_prior", "value_prior", "gap_prior"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        if values.get("topic_base") is not None:
            values["topic_base"] = tuple(float(v) for v in values["topic_base"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Observation:
    """One event: its topic ids, item vector (float[vector_dim]), value, and seconds since the
    user's previous event. ``None`` (or NaN) = missing for that channel."""

    topics: tuple[int, ...] = ()
    vector: np.ndarray | None = None
    value: float | None = None
    gap_s: float | None = None


@dataclass(frozen=True, slots=True)
class BocpdState:
    """A user's detector state after ``t`` events. Never mutated: :meth:`BocpdDetector.step`
    returns a new one, so holding on to an old state (or sharing it) is safe.

    ``log_post``: float[L] normalised log P(r = 0 .. L-1 | events so far), L = min(t, max_run).
    ``topic_counts``: float[L, K] fractional topic counts of the window of bin r (events
    ``t-1-r .. t-1``). ``ng_n``, ``ng_mu``, ``ng_beta``: float[L, D] per Normal-Gamma column,
    the window's observed count and posterior mean and rate.
    """

    t: int
    log_post: np.ndarray
    topic_counts: np.ndarray
    ng_n: np.ndarray
    ng_mu: np.ndarray
    ng_beta: np.ndarray
    log_evidence: float = 0.0

    @property
    def nbytes(self) -> int:
        """Approximate memory held by the state's arrays."""
        return int(sum(a.nbytes for a in (self.log_post, self.topic_counts, self.ng_n,
                                          self.ng_mu, self.ng_beta))) + 64

    def run_length_posterior(self) -> np.ndarray:
        """float[L]: P(r = 0 .. L-1) after the last event."""
        return np.exp(self.log_post)

    def window_topics(self, start: int, stop: int) -> np.ndarray | None:
        """Topic mix (float[K], sums to 1; zeros if no topic) of events ``[start, stop)``
        (absolute 0-based indices), or None when the window is not within the kept ones."""
        last = self.t - 1
        length = len(self.log_post)
        if not 0 <= start < stop <= self.t or last - start >= length:
            return None
        counts = self.topic_counts[last - start].copy()
        if stop <= last:
            counts -= self.topic_counts[last - stop]
        counts = np.maximum(counts, 0.0)
        total = counts.sum()
        return counts / total if total > 0 else counts


@dataclass(frozen=True, slots=True)
class StepOutput:
    """Per-event outputs. ``index``: the event's 0-based position in the user's history."""

    index: int
    log_odds: float  # alarm statistic (see module doc)
    prob: float  # sigmoid(log_odds), for callers that expect a probability
    change_index: int  # likeliest start of a run aged min_age..max_age (the located change)
    log_pred: float  # log predictive probability of the event (sum over run lengths)
    p_change_now: float  # P(r_t = 0): the event starts a new run


@dataclass(frozen=True, slots=True)
class BocpdTrace:
    """A whole history's outputs (float[L] / int[L]) and the final state."""

    log_odds: np.ndarray
    prob: np.ndarray
    change_index: np.ndarray
    log_pred: np.ndarray
    state: BocpdState


@dataclass(frozen=True, slots=True)
class BocpdAlarm:
    """An alarm raised at event ``index``, locating the change at ``change_index``."""

    index: int
    change_index: int
    score: float
    kind: BocpdKind | None = None


@dataclass(frozen=True, slots=True)
class BucketThresholds:
    """One alarm threshold on the log-odds per history-length bucket: ``values[i]`` applies to
    events with ``edges[i-1] <= index < edges[i]`` (a single threshold over-fires on short
    histories, whose run-length posterior is noisier)."""

    edges: tuple[int, ...] = ()
    values: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        if len(self.values) != len(self.edges) + 1:
            raise ValueError("need one value per bucket (len(edges) + 1)")

    def per_event(self, length: int) -> np.ndarray:
        """float[length]: the threshold that applies at each event index."""
        bucket = np.searchsorted(np.asarray(self.edges, dtype=np.int64),
                                 np.arange(length), side="right")
        return np.asarray(self.values, dtype=np.float64)[bucket]

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "values": list(self.values)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BucketThresholds:
        return cls(tuple(int(e) for e in data.get("edges", ())),
                   tuple(float(v) for v in data.get("values", (0.0,))))


def _logsumexp(values: np.ndarray) -> float:
    """log(sum(exp(values))) of a small 1-D array (scipy's costs more than the whole step)."""
    top = float(values.max())
    if not math.isfinite(top):
        return top
    return top + math.log(float(np.exp(values - top).sum()))


@dataclass(frozen=True, slots=True)
class _TopicRow:
    """How one event's topic ids enter the topics channel: their columns, their prior
    concentrations (float[1, m]) and the count each gets."""

    index: np.ndarray
    alpha: np.ndarray
    share: float


# What a Normal-Gamma column's predictive and update read that its count alone sets (the
# rows of BocpdDetector._count_table, in this order).
_NG_TERMS = ("kappa", "kappa_1", "alpha_kappa", "df", "pi_df", "half_alpha", "log_gamma",
             "two_kappa_1")
_TOPIC_ROWS_KEPT = 65_536  # distinct topic tuples remembered per detector
_MISSING = object()


class BocpdDetector:
    """BOCPD with the channels of a :class:`BocpdConfig`; holds only the priors."""

    def __init__(self, config: BocpdConfig) -> None:
        self.config = config
        self.log_h = math.log(1.0 / config.hazard_lambda)
        self.log_1mh = math.log1p(-1.0 / config.hazard_lambda)
        k = config.n_topics if config.use_topics else 0
        base = (np.full(k, 1.0 / max(k, 1)) if config.topic_base is None
                else np.asarray(config.topic_base, dtype=np.float64) / sum(config.topic_base))
        self.topic_alpha = config.topic_strength * base  # float[K]
        self.topic_total = float(self.topic_alpha.sum())
        priors: list[tuple[float, float, float, float]] = []
        if config.use_vector:
            priors += [config.vector_prior] * config.vector_dim
        if config.use_value:
            priors.append(config.value_prior)
        if config.use_gap:
            priors.append(config.gap_prior)
        table = np.asarray(priors, dtype=np.float64).reshape(-1, 4)
        self.mu0, self.kappa0, self.alpha0, self.beta0 = (table[:, i].copy() for i in range(4))
        self._columns = np.arange(len(self.mu0))
        self._by_count = self._count_table(config.max_run + 1)
        self._topic_rows: dict[tuple[int, ...], _TopicRow | None] = {}

    def _count_table(self, size: int) -> np.ndarray:
        """float[NG_TERMS, size, D]: what a Normal-Gamma column's predictive and update read
        that depends on its observed count n alone (kappa, alpha and the log-gamma ratio),
        for n = 0 .. size - 1. Each entry is the expression the per-row formula evaluates, so
        a row reads the same float from here as it would compute (the counts are whole
        numbers); gammaln over every row and column was a large share of a step."""
        n = np.arange(size, dtype=np.float64)[:, None]
        kappa = self.kappa0[None, :] + n
        alpha = self.alpha0[None, :] + 0.5 * n
        df = 2.0 * alpha
        terms = {"kappa": kappa, "kappa_1": kappa + 1.0, "alpha_kappa": alpha * kappa,
                 "df": df, "pi_df": np.pi * df, "half_alpha": alpha + 0.5,
                 "log_gamma": gammaln(alpha + 0.5) - gammaln(alpha),
                 "two_kappa_1": 2.0 * (kappa + 1.0)}
        assert tuple(terms) == _NG_TERMS
        return np.ascontiguousarray(np.stack(list(terms.values())))

    def _topic_row(self, topics: tuple[int, ...]) -> _TopicRow | None:
        """The topics channel's reading of an event's topic ids (None: no topic counts),
        remembered per distinct tuple of ids (a catalogue has few)."""
        entry = self._topic_rows.get(topics, _MISSING)
        if entry is not _MISSING:
            return entry  # type: ignore[return-value]
        k = len(self.topic_alpha)
        kept = [i for i in topics if 0 <= i < k] if k else []
        row = None
        if kept:
            index = np.asarray(kept, dtype=np.int64)
            row = _TopicRow(index, self.topic_alpha[index][None, :], 1.0 / len(kept))
        if len(self._topic_rows) < _TOPIC_ROWS_KEPT:
            self._topic_rows[topics] = row
        return row

    def initial_state(self) -> BocpdState:
        """The state before a user's first event."""
        k, d = len(self.topic_alpha), len(self.mu0)
        return BocpdState(0, np.zeros(0), np.zeros((0, k)), np.zeros((0, d)),
                          np.zeros((0, d)), np.zeros((0, d)))

    def normal_values(self, obs: Observation) -> np.ndarray:
        """float[D]: the event's Normal-Gamma column values, NaN where missing."""
        config = self.config
        parts: list[np.ndarray] = []
        if config.use_vector:
            vector = (np.full(config.vector_dim, np.nan) if obs.vector is None
                      else np.asarray(obs.vector, dtype=np.float64).reshape(-1))
            if len(vector) != config.vector_dim:
                raise ValueError(f"vector has {len(vector)} values, not {config.vector_dim}")
            parts.append(vector)
        if config.use_value:
            parts.append(np.array([np.nan if obs.value is None else float(obs.value)]))
        if config.use_gap:
            gap = np.nan if obs.gap_s is None else math.log1p(max(float(obs.gap_s), 0.0))
            parts.append(np.array([gap]))
        return np.concatenate(parts) if parts else np.zeros(0)

    def normal_matrix(self, n: int, vectors: np.ndarray | None = None,
                      values: Sequence[float | None] | None = None,
                      gaps: Sequence[float | None] | None = None) -> np.ndarray:
        """float[n, D]: :meth:`normal_values` of n events at once, from their vectors
        (float[n, vector_dim]; None: missing), values and seconds since the previous event
        (None, or a None entry: missing)."""
        config = self.config
        out = np.empty((n, len(self.mu0)))
        col = 0
        if config.use_vector:
            col = config.vector_dim
            if vectors is None:
                out[:, :col] = np.nan
            else:
                vectors = np.asarray(vectors, dtype=np.float64).reshape(n, -1)
                if vectors.shape[1] != col:
                    raise ValueError(f"vectors have {vectors.shape[1]} values, not {col}")
                out[:, :col] = vectors
        if config.use_value:
            out[:, col] = (np.nan if values is None else
                           [np.nan if v is None else float(v) for v in values])
            col += 1
        if config.use_gap:
            out[:, col] = (np.nan if gaps is None else
                           [np.nan if g is None else math.log1p(max(float(g), 0.0))
                            for g in gaps])
        return out

    def step(self, state: BocpdState, obs: Observation) -> tuple[BocpdState, StepOutput]:
        """Take one event; return the new state and the event's outputs (state unchanged).

        Hypothesis ``j`` of the new posterior is ``r_t = j``: ``j = 0`` scores the event under
        the prior (a change at it), ``j >= 1`` under the statistics of old bin ``j - 1``.
        """
        return self.step_values(state, obs.topics, self.normal_values(obs))

    def step_values(self, state: BocpdState, topics: tuple[int, ...], x: np.ndarray
                    ) -> tuple[BocpdState, StepOutput]:
        """:meth:`step` of an event given as its topic ids and its Normal-Gamma column values
        (float[D], NaN where missing: :meth:`normal_values`)."""
        config = self.config
        # Statistics each hypothesis predicts from: the prior row, then the old bins.
        counts = np.concatenate([np.zeros((1, len(self.topic_alpha))), state.topic_counts])
        n = np.concatenate([np.zeros((1, len(self.mu0))), state.ng_n])
        mu = np.concatenate([self.mu0[None, :], state.ng_mu])
        beta = np.concatenate([self.beta0[None, :], state.ng_beta])
        topic = self._topic_row(topics)
        log_pred = None
        if topic is not None:
            total = self.topic_total + counts.sum(axis=1, keepdims=True)
            probs = (topic.alpha + counts[:, topic.index]) / total
            log_pred = np.log(probs.mean(axis=1))
        seen = ~np.isnan(x)
        everything = bool(seen.all())
        if everything or seen.any():
            cols = self._columns if everything else np.flatnonzero(seen)
            # Gathered by column index (as a subset of the columns is), each array is laid
            # out column by column, and so is the sum below: its order of additions, and so
            # its last bits, depend on that layout.
            counted = n[:, cols]
            ng = self._by_count[:, counted.astype(np.intp), cols]
            kappa, kappa_1, alpha_kappa, df, pi_df, half_alpha, log_gamma, two_kappa_1 = ng
            delta = x[cols] - mu[:, cols]
            square = delta ** 2
            scale2 = beta[:, cols] * kappa_1 / alpha_kappa
            terms = np.empty(counted.shape, order="F")
            np.subtract(log_gamma - 0.5 * np.log(pi_df * scale2),
                        half_alpha * np.log1p(square / (df * scale2)), out=terms)
            student = terms.sum(axis=1)
            log_pred = student if log_pred is None else log_pred + student
            # statistics after the event, for every hypothesis
            if everything:
                beta += kappa * square / two_kappa_1
                mu += delta / kappa_1
                n += 1.0
            else:
                beta[:, cols] += kappa * square / two_kappa_1
                mu[:, cols] += delta / kappa_1
                n[:, cols] += 1.0
        if log_pred is None:
            log_pred = np.zeros(len(counts))
        if topic is not None:
            counts[:, topic.index] += topic.share
        # Joint log mass of each hypothesis with the event.
        if state.t == 0:
            joint = log_pred[:1].copy()  # the first event always starts a run
        else:
            joint = np.empty(len(log_pred))
            joint[0] = self.log_h + log_pred[0]  # old posterior sums to one
            joint[1:] = self.log_1mh + state.log_post + log_pred[1:]
        if len(joint) > config.max_run:  # merge the overflow into the last bin
            cap = config.max_run
            joint[cap - 1] = np.logaddexp(joint[cap - 1], joint[cap])
            joint, counts, n, mu, beta = (a[:cap] for a in (joint, counts, n, mu, beta))
        evidence = _logsumexp(joint)
        post = joint - evidence
        new_state = BocpdState(state.t + 1, post, counts, n, mu, beta,
                               state.log_evidence + evidence)
        log_odds, change = self._alarm_statistic(post, state.t)
        prob = 1.0 / (1.0 + math.exp(-log_odds))
        return new_state, StepOutput(state.t, log_odds, prob, change, evidence,
                                     float(math.exp(post[0])))

    def _alarm_statistic(self, post: np.ndarray, index: int) -> tuple[float, int]:
        # r = index is the run that began with the user's first event: the start of a
        # history is no change, so it counts as "otherwise".
        lo, hi = self.config.min_age, min(self.config.max_age, len(post) - 1, index - 1)
        if lo > hi:
            return -LOG_ODDS_CLIP, index
        inside = post[lo : hi + 1]
        best = int(inside.argmax())
        top = float(inside[best])  # the max, as _logsumexp takes it
        log_in = (top + math.log(float(np.exp(inside - top).sum())) if math.isfinite(top)
                  else top)
        outside = np.concatenate([post[:lo], post[hi + 1 :]])
        log_out = _logsumexp(outside) if len(outside) else -math.inf
        log_odds = min(max(log_in - log_out, -LOG_ODDS_CLIP), LOG_ODDS_CLIP)
        return log_odds, index - (lo + best)

    def run(self, observations: Iterable[Observation],
            state: BocpdState | None = None) -> BocpdTrace:
        """Outputs for a whole history: a loop over :meth:`step` (from ``state`` if given)."""
        state = self.initial_state() if state is None else state
        outputs: list[StepOutput] = []
        for obs in observations:
            state, out = self.step(state, obs)
            outputs.append(out)
        return BocpdTrace(
            log_odds=np.asarray([o.log_odds for o in outputs], dtype=np.float64),
            prob=np.asarray([o.prob for o in outputs], dtype=np.float64),
            change_index=np.asarray([o.change_index for o in outputs], dtype=np.int64),
            log_pred=np.asarray([o.log_pred for o in outputs], dtype=np.float64),
            state=state,
        )


def trace_alarms(log_odds: np.ndarray, change_index: np.ndarray,
                 threshold: float | BucketThresholds, min_events: int = MIN_EVENTS,
                 cooldown: int = COOLDOWN) -> list[BocpdAlarm]:
    """Alarms of a trace by :func:`located_alarms` on the log-odds, with one threshold or one
    per history-length bucket."""
    log_odds = np.asarray(log_odds, dtype=np.float64)
    bar = (threshold.per_event(len(log_odds)) if isinstance(threshold, BucketThresholds)
           else np.full(len(log_odds), float(threshold)))
    return located_alarms(log_odds - bar, change_index, 0.0, min_events, cooldown,
                          scores=log_odds)


def located_alarms(margin: np.ndarray, change_index: np.ndarray, threshold: float,
                   min_events: int = MIN_EVENTS, cooldown: int = COOLDOWN,
                   scores: np.ndarray | None = None) -> list[BocpdAlarm]:
    """Alarms by the service's rule (:func:`app.domain.drift.alarm_indices`: ``margin[t] >=
    threshold``, at least ``min_events`` events, ``cooldown`` events between alarms), plus
    one condition: the located change must also be more than ``cooldown`` events after the
    previous alarm's. The statistic stays high for up to ``max_age - min_age`` events after
    one change, longer than the cooldown, and one change should give one alarm. Each alarm
    carries its located change and its score (``scores``, default ``margin``).

    ``margin`` is any per-event score that rises with the evidence: the log-odds minus their
    bucket's threshold (threshold 0), or the probability ``sigmoid`` of that (threshold 0.5:
    what a bundle serves, so its ``DriftSettings.threshold`` keeps its meaning)."""
    margin = np.asarray(margin, dtype=np.float64)
    change_index = np.asarray(change_index, dtype=np.int64)
    scores = margin if scores is None else np.asarray(scores, dtype=np.float64)
    alarms: list[BocpdAlarm] = []
    # alarm_indices with cooldown 0 gives the crossings the service rule starts from.
    for index in alarm_indices(margin, threshold, min_events, 0):
        t, c = int(index), int(change_index[index])
        if alarms and (t - alarms[-1].index <= cooldown or c - alarms[-1].change_index
                       <= cooldown):
            continue
        alarms.append(BocpdAlarm(t, c, float(scores[t])))
    return alarms


def _tv(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


@dataclass(frozen=True, slots=True)
class KindRule:
    """Cuts of :func:`classify_kind`."""

    context: int = 20  # events before the change read as "the preceding segment"
    min_earlier: int = 5  # events an earlier segment needs to count
    recurring_ratio: float = 0.6  # recurring: TV(new, earlier) < ratio * TV(new, preceding)
    gradual_share: float = 0.35  # gradual: the old mix's share in the new run's first half


@dataclass(frozen=True, slots=True)
class KindEvidence:
    kind: BocpdKind
    old_share: float  # the preceding mix's share in the first half of the new run
    tv_preceding: float  # TV distance between the new run's mix and the preceding segment's
    tv_earlier: float | None  # ... and an earlier segment's (None: no earlier segment kept)
    extra: dict[str, float] = field(default_factory=dict)


def classify_kind(state: BocpdState, change_index: int, previous_change: int | None = None,
                  rule: KindRule = KindRule()) -> KindEvidence:
    """Abrupt, gradual or recurring, for a change at ``change_index`` seen from ``state``.

    Topic mixes (windows of the state's last ``max_run`` events): the new run ``[c, t)``, its
    first and second halves, the preceding segment (``[previous_change, c)`` when the caller
    knows the previous change, else the ``context`` events before ``c``) and the earlier one
    (everything kept before the preceding segment).
    - recurring: the new mix is much closer to the earlier segment than to the preceding one
      (back to an earlier interest);
    - gradual: the first half of the new run is still partly the preceding mix (the least
      squares share of the preceding mix in ``first = w * preceding + (1 - w) * second`` is
      above ``gradual_share``);
    - abrupt otherwise.
    """
    t = state.t
    c = int(change_index)
    oldest = t - len(state.log_post)
    start = max(oldest, c - rule.context)
    if previous_change is not None and oldest <= previous_change < c:
        start = previous_change
    new = state.window_topics(c, t)
    preceding = state.window_topics(start, c) if start < c else None
    if new is None or preceding is None or new.sum() == 0 or preceding.sum() == 0:
        return KindEvidence("abrupt", 0.0, 0.0, None)
    half = c + max(1, (t - c) // 2)
    first = state.window_topics(c, half)
    second = state.window_topics(half, t) if half < t else None
    share = 0.0
    if first is not None and second is not None and first.sum() > 0 and second.sum() > 0:
        axis = preceding - second
        norm = float(axis @ axis)
        if norm > 1e-12:
            share = float(np.clip((first - second) @ axis / norm, 0.0, 1.0))
    tv_pre = _tv(new, preceding)
    earlier = (state.window_topics(oldest, start)
               if start - oldest >= rule.min_earlier else None)
    tv_earlier = None if earlier is None or earlier.sum() == 0 else _tv(new, earlier)
    if tv_earlier is not None and tv_earlier < rule.recurring_ratio * tv_pre:
        kind: BocpdKind = "recurring"
    elif share > rule.gradual_share:
        kind = "gradual"
    else:
        kind = "abrupt"
    return KindEvidence(kind, share, tv_pre, tv_earlier)


def observations_from_arrays(topics: Sequence[Sequence[int]],
                             vectors: np.ndarray | None = None,
                             values: Sequence[float | None] | None = None,
                             times: Sequence[float] | None = None) -> list[Observation]:
    """Observations for a history: per-event topic ids, vectors (float[L, d]), values and
    epoch-second times (the gap is read from consecutive times; none for the first event)."""
    out = []
    for i, event_topics in enumerate(topics):
        gap = None if times is None or i == 0 else float(times[i]) - float(times[i - 1])
        value = None if values is None else values[i]
        if value is not None and math.isnan(float(value)):
            value = None
        out.append(Observation(tuple(int(k) for k in event_topics),
                               None if vectors is None else vectors[i], value, gap))
    return out
