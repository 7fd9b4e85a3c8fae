"""Fitting the ``bocpd`` drift detector (app.ml.drift_bocpd) and its topic baselines.

Nothing here is learned by gradient: the item channels come from the catalogue (categories, or
the topic clusters of the item text embeddings) and a principal-component projection of the
text embeddings; the priors are moments of the head-training users' real histories; a few
hyper-parameters are chosen by a coordinate search on the head-training cases (F1 at the target
false-alarm rate, thresholds calibrated on those users' own unspliced histories); the per-bucket
thresholds are calibrated on the calibration users (:meth:`BocpdTrainer.calibrate`). The
offline study (training.drift.bocpd_eval) uses the same calibration and priors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from app.domain.bocpd import (
    BocpdConfig,
    BocpdDetector,
    BucketThresholds,
    Observation,
    trace_alarms,
)
from app.domain.drift import COOLDOWN, MIN_EVENTS
from app.ml.drift_bocpd import BocpdDrift, ItemChannels
from app.ml.parts import DriftDetector, EventTrace, NextItemScorer
from app.ml.topics import TopicTable, topics_from_clusters
from training.drift.baselines import glr_trace
from training.drift.config import DriftConfig
from training.drift.evaluation import evaluate_alarms
from training.drift.splicing import DriftCase
from training.drift.trainer import register_drift_trainer

BUCKET_EDGES = (50, 150)  # history-length buckets of the thresholds (events 0-49, 50-149, 150+)
Trace = tuple[np.ndarray, np.ndarray]  # (score float[L], located change int[L])

# Starting hyper-parameters and the coordinate search's grid (``DriftConfig.options`` may set
# any key of START, and ``search`` to replace the grid: {} fits the priors only).
START: dict[str, Any] = {"hazard": 100.0, "min_age": 5, "max_age": 20, "topic_strength": 2.0,
                         "vector_dim": 8, "ng_alpha": 2.0, "gap": True, "max_run": 200,
                         "clusters": 20}
GRID: dict[str, Sequence[Any]] = {"hazard": (50.0, 100.0, 200.0), "vector_dim": (0, 8),
                                  "max_age": (12, 20, 30)}
FIT_SHARE = 4  # the search reads every fourth head-training case (time)
SEARCH_MAX_RUN = 100  # cap of the run-length posterior during the search (time)


@dataclass
class DriftCatalogue:
    """What the drift stage knows of the catalogue besides the embeddings: each item's
    categories (model index i + 1 = ``categories[i]``) and the bundle's topics."""

    categories: list[tuple[str, ...]]
    topics: TopicTable | None = None


# ------------------------------------------------------------------------ item channels
@dataclass
class TopicSpace:
    """Per item row its topic ids, the topic names and unit centroids (text space)."""

    rows: list[tuple[int, ...]]  # per model row (row 0: none)
    names: list[str]
    centroids: np.ndarray  # float32[K, D]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def topic_space(item_text: np.ndarray, catalogue: DriftCatalogue | None,
                clusters: int = 20, seed: int = 0) -> TopicSpace:
    """Multi-topic categories where most items have some; else the topics of the bundle's
    TopicTable (or, without one, k-means clusters of the text embeddings: what the bundle
    would make). ``item_text``: float[R, D], row 0 padding."""
    n = len(item_text) - 1
    categories = catalogue.categories if catalogue is not None else []
    if categories and sum(1 for c in categories if c) >= 0.5 * max(len(categories), 1):
        names = sorted({c for item in categories for c in item})
        index = {name: k for k, name in enumerate(names)}
        rows = [()] + [tuple(index[c] for c in dict.fromkeys(item)) for item in categories]
        rows += [()] * (n + 1 - len(rows))
        return TopicSpace(rows, names, _unit(_topic_sums(item_text, rows, len(names)))
                          .astype(np.float32))
    table = catalogue.topics if catalogue is not None else None
    if table is None or len(table.item_topics) != n:
        table = topics_from_clusters(np.asarray(item_text[1:], dtype=np.float32), [""] * n,
                                     clusters, seed)
    rows = [()] + [(int(k),) for k in table.item_topics]
    return TopicSpace(rows, list(table.names), np.asarray(table.centroids, np.float32))


# Rows of the text table turned into float64 unit vectors at a time: the whole table at once
# would be twice its float32 size, and its unit copy as much again (gigabytes at a million
# items, when the rest of the run is resident).
TOPIC_BLOCK_ROWS = 65_536


def _topic_sums(item_text: np.ndarray, rows: Sequence[tuple[int, ...]], n_topics: int
                ) -> np.ndarray:
    """float64[K, D]: per topic the sum of its items' unit text vectors, added row by row in
    row order (so a block's sum is the whole loop's, bit for bit)."""
    sums = np.zeros((n_topics, np.shape(item_text)[1]))
    for start in range(0, len(rows), TOPIC_BLOCK_ROWS):
        pairs = [(r, k) for r, topics in enumerate(rows[start:start + TOPIC_BLOCK_ROWS])
                 for k in topics]
        if not pairs:
            continue
        block = np.asarray(item_text[start:start + TOPIC_BLOCK_ROWS], dtype=np.float64)
        members, topics = np.asarray(pairs, dtype=np.int64).T
        np.add.at(sums, topics, _unit(block)[members])
    return sums


def pca(item_text: np.ndarray, fit_rows: np.ndarray, dim: int
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean float[D], components float[d, D], scale float[d]) of the text embeddings of the
    events ``fit_rows`` (model rows, repeated as often as they were consumed)."""
    x = np.asarray(np.asarray(item_text)[np.asarray(fit_rows, dtype=np.int64)], np.float64)
    mean = x.mean(axis=0)
    _, sing, vt = np.linalg.svd(x - mean, full_matrices=False)
    scale = np.maximum(sing / math.sqrt(max(len(x), 1)), 1e-6)
    return mean, vt[:dim], scale[:dim]


def item_channels(item_text: np.ndarray, space: TopicSpace,
                  projection: tuple[np.ndarray, np.ndarray, np.ndarray], dim: int
                  ) -> ItemChannels:
    """The stored channels of every item row, with the first ``dim`` components."""
    mean, comps, scale = projection
    offsets = np.zeros(len(space.rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(t) for t in space.rows])
    ids = np.asarray([k for t in space.rows for k in t], dtype=np.int64)
    channels = ItemChannels(offsets, ids, space.centroids, np.zeros((len(space.rows), 0),
                                                                    np.float32),
                            mean.astype(np.float32), comps[:dim].astype(np.float32),
                            scale[:dim].astype(np.float32))
    if dim:
        channels = replace(channels, vectors=channels.project(np.asarray(item_text)))
    return channels


# ------------------------------------------------------------------------ priors
def empirical_prior(values: Sequence[np.ndarray], alpha: float) -> tuple[float, ...]:
    """Normal-Gamma (mu, kappa, alpha, beta) from per-user samples: the prior mean is the
    pooled mean, the expected variance the pooled within-user variance, and kappa the ratio
    within / between-user variance (how many events a user's own mean is worth)."""
    per_user = [v[~np.isnan(v)] for v in (np.asarray(x, dtype=np.float64) for x in values)]
    per_user = [v for v in per_user if len(v) >= 5]
    if not per_user:
        return (0.0, 0.5, alpha, alpha)
    allv = np.concatenate(per_user)
    within = max(float(np.mean([v.var() for v in per_user])), 1e-6)
    between = float(np.var([v.mean() for v in per_user]))
    kappa = within / max(between, 1e-6)
    return (float(allv.mean()), kappa, alpha, alpha * within)


def topic_frequencies(histories: Sequence[Sequence[tuple[int, ...]]], n_topics: int
                      ) -> tuple[float, ...]:
    counts = np.full(n_topics, 1e-3)
    for topics in histories:
        for event in topics:
            for k in event:
                counts[k] += 1.0 / len(event)
    return tuple(float(x) for x in counts / counts.sum())


def _gaps(case: DriftCase) -> np.ndarray:
    times = np.asarray(case.times, dtype=np.float64)
    return np.concatenate([[np.nan], np.diff(times)]) if len(times) else np.zeros(0)


def fitted_config(knobs: dict[str, Any], controls: Sequence[DriftCase], space: TopicSpace,
                  channels: ItemChannels) -> BocpdConfig:
    """The BocpdConfig of ``knobs`` with priors from the real histories ``controls``."""
    alpha = float(knobs["ng_alpha"])
    dim = int(knobs["vector_dim"])
    gap_prior = empirical_prior([np.log1p(np.maximum(_gaps(c), 0.0)) for c in controls], alpha)
    vector_prior: tuple[float, ...] = (0.0, 0.5, 2.0, 1.0)
    if dim:
        columns = [empirical_prior([channels.vectors[c.items][:, j] for c in controls], alpha)
                   for j in range(dim)]
        # one prior for every column: the mean of the columns' fitted ones
        vector_prior = tuple(float(np.mean([c[i] for c in columns])) for i in range(4))
    k = len(space.names)
    base = topic_frequencies([[space.rows[i] for i in c.items] for c in controls], k)
    return BocpdConfig(
        hazard_lambda=float(knobs["hazard"]), max_run=int(knobs["max_run"]),
        min_age=int(knobs["min_age"]), max_age=int(knobs["max_age"]), n_topics=k,
        topic_strength=float(knobs["topic_strength"]), topic_base=base,
        use_vector=dim > 0, vector_dim=dim, vector_prior=vector_prior,  # type: ignore[arg-type]
        use_gap=bool(knobs["gap"]), gap_prior=gap_prior)  # type: ignore[arg-type]


# ------------------------------------------------------------------ calibration, traces
def bucket_rate(traces: Sequence[Trace], thresholds: BucketThresholds, bucket: int,
                min_events: int = MIN_EVENTS, cooldown: int = COOLDOWN) -> float:
    """Alarms per 1,000 events counted at the events (raise index) of one bucket."""
    edges = (0, *thresholds.edges, 1 << 30)
    lo, hi = edges[bucket], edges[bucket + 1]
    alarms = events = 0
    for score, change in traces:
        events += max(0, min(len(score), hi) - lo)
        alarms += sum(lo <= a.index < hi for a in trace_alarms(score, change, thresholds,
                                                               min_events, cooldown))
    return 1000.0 * alarms / max(events, 1)


def calibrate(traces: Sequence[Trace], target: float, edges: tuple[int, ...] = (),
              min_events: int = MIN_EVENTS, cooldown: int = COOLDOWN) -> BucketThresholds:
    """Per bucket in turn (earlier buckets fixed, later ones off), the lowest threshold whose
    alarms in that bucket stay at or below ``target`` per 1,000 of its events (bisection over
    the bucket's distinct scores; the rate falls as the threshold rises)."""
    values = [math.inf] * (len(edges) + 1)
    bounds = (0, *edges, 1 << 30)
    for b in range(len(values)):
        lo_e, hi_e = max(bounds[b], min_events - 1), bounds[b + 1]
        pool = np.unique(np.concatenate([s[lo_e:hi_e] for s, _ in traces] + [np.zeros(0)]))
        if len(pool) == 0:
            values[b] = 0.0
            continue
        lo, hi = 0, len(pool)
        while lo < hi:
            mid = (lo + hi) // 2
            values[b] = float(pool[mid])
            if bucket_rate(traces, BucketThresholds(edges, tuple(values)), b, min_events,
                           cooldown) <= target:
                hi = mid
            else:
                lo = mid + 1
        values[b] = float(pool[lo]) if lo < len(pool) else float(np.nextafter(pool[-1], np.inf))
    return BucketThresholds(edges, tuple(values))


def raw_traces(part: BocpdDrift, scorer: NextItemScorer | None,
               cases: Sequence[DriftCase]) -> list[Trace]:
    """(log-odds, located change) of each case: the statistic the thresholds are set on."""
    out = []
    for case in cases:
        gaps = _gaps(case)
        trace = part.detector.run(part.observation(scorer, int(i), None if math.isnan(g)
                                                   else float(g))
                                  for i, g in zip(case.items, gaps, strict=True))
        out.append((trace.log_odds, trace.change_index))
    return out


def located(trace: Trace, thresholds: BucketThresholds, min_events: int,
            cooldown: int) -> np.ndarray:
    alarms = trace_alarms(trace[0], trace[1], thresholds, min_events, cooldown)
    return np.sort(np.asarray([a.change_index for a in alarms], dtype=np.int64))


def _f1(part: BocpdDrift, scorer: NextItemScorer | None, cases: Sequence[DriftCase],
        config: DriftConfig) -> float:
    traces = raw_traces(part, scorer, cases)
    controls = [t for t, c in zip(traces, cases, strict=True) if c.kind == "none"]
    thresholds = calibrate(controls, config.target_alarms_per_1k, BUCKET_EDGES,
                           config.min_events, config.cooldown)
    alarms = [located(t, thresholds, config.min_events, config.cooldown) for t in traces]
    metrics = evaluate_alarms(alarms, [c.change_points for c in cases],
                              [len(c.items) for c in cases], margin=config.margin)
    return float(metrics["f1"] or 0.0)


# ------------------------------------------------------------------------ the trainer
@register_drift_trainer("bocpd")
class BocpdTrainer:
    """``DriftConfig(kind="bocpd")``: channels and priors from the head-training users, a few
    hyper-parameters by coordinate search on their cases, per-bucket thresholds on the
    calibration users. ``options``: any key of START, and ``search`` (the grid)."""

    def fit(self, scorer: NextItemScorer, features: Sequence[torch.Tensor],
            cases: Sequence[DriftCase], config: DriftConfig, seed: int, device: torch.device,
            progress: bool, catalogue: DriftCatalogue | None = None) -> DriftDetector:
        options = dict(config.options)
        grid = {k: tuple(v) for k, v in dict(options.pop("search", GRID)).items()}
        knobs = {**START, **options}
        text = scorer.item_text.detach().float().cpu().numpy()
        space = topic_space(text, catalogue, int(knobs["clusters"]), seed)
        controls = [c for c in cases if c.kind == "none"]
        rows = np.concatenate([np.asarray(c.items, np.int64) for c in controls] or
                              [np.arange(1, len(text))])
        widest = max([int(knobs["vector_dim"]), *(int(d) for d in grid.get("vector_dim", ()))])
        projection = pca(text, rows, widest)

        def build(k: dict[str, Any], thresholds: BucketThresholds | None = None) -> BocpdDrift:
            # no more components than the embeddings have
            k = {**k, "vector_dim": min(int(k["vector_dim"]), len(projection[1]))}
            channels = item_channels(text, space, projection, int(k["vector_dim"]))
            return BocpdDrift(fitted_config(k, controls, space, channels),
                              thresholds or BucketThresholds(BUCKET_EDGES, (0.0, 0.0, 0.0)),
                              channels, space.names)

        sample = list(cases[::FIT_SHARE]) if len(cases) >= 8 * FIT_SHARE else list(cases)
        scores: dict[str, float] = {}

        def value(k: dict[str, Any]) -> float:
            key = json.dumps(k, sort_keys=True)
            if key not in scores:
                scores[key] = _f1(build({**k, "max_run": min(int(k["max_run"]),
                                                             SEARCH_MAX_RUN)}),
                                  scorer, sample, config)
            return scores[key]

        if grid and any(c.kind != "none" for c in sample):
            best = value(knobs)
            for name, choices in grid.items():  # one round of coordinate search
                for choice in choices:
                    trial = {**knobs, name: choice}
                    score = value(trial)
                    if score > best + 1e-4:
                        best, knobs = score, trial
        return build(knobs)

    def calibrate(self, detector: DriftDetector, scorer: NextItemScorer,
                  cases: Sequence[DriftCase], config: DriftConfig) -> float:
        """Per-bucket thresholds on the unspliced ``cases`` at the target rate; returns the
        threshold on the probabilities that applies them (0.5: sigmoid of zero margin)."""
        assert isinstance(detector, BocpdDrift)
        controls = [c for c in cases if c.kind == "none"]
        detector.thresholds = calibrate(raw_traces(detector, scorer, controls),
                                        config.target_alarms_per_1k, BUCKET_EDGES,
                                        config.min_events, config.cooldown)
        return 0.5

    def traces(self, detector: DriftDetector, scorer: NextItemScorer,
               features: Sequence[torch.Tensor], cases: Sequence[DriftCase],
               device: torch.device) -> list[EventTrace]:
        """Each case's trace, through the part's own stepping (what serving runs)."""
        assert isinstance(detector, BocpdDrift)
        return [detector.advance(detector.initial(), scorer, c.items, c.times).trace()
                for c in cases]

    def probabilities(self, detector: DriftDetector, scorer: NextItemScorer,
                      features: Sequence[torch.Tensor], cases: Sequence[DriftCase],
                      device: torch.device) -> list[np.ndarray]:
        return [t.probabilities for t in self.traces(detector, scorer, features, cases,
                                                     device)]


# ------------------------------------------------------------------- topic baselines
def topic_baselines(space: TopicSpace, calibration: Sequence[DriftCase],
                    evaluation: Sequence[DriftCase], rate: float, config: DriftConfig
                    ) -> tuple[dict[str, list[np.ndarray]], dict[str, Any]]:
    """Located alarms on ``evaluation`` of two textbook detectors on the topic mix, their
    thresholds set per bucket on the unspliced ``calibration`` cases to ``rate``:
    ``bocpd_topics_h100`` (BOCPD over the topics alone, hazard 1/100, the default prior:
    calibration only) and ``glr_topics_w40`` (a generalised likelihood-ratio test for one
    change in the topic mix over the last 40 events)."""
    k = len(space.names)
    plain = BocpdDetector(BocpdConfig(hazard_lambda=100.0, n_topics=k))

    def bocpd(cases: Sequence[DriftCase]) -> list[Trace]:
        out = []
        for c in cases:
            trace = plain.run(Observation(space.rows[i]) for i in c.items)
            out.append((trace.log_odds, trace.change_index))
        return out

    def glr(cases: Sequence[DriftCase]) -> list[Trace]:
        out = []
        for c in cases:
            counts = np.zeros((len(c.items), k))
            for t, i in enumerate(c.items):
                for topic in space.rows[i]:
                    counts[t, topic] += 1.0 / len(space.rows[i])
            out.append(glr_trace(counts, 40))
        return out

    controls = [c for c in calibration if c.kind == "none"]
    rows: dict[str, list[np.ndarray]] = {}
    knobs: dict[str, Any] = {}
    for name, make in (("bocpd_topics_h100", bocpd), ("glr_topics_w40", glr)):
        thresholds = calibrate(make(controls), rate, BUCKET_EDGES, config.min_events,
                               config.cooldown)
        rows[name] = [located(t, thresholds, config.min_events, config.cooldown)
                      for t in make(evaluation)]
        knobs[name] = thresholds.to_dict()
    return rows, knobs
