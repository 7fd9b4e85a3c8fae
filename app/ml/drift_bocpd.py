"""The ``bocpd`` drift detector: Bayesian online change-point detection per user
(:mod:`app.domain.bocpd`) over what each item row says about a user's interests.

Why: it reads no sequence model, so a user the scorer never saw is scored like any other (the
"unseen" gap of docs/drift-protocol.md), and its cost per event is bounded by ``max_run`` and
the number of topics and components, never by the catalogue (no softmax over items).

Channels, per item row (fitted at training, stored in ``bocpd_items.npz``):

- ``topics``: the item's topic ids. Where the catalogue has categories, every category of the
  item (multi-topic, counted fractionally); where it has none, the topic the bundle's
  TopicTable gives it (clusters of the item text embeddings). One unit centroid per topic (the
  mean text embedding of its items) places a row the part has not stored (a cold-start item
  added after training) at its nearest topic;
- ``vector``: the first principal components of the item text embedding (projection fitted on
  the training users' events, scaled to unit variance). Rows past the stored ones are
  projected from the scorer's ``item_text`` when first read;
- ``gap``: ``log1p`` of the seconds since the previous event of the window.

The event value (a rating) is not read: the drift path carries item indices and times only.

Per event the trace holds ``sigmoid(log_odds - threshold of its history-length bucket)`` as the
probability (so ``DriftSettings.threshold`` 0.5 is the calibrated rule and an operator can still
move it), the located change (the likeliest start of a run aged ``min_age..max_age``), the kind
of that change from the topic mixes (:func:`app.domain.bocpd.classify_kind`) and the event's
own predictive surprise. :meth:`BocpdDrift.change_points` decides over that trace for serving
and evaluation alike; :class:`BocpdEngine` carries a user's state forward event by event (its
``start`` is the same loop from an empty state, so a replay and the incremental path give the
same numbers bit for bit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from app.domain.bocpd import (
    KINDS,
    BocpdConfig,
    BocpdDetector,
    BocpdState,
    BucketThresholds,
    KindRule,
    Observation,
    classify_kind,
    located_alarms,
)
from app.domain.drift import ChangePoint
from app.ml.parts.protocols import DriftTrace, EventTrace, NextItemScorer
from app.ml.parts.registry import BundleError, register_part

if TYPE_CHECKING:
    from app.ml.bundle import DriftSettings

ITEMS_FILE = "bocpd_items.npz"


@dataclass(frozen=True)
class ItemChannels:
    """What each item row gives the detector's channels (row 0 is padding: no topic).

    ``topic_offsets`` int64[R + 1] / ``topic_ids`` int64[nnz]: row r's topics are
    ``topic_ids[topic_offsets[r]:topic_offsets[r + 1]]``; ``centroids`` float32[K, D] unit
    rows; ``vectors`` float32[R, d] the rows' components (d may be 0); ``pca_mean`` float32[D],
    ``pca_components`` float32[d, D], ``pca_scale`` float32[d]: the projection."""

    topic_offsets: np.ndarray
    topic_ids: np.ndarray
    centroids: np.ndarray
    vectors: np.ndarray
    pca_mean: np.ndarray
    pca_components: np.ndarray
    pca_scale: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.topic_offsets) - 1

    @property
    def dim(self) -> int:
        return int(self.pca_components.shape[0])

    def project(self, text: np.ndarray) -> np.ndarray:
        """float32[n, d]: the components of text embeddings float[n, D]."""
        x = np.asarray(text, dtype=np.float64)
        comps = self.pca_components.astype(np.float64)
        out = (x - self.pca_mean.astype(np.float64)) @ comps.T / self.pca_scale.astype(
            np.float64)
        return out.astype(np.float32)

    def nearest_topic(self, text: np.ndarray) -> int:
        x = np.asarray(text, dtype=np.float64)
        norm = float(np.linalg.norm(x))
        if norm == 0.0 or not len(self.centroids):
            return -1
        return int(np.argmax(self.centroids.astype(np.float64) @ (x / norm)))

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in (
            "topic_offsets", "topic_ids", "centroids", "vectors", "pca_mean",
            "pca_components", "pca_scale")}


@dataclass(frozen=True, slots=True)
class BocpdEngineState:
    """A user's detector state after the known events of one window: the BOCPD state, the
    last event's time (for the next gap) and the trace so far. Bounded by ``max_run`` (the
    state) and the window (the trace), never by the catalogue."""

    bocpd: BocpdState
    last_time: float | None
    probabilities: np.ndarray  # float32[n]
    surprise: np.ndarray  # float32[n]: -log predictive probability of each event
    located: np.ndarray  # int64[n]
    kinds: np.ndarray  # int64[n]: codes of app.domain.bocpd.KINDS

    @property
    def n(self) -> int:
        return len(self.probabilities)

    @property
    def nbytes(self) -> int:
        arrays = (self.probabilities, self.surprise, self.located, self.kinds)
        return 300 + self.bocpd.nbytes + sum(a.nbytes + 112 for a in arrays)

    def trace(self) -> EventTrace:
        return EventTrace(self.probabilities, self.surprise, self.located, self.kinds)


@register_part("drift", "bocpd", part_format=1)
class BocpdDrift:
    """BOCPD over item topics, text components and gaps (see the module docstring)."""

    training = False  # no weights: nothing to switch between train and eval

    def __init__(self, config: BocpdConfig, thresholds: BucketThresholds,
                 items: ItemChannels, topic_names: Sequence[str],
                 kind_rule: KindRule = KindRule()) -> None:
        if config.use_vector and config.vector_dim != items.dim:
            raise ValueError(f"the vector channel reads {config.vector_dim} components, the "
                             f"items give {items.dim}")
        self.config = config
        self.thresholds = thresholds
        self.items = items
        self.topic_names = list(topic_names)
        self.kind_rule = kind_rule
        self.detector = BocpdDetector(config)

    # torch-style part methods: there are no tensors to move
    def eval(self) -> BocpdDrift:
        return self

    def to(self, device: torch.device) -> BocpdDrift:
        return self

    # --------------------------------------------------------------- observations
    def _row(self, scorer: NextItemScorer | None, row: int
             ) -> tuple[tuple[int, ...], np.ndarray | None]:
        """(topic ids, components) of one item row; a row past the stored ones (a cold-start
        item) is read from the scorer's text embedding."""
        items = self.items
        if 0 <= row < items.n_rows:
            first, stop = items.topic_offsets[row:row + 2].tolist()
            topics = tuple(items.topic_ids[first:stop].tolist())
            return topics, (items.vectors[row] if items.dim else None)
        if scorer is None or row >= scorer.item_text.shape[0]:
            raise BundleError(f"item row {row} is neither stored nor in the scorer's table")
        text = scorer.item_text[row].detach().float().cpu().numpy()
        topic = items.nearest_topic(text)
        return ((topic,) if topic >= 0 else ()), (items.project(text[None])[0] if items.dim
                                                  else None)

    def observation(self, scorer: NextItemScorer | None, row: int,
                    gap_s: float | None) -> Observation:
        topics, vector = self._row(scorer, row)
        return Observation(topics if self.config.use_topics else (),
                           vector if self.config.use_vector else None, None, gap_s)

    # ------------------------------------------------------------------- stepping
    def initial(self) -> BocpdEngineState:
        return BocpdEngineState(self.detector.initial_state(), None, np.zeros(0, np.float32),
                                np.zeros(0, np.float32), np.zeros(0, np.int64),
                                np.zeros(0, np.int64))

    def advance(self, state: BocpdEngineState, scorer: NextItemScorer | None,
                rows: Sequence[int], times: Sequence[float]) -> BocpdEngineState:
        """The state after these events (model rows, epoch seconds; oldest first)."""
        bocpd, last = state.bocpd, state.last_time
        config, detector = self.config, self.detector
        stamps = [float(t) for t in times]
        if len(stamps) != len(rows):
            raise ValueError("advance needs one time per row")
        gaps: list[float | None] = []
        for time in stamps:
            gaps.append(None if last is None else time - last)
            last = time
        # every event's observation read up front (the step loop below is the cost)
        read = [self._row(scorer, int(row)) for row in rows]
        topics = [t if config.use_topics else () for t, _ in read]
        vectors = (np.stack([v for _, v in read])
                   if config.use_vector and read and read[0][1] is not None else None)
        values = detector.normal_matrix(len(read), vectors, None, gaps)
        edges = np.asarray(self.thresholds.edges, dtype=np.int64)
        bars = [self.thresholds.values[b] for b in np.searchsorted(
            edges, np.arange(bocpd.t, bocpd.t + len(read)), side="right").tolist()]
        probs, surprise, located, kinds = [], [], [], []
        for event_topics, x, bar in zip(topics, values, bars, strict=True):
            bocpd, out = detector.step_values(bocpd, event_topics, x)
            probs.append(_probability(out.log_odds - bar))
            surprise.append(-out.log_pred)
            located.append(out.change_index)
            kinds.append(KINDS.index(classify_kind(bocpd, out.change_index, None,
                                                   self.kind_rule).kind))
        return BocpdEngineState(
            bocpd, last,
            np.concatenate([state.probabilities, np.asarray(probs, np.float32)]),
            np.concatenate([state.surprise, np.asarray(surprise, np.float32)]),
            np.concatenate([state.located, np.asarray(located, np.int64)]),
            np.concatenate([state.kinds, np.asarray(kinds, np.int64)]))

    def incremental_engine(self, scorer: NextItemScorer) -> BocpdEngine:
        return BocpdEngine(self, scorer)

    def traces(self, scorer: NextItemScorer, item_idx: torch.Tensor,
               timestamps: torch.Tensor) -> DriftTrace:
        """Per-event probabilities, predictive surprise, located changes and kinds of a
        right-padded batch: each row run through :meth:`advance` from an empty state."""
        idx = item_idx.detach().cpu().numpy()
        ts = timestamps.detach().cpu().double().numpy()
        shape = idx.shape
        probs = np.zeros(shape, np.float32)
        surprise = np.zeros(shape, np.float32)
        located = np.zeros(shape, np.int64)
        kinds = np.zeros(shape, np.int64)
        for b in range(shape[0]):
            n = int((idx[b] > 0).sum())
            state = self.advance(self.initial(), scorer, idx[b, :n], ts[b, :n])
            probs[b, :n], surprise[b, :n] = state.probabilities, state.surprise
            located[b, :n], kinds[b, :n] = state.located, state.kinds
        return DriftTrace(torch.from_numpy(probs), torch.from_numpy(surprise),
                          torch.from_numpy(located), torch.from_numpy(kinds))

    # ------------------------------------------------------------------- deciding
    def change_points(self, trace: EventTrace, settings: DriftSettings) -> list[ChangePoint]:
        """Alarms by :func:`app.domain.bocpd.located_alarms` on the probabilities at the
        settings' threshold; each change placed where the detector located it, with the kind
        read at its alarm."""
        if trace.located is None or trace.kinds is None:
            raise ValueError("a bocpd decision needs the located changes and kinds of its trace")
        kinds = trace.kinds
        return [ChangePoint(a.index, a.score, KINDS[int(kinds[a.index])], a.change_index)
                for a in located_alarms(trace.probabilities, trace.located,
                                        float(settings.threshold), settings.min_events,
                                        settings.cooldown)]

    # -------------------------------------------------------------------- storage
    def save_part(self, directory: Path) -> dict[str, Any]:
        np.savez(Path(directory) / ITEMS_FILE, **self.items.arrays())
        return {"bocpd": self.config.to_dict(), "thresholds": self.thresholds.to_dict(),
                "topic_names": self.topic_names, "kind_rule": asdict(self.kind_rule)}

    @classmethod
    def load_part(cls, directory: Path, config: dict[str, Any], part_format: int,
                  device: torch.device) -> BocpdDrift:
        with np.load(Path(directory) / ITEMS_FILE, allow_pickle=False) as data:
            items = ItemChannels(**{name: np.asarray(data[name]) for name in data.files})
        return cls(BocpdConfig.from_dict(config["bocpd"]),
                   BucketThresholds.from_dict(config["thresholds"]), items,
                   config.get("topic_names", []), KindRule(**config.get("kind_rule", {})))


_BELOW_HALF = float(np.nextafter(np.float32(0.5), np.float32(0.0)))


def _probability(margin: float) -> float:
    """sigmoid(margin) as the float32 the trace keeps, with ``p >= 0.5`` exactly when
    ``margin >= 0``: a margin a hair below zero (a bucket whose calibrated threshold sits just
    above its highest score) would round to 0.5 and alarm where the calibrated rule does not."""
    p = 1.0 / (1.0 + math.exp(-margin)) if margin > -700 else 0.0
    return _BELOW_HALF if margin < 0 and np.float32(p) >= 0.5 else p


class BocpdEngine:
    """The incremental engine of a :class:`BocpdDrift` (app.ml.parts.IncrementalEngine)."""

    def __init__(self, part: BocpdDrift, scorer: NextItemScorer) -> None:
        self.part = part
        self.scorer = scorer

    def start(self, windows: Sequence[tuple[np.ndarray, np.ndarray]]
              ) -> list[BocpdEngineState]:
        return [self.part.advance(self.part.initial(), self.scorer, idx, ts)
                for idx, ts in windows]

    def extend(self, requests: Sequence[tuple[BocpdEngineState, np.ndarray, np.ndarray]]
               ) -> list[BocpdEngineState]:
        return [self.part.advance(state, self.scorer, idx, ts) for state, idx, ts in requests]
