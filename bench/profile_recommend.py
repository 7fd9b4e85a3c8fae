"""CPU time of the stateless `POST /recommend` path in one process, drift on and off: for
profiling (py-spy, cProfile) and for before/after micro-benchmarks of the request path.

    python -m bench.profile_recommend                      # median CPU ms per request
    python -m bench.profile_recommend --only drift --seconds 20   # a loop to profile
    py-spy record -o out.svg --format flamegraph -- python -m bench.profile_recommend ...

What it calls is what the route calls: `Recommender.recommend_for_items` (the history the
client posts, ranked with or without the drift check over its window), through a session on
a migrated SQLite file that holds no items (the titles query runs, finds none). The bundle is
built in memory with the ml-100k champion's shapes (1,682 items, text 384, a 2-layer scorer
of width 64 over windows of 50; drift `bocpd` with 19 topics, 8 components and the gap,
max_run 200, or `feature-gru`), random seeded weights: the cost does not depend on them.
Histories are 50 events, as bench/serve.py posts them.

Per request CPU time is `time.process_time` around one call; the figure is the median over
`--repeats` calls after a warm-up. The machine may be shared: compare two versions of the
code in the same conditions, alternating, and read the medians, not one run's mean.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# before numpy and torch start their thread pools
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from app.domain.bocpd import BocpdConfig, BucketThresholds
from app.ml.bundle import DriftSettings, InterestModelBundle
from app.ml.drift_bocpd import BocpdDrift, ItemChannels
from app.ml.drift_head import N_FEATURES, DriftHead
from app.ml.sequence import SequenceInterestModel, SequenceModelConfig
from app.ml.topics import topics_from_categories
from app.services.ranking_options import RankingOptions
from app.services.recommender import Recommender
from app.services.served_model import ServedModel

N_ITEMS = 1_682
TEXT_DIM = 384
N_TOPICS = 19
COMPONENTS = 8
HISTORY = 50


class _Encoder:
    """What the bundle needs of an encoder here: nothing is embedded."""

    dim = TEXT_DIM

    def eval(self) -> _Encoder:
        return self


def _channels(rng: np.random.Generator) -> ItemChannels:
    """Each item row's topics (one or two of 19) and components, as bocpd_fit stores them."""
    counts = rng.integers(1, 3, N_ITEMS + 1)
    counts[0] = 0  # the padding row has no topic
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return ItemChannels(
        topic_offsets=offsets, topic_ids=rng.integers(0, N_TOPICS, int(offsets[-1])),
        centroids=np.eye(N_TOPICS, TEXT_DIM, dtype=np.float32),
        vectors=rng.normal(size=(N_ITEMS + 1, COMPONENTS)).astype(np.float32),
        pca_mean=np.zeros(TEXT_DIM, np.float32),
        pca_components=np.eye(COMPONENTS, TEXT_DIM, dtype=np.float32),
        pca_scale=np.ones(COMPONENTS, np.float32))


def build_bundle(kind: str, seed: int = 0) -> InterestModelBundle:
    """An ml-100k-shaped bundle with random weights (see the module docstring)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = SequenceModelConfig(hidden_size=64, num_layers=2, num_heads=2, ff_size=256,
                                 max_len=50)
    text = torch.nn.functional.normalize(torch.randn(N_ITEMS + 1, TEXT_DIM), dim=1)
    text[0] = 0.0
    scorer = SequenceInterestModel(config, N_ITEMS, TEXT_DIM, item_text=text).eval()
    detector: Any
    if kind == "bocpd":
        bocpd = BocpdConfig(hazard_lambda=100.0, max_run=200, min_age=5, max_age=20,
                            n_topics=N_TOPICS, use_vector=True, vector_dim=COMPONENTS,
                            use_gap=True)
        detector = BocpdDrift(bocpd, BucketThresholds((50, 150), (0.0, 0.5, 1.0)),
                              _channels(rng), [f"t{k}" for k in range(N_TOPICS)])
    elif kind == "feature-gru":
        detector = DriftHead(N_FEATURES, 32).eval()
    else:
        raise ValueError(f"unknown drift kind {kind!r}")
    genres = [(f"t{k}",) for k in rng.integers(0, N_TOPICS, N_ITEMS)]
    return InterestModelBundle(
        encoder=_Encoder(), sequence_model=scorer, drift_detector=detector,  # type: ignore[arg-type]
        drift=DriftSettings(threshold=0.5, max_events=200),
        item_ids=[str(i) for i in range(1, N_ITEMS + 1)],
        topics=topics_from_categories(text[1:].numpy(), genres),
        dataset_fingerprint="bench")


def histories(bundle: InterestModelBundle, n: int, seed: int = 1
              ) -> list[tuple[list[str], list[float]]]:
    """`n` histories of HISTORY events: a run of one part of the catalogue, then another
    (so some requests find a change), a few seconds to days apart."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        cut = int(rng.integers(10, HISTORY - 5))
        halves = rng.choice(4, 2, replace=False)
        part = np.where(np.arange(HISTORY) < cut, halves[0], halves[1])
        rows = part * (N_ITEMS // 4) + rng.integers(0, N_ITEMS // 4, HISTORY)
        times = 1.6e9 + np.cumsum(rng.choice([30.0, 600.0, 7_200.0, 86_400.0], HISTORY))
        out.append(([bundle.item_ids[int(r)] for r in rows], [float(t) for t in times]))
    return out


def served(bundle: InterestModelBundle) -> Recommender:
    return Recommender(ServedModel(bundle=bundle, name="bench", version="1",
                                   alias="champion", run_id=None, device="cpu",
                                   loaded_at=datetime.now(UTC)))


def request_loop(recommender: Recommender, session: Any,
                 cases: list[tuple[list[str], list[float]]], drift: bool
                 ) -> Callable[[int], None]:
    """A function making the i-th request (cases in turn), as the route makes it."""
    def call(i: int) -> None:
        items, times = cases[i % len(cases)]
        options = RankingOptions(k=10, exclude_seen=True, drift_aware=drift, at=times[-1])
        recommender.recommend_for_items(session, items, times, options)
    return call


def median_cpu_ms(call: Callable[[int], None], repeats: int, warmup: int = 20) -> float:
    for i in range(warmup):
        call(i)
    spent = []
    for i in range(repeats):
        begun = time.process_time()
        call(i)
        spent.append(time.process_time() - begun)
    return 1000 * statistics.median(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=("bocpd", "feature-gru"), default="bocpd")
    parser.add_argument("--only", choices=("drift", "plain"), default=None,
                        help="one variant only (for a profiler)")
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="run the variant(s) for this long instead (for a profiler)")
    parser.add_argument("--users", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from sqlalchemy.orm import sessionmaker

    from app.store.db import make_engine
    from app.store.migrate import upgrade_head

    bundle = build_bundle(args.kind)
    recommender = served(bundle)
    cases = histories(bundle, args.users)
    variants = [v for v in ("drift", "plain") if args.only in (None, v)]
    with tempfile.TemporaryDirectory() as work:
        url = f"sqlite:///{Path(work) / 'store.db'}"
        upgrade_head(url)
        engine = make_engine(url)
        try:
            with sessionmaker(engine)() as session:
                out: dict[str, Any] = {"kind": args.kind, "history_events": HISTORY}
                for variant in variants:
                    call = request_loop(recommender, session, cases, variant == "drift")
                    if args.seconds > 0:
                        stop, i = time.monotonic() + args.seconds, 0
                        while time.monotonic() < stop:
                            call(i)
                            i += 1
                        out[f"{variant}_requests"] = i
                    else:
                        out[f"{variant}_cpu_ms"] = round(median_cpu_ms(call, args.repeats), 3)
        finally:
            engine.dispose()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
