"""The feature-gru drift detector carried forward one event at a time (incremental state).

A replay (:meth:`app.ml.bundle.InterestModelBundle.drift_traces_batch`) runs the scorer's
windowed Transformer, the drift features and the head's GRU over every event the detector
reads, for every request after a new event. All of it is causal, and what event ``t`` needs
from the events before it is small and bounded:

- the scorer's hidden state at ``t``: one forward pass over the events of its stride-aligned
  window (at most ``max_len``; the window an event is read through never depends on later
  events, see :func:`app.ml.drift_head.windowed_hidden`);
- its surprise and rank: the hidden state at ``t - 1`` and the item table;
- the windowed means: at most ``LONG + 2 * SHORT`` earlier events' items and surprises;
- ``hidden_change``: the hidden state 3 events back; the GRU: its state after ``t - 1``.

:class:`DriftState` keeps those (and the trace so far) for one window of events, and
:meth:`IncrementalDrift.extend` adds events to many users' states in one batched step per
event. The result equals the replay of the same window to float tolerance
(tests/test_incremental_drift.py). Which window the detector reads for a history is
:func:`drift_window_start`: it only moves forward in whole steps, so a state is carried
forward for ``max_events // 2`` events at a time and rebuilt (one replay) when it moves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from app.ml.drift_head import (
    LONG,
    SHORT,
    SURPRISE,
    DriftHead,
    _cos_distance,
    drift_features_and_hidden,
    feature_matrix,
    next_item_surprise,
)
from app.ml.padding import right_pad
from app.ml.parts.protocols import DriftDetector, EventTrace, IncrementalEngine, NextItemScorer

KEEP_HIDDEN = SHORT + 1  # scorer hidden states kept: t - SHORT .. t


def drift_window_start(total: int, max_events: int) -> int:
    """First event (0-based, in the user's whole history of ``total`` events) the drift
    detector reads: 0 while the history has at most ``max_events`` events; after that the
    start moves forward in steps of ``max_events // 2``, so the detector reads between
    ``max_events // 2 + 1`` and ``max_events`` of the latest events and the start stays put
    for ``max_events // 2`` events at a time (a sliding start would change every event's
    features, and no state could be carried forward)."""
    if total <= max_events:
        return 0
    step = max(1, max_events // 2)
    return step * -(-(total - max_events) // step)


@dataclass(frozen=True, slots=True)
class DriftState:
    """The detector's state after the known events of one window, oldest first (immutable:
    extending makes a new one, so a reader holding this one is never disturbed)."""

    item_idx: np.ndarray  # int64[n] model indices of the window's events
    times: np.ndarray  # float64[n] their epoch seconds
    probabilities: np.ndarray  # float32[n] the trace so far
    surprise: np.ndarray  # float32[n]
    hidden: torch.Tensor  # float32[min(n, KEEP_HIDDEN), H]: scorer hidden of the last events
    gru: torch.Tensor | None  # float32[H_gru] the head's state after the last event

    @property
    def n(self) -> int:
        return len(self.item_idx)

    def trace(self) -> EventTrace:
        return EventTrace(self.probabilities, self.surprise)

    @property
    def nbytes(self) -> int:
        """Estimated bytes (arrays and the objects holding them)."""
        tensors = self.hidden.numel() * 4 + (0 if self.gru is None else self.gru.numel() * 4)
        arrays = (self.item_idx, self.times, self.probabilities, self.surprise)
        return 700 + sum(a.nbytes + 112 for a in arrays) + tensors


def empty_state(hidden_size: int) -> DriftState:
    return DriftState(np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.float32),
                      np.zeros(0, np.float32), torch.zeros(0, hidden_size), None)


def supports(scorer: NextItemScorer, detector: DriftDetector) -> bool:
    """Whether the detector is the feature-gru head whose replay this module reproduces (a
    subclass that changes how traces are made is replayed instead)."""
    return (isinstance(detector, DriftHead) and type(detector).traces is DriftHead.traces
            and type(detector).run is DriftHead.run)


def engine_for(scorer: NextItemScorer, detector: DriftDetector) -> IncrementalEngine | None:
    """The incremental engine serving carries this detector's per-user state with: the
    detector's own (``incremental_engine(scorer)``), this module's for the feature-gru head,
    or None (the window is replayed for every new event)."""
    own = getattr(detector, "incremental_engine", None)
    if own is not None:
        engine: IncrementalEngine | None = own(scorer)
        return engine
    if supports(scorer, detector):
        return IncrementalDrift(scorer, detector)  # type: ignore[arg-type]
    return None


class IncrementalDrift:
    """Builds (:meth:`start`, a batched replay) and extends (:meth:`extend`) DriftStates of
    one scorer and head. Stateless itself; call from one thread at a time per model object
    or from several (torch releases nothing shared between calls)."""

    def __init__(self, scorer: NextItemScorer, head: DriftHead) -> None:
        self.scorer = scorer
        self.head = head
        self.width = scorer.max_len
        self.stride = self.width // 2

    def _eval(self) -> None:
        # eval() walks every submodule: only when something left eval mode (training does)
        if self.scorer.training or self.head.training:  # type: ignore[attr-defined]
            self.scorer.eval()
            self.head.eval()

    def _hidden_size(self) -> int:
        return int(self.scorer.item_table().shape[1])

    # ------------------------------------------------------------------ replay
    @torch.inference_mode()
    def start(self, windows: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[DriftState]:
        """States after whole windows (model indices int64[n], epoch seconds float64[n]), as a
        replay computes them: one padded batch."""
        self._eval()
        result: list[DriftState | None] = [None] * len(windows)
        full = [b for b, (idx, _) in enumerate(windows) if len(idx)]
        for b, (idx, _) in enumerate(windows):
            if not len(idx):
                result[b] = empty_state(self._hidden_size())
        if full:
            idx = right_pad([np.asarray(windows[b][0], np.int64) for b in full], torch.long)
            ts = right_pad([np.asarray(windows[b][1], np.float64) for b in full],
                           torch.float64)
            device = self.scorer.item_text.device
            features, hidden = drift_features_and_hidden(self.scorer, idx.to(device),
                                                         ts.to(device))
            features = features.float()
            logits, states = self.head.run(features)
            probs = torch.sigmoid(logits).float().cpu().numpy()
            surprise = features[..., SURPRISE].float().cpu().numpy()
            hidden, states = hidden.float().cpu(), states.float().cpu()
            for row, b in enumerate(full):
                n = len(windows[b][0])
                result[b] = DriftState(
                    np.asarray(windows[b][0], np.int64).copy(),
                    np.asarray(windows[b][1], np.float64).copy(),
                    probs[row, :n].copy(), surprise[row, :n].copy(),
                    hidden[row, max(0, n - KEEP_HIDDEN):n].clone(), states[row, n - 1].clone())
        return [state for state in result if state is not None]

    # ------------------------------------------------------------- one by one
    @torch.inference_mode()
    def extend(self, requests: Sequence[tuple[DriftState, np.ndarray, np.ndarray]]
               ) -> list[DriftState]:
        """Each state with its new events (model indices, epoch seconds; oldest first, none
        earlier than the state's last) added: one batched step per new event position."""
        self._eval()
        states = list(requests[b][0] for b in range(len(requests)))
        steps = max((len(new) for _, new, _ in requests), default=0)
        for j in range(steps):
            active = [b for b, (_, new, _) in enumerate(requests) if j < len(new)]
            stepped = self._step([states[b] for b in active],
                                 [int(requests[b][1][j]) for b in active],
                                 [float(requests[b][2][j]) for b in active])
            for b, state in zip(active, stepped, strict=True):
                states[b] = state
        return states

    def _step(self, states: list[DriftState], items: list[int], times: list[float]
              ) -> list[DriftState]:
        scorer = self.scorer
        device = scorer.item_text.device
        # the scorer's hidden state at each new event, through its stride-aligned window
        starts = [0 if s.n < self.width else self.stride * (s.n // self.stride - 1)
                  for s in states]
        lengths = [s.n - start + 1 for s, start in zip(states, starts, strict=True)]
        idx = right_pad([np.append(s.item_idx[start:], np.int64(items[b]))
                         for b, (s, start) in enumerate(zip(states, starts, strict=True))],
                        torch.long)
        ts = right_pad([np.append(s.times[start:], np.float64(times[b]))
                        for b, (s, start) in enumerate(zip(states, starts, strict=True))],
                       torch.float64)
        out = scorer(idx.to(device), ts.to(device)).float()
        rows = torch.arange(len(states), device=device)
        new_hidden = out[rows, torch.tensor(lengths, device=device) - 1].cpu()
        # surprise and rank of each new item under the hidden state before it
        n_rows = scorer.item_text.shape[0] - 1
        surprise = [math.log(n_rows)] * len(states)
        log_rank = [1.0] * len(states)
        later = [b for b, s in enumerate(states) if s.n > 0]
        if later:
            previous = torch.stack([states[b].hidden[-1] for b in later]).to(device)
            target = torch.tensor([items[b] for b in later], device=device)
            new_surprise, new_rank = next_item_surprise(scorer, previous, target)
            for k, (value, rank) in enumerate(zip(new_surprise.cpu().tolist(),
                                                  new_rank.cpu().tolist(), strict=True)):
                surprise[later[k]] = value
                log_rank[later[k]] = rank
        text = scorer.item_text.float().cpu()
        table = scorer.item_table().float().cpu()
        features = step_features(states, items, times, surprise, log_rank, new_hidden,
                                 text, table)
        gru = torch.stack([s.gru if s.gru is not None else torch.zeros(
            self.head.gru.hidden_size) for s in states])
        logits_head, gru_states = self.head.run(features.unsqueeze(1).to(device),
                                                gru.to(device))
        probs = torch.sigmoid(logits_head[:, 0]).float().cpu().tolist()
        gru_after = gru_states[:, 0].float().cpu()
        result = []
        for b, s in enumerate(states):
            result.append(DriftState(
                np.append(s.item_idx, np.int64(items[b])),
                np.append(s.times, np.float64(times[b])),
                np.append(s.probabilities, np.float32(probs[b])),
                np.append(s.surprise, np.float32(surprise[b])),
                torch.cat([s.hidden, new_hidden[b:b + 1]])[-KEEP_HIDDEN:].clone(),
                gru_after[b].clone()))
        return result


TAIL = LONG + 2 * SHORT + 1  # the events a new event's window means read, itself included


def step_features(states: Sequence[DriftState], items: Sequence[int], times: Sequence[float],
                  surprise: Sequence[float], log_rank: Sequence[float],
                  new_hidden: torch.Tensor, text: torch.Tensor, table: torch.Tensor
                  ) -> torch.Tensor:
    """Each state's new event's feature row (FEATURE_NAMES order), as drift_features computes
    it for that event: FloatTensor[len(states), N_FEATURES]. One batch of window means over
    each state's last ``TAIL`` events (right-padded), not a row at a time: a step's cost is
    then a few tensor operations whatever the number of states."""
    count = len(states)
    t = np.asarray([s.n for s in states], np.int64)  # the new event's index in its history
    first = np.maximum(t - TAIL + 1, 0)  # the tail's first event
    idx = np.zeros((count, TAIL), np.int64)
    tail_surprise = np.zeros((count, TAIL), np.float32)
    past_all = np.zeros(count, np.float64)
    gaps = np.zeros(count, np.float64)
    backs = []
    for b, state in enumerate(states):
        width = int(t[b] - first[b])
        idx[b, :width] = state.item_idx[first[b]:]
        idx[b, width] = items[b]
        tail_surprise[b, :width] = state.surprise[first[b]:]
        tail_surprise[b, width] = surprise[b]
        if t[b] > 0:
            past_all[b] = float(state.surprise.mean())
            gaps[b] = times[b] - float(state.times[-1])
            backs.append(state.hidden[max(0, int(t[b]) - SHORT) - int(t[b]) + len(state.hidden)])
        else:
            backs.append(new_hidden[b])
    position = torch.from_numpy(first[:, None] + np.arange(TAIL)[None, :])  # [B, TAIL] event
    newest = torch.from_numpy(t)
    valid = position <= newest[:, None]

    def window_mean(space: torch.Tensor, start: torch.Tensor, stop: torch.Tensor
                    ) -> torch.Tensor:
        """Mean over events [max(start, 0), max(stop, 0)) of each row; zeros when empty."""
        lo, hi = start.clamp(min=0)[:, None], stop.clamp(min=0)[:, None]
        mask = ((position >= lo) & (position < hi) & valid).to(space.dtype).unsqueeze(-1)
        n = mask.sum(1)
        return torch.where(n > 0, (space * mask).sum(1) / n.clamp(min=1.0), 0.0)

    tail_idx = torch.from_numpy(idx)
    emb, item_rows = text[tail_idx], table[tail_idx]  # [B, TAIL, D]
    values = torch.from_numpy(tail_surprise).unsqueeze(-1)  # [B, TAIL, 1]
    past_s = window_mean(values, newest - LONG - SHORT, newest - SHORT + 1)[:, 0]
    recent_s = window_mean(values, newest - SHORT + 1, newest + 1)[:, 0]
    shifts = []
    for space, short in ((emb, SHORT), (emb, 2 * SHORT), (item_rows, SHORT)):
        recent = window_mean(space, newest - short + 1, newest + 1)
        before = window_mean(space, newest - LONG - short + 1, newest - short + 1)
        shifts.append(_cos_distance(recent, before))
    before_t = window_mean(emb, newest - LONG, newest)
    new_text = text[torch.as_tensor(list(items), dtype=torch.long)]
    now = torch.as_tensor(list(surprise), dtype=torch.float64)
    return feature_matrix({
        "surprise": now,
        "surprise_vs_past": now - torch.from_numpy(past_all) * (newest > 0),
        "recent_surprise_vs_past": recent_s - past_s,
        "log_rank": torch.as_tensor(list(log_rank), dtype=torch.float32),
        "text_shift": shifts[0], "text_shift_6": shifts[1], "item_shift": shifts[2],
        "item_vs_past_text": _cos_distance(new_text, before_t),
        "hidden_change": _cos_distance(new_hidden, torch.stack(backs)),
        "log_position": torch.log1p(newest.double()).float(),
        "log_gap": torch.log1p(torch.from_numpy(gaps).clamp(min=0)).float(),
    })
