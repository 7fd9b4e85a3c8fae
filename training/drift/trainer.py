"""Features of drift cases from the frozen sequence model; how each drift detector kind is
trained (a registry of trainers by kind, beside app.ml.parts' registry of part kinds); the
``feature-gru`` drift head's training loop."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from app.ml.drift_head import DriftHead, drift_features
from app.ml.drift_shift import (
    SURPRISE_COLUMNS,
    EmbeddingShiftHead,
    item_space,
    median_gamma,
    shift_features,
)
from app.ml.padding import right_pad
from app.ml.parts import DriftDetector, NextItemScorer, get_kind
from app.ml.sequence import SequenceInterestModel
from training.drift.config import DriftConfig
from training.drift.config import HeadTrainConfig as HeadTrainConfig  # re-exported
from training.drift.splicing import DriftCase

# Modules holding drift trainers (imported when a trainer is first looked up).
TRAINER_MODULES = ("training.drift.trainer", "training.drift.bocpd_fit")


class DriftTrainer(Protocol):
    """How one drift detector kind is fitted on the head-training cases and read on the others.

    ``features`` are the cases' drift features (:func:`case_features`, computed once per run:
    calibration and the baselines use them too); a kind may use them or ignore them.
    ``catalogue`` (training.drift.bocpd_fit.DriftCatalogue): the items' categories and topics,
    for a kind that reads them.

    Optional, looked up by name: ``calibrate(detector, scorer, calibration_cases, config) ->
    threshold`` for a kind that sets its own thresholds (else the pipeline calibrates one
    threshold on the probabilities), and ``traces(detector, scorer, features, cases, device)
    -> list[EventTrace]`` for a kind whose decisions read more than the probabilities and the
    scorer's surprise."""

    def fit(self, scorer: NextItemScorer, features: Sequence[torch.Tensor],
            cases: Sequence[DriftCase], config: DriftConfig, seed: int, device: torch.device,
            progress: bool, catalogue: Any = None) -> DriftDetector: ...

    def probabilities(self, detector: DriftDetector, scorer: NextItemScorer,
                      features: Sequence[torch.Tensor], cases: Sequence[DriftCase],
                      device: torch.device) -> list[np.ndarray]:
        """Per-event drift probabilities of each case: float[L_i] each."""
        ...


_TRAINERS: dict[str, DriftTrainer] = {}
C = TypeVar("C", bound=type)


def register_drift_trainer(kind: str) -> Callable[[C], C]:
    """Class decorator: an instance of the class trains drift detectors of ``kind``."""

    def decorate(cls: C) -> C:
        _TRAINERS[kind] = cls()
        return cls

    return decorate


def drift_trainer(kind: str) -> DriftTrainer:
    """The trainer of a registered drift kind; ValueError naming the trainable kinds."""
    for module in TRAINER_MODULES:
        importlib.import_module(module)
    get_kind("drift", kind)  # the kind must also be one a bundle can load
    if kind not in _TRAINERS:
        raise ValueError(f"drift kind {kind!r} has no trainer (trainable: "
                         f"{', '.join(sorted(_TRAINERS))})")
    return _TRAINERS[kind]


@torch.no_grad()
def trace_probabilities(detector: DriftDetector, scorer: NextItemScorer,
                        cases: Sequence[DriftCase], device: torch.device,
                        batch_size: int = 32) -> list[np.ndarray]:
    """Per-event probabilities of each case through the detector's own ``traces`` (what the
    bundle serves): for kinds that do not read the shared features."""
    out: list[np.ndarray] = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        items = pad_batch([c.items for c in chunk], torch.int64).to(device)
        times = pad_batch([c.times for c in chunk], torch.float64).to(device)
        probs = detector.traces(scorer, items, times).probabilities.float().cpu().numpy()
        out.extend(probs[row, : len(c.items)] for row, c in enumerate(chunk))
    return out


def pad_batch(rows: Sequence[Sequence[float]], dtype: torch.dtype) -> torch.Tensor:
    """Right-pad 1-D rows with zeros: [B, max_len] (app.ml.padding, as serving pads)."""
    return right_pad(rows, dtype)


@torch.no_grad()
def case_features(model: SequenceInterestModel, cases: Sequence[DriftCase],
                  item_embeddings: torch.Tensor, device: torch.device,
                  batch_size: int = 32, progress: bool = False) -> list[torch.Tensor]:
    """Drift features of each case: FloatTensor[L_i, F] on the CPU, in the cases' order.

    Cases are batched by length so little time goes on padding.
    """
    model.eval().to(device)
    embeddings = item_embeddings.to(device)
    order = sorted(range(len(cases)), key=lambda i: len(cases[i].items))
    out: list[torch.Tensor | None] = [None] * len(cases)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="drift features", leave=False, disable=not progress):
        picked = order[start : start + batch_size]
        items = pad_batch([cases[i].items for i in picked], torch.int64).to(device)
        times = pad_batch([cases[i].times for i in picked], torch.float64).to(device)
        features = drift_features(model, items, times, embeddings).float().cpu()
        for row, i in enumerate(picked):
            out[i] = features[row, : len(cases[i].items)].clone()
    return [f for f in out if f is not None]


def _standardise(head: DriftHead, features: Sequence[torch.Tensor]) -> None:
    """Set the head's input mean/std from all events of the training cases."""
    stacked = torch.cat(list(features))
    head.feature_mean.copy_(stacked.mean(dim=0))
    head.feature_std.copy_(stacked.std(dim=0).clamp(min=1e-6))


def _length_batches(lengths: Sequence[int], batch_size: int,
                    generator: torch.Generator) -> list[list[int]]:
    """Batches of cases of similar length (little padding), in a random order each epoch."""
    jitter = torch.rand(len(lengths), generator=generator)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], float(jitter[i])))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _loss_mask(lengths: Sequence[int], width: int, min_events: int) -> torch.Tensor:
    """[B, width] 1 at real events from ``min_events - 1`` on (where decisions are made)."""
    positions = torch.arange(width).unsqueeze(0)
    lengths_t = torch.as_tensor(list(lengths)).unsqueeze(1)
    return ((positions < lengths_t) & (positions >= min_events - 1)).float()


@contextlib.contextmanager
def _single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """A 32-wide GRU gains nothing from intra-op threads on the CPU, and on a busy machine their
    synchronisation made one head training 20x slower; the previous setting is restored."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


H = TypeVar("H", bound=DriftHead)


def train_head(features: Sequence[torch.Tensor], cases: Sequence[DriftCase],
               config: HeadTrainConfig, min_events: int, seed: int, device: torch.device,
               progress: bool = False) -> DriftHead:
    """Fit a DriftHead with class-weighted BCE on per-event window labels; returns eval mode."""
    torch.manual_seed(seed)
    head = DriftHead(features[0].shape[-1], config.hidden_size)
    return fit_head(head, features, cases, config, min_events, seed, device, progress)


def fit_head(head: H, features: Sequence[torch.Tensor], cases: Sequence[DriftCase],
             config: HeadTrainConfig, min_events: int, seed: int, device: torch.device,
             progress: bool = False) -> H:
    """Train ``head`` (a DriftHead or subclass, fresh) on ``features``; returns eval mode."""
    with _single_thread_on_cpu(device):
        return _fit_head(head, features, cases, config, min_events, seed, device, progress)


def _fit_head(head: H, features: Sequence[torch.Tensor], cases: Sequence[DriftCase],
              config: HeadTrainConfig, min_events: int, seed: int, device: torch.device,
              progress: bool) -> H:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    _standardise(head, features)
    head.to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    labels = [torch.from_numpy(c.labels(config.label_window)) for c in cases]
    pos_weight = torch.tensor(config.pos_weight, device=device)
    for _ in tqdm(range(config.epochs), desc="drift head", leave=False, disable=not progress):
        head.train()
        for picked in _length_batches([len(y) for y in labels], config.batch_size, generator):
            x = torch.nn.utils.rnn.pad_sequence([features[i] for i in picked], batch_first=True)
            y = torch.nn.utils.rnn.pad_sequence([labels[i] for i in picked], batch_first=True)
            mask = _loss_mask([len(labels[i]) for i in picked], y.shape[1], min_events)
            x, y, mask = x.to(device), y.to(device), mask.to(device)
            loss = F.binary_cross_entropy_with_logits(head(x), y, weight=mask,
                                                      pos_weight=pos_weight, reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            (loss / mask.sum().clamp(min=1.0)).backward()
            optimizer.step()
    return head.eval()


@torch.no_grad()
def head_probabilities(head: DriftHead, features: Sequence[torch.Tensor],
                       device: torch.device, batch_size: int = 256) -> list[np.ndarray]:
    """Per-event drift probabilities of each case: float[L_i] numpy arrays."""
    out = []
    for start in range(0, len(features), batch_size):
        chunk = list(features[start : start + batch_size])
        x = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True).to(device)
        probs = head.probabilities(x).float().cpu().numpy()
        out.extend(probs[row, : len(f)] for row, f in enumerate(chunk))
    return out


class BuiltFromOptions:
    """Trainer of a kind with nothing to learn (a statistical detector): the detector is its
    class built from ``config.options``; calibration then sets its threshold like any other.
    Register it for such a kind: ``register_drift_trainer("<kind>")(BuiltFromOptions)``."""

    def fit(self, scorer: NextItemScorer, features: Sequence[torch.Tensor],
            cases: Sequence[DriftCase], config: DriftConfig, seed: int, device: torch.device,
            progress: bool, catalogue: Any = None) -> DriftDetector:
        detector: DriftDetector = get_kind("drift", config.kind).cls(**config.options)
        return detector.to(device)

    def probabilities(self, detector: DriftDetector, scorer: NextItemScorer,
                      features: Sequence[torch.Tensor], cases: Sequence[DriftCase],
                      device: torch.device) -> list[np.ndarray]:
        return trace_probabilities(detector, scorer, cases, device)


@register_drift_trainer("feature-gru")
class FeatureGruTrainer:
    """The drift head on the shared features; settings in ``DriftConfig.head``."""

    def fit(self, scorer: NextItemScorer, features: Sequence[torch.Tensor],
            cases: Sequence[DriftCase], config: DriftConfig, seed: int, device: torch.device,
            progress: bool, catalogue: Any = None) -> DriftDetector:
        return train_head(features, cases, config.head, config.min_events, seed, device,
                          progress)

    def probabilities(self, detector: DriftDetector, scorer: NextItemScorer,
                      features: Sequence[torch.Tensor], cases: Sequence[DriftCase],
                      device: torch.device) -> list[np.ndarray]:
        assert isinstance(detector, DriftHead)
        return head_probabilities(detector, features, device)


@torch.no_grad()
def shift_case_features(cases: Sequence[DriftCase], item_text: torch.Tensor, gamma: float,
                        batch_size: int = 32) -> list[torch.Tensor]:
    """:func:`app.ml.drift_shift.shift_features` of each case: FloatTensor[L_i, F] (CPU)."""
    order = sorted(range(len(cases)), key=lambda i: len(cases[i].items))
    out: list[torch.Tensor | None] = [None] * len(cases)
    for start in range(0, len(order), batch_size):
        picked = order[start : start + batch_size]
        items = pad_batch([cases[i].items for i in picked], torch.int64)
        features = shift_features(items, item_text, gamma).float()
        for row, i in enumerate(picked):
            out[i] = features[row, : len(cases[i].items)].clone()
    return [f for f in out if f is not None]


@register_drift_trainer("embedding-shift")
class EmbeddingShiftTrainer:
    """The ``embedding-shift`` head (app.ml.drift_shift): the GRU of ``DriftConfig.head`` over
    two-sample evidence on item vectors (``DriftConfig.options["spaces"]``, default
    ``["items"]``) and, with ``options["surprise"]``, the shared features but the gap."""

    def fit(self, scorer: NextItemScorer, features: Sequence[torch.Tensor],
            cases: Sequence[DriftCase], config: DriftConfig, seed: int, device: torch.device,
            progress: bool, catalogue: Any = None) -> DriftDetector:
        spaces = list(config.options.get("spaces", ["items"]))
        surprise = bool(config.options.get("surprise", False))
        tables = [item_space(scorer, space).detach().cpu() for space in spaces]
        gammas = [median_gamma([c.items for c in cases[:500]], t) for t in tables]
        groups = [shift_case_features(cases, t, g) for t, g in zip(tables, gammas, strict=True)]
        if surprise:  # the shared features, read the same way traces reads them
            groups.append([f[:, SURPRISE_COLUMNS] for f in features])
        shift = [torch.cat(parts, dim=-1) for parts in zip(*groups, strict=True)]
        torch.manual_seed(seed)
        head = EmbeddingShiftHead(shift[0].shape[-1], config.head.hidden_size, gammas, spaces,
                                  surprise)
        return fit_head(head, shift, cases, config.head, config.min_events, seed, device,
                        progress)

    def probabilities(self, detector: DriftDetector, scorer: NextItemScorer,
                      features: Sequence[torch.Tensor], cases: Sequence[DriftCase],
                      device: torch.device) -> list[np.ndarray]:
        return trace_probabilities(detector, scorer, cases, device)
