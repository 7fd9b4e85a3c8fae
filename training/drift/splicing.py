"""Spliced sequences with a known interest change, for training and evaluating drift detectors.

No public benchmark labels per-user interest drift, so we make our own (docs/drift-protocol.md):

- ``abrupt``: the first ``c`` events of user A, then a run of user B's events, where B's
  interests are far from A's. The change point is ``c`` (the first B event).
- ``gradual``: the first ``c`` events of A; event ``c`` is B's; afterwards each event is B's next
  event with probability ``min(1, (j + 1) / (ramp + 1))`` (``j`` = events since ``c``), else
  A's next one, so B's share ramps up over ``ramp`` events. The change point is ``c``.
- ``recurring`` (generator C): A's first ``c`` events, a run of B's, then A's next events
  again (A -> B -> A). Two change points: ``c`` (to B, abrupt) and ``return_point`` (back to
  A's earlier interests, the recurring one).
- ``none``: a real user's sequence untouched (no change point; all labels 0).

Times: each event keeps the gap to its predecessor in its own user's sequence, and times are
rebuilt as a running sum from A's first time, so the splice leaves no jump in the clock that
a detector could read instead of the interests. B's events that A already rated are dropped
(a user never rates a film twice). Every draw comes from a seeded generator.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from training.data.sequences import UserSequence

CaseKind = Literal["abrupt", "gradual", "recurring", "none"]


@dataclass(slots=True)
class SpliceConfig:
    min_prefix: int = 30  # A events before the change (PageHinkley cannot fire before 30)
    max_prefix: int = 80
    min_suffix: int = 20  # B events after the change, at least
    max_suffix: int = 60
    ramp: int = 8  # gradual: events over which B's share climbs to 1
    far_quantile: float = 0.5  # B is drawn among users farther from A than this quantile
    max_unspliced: int = 200  # real sequences (and spliced ones) are cut to their first events
    # How "far" is read: "group" = above the quantile of all pairwise distances in the group;
    # "per_user" = above the quantile of A's own distances to the others (A's farthest ones).
    partner_rule: Literal["group", "per_user"] = "group"
    # How B's segment is joined on in time: "continue" keeps the clock running (B's first
    # event comes its own gap after A's last); "gap" puts a pause of min_gap_s..max_gap_s
    # (log-uniform) before it, like a user coming back after a while.
    join: Literal["continue", "gap"] = "continue"
    min_gap_s: float = 3600.0
    max_gap_s: float = 30 * 86400.0
    # Partial change: after the change (and the gradual ramp) each event is still A's next one
    # with this probability (some of A's interests are kept).
    keep_a: float = 0.0
    # join="mixed": a pause before B's first event with this probability, else the clock runs on
    join_gap_prob: float = 1.0
    # Per-event probability of a pause (same distribution as the join's) inserted anywhere in
    # every case, unspliced controls included, so that a pause by itself gives nothing away.
    pause_rate: float = 0.0
    # recurring: A events after B's run, at least (the case is cut to max_unspliced anyway)
    min_return: int = 10

    @classmethod
    def generator_b(cls) -> SpliceConfig:
        """The second generator of the protocol (docs/drift-protocol.md): other segment
        lengths, a pause at the join, B among A's own farthest third, partial changes."""
        return cls(min_prefix=20, max_prefix=140, min_suffix=12, max_suffix=100, ramp=5,
                   far_quantile=0.67, partner_rule="per_user", join="gap", keep_a=0.15)

    @classmethod
    def generator_c(cls) -> SpliceConfig:
        """A third generator (issue 24): changes from event 15 to 150, B's run 15..80, a pause
        before B half of the time, pauses of the same distribution at 2 % of all events of
        every case (controls included), and recurring A -> B -> A cases."""
        return cls(min_prefix=15, max_prefix=150, min_suffix=15, max_suffix=80, ramp=6,
                   far_quantile=0.5, partner_rule="group", join="mixed", join_gap_prob=0.5,
                   pause_rate=0.02, min_return=10)


@dataclass(slots=True)
class DriftCase:
    kind: CaseKind
    user_a: str
    user_b: str | None
    change_point: int  # -1 for ``none``
    items: list[int]
    times: list[float]
    from_b: list[int] = field(default_factory=list)  # 1 where the event is B's
    return_point: int = -1  # recurring: the first event back on A's interests

    @property
    def change_points(self) -> list[int]:
        """Every labelled change, oldest first (empty for ``none``)."""
        points = [self.change_point] if self.change_point >= 0 else []
        return points + ([self.return_point] if self.return_point >= 0 else [])

    def labels(self, window: int) -> np.ndarray:
        """float32[L]: 1 for events ``cp .. cp + window - 1`` of every change point, else 0."""
        out = np.zeros(len(self.items), dtype=np.float32)
        for point in self.change_points:
            out[point : point + window] = 1.0
        return out


def user_profiles(users: list[UserSequence], item_vectors: np.ndarray) -> np.ndarray:
    """float[U, D]: each user's mean item vector, L2-normalised (item_vectors: float[N+1, D])."""
    means = np.stack([item_vectors[u.items].mean(axis=0) for u in users])
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def far_partners(profiles: np.ndarray, quantile: float,
                 rule: str = "group") -> list[np.ndarray]:
    """For each user, the indices of users whose cosine distance is above the quantile: of the
    group's pairwise distances (``rule="group"``) or of the user's own (``"per_user"``)."""
    distance = 1.0 - profiles @ profiles.T
    off_diagonal = distance[~np.eye(len(profiles), dtype=bool)]
    cut = float(np.quantile(off_diagonal, quantile))
    partners = []
    for row, dist in enumerate(distance):
        if rule == "per_user" and len(dist) > 1:
            cut = float(np.quantile(np.delete(dist, row), quantile))
        far = np.flatnonzero(dist > cut)
        partners.append(far[far != row] if len(far) else np.array([int(np.argmax(dist))]))
    return partners


def _gaps(times: np.ndarray) -> np.ndarray:
    """float[L]: time since the previous event of the same user (0 for the first)."""
    return np.diff(times, prepend=times[0])


def _assemble(a: UserSequence, b: UserSequence, cut: int, b_range: tuple[int, int],
              ramp: int, ramp_draw: np.ndarray | None, keep_draw: np.ndarray | None = None,
              keep_a: float = 0.0, join_gap: float | None = None,
              max_len: int | None = None) -> DriftCase:
    """Build one spliced case; ``ramp_draw`` (uniforms) makes it gradual, None abrupt.

    ``keep_draw`` (uniforms, with ``keep_a`` > 0): after the change each event is A's next one
    with probability ``keep_a`` (a partial change). ``join_gap``: seconds before B's first
    event (None: B's own gap). ``max_len``: the case is cut to its first events."""
    b_start, b_stop = b_range
    seen = set(a.items[:cut].tolist())
    a_gaps, b_gaps = _gaps(a.times), _gaps(b.times)
    b_rest = [i for i in range(b_start, b_stop) if int(b.items[i]) not in seen]
    keeps = keep_draw is not None and keep_a > 0
    a_rest = list(range(cut, len(a.items))) if ramp_draw is not None or keeps else []
    b_set = {int(b.items[i]) for i in b_rest}
    a_rest = [i for i in a_rest if int(a.items[i]) not in b_set]
    items, gaps, from_b = list(a.items[:cut]), list(a_gaps[:cut]), [0] * cut
    j = 0
    while b_rest:
        share = 1.0 if ramp_draw is None else min(1.0, (j + 1) / (ramp + 1))
        take_b = (j == 0 or not a_rest
                  or ((ramp_draw is None or ramp_draw[j % len(ramp_draw)] < share)
                      and not (keeps and keep_draw is not None
                               and keep_draw[j % len(keep_draw)] < keep_a)))
        source, pos = (b, b_rest.pop(0)) if take_b else (a, a_rest.pop(0))
        items.append(int(source.items[pos]))
        gap = float((b_gaps if take_b else a_gaps)[pos])
        gaps.append(join_gap if j == 0 and join_gap is not None else gap)
        from_b.append(int(take_b))
        j += 1
    if max_len is not None:
        items, gaps, from_b = items[:max_len], gaps[:max_len], from_b[:max_len]
    times = (a.times[0] + np.cumsum(gaps)).tolist()
    kind: CaseKind = "abrupt" if ramp_draw is None else "gradual"
    return DriftCase(kind, a.user_id, b.user_id, cut, [int(i) for i in items], times, from_b)


def splice_case(a: UserSequence, b: UserSequence, kind: CaseKind, config: SpliceConfig,
                rng: np.random.Generator) -> DriftCase:
    """One abrupt or gradual case from A's start and a run of B's events."""
    top = min(config.max_prefix, len(a.items) - (1 if kind == "abrupt" else config.ramp))
    cut = int(rng.integers(config.min_prefix, max(top, config.min_prefix) + 1))
    b_start = int(rng.integers(0, max(len(b.items) - config.min_suffix, 0) + 1))
    b_stop = min(len(b.items), b_start + int(rng.integers(config.min_suffix,
                                                          config.max_suffix + 1)))
    draw = rng.random(4 * config.max_suffix) if kind == "gradual" else None
    # Extra draws only for generators that use them, so the default one's cases stay the same.
    keep = rng.random(4 * config.max_suffix) if config.keep_a > 0 else None
    join_gap = _join_gap(config, rng)
    return _assemble(a, b, cut, (b_start, b_stop), config.ramp, draw, keep, config.keep_a,
                     join_gap, config.max_unspliced)


def _pause(config: SpliceConfig, rng: np.random.Generator) -> float:
    """A pause of min_gap_s..max_gap_s seconds, log-uniform."""
    return float(np.exp(rng.uniform(np.log(config.min_gap_s), np.log(config.max_gap_s))))


def _join_gap(config: SpliceConfig, rng: np.random.Generator) -> float | None:
    """Seconds before B's first event (None: B's own gap)."""
    if config.join == "gap":
        return _pause(config, rng)
    if config.join == "mixed" and rng.random() < config.join_gap_prob:
        return _pause(config, rng)
    return None


def recurring_case(a: UserSequence, b: UserSequence, config: SpliceConfig,
                   rng: np.random.Generator) -> DriftCase | None:
    """A -> B -> A: A's first ``c`` events, a run of B's (films A rated dropped), then A's next
    events (films of B's run dropped). None when A has too few events left to return to."""
    top = min(config.max_prefix, len(a.items) - config.min_return)
    if top < config.min_prefix:
        return None
    cut = int(rng.integers(config.min_prefix, top + 1))
    b_start = int(rng.integers(0, max(len(b.items) - config.min_suffix, 0) + 1))
    b_stop = min(len(b.items), b_start + int(rng.integers(config.min_suffix,
                                                          config.max_suffix + 1)))
    join_gap = _join_gap(config, rng)
    back_gap = _join_gap(config, rng)
    a_items = set(a.items.tolist())
    b_run = [i for i in range(b_start, b_stop) if int(b.items[i]) not in a_items]
    b_set = {int(b.items[i]) for i in b_run}
    a_back = [i for i in range(cut, len(a.items)) if int(a.items[i]) not in b_set]
    if not b_run or len(a_back) < config.min_return:
        return None
    a_gaps, b_gaps = _gaps(a.times), _gaps(b.times)
    items = [int(i) for i in a.items[:cut]]
    gaps = [float(g) for g in a_gaps[:cut]]
    for j, pos in enumerate(b_run):
        items.append(int(b.items[pos]))
        gaps.append(join_gap if j == 0 and join_gap is not None else float(b_gaps[pos]))
    for j, pos in enumerate(a_back):
        items.append(int(a.items[pos]))
        gaps.append(back_gap if j == 0 and back_gap is not None else float(a_gaps[pos]))
    from_b = [0] * cut + [1] * len(b_run) + [0] * len(a_back)
    back = cut + len(b_run)
    n = config.max_unspliced
    if back + config.min_return > n:
        return None
    times = (a.times[0] + np.cumsum(gaps[:n])).tolist()
    return DriftCase("recurring", a.user_id, b.user_id, cut, items[:n], times, from_b[:n],
                     return_point=back)


def insert_pauses(case: DriftCase, config: SpliceConfig,
                  rng: np.random.Generator) -> DriftCase:
    """The case with a pause added before each event (not the first) with probability
    ``pause_rate``; times are rebuilt from the gaps."""
    times = np.asarray(case.times, dtype=np.float64)
    gaps = _gaps(times)
    hit = rng.random(len(gaps)) < config.pause_rate
    hit[:1] = False
    for i in np.flatnonzero(hit):
        gaps[i] += _pause(config, rng)
    new_times = (times[0] + np.cumsum(gaps)).tolist() if len(times) else []
    return DriftCase(case.kind, case.user_a, case.user_b, case.change_point, case.items,
                     new_times, case.from_b, case.return_point)


def unspliced_case(user: UserSequence, config: SpliceConfig) -> DriftCase:
    """A real user's sequence, cut to its first ``max_unspliced`` events; no change point."""
    n = min(len(user.items), config.max_unspliced)
    return DriftCase("none", user.user_id, None, -1, [int(i) for i in user.items[:n]],
                     [float(t) for t in user.times[:n]], [0] * n)


def make_cases(users: list[UserSequence], item_vectors: np.ndarray, config: SpliceConfig,
               per_user: dict[str, int], seed: int) -> list[DriftCase]:
    """Cases for one user group: ``per_user`` maps kind -> spliced cases per eligible user A.

    Every user of the group also gives one ``none`` case when ``per_user.get("none", 0)``.
    A is eligible when it has more than ``min_prefix + ramp`` events; B is drawn among A's far
    partners that have at least ``min_suffix`` events. Reproducible for a given seed.
    """
    rng = np.random.default_rng(seed)
    partners = far_partners(user_profiles(users, item_vectors), config.far_quantile,
                            config.partner_rule)
    cases: list[DriftCase] = []
    for row, a in enumerate(users):
        if per_user.get("none", 0):
            cases.append(unspliced_case(a, config))
        if len(a.items) <= config.min_prefix + config.ramp:
            continue
        pool = [p for p in partners[row] if len(users[p].items) >= config.min_suffix]
        if not pool:
            continue
        for kind in ("abrupt", "gradual"):
            for _ in range(per_user.get(kind, 0)):
                b = users[int(rng.choice(pool))]
                case = splice_case(a, b, kind, config, rng)
                if case.change_point < len(case.items):  # B's run was not all films A rated
                    cases.append(case)
        for _ in range(per_user.get("recurring", 0)):
            b = users[int(rng.choice(pool))]
            back = recurring_case(a, b, config, rng)
            if back is not None:
                cases.append(back)
    if config.pause_rate > 0:  # draws only for generators with pauses: A's and B's unchanged
        cases = [insert_pauses(c, config, rng) for c in cases]
    return cases


def split_users(user_ids: list[str], fractions: tuple[float, float, float],
                seed: int) -> tuple[list[str], list[str], list[str]]:
    """Three disjoint groups (head training, threshold calibration, evaluation), seeded."""
    order = np.random.default_rng(seed).permutation(len(user_ids))
    n_train = round(fractions[0] * len(user_ids))
    n_calib = round(fractions[1] * len(user_ids))
    shuffled = [user_ids[i] for i in order]
    return (sorted(shuffled[:n_train]), sorted(shuffled[n_train : n_train + n_calib]),
            sorted(shuffled[n_train + n_calib :]))


def save_cases(cases: dict[str, list[DriftCase]], path: Path) -> None:
    """Write the case list of every group as JSON (the run's exact test material)."""
    path.write_text(json.dumps({g: [asdict(c) for c in cs] for g, cs in cases.items()}))


def load_cases(path: Path) -> dict[str, list[DriftCase]]:
    """Read a case list written by :func:`save_cases`."""
    raw = json.loads(path.read_text())
    return {g: [DriftCase(**c) for c in cs] for g, cs in raw.items()}
