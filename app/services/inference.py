"""The forward passes of one served bundle, shared by concurrent requests.

Like text-embeddings-inference's `Infer`, this object owns the batching (three micro-batchers:
next-item scores, query vectors, drift-trace replays) and the tables derived from the bundle
on first use. One per bundle: a catalogue swap that changes the rows makes a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from app.domain import ranking, similarity
from app.ml.bundle import InterestModelBundle
from app.ml.parts import EventTrace
from app.ml.topk import TopKIndex, candidates
from app.services.batching import MicroBatcher
from app.services.lazy_tables import LazyTables

EventWindow = tuple[Sequence[str], Sequence[float]]  # item ids, timestamps; oldest first
ScoreRequest = tuple[Sequence[str], Sequence[float], float | None]  # + the request time
DriftTrace = EventTrace  # per-event drift probability, surprise (and located change, kind)
Observe = Callable[[str, int], None]


class Inference:
    def __init__(self, bundle: InterestModelBundle, max_batch: int,
                 observe: Observe | None = None) -> None:
        self.bundle = bundle
        self.tables = LazyTables()

        def score(histories: Sequence[ScoreRequest]) -> list[np.ndarray]:
            if observe is not None:
                observe("score", len(histories))
            scores = bundle.score_next_batch([h[0] for h in histories],
                                             [h[1] for h in histories],
                                             at=[h[2] for h in histories])
            return list(scores.numpy())

        def query(histories: Sequence[ScoreRequest]) -> list[np.ndarray]:
            if observe is not None:
                observe("query", len(histories))
            vectors = bundle.query_vectors_batch([h[0] for h in histories],
                                                 [h[1] for h in histories],
                                                 at=[h[2] for h in histories])
            return list(vectors.cpu().numpy())

        def trace(histories: Sequence[EventWindow]) -> list[DriftTrace]:
            if observe is not None:
                observe("drift", len(histories))
            return bundle.drift_event_traces([h[0] for h in histories],
                                             [h[1] for h in histories])

        self.scorer: MicroBatcher[ScoreRequest, np.ndarray] = MicroBatcher(score, max_batch)
        self.querier: MicroBatcher[ScoreRequest, np.ndarray] = MicroBatcher(query, max_batch)
        self.tracer: MicroBatcher[EventWindow, DriftTrace] = MicroBatcher(trace, max_batch)

    def score_next(self, item_ids: Sequence[str], timestamps: Sequence[float],
                   at: float | None = None) -> np.ndarray:
        """Next-item scores of one history (float32[N]) for a request at ``at`` (epoch
        seconds; None: the last event's time), batched with concurrent requests."""
        return self.scorer.submit((item_ids, timestamps, at))

    def score_candidates(self, topk: TopKIndex, item_ids: Sequence[str],
                         timestamps: Sequence[float], at: float | None, n: int
                         ) -> tuple[np.ndarray, np.ndarray]:
        """The rows the top-k index finds among the n best for one history, scored exactly:
        (int64[c] catalogue positions ascending, float32[c] scores as ``score_next`` gives
        them); the query vector is batched with concurrent requests."""
        query = self.querier.submit((item_ids, timestamps, at))
        rows, scores = candidates(topk, query, self.item_vectors(), n)
        if not self.bundle.blends:
            return rows, scores
        return self.bundle.blend_candidates(rows, query, self.item_vectors(), item_ids,
                                            timestamps)

    def replay_drift(self, item_ids: Sequence[str], timestamps: Sequence[float]
                     ) -> DriftTrace:
        """The drift detector over a whole window of known items, batched."""
        return self.tracer.submit((item_ids, timestamps))

    def item_vectors(self) -> np.ndarray:
        """The bundle's item vectors on the CPU (float32[N, H]), taken once per bundle: a
        view of the table on the CPU, a copy on CUDA that no request should make again."""
        return self.tables.get("item_vectors", self.bundle.item_vectors)

    def tie_key(self) -> np.ndarray:
        """int64[N]: each row's rank among the sorted item ids, built once per bundle. Equal
        scores are ranked by it, not by row: rows are in the order this process learned of
        the items, which differs between processes."""
        return self.tables.get("tie_key", lambda: ranking.id_order(self.bundle.item_ids))

    def unit_table(self, source: str) -> np.ndarray:
        """float32[N, H] unit rows of the item table ("item_table") or text embeddings
        ("text"), for similar items and explanations."""
        vectors = self.bundle.item_vectors if source == "item_table" else self.bundle.text_vectors
        return self.tables.get(f"unit:{source}", lambda: similarity.unit_rows(vectors()))
