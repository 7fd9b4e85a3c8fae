"""Command line: ``python -m training train|ensure-champion --config configs/ml100k.yaml``.

- ``train``: train, evaluate and log a run; ``--register`` adds a model version,
  ``--promote`` moves the champion alias to it when it is not worse (``--force``: always).
- ``ensure-champion`` (used by ``make serve``): exit quickly when a champion exists, otherwise
  train, register and promote one, with progress bars.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from training.config import ConfigError, load_config

# Measured on the 2-core development machine, CPU only: the full run took 359 s when the
# machine was otherwise idle (42 minutes while four other trainings shared it).
EXPECTED_MINUTES = {"ml100k": "about 6 to 10", "tiny": "under 1"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train, evaluate and log a run")
    ensure = commands.add_parser("ensure-champion", help="train a champion if there is none")
    for sub in (train, ensure):
        sub.add_argument("--config", required=True, help="YAML file, e.g. configs/ml100k.yaml")
        sub.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        sub.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--register", action="store_true", help="register a model version")
    train.add_argument("--promote", action="store_true",
                       help="move the champion alias to the new version if it is not worse")
    train.add_argument("--force", action="store_true", help="promote even if it is worse")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train" and args.promote and not args.register:
        print("--promote needs --register", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    # Imported late: mlflow takes seconds to import, torch and transformers more.
    from training import registry

    if args.command == "ensure-champion":
        target = registry.default_target()
        registry.use_tracking(target, config.run.experiment)
        current = registry.champion(target)
        if current is not None:
            print(f"{target.model_name}@{target.alias} is version {current.version}: "
                  f"{registry.describe(current)}")
            return 0
        minutes = EXPECTED_MINUTES.get(config.run.name, "several")
        print(f"no {target.model_name}@{target.alias} yet: training one from {args.config} "
              f"({minutes} minutes on a CPU)")
    from training.pipeline import run_training

    report = run_training(
        config, device=args.device, progress=not args.no_progress,
        register=args.command == "ensure-champion" or args.register,
        promote=args.command == "ensure-champion" or args.promote,
        force=getattr(args, "force", False),
    )
    print(f"bundle: {report.bundle_dir}")
    if args.command == "ensure-champion" and not (report.promotion and report.promotion.promoted):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
