"""Item vocabulary, per-user event sequences, the leave-one-out split and training windows.

Protocol (RecBole ``order: TO``, ``split: LS valid_and_test``): each user's events are ordered
by timestamp, ties in ingestion order (the store's ``seq``; for an imported file, the file
order), as serving reads histories; the last event is the test target, the second
last the validation target, the rest is training. Validation predicts from the training part;
test predicts from training + validation (the validation item is history by then).

Baskets (many events sharing one timestamp, e.g. a grocery order): the targets are then the
last-ingested items of the last basket(s) and, by default, the basket's other items are in the
history, at the very time of the request. That is the RecBole protocol the MovieLens figures
follow, but for data whose unit is the basket it leaks: a model (or a baseline) is credited
with completing a basket it was shown most of, and the ingestion order inside a basket (often
a receipt's, sorted by product or aisle) decides which item is the target. With
``basket_holdout`` the histories of validation and test stop before the target's timestamp:
every event sharing it is held out of the history (not scored: the target stays one item), so
each target is predicted from earlier baskets only; users without an earlier basket are left
out of the split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.data.store import InteractionSnapshot


@dataclass(frozen=True)
class ItemVocab:
    """Catalogue order: ``item_ids[i]`` has index ``i + 1``; index 0 is padding."""

    item_ids: list[str]

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def index(self) -> dict[str, int]:
        return {item_id: position + 1 for position, item_id in enumerate(self.item_ids)}


@dataclass(frozen=True)
class UserSequence:
    user_id: str
    items: np.ndarray  # int64 [n] item indices (1..N), time-ordered
    times: np.ndarray  # float64 [n] epoch seconds


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Per-user training prefixes and held-out targets (same user order in every field)."""

    train: list[UserSequence]  # all but the last two events
    valid_items: np.ndarray  # int64 [U] second-last item
    valid_times: np.ndarray  # float64 [U]
    test_items: np.ndarray  # int64 [U] last item
    test_times: np.ndarray  # float64 [U]
    basket_holdout: bool = False  # histories stop before the target's timestamp (see above)

    def valid_inputs(self) -> list[UserSequence]:
        """History used to predict the validation item: the training part (with
        ``basket_holdout``: its events before the validation item's timestamp)."""
        if not self.basket_holdout:
            return self.train
        return [_before(seq, t) for seq, t in zip(self.train, self.valid_times, strict=True)]

    def test_inputs(self) -> list[UserSequence]:
        """History used to predict the test item: training part + validation item (with
        ``basket_holdout``: those before the test item's timestamp)."""
        full = [UserSequence(seq.user_id, np.append(seq.items, item), np.append(seq.times, t))
                for seq, item, t in zip(self.train, self.valid_items, self.valid_times,
                                        strict=True)]
        if not self.basket_holdout:
            return full
        return [_before(seq, t) for seq, t in zip(full, self.test_times, strict=True)]


def _before(seq: UserSequence, time: float) -> UserSequence:
    """The events of a (time-ordered) sequence strictly before ``time``."""
    end = int(np.searchsorted(seq.times, time, side="left"))
    return UserSequence(seq.user_id, seq.items[:end], seq.times[:end])


def build_vocab(snapshot: InteractionSnapshot) -> ItemVocab:
    """Vocabulary in the snapshot's catalogue order (every stored item, with events or not)."""
    return ItemVocab(snapshot.item_ids)


def build_user_sequences(snapshot: InteractionSnapshot,
                         vocab: ItemVocab | None = None) -> list[UserSequence]:
    """Each user's events in (time, ingestion) order; users in order of their first ingested
    event. ``vocab`` defaults to the snapshot's (and must equal it when given)."""
    if vocab is not None and vocab.item_ids != snapshot.item_ids:
        raise ValueError("the vocabulary is not the snapshot's catalogue")
    # The snapshot is sorted by (time, seq): a stable sort by user keeps that order per user.
    order = np.argsort(snapshot.event_user, kind="stable")
    users = snapshot.event_user[order]
    items = snapshot.event_item[order].astype(np.int64) + 1  # model indices: 0 is padding
    times = snapshot.event_time[order]
    bounds = np.searchsorted(users, np.arange(len(snapshot.user_ids) + 1))
    return [UserSequence(user_id, items[bounds[u]:bounds[u + 1]].copy(),
                         times[bounds[u]:bounds[u + 1]].copy())
            for u, user_id in enumerate(snapshot.user_ids) if bounds[u + 1] > bounds[u]]


def leave_one_out(sequences: list[UserSequence], basket_holdout: bool = False
                  ) -> LeaveOneOutSplit:
    """Split every user (who needs at least 3 events; others are dropped) into train/valid/test.
    ``basket_holdout``: histories stop before each target's timestamp, and a user also needs an
    event before the validation item's timestamp (an earlier basket) to be kept."""
    kept = [seq for seq in sequences if len(seq.items) >= 3
            and (not basket_holdout or seq.times[0] < seq.times[-2])]
    return LeaveOneOutSplit(
        train=[UserSequence(seq.user_id, seq.items[:-2], seq.times[:-2]) for seq in kept],
        valid_items=np.array([seq.items[-2] for seq in kept], dtype=np.int64),
        valid_times=np.array([seq.times[-2] for seq in kept], dtype=np.float64),
        test_items=np.array([seq.items[-1] for seq in kept], dtype=np.int64),
        test_times=np.array([seq.times[-1] for seq in kept], dtype=np.float64),
        basket_holdout=basket_holdout,
    )


@dataclass(frozen=True)
class TrainingWindows:
    """Right-padded windows; loss at every position where ``targets > 0``."""

    items: torch.Tensor  # int64 [W, L] inputs, 0 = pad
    times: torch.Tensor  # float64 [W, L] input timestamps (0 at pads)
    targets: torch.Tensor  # int64 [W, L] next item at each position, 0 = no loss
    target_times: torch.Tensor  # float64 [W, L] the next item's timestamp (0 at pads): the
    # query time of the "request" time bias (its time only, never its identity)

    def __len__(self) -> int:
        return int(self.items.shape[0])


def training_windows(sequences: list[UserSequence], max_len: int) -> TrainingWindows:
    """Cut each sequence's (input = s[:-1], target = s[1:]) pairs into non-overlapping windows
    of ``max_len``, aligned to the END so the most recent window is full and only the oldest
    one is short; each window is right-padded. A sequence of n events gives ceil((n-1)/max_len)
    windows (none if n < 2)."""
    rows_items, rows_times, rows_targets, rows_target_times = [], [], [], []
    for seq in sequences:
        inputs, times, targets = seq.items[:-1], seq.times[:-1], seq.items[1:]
        for end in range(len(inputs), 0, -max_len):
            start = max(0, end - max_len)
            rows_items.append(_pad(inputs[start:end], max_len))
            rows_times.append(_pad(times[start:end], max_len))
            rows_targets.append(_pad(targets[start:end], max_len))
            rows_target_times.append(_pad(seq.times[start + 1:end + 1], max_len))
    if not rows_items:
        empty = torch.zeros(0, max_len, dtype=torch.int64)
        return TrainingWindows(empty, empty.to(torch.float64), empty.clone(),
                               empty.to(torch.float64))
    return TrainingWindows(
        items=torch.from_numpy(np.stack(rows_items)),
        times=torch.from_numpy(np.stack(rows_times)),
        targets=torch.from_numpy(np.stack(rows_targets)),
        target_times=torch.from_numpy(np.stack(rows_target_times)),
    )


def last_window(sequences: list[UserSequence], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``max_len`` events of each sequence, right-padded: (items int64 [U, L],
    times float64 [U, L]) -- the input for predicting each user's next item."""
    items = np.stack([_pad(seq.items[-max_len:], max_len) for seq in sequences])
    times = np.stack([_pad(seq.times[-max_len:], max_len) for seq in sequences])
    return torch.from_numpy(items), torch.from_numpy(times)


def _pad(values: np.ndarray, length: int) -> np.ndarray:
    """Right-pad a 1-D array with zeros to ``length``."""
    out = np.zeros(length, dtype=values.dtype)
    out[: len(values)] = values
    return out


def shuffle_ties(sequences: list[UserSequence], rng: np.random.Generator) -> list[UserSequence]:
    """Randomly reorder events that share a timestamp (training augmentation).

    Within one second the file order carries no meaning (415 of 943 ml-100k users rate their
    last two items in the same second; a basket's items share their order's timestamp), so
    training on random tie orders teaches the model the set of items consumed together rather
    than an arbitrary order. Events with different timestamps keep their order, however close
    (sub-second timestamps included). Only ever applied to training parts.
    """
    shuffled = []
    for seq in sequences:
        # Sorted by time, then by a random key: only exactly tied events change places.
        order = np.lexsort((rng.uniform(0.0, 0.5, len(seq.times)), seq.times))
        shuffled.append(UserSequence(seq.user_id, seq.items[order], seq.times[order]))
    return shuffled
