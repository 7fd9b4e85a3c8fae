"""How a cost grows with size: a power law fitted on log-log axes, its extrapolation, plots.

``fit_power_law(sizes, costs)`` fits ``cost = a * size ** b`` by least squares on
``log cost = log a + b log size``. The exponent ``b`` is the log-log slope: 1 is linear, 0
flat, above 1 faster than linear. ``growth`` words it with a tolerance, since three or four
noisy points on a shared machine do not tell 1.05 from 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LINEAR_TOLERANCE = 0.15  # |b - 1| within this reads as linear (shared-machine noise)
FLAT_BELOW = 0.25  # b under this reads as flat (nearly independent of size)


@dataclass(frozen=True)
class PowerLaw:
    coefficient: float  # a
    exponent: float  # b, the log-log slope
    r2: float  # of the log-log fit (1.0 with two points)
    points: int

    def at(self, size: float) -> float:
        return self.coefficient * size ** self.exponent

    def as_dict(self, per_unit: bool = False) -> dict[str, float | int | str]:
        return {"exponent": round(self.exponent, 3), "coefficient": self.coefficient,
                "r2": round(self.r2, 4), "points": self.points,
                "growth": growth(self, per_unit)}


def fit_power_law(sizes: Sequence[float], costs: Sequence[float]) -> PowerLaw:
    """Least-squares fit of log(cost) on log(size); needs two or more distinct positive sizes
    and positive costs."""
    if len(sizes) != len(costs):
        raise ValueError("sizes and costs differ in length")
    if any(s <= 0 for s in sizes) or any(c <= 0 for c in costs):
        raise ValueError("sizes and costs must be positive for a log-log fit")
    pairs = [(math.log(s), math.log(c)) for s, c in zip(sizes, costs, strict=True)]
    if len({x for x, _ in pairs}) < 2:
        raise ValueError("a fit needs at least two distinct sizes")
    n = len(pairs)
    mean_x = sum(x for x, _ in pairs) / n
    mean_y = sum(y for _, y in pairs) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in pairs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in pairs)
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    residual = sum((y - intercept - slope * x) ** 2 for x, y in pairs)
    total = sum((y - mean_y) ** 2 for _, y in pairs)
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return PowerLaw(math.exp(intercept), slope, r2, n)


def growth(law: PowerLaw, per_unit: bool = False) -> str:
    """A total cost: "faster than linear", "linear", "slower than linear" or "flat". A cost
    per unit (per event, per request, a latency, a memory figure), whose linear total is a
    flat line: "flat", "rising" or "falling" (|b| under LINEAR_TOLERANCE is flat)."""
    if per_unit:
        if law.exponent > LINEAR_TOLERANCE:
            return "rising"
        return "falling" if law.exponent < -LINEAR_TOLERANCE else "flat"
    if law.exponent > 1 + LINEAR_TOLERANCE:
        return "faster than linear"
    if law.exponent >= 1 - LINEAR_TOLERANCE:
        return "linear"
    if law.exponent >= FLAT_BELOW:
        return "slower than linear"
    return "flat"


Series = tuple[Sequence[float], Sequence[float]]  # sizes, costs
# One panel: (title, y label, {series name: (points, fitted law)}).
Panel = tuple[str, str, dict[str, tuple[Series, PowerLaw]]]


def plot(panels: Sequence[Panel], path: Path, extrapolate_to: float | None = None) -> Path:
    """Log-log panels side by side: each series' measured points with its fitted line, dashed
    past the last measured size up to ``extrapolate_to`` (extrapolated, not measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, grid = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), dpi=110,
                                squeeze=False)
    for axes, (title, ylabel, series) in zip(grid[0], panels, strict=True):
        for name, ((sizes, costs), law) in series.items():
            (line,) = axes.plot(sizes, costs, "o", label=f"{name} (b = {law.exponent:.2f})")
            low, high = min(sizes), max(sizes)
            xs = [low * (high / low) ** (i / 20) for i in range(21)]
            axes.plot(xs, [law.at(x) for x in xs], "-", color=line.get_color(), alpha=0.6)
            if extrapolate_to and extrapolate_to > high:
                xs = [high * (extrapolate_to / high) ** (i / 10) for i in range(11)]
                axes.plot(xs, [law.at(x) for x in xs], "--", color=line.get_color(),
                          alpha=0.6)
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("events in the store (dashed: extrapolated)")
        axes.set_ylabel(ylabel)
        axes.set_title(title, fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
