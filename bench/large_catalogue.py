"""A serving worker over a large catalogue (issue 17 point 3): memory, start-up, /recommend.

`python -m bench.large_catalogue [--items 1000000]` (`make bench-large-catalogue`) →
bench/results/large_catalogue.json. What it does, on PostgreSQL:

1. a fresh database with ml-100k imported (users and histories), and the champion of this
   checkout's registry (`make bootstrap`; it trained on ml-100k, so every ml-100k film is a
   trained item);
2. a synthetic catalogue of `--items` more items (titles, texts, genres), none seen in
   training: cold-start items, scored by their text;
3. their stored embeddings (item_embeddings): a MiniLM run over a million texts takes about
   an hour on this 2-core CPU, so the encoder's rate is measured on `--encode-sample` of them
   (the embed-catalogue job's code) and the rows are synthetic: each a real ml-100k film's
   text embedding plus noise, made unit length (so the catalogue clusters as real items do).
   The start-up a worker would need without them is that rate over the catalogue
   (extrapolated, and labelled so);
4. a worker (`python -m app serve`) for each setting: the ml-100k catalogue alone (the
   baseline), the large catalogue with the exact scan, and with `DRIFTREC_TOPK_INDEX=faiss`
   when faiss is installed: seconds to ready, resident memory, /recommend p50/p99 with
   `drift_aware=false` (the ranking alone) and with the default (the drift head's replay of
   the user's history too) at concurrency 1, and the default at concurrency 4 (each request a
   different user, so no remembered ranking or drift finding answers), and for the index,
   recall@10 of its answers against the exact scan's for the same users.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg

from app.core.config import Settings
from app.ml.catalogue import CatalogueItem, encoder_key
from app.services import item_embeddings
from app.store import embeddings as stored
from app.store import repository
from app.store.db import make_engine, make_session_factory
from app.store.migrate import upgrade_head
from bench.common import (
    PG_ADMIN_URL,
    RESULTS,
    fresh_database,
    machine,
    rss_mib,
    running_service_process,
    worker_pids,
    write_result,
)
from bench.loadgen import run_load
from bench.serve import percentile
from training.data import movielens
from training.data.importer import import_movielens

GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western"]
WORDS = ["lost", "midnight", "river", "city", "summer", "last", "silent", "golden", "broken",
         "wild", "secret", "northern", "second", "little", "dark", "bright", "long", "iron"]
NOISE = 0.035  # per-dimension noise of a synthetic row (cosine about 0.8 to its film's)
WRITE_CHUNK = 10_000


def synthetic_item(k: int, rng: np.random.Generator) -> dict[str, Any]:
    a, b = rng.choice(len(WORDS), 2, replace=False)
    genres = list(rng.choice(GENRES, int(rng.integers(0, 3)), replace=False))
    return {"item_id": f"syn{k}", "title": f"The {WORDS[a]} {WORDS[b]} {k}",
            "text": f"The {WORDS[a]} {WORDS[b]} {k}: a {' '.join(genres).lower() or 'new'} "
                    f"story", "categories": genres, "attributes": {}}


def prepare(url: str, n_items: int, encode_sample: int, seed: int) -> dict[str, Any]:
    """ml-100k and the synthetic catalogue with its stored rows; what it measured."""
    settings = Settings(database_url=url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    figures: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        import_movielens(movielens.load(settings.data_cache_dir), factory, settings,
                         progress=False)
        figures["ml100k_import_seconds"] = round(time.perf_counter() - started, 1)
        version, bundle = item_embeddings.load_for_embedding(Settings())
        figures["model_version"] = version
        key = encoder_key(bundle.encoder)
        rng = np.random.default_rng(seed)
        films = bundle.text_vectors()  # the trained films' text rows [n_films, D]
        started = time.perf_counter()
        written = 0
        for start in range(0, n_items, WRITE_CHUNK):
            rows = [synthetic_item(k, rng) for k in range(start, min(n_items, start + WRITE_CHUNK))]
            base = films[rng.integers(0, len(films), len(rows))]
            vectors = base + rng.normal(0.0, NOISE, base.shape).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            items = [CatalogueItem(r["item_id"], r["text"], tuple(r["categories"]))
                     for r in rows]
            with factory() as session:
                repository.upsert_items(session, rows)
                written += stored.write_vectors(session, key, [i.item_id for i in items],
                                                [i.digest for i in items], vectors)
                session.commit()
        figures["synthetic_items"] = written
        figures["write_seconds"] = round(time.perf_counter() - started, 1)
        # The encoder's rate on the synthetic texts (the embed-catalogue job's batches).
        sample = [CatalogueItem(r["item_id"], r["text"], tuple(r["categories"]))
                  for r in (synthetic_item(k, rng) for k in range(encode_sample))]
        started = time.perf_counter()
        for _ in item_embeddings.embed_batches(bundle, sample):
            pass
        rate = encode_sample / (time.perf_counter() - started)
        figures["encoder_items_per_second"] = round(rate, 1)
        figures["encoder_sample"] = encode_sample
        figures["startup_without_stored_rows_seconds_extrapolated"] = round(n_items / rate)
    finally:
        engine.dispose()
    return figures


@contextlib.contextmanager
def worker(env: dict[str, str], timeout: float = 1800.0
           ) -> Iterator[tuple[str, subprocess.Popen[bytes], float]]:
    """`python -m app serve` (one worker); yields (base URL, process, seconds to ready)."""
    started = time.perf_counter()
    with running_service_process(env, timeout=timeout) as (base, process):
        yield base, process, time.perf_counter() - started


def answers(base: str, users: list[str]) -> dict[str, list[str]]:
    """Each user's top 10, one request at a time."""
    out: dict[str, list[str]] = {}
    with httpx.Client(base_url=base, timeout=120) as client:
        for user in users:
            response = client.get(f"/recommend/{user}", params={"k": 10, "impression": "false"})
            response.raise_for_status()
            out[user] = [r["item_id"] for r in response.json()["items"]]
    return out


def latency(base: str, users: list[str], concurrency: int, drift_aware: bool = True
            ) -> dict[str, float]:
    query = "k=10&impression=false" + ("" if drift_aware else "&drift_aware=false")
    result = run_load(base, lambda n: f"/recommend/{users[n]}?{query}", concurrency,
                      len(users))
    if result.statuses.get(200, 0) != len(users):
        raise RuntimeError(f"failed requests: {result.statuses}")
    return {"p50_ms": round(statistics.median(result.latencies_ms), 2),
            "p99_ms": round(percentile(result.latencies_ms, 99), 2),
            "rps": round(len(users) / result.elapsed_s, 1), "requests": len(users)}


def measure(name: str, env: dict[str, str], users: list[str], answer_users: list[str]
            ) -> tuple[dict[str, Any], dict[str, list[str]]]:
    with worker(env) as (base, process, ready_seconds):
        pid = worker_pids(process.pid)[0]
        figures: dict[str, Any] = {"setting": name, "ready_seconds": round(ready_seconds, 1),
                                   "rss_mib_ready": rss_mib(pid)}
        got = answers(base, answer_users)  # also warms the worker up
        # Each phase its own users: none has a remembered ranking or drift finding, so every
        # request ranks, and the drift-aware ones also replay the user's drift state.
        third = len(users) // 3
        figures["c1_ranking_only"] = latency(base, users[:third], 1, drift_aware=False)
        figures["c1"] = latency(base, users[third:2 * third], 1)
        figures["c4"] = latency(base, users[2 * third:], 4)
        figures["rss_mib_after"] = rss_mib(pid)
    print(name, figures, flush=True)
    return figures, got


@contextlib.contextmanager
def large_database(name: str | None) -> Iterator[tuple[str, bool]]:
    """(URL, whether it still needs preparing): a fresh database dropped afterwards, or the
    named one, created and kept."""
    if name is None:
        with fresh_database("postgresql", Path("/tmp")) as url:
            yield url, True
        return
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                               (name,)).fetchone() is not None
        if not exists:
            admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{url}/{name}"
    if not exists:
        upgrade_head(url)
    yield url, not exists


def recall_at_10(found: dict[str, list[str]], exact: dict[str, list[str]]) -> float:
    hits = [len(set(found[u]) & set(exact[u])) / max(1, len(exact[u])) for u in exact]
    return round(float(np.mean(hits)), 4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.large_catalogue")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--encode-sample", type=int, default=2_000)
    parser.add_argument("--users", type=int, default=600, help="requests per setting")
    parser.add_argument("--answer-users", type=int, default=150,
                        help="users whose top 10 are compared between settings")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", default="large_catalogue")
    parser.add_argument("--no-index", action="store_true",
                        help="measure the exact scan only")
    parser.add_argument("--database", default=None,
                        help="a PostgreSQL database name to prepare once and keep (a later "
                        "run with the same name measures again without preparing)")
    args = parser.parse_args(argv)
    settings = Settings()
    env = {"DRIFTREC_API_KEYS": "", "DRIFTREC_MODEL_POLL_SECONDS": "0",
           "DRIFTREC_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1",
           "DRIFTREC_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
           "DRIFTREC_MLFLOW_ARTIFACT_ROOT": settings.mlflow_artifact_root}
    rng = np.random.default_rng(args.seed)
    result: dict[str, Any] = {
        "benchmark": "one serving worker over a large synthetic catalogue (issue 17)",
        "command": "python -m bench.large_catalogue " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "items": args.items,
        "settings": []}
    users = [str(u) for u in rng.permutation(np.arange(1, 944))]
    # distinct users for the latencies and for the compared answers: no remembered ranking
    sample, answer_users = users[: args.users], users[-args.answer_users:]
    if len(set(sample) | set(answer_users)) < len(sample) + len(answer_users):
        raise SystemExit("--users plus --answer-users must not exceed ml-100k's 943 users")
    with large_database(args.database) as (url, fresh):
        with fresh_database("postgresql", Path("/tmp")) as base_url:
            import_movielens(movielens.load(settings.data_cache_dir),
                             make_session_factory(make_engine(base_url)),
                             Settings(database_url=base_url), progress=False)
            baseline, _ = measure("ml-100k catalogue only (1,682 items), exact",
                                  {**env, "DRIFTREC_DATABASE_URL": base_url}, sample,
                                  answer_users)
            result["settings"].append(baseline)
        if fresh:
            result["prepare"] = prepare(url, args.items, args.encode_sample, args.seed)
        else:  # a kept database, prepared by an earlier run: its figures
            earlier = json.loads((RESULTS / f"{args.output}.json").read_text())
            result["prepare"] = {**earlier["prepare"], "reused_database": args.database}
        large = {**env, "DRIFTREC_DATABASE_URL": url}
        exact, exact_answers = measure(f"{args.items:,} more items, exact scan", large, sample,
                                       answer_users)
        result["settings"].append(exact)
        if args.no_index:
            result["faiss"] = "not measured in this run (--no-index)"
        elif importlib.util.find_spec("faiss") is not None:
            indexed, found = measure(f"{args.items:,} more items, faiss index",
                                     {**large, "DRIFTREC_TOPK_INDEX": "faiss"}, sample,
                                     answer_users)
            indexed["recall_at_10_vs_exact"] = recall_at_10(found, exact_answers)
            result["settings"].append(indexed)
        else:
            result["faiss"] = "not installed (the `ann` extra): index not measured"
    for entry in result["settings"][1:]:
        for c in ("c1_ranking_only", "c1", "c4"):
            entry[c]["p99_vs_baseline"] = round(entry[c]["p99_ms"]
                                                / result["settings"][0][c]["p99_ms"], 1)
    print(write_result(args.output, result))


if __name__ == "__main__":
    main()
