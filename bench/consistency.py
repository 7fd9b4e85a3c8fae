"""Offline/online consistency on the full champion: HR@10 through `POST /recommend` equals the
registered test HR@10 (same protocol: history without the last item, seen items not masked,
the model's ranking alone, the request made at the test event's time).

Run: `make bench-consistency` (or `.venv/bin/python -m bench.consistency`) after `make model`.
Starts the service on 127.0.0.1 against a fresh SQLite store (the catalogue is all it needs),
sends one request per ml-100k user, and writes bench/results/consistency.json.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx

from app.core.config import VAR_DIR, Settings, get_settings
from app.services.models import champion_version
from app.store.db import make_engine, make_session_factory
from app.store.migrate import upgrade_head
from bench.common import machine, running_service, write_result
from training.data import movielens
from training.data.importer import import_movielens
from training.data.sequences import build_vocab
from training.recommender import prepare_split


def main() -> None:
    settings = get_settings()
    version = champion_version(settings)
    registered = float(version.tags["test_hr_at_10"])
    dataset = movielens.load(VAR_DIR / "cache")
    snapshot = dataset.snapshot()  # what a store holding ml-100k gives training
    item_ids = build_vocab(snapshot).item_ids
    _, split = prepare_split(snapshot, None)
    with tempfile.TemporaryDirectory() as workdir:
        url = f"sqlite:///{Path(workdir) / 'catalogue.db'}"
        upgrade_head(url)
        engine = make_engine(url)
        catalogue_only = movielens.MovieLens(dataset.movies, [], dataset.fingerprint)
        import_movielens(catalogue_only, make_session_factory(engine), Settings(database_url=url),
                         progress=False)
        engine.dispose()
        env = {"DRIFTREC_DATABASE_URL": url, "DRIFTREC_API_KEYS": "",
               "DRIFTREC_MODEL_POLL_SECONDS": "0"}
        hits, started = 0, time.perf_counter()
        with running_service(env) as base, httpx.Client(base_url=base, timeout=60) as client:
            for sequence, target, at in zip(split.test_inputs(), split.test_items,
                                            split.test_times, strict=True):
                # at: the test event's time, the request time offline evaluation scores with
                body = {"recent_item_ids": [item_ids[i - 1] for i in sequence.items],
                        "timestamps": [float(t) for t in sequence.times], "k": 10,
                        "exclude_seen": False, "drift_aware": False, "at": float(at)}
                response = client.post("/recommend", json=body)
                response.raise_for_status()
                hits += item_ids[target - 1] in {i["item_id"] for i in response.json()["items"]}
    served = hits / len(split.test_items)
    payload = {"benchmark": "offline/online consistency of the served champion",
               "command": "make bench-consistency", "model_version": str(version.version),
               "users": len(split.test_items), "served_hr@10": round(served, 6),
               "registered_test_hr@10": registered,
               "equal": abs(served - registered) < 1e-6,
               "seconds": round(time.perf_counter() - started, 1), "machine": machine()}
    print(payload)
    write_result("consistency", payload)
    if not payload["equal"]:
        raise SystemExit("served HR@10 differs from the registered test HR@10")


if __name__ == "__main__":
    main()
