"""Drift detection end to end: splice, featurise, train the head, calibrate, compare baselines.

Protocol (docs/drift-protocol.md): users are split (seeded) into three disjoint groups.
The head trains on the first group's cases; the alarm threshold is calibrated on the second
group's unspliced sequences to ``target_alarms_per_1k``, and each baseline's knob is tuned there
to the same rate; everything is scored on the third group.

Two splice generators (``splice``, A, the one the head trains on; ``splice_b``, B, which it
never sees) and two views of the evaluation users: "seen" (features from the sequence model of
the run, which trained on every user) and "unseen" (features from a sequence model fitted on
the head-training users only, so calibration and evaluation users are new to it, as every
user is in serving). The headline is unseen users on generator B (``DriftResult.metrics_unseen``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.domain.drift import ChangePoint, kind_score
from app.ml.bundle import DriftSettings, drift_change_points
from app.ml.drift_head import FEATURE_NAMES
from app.ml.parts import DriftDetector, EventTrace
from app.ml.sequence import SequenceInterestModel
from training.data.sequences import UserSequence
from training.drift.baselines import (
    KernelCPDRunner,
    adwin_alarms,
    every_k_alarms,
    never_alarms,
    page_hinkley_alarms,
)
from training.drift.bocpd_fit import DriftCatalogue, TopicSpace, topic_baselines, topic_space
from training.drift.calibration import (
    alarms_per_1k,
    calibrate_threshold,
    fit_kind_threshold,
    tune_knob,
)
from training.drift.config import DriftConfig as DriftConfig  # re-exported
from training.drift.evaluation import evaluate_alarms
from training.drift.splicing import (
    DriftCase,
    make_cases,
    save_cases,
    split_users,
)
from training.drift.trainer import DriftTrainer, case_features, drift_trainer

Metrics = dict[str, float | None]
GROUPS = ("train", "calibration", "evaluation")
PROTOCOLS = ("seen_a", "seen_b", "unseen_a", "unseen_b")  # users x splice generator
# Fits a sequence model on the given users' training portions only (the "unseen" view).
HeldOutScorer = Callable[[list[str]], SequenceInterestModel]


@dataclass
class DriftResult:
    detector: DriftDetector  # of kind config.kind, on the CPU
    threshold: float
    kind_threshold: float  # cut on kind_score (surprise after vs before) above which: gradual
    target_alarms_per_1k: float
    calibration_alarms_per_1k: float  # ours, on the calibration users (where it was set)
    measured_alarms_per_1k: float  # ours, on the evaluation users' unspliced sequences
    metrics: dict[str, Metrics]  # seen users, generator A: detector -> f1, precision, ...
    knobs: dict[str, Any]  # baseline knobs tuned to our calibration rate
    cases: dict[str, list[DriftCase]]  # group -> cases (the run's exact test material)
    groups: dict[str, list[str]]  # group -> user ids
    seed: int
    config: DriftConfig
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    # unseen users, generator B (the headline): the same rows as ``metrics``; {} without the
    # held-out view
    metrics_unseen: dict[str, Metrics] = field(default_factory=dict)
    # every view: PROTOCOLS entry -> detector -> metrics (baselines on seen_a and unseen_b)
    by_protocol: dict[str, dict[str, Metrics]] = field(default_factory=dict)
    knobs_unseen: dict[str, Any] = field(default_factory=dict)
    unseen_calibration_alarms_per_1k: float | None = None  # ours, held-out scorer
    # the evaluated traces of the served (seen) detector: "evaluation" (generator A) and
    # "evaluation_b" cases; the training run checks the bundle serves these very decisions
    traces: dict[str, list[EventTrace]] = field(default_factory=dict)

    def settings(self, max_events: int) -> DriftSettings:
        """The decision settings the bundle ships (and evaluation decided with)."""
        return DriftSettings(threshold=float(self.threshold), min_events=self.config.min_events,
                             cooldown=self.config.cooldown, max_events=max_events,
                             kind_threshold=float(self.kind_threshold))

    def decisions(self, group: str) -> list[list[ChangePoint]]:
        """Every evaluated change point of each case of ``group``, by the served rule."""
        settings = self.settings(self.config.splice.max_unspliced)
        return [drift_change_points(self.detector, settings, t) for t in self.traces[group]]

    def save_cases(self, path: Path) -> None:
        save_cases(self.cases, path)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly figures (no head, no cases) for logging."""
        return {"seed": self.seed, "threshold": self.threshold,
                "kind_threshold": self.kind_threshold,
                "target_alarms_per_1k": self.target_alarms_per_1k,
                "calibration_alarms_per_1k": self.calibration_alarms_per_1k,
                "measured_alarms_per_1k": self.measured_alarms_per_1k,
                "metrics": self.metrics, "metrics_unseen": self.metrics_unseen,
                "by_protocol": self.by_protocol, "knobs_unseen": self.knobs_unseen,
                "unseen_calibration_alarms_per_1k": self.unseen_calibration_alarms_per_1k,
                "knobs": self.knobs, "seconds": self.seconds,
                "timings": self.timings,
                "n_cases": {g: len(c) for g, c in self.cases.items()},
                "config": asdict(self.config)}


def _build_cases(sequences: list[UserSequence], vectors: np.ndarray, config: DriftConfig,
                 seed: int, spliced_calibration: bool = False
                 ) -> tuple[dict[str, list[str]], dict[str, list[DriftCase]]]:
    """Cases per group, plus ``evaluation_b`` (the evaluation users, generator B).

    ``spliced_calibration``: the calibration group also gets generator-A spliced cases (the
    unseen view fits the abrupt/gradual cut on them); calibration only reads its unspliced."""
    users = sequences[: config.max_users] if config.max_users else sequences
    by_id = {u.user_id: u for u in users}
    ids = split_users(sorted(by_id), config.group_fractions, seed)
    calib_cases = ({"abrupt": 1, "gradual": 1, "none": 1} if spliced_calibration
                   else {"none": 1})
    per_group = (config.train_cases, calib_cases, config.eval_cases)
    splices = (config.train_splice, config.splice, config.splice)
    cases = {
        name: make_cases([by_id[u] for u in group], vectors, splice, per_user, seed * 1000 + k)
        for k, (name, group, per_user, splice) in enumerate(
            zip(GROUPS, ids, per_group, splices, strict=True))
    }
    cases["evaluation_b"] = make_cases([by_id[u] for u in ids[2]], vectors, config.splice_b,
                                       config.eval_cases, seed * 1000 + 3)
    groups = dict(zip(GROUPS, ids, strict=True))
    if spliced_calibration:
        # Out-of-fold halves of the head-training users: the held-out scorer fits on the first,
        # the unseen pass's head trains on cases made of the second only.
        order = np.random.default_rng(seed * 1000 + 5).permutation(len(ids[0]))
        half = len(order) // 2
        groups["heldout_scorer"] = sorted(ids[0][i] for i in order[:half])
        groups["train_oof"] = sorted(ids[0][i] for i in order[half:])
        cases["train_oof"] = make_cases([by_id[u] for u in groups["train_oof"]], vectors,
                                        config.train_splice, config.train_cases,
                                        seed * 1000 + 4)
    return groups, cases


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


def _kind_accuracy(points: list[list[ChangePoint]], cases: list[DriftCase],
                   margin: int) -> float | None:
    """Share of detected spliced cases whose kind (as decided at the first change point
    placed within the margin) matches the splice."""
    right = total = 0
    for found, c in zip(points, cases, strict=True):
        hits = [p for p in found if c.change_point >= 0
                and abs(p.change_index - c.change_point) <= margin]
        if hits:
            total += 1
            right += hits[0].kind == c.kind
    return right / total if total else None


def _located(points: list[ChangePoint]) -> np.ndarray:
    """Alarms scored where each change is placed (the alarm itself for most kinds)."""
    return np.sort(np.asarray([p.change_index for p in points], dtype=np.int64))


def _decide(detector: DriftDetector, settings: DriftSettings,
            traces: list[EventTrace]) -> list[list[ChangePoint]]:
    return [drift_change_points(detector, settings, t) for t in traces]


def _traces(trainer: DriftTrainer, detector: DriftDetector, scorer: SequenceInterestModel,
            features: list[torch.Tensor], cases: list[DriftCase],
            device: torch.device) -> list[EventTrace]:
    """Each case's trace: the trainer's own (a kind whose decisions read more than the
    probabilities), else its probabilities with the scorer's surprise from the features."""
    own = getattr(trainer, "traces", None)
    if own is not None:
        return list(own(detector, scorer, features, cases, device))
    probs = trainer.probabilities(detector, scorer, features, cases, device)
    return [EventTrace(p, s) for p, s in zip(probs, _surprise(features), strict=True)]


def _fit_and_calibrate(trainer: DriftTrainer, scorer: SequenceInterestModel,
                       feats: dict[str, list[torch.Tensor]], cases: dict[str, list[DriftCase]],
                       train_group: str, config: DriftConfig, seed: int, device: torch.device,
                       progress: bool, catalogue: DriftCatalogue
                       ) -> tuple[DriftDetector, float, dict[str, list[EventTrace]]]:
    """The detector fitted on ``train_group``'s cases, its threshold calibrated on the
    calibration users' unspliced cases (by the kind's own ``calibrate`` when it has one), and
    the traces of the calibration and evaluation groups."""
    detector = trainer.fit(scorer, feats[train_group], cases[train_group], config, seed,
                           device, progress, catalogue=catalogue)
    own = getattr(trainer, "calibrate", None)
    threshold = (None if own is None
                 else float(own(detector, scorer, cases["calibration"], config)))
    traces = {g: _traces(trainer, detector, scorer, feats[g], cases[g], device)
              for g in ("calibration", "evaluation", "evaluation_b")}
    if threshold is None:
        calib = _unspliced([t.probabilities for t in traces["calibration"]],
                           cases["calibration"])
        threshold = calibrate_threshold(calib, config.target_alarms_per_1k, config.min_events,
                                        config.cooldown)
    return detector, threshold, traces


def _calibration_rate(detector: DriftDetector, settings: DriftSettings,
                      traces: list[EventTrace], cases: list[DriftCase]) -> float:
    calib = _unspliced(traces, cases)
    alarms = [_located(p) for p in _decide(detector, settings, calib)]
    return alarms_per_1k(alarms, [len(t.probabilities) for t in calib])


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
               item_vectors: dict[str, np.ndarray], rate: float, config: DriftConfig,
               topics: TopicSpace) -> tuple[dict[str, Metrics], dict[str, Any]]:
    """Default and rate-matched rows for ADWIN, PageHinkley and KernelCPD, rate-matched rows
    of BOCPD and a GLR test on the items' topics (training.drift.bocpd_fit.topic_baselines:
    their alarms scored at the change they locate), plus trivial rows.

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
    knobs: dict[str, Any] = {
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
    topic_rows, topic_knobs = topic_baselines(topics, cases["calibration"], cases_e, rate,
                                              config)
    rows.update(topic_rows)
    knobs.update(topic_knobs)
    return {name: _score(a, cases_e, margin) for name, a in rows.items()}, knobs


def _ours(detector: DriftDetector, traces: list[EventTrace], cases: list[DriftCase],
          settings: DriftSettings, config: DriftConfig) -> Metrics:
    """Our metrics on ``cases`` by the served decision rule, with the kind accuracy."""
    points = _decide(detector, settings, traces)
    alarms = [_located(p) for p in points]
    metrics = _score(alarms, cases, config.margin)
    metrics["kind_accuracy"] = _kind_accuracy(points, cases, config.margin)
    metrics.update(_alarm_rate_by_position(alarms, cases))
    return metrics


POSITION_BUCKETS = ((0, 50), (50, 100), (100, 200))  # event positions of a history


def _alarm_rate_by_position(alarms: list[np.ndarray], cases: list[DriftCase]) -> Metrics:
    """False alarms per 1,000 unspliced events by the events' position in the history (does
    the calibration hold for short and long histories?): ``alarms_per_1k_<lo>_<hi>``."""
    out: Metrics = {}
    for lo, hi in POSITION_BUCKETS:
        events = sum(max(0, min(len(c.items), hi) - lo) for c in cases if c.kind == "none")
        fired = sum(int(((a >= lo) & (a < hi)).sum())
                    for a, c in zip(alarms, cases, strict=True) if c.kind == "none")
        out[f"alarms_per_1k_{lo}_{hi}"] = 1000.0 * fired / events if events else None
    return out


def train_and_evaluate_drift(model: SequenceInterestModel, item_embeddings: torch.Tensor,
                             sequences: list[UserSequence], config: DriftConfig, seed: int,
                             device: torch.device, progress: bool = True,
                             heldout: HeldOutScorer | None = None,
                             catalogue: DriftCatalogue | None = None) -> DriftResult:
    """Train the drift detector (kind ``config.kind``) on spliced cases and compare it with
    the baselines.

    model: the trained, frozen sequence model; item_embeddings: FloatTensor[N+1, D] item text
    embeddings (row 0 zeros); sequences: the users' training-portion sequences.
    catalogue: the items' categories and the bundle's topics (what a topic-reading kind and
    the topic baselines read; None: k-means clusters of the text embeddings).
    heldout: fits a sequence model on the given users only; with it the run adds the "unseen"
    view: that model, fitted on one half of the head-training users, is the scorer of a second
    pass (the detector re-fitted on cases of the other half, out-of-fold, and its threshold
    re-calibrated on the calibration users, both through it), so no user is scored by a model
    that trained on them; ``metrics_unseen`` (unseen users, generator B) and every view in
    ``by_protocol``. The abrupt/gradual cut is then fitted on the calibration users' spliced
    cases through that model (surprise on users a model never saw, as in serving). The served
    detector and threshold stay the seen pass's (the ones the bundle's check reproduces).

    Every decision (ours, calibration rates, kind accuracy) goes through the rule the bundle
    serves (app.ml.bundle.drift_change_points), so a detector that places a change before its
    alarm is scored where it places it.
    """
    start = clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str) -> None:
        nonlocal clock
        timings[stage] = time.perf_counter() - clock
        clock = time.perf_counter()

    vectors = item_embeddings.detach().float().cpu().numpy()
    catalogue = catalogue or DriftCatalogue([])
    topics = topic_space(vectors, catalogue, seed=seed)
    groups, cases = _build_cases(sequences, vectors, config, seed, heldout is not None)
    lap("splicing")
    views = ("train", "calibration", "evaluation", "evaluation_b")
    feats = {g: case_features(model, cases[g], item_embeddings, device, progress=progress)
             for g in views}
    lap("features")
    trainer = drift_trainer(config.kind)
    detector, threshold, traces = _fit_and_calibrate(trainer, model, feats, cases, "train",
                                                     config, seed, device, progress, catalogue)
    lap("head_and_calibration")

    unseen_model: SequenceInterestModel | None = None
    if heldout is not None:
        # The whole pipeline again on a scorer that never saw the users it scores: fitted on
        # one half of the head-training users, it gives out-of-fold features of the other
        # half (the head re-fitted on them) and of the calibration users (the threshold
        # re-calibrated there) and evaluation users.
        unseen_model = heldout(groups["heldout_scorer"])
        lap("heldout_scorer")
        views_u = ("train_oof", *views[1:])
        feats_u = {g: case_features(unseen_model, cases[g], item_embeddings, device,
                                    progress=progress) for g in views_u}
        detector_u, threshold_u, traces_u = _fit_and_calibrate(
            trainer, unseen_model, feats_u, cases, "train_oof", config, seed, device,
            progress, catalogue)
        spliced = [i for i, c in enumerate(cases["calibration"]) if c.change_point >= 0]
        kind_threshold = _fit_kind([feats_u["calibration"][i] for i in spliced],
                                   [cases["calibration"][i] for i in spliced])
        lap("unseen_view")
    else:
        kind_threshold = _fit_kind(feats["train"], cases["train"])
    settings = DriftSettings(threshold=threshold, min_events=config.min_events,
                             cooldown=config.cooldown, max_events=config.splice.max_unspliced,
                             kind_threshold=kind_threshold)
    calib_rate = _calibration_rate(detector, settings, traces["calibration"],
                                   cases["calibration"])
    by_protocol: dict[str, dict[str, Metrics]] = {
        "seen_a": {"ours": _ours(detector, traces["evaluation"], cases["evaluation"], settings,
                                 config)},
        "seen_b": {"ours": _ours(detector, traces["evaluation_b"], cases["evaluation_b"],
                                 settings, config)},
    }
    with torch.no_grad():
        table = model.item_table().detach().float().cpu().numpy()
    rows, knobs = _baselines(feats, cases, {"text": vectors, "items": table}, calib_rate,
                             config, topics)
    by_protocol["seen_a"].update(rows)
    knobs_u: dict[str, Any] = {}
    calib_rate_u: float | None = None
    if unseen_model is not None:
        settings_u = dataclasses.replace(settings, threshold=threshold_u)
        for view, group in (("unseen_a", "evaluation"), ("unseen_b", "evaluation_b")):
            by_protocol[view] = {"ours": _ours(detector_u, traces_u[group], cases[group],
                                               settings_u, config)}
        calib_rate_u = _calibration_rate(detector_u, settings_u, traces_u["calibration"],
                                         cases["calibration"])
        with torch.no_grad():
            table_u = unseen_model.item_table().detach().float().cpu().numpy()
        rows_u, knobs_u = _baselines(
            {"calibration": feats_u["calibration"], "evaluation": feats_u["evaluation_b"]},
            {"calibration": cases["calibration"], "evaluation": cases["evaluation_b"]},
            {"text": vectors, "items": table_u}, calib_rate_u, config, topics)
        by_protocol["unseen_b"].update(rows_u)
        knobs_u["threshold"] = threshold_u
    lap("baselines")
    metrics = by_protocol["seen_a"]
    return DriftResult(
        detector=detector.to(torch.device("cpu")), threshold=threshold,
        kind_threshold=kind_threshold,
        target_alarms_per_1k=config.target_alarms_per_1k,
        calibration_alarms_per_1k=calib_rate,
        measured_alarms_per_1k=float(metrics["ours"]["alarms_per_1k"] or 0.0),
        metrics=metrics, knobs=knobs, cases=cases, groups=groups, seed=seed, config=config,
        seconds=time.perf_counter() - start, timings=timings,
        metrics_unseen=by_protocol.get("unseen_b", {}), by_protocol=by_protocol,
        knobs_unseen=knobs_u, unseen_calibration_alarms_per_1k=calib_rate_u,
        traces={g: traces[g] for g in ("evaluation", "evaluation_b")},
    )
