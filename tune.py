"""Hyper-parameter sweeps on Ray Tune: every trial is a normal run, inside the sweep's folder.

python tune.py -c config.json --space space.json --samples 8
python tune.py -c config.json --space space.json --samples 8 --scheduler asha trainer.epochs=30
python tune.py -c config.json --space space.json --samples 20 --search optuna
python tune.py --resume saved/sweeps/<name>/<sweep_id>          # continue an interrupted sweep
"""

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from logger.run_folder import RUN_ID_PATTERN
from parse_config import ArgumentParser, shortcut_overrides
from sweep.space import SCHEDULERS, SEARCHES, STATUSES, Sweep, TrialRecord, check_space, read_space
from utils.errors import ConfigError, TrainingInterrupted, one_line_errors

INSTALL = "pip install -r requirements-tune.txt"
FIXED_OPTIONS = ("samples", "search", "scheduler", "grace_period", "reduction_factor")  # fixed when a sweep starts
RESOURCES = ("cpus_per_trial", "gpus_per_trial")  # a resumed sweep may change them
DEFAULTS = {f.name: f.default for f in dataclasses.fields(Sweep) if f.default is not dataclasses.MISSING}


def main(sweep: Sweep, resume: bool = False, address: str | None = None) -> list[TrialRecord]:
    """Run the sweep's trials (or, resuming, those not ended yet); write trials.csv and best.json in its
    folder and print the best trials; return one record per trial."""
    # Ray's own output: no usage-stats notice, no result tables, no per-trial loggers (each run writes its
    # own TensorBoard events, so the sweep's folder shows every trial once in the HPARAMS tab).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray

    from sweep.ray_tune import make_tuner, restore_tuner, start_ray, trial_records
    from sweep.space import (
        check_ray_state,
        previously_stopped,
        sign_ray_state,
        state_key,
        write_hparams_of_stopped,
        write_outputs,
    )

    key = state_key()  # this machine's, for Ray's state: read (or made) before anything starts
    if resume:  # before Ray starts and reads its state: it unpickles that state
        check_ray_state(sweep.folder, key)
    print(f"Sweep {sweep.folder}: {sweep.search} search, {sweep.scheduler} scheduler; starting Ray", flush=True)
    start_ray(address, sweep)
    try:
        if not resume:  # only now: everything is valid and Ray runs
            sweep.folder.mkdir(parents=True)
            sweep.save()
        tuner = restore_tuner(sweep) if resume else make_tuner(sweep)
        with sigterm_as_sigint():  # Tune stops on Ctrl-C: it saves its state, the trials keep their checkpoints
            tuner.fit()
        records = trial_records(sweep)
    except KeyboardInterrupt:  # a second Ctrl-C: Tune stops at once, with the state it saved last
        raise TrainingInterrupted(
            f"stopped at once; continue the sweep with: python tune.py --resume {sweep.folder}", signal.SIGINT
        ) from None
    finally:
        ray.shutdown()
        if sweep.folder.is_dir():
            sign_ray_state(sweep.folder, key)  # what a --resume will unpickle: as this run leaves it, nothing else
    stopped_before = previously_stopped(sweep)
    best = write_outputs(records, sweep)
    write_hparams_of_stopped(records, sweep, stopped_before)
    print_summary(records, best, sweep)

    unfinished = [r for r in records if r.status == "unfinished"]
    if unfinished:
        raise TrainingInterrupted(
            f"the sweep stopped with {len(unfinished)} trial(s) unfinished (their checkpoints are kept); "
            f"continue it with: python tune.py --resume {sweep.folder}",
            signal.SIGINT,
        )
    if best is None:
        raise ConfigError(f"no trial finished an epoch; the errors are in {sweep.folder / 'trials.csv'}")
    return records


@contextlib.contextmanager
def sigterm_as_sigint() -> Iterator[None]:
    """kill (SIGTERM) stops the sweep the way Ctrl-C does, so that --resume can continue it."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_summary(records: list[TrialRecord], best: TrialRecord | None, sweep: Sweep) -> None:
    """How many trials ended how, the best trials as a table, and the command that evaluates the best."""
    from sweep.space import top_table

    counts = ", ".join(f"{sum(r.status == s for r in records)} {s}" for s in STATUSES)
    print(f"\n{len(records)} trials: {counts}; {sweep.folder / 'trials.csv'}")
    if best is not None:
        mode, metric = sweep.monitor
        print(top_table(records, sweep))
        print(f"Best: {best.trial}, {metric} {best.best_value(metric):.6g} at epoch {best.best['epoch']} ({mode})")
        print(f"Evaluate it on the test split: python test.py --resume {best.run_folder / 'model_best.pth'}")


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
    options = {  # dest: (type, help); the defaults live in Sweep
        "samples": (int, "trials drawn, for each combination of grid values"),
        "search": (str, "random: grid values in turn, the others drawn at random; optuna: TPE"),
        "scheduler": (str, "fifo: every trial runs all its epochs; asha: trials behind at an epoch end stop"),
        "grace_period": (int, "asha: epochs before a trial can be stopped"),
        "reduction_factor": (float, "asha: about 1 in this many trials goes on at a rung"),
        "cpus_per_trial": (float, "CPUs each trial holds"),
        "gpus_per_trial": (float, "GPUs each trial holds (fractions allowed: 0.5)"),
    }
    choices = {"search": SEARCHES, "scheduler": SCHEDULERS}
    for dest, (kind, text) in options.items():
        parser.add_argument(
            f"--{dest.replace('_', '-')}",
            type=kind,
            choices=choices.get(dest),
            help=f"{text} (default: {DEFAULTS[dest]})",
        )
    parser.add_argument("--address", help="join this Ray cluster ('auto': the one on this machine); default: start one")
    parser.add_argument("--sweep-id", help="name of the sweep's folder (default: a timestamp)")
    parser.add_shortcuts()
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every trial")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[Sweep, dict[str, Any]]:
    """The sweep to run and main's other arguments; raise a UserError on bad input, before Ray starts."""
    args = build_parser().parse_args(argv)
    overrides = shortcut_overrides(args)
    overrides += args.overrides
    given = {name: getattr(args, name) for name in (*FIXED_OPTIONS, *RESOURCES) if getattr(args, name) is not None}
    check_options(args, given)
    if args.resume is not None:
        sweep = dataclasses.replace(Sweep.load(args.resume), **given)  # resources may change, nothing else
        require("ray", "tune.py needs Ray Tune")
        return sweep, {"resume": True, "address": args.address}
    if args.config is None or args.space is None:
        raise ConfigError("a new sweep needs -c CONFIG and --space SPACE; continue one with --resume SWEEP_FOLDER")
    space = read_space(args.space)
    if given.get("search") == "optuna":
        check_optuna_space(space, args.space)
    config = check_space(space, args.space, args.config, overrides)
    if config["trainer"]["monitor"] == "off":
        raise ConfigError(
            "trainer.monitor: a sweep compares trials on the monitored metric, and it is off; "
            "set it, e.g. trainer.monitor='min val_loss'"
        )
    folder = sweep_folder(config, args.sweep_id)
    require("ray", "tune.py needs Ray Tune")
    if given.get("search") == "optuna":
        require("optuna", "--search optuna needs Optuna")
    return Sweep(folder, config, space, **given), {"resume": False, "address": args.address}


def require(package: str, what: str) -> None:
    """Refuse to start without an optional package, saying how to install it."""
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{what}, which is not installed: {INSTALL}")


def check_options(args: argparse.Namespace, given: dict[str, Any]) -> None:
    """Flags that conflict or are out of range, each refused with its name."""
    if args.resume is not None:
        named = [("-c", args.config), ("--space", args.space), ("--sweep-id", args.sweep_id)]
        named += [(f"--{name.replace('_', '-')}", given.get(name)) for name in FIXED_OPTIONS]
        dropped = [flag for flag, value in named if value is not None] + (["overrides"] if args.overrides else [])
        if dropped:
            raise ConfigError(
                f"--resume: a sweep continues with its own config, space and options; drop {', '.join(dropped)}"
            )
    ranges = {
        "samples": (lambda v: v >= 1, "at least 1"),
        "grace_period": (lambda v: v >= 1, "at least 1 epoch"),
        "reduction_factor": (lambda v: v > 1, "more than 1"),
        "cpus_per_trial": (lambda v: v > 0, "above 0"),
        "gpus_per_trial": (lambda v: v >= 0, "0 or more"),
    }
    for name, (fits, expected) in ranges.items():
        if name in given and not fits(given[name]):
            raise ConfigError(f"--{name.replace('_', '-')} {given[name]:g}: expected {expected}")


def check_optuna_space(space: list, space_path: str) -> None:
    """Optuna draws every value itself: no grid, and choices among plain values only."""
    for dimension in space:
        if dimension.kind == "grid":
            raise ConfigError(
                f"{space_path}: {dimension.key}: Optuna draws every value and runs no grid; use choice or random search"
            )
        if dimension.kind == "choice" and any(isinstance(v, (list, dict)) for v in dimension.values):
            raise ConfigError(
                f"{space_path}: {dimension.key}: Optuna chooses among numbers, strings, booleans and null only"
            )


def sweep_folder(config: dict, sweep_id: str | None) -> Path:
    """<save_dir>/sweeps/<name>/<sweep_id>, which must not exist yet."""
    if sweep_id is not None and not RUN_ID_PATTERN.fullmatch(sweep_id):
        raise ConfigError(f"--sweep-id {sweep_id!r}: expected a single folder name (letters, digits, '_', '-', '.')")
    sweeps = Path(config["save_dir"]).resolve() / "sweeps" / config["name"]
    folder = sweeps / (sweep_id or datetime.now().strftime("%m%d_%H%M%S"))
    if folder.exists():
        raise ConfigError(f"--sweep-id: {folder} exists; choose another id, or continue it with --resume {folder}")
    return folder


if __name__ == "__main__":
    with one_line_errors(interrupted="stopped before the sweep started; nothing was saved"):
        sweep, options = parse_args()
        main(sweep, **options)
