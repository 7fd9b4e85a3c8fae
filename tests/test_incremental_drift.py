"""The incremental drift state equals the full replay (issue 16).

The feature-gru detector's state is carried forward event by event (app.ml.incremental) and
kept per user by serving (app.services.interest_state). Whatever the order the events arrive
in, however long the history and whichever items the model does not know, the trace a user's
state gives must be the replay's over the same window, to float tolerance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from app.ml.bundle import DriftSettings, InterestModelBundle
from app.ml.drift_head import FEATURE_NAMES, N_FEATURES, DriftHead, drift_features_and_hidden
from app.ml.incremental import TAIL, IncrementalDrift, drift_window_start, step_features
from app.ml.sequence import SequenceInterestModel, SequenceModelConfig
from app.ml.topics import topics_from_categories
from app.services.interest_state import InterestStates

N_ITEMS = 30
TEXT_DIM = 24
TOLERANCE = 2e-5


class _StubEncoder:
    """The bundle's encoder is not used here (no item is embedded)."""

    dim = TEXT_DIM

    def eval(self) -> _StubEncoder:
        return self


def _model_and_head(seed: int = 0, max_len: int = 8, **bias: Any
                    ) -> tuple[SequenceInterestModel, DriftHead]:
    torch.manual_seed(seed)
    config = SequenceModelConfig(hidden_size=16, num_layers=2, ff_size=32, max_len=max_len,
                                 **bias)
    model = SequenceInterestModel(config, N_ITEMS, TEXT_DIM)
    for block in model.blocks:  # attention bias tables far from zero, when there are any
        for table in () if block.attention.bias is None else (block.attention.bias.time,
                                                               block.attention.bias.position):
            if table is not None:
                torch.nn.init.normal_(table.weight, std=2.0)
    text = torch.nn.functional.normalize(torch.randn(N_ITEMS, TEXT_DIM), dim=1)
    model.set_item_text_embeddings(torch.cat([torch.zeros(1, TEXT_DIM), text]))
    head = DriftHead(N_FEATURES, 8)
    with torch.no_grad():  # standardisation as training leaves it: not the identity
        head.feature_mean.normal_()
        head.feature_std.uniform_(0.3, 2.0)
    return model.eval(), head.eval()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread, as a serving worker runs (tiny ops on a busy machine otherwise
    spend their time in thread hand-offs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundle() -> InterestModelBundle:
    model, head = _model_and_head()
    genres = [("a",), ("b",), ("c",), ("a", "d")]
    categories = [genres[i % len(genres)] for i in range(N_ITEMS)]
    return InterestModelBundle(
        encoder=_StubEncoder(), sequence_model=model, drift_detector=head,  # type: ignore[arg-type]
        drift=DriftSettings(threshold=0.5, min_events=3, cooldown=2, max_events=30),
        item_ids=[f"m{i}" for i in range(N_ITEMS)],
        topics=topics_from_categories(np.random.default_rng(0).normal(size=(N_ITEMS, 4)),
                                      categories),
        dataset_fingerprint="test")


def _replay(model: SequenceInterestModel, head: DriftHead, idx: np.ndarray,
            times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    trace = head.traces(model, torch.from_numpy(idx)[None], torch.from_numpy(times)[None])
    return trace.probabilities[0].numpy(), trace.surprise[0].numpy()


def test_window_start_moves_in_half_window_steps() -> None:
    assert [drift_window_start(n, 200) for n in (0, 1, 200, 201, 300, 301, 400, 401)] == [
        0, 0, 0, 100, 100, 200, 200, 300]
    for total in range(1, 1000):
        start = drift_window_start(total, 200)
        assert 101 <= total - start <= 200 or (start == 0 and total <= 200)
        assert drift_window_start(total + 1, 200) >= start  # it never moves back


def test_extending_equals_the_replay_for_many_histories_and_splits() -> None:
    """Many users at once (one batched step per event), each from a replayed prefix of random
    length, then new events in random chunks; histories far longer than the scorer's window
    (8) and the long feature windows (36), with ties and long gaps in time."""
    model, head = _model_and_head(seed=1)
    engine = IncrementalDrift(model, head)
    rng = np.random.default_rng(7)
    users = []
    for _ in range(60):
        n = int(rng.integers(1, 90))
        idx = rng.integers(1, N_ITEMS + 1, n).astype(np.int64)
        gaps = rng.choice([0.0, 30.0, 3_600.0, 86_400.0 * 40], size=n)
        users.append((idx, 1e9 + np.cumsum(gaps)))
    prefixes = [int(rng.integers(0, len(idx))) for idx, _ in users]
    states = engine.start([(idx[:k], ts[:k]) for (idx, ts), k in zip(users, prefixes,
                                                                      strict=True)])
    done = list(prefixes)
    while any(d < len(idx) for d, (idx, _) in zip(done, users, strict=True)):
        work, who = [], []
        for b, ((idx, ts), d) in enumerate(zip(users, done, strict=True)):
            if d < len(idx) and rng.random() < 0.7:
                chunk = int(rng.integers(1, 4))
                work.append((states[b], idx[d:d + chunk], ts[d:d + chunk]))
                who.append(b)
                done[b] = min(len(idx), d + chunk)
        for b, state in zip(who, engine.extend(work), strict=True):
            states[b] = state
    for (idx, ts), state in zip(users, states, strict=True):
        probs, surprise = _replay(model, head, idx, ts)
        assert state.n == len(idx)
        np.testing.assert_allclose(state.probabilities, probs, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(state.surprise, surprise, atol=TOLERANCE * 10, rtol=1e-5)


def test_a_steps_feature_rows_are_the_replays_rows_for_states_of_any_length() -> None:
    """The batched feature rows of one step, for states from empty to past the feature
    windows' reach (TAIL events), equal the replay's rows of the same events, column by
    column."""
    model, head = _model_and_head(seed=5)
    engine = IncrementalDrift(model, head)
    rng = np.random.default_rng(5)
    length = 2 * TAIL + 10
    idx = rng.integers(1, N_ITEMS + 1, (6, length)).astype(np.int64)
    ts = 1e9 + np.cumsum(rng.choice([0.0, 30.0, 3_600.0, 86_400.0 * 40], size=(6, length)),
                         axis=1)
    features, hidden = drift_features_and_hidden(model, torch.from_numpy(idx),
                                                 torch.from_numpy(ts))
    surprise_col, rank_col = FEATURE_NAMES.index("surprise"), FEATURE_NAMES.index("log_rank")
    at = [0, 1, 4, TAIL - 1, TAIL + 3, length - 1]  # the new event's index, one per user
    states = engine.start([(idx[b, :t], ts[b, :t]) for b, t in enumerate(at)])
    rows = step_features(states, [int(idx[b, t]) for b, t in enumerate(at)],
                         [float(ts[b, t]) for b, t in enumerate(at)],
                         [float(features[b, t, surprise_col]) for b, t in enumerate(at)],
                         [float(features[b, t, rank_col]) for b, t in enumerate(at)],
                         torch.stack([hidden[b, t] for b, t in enumerate(at)]),
                         model.item_text.float(), model.item_table().float())
    expected = torch.stack([features[b, t] for b, t in enumerate(at)])
    assert rows.shape == (len(at), N_FEATURES)
    torch.testing.assert_close(rows, expected, atol=2e-5, rtol=1e-5)


def test_a_replayed_state_continues_like_one_built_event_by_event() -> None:
    model, head = _model_and_head(seed=2)
    engine = IncrementalDrift(model, head)
    rng = np.random.default_rng(3)
    idx = rng.integers(1, N_ITEMS + 1, 70).astype(np.int64)
    ts = 1e9 + np.cumsum(rng.exponential(5_000.0, 70))
    stepped = engine.start([(idx[:0], ts[:0])])[0]
    for t in range(70):
        stepped = engine.extend([(stepped, idx[t:t + 1], ts[t:t + 1])])[0]
    replayed = engine.start([(idx, ts)])[0]
    np.testing.assert_allclose(stepped.probabilities, replayed.probabilities, atol=TOLERANCE)
    assert stepped.gru is not None and replayed.gru is not None
    torch.testing.assert_close(stepped.gru, replayed.gru, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(stepped.hidden, replayed.hidden, atol=1e-4, rtol=0)


@pytest.mark.parametrize("bias", [{"time_bias": "event"},
                                  {"time_bias": "request", "position_bias": True}])
def test_with_an_attention_bias_the_state_still_equals_the_replay(bias: dict[str, Any]) -> None:
    """The drift path reads each event at its own time (no request time), so a biased scorer
    stays causal event by event and its carried-forward state is the replay's."""
    model, head = _model_and_head(seed=4, **bias)
    engine = IncrementalDrift(model, head)
    rng = np.random.default_rng(11)
    idx = rng.integers(1, N_ITEMS + 1, 40).astype(np.int64)
    ts = 1e9 + np.cumsum(rng.choice([0.0, 30.0, 3_600.0, 86_400.0 * 40], size=40))
    stepped = engine.start([(idx[:5], ts[:5])])[0]
    for t in range(5, 40, 3):
        stepped = engine.extend([(stepped, idx[t:t + 3], ts[t:t + 3])])[0]
    probs, surprise = _replay(model, head, idx, ts)
    np.testing.assert_allclose(stepped.probabilities, probs, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(stepped.surprise, surprise, atol=TOLERANCE * 10, rtol=1e-5)


# ----------------------------------------------------------------------- per-user serving
class _Store:
    """A user's events as the store orders them: by time, ties in ingestion order."""

    def __init__(self) -> None:
        self.events: list[tuple[float, int, str, str]] = []  # (time, seq, event id, item id)
        self.seq = 0

    def add(self, item_id: str, time: float) -> None:
        self.seq += 1
        self.events.append((time, self.seq, f"e{self.seq}", item_id))
        self.events.sort(key=lambda e: (e[0], e[1]))

    def last(self, limit: int) -> dict[str, Any]:
        rows = self.events[-limit:]
        return {"event_ids": [r[2] for r in rows], "item_ids": [r[3] for r in rows],
                "timestamps": [r[0] for r in rows], "total": len(self.events)}


def _window_replay(bundle: InterestModelBundle, store: _Store) -> tuple[np.ndarray, list[int]]:
    """What the detector reads for this history, replayed: its window's known events."""
    start = drift_window_start(len(store.events), bundle.drift.max_events)
    window = store.events[start:]
    known = [k for k, e in enumerate(window) if bundle.index_of(e[3]) is not None]
    [(probs, _)] = bundle.drift_traces_batch([[window[k][3] for k in known]],
                                             [[window[k][0] for k in known]])
    return probs, [start + k for k in known]


@pytest.mark.parametrize("order", ["in_time_order", "some_late", "shuffled"])
def test_user_states_answer_what_the_replay_answers(bundle: InterestModelBundle,
                                                    order: str) -> None:
    """Users with up to 80 events (the detector reads at most 30: its window start moves),
    events arriving in time order, partly late (earlier than the user's last), or shuffled,
    some on items the model does not know; the trace is asked after every arrival or every
    few, and read through a history of the last 40 events, as serving loads it."""
    states = InterestStates(bundle)
    rng = np.random.default_rng({"in_time_order": 0, "some_late": 1, "shuffled": 2}[order])
    users = {f"u{n}": _Store() for n in range(12)}
    plans = {}
    for user in users:
        n = int(rng.integers(5, 80))
        times = 1e9 + np.cumsum(rng.exponential(3_000.0, n))
        if order == "some_late":
            late = rng.random(n) < 0.1
            times = np.where(late, times - rng.uniform(1e4, 1e5, n), times)
        elif order == "shuffled":
            rng.shuffle(times)
        items = [f"m{i}" if rng.random() > 0.1 else f"unknown{i}"
                 for i in rng.integers(0, N_ITEMS, n)]
        plans[user] = list(zip(items, times, strict=True))
    rebuilds = extensions = 0
    while any(plans.values()):
        for user, plan in plans.items():
            for _ in range(int(rng.integers(1, 3))):
                if plan:
                    item, time = plan.pop(0)
                    users[user].add(item, float(time))
            if not users[user].events or rng.random() < 0.2:
                continue
            before = states.rebuilds, states.extensions
            trace = states.trace(user, **users[user].last(40))
            rebuilds += states.rebuilds - before[0]
            extensions += states.extensions - before[1]
            probs, positions = _window_replay(bundle, users[user])
            offset = len(users[user].events) - min(40, len(users[user].events))
            assert list(trace.positions + offset) == positions
            np.testing.assert_allclose(trace.probabilities, probs, atol=TOLERANCE, rtol=0)
    assert extensions > 0
    if order == "in_time_order":  # rebuilt only when the window start moved (or first use)
        assert extensions > rebuilds


def test_a_stale_state_never_answers(bundle: InterestModelBundle) -> None:
    states = InterestStates(bundle)
    store = _Store()
    for i in range(20):
        store.add(f"m{i % N_ITEMS}", 1e9 + 60.0 * i)
    states.trace("u", **store.last(40))
    store.add("m3", 1e9 + 60.0 * 5.5)  # late: it lands before the last events
    before = states.rebuilds
    trace = states.trace("u", **store.last(40))
    assert states.rebuilds == before + 1
    np.testing.assert_allclose(trace.probabilities, _window_replay(bundle, store)[0],
                               atol=TOLERANCE)
    # a history whose events differ at some position (an erased event and a new one) too
    store.events.pop(3)
    store.add("m4", 1e9 + 60.0 * 30)
    before = states.rebuilds
    trace = states.trace("u", **store.last(40))
    assert states.rebuilds == before + 1
    np.testing.assert_allclose(trace.probabilities, _window_replay(bundle, store)[0],
                               atol=TOLERANCE)
    # the same history again: the state answers as it is
    before = states.rebuilds, states.extensions
    states.trace("u", **store.last(40))
    assert (states.rebuilds, states.extensions) == before


def test_states_are_bounded_and_belong_to_one_bundle(bundle: InterestModelBundle) -> None:
    states = InterestStates(bundle, max_users=5)
    store = _Store()
    for i in range(12):
        store.add(f"m{i}", 1e9 + 60.0 * i)
    for n in range(8):
        states.trace(f"u{n}", **store.last(40))
    assert len(states) == 5 and states.evictions == 3
    tight = InterestStates(bundle, max_bytes=3 * states.get("u7").nbytes)  # type: ignore[union-attr]
    for n in range(8):
        tight.trace(f"u{n}", **store.last(40))
    assert len(tight) <= 3 and tight.nbytes <= tight.max_bytes
    # another bundle (a new version, a catalogue swap) starts empty: nothing carried over
    other = dataclasses.replace(bundle)
    assert InterestStates(other).get("u7") is None
