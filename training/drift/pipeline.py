"""Drift detection end to end: splice, featurise, train the head, calibrate, compare baselines.

Protocol (docs/drift-protocol.md): users are split (seeded) into three disjoint groups.
The head trains on the first group's cases; the alarm threshold is calibrated on the second
group's unspliced sequences to ``target_alarms_per_1k``, and each baseline's knob is tuned there
to the same rate; everything is scored on the third group.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.domain.drift import COOLDOWN, MIN_EVENTS, alarm_indices, classify_kind, kind_score
from app.ml.drift_head import FEATURE_NAMES
from app.ml.parts import DEFAULT_KINDS, DriftDetector
from app.ml.sequence import SequenceInterestModel
from training.data.sequences import UserSequence
from training.drift.baselines import (
    KernelCPDRunner,
    adwin_alarms,
    every_k_alarms,
    never_alarms,
    page_hinkley_alarms,
)
from training.drift.calibration import (
    alarms_per_1k,
    calibrate_threshold,
    fit_kind_threshold,
    tune_knob,
)
from training.drift.evaluation import evaluate_alarms
from training.drift.splicing import (
    DriftCase,
    SpliceConfig,
    make_cases,
    save_cases,
    split_users,
)
from training.drift.trainer import HeadTrainConfig, case_features, drift_trainer

Metrics = dict[str, float | None]
GROUPS = ("train", "calibration", "evaluation")


@dataclass
class DriftConfig:
    """Drift settings; the defaults are the ml-100k ones (:meth:`tiny` for smoke tests)."""

    kind: str = DEFAULT_KINDS["drift"]  # the detector kind trained (app.ml.parts registry)
    splice: SpliceConfig = field(default_factory=SpliceConfig)  # calibration/evaluation cases
    # Head-training cases put the change anywhere from ``min_events`` on, so the head cannot
    # learn the evaluation protocol's change-point range (30..80) as a prior on position.
    train_splice: SpliceConfig = field(
        default_factory=lambda: SpliceConfig(min_prefix=10, max_prefix=150))
    head: HeadTrainConfig = field(default_factory=HeadTrainConfig)  # kind feature-gru's
    # settings of another kind's trainer (its own keys; feature-gru reads ``head`` instead)
    options: dict[str, Any] = field(default_factory=dict)
    group_fractions: tuple[float, float, float] = (0.4, 0.3, 0.3)  # train / calib / eval users
    train_cases: dict[str, int] = field(  # spliced cases per user A (+1 unspliced per user)
        default_factory=lambda: {"abrupt": 3, "gradual": 3, "none": 1})
    eval_cases: dict[str, int] = field(default_factory=lambda: {"abrupt": 1, "gradual": 1,
                                                                "none": 1})
    target_alarms_per_1k: float = 2.0  # false alarms per 1,000 events on unspliced sequences
    margin: int = 3  # a detection within +-margin events of the change point counts
    min_events: int = MIN_EVENTS  # no decision before a user has this many events
    cooldown: int = COOLDOWN  # events after an alarm without a new one
    max_users: int | None = None  # use only the first users (tiny runs)

    @classmethod
    def tiny(cls) -> DriftConfig:
        """Seconds-long run for tests: few users, short cases, a short head training."""
        splice = SpliceConfig(min_prefix=12, max_prefix=20, min_suffix=8, max_suffix=15,
                              ramp=4, max_unspliced=40)
        return cls(
            splice=splice, train_splice=splice,
            head=HeadTrainConfig(hidden_size=8, epochs=2, batch_size=16),
            train_cases={"abrupt": 1, "gradual": 1, "none": 1}, max_users=60,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftConfig:
        """Build from a (YAML-loaded) mapping; ``splice`` and ``head`` may be sub-mappings."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown drift settings: {sorted(unknown)}")
        values, defaults = dict(data), cls()
        # Sub-sections override the default sub-config field by field.
        for name, kind in (("splice", SpliceConfig), ("train_splice", SpliceConfig),
                           ("head", HeadTrainConfig)):
            values[name] = kind(**{**asdict(getattr(defaults, name)), **values.get(name, {})})
        if "group_fractions" in values:
            values["group_fractions"] = tuple(values["group_fractions"])
        return cls(**values)


@dataclass
class DriftResult:
    detector: DriftDetector  # of kind config.kind, on the CPU
    threshold: float
    kind_threshold: float  # cut on kind_score (surprise after vs before) above which: gradual
    target_alarms_per_1k: float
    calibration_alarms_per_1k: float  # ours, on the calibration users (where it was set)
    measured_alarms_per_1k: float  # ours, on the evaluation users' unspliced sequences
    metrics: dict[str, Metrics]  # detector -> f1, precision, recall, median_delay, alarms_per_1k
    knobs: dict[str, float]  # baseline knobs tuned to our calibration rate
    cases: dict[str, list[DriftCase]]  # group -> cases (the run's exact test material)
    groups: dict[str, list[str]]  # group -> user ids
    seed: int
    config: DriftConfig
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    def save_cases(self, path: Path) -> None:
        save_cases(self.cases, path)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly figures (no head, no cases) for logging."""
        return {"seed": self.seed, "threshold": self.threshold,
                "kind_threshold": self.kind_threshold,
                "target_alarms_per_1k": self.target_alarms_per_1k,
                "calibration_alarms_per_1k": self.calibration_alarms_per_1k,
                "measured_alarms_per_1k": self.measured_alarms_per_1k,
                "metrics": self.metrics, "knobs": self.knobs, "seconds": self.seconds,
                "timings": self.timings,
                "n_cases": {g: len(c) for g, c in self.cases.items()},
                "config": asdict(self.config)}


def _build_cases(sequences: list[UserSequence], vectors: np.ndarray, config: DriftConfig,
                 seed: int) -> tuple[dict[str, list[str]], dict[str, list[DriftCase]]]:
    users = sequences[: config.max_users] if config.max_users else sequences
    by_id = {u.user_id: u for u in users}
    ids = split_users(sorted(by_id), config.group_fractions, seed)
    per_group = (config.train_cases, {"none": 1}, config.eval_cases)
    splices = (config.train_splice, config.splice, config.splice)
    cases = {
        name: make_cases([by_id[u] for u in group], vectors, splice, per_user, seed * 1000 + k)
        for k, (name, group, per_user, splice) in enumerate(
            zip(GROUPS, ids, per_group, splices, strict=True))
    }
    return dict(zip(GROUPS, ids, strict=True)), cases


def _unspliced(values: list[Any], cases: list[DriftCase]) -> list[Any]:
    return [v for v, c in zip(values, cases, strict=True) if c.kind == "none"]


def _score(alarms: list[np.ndarray], cases: list[DriftCase], margin: int) -> Metrics:
    return evaluate_alarms(alarms, [c.change_point for c in cases],
                           [len(c.items) for c in cases], [c.kind for c in cases], margin)


def _surprise(features: list[torch.Tensor]) -> list[np.ndarray]:
    column = FEATURE_NAMES.index("surprise")
    return [f[:, column].numpy() for f in features]


def _fit_kind(features: list[torch.Tensor], cases: list[DriftCase]) -> float:
    """Kind threshold from the training group's spliced cases, read at their change points."""
    pairs = [(kind_score(s, c.change_point), c.kind == "gradual")
             for s, c in zip(_surprise(features), cases, strict=True) if c.change_point > 0]
    pairs = [(score, gradual) for score, gradual in pairs if score is not None]
    return fit_kind_threshold([p[0] for p in pairs], [p[1] for p in pairs])


def _kind_accuracy(probs: list[np.ndarray], surprise: list[np.ndarray], alarms: list[np.ndarray],
                   cases: list[DriftCase], thresholds: tuple[float, float],
                   margin: int) -> float | None:
    """Share of detected spliced cases whose abrupt/gradual label matches the splice."""
    right = total = 0
    for p, s, a, c in zip(probs, surprise, alarms, cases, strict=True):
        hits = [i for i in a if c.change_point >= 0 and abs(i - c.change_point) <= margin]
        if hits:
            total += 1
            right += classify_kind(p, int(hits[0]), thresholds[0], s, thresholds[1]) == c.kind
    return right / total if total else None


def _kernel_cpd_rows(cases: dict[str, list[DriftCase]], vectors: np.ndarray, rate: float,
                     config: DriftConfig) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """KernelCPD alarms on the evaluation cases: (rate-matched, default pen) and the pen."""
    calib = _unspliced(cases["calibration"], cases["calibration"])
    runner = KernelCPDRunner([vectors[c.items] for c in calib])
    lengths = [len(c.items) for c in calib]
    pen = tune_knob(lambda p: alarms_per_1k(runner.alarms(p, config.min_events), lengths),
                    rate, 1e-3, 1e4, rate_rises_with_knob=False)
    evaluation = KernelCPDRunner([vectors[c.items] for c in cases["evaluation"]])
    return (evaluation.alarms(pen, config.min_events),
            evaluation.alarms(None, config.min_events), pen)


def _baselines(feats: dict[str, list[torch.Tensor]], cases: dict[str, list[DriftCase]],
               item_vectors: dict[str, np.ndarray], rate: float, config: DriftConfig
               ) -> tuple[dict[str, Metrics], dict[str, float]]:
    """Default and rate-matched rows for ADWIN, PageHinkley and KernelCPD, plus trivial rows.

    ``item_vectors``: "text" (item text embeddings) and "items" (the sequence model's item
    table), float[N+1, D] each; KernelCPD runs on both (``kernel_cpd`` = text).
    """
    calib_signal = _surprise(_unspliced(feats["calibration"], cases["calibration"]))
    calib_lengths = [len(x) for x in calib_signal]
    eval_signal = _surprise(feats["evaluation"])
    m, cases_e = config.min_events, cases["evaluation"]

    def ph_rate(knob: float) -> float:
        return alarms_per_1k([page_hinkley_alarms(x, knob, m) for x in calib_signal],
                             calib_lengths)

    def adwin_rate(knob: float) -> float:
        return alarms_per_1k([adwin_alarms(x, knob, m) for x in calib_signal], calib_lengths)

    kcpd, kcpd_default, kcpd_pen = _kernel_cpd_rows(cases, item_vectors["text"], rate, config)
    kcpd_items, kcpd_items_default, kcpd_items_pen = _kernel_cpd_rows(
        cases, item_vectors["items"], rate, config)
    knobs = {
        "adwin": tune_knob(adwin_rate, rate, 1e-12, 1.0, rate_rises_with_knob=True),
        "page_hinkley": tune_knob(ph_rate, rate, 1e-2, 1e4, rate_rises_with_knob=False),
        "kernel_cpd": kcpd_pen, "kernel_cpd_items": kcpd_items_pen,
    }
    margin = config.margin
    rows = {
        "adwin": [adwin_alarms(x, knobs["adwin"], m) for x in eval_signal],
        "adwin_default": [adwin_alarms(x, 0.002, m) for x in eval_signal],
        "page_hinkley": [page_hinkley_alarms(x, knobs["page_hinkley"], m) for x in eval_signal],
        "page_hinkley_default": [page_hinkley_alarms(x, 50.0, m) for x in eval_signal],
        "kernel_cpd": kcpd, "kernel_cpd_default": kcpd_default,
        "kernel_cpd_items": kcpd_items, "kernel_cpd_items_default": kcpd_items_default,
        "never": [never_alarms(len(c.items)) for c in cases_e],
        f"every_{2 * margin + 1}": [every_k_alarms(len(c.items), 2 * margin + 1, m)
                                    for c in cases_e],
    }
    return {name: _score(a, cases_e, margin) for name, a in rows.items()}, knobs


def train_and_evaluate_drift(model: SequenceInterestModel, item_embeddings: torch.Tensor,
                             sequences: list[UserSequence], config: DriftConfig, seed: int,
                             device: torch.device, progress: bool = True) -> DriftResult:
    """Train the drift detector (kind ``config.kind``) on spliced cases and compare it with
    the baselines.

    model: the trained, frozen sequence model; item_embeddings: FloatTensor[N+1, D] item text
    embeddings (row 0 zeros); sequences: the users' training-portion sequences.
    """
    start = clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str) -> None:
        nonlocal clock
        timings[stage] = time.perf_counter() - clock
        clock = time.perf_counter()

    vectors = item_embeddings.detach().float().cpu().numpy()
    groups, cases = _build_cases(sequences, vectors, config, seed)
    lap("splicing")
    feats = {g: case_features(model, cases[g], item_embeddings, device, progress=progress)
             for g in GROUPS}
    lap("features")
    trainer = drift_trainer(config.kind)
    detector = trainer.fit(model, feats["train"], cases["train"], config, seed, device, progress)
    lap("head")
    probs = {g: trainer.probabilities(detector, model, feats[g], cases[g], device)
             for g in GROUPS[1:]}
    calib_probs = _unspliced(probs["calibration"], cases["calibration"])
    threshold = calibrate_threshold(calib_probs, config.target_alarms_per_1k,
                                    config.min_events, config.cooldown)
    calib_alarms = [alarm_indices(p, threshold, config.min_events, config.cooldown)
                    for p in calib_probs]
    calib_rate = alarms_per_1k(calib_alarms, [len(p) for p in calib_probs])
    ours = [alarm_indices(p, threshold, config.min_events, config.cooldown)
            for p in probs["evaluation"]]
    metrics = {"ours": _score(ours, cases["evaluation"], config.margin)}
    kind_threshold = _fit_kind(feats["train"], cases["train"])
    metrics["ours"]["kind_accuracy"] = _kind_accuracy(
        probs["evaluation"], _surprise(feats["evaluation"]), ours, cases["evaluation"],
        (threshold, kind_threshold), config.margin)
    lap("calibration")
    with torch.no_grad():
        table = model.item_table().detach().float().cpu().numpy()
    rows, knobs = _baselines(feats, cases, {"text": vectors, "items": table}, calib_rate, config)
    metrics.update(rows)
    lap("baselines")
    return DriftResult(
        detector=detector.to(torch.device("cpu")), threshold=threshold,
        kind_threshold=kind_threshold,
        target_alarms_per_1k=config.target_alarms_per_1k,
        calibration_alarms_per_1k=calib_rate,
        measured_alarms_per_1k=float(metrics["ours"]["alarms_per_1k"] or 0.0),
        metrics=metrics, knobs=knobs, cases=cases, groups=groups, seed=seed, config=config,
        seconds=time.perf_counter() - start, timings=timings,
    )
