"""Exact top-k against faiss IVF and HNSW indexes on a synthetic catalogue (issue 17 point 3).

    OMP_NUM_THREADS=1 nice -n 10 python -m bench.topk [--rows 1000000 --dim 64]

The catalogue is clustered like a learned item table: rows around --centres random centres with
norms spread by a log-normal factor (popular items score higher whatever the query); queries
are noisier draws around the same centres. Cached as .npy files in --data (default /tmp).
Variants: the exact scan; IndexIVFFlat over the rows made an L2 problem
(app.ml.topk.mips_as_l2, what DRIFTREC_TOPK_INDEX=faiss builds) and with METRIC_INNER_PRODUCT
on the raw rows; IndexHNSWFlat with METRIC_INNER_PRODUCT. Per variant: build time (every core
of the machine), per-query latency of one query asking for `--candidates` rows on one thread
(what serving does per request), and recall@10 against the exact top 10 (of the first 10 rows
asked for 10, and of the `--candidates` rows serving asks for, re-scored exactly: the served
answer). Writes bench/results/topk.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.domain import ranking
from app.ml.topk import (
    ExactTopK,
    FaissTopK,
    TopKIndex,
    build_faiss_hnsw,
    build_faiss_ivf,
    candidates,
    ivf_lists,
    recall_at_k,
)
from bench.common import machine, write_result


def synthetic(rows: int, dim: int, queries: int, data: Path, centres: int = 1_000
              ) -> tuple[np.ndarray, np.ndarray]:
    """(float32[rows, dim] items, float32[queries, dim] queries), made once and cached."""
    tag = "" if centres == 1_000 else f"_c{centres}"
    items_path = data / f"topk_items_{rows}x{dim}{tag}.npy"
    queries_path = data / f"topk_queries_{queries}x{dim}{tag}.npy"
    if items_path.exists() and queries_path.exists():
        return np.load(items_path), np.load(queries_path)
    rng = np.random.default_rng(0)
    middles = rng.standard_normal((centres, dim)).astype(np.float32)
    items = np.empty((rows, dim), np.float32)
    for start in range(0, rows, 100_000):  # in chunks: the float64 noise is 8 bytes a value
        size = min(100_000, rows - start)
        block = middles[rng.integers(0, centres, size)] + 0.5 * rng.standard_normal((size, dim))
        items[start:start + size] = block * rng.lognormal(0.0, 0.25, (size, 1))
    picked = middles[rng.integers(0, centres, queries)]
    asked = (picked + 0.8 * rng.standard_normal((queries, dim))).astype(np.float32)
    data.mkdir(parents=True, exist_ok=True)
    np.save(items_path, items)
    np.save(queries_path, asked)
    return items, asked


def exact_top(index: ExactTopK, queries: np.ndarray, n: int) -> np.ndarray:
    """int64[B, n] true top rows, 64 queries at a time (a [64, N] score block)."""
    return np.concatenate([index.search(queries[i:i + 64], n)[0]
                           for i in range(0, len(queries), 64)])


def latency_ms(index: TopKIndex, queries: np.ndarray, n: int) -> dict[str, float]:
    """Median and p95 milliseconds of one single-query search for n rows."""
    times = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None], n)
        times.append((time.perf_counter() - started) * 1e3)
    times.sort()
    return {"median_ms": round(statistics.median(times), 3),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 3)}


def measure(name: str, index: TopKIndex, queries: np.ndarray, truth: np.ndarray,
            candidates: int, timed: int, **extra: Any) -> dict[str, Any]:
    row = {"variant": name, **extra,
           "recall_at_10": round(recall_at_k(index, queries, truth, 10), 4),
           f"recall_at_10_of_{candidates}": round(recall_at_k(index, queries, truth, 10,
                                                              candidates), 4),
           **latency_ms(index, queries[:timed], candidates)}
    print(row, flush=True)
    return row


def timed_build(build: Callable[[], TopKIndex]) -> tuple[TopKIndex, float]:
    started = time.perf_counter()
    index = build()
    return index, round(time.perf_counter() - started, 2)


def ivf_variants(items: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                 args: argparse.Namespace, as_l2: bool) -> list[dict[str, Any]]:
    nlist = ivf_lists(len(items))
    ivf, build_s = timed_build(lambda: build_faiss_ivf(items, nlist=nlist, as_l2=as_l2))
    assert isinstance(ivf, FaissTopK)
    rows = []
    for nprobe in map(int, args.nprobe.split(",")):
        ivf.index.nprobe = nprobe
        rows.append(measure("faiss-ivf-l2" if as_l2 else "faiss-ivf-ip", ivf, queries, truth,
                            args.candidates, args.timed, build_s=build_s, nlist=nlist,
                            nprobe=nprobe))
    return rows


def hnsw_variants(items: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                  args: argparse.Namespace) -> list[dict[str, Any]]:
    hnsw, build_s = timed_build(lambda: build_faiss_hnsw(items, m=args.hnsw_m))
    assert isinstance(hnsw, FaissTopK)
    rows = []
    for ef in map(int, args.ef_search.split(",")):
        hnsw.index.hnsw.efSearch = ef
        rows.append(measure("faiss-hnsw", hnsw, queries, truth, args.candidates, args.timed,
                            build_s=build_s, m=args.hnsw_m, ef_construction=40,
                            ef_search=ef))
    return rows


def ranking_paths(items: np.ndarray, queries: np.ndarray, args: argparse.Namespace
                  ) -> list[dict[str, Any]]:
    """Per-request ranking after the model's forward pass, as app.services.interests.
    rank_items runs it (k = 10, 20 excluded items; with and without a drift tilt toward a
    post-change mix of 20 topics, Dirichlet(0.3): a few topics dominate): the full scan
    (scores over every item, then ranking.rank) against the default faiss index's candidates
    (200 and 1,000) re-scored and ranked (ranking.rank_subset); how often the top 10 is the
    full scan's (recall@10), and how often it is the same list, items and order."""
    rng = np.random.default_rng(1)
    topics = rng.integers(0, 20, len(items))
    table = torch.from_numpy(items)
    index = build_faiss_ivf(items)
    timed = queries[: args.timed // 4]
    banned = [rng.integers(0, len(items), 20) for _ in timed]
    tilts = [rng.dirichlet(np.full(20, 0.3)) for _ in timed]

    def exact(query: np.ndarray, exclude: np.ndarray, after: np.ndarray | None
              ) -> ranking.Ranking:
        scores = (torch.from_numpy(query[None]) @ table.T)[0].numpy()
        return ranking.rank(scores, topics, 10, after, 1.0, exclude=exclude, pad_index=None)

    def indexed(n: int) -> Callable[..., ranking.Ranking]:
        def path(query: np.ndarray, exclude: np.ndarray, after: np.ndarray | None
                 ) -> ranking.Ranking:
            rows, scores = candidates(index, query, items, n + len(exclude))
            return ranking.rank_subset(rows, scores, topics, 10, after, 1.0, exclude=exclude)
        return path

    results = []
    for tilted in (False, True):
        truth = [exact(q, banned[b], tilts[b] if tilted else None).indices
                 for b, q in enumerate(timed)]
        for name, path in (("exact scan + rank", exact),
                           ("faiss 200 candidates + rank", indexed(200)),
                           ("faiss 1000 candidates + rank", indexed(1000))):
            times, same, hits = [], 0, 0
            for b, query in enumerate(timed):
                started = time.perf_counter()
                found = path(query, banned[b], tilts[b] if tilted else None)
                times.append((time.perf_counter() - started) * 1e3)
                same += int(np.array_equal(found.indices, truth[b]))
                hits += len(np.intersect1d(found.indices, truth[b]))
            row = {"variant": name, "drift_tilt": tilted,
                   "median_ms": round(statistics.median(times), 3),
                   "recall_at_10": round(hits / (10 * len(timed)), 4),
                   "same_top_10_as_exact": round(same / len(timed), 4)}
            print(row, flush=True)
            results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--timed", type=int, default=200, help="queries timed per variant")
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--data", type=Path, default=Path("/tmp"))
    parser.add_argument("--centres", type=int, default=1_000,
                        help="clusters of the catalogue (fewer: larger, harder for IVF)")
    parser.add_argument("--out", default="topk", help="bench/results/OUT.json")
    parser.add_argument("--variants", default="exact,ivf-l2,ivf-ip,hnsw,ranking")
    parser.add_argument("--nprobe", default="8,16,32,64")
    parser.add_argument("--ef-search", default="16,64,128")
    parser.add_argument("--hnsw-m", type=int, default=32)
    args = parser.parse_args()
    wanted = set(args.variants.split(","))
    torch.set_num_threads(1)  # one request thread's share, as DRIFTREC_TORCH_THREADS=1
    items, queries = synthetic(args.rows, args.dim, args.queries, args.data, args.centres)
    exact, exact_build = timed_build(lambda: ExactTopK.build(items))
    assert isinstance(exact, ExactTopK)
    truth = exact_top(exact, queries, 10)
    results = []
    if "exact" in wanted:
        results.append(measure("exact", exact, queries, truth, args.candidates,
                               args.timed // 4, build_s=exact_build))
    for name, as_l2 in (("ivf-l2", True), ("ivf-ip", False)):
        if name in wanted:
            results += ivf_variants(items, queries, truth, args, as_l2)
    if "hnsw" in wanted:
        results += hnsw_variants(items, queries, truth, args)
    if "ranking" in wanted:
        results += ranking_paths(items, queries, args)
    path = write_result(args.out, {"machine": machine(), "rows": args.rows, "dim": args.dim,
                                   "centres": args.centres, "queries": args.queries,
                                   "candidates": args.candidates, "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
