"""Offline evaluation of the BOCPD drift detector (app/domain/bocpd.py) on spliced ml-100k.

    python -m training.drift.bocpd_eval --seeds 0 1 2 --out var/bocpd_eval.json

Per seed (docs/drift-protocol.md): users are split 40/30/30 into fit / calibration /
evaluation groups; each group gets cases from three splice generators: A (``SpliceConfig()``),
B (``generator_b()``) and C (``generator_c()``: a pause before the change half of the time,
pauses of the same distribution in every history, controls included, and A -> B -> A cases).
B's controls are A's (the real unspliced histories); C's are real histories with pauses.

- Hyper-parameters (hazard, topic prior, channels and their prior strength, min/max age) are
  chosen by coordinate search on the fit users only: the mean F1 over A, B and C at the target
  rate, with thresholds calibrated on the fit users' own unspliced histories.
- Thresholds are calibrated on the calibration users' unspliced histories, pooled and per
  history-length bucket (events 0-49, 50-149, 150+), at 1, 2 and 4 alarms per 1,000 events.
- Everything is scored on the evaluation users (F1 with a +-3 event margin, precision, recall,
  the measured alarm rate on each generator's controls). An alarm is scored at the change it
  locates (the likeliest start of the run), for BOCPD and for the GLR test alike.

Baselines, calibrated the same way: BOCPD on genres alone with hazard 1/100 and the module's
default prior (``bocpd_genres_h100``), a generalised likelihood-ratio test for one change in the
genre mix over a sliding window (``glr_w40``), never alarm, alarm every 7 events.

Item vectors for the ``vector`` channel: all-MiniLM-L6-v2 embeddings of the item texts (from the
installed package's files only; cached in var/bocpd/), projected on principal components fitted
on the fit users' events and scaled to unit variance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.domain.bocpd import (
    BocpdConfig,
    BocpdDetector,
    BocpdState,
    BucketThresholds,
    Observation,
    classify_kind,
    trace_alarms,
)
from app.domain.drift import COOLDOWN, MIN_EVENTS
from training.drift.baselines import every_k_alarms, glr_trace
from training.drift.bocpd_fit import calibrate, empirical_prior
from training.drift.evaluation import evaluate_alarms
from training.drift.splicing import DriftCase, SpliceConfig, make_cases, split_users

GENERATORS = {"A": SpliceConfig(), "B": SpliceConfig.generator_b(),
              "C": SpliceConfig.generator_c()}
PER_USER = {"A": {"abrupt": 1, "gradual": 1, "none": 1},
            "B": {"abrupt": 1, "gradual": 1},
            "C": {"abrupt": 1, "gradual": 1, "recurring": 1, "none": 1}}
GROUPS = ("fit", "calibration", "evaluation")
BUCKET_EDGES = (50, 150)
RATES = (1.0, 2.0, 4.0)
TARGET = 2.0
VAR = Path("var")

Trace = tuple[np.ndarray, np.ndarray]  # (score float[L], located change int[L])


# ---------------------------------------------------------------- material


@dataclass
class Catalogue:
    topics: list[tuple[int, ...]]  # per model item index (0 = padding)
    topic_names: list[str]
    text: np.ndarray  # float[N+1, 384]
    ratings: dict[tuple[str, int], float]
    users: list[Any]  # UserSequence, training portions
    years: np.ndarray  # float[N+1] release year, NaN where unknown


def load_catalogue(cache: Path) -> Catalogue:
    from training.data import movielens
    from training.data.sequences import build_user_sequences, build_vocab, leave_one_out

    snapshot = movielens.load(cache / "cache").snapshot()
    vocab = build_vocab(snapshot)
    split = leave_one_out(build_user_sequences(snapshot, vocab))
    names = sorted({c for item in snapshot.items for c in item.categories})
    index = {n: i for i, n in enumerate(names)}
    topics = [()] + [tuple(index[c] for c in item.categories) for item in snapshot.items]
    ratings = {(snapshot.user_ids[u], int(i) + 1): float(v) for u, i, v in zip(
        snapshot.event_user, snapshot.event_item, snapshot.event_value, strict=True)}
    text = item_text_vectors(snapshot, cache / "bocpd").astype(np.float64)
    year_of = {m.item_id: m.year for m in movielens.load(cache / "cache").movies}
    years = np.array([np.nan] + [np.nan if year_of.get(it.item_id) is None
                                 else float(year_of[it.item_id]) for it in snapshot.items])
    return Catalogue(topics, names, text, ratings, split.train, years)


def item_text_vectors(snapshot: Any, cache: Path) -> np.ndarray:
    """float[N+1, 384] MiniLM embeddings of the item texts (row 0 zeros), cached."""
    path = cache / "item_text_minilm.npy"
    if path.exists():
        return np.load(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from app.ml.encoder import ItemTextEncoder

    vectors = ItemTextEncoder.pretrained("cpu").embed([it.text for it in snapshot.items])
    out = np.zeros((len(vectors) + 1, vectors.shape[1]), dtype=np.float32)
    out[1:] = vectors.numpy()
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


@dataclass
class CaseData:
    case: DriftCase
    topics: list[tuple[int, ...]]
    items: np.ndarray
    values: np.ndarray  # ratings, NaN where unknown
    gaps: np.ndarray  # seconds, NaN for the first event

    @property
    def points(self) -> list[int]:
        return self.case.change_points


def case_data(case: DriftCase, cat: Catalogue) -> CaseData:
    users = [case.user_b if b else case.user_a for b in (case.from_b or [0] * len(case.items))]
    values = np.array([cat.ratings.get((u, i), np.nan) for u, i in zip(
        users, case.items, strict=True)], dtype=np.float64)
    times = np.asarray(case.times, dtype=np.float64)
    gaps = np.concatenate([[np.nan], np.diff(times)]) if len(times) else np.zeros(0)
    return CaseData(case, [cat.topics[i] for i in case.items], np.asarray(case.items), values,
                    gaps)


@dataclass
class SeedMaterial:
    seed: int
    cases: dict[tuple[str, str], list[CaseData]]  # (group, generator) -> cases with controls
    controls: dict[str, list[CaseData]]  # group -> real unspliced histories
    pca: tuple[np.ndarray, np.ndarray, np.ndarray]  # mean, components, scale
    text: np.ndarray  # float[N+1, 384] item text embeddings
    extras: np.ndarray  # float[N+1, 2] release year and log popularity (fit users), z-scored


def genre_vectors(cat: Catalogue) -> np.ndarray:
    """float[N+1, K]: each item's genres, a weight of 1 spread evenly (row 0 zeros)."""
    out = np.zeros((len(cat.topics), len(cat.topic_names)))
    for i, topics in enumerate(cat.topics):
        for k in topics:
            out[i, k] = 1.0 / len(topics)
    return out


def build_material(cat: Catalogue, seed: int, partners: str = "genres") -> SeedMaterial:
    """Cases of every group and generator. ``partners``: the item vectors whose user profiles
    decide how far apart A and B are ("genres": the genre mix, as in the measurements of
    shared/notes/drift-evaluation.md; "text": the text embeddings, as docs/drift-protocol.md)."""
    space = genre_vectors(cat) if partners == "genres" else cat.text
    ids = [u.user_id for u in cat.users]
    groups = dict(zip(GROUPS, split_users(ids, (0.4, 0.3, 0.3), seed), strict=True))
    by_id = {u.user_id: u for u in cat.users}
    cases: dict[tuple[str, str], list[CaseData]] = {}
    controls: dict[str, list[CaseData]] = {}
    for k, group in enumerate(GROUPS):
        users = [by_id[i] for i in groups[group]]
        for g, (name, config) in enumerate(GENERATORS.items()):
            # The protocol's generator seeds (A: seed*1000+k, B on evaluation: +3), C +6+k.
            gen_seed = seed * 1000 + (k if name == "A" else 3 if group == "evaluation"
                                      and name == "B" else 3 + 3 * g + k)
            made = [case_data(c, cat) for c in make_cases(users, space, config,
                                                         PER_USER[name], gen_seed)]
            cases[(group, name)] = made
        controls[group] = [c for c in cases[(group, "A")] if not c.points]
        cases[(group, "B")] = cases[(group, "B")] + controls[group]
    fit_items = np.concatenate([u.items for u in (by_id[i] for i in groups["fit"])])
    x = cat.text[fit_items].astype(np.float64)
    mean = x.mean(axis=0)
    _, sing, vt = np.linalg.svd(x - mean, full_matrices=False)
    scale = sing / math.sqrt(len(x))
    # Two cheap item features: release year and log popularity among the fit users' events.
    popularity = np.log1p(np.bincount(fit_items, minlength=len(cat.topics)).astype(float))
    extras = np.stack([cat.years, popularity], axis=1)
    fit_x = extras[fit_items]
    extras = (extras - np.nanmean(fit_x, axis=0)) / np.nanstd(fit_x, axis=0)
    return SeedMaterial(seed, cases, controls, (mean, vt[:16], scale[:16]), cat.text, extras)


def vectors_for(data: CaseData, material: SeedMaterial, dim: int,
                extras: bool = False) -> np.ndarray | None:
    """float[L, dim (+2)]: the first ``dim`` principal components of the events' item text
    embeddings, unit variance over the fit users' events (+ release year and popularity)."""
    parts = []
    if dim:
        mean, comps, scale = material.pca
        parts.append(((material.text[data.items] - mean) @ comps[:dim].T) / scale[:dim])
    if extras:
        parts.append(material.extras[data.items])
    return np.concatenate(parts, axis=1) if parts else None


# ---------------------------------------------------------------- detectors


@dataclass(frozen=True)
class Variant:
    """A BOCPD configuration plus how the caller builds its observations."""

    config: BocpdConfig
    vector_dim: int = 0  # principal components of the item text embedding
    extras: bool = False  # + release year and popularity columns

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "vector_dim": self.vector_dim,
                "extras": self.extras}


def observations(data: CaseData, material: SeedMaterial, variant: Variant) -> list[Observation]:
    vectors = vectors_for(data, material, variant.vector_dim, variant.extras)
    out = []
    for i, topics in enumerate(data.topics):
        value = data.values[i]
        gap = data.gaps[i]
        out.append(Observation(topics, None if vectors is None else vectors[i],
                               None if math.isnan(value) else float(value),
                               None if math.isnan(gap) else float(gap)))
    return out


def bocpd_traces(cases: Sequence[CaseData], material: SeedMaterial,
                 variant: Variant) -> list[Trace]:
    detector = BocpdDetector(variant.config)
    traces = []
    for data in cases:
        trace = detector.run(observations(data, material, variant))
        traces.append((trace.log_odds, trace.change_index))
    return traces


def glr_traces(cases: Sequence[CaseData], n_topics: int, window: int = 40) -> list[Trace]:
    out = []
    for data in cases:
        counts = np.zeros((len(data.topics), n_topics))
        for t, topics in enumerate(data.topics):
            for k in topics:
                counts[t, k] += 1.0 / len(topics)
        out.append(glr_trace(counts, window))
    return out


# ---------------------------------------------------------------- calibration and scoring


def located_alarms(trace: Trace, threshold: float | BucketThresholds) -> np.ndarray:
    alarms = trace_alarms(trace[0], trace[1], threshold, MIN_EVENTS, COOLDOWN)
    return np.sort(np.asarray([a.change_index for a in alarms], dtype=np.int64))


def score(cases: Sequence[CaseData], alarms: Sequence[np.ndarray]) -> dict[str, float | None]:
    return evaluate_alarms(alarms, [c.points for c in cases], [len(c.items) for c in cases],
                           [c.case.kind for c in cases])


def f1_at(traces_by_gen: dict[str, list[Trace]], cases_by_gen: dict[str, list[CaseData]],
          thresholds: BucketThresholds) -> dict[str, dict[str, float | None]]:
    return {g: score(cases_by_gen[g], [located_alarms(t, thresholds) for t in traces])
            for g, traces in traces_by_gen.items()}


# ---------------------------------------------------------------- fitting on the fit users


def fit_priors(material: SeedMaterial, dim: int, alpha: float,
               extras: bool = False) -> dict[str, Any]:
    controls = material.controls["fit"]
    value_prior = empirical_prior([c.values for c in controls], alpha)
    gap_prior = empirical_prior([np.log1p(np.maximum(c.gaps, 0.0)) for c in controls], alpha)
    priors: dict[str, Any] = {"value_prior": value_prior, "gap_prior": gap_prior}
    if dim or extras:
        vecs = [vectors_for(c, material, dim, extras) for c in controls]
        cols = [empirical_prior([v[:, j] for v in vecs if v is not None], alpha)
                for j in range(dim + 2 * extras)]
        # One prior for every column: the mean of the columns' fitted ones.
        priors["vector_prior"] = tuple(float(np.mean([c[i] for c in cols])) for i in range(4))
    return priors


def topic_frequencies(material: SeedMaterial, n_topics: int) -> tuple[float, ...]:
    counts = np.full(n_topics, 1e-3)
    for c in material.controls["fit"]:
        for topics in c.topics:
            for k in topics:
                counts[k] += 1.0 / len(topics)
    return tuple(float(x) for x in counts / counts.sum())


def make_variant(material: SeedMaterial, n_topics: int, knobs: dict[str, Any]) -> Variant:
    dim, extras = int(knobs["vector_dim"]), bool(knobs.get("extras", False))
    priors = fit_priors(material, dim, float(knobs["ng_alpha"]), extras)
    columns = dim + 2 * extras
    config = BocpdConfig(
        hazard_lambda=float(knobs["hazard"]), max_run=int(knobs.get("max_run", 200)),
        min_age=int(knobs["min_age"]), max_age=int(knobs["max_age"]), n_topics=n_topics,
        topic_strength=float(knobs["topic_strength"]),
        topic_base=topic_frequencies(material, n_topics) if knobs["topic_base"] == "fit"
        else None,
        use_vector=columns > 0, vector_dim=columns,
        vector_prior=priors.get("vector_prior", (0.0, 0.5, 2.0, 1.0)),
        use_value=bool(knobs["value"]), value_prior=priors["value_prior"],
        use_gap=bool(knobs["gap"]), gap_prior=priors["gap_prior"])
    return Variant(config, dim, extras)


START = {"hazard": 100.0, "min_age": 5, "max_age": 20, "topic_strength": 2.0,
         "topic_base": "fit", "vector_dim": 8, "ng_alpha": 2.0, "value": True, "gap": True,
         "extras": False, "max_run": 100}
GRID: dict[str, Sequence[Any]] = {
    "extras": (False, True),
    "vector_dim": (0, 8),
    "topic_strength": (1.0, 2.0, 4.0),
    "hazard": (50.0, 100.0, 200.0),
    "gap": (False, True),
    "value": (False, True),
    "min_age": (3, 5),
    "max_age": (12, 20, 30),
    "ng_alpha": (1.0, 2.0, 5.0),
}
FIT_SHARE = 4  # the search reads every fourth fit case (time; the fit group is the largest)


def fit_objective(material: SeedMaterial, variant: Variant, target: float) -> float:
    """Mean F1 over the generators on the fit users, thresholds per bucket calibrated on the
    fit users' own unspliced histories."""
    gens = {g: material.cases[("fit", g)][::FIT_SHARE] for g in GENERATORS}
    traces = {g: bocpd_traces(cs, material, variant) for g, cs in gens.items()}
    control_traces = [t for t, c in zip(traces["A"], gens["A"], strict=True) if not c.points]
    thresholds = calibrate(control_traces, target, BUCKET_EDGES)
    metrics = f1_at(traces, gens, thresholds)
    return float(np.mean([m["f1"] or 0.0 for m in metrics.values()]))


def tune(material: SeedMaterial, n_topics: int, rounds: int, log: Callable[[str], None],
         target: float = TARGET) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Coordinate search over ``GRID`` from ``START``; each knob in turn takes its best value."""
    knobs = dict(START)
    history: list[dict[str, Any]] = []
    cache: dict[str, float] = {}

    def value(k: dict[str, Any]) -> float:
        key = json.dumps(k, sort_keys=True)
        if key not in cache:
            cache[key] = fit_objective(material, make_variant(material, n_topics, k), target)
            history.append({"knobs": dict(k), "fit_f1": cache[key]})
            log(f"  fit F1 {cache[key]:.3f} {json.dumps(k, sort_keys=True)}")
        return cache[key]

    best = value(knobs)
    for _ in range(rounds):
        changed = False
        for name, options in GRID.items():
            for option in options:
                trial = {**knobs, name: option}
                v = value(trial)
                if v > best + 1e-4:
                    best, knobs, changed = v, trial, True
        if not changed:
            break
    return knobs, history


# ---------------------------------------------------------------- one seed


def kind_accuracy(cases: Sequence[CaseData], material: SeedMaterial, variant: Variant,
                  thresholds: BucketThresholds) -> dict[str, float | None]:
    """Share of detected change points whose kind (read at the alarm) is right: an abrupt or
    gradual case's change, a recurring case's first change (abrupt) and its return."""
    detector = BocpdDetector(variant.config)
    right: dict[str, list[bool]] = {"abrupt": [], "gradual": [], "recurring": []}
    for data in cases:
        if not data.points:
            continue
        state = detector.initial_state()
        states: list[BocpdState] = []
        scores, changes = [], []
        for obs in observations(data, material, variant):
            state, out = detector.step(state, obs)
            states.append(state)
            scores.append(out.log_odds)
            changes.append(out.change_index)
        alarms = trace_alarms(np.asarray(scores), np.asarray(changes), thresholds)
        expected = ({data.points[0]: "abrupt", data.points[1]: "recurring"}
                    if data.case.kind == "recurring" else {data.points[0]: data.case.kind})
        previous = None
        used: set[int] = set()
        for alarm in alarms:
            for point, kind in expected.items():
                if point not in used and abs(alarm.change_index - point) <= 3:
                    used.add(point)
                    got = classify_kind(states[alarm.index], alarm.change_index, previous).kind
                    right[kind].append(got == kind)
                    break
            previous = alarm.change_index
    out: dict[str, float | None] = {f"kind_accuracy_{k}": (float(np.mean(v)) if v else None)
                                    for k, v in right.items()}
    every = [x for v in right.values() for x in v]
    out["kind_accuracy"] = float(np.mean(every)) if every else None
    return out


def evaluate_rows(material: SeedMaterial, rows: dict[str, Callable[[Sequence[CaseData]],
                                                                    list[Trace]]],
                  ) -> dict[str, Any]:
    """Every row calibrated on the calibration users (pooled and per bucket, each rate) and
    scored on the evaluation users per generator."""
    out: dict[str, Any] = {}
    calib = material.controls["calibration"]
    for name, make in rows.items():
        calib_traces = make(calib)
        eval_traces = {g: make(material.cases[("evaluation", g)]) for g in GENERATORS}
        cases = {g: material.cases[("evaluation", g)] for g in GENERATORS}
        row: dict[str, Any] = {}
        for mode, edges in (("pooled", ()), ("bucket", BUCKET_EDGES)):
            for rate in RATES:
                thresholds = calibrate(calib_traces, rate, edges)
                metrics = f1_at(eval_traces, cases, thresholds)
                calib_rate = 1000.0 * sum(len(located_alarms(t, thresholds))
                                          for t in calib_traces) / sum(len(t[0])
                                                                      for t in calib_traces)
                row[f"{mode}@{rate:g}"] = {"thresholds": thresholds.to_dict(),
                                          "calibration_alarms_per_1k": calib_rate,
                                          **{g: m for g, m in metrics.items()}}
        out[name] = row
    return out


def trivial_rows(material: SeedMaterial) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, fn in (("never", lambda n: np.zeros(0, dtype=np.int64)),
                     ("every_7", lambda n: every_k_alarms(n, 7))):
        rows[name] = {g: score(material.cases[("evaluation", g)],
                               [fn(len(c.items)) for c in material.cases[("evaluation", g)]])
                      for g in GENERATORS}
    return rows


def step_cost(material: SeedMaterial, variant: Variant, runs: int = 3) -> dict[str, float]:
    """Median microseconds per :meth:`BocpdDetector.step` on long real histories, R=100, 200."""
    longest = sorted(material.controls["evaluation"], key=lambda c: -len(c.items))[:5]
    out = {}
    for cap in (100, 200):
        detector = BocpdDetector(replace(variant.config, max_run=cap))
        times = []
        for _ in range(runs):
            for data in longest:
                obs = observations(data, material, variant)
                state = detector.initial_state()
                for o in obs:
                    start = time.perf_counter()
                    state, _ = detector.step(state, o)
                    times.append(time.perf_counter() - start)
        out[f"step_us_median_R{cap}"] = 1e6 * float(np.median(times))
        out[f"state_kb_R{cap}"] = state.nbytes / 1024
    return out


def run_seed(cat: Catalogue, seed: int, rounds: int, partners: str,
             log: Callable[[str], None]) -> dict[str, Any]:
    started = time.time()
    material = build_material(cat, seed, partners)
    n_topics = len(cat.topic_names)
    log(f"seed {seed}: cases " + ", ".join(f"{g}/{n}: {len(cs)}" for (g, n), cs in
                                          material.cases.items()))
    knobs, history = tune(material, n_topics, rounds, log)
    ours = make_variant(material, n_topics, {**knobs, "max_run": 200})
    no_vec = make_variant(material, n_topics, {**knobs, "vector_dim": 0, "extras": False,
                                               "max_run": 200})
    baseline = Variant(BocpdConfig(hazard_lambda=100.0, n_topics=n_topics))
    rows: dict[str, Callable[[Sequence[CaseData]], list[Trace]]] = {
        "ours": lambda cs: bocpd_traces(cs, material, ours),
        "ours_no_vector": lambda cs: bocpd_traces(cs, material, no_vec),
        "bocpd_genres_h100": lambda cs: bocpd_traces(cs, material, baseline),
        "glr_w40": lambda cs: glr_traces(cs, n_topics, 40),
    }
    results = evaluate_rows(material, rows)
    results.update(trivial_rows(material))
    thresholds = BucketThresholds(**{k: tuple(v) for k, v in
                                     results["ours"][f"bucket@{TARGET:g}"]["thresholds"].items()})
    kinds = {g: kind_accuracy(material.cases[("evaluation", g)], material, ours, thresholds)
             for g in GENERATORS}
    return {"seed": seed, "knobs": knobs, "config": ours.to_dict(),
            "config_no_vector": no_vec.to_dict(), "tuning": history, "rows": results,
            "kind": kinds, "cost": step_cost(material, ours),
            "n_cases": {f"{g}/{n}": len(cs) for (g, n), cs in material.cases.items()},
            "partners": partners, "seconds": time.time() - started}


# ---------------------------------------------------------------- report


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, min and max over seeds of F1 / precision / recall / alarm rate per row."""
    out: dict[str, Any] = {}
    for name, row in runs[0]["rows"].items():
        for setting in (row if "A" not in row else {"-": None}):
            for g in GENERATORS:
                picks = [(r["rows"][name][g] if setting == "-" else r["rows"][name][setting][g])
                         for r in runs]
                key = f"{name}|{setting}|{g}"
                out[key] = {m: {"mean": float(np.mean([p[m] or 0.0 for p in picks])),
                                "min": float(np.min([p[m] or 0.0 for p in picks])),
                                "max": float(np.max([p[m] or 0.0 for p in picks]))}
                            for m in ("f1", "precision", "recall", "alarms_per_1k")}
    return out


def print_table(summ: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    print(f"\n{'row':<20}{'calib':<12}{'gen':<4}{'F1 mean':>8}{'min':>7}{'max':>7}"
          f"{'prec':>7}{'recall':>7}{'al/1k':>7}")
    for key, m in summ.items():
        name, setting, g = key.split("|")
        print(f"{name:<20}{setting:<12}{g:<4}{m['f1']['mean']:8.3f}{m['f1']['min']:7.3f}"
              f"{m['f1']['max']:7.3f}{m['precision']['mean']:7.3f}{m['recall']['mean']:7.3f}"
              f"{m['alarms_per_1k']['mean']:7.2f}")
    for r in runs:
        print(f"seed {r['seed']}: knobs {json.dumps(r['knobs'], sort_keys=True)}; cost "
              + ", ".join(f"{k} {v:.1f}" for k, v in r["cost"].items()))
        print("  kind accuracy " + ", ".join(f"{g}: {v['kind_accuracy'] or 0:.2f}"
                                             for g, v in r["kind"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=VAR / "bocpd_eval.json")
    parser.add_argument("--rounds", type=int, default=1, help="coordinate-search rounds")
    parser.add_argument("--partners", choices=("genres", "text"), default="genres",
                        help="item vectors that decide how far apart A and B are")
    args = parser.parse_args()
    cat = load_catalogue(VAR)
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(cat, seed, args.rounds, args.partners,
                             lambda s: print(s, flush=True)))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"runs": runs, "summary": summary(runs)}, indent=1))
    summ = summary(runs)
    args.out.write_text(json.dumps({"runs": runs, "summary": summ}, indent=1))
    print_table(summ, runs)


if __name__ == "__main__":
    main()

