"""Command line: ``python -m training train|retrain|ensure-champion|promote``.

Every command trains on a snapshot of the service's store (``DRIFTREC_DATABASE_URL``: the
items and events posted to the API or imported with ``python -m training.data``); a config
file holds hyper-parameters only.

- ``train --config C``: train, evaluate and log a run; ``--register`` adds a model version,
  ``--promote`` moves the champion alias to it when it is not worse than the champion on the
  same holdout (``--force``: always). ``--until TIMESTAMP`` trains on the events up to then.
- ``retrain [--config C]`` (``make retrain``): snapshot, train, register, and promote through
  the fair gate (``training.gate``); prints and logs both versions' figures and the reason.
  ``--if-changed`` does nothing when the champion was trained on this very snapshot.
- ``ensure-champion --config C`` (used by ``make serve``): exit quickly when a champion
  exists, otherwise train, register and promote one, with progress bars.
- ``promote VERSION [--force]``: move the champion alias to a registered version, e.g. one the
  gate refused (``--force``); without it, the rules of the tagged figures apply.

Every run also fits simple baselines (``training.baselines``: popularity, buy-again, item
co-occurrence) on the same split, and the gate never promotes a version whose validation
NDCG@10 is below the best of them, even when there is no champion yet (``--force`` does).
Exit status: 0 when the run finished and a champion serves afterwards (the new version, or
the old one the gate kept); 1 when the new version was refused and there is no champion at
all (so ``make serve`` stops before starting a service with no model), with the reason and
what to do on stderr; 2 for a bad config or an unreadable or empty store.

Budgets (train, retrain, ensure-champion): ``--memory-gb GB`` (``run.memory_gb``, default
8) is what the training plan (``training.plan``) fits its settings in; it is printed before
training starts. ``--time-budget MINUTES`` (``run.time_budget_minutes``; ``none``: no budget)
stops the encoder and the sequence models at their shares of it with their best validated
weights (``training.budget``), and tags the version ``stopped_at_time_budget``.

A run checkpoints the encoder and each sequence model (every epoch) under
``var/checkpoints/<run>/<data>/``; run the same command again after an interruption and it
resumes from there (``--fresh``: start over). The checkpoints go once the run has finished.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from training.config import ConfigError, TrainingConfig, check_budgets, load_config

DEFAULT_CONFIG = "configs/default.yaml"
# Measured on the 2-core development machine, CPU only: the full run took 359 s when the
# machine was otherwise idle (42 minutes while four other trainings shared it).
EXPECTED_MINUTES = {"ml100k": "about 6 to 10", "default": "about 6 to 10 (ml-100k sized)",
                    "tiny": "under 1", "ml1m": "about 60"}


def parse_until(text: str) -> datetime:
    """ISO-8601 (a naive time is UTC) or epoch seconds."""
    try:
        return datetime.fromtimestamp(float(text), tz=UTC)
    except ValueError:
        pass
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time or epoch seconds: {text}"
                                         ) from error
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _positive(text: str, unit: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a number of {unit}: {text}") from error
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{what} must be positive: {text}")
    return value


def parse_minutes(text: str) -> float | None:
    """A time budget in minutes, or ``none`` for no budget."""
    if text.strip().lower() in ("none", "null", "off"):
        return None
    return _positive(text, "minutes", "a time budget")


def parse_gigabytes(text: str) -> float:
    return _positive(text, "GB", "a memory budget")


def with_budgets(config: TrainingConfig, args: argparse.Namespace) -> TrainingConfig:
    """The config with the command line's --memory-gb and --time-budget, when given, over the
    file's ``run.memory_gb`` and ``run.time_budget_minutes``."""
    memory = getattr(args, "memory_gb", None)
    if memory is not None:
        config.run.memory_gb = memory
    if hasattr(args, "time_budget"):  # given (argparse.SUPPRESS leaves it out otherwise)
        config.run.time_budget_minutes = args.time_budget
    check_budgets(config)
    return config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train, evaluate and log a run")
    retrain = commands.add_parser("retrain", help="snapshot, train, register, gate, promote")
    ensure = commands.add_parser("ensure-champion", help="train a champion if there is none")
    promote = commands.add_parser("promote", help="move the champion alias to a version")
    promote.add_argument("version", help="the registered version, e.g. 3")
    promote.add_argument("--force", action="store_true",
                         help="promote it whatever its figures (e.g. below the baselines)")
    for sub in (train, retrain, ensure):
        sub.add_argument("--config", required=sub is not retrain, default=DEFAULT_CONFIG,
                         help=f"YAML file of hyper-parameters (retrain: {DEFAULT_CONFIG})")
        sub.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        sub.add_argument("--no-progress", action="store_true", help="no progress bars")
        sub.add_argument("--fresh", action="store_true",
                         help="ignore the checkpoints of an interrupted run of this config")
        sub.add_argument("--memory-gb", type=parse_gigabytes, default=None, metavar="GB",
                         help="memory budget the training plan fits (default: the config's "
                              "run.memory_gb, 8)")
        sub.add_argument("--time-budget", type=parse_minutes, default=argparse.SUPPRESS,
                         metavar="MINUTES",
                         help="stop training at this budget with the best validated weights "
                              "(default: the config's run.time_budget_minutes; none: no budget)")
    for sub in (train, retrain):
        sub.add_argument("--until", type=parse_until, default=None,
                         help="train on events up to this time (ISO-8601 or epoch seconds)")
        sub.add_argument("--force", action="store_true", help="promote even if it is worse")
    train.add_argument("--register", action="store_true", help="register a model version")
    train.add_argument("--ray", action="store_true",
                       help="train the sequence models on Ray Train (DDP; the `ray` extra)")
    train.add_argument("--workers", type=int, default=2, help="with --ray: DDP workers")
    train.add_argument("--address", default=None,
                       help="with --ray: the cluster to join (default: start a local one)")
    train.add_argument("--promote", action="store_true",
                       help="move the champion alias to the new version if it is not worse")
    retrain.add_argument("--if-changed", action="store_true",
                         help="skip when the champion was trained on the same snapshot")
    return parser


def promote_version(version: str, force: bool) -> int:
    """``promote VERSION``: through ``registry.promote`` with the version's tagged figures
    (its baselines included); the decision is also tagged on the version."""
    from mlflow.exceptions import MlflowException

    from training import registry

    target = registry.default_target()
    client = target.client()
    try:
        found = client.get_model_version(target.model_name, version)
    except MlflowException:
        print(f"{target.model_name} has no version {version}", file=sys.stderr)
        return 2
    decision = registry.promote(target, version, force=force,
                                floor=registry.floor_from_tags(found))
    print(decision.reason)
    if decision.promoted:
        for key, value in {"gate_promoted": "True", "gate_reason": decision.reason[:5000],
                           "gate_champion": decision.previous or "none"}.items():
            client.set_model_version_tag(target.model_name, version, key, value)
        return 0
    current = registry.champion(target)
    return 0 if current is not None and str(current.version) == str(version) else 1


def refusal_status(version: str | None, reason: str, champion: str | None, alias: str) -> int:
    """Exit status and stderr lines after a run whose new version was not promoted."""
    if champion is not None:
        return 0  # the gate kept the champion: a normal outcome of a retrain
    print(f"no champion: v{version} is registered but not promoted ({reason}).\n"
          f"The service has no {alias} model to serve. See the run's simple-baselines table; "
          f"to serve this version anyway: python -m training promote {version} --force",
          file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "promote":
        return promote_version(args.version, args.force)
    if args.command == "train" and args.promote and not args.register:
        print("--promote needs --register", file=sys.stderr)
        return 2
    try:
        config = with_budgets(load_config(args.config), args)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    # Imported late: mlflow takes seconds to import, torch and transformers more.
    from training import registry

    target = registry.default_target()
    if args.command == "ensure-champion":
        registry.use_tracking(target, config.run.experiment)
        current = registry.champion(target)
        if current is not None:
            print(f"{target.model_name}@{target.alias} is version {current.version}: "
                  f"{registry.describe(current)}")
            return 0
        minutes = EXPECTED_MINUTES.get(config.run.name, "several")
        print(f"no {target.model_name}@{target.alias} yet: training one from {args.config} "
              f"({minutes} minutes on a CPU)")
    from training.pipeline import dataset_fingerprint, load_snapshot, run_training

    try:
        snapshot = load_snapshot(until=getattr(args, "until", None))
    except Exception as error:  # an unreachable or unmigrated store: say so, briefly
        print(f"cannot read the store: {error}", file=sys.stderr)
        return 2
    if snapshot.n_events == 0:
        print("the store holds no events: import some first (python -m training.data import "
              "--items FILE --events FILE, or POST /events)", file=sys.stderr)
        return 2
    if args.command == "retrain" and args.if_changed:
        registry.use_tracking(target, config.run.experiment)
        current = registry.champion(target)
        fingerprint = dataset_fingerprint(snapshot, config)
        if current is not None and current.tags.get(registry.FINGERPRINT_TAG) == fingerprint:
            print(f"nothing to do: {target.model_name}@{target.alias} (v{current.version}) "
                  f"was trained on this snapshot ({fingerprint[:12]})")
            return 0
    register = args.command in ("ensure-champion", "retrain") or args.register
    from training.threads import use_usable_cores

    use_usable_cores()
    report = run_training(
        config, device=args.device, progress=not args.no_progress, register=register,
        promote=args.command in ("ensure-champion", "retrain") or args.promote,
        force=getattr(args, "force", False), target=target, snapshot=snapshot,
        resume=not args.fresh,
        ray_workers=args.workers if getattr(args, "ray", False) else 0,
        ray_address=getattr(args, "address", None),
    )
    print(f"bundle: {report.bundle_dir}")
    decision = report.promotion
    if decision is not None and not decision.promoted:
        current = registry.champion(target)
        return refusal_status(report.version, decision.reason,
                              None if current is None else str(current.version), target.alias)
    if args.command == "ensure-champion" and decision is None:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
