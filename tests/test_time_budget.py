"""The time budget (training.budget): the deadline, a sequence model stopped by it with its
best validated weights, the skipped sasrec_id baseline, and the stop reaching the report and
the registered version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_sequence_model import synthetic_dataset
from tests.test_training_resume import small_model, small_split
from training import budget
from training.budget import Deadline, budget_report, budget_tags
from training.evaluate import evaluate_model
from training.recommender import RecommenderConfig, train_recommender
from training.sequence_trainer import SequenceTrainConfig, train_sequence_model


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_deadline_counts_down_and_its_shares_share_one_record() -> None:
    clock = FakeClock()
    deadline = Deadline(60.0, clock=clock)
    assert deadline.remaining() == 60.0 and not deadline.expired()
    model = budget.stage_deadline(deadline, "ours")
    assert model is not None
    assert model.remaining() == pytest.approx(60.0 * budget.DEFAULT_SHARES.ours)
    clock.now += 30.0
    assert model.expired() and not deadline.expired() and deadline.remaining() == 30.0
    model.record_stop("ours")
    model.record_stop("ours")
    assert deadline.stopped == ["ours"]
    clock.now += 31.0
    assert deadline.expired() and deadline.remaining() == 0.0
    assert budget.deadline_for(None) is None and budget.stage_deadline(None, "ours") is None
    assert budget.deadline_for(2.0).seconds == 120.0  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        Deadline(-1.0)
    with pytest.raises(ValueError):
        deadline.until(1.5)


def test_a_config_moves_the_stages_marks_and_refuses_shares_out_of_order() -> None:
    from training.config import ConfigError, parse_config

    config = parse_config({"run": {"time_budget_minutes": 10,
                                   "budget_shares": {"ours": 0.75, "sasrec_id": 0.85}}})
    shares = config.run.budget_shares
    assert (shares.encoder, shares.ours, shares.sasrec_id, shares.heldout) == (
        budget.DEFAULT_SHARES.encoder, 0.75, 0.85, budget.DEFAULT_SHARES.heldout)
    clock = FakeClock()
    deadline = budget.deadline_for(10, clock.now, shares)
    assert deadline is not None
    deadline.clock = clock
    ours, baseline = (budget.stage_deadline(deadline, "ours"),
                      budget.stage_deadline(deadline, "sasrec_id"))
    assert ours is not None and baseline is not None
    assert ours.remaining() == pytest.approx(450.0) and baseline.remaining() == pytest.approx(510.0)
    clock.now += 450.0
    assert ours.expired() and not baseline.expired()
    # the defaults leave the digest of a config that does not set them as it was
    assert parse_config({}).digest() == parse_config({"run": {"budget_shares": {}}}).digest()
    assert parse_config({"run": {"time_budget_minutes": 10}}).digest() != config.digest()
    for wrong in ({"ours": 0.9, "sasrec_id": 0.5}, {"ours": 1.5}, {"ours": 0},
                  {"decoder": 0.5}, {"ours": "most"}):
        with pytest.raises(ConfigError, match="budget share"):
            parse_config({"run": {"budget_shares": wrong}})


def test_an_expired_budget_stops_after_the_first_epoch_with_the_best_state(
        tmp_path: Path) -> None:
    split = small_split()
    config = SequenceTrainConfig(batch_size=8, max_epochs=4, patience=4, average_top_k=2)
    deadline = Deadline(0.0)
    said: list[str] = []
    checkpoint = tmp_path / "ours.pt"
    cut = train_sequence_model(small_model(), split, config, torch.device("cpu"), 3,
                               progress=False, checkpoint=checkpoint, log=said.append,
                               deadline=deadline)
    assert cut.stopped_by_deadline and len(cut.history) == 1 and cut.best_epoch == 1
    assert deadline.stopped == ["ours"]
    assert any("time budget reached after epoch 1" in line for line in said)
    # the epoch ended after its first batch, and was validated: those are the kept weights
    assert cut.best_val == pytest.approx(cut.history[0]["val_ndcg@10"])
    val = evaluate_model(cut.model, split, torch.device("cpu"), parts=("val",))["val"]
    assert val["ndcg@10"] == pytest.approx(cut.best_val)
    # the checkpoint is not finished: the same run without the budget goes on from there
    state = torch.load(checkpoint, weights_only=False)
    assert state["epoch"] == 1 and not state["finished"]
    resumed = train_sequence_model(small_model(), split, config, torch.device("cpu"), 3,
                                   progress=False, checkpoint=checkpoint)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert not resumed.stopped_by_deadline


def test_a_budget_that_is_not_reached_changes_nothing() -> None:
    split = small_split()
    config = SequenceTrainConfig(batch_size=8, max_epochs=2, patience=4)
    free = train_sequence_model(small_model(), split, config, torch.device("cpu"), 3,
                                progress=False)
    deadline = Deadline(3600.0)
    timed = train_sequence_model(small_model(), split, config, torch.device("cpu"), 3,
                                 progress=False, deadline=deadline)
    assert not timed.stopped_by_deadline and deadline.stopped == []
    assert [h["train_loss"] for h in timed.history] == pytest.approx(
        [h["train_loss"] for h in free.history])


def test_the_recommender_stops_each_stage_and_skips_sasrec_id() -> None:
    snapshot = synthetic_dataset(20, 25).snapshot()
    config = RecommenderConfig.tiny()
    config.max_users, config.max_epochs, config.patience = None, 3, 3
    deadline = Deadline(0.0)
    said: list[str] = []
    result = train_recommender(config, snapshot, torch.device("cpu"), 0, progress=False,
                               log=said.append, deadline=deadline)
    assert deadline.stopped == ["encoder", "ours", "sasrec_id"]
    assert result.stopped_by_deadline == {"ours": True} and result.skipped == ["sasrec_id"]
    assert "sasrec_id" not in result.metrics and result.baseline is None
    assert set(result.metrics) == {"ours", "pop"}
    assert any("sasrec_id: skipped" in line for line in said)
    assert any("encoder: time budget reached after 0 of 2" in line for line in said)
    report = budget_report(deadline)
    assert report == {"budget_seconds": 0.0, "stopped_early": True, "stage": "encoder",
                      "stages": ["encoder", "ours", "sasrec_id"]}


def test_the_report_and_tags_say_whether_the_budget_stopped_the_run() -> None:
    assert budget_report(None)["stopped_early"] is False
    assert budget_tags({"time_budget": budget_report(None)}) == {
        "stopped_at_time_budget": "false", "time_budget_seconds": "none"}
    deadline = Deadline(90.0)
    assert budget_tags({"time_budget": budget_report(deadline)})["stopped_at_time_budget"] == (
        "false")
    deadline.record_stop("ours")
    said: list[str] = []
    report = budget_report(deadline, said.append)
    assert report["stopped_early"] and report["stage"] == "ours"
    assert said and "stopped early at ours" in said[0]
    assert budget_tags({"time_budget": report}) == {
        "stopped_at_time_budget": "true", "time_budget_seconds": "90",
        "time_budget_stage": "ours"}


def test_a_run_out_of_time_says_so_in_its_report_and_on_its_version(tmp_path: Path) -> None:
    """The tiny config on the tiny store, with a budget already spent: the run finishes,
    its report and its registered version say it stopped at the time budget."""
    from app.core.config import PROJECT_ROOT
    from app.store.migrate import upgrade_head
    from tests.conftest import tiny_store
    from training.config import load_config
    from training.pipeline import run_training
    from training.registry import MlflowTarget

    store = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade_head(store)
    tiny_store(store)
    config = load_config(PROJECT_ROOT / "configs" / "tiny.yaml")
    config.run.output_dir = str(tmp_path / "runs")
    config.run.name = "tiny-budget"
    config.run.time_budget_minutes = 1e-6
    config.recommender.max_epochs = config.recommender.patience = 3
    target = MlflowTarget(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))
    said: list[str] = []
    report = run_training(config, device="cpu", register=True, progress=False, target=target,
                          log=said.append, database_url=store)
    spent: dict[str, Any] = report.quality["time_budget"]
    assert spent["stopped_early"] and spent["stage"] == "encoder"
    assert "ours" in spent["stages"] and spent["budget_seconds"] == pytest.approx(0.0, abs=0.1)
    assert report.quality["epochs"]["ours"]["run"] == 1
    assert report.quality["memory"]["memory_budget_mib"] == config.run.memory_gb * 1024
    assert report.quality["plan"]["mode"] == "off"
    assert any("stopped early at encoder" in line for line in said)
    version = target.client().get_model_version(target.model_name, str(report.version))
    assert version.tags["stopped_at_time_budget"] == "true"
