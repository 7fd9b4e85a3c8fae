"""The peers bench (bench/peers.py, bench/peers_fit.py) without the peers' virtualenv.

A peer is judged from its candidates (its best items outside each history and every history
item, with its scores) put back into full score rows and scored by training.evaluate. Fake
peers that score as pop and repeat (training.baselines) do must reproduce those baselines'
figures exactly through export -> candidates -> evaluate: unmasked and history-masked, with
re-consumed targets (repeat ranks the history first) and with the lists cut at k.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from bench import peers, peers_fit
from training import baselines
from training.data.sequences import UserSequence
from training.data.store import InteractionSnapshot, SnapshotItem, snapshot_from_records
from training.evaluate import all_metrics

N_ITEMS = 40
TOP = 10  # candidates outside the history: the evaluated k itself, the tightest cut


def _snapshot(seed: int = 7) -> InteractionSnapshot:
    """30 users, 40 items with a skewed popularity, baskets (shared timestamps) and re-bought
    items, so that some targets are in their user's history."""
    rng = np.random.default_rng(seed)
    items = [SnapshotItem(str(i), f"item {i}", f"item {i}") for i in range(1, N_ITEMS + 1)]
    weights = 1.0 / np.arange(1, N_ITEMS + 1)
    events = []
    for user in range(30):
        t = 1_000.0 * user
        bought: list[int] = []
        for _ in range(int(rng.integers(4, 16))):
            t += float(rng.choice([0.0, 60.0, 3_600.0]))  # 0: same basket
            if bought and rng.random() < 0.3:
                item = int(rng.choice(bought))  # buy again
            else:
                item = int(rng.choice(N_ITEMS, p=weights / weights.sum())) + 1
            bought.append(item)
            events.append((f"u{user}", str(item), t, None, "buy"))
    return snapshot_from_records(items, events)


def _dense_of(scores: torch.Tensor) -> np.ndarray:
    return scores.numpy().astype(np.float32)


def _fake_peer(workdir: Path, name: str, dense_for: dict[str, np.ndarray],
               tuning: dict[str, float]) -> None:
    """Write a peer's candidates and report as bench/peers_fit.py does, from full score rows
    per part (users in split order)."""
    split = peers_fit.load_split(workdir / "split.npz")
    inputs = {"val": split.valid_inputs, "test": split.test_inputs}
    parts = {part: peers_fit.score_pass(lambda rows, d=dense: d[rows], inputs[part],
                                        split.n_items, top=TOP).candidates
             for part, dense in dense_for.items()}
    peers_fit.write_candidates(workdir / f"{name}.npz", parts)
    report = {"tuning": tuning, "train_seconds": 0.0, "config": {}, "saw": "",
              "train_seconds_note": "", "versions": {}}
    (workdir / f"{name}.json").write_text(json.dumps(report))


def _measured(workdir: Path, names: list[str]) -> None:
    meta = json.loads((workdir / "meta.json").read_text())
    row = {"peak_rss_mib": 1.0, "load_average_max": 0.0, "load_average_start": 0.0,
           "process_wall_seconds": 0.0, "split_exported": meta["exported"]}
    (workdir / "measured.json").write_text(json.dumps({n: row for n in names}))


@pytest.mark.parametrize("basket_holdout", [False, True])
def test_popularity_through_the_candidates_is_the_pop_baseline(
        tmp_path: Path, basket_holdout: bool) -> None:
    peers.write_export(_snapshot(), basket_holdout, tmp_path, {"dataset": "tiny"})
    n_items, split = peers.read_split(tmp_path / "split.npz")
    assert n_items == N_ITEMS and split.basket_holdout is basket_holdout
    results = baselines.evaluate_baselines(split, n_items)
    prior = baselines.popularity_rank(baselines.item_counts(split.train, n_items))
    row = baselines.ranked_scores(sp.csr_matrix((1, n_items + 1)), prior)
    dense = {part: np.repeat(_dense_of(row), len(split.train), axis=0)
             for part in ("val", "test")}
    pop = results["pop"].metrics
    _fake_peer(tmp_path, "rectools_ease", dense,
               {"ndcg@10": pop["val"]["ndcg@10"], "ndcg@10_masked": pop["val"]["ndcg@10_masked"]})
    peers.write_baselines(tmp_path)
    _measured(tmp_path, ["baselines", "rectools_ease"])
    models = peers.dataset_models(tmp_path, None)
    fake, truth = models["rectools_ease"], models["pop"]
    assert fake["tuning_metric_agrees"] is True
    for key in peers.METRIC_KEYS:
        assert fake[key] == pytest.approx(truth[key], abs=1e-9), key
    assert truth["ndcg@10"] == pytest.approx(round(pop["test"]["ndcg@10"], 6))
    for part, inputs, targets in (("val", split.valid_inputs(), split.valid_items),
                                  ("test", split.test_inputs(), split.test_items)):
        got = peers.candidate_metrics(tmp_path / "rectools_ease.npz", part, inputs, targets,
                                      n_items, chunk_cells=7 * (n_items + 1))  # chunks of 7
        assert got.pop("target_ties") == 0.0  # popularity_rank breaks every tie
        assert got == pytest.approx(pop[part], abs=1e-12)


def test_buy_again_through_the_candidates_is_the_repeat_baseline(tmp_path: Path) -> None:
    peers.write_export(_snapshot(), False, tmp_path, {"dataset": "tiny"})
    n_items, split = peers.read_split(tmp_path / "split.npz")
    results = baselines.evaluate_baselines(split, n_items)
    tau = float(results["repeat"].value or math.inf)
    prior = baselines.popularity_rank(baselines.item_counts(split.train, n_items))
    parts = {"val": (split.valid_inputs(), split.valid_items),
             "test": (split.test_inputs(), split.test_items)}
    dense = {part: _dense_of(baselines.ranked_scores(
        baselines.repeat_matrix(baselines.flatten(inputs), n_items, tau), prior))
        for part, (inputs, _) in parts.items()}
    inputs, targets = parts["test"]
    rebought = sum(int(t in seq.items) for seq, t in zip(inputs, targets, strict=True))
    assert rebought >= 3  # the masked figures then depend on the history's own scores
    _fake_peer(tmp_path, "implicit_als", dense, {})
    for part, (inputs, targets) in parts.items():
        got = peers.candidate_metrics(tmp_path / "implicit_als.npz", part, inputs, targets,
                                      n_items)
        assert got.pop("target_ties") == 0.0
        assert got == pytest.approx(results["repeat"].metrics[part], abs=1e-12), part


def test_the_tuning_metric_counts_as_the_evaluation_does() -> None:
    rng = np.random.default_rng(3)
    dense = rng.normal(size=(6, 31)).astype(np.float32)
    dense[:, 0] = -np.inf
    dense[:, 25:] = -np.inf  # items a peer never saw
    histories = [rng.choice(np.arange(1, 25), 5, replace=False) for _ in range(6)]
    targets = np.array([h[0] for h in histories[:3]] + [3, 27, 5])  # 3 re-bought, 1 unknown
    unmasked, masked = peers_fit.ndcg_sums(dense, histories, targets)
    scores = torch.from_numpy(dense.copy())
    sequences = [UserSequence("u", h.astype(np.int64), np.zeros(len(h))) for h in histories]
    truth = all_metrics(scores, sequences, targets)
    assert unmasked / 6 == pytest.approx(truth["ndcg@10"], abs=1e-9)
    assert masked / 6 == pytest.approx(truth["ndcg@10_masked"], abs=1e-9)


def test_a_target_the_peer_did_not_list_is_a_miss() -> None:
    # one user, the peer listed items 1 and 2 only; targets 2 (listed) and 5 (not)
    indptr, items = np.array([0, 2, 4]), np.array([1, 2, 1, 2])
    scores = np.array([2.0, 1.0, 2.0, 1.0], np.float32)
    dense = peers.candidate_scores(indptr, items, scores, slice(0, 2), 6, np.array([2, 5]))
    ranks = [(dense[r] > dense[r, t]).sum().item() for r, t in ((0, 2), (1, 5))]
    assert ranks[0] == 1 and ranks[1] >= 5  # past every other item
    assert dense[0, 0] == -math.inf


def test_the_peers_side_imports_nothing_of_the_project() -> None:
    tree = ast.parse(Path(peers_fit.__file__).read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree)
             if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module}
    assert not roots & {"app", "training", "bench", "driftrec_client"}


def test_the_table_lists_ours_first_and_redacts_passwords() -> None:
    document = {"datasets": {"tiny": {"users": 30, "items": 40, "basket_holdout": True,
                                      "date": "2026-12-06", "models": {
                                          "pop": {"ndcg@10": 0.01, "train_seconds": 0.0},
                                          "ours": {"ndcg@10": 0.05, "peak_rss_mib": 3000}}}}}
    table = peers.markdown(document)
    rows = [line.split("|")[1].strip() for line in table.splitlines()
            if line.startswith("| ") and "model" not in line]
    assert rows == ["ours", "pop"] and "0.0500" in table and "3,000" in table
    assert peers.redact("postgresql+psycopg://bob:secret@host/db") == \
        "postgresql+psycopg://bob:***@host/db"
