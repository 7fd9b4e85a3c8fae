"""The BOCPD step, kind classifier and per-event loop as they were written first: one event
at a time, every quantity recomputed (gammaln included), every window read on its own. The
served code computes the same numbers with fewer, larger array operations; the tests hold it
to these, bit for bit."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import gammaln

from app.domain.bocpd import (
    KINDS,
    LOG_ODDS_CLIP,
    BocpdDetector,
    BocpdKind,
    BocpdState,
    KindRule,
    Observation,
    StepOutput,
)
from app.ml.drift_bocpd import BocpdDrift, BocpdEngineState, _probability


def _logsumexp(values: np.ndarray) -> float:
    top = float(values.max())
    if not math.isfinite(top):
        return top
    return top + math.log(float(np.exp(values - top).sum()))


def _log_student_t(x: np.ndarray, mu: np.ndarray, kappa: np.ndarray, alpha: np.ndarray,
                   beta: np.ndarray) -> np.ndarray:
    scale2 = beta * (kappa + 1.0) / (alpha * kappa)
    df = 2.0 * alpha
    return (gammaln(alpha + 0.5) - gammaln(alpha) - 0.5 * np.log(np.pi * df * scale2)
            - (alpha + 0.5) * np.log1p((x - mu) ** 2 / (df * scale2)))


def _normal_values(det: BocpdDetector, obs: Observation) -> np.ndarray:
    config = det.config
    parts: list[np.ndarray] = []
    if config.use_vector:
        vector = (np.full(config.vector_dim, np.nan) if obs.vector is None
                  else np.asarray(obs.vector, dtype=np.float64).reshape(-1))
        parts.append(vector)
    if config.use_value:
        parts.append(np.array([np.nan if obs.value is None else float(obs.value)]))
    if config.use_gap:
        gap = np.nan if obs.gap_s is None else math.log1p(max(float(obs.gap_s), 0.0))
        parts.append(np.array([gap]))
    return np.concatenate(parts) if parts else np.zeros(0)


def _alarm_statistic(det: BocpdDetector, post: np.ndarray, index: int) -> tuple[float, int]:
    lo, hi = det.config.min_age, min(det.config.max_age, len(post) - 1, index - 1)
    if lo > hi:
        return -LOG_ODDS_CLIP, index
    inside = post[lo : hi + 1]
    outside = np.concatenate([post[:lo], post[hi + 1 :]])
    log_out = _logsumexp(outside) if len(outside) else -math.inf
    log_odds = min(max(_logsumexp(inside) - log_out, -LOG_ODDS_CLIP), LOG_ODDS_CLIP)
    return log_odds, index - (lo + int(np.argmax(inside)))


def step(det: BocpdDetector, state: BocpdState, obs: Observation
         ) -> tuple[BocpdState, StepOutput]:
    config = det.config
    k = len(det.topic_alpha)
    counts = np.concatenate([np.zeros((1, k)), state.topic_counts])
    n = np.concatenate([np.zeros((1, len(det.mu0))), state.ng_n])
    mu = np.concatenate([det.mu0[None, :], state.ng_mu])
    beta = np.concatenate([det.beta0[None, :], state.ng_beta])
    log_pred = np.zeros(len(counts))
    topics = np.asarray([i for i in obs.topics if 0 <= i < k], dtype=np.int64) if k else None
    if topics is not None and len(topics):
        probs = (det.topic_alpha[topics][None, :] + counts[:, topics]) / (
            det.topic_total + counts.sum(axis=1, keepdims=True))
        log_pred += np.log(probs.mean(axis=1))
    x = _normal_values(det, obs)
    seen = ~np.isnan(x)
    if seen.any():
        cols = np.flatnonzero(seen)
        kappa = det.kappa0[cols] + n[:, cols]
        alpha = det.alpha0[cols] + 0.5 * n[:, cols]
        log_pred += _log_student_t(x[cols], mu[:, cols], kappa, alpha,
                                   beta[:, cols]).sum(axis=1)
    if state.t == 0:
        joint = log_pred[:1].copy()
    else:
        joint = np.empty(len(log_pred))
        joint[0] = det.log_h + log_pred[0]
        joint[1:] = det.log_1mh + state.log_post + log_pred[1:]
    if topics is not None and len(topics):
        counts[:, topics] += 1.0 / len(topics)
    if seen.any():
        cols = np.flatnonzero(seen)
        kappa = det.kappa0[cols] + n[:, cols]
        delta = x[cols] - mu[:, cols]
        beta[:, cols] += kappa * delta ** 2 / (2.0 * (kappa + 1.0))
        mu[:, cols] += delta / (kappa + 1.0)
        n[:, cols] += 1.0
    if len(joint) > config.max_run:
        cap = config.max_run
        joint[cap - 1] = np.logaddexp(joint[cap - 1], joint[cap])
        joint, counts, n, mu, beta = (a[:cap] for a in (joint, counts, n, mu, beta))
    evidence = _logsumexp(joint)
    post = joint - evidence
    new_state = BocpdState(state.t + 1, post, counts, n, mu, beta,
                           state.log_evidence + evidence)
    log_odds, change = _alarm_statistic(det, post, state.t)
    prob = 1.0 / (1.0 + math.exp(-log_odds))
    return new_state, StepOutput(state.t, log_odds, prob, change, evidence,
                                 float(math.exp(post[0])))


def window_topics(state: BocpdState, start: int, stop: int) -> np.ndarray | None:
    last = state.t - 1
    length = len(state.log_post)
    if not 0 <= start < stop <= state.t or last - start >= length:
        return None
    counts = state.topic_counts[last - start].copy()
    if stop <= last:
        counts -= state.topic_counts[last - stop]
    counts = np.maximum(counts, 0.0)
    total = counts.sum()
    return counts / total if total > 0 else counts


def _tv(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


def classify_kind(state: BocpdState, change_index: int, previous_change: int | None = None,
                  rule: KindRule = KindRule()) -> tuple[BocpdKind, float, float, float | None]:
    """(kind, old_share, tv_preceding, tv_earlier)."""
    t = state.t
    c = int(change_index)
    oldest = t - len(state.log_post)
    start = max(oldest, c - rule.context)
    if previous_change is not None and oldest <= previous_change < c:
        start = previous_change
    new = window_topics(state, c, t)
    preceding = window_topics(state, start, c) if start < c else None
    if new is None or preceding is None or new.sum() == 0 or preceding.sum() == 0:
        return "abrupt", 0.0, 0.0, None
    half = c + max(1, (t - c) // 2)
    first = window_topics(state, c, half)
    second = window_topics(state, half, t) if half < t else None
    share = 0.0
    if first is not None and second is not None and first.sum() > 0 and second.sum() > 0:
        axis = preceding - second
        norm = float(axis @ axis)
        if norm > 1e-12:
            share = float(np.clip((first - second) @ axis / norm, 0.0, 1.0))
    tv_pre = _tv(new, preceding)
    earlier = (window_topics(state, oldest, start)
               if start - oldest >= rule.min_earlier else None)
    tv_earlier = None if earlier is None or earlier.sum() == 0 else _tv(new, earlier)
    kind: BocpdKind
    if tv_earlier is not None and tv_earlier < rule.recurring_ratio * tv_pre:
        kind = "recurring"
    elif share > rule.gradual_share:
        kind = "gradual"
    else:
        kind = "abrupt"
    return kind, share, tv_pre, tv_earlier


def advance(part: BocpdDrift, state: BocpdEngineState, rows: Sequence[int],
            times: Sequence[float]) -> BocpdEngineState:
    bocpd, last = state.bocpd, state.last_time
    probs, surprise, located, kinds = [], [], [], []
    edges = np.asarray(part.thresholds.edges, dtype=np.int64)
    values = part.thresholds.values
    for row, time in zip(rows, times, strict=True):
        time = float(time)
        gap = None if last is None else time - last
        index = bocpd.t
        bocpd, out = step(part.detector, bocpd, part.observation(None, int(row), gap))
        bar = values[int(np.searchsorted(edges, index, side="right"))]
        probs.append(_probability(out.log_odds - bar))
        surprise.append(-out.log_pred)
        located.append(out.change_index)
        kinds.append(KINDS.index(classify_kind(bocpd, out.change_index, None,
                                               part.kind_rule)[0]))
        last = time
    return BocpdEngineState(
        bocpd, last,
        np.concatenate([state.probabilities, np.asarray(probs, np.float32)]),
        np.concatenate([state.surprise, np.asarray(surprise, np.float32)]),
        np.concatenate([state.located, np.asarray(located, np.int64)]),
        np.concatenate([state.kinds, np.asarray(kinds, np.int64)]))
