"""`python -m app serve`: start uvicorn the safe way (loopback only when auth is off)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import uvicorn

from app.core import cpus, server
from app.core.config import Settings, get_settings
from app.core.logging import configure_logging, uvicorn_log_config
from app.core.metrics import empty_multiprocess_dir
from app.core.security import parse_api_keys
from app.store.migrate import upgrade_head

LOOPBACK = "127.0.0.1"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    sub.add_parser("migrate", help="apply the database migrations (alembic upgrade head)")
    scan = sub.add_parser("drift-scan", help="check every user for drift with the champion "
                          "(a backfill: stamped with each user's last event time)")
    scan.add_argument("--no-progress", action="store_true")
    scan.add_argument("--unchecked-only", action="store_true",
                      help="only users without any drift check yet (what bootstrap runs)")
    scan.add_argument("--ray", action="store_true",
                      help="run on Ray (the `ray` extra): shards of users, an actor pool")
    scan.add_argument("--address", default=None,
                      help="with --ray: the cluster to join (default: start a local one)")
    scan.add_argument("--num-cpus", type=int, default=2,
                      help="with --ray and no --address: CPUs of the local cluster")
    scan.add_argument("--batch-size", type=int, default=64,
                      help="with --ray: users per actor call (and per transaction)")
    embed = sub.add_parser("embed-catalogue", help="embed every stored item the champion "
                           "has not trained on and store the rows (workers then read them "
                           "at start-up instead of running the encoder)")
    embed.add_argument("--version", default=None,
                       help="the registered version whose encoder to run (default: the "
                       "champion's)")
    embed.add_argument("--batch-size", type=int, default=256,
                       help="items per encoder call and per transaction")
    embed.add_argument("--no-progress", action="store_true")
    embed.add_argument("--prune", action="store_true",
                       help="afterwards delete the rows of every other encoder (versions no "
                       "longer served; keep them while a challenger is served)")
    embed.add_argument("--ray", action="store_true",
                       help="run on Ray (the `ray` extra): Ray Data map_batches, an actor pool")
    embed.add_argument("--address", default=None,
                       help="with --ray: the cluster to join (default: start a local one)")
    embed.add_argument("--num-cpus", type=int, default=2,
                       help="with --ray and no --address: CPUs of the local cluster")
    args = parser.parse_args()
    settings = get_settings()
    configure_logging(settings)
    if args.command == "migrate":
        upgrade_head(settings.database_url)
        return
    if args.command == "drift-scan":
        drift_scan(settings, progress=not args.no_progress, unchecked_only=args.unchecked_only,
                   ray_options={"address": args.address, "num_cpus": args.num_cpus,
                                "batch_size": args.batch_size} if args.ray else None)
        return
    if args.command == "embed-catalogue":
        embed_catalogue(settings, args)
        return
    host = args.host or settings.host
    if not parse_api_keys(settings.api_keys) and host != LOOPBACK:
        logging.getLogger("driftrec").warning(
            "no API keys configured: binding to %s instead of %s", LOOPBACK, host)
        host = LOOPBACK
    empty_multiprocess_dir()  # PROMETHEUS_MULTIPROC_DIR: no counts left from the last run
    # each worker gives torch its share of the usable cores (app.main)
    os.environ[cpus.WORKERS_ENV] = str(args.workers)
    if args.workers > 1 and settings.sqlite_change_check == "auto":
        # several processes write one SQLite file: each must notice the others' commits
        os.environ["DRIFTREC_SQLITE_CHANGE_CHECK"] = "data_version"
    # uvicorn's own lines go through our formatter; its access log is replaced by ours.
    uvicorn.run("app.main:create_app", factory=True, host=host,
                port=args.port or settings.port, workers=args.workers,
                log_config=uvicorn_log_config(settings), access_log=False,
                **connection_limits(settings))


def connection_limits(settings: Settings) -> dict[str, Any]:
    """uvicorn's connection timeouts, and our request-read deadline (app.core.server): a
    connection that does not deliver a whole request in time is closed. Each worker reads
    the deadline from the environment, so it is set here before they start."""
    os.environ[server.TIMEOUT_ENV] = str(settings.request_read_timeout_seconds)
    try:
        import httptools  # noqa: F401  (uvicorn's faster parser, when installed)
        protocol = server.PROTOCOLS["httptools"]
    except ImportError:
        protocol = server.PROTOCOLS["h11"]
    return {"http": protocol, "timeout_keep_alive": settings.keep_alive_timeout_seconds,
            "timeout_graceful_shutdown": settings.graceful_shutdown_seconds}


def drift_scan(settings: Settings, progress: bool, unchecked_only: bool = False,
               ray_options: dict[str, Any] | None = None) -> None:
    """The batch scan; on Ray (app.services.drift_scan_ray) when `ray_options` are given."""
    from tqdm import tqdm

    from app.services.drift_scan import all_user_ids, scan_users
    from app.services.model_manager import ModelManager
    from app.store.db import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    users = all_user_ids(factory, unchecked_only)
    if not users:  # e.g. a repeated bootstrap: nothing to do, no model to load
        print("drift scan: no user to check")
        engine.dispose()
        return
    manager = ModelManager(settings, factory, with_challenger=False)
    outcome = manager.reload()
    if manager.loaded is None:
        raise SystemExit(f"no model to scan with: {outcome.error}")
    with tqdm(total=len(users), unit="user", desc="drift scan", disable=not progress) as bar:
        if ray_options is None:
            report = scan_users(factory, manager.current, users, on_user=lambda: bar.update(1),
                                backfill=True)
        else:
            from app.services import drift_scan_ray

            drift_scan_ray.init_ray(ray_options["address"], ray_options["num_cpus"])
            report = drift_scan_ray.scan_with_ray(
                settings, manager.current.version, unchecked_only=unchecked_only,
                batch_size=ray_options["batch_size"], on_users=bar.update)
    engine.dispose()
    print(f"drift scan with {settings.model_name} v{manager.current.version}: "
          f"{report.drifts} of {report.users} users drifted"
          + (f" ({report.skipped} without events skipped)" if report.skipped else ""))


def embed_catalogue(settings: Settings, args: argparse.Namespace) -> None:
    """The embedding job (app.services.item_embeddings); on Ray with `--ray`."""
    from tqdm import tqdm

    from app.services import item_embeddings
    from app.store.db import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    version, bundle = item_embeddings.load_for_embedding(settings, args.version)
    with tqdm(unit="item", desc="embed catalogue", disable=args.no_progress) as bar:
        if args.ray:
            from app.services import drift_scan_ray, embed_catalogue_ray

            drift_scan_ray.init_ray(args.address, args.num_cpus)
            report = embed_catalogue_ray.embed_with_ray(
                settings, factory, version, bundle, batch_size=args.batch_size,
                on_items=bar.update, on_total=lambda n: setattr(bar, "total", n))
        else:
            report = item_embeddings.embed_catalogue(factory, bundle, args.batch_size,
                                                     on_items=bar.update)
    print(f"{report.summary()} with {settings.model_name} v{version}")
    if args.prune:
        from app.ml.catalogue import encoder_key
        from app.store.embeddings import delete_other_encoders

        with factory() as session:
            pruned = delete_other_encoders(session, keep=[encoder_key(bundle.encoder)])
            session.commit()
        print(f"embed-catalogue: {pruned} rows of other encoders deleted")
    engine.dispose()


if __name__ == "__main__":
    main()
