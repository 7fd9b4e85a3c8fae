"""Top-k retrieval over the served item vectors: an exact scan, or an approximate faiss index.

The scorer's next-item logits are inner products ``query @ vectors.T`` with the item vectors
(``bundle.item_vectors()``, float32[N, H]) and the query vector (``bundle.
query_vectors_batch``, float32[B, H]). An index answers "which n rows have the largest inner
product with this query" without scanning every row; serving asks it for candidates and
re-scores those exactly (``candidates``), so an index only has to find the right rows.

faiss is optional (the ``ann`` extra): it is imported when a faiss index is built, never at
import of this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

# faiss warns below this many training points per IVF list, and k-means centroids fitted on
# fewer are noise.
MIN_POINTS_PER_LIST = 39
# k-means on a sample of this many points per list: faiss's default (256) trains on every row
# of a 1M catalogue (4,000 lists), four times the k-means work for lists that only need to be
# good enough to probe; recall@10 at 1M is 0.999 with it (bench/topk.py).
TRAIN_POINTS_PER_LIST = 64
# Lists scanned per query. 32 gave recall@10 0.999 on the synthetic 1M x 64 benchmark at ~0.15
# ms a query (bench/topk.py), but 0.96 on a served million-item catalogue whose rows cluster
# around 1,682 films (bench/topk_recall_served.py); 512 gave 0.999 there, the ranking step
# still 7 ms against the exact scan's 49.
DEFAULT_NPROBE = 512


class TopKUnavailable(ImportError):
    """The chosen index needs a package that is not installed."""


class TopKIndex(Protocol):
    """Rows with the largest inner product with each query, best first."""

    @property
    def rows(self) -> int:
        """How many rows (0..rows-1 of the vectors) the index was built over."""
        ...

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """queries float32[B, H] -> (int64[B, n] row indices, float32[B, n] scores), best
        first; -1 (score -inf) where fewer than n rows were found."""
        ...


@dataclass(frozen=True, eq=False)
class ExactTopK:
    """A full scan: every row scored (one matmul), the n best kept (argpartition)."""

    vectors: torch.Tensor  # float32[N, H], shares memory with the array it was built from

    @classmethod
    def build(cls, vectors: np.ndarray) -> ExactTopK:
        return cls(torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)))

    @property
    def rows(self) -> int:
        return int(self.vectors.shape[0])

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores = (torch.from_numpy(_as_queries(queries)) @ self.vectors.T).numpy()
        return best_rows(scores, n)


def best_rows(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n best columns of each row of float32[B, N]: (int64[B, n'], float32[B, n']) best
    first, n' = min(n, N); ties in score go to the lower column."""
    n = min(n, scores.shape[1])
    if n <= 0:
        return np.empty((len(scores), 0), np.int64), np.empty((len(scores), 0), np.float32)
    if n < scores.shape[1]:
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    part.sort(axis=1)  # a stable sort by score below then breaks ties by column
    chosen = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-chosen, axis=1, kind="stable")
    return (np.take_along_axis(part, order, axis=1).astype(np.int64),
            np.take_along_axis(chosen, order, axis=1).astype(np.float32))


@dataclass(frozen=True, eq=False)
class FaissTopK:
    """A faiss index over the rows, searched with `threads` OpenMP threads per call.

    With `max_norm` set the index holds the rows as an L2 problem (``mips_as_l2``): a query
    gets a 0 appended and its inner products are read back from the L2 distances."""

    index: Any  # a faiss.Index holding `rows` vectors
    threads: int = 1
    max_norm: float | None = None

    @property
    def rows(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        # OpenMP's thread count is per calling thread (libgomp keeps it per thread once set),
        # so it is set by each request thread that searches, not once at start-up; serving has
        # many request threads on few cores and must not start a team of threads for each.
        faiss = import_faiss()
        faiss.omp_set_num_threads(self.threads)
        queries = _as_queries(queries)
        if self.max_norm is None:
            scores, rows = self.index.search(queries, min(n, self.rows))
        else:
            padded = np.hstack([queries, np.zeros((len(queries), 1), np.float32)])
            distances, rows = self.index.search(padded, min(n, self.rows))
            # |q - x'|^2 = |q|^2 + max_norm^2 - 2 q.x
            norms = np.square(queries).sum(axis=1, keepdims=True)
            scores = (norms + self.max_norm**2 - distances) / 2
        return rows.astype(np.int64), np.where(rows >= 0, scores, -np.inf).astype(np.float32)


def mips_as_l2(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    """Rows x as x' = [x, sqrt(M^2 - |x|^2)] (M: the largest norm), and M. Every x' has norm
    M, so the nearest x' to a query [q, 0] in L2 is the row with the largest q.x: inner-product
    search as an L2 one. k-means and list probing then measure distances on one sphere;
    with raw inner products a row joins the list whose centroid it scores highest with, which
    favours long centroids over near ones. On clustered data recall@10 at nprobe 32 rose from
    0.92 to 0.9995 (tests/test_topk.py's 20k x 32 set)."""
    squared = np.square(vectors, dtype=np.float64).sum(axis=1)
    top = float(squared.max(initial=0.0))
    extra = np.sqrt(np.maximum(top - squared, 0.0)).astype(np.float32)[:, None]
    return np.ascontiguousarray(np.hstack([vectors, extra]), dtype=np.float32), math.sqrt(top)


def import_faiss() -> Any:
    """The faiss module; TopKUnavailable when it is not installed."""
    try:
        import faiss
    except ImportError as error:
        raise TopKUnavailable("faiss is not installed: pip install 'driftrec[ann]' "
                              "(faiss-cpu)") from error
    return faiss


def ivf_lists(rows: int) -> int:
    """IVF lists for `rows` vectors: about 4 * sqrt(rows), at most one per 39 rows."""
    return max(1, min(round(4 * math.sqrt(rows)), rows // MIN_POINTS_PER_LIST))


def build_faiss_ivf(vectors: np.ndarray, nprobe: int = DEFAULT_NPROBE, nlist: int | None = None,
                    threads: int = 1, build_threads: int | None = None,
                    as_l2: bool = True) -> FaissTopK:
    """IndexIVFFlat: rows grouped by k-means into `nlist` lists, a query scans the `nprobe`
    lists whose centroids are nearest; rows are stored whole, so what it finds is scored
    exactly. `as_l2`: over ``mips_as_l2`` rows (else METRIC_INNER_PRODUCT on the raw rows).
    `build_threads` (None: every core) train and add."""
    faiss = import_faiss()
    data, max_norm = (mips_as_l2(vectors) if as_l2
                      else (np.ascontiguousarray(vectors, dtype=np.float32), None))
    lists = nlist or ivf_lists(len(data))
    dim = data.shape[1]
    if as_l2:
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists, faiss.METRIC_L2)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists,
                                   faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
    index.cp.seed = 1234  # the same rows give the same lists
    _with_threads(faiss, build_threads, lambda: (index.train(data), index.add(data)))
    index.nprobe = min(nprobe, lists)  # faiss's wrapper keeps the quantizer alive with it
    return FaissTopK(index, threads, max_norm)


def build_faiss_hnsw(vectors: np.ndarray, m: int = 32, ef_search: int = 64,
                     ef_construction: int = 40, threads: int = 1,
                     build_threads: int | None = None) -> FaissTopK:
    """IndexHNSWFlat (inner product): a navigable graph of `m` links per row; a query walks
    it keeping `ef_search` candidates. Compared with IVF in bench/topk.py."""
    faiss = import_faiss()
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexHNSWFlat(data.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    _with_threads(faiss, build_threads, lambda: index.add(data))
    index.hnsw.efSearch = ef_search
    return FaissTopK(index, threads)


def _with_threads(faiss: Any, threads: int | None, work: Callable[[], Any]) -> None:
    """Run `work` with `threads` OpenMP threads in this thread (None: every core), then go
    back to one, what this thread's later searches would otherwise inherit."""
    faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
    try:
        work()
    finally:
        faiss.omp_set_num_threads(1)


BUILDERS: dict[str, Callable[..., TopKIndex]] = {
    "exact": ExactTopK.build,
    # the one chosen by measurement (bench/topk.py, 1M x 64): IVF over the rows as an L2
    # problem; HNSW with inner products reached recall@10 0.82 at efSearch 128
    "faiss": build_faiss_ivf,
    "faiss-ivf": build_faiss_ivf,
    "faiss-hnsw": build_faiss_hnsw,
}


def build_topk_index(kind: str, vectors: np.ndarray, **params: Any) -> TopKIndex:
    """An index of the named kind (``BUILDERS``) over float32[N, H] `vectors`."""
    try:
        builder = BUILDERS[kind]
    except KeyError:
        raise ValueError(f"unknown top-k index {kind!r}; known: {sorted(BUILDERS)}") from None
    return builder(vectors, **params)


def candidates(index: TopKIndex, query: np.ndarray, vectors: np.ndarray, n: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Rows likely among the n best for one query, with their exact scores: (int64[c] rows
    ascending, float32[c] ``vectors[rows] @ query``), c <= 2n.

    `vectors` is the current item table (float32[N, H]): rows the index was built over
    (< index.rows) come from the index, its n best; rows appended since (cold-start items at
    the end) are scanned exactly, their n best added. Every candidate is re-scored against
    `vectors`, so a row re-embedded since the build scores as it does now."""
    query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
    total = len(vectors)
    if not query.any():
        # every row scores 0 (a history with no known event): the exact path's ties go to
        # the lowest rows, so these are the candidates
        rows = np.arange(min(n, total), dtype=np.int64)
        return rows, np.zeros(len(rows), np.float32)
    built = min(index.rows, total)
    found, _ = index.search(query[None], min(n, built))
    rows = found[0][found[0] >= 0]
    if total > built:
        delta, _ = best_rows(inner_products(vectors[built:], query)[None], n)
        rows = np.concatenate([rows, delta[0] + built])
    rows = np.unique(rows)  # sorted: a lower row keeps its tie-breaking rank in the subset
    return rows, inner_products(vectors[rows], query)


def inner_products(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """float32[n] = vectors @ query, through torch's matmul: the same bits as the scorer's
    full scan gives those rows (numpy's differ in the last bit, which can reorder ties)."""
    return (torch.from_numpy(np.ascontiguousarray(vectors)) @ torch.from_numpy(query)).numpy()


def recall_at_k(index: TopKIndex, queries: np.ndarray, exact: np.ndarray, k: int,
                n: int | None = None) -> float:
    """Mean share of each query's true top k (`exact`: int64[B, >= k], best first) among the
    first k rows the index returns when asked for n (default k) rows: recall@k. Queries
    are searched 64 at a time (an exact index holds float32[64, N] scores at once)."""
    found = np.concatenate([index.search(queries[i:i + 64], n or k)[0]
                            for i in range(0, len(queries), 64)])
    hits = [len(np.intersect1d(found[b, :k], exact[b, :k])) for b in range(len(queries))]
    return float(np.mean(hits) / k)


def _as_queries(queries: np.ndarray) -> np.ndarray:
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    return queries[None] if queries.ndim == 1 else queries
