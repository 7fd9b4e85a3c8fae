"""The training plan (training.plan): the loss for the catalogue's size, settings that fit the
memory budget, the overrides reaching the training, and the budgets from the command line and
the config files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_sequence_model import synthetic_dataset
from training import plan as plan_module
from training.__main__ import _parser, with_budgets
from training.config import ConfigError, load_config, parse_config
from training.data.store import SnapshotItem, snapshot_from_records
from training.plan import (
    DEFAULT_MEMORY_GB,
    FULL_SOFTMAX_MAX_ITEMS,
    MIN_BATCH,
    SAMPLED_NEGATIVES,
    CatalogueSize,
    apply_plan,
    catalogue_size,
    describe_plan,
    memory_report,
    plan_report,
    plan_tags,
    plan_training,
)
from training.recommender import RecommenderConfig

RATE = 40e9  # FLOP/s: a fixed matmul rate, so no test times a matmul
BUDGET_MIB = DEFAULT_MEMORY_GB * 1024
ML100K = CatalogueSize(items=1682, users=943, events=100_000, repeat_share=0.0, text_tokens=30)
MILLION = CatalogueSize(items=1_000_000, users=50_000, events=5_000_000, repeat_share=0.2,
                        text_tokens=30)


def test_a_small_catalogue_keeps_the_full_softmax_and_the_config() -> None:
    config = RecommenderConfig()
    planned = plan_training(ML100K, config, BUDGET_MIB, None, RATE)
    assert planned.loss_negatives == 0 and planned.overrides == {}
    assert (planned.batch_size, planned.max_len) == (config.batch_size, config.max_len)
    assert planned.learning_rate == config.learning_rate
    assert planned.fits and 600 < planned.estimated_peak_mib < BUDGET_MIB
    assert planned.estimated_epoch_seconds > 0
    assert planned.estimated_total_seconds > planned.estimated_epoch_seconds
    assert apply_plan(config, planned) is config
    assert any("full softmax" in reason for reason in planned.reasons)


def test_a_million_items_get_sampled_negatives_within_the_budget() -> None:
    config = RecommenderConfig()
    planned = plan_training(MILLION, config, BUDGET_MIB, 60 * 60.0, RATE)
    assert planned.loss_negatives == SAMPLED_NEGATIVES
    assert planned.overrides["loss_negatives"] == SAMPLED_NEGATIVES
    assert planned.fits and planned.estimated_peak_mib <= BUDGET_MIB
    terms = planned.memory_terms
    # the item tables at 1M x 64 fp32 are counted, and the full softmax's logits are not
    assert terms["item_tables"] > 1000 and terms["text_table"] > 1000
    assert terms["logits"] < 0.05 * BUDGET_MIB
    assert any(f"{FULL_SOFTMAX_MAX_ITEMS:,}" in reason for reason in planned.reasons)
    # the full softmax at this size would be far over the budget
    full = plan_module.memory_terms(MILLION, config, 0, config.batch_size, config.max_len)
    assert full["peak"] > 5 * BUDGET_MIB
    trained = apply_plan(config, planned)
    assert trained.loss_negatives == SAMPLED_NEGATIVES
    assert trained.batch_size == config.batch_size  # nothing else needed changing


def test_a_tight_budget_halves_the_batch_then_the_history() -> None:
    size = CatalogueSize(items=15_000, users=500, events=1_000_000, repeat_share=0.0,
                         text_tokens=30)
    # no encoder fine-tuning: its phase would otherwise set the peak, whatever the batch
    config = RecommenderConfig(batch_size=256, max_len=200, loss_negatives=1024,
                               encoder_steps=0)
    roomy = plan_training(size, config, 64 * 1024, None, RATE)
    assert roomy.batch_size == 256 and roomy.overrides == {}
    tight_budget = 0.8 * roomy.estimated_peak_mib
    tight = plan_training(size, config, tight_budget, None, RATE)
    assert MIN_BATCH <= tight.batch_size < 256 and tight.max_len == 200
    assert tight.estimated_peak_mib <= tight_budget and tight.fits
    assert tight.overrides["batch_size"] == tight.batch_size
    # a smaller batch takes a smaller learning rate (square-root rule)
    assert tight.learning_rate == pytest.approx(1e-3 * (tight.batch_size / 256) ** 0.5)
    assert any(reason.startswith("batch 256 -> 128") for reason in tight.reasons)
    # below what the smallest batch needs, the history gets shorter too
    at_min = plan_module.memory_terms(size, config, 1024, MIN_BATCH, 200)["peak"]
    shorter = plan_training(size, config, at_min - 50, None, RATE)
    assert shorter.batch_size == MIN_BATCH and shorter.max_len < 200
    # a budget below the fixed terms: the smallest settings and a warning
    hopeless = plan_training(size, config, 300, None, RATE)
    assert not hopeless.fits and any("does not fit" in r for r in hopeless.reasons)


def test_the_full_softmax_gives_way_when_its_logits_would_fill_the_budget() -> None:
    size = CatalogueSize(items=15_000, users=5_000, events=1_000_000, repeat_share=0.0,
                         text_tokens=30)
    config = RecommenderConfig(batch_size=512, max_len=200)  # 100k positions x 15k logits
    planned = plan_training(size, config, BUDGET_MIB, None, RATE)
    assert planned.loss_negatives == SAMPLED_NEGATIVES
    assert any("logits" in reason for reason in planned.reasons)


def test_plan_off_reports_the_estimates_but_changes_nothing() -> None:
    config = RecommenderConfig(plan="off")
    planned = plan_training(MILLION, config, BUDGET_MIB, None, RATE)
    assert planned.overrides == {} and planned.loss_negatives == 0
    assert not planned.fits  # the full softmax over a million items, as written
    assert apply_plan(config, planned) is config
    lines = describe_plan(planned, config)
    assert any("plan is off" in line for line in lines)


def test_catalogue_size_counts_users_events_and_repeats() -> None:
    items = [SnapshotItem(str(i), f"Item {i}", f"Item {i} " + "x" * 30 * i) for i in (1, 2, 3)]
    events = [("a", "1", 1.0, None, "view"), ("a", "2", 2.0, None, "view"),
              ("a", "1", 3.0, None, "view"), ("b", "3", 4.0, None, "view"),
              ("b", "3", 5.0, None, "view"), ("c", "2", 6.0, None, "view")]
    snapshot = snapshot_from_records(items, events)
    size = catalogue_size(snapshot)
    assert (size.items, size.users, size.events) == (3, 3, 6)
    assert size.repeat_share == pytest.approx(2 / 6)
    assert size.text_tokens is not None and size.text_tokens > 20
    first = catalogue_size(snapshot, max_users=1)  # user "a" only
    assert (first.users, first.events) == (1, 3) and first.repeat_share == pytest.approx(1 / 3)


def test_the_report_tags_and_the_memory_warning() -> None:
    planned = plan_training(MILLION, RecommenderConfig(), BUDGET_MIB, None, RATE)
    report = plan_report(planned)
    assert report["loss_negatives"] == SAMPLED_NEGATIVES and report["fits"]
    assert report["overrides"] == {"loss_negatives": SAMPLED_NEGATIVES}
    tags = plan_tags({"plan": report})
    assert tags["plan_loss_negatives"] == str(SAMPLED_NEGATIVES)
    assert tags["plan_overrides"] == f"loss_negatives={SAMPLED_NEGATIVES}"
    said: list[str] = []
    within = memory_report(planned.memory_budget_mib - 1, planned, said.append)
    assert not within["exceeded"] and not said
    over = memory_report(planned.memory_budget_mib + 1, planned, said.append)
    assert over["exceeded"] and over["memory_budget_mib"] == BUDGET_MIB
    assert len(said) == 1 and "exceeded the memory budget" in said[0]


def test_measure_flop_rate_is_quick_and_positive() -> None:
    rate = plan_module.measure_flop_rate(16, seconds=0.02)
    assert rate > 1e6


class _Stop(Exception):
    pass


def test_the_plans_overrides_reach_the_training(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """run_training trains with the planned settings (stopped at the recommender call)."""
    from training import pipeline
    from training.registry import MlflowTarget

    seen: dict[str, Any] = {}

    def fake_train(config: RecommenderConfig, *args: Any, **kwargs: Any) -> Any:
        seen["config"], seen["deadline"] = config, kwargs.get("deadline")
        raise _Stop

    monkeypatch.setattr(pipeline, "train_recommender", fake_train)
    monkeypatch.setattr(plan_module, "measure_flop_rate", lambda *a, **k: RATE)
    config = parse_config({"run": {"name": "plan-test", "memory_gb": 0.1,
                                   "time_budget_minutes": 5},
                           "recommender": {"max_len": 20, "batch_size": 64, "plan": "auto",
                                           "encoder_steps": 0}})
    said: list[str] = []
    with pytest.raises(_Stop):
        pipeline.run_training(config, device="cpu", progress=False,
                              target=MlflowTarget(f"sqlite:///{tmp_path / 'm.db'}",
                                                  str(tmp_path / "a")),
                              log=said.append, snapshot=synthetic_dataset(20, 25).snapshot())
    trained = seen["config"]
    # 0.1 GB is below the fixed terms: the smallest batch and history the plan allows
    assert trained.batch_size == MIN_BATCH and trained.max_len < 20
    assert trained.learning_rate < 1e-3
    assert config.recommender.batch_size == 64  # the caller's config is left as it was
    assert any(line.startswith("training plan (auto)") for line in said)
    assert any("override: batch_size 64 -> 16" in line for line in said)
    assert seen["deadline"] is not None and seen["deadline"].seconds == 300


def test_cli_budgets_parse_into_the_config() -> None:
    args = _parser().parse_args(["train", "--config", "configs/tiny.yaml", "--memory-gb", "4",
                                 "--time-budget", "30"])
    config = with_budgets(load_config(args.config), args)
    assert config.run.memory_gb == 4.0 and config.run.time_budget_minutes == 30.0
    # without the flags, the file's values (default.yaml: 8 GB, 60 minutes)
    args = _parser().parse_args(["retrain"])
    config = with_budgets(load_config(args.config), args)
    assert config.run.memory_gb == 8 and config.run.time_budget_minutes == 60
    assert config.recommender.plan == "auto"
    # "none" lifts the file's time budget
    args = _parser().parse_args(["ensure-champion", "--config", "configs/default.yaml",
                                 "--time-budget", "none"])
    assert with_budgets(load_config(args.config), args).run.time_budget_minutes is None
    for bad in (["--memory-gb", "0"], ["--memory-gb", "lots"], ["--time-budget", "-5"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(["train", "--config", "configs/tiny.yaml", *bad])


def test_config_budget_keys_and_the_reference_configs() -> None:
    for name in ("ml100k", "ml1m", "tiny"):
        config = load_config(f"configs/{name}.yaml")
        assert config.recommender.plan == "off"
        # ML-1M's reference run trains to its marks in the hour; the others to early stopping
        assert config.run.time_budget_minutes == (57 if name == "ml1m" else None)
    assert parse_config({}).run.memory_gb == DEFAULT_MEMORY_GB
    assert parse_config({"recommender": {"plan": False}}).recommender.plan == "off"
    with pytest.raises(ConfigError, match="memory_gb"):
        parse_config({"run": {"memory_gb": 0}})
    with pytest.raises(ConfigError, match="time_budget_minutes"):
        parse_config({"run": {"time_budget_minutes": "an hour"}})
    with pytest.raises(ConfigError, match="plan"):
        parse_config({"recommender": {"plan": "sometimes"}})


def test_a_sampled_step_projects_the_batchs_rows_not_the_catalogue() -> None:
    config = RecommenderConfig()
    batch, length = config.batch_size, config.max_len
    sampled = [plan_module.step_seconds(MILLION, config, SAMPLED_NEGATIVES, batch, length, RATE,
                                        text) for text in (True, False)]
    full = [plan_module.step_seconds(MILLION, config, 0, batch, length, RATE, text)
            for text in (True, False)]
    # the text adds a fraction of a sampled step, and most of a full-softmax one's projection
    assert sampled[0] - sampled[1] < 0.5 * sampled[1]
    assert full[0] - full[1] > 50 * (sampled[0] - sampled[1])
    rows = MILLION.items + 1
    assert plan_module.projected_rows(rows, 0, batch * length, 5000) == batch * length + rows
    assert plan_module.projected_rows(50, 2048, batch * length, 5000) == 100
