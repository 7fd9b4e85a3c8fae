"""Training configuration: one commented YAML file per setting (``configs/*.yaml``), merged over
the dataclass defaults into typed objects. Unknown keys and wrongly typed values fail loudly.

A file has three sections, each optional::

    run:          RunConfig (seed, MLflow experiment, outputs, topics)
    recommender:  training.recommender.RecommenderConfig (flat keys)
    drift:        training.drift.config.DriftConfig (``splice`` and ``head`` sub-sections)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.budget import DEFAULT_SHARES, StageShares
from training.drift.config import DriftConfig
from training.plan import DEFAULT_MEMORY_GB
from training.recommender import RecommenderConfig
from training.speed import BF16_MODES, SPEED_DEFAULTS

SECTIONS = ("run", "recommender", "drift")
PLAN_MODES = ("auto", "off")


class ConfigError(ValueError):
    """A configuration file is unreadable, has unknown keys or values of the wrong type."""


@dataclass
class RunConfig:
    name: str = "ml100k"  # names the run in MLflow and the output folder
    seed: int = 2020
    experiment: str = "driftrec"  # MLflow experiment
    output_dir: str = "var/runs"  # run outputs (bundle, tables) go to <output_dir>/<name>
    quality_json: str | None = None  # also publish the quality table here (full data only)
    topic_clusters: int = 20  # k-means topics when the catalogue has no categories
    anchors: str = "ml-100k"  # published reference rows printed beside ours (training.quality)
    import_results: str | None = None  # import benchmark JSON whose total_seconds is reported
    baseline_gate: bool = True  # refuse to promote a version below the best simple baseline
    # (training.baselines) on validation; false: the comparison is reported, never enforced
    memory_gb: float = DEFAULT_MEMORY_GB  # the training plan keeps its peak estimate within
    # this (training.plan; --memory-gb); the measured peak is reported beside it
    time_budget_minutes: float | None = None  # stop the run's stages at their shares of this
    # (training.budget; --time-budget); None: no budget
    budget_shares: StageShares = DEFAULT_SHARES  # where in the budget each stage stops
    # (a mapping of encoder / ours / sasrec_id / heldout to shares of the whole)


@dataclass
class TrainingConfig:
    run: RunConfig = field(default_factory=RunConfig)
    recommender: RecommenderConfig = field(default_factory=RecommenderConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"run": asdict(self.run), "recommender": asdict(self.recommender),
                "drift": asdict(self.drift)}

    def digest(self) -> str:
        """Short hash of the resolved config (tells runs with different settings apart).

        The training step's speed options are left out while off, and the budget's shares
        while at their defaults, so a config that does not use them keeps the digest it had
        before they existed."""
        values = self.to_dict()
        for key, default in SPEED_DEFAULTS.items():
            if values["recommender"].get(key) == default:
                del values["recommender"][key]
        if self.run.budget_shares == DEFAULT_SHARES:
            del values["run"]["budget_shares"]
        text = json.dumps(values, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def load_config(path: Path | str) -> TrainingConfig:
    """Read a YAML file and merge it over the defaults."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from error
    try:
        return parse_config(data)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path}: {error}") from error


def parse_config(data: dict[str, Any]) -> TrainingConfig:
    """Build a TrainingConfig from a parsed mapping (see the module docstring)."""
    if not isinstance(data, dict):
        raise ConfigError("a config file must be a mapping of sections")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config sections {unknown}; expected {list(SECTIONS)}")
    run_values = data.get("run") or {}
    unknown = sorted(set(run_values) - {f.name for f in dataclasses.fields(RunConfig)})
    if unknown:
        raise ConfigError(f"unknown run settings: {unknown}")
    recommender_values = dict(data.get("recommender") or {})
    if isinstance(recommender_values.get("plan"), bool):  # YAML 1.1 reads a bare off as false
        recommender_values["plan"] = "auto" if recommender_values["plan"] else "off"
    if "budget_shares" in run_values:
        try:
            shares = StageShares.from_dict(run_values["budget_shares"])
        except (TypeError, ValueError) as error:
            raise ConfigError(f"run.budget_shares: {error}") from error
        run_values = {**run_values, "budget_shares": shares}
    config = TrainingConfig(
        run=RunConfig(**run_values),
        recommender=RecommenderConfig.from_dict(recommender_values),
        drift=DriftConfig.from_dict(data.get("drift") or {}),
    )
    for section in (config.run, config.recommender, config.drift, config.drift.splice,
                    config.drift.train_splice, config.drift.head):
        check_types(section)
    check_budgets(config)
    return config


def check_budgets(config: TrainingConfig) -> None:
    """The memory and time budgets are positive numbers; the plan is "auto" or "off"; bf16
    is "off", "auto" or "on"."""
    if not config.run.memory_gb > 0:
        raise ConfigError(f"run.memory_gb must be positive, got {config.run.memory_gb!r}")
    minutes = config.run.time_budget_minutes
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int | float)
                                or not minutes > 0):
        raise ConfigError(f"run.time_budget_minutes must be a positive number of minutes or "
                          f"null, got {minutes!r}")
    if config.recommender.bf16 not in BF16_MODES:
        raise ConfigError(f"recommender.bf16 must be one of {list(BF16_MODES)}, got "
                          f"{config.recommender.bf16!r}")
    if config.recommender.plan not in PLAN_MODES:
        raise ConfigError(f"recommender.plan must be one of {list(PLAN_MODES)}, got "
                          f"{config.recommender.plan!r}")


def check_types(obj: Any) -> None:
    """Every scalar field holds the type of its default (an int is accepted for a float;
    ``None`` where the default is None). Catches ``seed: "2020"`` or ``dropout: high``."""
    defaults = type(obj)()
    for f in dataclasses.fields(obj):
        value, default = getattr(obj, f.name), getattr(defaults, f.name)
        if value is None or default is None or not isinstance(default, int | float | str):
            continue
        expected: tuple[type, ...] = (int, float) if type(default) is float else (type(default),)
        wrong_bool = isinstance(value, bool) and type(default) is not bool
        if wrong_bool or not isinstance(value, expected):
            raise ConfigError(f"{type(obj).__name__}.{f.name} must be "
                              f"{type(default).__name__}, got {value!r}")
