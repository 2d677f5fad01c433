"""Hyper-parameter sweeps on Ray Tune: every trial is a normal run, inside the sweep's folder.

python tune.py -c config.json --space space.json --samples 8
python tune.py -c config.json --space space.json --samples 8 --scheduler asha trainer.epochs=30
python tune.py -c config.json --space space.json --samples 20 --search optuna
python tune.py --resume saved/sweeps/<name>/<sweep_id>          # continue an interrupted sweep
"""

import dataclasses
import importlib.util
import os
import shlex
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

from cli import ArgumentParser, command_line_overrides
from logger.run_folder import RUN_ID_PATTERN
from sweep.space import LIMITS, SCHEDULERS, SEARCHES, Sweep, TrialRecord, check_space, read_space, write_outputs
from utils.errors import ConfigError, TrainingInterrupted, one_line_errors

INSTALL = "pip install -r requirements-tune.txt"
OPTIONS = {  # Sweep's options as flags (their defaults live in Sweep, their limits in LIMITS): type and help
    "samples": (int, "trials drawn, for each combination of grid values"),
    "search": (str, "random: grid values in turn, the others drawn at random; optuna: TPE"),
    "scheduler": (str, "fifo: every trial runs all its epochs; asha: trials behind at an epoch end stop"),
    "grace_period": (int, "asha: epochs before a trial can be stopped"),
    "reduction_factor": (float, "asha: about 1 in this many trials goes on at a rung"),
    "cpus_per_trial": (float, "CPUs each trial holds"),
    "gpus_per_trial": (float, "GPUs each trial holds (fractions allowed: 0.5)"),
}
DEFAULTS = {f.name: f.default for f in dataclasses.fields(Sweep) if f.default is not dataclasses.MISSING}


def main(sweep: Sweep, resume: bool = False, address: str | None = None) -> list[TrialRecord]:
    """Run the sweep's trials (or, resuming, those not ended yet); write trials.csv and best.json in its
    folder and print the best trials; return one record per trial."""
    # Ray's own output off: usage stats, result tables, per-trial loggers (each run writes its own TensorBoard events)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    from sweep.ray_tune import run_sweep

    records = run_sweep(sweep, resume, address)
    best = write_outputs(records, sweep)  # trials.csv, best.json, and the best trials on the console
    unfinished = sum(r.status == "unfinished" for r in records)
    if unfinished:
        raise TrainingInterrupted(
            f"the sweep stopped with {unfinished} trial(s) unfinished (their checkpoints are kept); "
            f"continue it with: python tune.py --resume {shlex.quote(str(sweep.folder))}",
            signal.SIGINT,
        )
    if best is None:
        raise ConfigError(f"no trial finished an epoch; the errors are in {sweep.folder / 'trials.csv'}")
    return records


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Search hyper-parameters with Ray Tune: each trial is a normal run in the sweep's folder.",
        epilog=(
            "overrides: any config key as dotted.key=value after the options, applied to every trial, e.g.\n"
            "  python tune.py -c config.json --space space.json --samples 8 trainer.epochs=5\n"
            "space: a JSON object of config keys and distributions (uniform, loguniform, randint, choice, grid):\n"
            '  {"optimizer.args.lr": {"loguniform": [0.0001, 0.1]}, "arch.args.dropout": {"grid": [0.1, 0.5]}}\n'
            f"needs Ray Tune (and Optuna for --search optuna): {INSTALL}"
        ),
    )
    parser.add_argument("-c", "--config", help="base config of every trial (e.g. config.json)")
    parser.add_argument("-s", "--space", help="search space file (e.g. space.json)")
    parser.add_argument("-r", "--resume", help="sweep folder to continue (saved/sweeps/<name>/<sweep_id>)")
    for dest, (kind, text) in OPTIONS.items():
        choices = {"search": SEARCHES, "scheduler": SCHEDULERS}.get(dest)
        flag, default = f"--{dest.replace('_', '-')}", DEFAULTS[dest]
        parser.add_argument(flag, type=kind, choices=choices, help=f"{text} (default: {default})")
    parser.add_argument("--address", help="join this Ray cluster ('auto': the one on this machine); default: start one")
    parser.add_argument("--sweep-id", help="name of the sweep's folder (default: a timestamp)")
    parser.add_shortcuts()
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every trial")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[Sweep, dict[str, Any]]:
    """The sweep to run and main's other arguments; raise a UserError on bad input, before Ray starts."""
    args = build_parser().parse_args(argv)
    given = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}
    for name, (fits, expected) in LIMITS.items():
        if name in given and not fits(given[name]):
            raise ConfigError(f"--{name.replace('_', '-')} {given[name]:g}: expected {expected}")
    if args.resume is not None:
        named = {"-c": args.config, "--space": args.space, "--sweep-id": args.sweep_id}
        named.update({f"--{name.replace('_', '-')}": given.get(name) for name in OPTIONS if "per_trial" not in name})
        dropped = [flag for flag, value in named.items() if value is not None] + (
            ["overrides"] if args.overrides else []
        )
        if dropped:
            raise ConfigError(
                f"--resume: a sweep continues with its own config, space and options; drop {', '.join(dropped)}"
            )
        sweep = dataclasses.replace(Sweep.load(args.resume), **given)  # the resources (*_per_trial) may change
        require("ray", "tune.py needs Ray Tune")
        return sweep, {"resume": True, "address": args.address}
    if args.config is None or args.space is None:
        raise ConfigError("a new sweep needs -c CONFIG and --space SPACE; continue one with --resume SWEEP_FOLDER")
    space = read_space(args.space)
    for d in space if given.get("search") == "optuna" else []:
        where = f"{args.space}: {d.key}"
        if d.kind == "grid":
            raise ConfigError(f"{where}: Optuna draws every value and runs no grid; use choice or random search")
        if d.kind == "choice" and any(isinstance(v, (list, dict)) for v in d.values):
            raise ConfigError(f"{where}: Optuna chooses among numbers, strings, booleans and null only")
    config = check_space(space, args.space, args.config, command_line_overrides(args))
    from trainer.options import TrainerOptions

    options = TrainerOptions.of(config)
    options.check_for_training(config)
    if options.monitor == "off":
        raise ConfigError(
            "trainer.monitor: a sweep compares trials on the monitored metric, and it is off; "
            "set it, e.g. trainer.monitor='min val_loss'"
        )
    if args.sweep_id is not None and not RUN_ID_PATTERN.fullmatch(args.sweep_id):
        raise ConfigError(
            f"--sweep-id {args.sweep_id!r}: expected a single folder name (letters, digits, '_', '-', '.')"
        )
    sweeps = Path(config["save_dir"]).resolve() / "sweeps" / config["name"]
    folder = sweeps / (args.sweep_id or datetime.now().strftime("%m%d_%H%M%S"))
    if folder.exists():
        raise ConfigError(
            f"--sweep-id: {folder} exists; choose another id, or continue it with --resume {shlex.quote(str(folder))}"
        )
    require("ray", "tune.py needs Ray Tune")
    if given.get("search") == "optuna":
        require("optuna", "--search optuna needs Optuna")
    return Sweep(folder, config, space, **given), {"resume": False, "address": args.address}


def require(package: str, what: str) -> None:
    """Refuse to start without an optional package, saying how to install it."""
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{what}, which is not installed: {INSTALL}")


if __name__ == "__main__":
    with one_line_errors(interrupted="stopped before the sweep started; nothing was saved"):
        sweep, options = parse_args()
        main(sweep, **options)
