"""CPU time per request of the model-backed routes, in one process, through the app's own
request path (TestClient: routing, dependencies, the served version, SQLite).

Measures process CPU seconds (not wall time), so a figure holds on a shared machine better
than a throughput does; run it with the checkout to compare as the working directory
(`cd <checkout> && python -m bench.request_cpu`, or `--root`), alternating checkouts, to
compare two versions of the code on the same store and registry.

    python -m bench.request_cpu --database var/driftrec.db --registry var/mlflow --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", type=Path, default=Path("var/driftrec.db"))
    parser.add_argument("--registry", type=Path, default=Path("var/mlflow"))
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, os.getcwd())
    from fastapi.testclient import TestClient

    from app.core.config import Settings
    from app.main import create_app

    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as work:
        db = Path(work) / "store.db"
        shutil.copy(args.database, db)
        for cache in (0, 20_000):
            settings = Settings(
                database_url=f"sqlite:///{db}", model_poll_seconds=0, log_level="WARNING",
                mlflow_tracking_uri=f"sqlite:///{args.registry.resolve() / 'mlflow.db'}",
                mlflow_artifact_root=str(args.registry.resolve() / "artifacts"),
                ranking_cache_size=cache, drift_cache_size=cache, impression_queue_size=0)
            with TestClient(create_app(settings)) as client:
                users = [str(u) for u in range(1, args.users + 1)]
                routes = {"recommend": "/recommend/{}", "drift": "/drift/{}",
                          "profile": "/interest-profile/{}"}
                for user in users:  # warm: states, caches, lazy tables
                    for path in routes.values():
                        client.get(path.format(user))
                for _ in range(args.rounds):
                    for name, path in routes.items():
                        if cache and name != "recommend":
                            continue
                        begun = time.process_time()
                        for user in users:
                            response = client.get(path.format(user))
                            assert response.status_code == 200, response.text
                        key = f"{name}_{'cached' if cache else 'uncached'}_cpu_ms"
                        spent = (time.process_time() - begun) * 1000 / len(users)
                        out.setdefault(key, []).append(spent)
    import app

    print(json.dumps({"code": str(Path(app.__file__).parent.parent),
                      **{k: round(statistics.median(v), 3) for k, v in out.items()}}))


if __name__ == "__main__":
    main()
