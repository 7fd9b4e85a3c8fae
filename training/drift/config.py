"""Drift settings: what `python -m training train` reads under `drift:` in its config.

Kept apart from the drift pipeline so a config loads without the pipeline's baselines (River,
ruptures) and without importing the trainer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from app.domain.drift import COOLDOWN, MIN_EVENTS
from app.ml.parts import DEFAULT_KINDS
from training.drift.splicing import SpliceConfig


@dataclass
class HeadTrainConfig:
    hidden_size: int = 32  # GRU width
    epochs: int = 20
    batch_size: int = 64  # sequences per step
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    label_window: int = 3  # events labelled 1 from the change point on
    pos_weight: float = 5.0  # BCE weight of positive events (they are ~2% of events)



@dataclass
class DriftConfig:
    """Drift settings; the defaults are the ml-100k ones (:meth:`tiny` for smoke tests)."""

    kind: str = DEFAULT_KINDS["drift"]  # the detector kind trained (app.ml.parts registry)
    splice: SpliceConfig = field(default_factory=SpliceConfig)  # calibration/evaluation cases
    # Generator B: evaluation cases shaped unlike the head's training ones (never trained on)
    splice_b: SpliceConfig = field(default_factory=SpliceConfig.generator_b)
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
    # The "unseen" view in `python -m training train`: a second sequence model fitted on half
    # the head-training users and a second drift pass through it (issue 14's protocol). It
    # multiplies the drift stage's time, so a config opts in; `python -m training.drift`
    # always runs it.
    unseen_view: bool = False
    # The held-out sequence model of the "unseen" view (fitted on the head-training users)
    heldout_max_epochs: int = 30
    heldout_patience: int = 4

    @classmethod
    def tiny(cls) -> DriftConfig:
        """Seconds-long run for tests: few users, short cases, a short head training."""
        splice = SpliceConfig(min_prefix=12, max_prefix=20, min_suffix=8, max_suffix=15,
                              ramp=4, max_unspliced=40)
        splice_b = SpliceConfig(min_prefix=10, max_prefix=24, min_suffix=6, max_suffix=20,
                                ramp=6, max_unspliced=40, far_quantile=0.67,
                                partner_rule="per_user", join="gap", keep_a=0.2)
        return cls(
            splice=splice, train_splice=splice, splice_b=splice_b, heldout_max_epochs=2,
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
                           ("splice_b", SpliceConfig), ("head", HeadTrainConfig)):
            values[name] = kind(**{**asdict(getattr(defaults, name)), **values.get(name, {})})
        if "group_fractions" in values:
            values["group_fractions"] = tuple(values["group_fractions"])
        return cls(**values)
