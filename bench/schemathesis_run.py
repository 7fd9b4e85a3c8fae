"""Schemathesis over the whole API, at depth (issue 12): not part of CI (`make test` runs the
short, derandomized version in tests/test_fuzzing.py).

Trains the tiny model into a scratch MLflow registry, serves it from a fresh PostgreSQL
database holding a little data (in-process, through ASGI), and runs every operation of the
app's own OpenAPI schema with `--examples` generated valid (positive) and invalid (negative)
requests each, with a fixed `--seed`; operations with path parameters get `--examples // 2`
more with known ids (random ids mostly reach the 404 branch). Checks: no 5xx, documented
status codes, content types, headers and body schemas, and (negative) invalid data refused.
Valid requests refused for reasons the schema cannot state (an unknown item id, a time in the
future, an unknown user) are counted by reason, not failed.

    python -m bench.schemathesis_run [--examples 300] [--seed 20261201]

Writes bench/results/schemathesis.json.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.config import Settings
from app.main import create_app
from bench.common import fresh_database, machine, write_result
from tests.test_fuzzing import seed_fuzz_data

ITEMS = [str(i) for i in range(1, 21)]  # MovieLens ids: in the tiny model's catalogue
USERS = ["st1", "st2"]
KNOWN_PATH_PARAMETERS = {"user_id": USERS[0], "item_id": ITEMS[0]}
CHECKS: list[Callable[..., Any]] = [not_a_server_error, status_code_conformance,
                                    content_type_conformance, response_headers_conformance,
                                    response_schema_conformance]


def tiny_registry(root: Path) -> tuple[str, str]:
    """Train configs/tiny.yaml from a store holding the tiny users (as the tests' fixture
    does) and register + promote it: (registry URI, artifact root)."""
    from tests.conftest import train_tiny

    _, target, _ = train_tiny(root)
    return target.tracking_uri, target.artifact_root


def fuzz(operation: Any, mode: GenerationMode, examples: int, seed: int,
         path_parameters: dict[str, str] | None) -> dict[str, Any]:
    """Run `examples` generated cases of one operation: statuses, failures, refusals."""
    statuses: Counter[int] = Counter()
    refused_valid: Counter[str] = Counter()
    failures: list[str] = []
    checks = [*CHECKS, negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @hypothesis.seed(seed)
    @hypothesis.settings(max_examples=examples, database=None, deadline=None,
                         phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck))
    @hypothesis.given(strategy)
    def run(case: Any) -> None:
        response = case.call()
        statuses[response.status_code] += 1
        if mode is GenerationMode.POSITIVE and response.status_code in (404, 422):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                body = response.json()
                reasons = ",".join(sorted({d.get("type", "?") for d in body.get("detail") or []}))
                refused_valid[f"{response.status_code} {reasons or body['error']}"] += 1
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as group:
            failures.append(str(group)[:2000])

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # nothing to make invalid
        run()
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    return {"examples": sum(statuses.values()), "statuses": dict(sorted(statuses.items())),
            "server_errors": server_errors, "failures": len(failures),
            "failure_samples": failures[:3], "valid_but_refused": dict(refused_valid)}


@contextlib.contextmanager
def served_schema(workdir: Path) -> Iterator[Any]:
    registry, artifacts = tiny_registry(workdir)
    with fresh_database("postgresql", workdir) as url:
        settings = Settings(database_url=url, mlflow_tracking_uri=registry,
                            mlflow_artifact_root=artifacts, model_poll_seconds=0,
                            data_cache_dir=workdir / "cache", log_level="WARNING")
        with TestClient(create_app(settings)) as seeder:
            seed_fuzz_data(seeder, USERS)
        schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
        # Auth is off (tests/test_auth.py covers keys): no generated Authorization headers,
        # whose invalid forms an open server rightly accepts.
        schema.config.generation.update(with_security_parameters=False)
        try:
            yield schema
        finally:
            asgi.shutdown_lifespans()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--output", default="schemathesis")
    args = parser.parse_args()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="driftrec-schemathesis-"))
    results: dict[str, Any] = {}
    try:
        with served_schema(workdir) as schema:
            operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
            for operation in operations:
                entry: dict[str, Any] = {}
                names = {p.name for p in operation.path_parameters}
                known = {n: v for n, v in KNOWN_PATH_PARAMETERS.items() if n in names}
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    entry[mode.value] = fuzz(operation, mode, args.examples, args.seed, None)
                    if known:
                        entry[f"{mode.value}_known_ids"] = fuzz(
                            operation, mode, args.examples // 2, args.seed, known)
                results[operation.label] = entry
                print(operation.label, {k: (v["examples"], v["server_errors"], v["failures"])
                                        for k, v in entry.items()}, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    runs = [run for entry in results.values() for run in entry.values()]
    summary = {
        "operations": len(results),
        "requests": sum(r["examples"] for r in runs),
        "server_errors": sum(r["server_errors"] for r in runs),
        "failures": sum(r["failures"] for r in runs),
        "seconds": round(time.monotonic() - started, 1),
    }
    path = write_result(args.output, {
        "examples_per_operation_and_mode": args.examples, "seed": args.seed,
        "note": "an operation with few possible inputs (no parameters: GET /metrics; one "
                "boolean: POST /models/reload) runs as many distinct examples as exist",
        "summary": summary, "operations": results, "machine": machine()})
    print(summary, "->", path)
    if summary["server_errors"] or summary["failures"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
