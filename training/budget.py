"""A run's time budget: a monotonic deadline, and the shares of it each stage may use.

``run.time_budget_minutes`` (``--time-budget``) bounds a whole ``run_training``. The stages
that can stop early stop at their own mark inside it, so that the stages that cannot (the
simple baselines, drift fitting, evaluation through the bundle, registration) keep their
time:

- the encoder's fine-tuning stops (between steps) at ``StageShares.encoder`` of the budget;
- ``ours`` stops (after an epoch, with its best validated weights) at ``StageShares.ours``;
- ``sasrec_id`` stops at ``StageShares.sasrec_id``, and is skipped when less than one of
  ``ours``'s epochs is left before that mark;
- the unseen-users view's held-out sequence model stops at ``StageShares.heldout``.

The default shares come from the reference runs' stage times (quality.json ``stage_seconds``):
on ml-100k the encoder and ``ours`` took 49% of the run, ``sasrec_id`` 15%, the drift stage
and the rest 36%; on ML-1M (whole timed run) encoder and ``ours`` 67%, ``sasrec_id`` 18%, the
rest 15%. Leaving the last 40% to ``sasrec_id``'s remainder and everything after it covers the
larger of the two. A config whose later stages are known to be short gives the sequence
models more (``run.budget_shares``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

STAGES = ("encoder", "ours", "sasrec_id", "heldout")


@dataclass(frozen=True)
class StageShares:
    """The mark, as a share of the whole budget counted from the run's start, at which each
    stage that can stop early stops; the stages run in this order, so the marks never fall."""

    encoder: float = 0.15
    ours: float = 0.45
    sasrec_id: float = 0.60
    heldout: float = 0.85

    def __post_init__(self) -> None:
        marks = [getattr(self, stage) for stage in STAGES]
        for stage, mark in zip(STAGES, marks, strict=True):
            if isinstance(mark, bool) or not isinstance(mark, int | float) or not 0 < mark <= 1:
                raise ValueError(f"budget share {stage} must be a number in (0, 1], got "
                                 f"{mark!r}")
        if marks != sorted(marks):
            listed = ", ".join(f"{stage} {mark:g}" for stage, mark in zip(STAGES, marks,
                                                                         strict=True))
            raise ValueError(f"budget shares must not fall from one stage to the next "
                             f"({listed})")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> StageShares:
        """Shares from a config mapping (missing stages keep their defaults)."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown budget shares {unknown}; expected some of {list(STAGES)}")
        return cls(**values)


DEFAULT_SHARES = StageShares()


class Deadline:
    """A point on the monotonic clock, ``seconds`` after ``start`` (now by default).

    ``until(share)`` gives an earlier mark of the same budget; marks share one record of the
    stages stopped by the budget (``stopped``), so the run can report where it cut."""

    def __init__(self, seconds: float, start: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 stopped: list[str] | None = None,
                 shares: StageShares = DEFAULT_SHARES) -> None:
        if seconds < 0:
            raise ValueError(f"a time budget cannot be negative: {seconds}")
        self.seconds = float(seconds)
        self.shares = shares
        self.clock = clock
        self.start = clock() if start is None else start
        self.stopped: list[str] = [] if stopped is None else stopped

    @property
    def end(self) -> float:
        return self.start + self.seconds

    def remaining(self) -> float:
        """Seconds left (0 once expired)."""
        return max(0.0, self.end - self.clock())

    def expired(self) -> bool:
        return self.clock() >= self.end

    def until(self, share: float) -> Deadline:
        """The mark at ``share`` (0..1) of this budget, counted from the same start."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"a share of the budget is within 0..1, got {share}")
        return Deadline(self.seconds * share, self.start, self.clock, self.stopped)

    def record_stop(self, stage: str) -> None:
        """``stage`` ended early because of the budget (kept in order, once)."""
        if stage not in self.stopped:
            self.stopped.append(stage)


def deadline_for(minutes: float | None, start: float | None = None,
                 shares: StageShares = DEFAULT_SHARES) -> Deadline | None:
    """The run's deadline for a budget in minutes (None: no budget), with its stages' shares."""
    return None if minutes is None else Deadline(minutes * 60.0, start, shares=shares)


def stage_deadline(deadline: Deadline | None, stage: str) -> Deadline | None:
    """The mark at which ``stage`` (one of ``STAGES``) stops, or None without a budget."""
    return None if deadline is None else deadline.until(getattr(deadline.shares, stage))


def budget_report(deadline: Deadline | None, log: Callable[[str], None] | None = None
                  ) -> dict[str, Any]:
    """``quality["time_budget"]``: the budget, whether a stage stopped early, which first
    (``stages``: all of them, in order); ``log`` is told when one did."""
    if deadline is None:
        return {"budget_seconds": None, "stopped_early": False, "stage": None, "stages": []}
    if deadline.stopped and log is not None:
        log(f"time budget ({deadline.seconds:,.0f} s): stopped early at "
            f"{', '.join(deadline.stopped)}; the best validated weights are the ones kept")
    return {"budget_seconds": round(deadline.seconds, 1), "stopped_early": bool(deadline.stopped),
            "stage": deadline.stopped[0] if deadline.stopped else None,
            "stages": list(deadline.stopped)}


def budget_tags(quality: Mapping[str, Any]) -> dict[str, str]:
    """Tags of a run and its model version: ``stopped_at_time_budget`` (true/false) and the
    budget (``none`` without one)."""
    report = quality.get("time_budget") or {}
    seconds = report.get("budget_seconds")
    return {"stopped_at_time_budget": "true" if report.get("stopped_early") else "false",
            "time_budget_seconds": "none" if seconds is None else f"{seconds:.0f}",
            **({"time_budget_stage": str(report["stage"])} if report.get("stage") else {})}
