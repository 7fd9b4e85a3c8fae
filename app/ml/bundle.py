"""The model bundle: everything serving needs, in one directory, with a pinned format number.

A bundle is three parts (:mod:`app.ml.parts`): an item encoder, a next-item scorer and a drift
detector, each an object of a registered *kind* that saves its own files, plus the catalogue,
topics and the drift decision settings. Layout of a bundle directory (format 2)::

    manifest.json        model_format 2, "parts" (per role: kind, format, files, config),
                         drift settings, topics, metrics, fingerprint, training config
    item_ids.json        catalogue order: item_ids[i] has model index i + 1 (0 = padding)
    topic_centroids.npy  float32[n_topics, D]
    log_popularity.npy   with a repeat-aware blend ("blend" in the manifest): float32[N]
    ...                  each part's files, e.g. with the default kinds:
    encoder/             kind minilm: fine-tuned MiniLM (safetensors weights + tokenizer)
    sequence_model.pt    kind sasrec-text-time: state dict (holds the item text embeddings)
    drift_head.pt        kind feature-gru: state dict (holds its feature standardisation)

Format 1 (every version registered before parts had kinds) has the same files and a manifest
without "parts": it is read as the default kinds (``DEFAULT_KINDS``) at their format 1.

Serving and evaluation both score through the methods below, so the numbers evaluation
reports come from the code that serves.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.domain.drift import COOLDOWN, MIN_EVENTS, ChangePoint, detect_change_points
from app.domain.repeat import RepeatBlend, blend_scores, repeat_positions
from app.ml.device import autocast_context
from app.ml.padding import right_pad
from app.ml.parts import (
    DEFAULT_KINDS,
    ROLES,
    BundleError,
    DriftDetector,
    EventTrace,
    ItemEncoder,
    NextItemScorer,
    load_part,
    save_part,
)
from app.ml.sequence import request_bucket_interval
from app.ml.topics import TopicTable
from app.ml.topk import inner_products

MODEL_FORMAT = 2  # what save writes
READABLE_FORMATS = (1, 2)  # what load reads
MANIFEST = "manifest.json"
EMBED_CHUNK = 4096  # texts per encoder call when embedding many items (bounded memory)
BUNDLE_FILES = ("manifest.json", "item_ids.json", "topic_centroids.npy")  # besides the parts'
POPULARITY_FILE = "log_popularity.npy"  # with a blend: float32[N] log(1 + training count)
# Format 1: the files of each part and where its config was in the manifest.
FORMAT1_FILES = {"encoder": ["encoder"], "scorer": ["sequence_model.pt"],
                 "drift": ["drift_head.pt"]}

__all__ = ["MANIFEST", "MODEL_FORMAT", "BundleError", "DriftSettings", "InterestModelBundle",
           "drift_change_points", "read_manifest"]


@dataclass
class DriftSettings:
    """How drift probabilities become decisions (the values calibration used)."""

    threshold: float
    min_events: int = MIN_EVENTS
    cooldown: int = COOLDOWN
    max_events: int = 200  # longest history the drift head reads (its training cases' cap)
    # Cut on the surprise shift around a change above which it is "gradual" (fitted on the
    # head-training splices); None falls back to how fast the drift score rose.
    kind_threshold: float | None = None


def drift_change_points(detector: object, settings: DriftSettings, trace: EventTrace
                        ) -> list[ChangePoint]:
    """The decision rule of a detector over one history's trace, oldest change first: the
    detector's own ``change_points(trace, settings)`` when it has one (a detector that places
    a change before the event raising its alarm), else app.domain.drift's over the
    probabilities (the change at the alarm; abrupt/gradual from the surprise)."""
    rule = getattr(detector, "change_points", None)
    if rule is not None:
        return list(rule(trace, settings))
    return detect_change_points(trace.probabilities, settings.threshold, settings.min_events,
                                settings.cooldown, trace.surprise, settings.kind_threshold)


@dataclass
class InterestModelBundle:
    encoder: ItemEncoder
    sequence_model: NextItemScorer  # the bundle's "scorer" part
    drift_detector: DriftDetector
    drift: DriftSettings
    item_ids: list[str]
    topics: TopicTable
    dataset_fingerprint: str
    training_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # The ranker's repeat-aware blend (app.domain.repeat) and the item counts it reads:
    # float32[N] log(1 + training count), catalogue order; None: the model alone.
    blend: RepeatBlend | None = None
    log_popularity: np.ndarray | None = None
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {item_id: i + 1 for i, item_id in enumerate(self.item_ids)}
        self.sequence_model.eval()
        self.drift_detector.eval()
        self.encoder.eval()

    @property
    def drift_head(self) -> DriftDetector:
        """The drift part (its name from before parts had kinds)."""
        return self.drift_detector

    @property
    def device(self) -> torch.device:
        return self.sequence_model.item_text.device

    @property
    def item_text_embeddings(self) -> torch.Tensor:
        """FloatTensor[N + 1, 384]: row i + 1 is item_ids[i]'s text embedding, row 0 zeros."""
        return self.sequence_model.item_text

    def index_of(self, item_id: str) -> int | None:
        """Model index of a catalogue item (1..N), None when unknown."""
        return self._index.get(item_id)

    # ----------------------------------------------------------------- scoring
    def encode_histories(self, histories: Sequence[Sequence[str]],
                         timestamps: Sequence[Sequence[float]], max_len: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Last ``max_len`` known events of each history, right-padded: (LongTensor[B, L],
        DoubleTensor[B, L]) on the bundle's device. Unknown item ids are skipped."""
        rows = []
        for items, times in zip(histories, timestamps, strict=True):
            if len(items) != len(times):
                raise ValueError("each history needs one timestamp per item")
            known = [(self._index[i], float(t)) for i, t in zip(items, times, strict=True)
                     if i in self._index][-max_len:]
            rows.append(known)
        idx = right_pad([[i for i, _ in row] for row in rows], torch.long)
        ts = right_pad([[t for _, t in row] for row in rows], torch.float64)
        return idx.to(self.device), ts.to(self.device)

    @property
    def uses_request_time(self) -> bool:
        """Whether the scorer's ranking depends on the request time (``at`` below)."""
        return bool(getattr(self.sequence_model, "uses_request_time", False))

    @torch.no_grad()
    def query_vectors_batch(self, histories: Sequence[Sequence[str]],
                            timestamps: Sequence[Sequence[float]],
                            at: Sequence[float | None] | None = None) -> torch.Tensor:
        """Each history's query vector: FloatTensor[B, H] on the bundle's device, the interest
        state whose inner products with ``item_vectors()`` rows are the next-item scores. Each
        history is ordered oldest first (ties in ingestion order) and read through its last
        ``max_len`` known events; a history with no known event gets zeros (every item
        scores 0).

        at: each request's time (epoch seconds; None: the history's last event), read by a
        scorer whose time bias uses the request time (``uses_request_time``); a time before
        the last event counts as that event's time."""
        idx, ts = self.encode_histories(histories, timestamps, self.sequence_model.max_len)
        empty = idx[:, 0] == 0
        idx[empty, 0] = 1  # placeholder event so last_hidden is defined; row zeroed below
        with autocast_context(self.device):
            if self.uses_request_time:
                request = self._request_times(idx, ts, at)
                hidden = self.sequence_model.last_hidden(idx, ts, request)  # type: ignore[call-arg]
            else:
                hidden = self.sequence_model.last_hidden(idx, ts)
        hidden = hidden.float()  # bf16 under CUDA autocast: exact in fp32
        hidden[empty] = 0.0
        return hidden

    @torch.no_grad()
    def score_next_batch(self, histories: Sequence[Sequence[str]],
                         timestamps: Sequence[Sequence[float]],
                         exclude_history: bool = False,
                         at: Sequence[float | None] | None = None) -> torch.Tensor:
        """Next-item scores over the catalogue: FloatTensor[B, N] on the CPU, column i is
        ``item_ids[i]``: ``query_vectors_batch(...) @ item_table[1:].T``. A history with no
        known event gets uniform zeros (serving falls back to popularity for those); `at` as
        in ``query_vectors_batch``."""
        hidden = self.query_vectors_batch(histories, timestamps, at)
        with autocast_context(self.device):  # the matmul in bf16 on CUDA, as before
            logits = self.sequence_model.item_logits(hidden).float()
        scores = logits[:, 1 : len(self.item_ids) + 1].cpu()
        scores[~hidden.any(dim=1).cpu()] = 0.0  # +0.0 whatever the signs of the table's rows
        if self.blends:
            self._blend(scores.numpy(), histories, timestamps)
        if exclude_history:
            for b, items in enumerate(histories):
                seen = [self._index[i] - 1 for i in items if i in self._index]
                scores[b, seen] = -torch.inf
        return scores

    @property
    def blends(self) -> bool:
        """Whether the ranker adds a repeat-aware blend to the model's scores."""
        return self.blend is not None and self.blend.active

    @property
    def history_window(self) -> int:
        """Events of a history that scoring reads: the scorer's window, or the blend's."""
        window = self.sequence_model.max_len
        return max(window, self.blend.window) if self.blend is not None else window

    def _indices(self, item_ids: Sequence[str]) -> np.ndarray:
        """int64[L]: each id's model index, 0 for an id the catalogue does not hold."""
        return np.fromiter((self._index.get(i, 0) for i in item_ids), np.int64, len(item_ids))

    def _blend(self, scores: np.ndarray, histories: Sequence[Sequence[str]],
               timestamps: Sequence[Sequence[float]]) -> None:
        """Add the repeat-aware blend to each row of ``scores`` (float32[B, N]) in place."""
        assert self.blend is not None and self.log_popularity is not None
        for row, items, times in zip(scores, histories, timestamps, strict=True):
            blend_scores(row, self._indices(items), np.asarray(times, np.float64), self.blend,
                         self.log_popularity)

    def blend_candidates(self, rows: np.ndarray, query: np.ndarray, vectors: np.ndarray,
                         item_ids: Sequence[str], timestamps: Sequence[float]
                         ) -> tuple[np.ndarray, np.ndarray]:
        """A top-k index's candidate positions (int64[c], ascending) scored as the full scan
        of a blending bundle scores them: the query vector's inner products with ``vectors``
        (float32[N, H]) plus the blend. The history's repeat items join the candidates: the
        blend may lift them above the index's n best."""
        assert self.blend is not None and self.log_popularity is not None
        indices = self._indices(item_ids)
        extra = repeat_positions(indices, self.blend)
        rows = np.union1d(rows, extra[extra < len(vectors)]).astype(np.int64)
        scores = inner_products(vectors[rows], query)
        blend_scores(scores, indices, np.asarray(timestamps, np.float64), self.blend,
                     self.log_popularity, rows)
        return rows, scores

    @staticmethod
    def _request_times(idx: torch.Tensor, ts: torch.Tensor,
                       at: Sequence[float | None] | None) -> torch.Tensor | None:
        """float64 [B]: each request time (a missing one: its history's last event time)."""
        if at is None:
            return None
        if len(at) != len(idx):
            raise ValueError("at needs one request time per history")
        lengths = (idx > 0).sum(dim=1)
        last = ts[torch.arange(len(idx), device=ts.device), lengths - 1]
        given = torch.tensor([math.nan if t is None else float(t) for t in at],
                             dtype=torch.float64, device=ts.device)
        return torch.where(torch.isnan(given), last, given)

    def request_time_validity(self, item_ids: Sequence[str], timestamps: Sequence[float],
                              at: float) -> tuple[float, float]:
        """The request times [start, end) (epoch seconds) at which this history's ranking is
        the one at ``at``: the scorer reads the request time only through the bucket of its
        gap to each event of the window, so the ranking holds until one of those buckets
        changes. (-inf, inf) for a scorer that does not read the request time."""
        if not self.uses_request_time:
            return (-math.inf, math.inf)
        known = [float(t) for i, t in zip(item_ids, timestamps, strict=True)
                 if i in self._index][-self.sequence_model.max_len:]
        if not known:
            return (-math.inf, math.inf)
        return request_bucket_interval(np.asarray(known), at,
                                       self.sequence_model.config.bias_buckets)  # type: ignore[attr-defined]

    def score_next(self, item_ids: Sequence[str], timestamps: Sequence[float],
                   exclude_history: bool = False, at: float | None = None) -> np.ndarray:
        """One user's next-item scores: float32[N] aligned with ``item_ids`` of the bundle
        (``at``: the request time, see ``score_next_batch``)."""
        return self.score_next_batch([item_ids], [timestamps], exclude_history,
                                     [at])[0].numpy()

    def recommend(self, item_ids: Sequence[str], timestamps: Sequence[float], k: int = 10,
                  exclude_history: bool = True, at: float | None = None
                  ) -> list[tuple[str, float]]:
        """Top-k (item_id, score), best first."""
        scores = torch.from_numpy(self.score_next(item_ids, timestamps, exclude_history, at))
        top = torch.topk(scores, min(k, len(scores)))
        return [(self.item_ids[int(i)], float(s)) for s, i in zip(top.values, top.indices,
                                                                  strict=True)
                if torch.isfinite(s)]

    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        """float32[N, H]: what the scorer scores each catalogue item by (row i = item_ids[i];
        trained items: learned ID + text rows, cold-start items: their text rows)."""
        return self.sequence_model.item_table()[1 : len(self.item_ids) + 1].float().cpu().numpy()

    def text_vectors(self) -> np.ndarray:
        """float32[N, D]: each catalogue item's text embedding (row i = item_ids[i])."""
        return self.item_text_embeddings[1 : len(self.item_ids) + 1].float().cpu().numpy()

    def is_trained(self, item_id: str) -> bool:
        """Whether the scorer learned a row of its own for the item (not text alone)."""
        index = self._index.get(item_id)
        return index is not None and index <= self.sequence_model.n_items

    # ------------------------------------------------------------------- drift
    @torch.no_grad()
    def drift_event_traces(self, histories: Sequence[Sequence[str]],
                           timestamps: Sequence[Sequence[float]]) -> list[EventTrace]:
        """Each history's drift trace (:class:`app.ml.parts.EventTrace`) over its last
        ``max_events`` known events (causal: entry t depends on events up to t only). Computed
        in fp32, as calibration did."""
        idx, ts = self.encode_histories(histories, timestamps, self.drift.max_events)
        lengths = (idx > 0).sum(dim=1).tolist()
        idx[:, 0] = torch.where(idx[:, 0] == 0, 1, idx[:, 0])  # see score_next_batch
        return EventTrace.rows(self.drift_detector.traces(self.sequence_model, idx, ts),
                               lengths)

    def drift_traces_batch(self, histories: Sequence[Sequence[str]],
                           timestamps: Sequence[Sequence[float]]
                           ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-event (drift probability, surprise) of each history: two float[L_b] each (see
        drift_event_traces)."""
        return [(t.probabilities, t.surprise)
                for t in self.drift_event_traces(histories, timestamps)]

    def drift_probabilities_batch(self, histories: Sequence[Sequence[str]],
                                  timestamps: Sequence[Sequence[float]]) -> list[np.ndarray]:
        """Per-event drift probabilities: float[L_b] each (see drift_event_traces)."""
        return [t.probabilities for t in self.drift_event_traces(histories, timestamps)]

    def drift_probabilities(self, item_ids: Sequence[str],
                            timestamps: Sequence[float]) -> np.ndarray:
        return self.drift_probabilities_batch([item_ids], [timestamps])[0]

    def detect_drift(self, item_ids: Sequence[str], timestamps: Sequence[float]
                     ) -> tuple[np.ndarray, ChangePoint | None]:
        """Drift probabilities and the latest change point of a history, by the calibrated
        rule; indices count within the last ``max_events`` known events."""
        [trace] = self.drift_event_traces([item_ids], [timestamps])
        return trace.probabilities, self.decide(trace)

    def change_points(self, trace: EventTrace) -> list[ChangePoint]:
        """Every change point of one history's trace, oldest first, by the calibrated rule:
        the detector's own (``change_points(trace, settings)``, for a detector that locates
        a change before its alarm) or app.domain.drift's over the probabilities. Serving
        (find_drift) and the training-time evaluation both decide through here."""
        return drift_change_points(self.drift_detector, self.drift, trace)

    def decide(self, trace: EventTrace) -> ChangePoint | None:
        """The latest change point of one history's trace (see change_points)."""
        points = self.change_points(trace)
        return points[-1] if points else None

    def change_point(self, probs: np.ndarray, surprise: np.ndarray) -> ChangePoint | None:
        """The latest change point of a trace of probabilities and surprise alone."""
        return self.decide(EventTrace(probs, surprise))

    # ------------------------------------------------------------------ topics
    def item_topic(self, item_id: str) -> int | None:
        index = self.index_of(item_id)
        return None if index is None else int(self.topics.item_topics[index - 1])

    def topic_for_new_item(self, text: str, categories: Sequence[str] = ()) -> int:
        """Topic of a cold-start item: its categories if known, else its embedding's nearest
        topic centroid. Uses the encoder's own tokenizer: call from one thread at a time."""
        known = [c for c in categories if c in self.topics.category_counts]
        embedding = None if known else self.encoder.embed([text])[0].numpy()
        return self.topics.assign(embedding, categories)

    def with_items(self, item_ids: Sequence[str], texts: Sequence[str],
                   categories: Sequence[Sequence[str]] | None = None,
                   replace: bool = False,
                   embedded: tuple[Sequence[str], np.ndarray] | None = None
                   ) -> InterestModelBundle:
        """A copy whose catalogue also holds these cold-start items: they are embedded with
        the encoder, scored by their text alone, and given a topic. Ids the bundle knows are
        skipped, or with `replace` re-embedded in place: their text row and topic are replaced
        (a trained item keeps its learned ID embedding; only its text part changes).
        `embedded`: (ids, float32[n, D]) rows this encoder already made for some of them (the
        stored embeddings): those are used as they are, only the others run the encoder.

        This bundle is left as it is, so serving swaps the copy in atomically while requests
        in flight keep using the original. Call from one thread at a time: the encoder's fast
        tokenizer is not thread-safe.
        """
        categories = categories if categories is not None else [()] * len(item_ids)
        latest = {i: (t, tuple(c)) for i, t, c in zip(item_ids, texts, categories, strict=True)}
        chosen = [(i, t, c) for i, (t, c) in latest.items() if replace or i not in self._index]
        if not chosen:
            return self
        embeddings = self._embeddings_of(chosen, embedded)  # [n, D]
        topics = self.topics.assign_many(embeddings, [c for _, _, c in chosen])
        known = [(n, self._index[i]) for n, (i, _, _) in enumerate(chosen) if i in self._index]
        fresh = [n for n, (i, _, _) in enumerate(chosen) if i not in self._index]
        # The copy shares nothing with this bundle's model, but neither the text table nor
        # the cached item table is deep-copied only to be replaced: at a million items they
        # are 1.5 GB and 0.25 GB.
        source = self.sequence_model
        memo: dict[int, Any] = {id(source.item_text): source.item_text}
        cached = getattr(source, "_item_table_cache", None)
        if cached is not None:
            memo[id(cached)] = None
        model = copy.deepcopy(source, memo)
        old = self.sequence_model.item_text
        table = torch.empty(old.shape[0] + len(fresh), old.shape[1], dtype=torch.float32,
                            device=old.device)
        table[: old.shape[0]] = old
        item_topics = self.topics.item_topics.copy()
        rows = torch.from_numpy(embeddings).to(table.device)
        for n, index in known:
            table[index] = rows[n]
            item_topics[index - 1] = topics[n]
        if fresh:
            table[old.shape[0]:] = rows[fresh]
            item_topics = np.concatenate([item_topics, topics[fresh]])
        model.set_item_text_embeddings(table, copy=False)
        with torch.no_grad(), autocast_context(table.device):
            model.item_table()  # computed here (off the request path), not by a request
        popularity = self.log_popularity
        if popularity is not None and fresh:  # a new item has no training events: log(1) = 0
            popularity = np.concatenate([popularity, np.zeros(len(fresh), np.float32)])
        return dataclasses.replace(self, sequence_model=model, log_popularity=popularity,
                                   topics=dataclasses.replace(self.topics,
                                                              item_topics=item_topics),
                                   item_ids=[*self.item_ids, *(chosen[n][0] for n in fresh)])

    def _embeddings_of(self, chosen: Sequence[tuple[str, str, tuple[str, ...]]],
                       embedded: tuple[Sequence[str], np.ndarray] | None) -> np.ndarray:
        """float32[n, D] rows for `chosen` (id, text, categories): taken from `embedded`
        where it has the id, from the encoder for the rest (in batches)."""
        out = np.empty((len(chosen), self.encoder.dim), np.float32)
        given = {} if embedded is None else {i: n for n, i in enumerate(embedded[0])}
        missing = [n for n, (i, _, _) in enumerate(chosen) if i not in given]
        if embedded is not None and len(missing) < len(chosen):
            have = [(n, given[i]) for n, (i, _, _) in enumerate(chosen) if i in given]
            out[[n for n, _ in have]] = embedded[1][[m for _, m in have]]
        for start in range(0, len(missing), EMBED_CHUNK):
            part = missing[start:start + EMBED_CHUNK]
            out[part] = self.encoder.embed([chosen[n][1] for n in part]).float().cpu().numpy()
        return out

    # -------------------------------------------------------------- self-check
    def smoke_test(self) -> None:
        """Real inference on a short history; raises BundleError on bad shapes or values."""
        n = len(self.item_ids)
        if n == 0:
            raise BundleError("bundle has an empty catalogue")
        history = self.item_ids[: min(12, n)]
        times = [1_000_000_000.0 + 3600.0 * i for i in range(len(history))]
        scores = self.score_next(history, times)
        if scores.shape != (n,) or not np.isfinite(scores).all():
            raise BundleError(f"next-item scores: shape {scores.shape}, expected ({n},), finite")
        probs = self.drift_probabilities(history, times)
        if probs.shape != (len(history),) or not ((probs >= 0) & (probs <= 1)).all():
            raise BundleError(f"drift probabilities: shape {probs.shape} or values out of [0, 1]")
        embedding = self.encoder.embed(["smoke test item"])
        if embedding.shape != (1, self.sequence_model.text_dim):
            raise BundleError(f"encoder output shape {tuple(embedding.shape)}")

    # --------------------------------------------------------------- save/load
    def parts(self) -> dict[str, Any]:
        """The bundle's parts by role (see app.ml.parts.ROLES)."""
        return {"encoder": self.encoder, "scorer": self.sequence_model,
                "drift": self.drift_detector}

    def save(self, directory: Path | str) -> Path:
        """Write the bundle to ``directory`` (created; must be empty or absent)."""
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()):
            raise BundleError(f"{directory} is not empty")
        directory.mkdir(parents=True, exist_ok=True)
        entries = {role: save_part(role, part, directory, BUNDLE_FILES)
                   for role, part in self.parts().items()}
        np.save(directory / "topic_centroids.npy", self.topics.centroids.astype(np.float32))
        (directory / "item_ids.json").write_text(json.dumps(self.item_ids))
        if self.blend is not None and self.log_popularity is not None:
            np.save(directory / POPULARITY_FILE, self.log_popularity.astype(np.float32))
        (directory / MANIFEST).write_text(json.dumps(self._manifest(entries), indent=2,
                                                     default=str))
        return directory

    def _manifest(self, parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {
            "model_format": MODEL_FORMAT,
            "parts": parts,
            "drift": asdict(self.drift),
            "topics": self.topics.to_json(),
            "dataset_fingerprint": self.dataset_fingerprint,
            "training_config": self.training_config,
            "metrics": self.metrics,
            **({"blend": self.blend.to_json()} if self.blend is not None else {}),
        }

    @classmethod
    def load(cls, directory: Path | str, device: torch.device | str = "cpu"
             ) -> InterestModelBundle:
        """Read a bundle written by :meth:`save` (or by format-1 code); refuses other formats,
        unregistered part kinds and missing files."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        try:
            parts = manifest_parts(manifest)
            files = [*BUNDLE_FILES, *(name for entry in parts.values() if isinstance(entry, dict)
                                      for name in entry.get("files") or [])]
            missing = [name for name in files if not (directory / name).exists()]
            if missing:
                raise BundleError(f"bundle {directory} is missing {missing}")
            return cls._build(directory, manifest, parts, torch.device(device))
        except BundleError:
            raise  # already says which file or part is wrong
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            # e.g. a config field this code no longer has, or weights of another shape
            raise BundleError(f"bundle {directory} does not match this code's model "
                              f"classes: {type(error).__name__}: {error}") from error

    @classmethod
    def _build(cls, directory: Path, manifest: dict[str, Any], parts: dict[str, Any],
               device: torch.device) -> InterestModelBundle:
        item_ids = json.loads((directory / "item_ids.json").read_text())
        built = {role: load_part(role, parts[role], directory, device) for role in ROLES}
        rows = built["scorer"].item_text.shape[0]
        if len(item_ids) + 1 != rows:
            raise BundleError(f"item_ids.json has {len(item_ids)} ids, the model's item table "
                              f"{rows - 1}")
        topics = TopicTable.from_json(manifest["topics"],
                                      np.load(directory / "topic_centroids.npy"))
        blend, popularity = None, None
        if manifest.get("blend") is not None:
            blend = RepeatBlend.from_json(manifest["blend"])
            if not (directory / POPULARITY_FILE).is_file():
                raise BundleError(f"bundle {directory} has a blend but no {POPULARITY_FILE}")
            popularity = np.load(directory / POPULARITY_FILE).astype(np.float32)
            if len(popularity) != len(item_ids):
                raise BundleError(f"{POPULARITY_FILE} has {len(popularity)} rows, the "
                                  f"catalogue {len(item_ids)}")
        return cls(blend=blend, log_popularity=popularity,
            encoder=built["encoder"], sequence_model=built["scorer"],
            drift_detector=built["drift"], drift=DriftSettings(**manifest["drift"]),
            item_ids=item_ids, topics=topics, dataset_fingerprint=manifest["dataset_fingerprint"],
            training_config=manifest["training_config"], metrics=manifest["metrics"],
        )


def manifest_parts(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each role's part entry ({"kind", "format", "files", "config"}); a format-1 manifest's
    parts are the default kinds at their format 1, configured from its old keys."""
    if manifest["model_format"] == 1:
        configs = {"encoder": {},
                   "scorer": {"sequence_config": manifest["sequence_config"],
                              "n_items": manifest["n_items"], "text_dim": manifest["text_dim"]},
                   "drift": manifest["drift_head"]}
        return {role: {"kind": DEFAULT_KINDS[role], "format": 1, "files": FORMAT1_FILES[role],
                       "config": configs[role]} for role in ROLES}
    parts = manifest.get("parts")
    if not isinstance(parts, dict):
        raise BundleError("the manifest has no parts section")
    missing = [role for role in ROLES if role not in parts]
    if missing:
        raise BundleError(f"the manifest names no part for {missing}")
    return {role: parts[role] for role in ROLES}


def read_manifest(directory: Path) -> dict[str, Any]:
    """The bundle's manifest, after checking its format number is one this code reads."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{directory} has no {MANIFEST}: not a model bundle")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise BundleError(f"{path} is not valid JSON: {error}") from error
    found = manifest.get("model_format") if isinstance(manifest, dict) else None
    if type(found) is not int or found not in READABLE_FORMATS:
        raise BundleError(f"bundle {directory} has model_format {found!r}; this code reads "
                          f"formats {' and '.join(map(str, READABLE_FORMATS))} only (retrain, "
                          f"or run a matching release)")
    return manifest
