"""Hyper-parameter sweeps: the search space, checked as overrides are, and what a sweep leaves in its folder.

A space file maps dotted config keys to one distribution each:

    {"optimizer.args.lr": {"loguniform": [0.0001, 0.1]}, "data_loader.args.batch_size": {"choice": [32, 64]}}

    uniform [low, high]      a number in [low, high)
    loguniform [low, high]   a number whose logarithm is uniform; 0 < low
    randint [low, high]      a whole number in [low, high): high is excluded, as in range()
    choice [a, b, ...]       one of the values, drawn for each trial
    grid [a, b, ...]         every value in turn: the grid's product runs once per sample

A sampled value reaches a trial's config as the override `key=<the value as JSON>`, exactly as a `key=value`
of the command line does, so a space is checked by the same rules. The sweep's folder:

    <save_dir>/sweeps/<name>/<sweep_id>/
        sweep.json, config.json, space.json    what runs: the options, the base config (overrides applied), the space
        models/<name>/trial_NNNN/              each trial's run folder (checkpoints), as for train.py
        log/<name>/trial_NNNN/                 its info.log, metrics.csv and TensorBoard events
        trials.csv, best.json                  one row per trial; the best trial, its config and checkpoint
        ray/                                   Ray Tune's own state, read by --resume
        ray_signatures.json                    an HMAC of every file in ray/, by a key of this machine

Ray is not imported here (sweep/ray_tune.py holds what runs on it): the space is checked before Ray starts.
"""

import copy
import csv
import hmac
import json
import math
import os
import secrets
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from logger.run_folder import RunFolder
from parse_config import ConfigParser, apply_override, move_victoresque_keys, read_config
from utils.errors import ConfigError, did_you_mean, quoted, shown
from utils.util import cache_home, new_temporary, read_json, write_json

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")
SEARCHES = ("random", "optuna")  # random: grid values in turn, the other distributions drawn at random
SCHEDULERS = ("fifo", "asha")  # fifo: every trial runs all its epochs
EXAMPLE = '{"optimizer.args.lr": {"loguniform": [0.0001, 0.1]}}'
# Keys a space cannot vary, and why.
SET_BY_SWEEP = {
    "save_dir": "the sweep puts every trial's run inside its own folder",
    "trainer.monitor": "trials are compared on one monitored metric",
}
OPTIONS_NAME, CONFIG_NAME, SPACE_NAME = "sweep.json", "config.json", "space.json"
TRIALS_NAME, BEST_NAME, RAY_FOLDER = "trials.csv", "best.json", "ray"
SIGNATURES_NAME = "ray_signatures.json"


@dataclass(frozen=True)
class Dimension:
    """One key of the space and its distribution: (low, high) for uniform, loguniform and randint; the values
    for choice and grid."""

    key: str
    kind: str
    values: tuple

    def corners(self) -> list:
        """The values checked before the sweep starts: both ends of a range, every value of a list."""
        if self.kind == "randint":
            return [self.values[0], self.values[1] - 1]
        return list(self.values)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_dimension(key: str, spec: Any) -> Dimension:
    """One entry of a space file; a ConfigError naming the key when it is not a distribution that can be drawn."""
    if key in SET_BY_SWEEP:
        raise ConfigError(f"{key}: cannot be swept: {SET_BY_SWEEP[key]}; remove it from the space")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f'{key}: expected one distribution, e.g. {{"choice": [32, 64]}}; found {shown(spec)}')
    ((kind, values),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(
            f"{key}: unknown distribution {quoted(kind)}{did_you_mean(kind, DISTRIBUTIONS)} "
            f"(valid: {', '.join(DISTRIBUTIONS)})"
        )
    if kind in ("choice", "grid"):
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{key}: {kind} takes a non-empty list of values; found {shown(values)}")
        return Dimension(key, kind, tuple(values))
    whole = kind == "randint"
    if not (isinstance(values, list) and len(values) == 2 and all(map(_is_whole if whole else _is_number, values))):
        what = "whole numbers" if whole else "numbers"
        raise ConfigError(f"{key}: {kind} takes [low, high], two {what}; found {shown(values)}")
    low, high = values
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{key}: loguniform takes bounds > 0 (it draws the logarithm); found {shown(values)}")
    if low >= high:
        excluded = " (high itself is excluded)" if whole else ""
        raise ConfigError(f"{key}: {kind} takes low < high{excluded}; found {shown(values)}")
    return Dimension(key, kind, (low, high))


def read_space(path: str | Path) -> list[Dimension]:
    """A space file, every entry checked; all problems in one ConfigError naming the file."""
    space = read_json(path)
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{path}: expected an object of config keys and distributions, e.g. {EXAMPLE}")
    dimensions, errors = [], []
    for key, spec in space.items():
        try:
            dimensions.append(parse_dimension(key, spec))
        except ConfigError as e:
            errors.append(str(e))
    if errors:
        raise ConfigError(f"{path}: {'; '.join(errors)}")
    return dimensions


def space_as_json(space: list[Dimension]) -> dict:
    return {d.key: {d.kind: list(d.values)} for d in space}


def plain(value: Any) -> Any:
    """A drawn value as a JSON value: Tune draws whole numbers as NumPy integers."""
    return value.item() if hasattr(value, "item") else value


def as_overrides(values: dict[str, Any]) -> list[str]:
    """Drawn values as command-line overrides, `key=<JSON>`: the path every config change takes."""
    return [f"{key}={json.dumps(plain(value))}" for key, value in values.items()]


def check_space(space: list[Dimension], space_path: str | Path, config_path: str | Path, overrides: list[str]) -> dict:
    """Check a space against a config before anything starts; return the validated base config.

    First every key, as an override on the config as read (cheap: no torch): it must exist, or be an
    argument inside "args". Then the base config and a few drawn configs through the ConfigParser's whole
    validation (schema, names, constructor signatures): the first value of every key together, then each
    other end of a range and each other value of a list in turn.
    """
    raw = read_config(Path(config_path))
    move_victoresque_keys(raw)
    for override in overrides:
        apply_override(raw, override)
    errors = []
    for dimension in space:
        (override,) = as_overrides({dimension.key: dimension.corners()[0]})
        try:
            apply_override(copy.deepcopy(raw), override)
        except ConfigError as e:  # the message names the override; here the space's key says it
            errors.append(f"{dimension.key}: {str(e).removeprefix(f'override {override!r}: ')}")
    if errors:
        raise ConfigError(f"{space_path}: {'; '.join(errors)}")

    base = ConfigParser.load(config_path, None, overrides).config
    first = {d.key: d.corners()[0] for d in space}
    try:
        ConfigParser.load(config_path, None, [*overrides, *as_overrides(first)])
    except ConfigError as e:
        drawn = ", ".join(as_overrides(first))
        raise ConfigError(f"{space_path}: the trial {drawn} would be refused: {e}") from None
    for dimension in space:
        for value in dimension.corners()[1:]:
            try:
                ConfigParser.load(config_path, None, [*overrides, *as_overrides({**first, dimension.key: value})])
            except ConfigError as e:
                errors.append(f"{as_overrides({dimension.key: value})[0]} would be refused: {e}")
    if errors:
        raise ConfigError(f"{space_path}: {'; '.join(errors)}")
    return base


@dataclass(frozen=True)
class Sweep:
    """What a sweep runs, saved in its folder at the start so that --resume runs the same thing."""

    folder: Path
    config: dict  # the base config: the config file with the command line's overrides, validated
    space: list[Dimension]
    samples: int = 1
    search: str = "random"
    scheduler: str = "fifo"
    grace_period: int = 1  # asha: epochs every trial runs before it can be stopped
    reduction_factor: float = 4  # asha: about 1 in this many trials goes on at each rung
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0

    @property
    def monitor(self) -> tuple[str, str]:
        """(mode, metric) of trainer.monitor: how trials are compared."""
        mode, metric = self.config["trainer"]["monitor"].split()
        return mode, metric

    def options(self) -> dict[str, Any]:
        fields = asdict(self)
        return {k: v for k, v in fields.items() if k not in ("folder", "config", "space")}

    def save(self) -> None:
        write_json(self.options(), self.folder / OPTIONS_NAME)
        write_json(self.config, self.folder / CONFIG_NAME)
        write_json(space_as_json(self.space), self.folder / SPACE_NAME)

    @classmethod
    def load(cls, folder: str | Path) -> "Sweep":
        folder = Path(folder)
        if not (folder / OPTIONS_NAME).is_file():
            raise ConfigError(f"{folder}: not a sweep folder (it has no {OPTIONS_NAME}); pass saved/sweeps/<name>/<id>")
        options = read_json(folder / OPTIONS_NAME)
        check_options(options, folder / OPTIONS_NAME)
        space = read_space(folder / SPACE_NAME)
        config = ConfigParser.load(folder / CONFIG_NAME).config
        return cls(folder.resolve(), config, space, **options)

    def trial_overrides(self, values: dict[str, Any]) -> list[str]:
        """A trial's overrides of the base config: its drawn values, and its run inside the sweep's folder."""
        return [f"save_dir={json.dumps(str(self.folder))}", *as_overrides(values)]

    def run_folder(self, trial: str, values: dict[str, Any]) -> RunFolder:
        return RunFolder.for_new_run(self.folder, values.get("name", self.config["name"]), trial)


def check_options(options: Any, path: Path) -> None:
    """sweep.json as Sweep.save writes it: an object of Sweep's options, each of its type; all problems in one
    ConfigError naming the file."""
    types = {f.name: f.type for f in fields(Sweep) if f.name not in ("folder", "config", "space")}
    if not isinstance(options, dict):
        raise ConfigError(
            f"{path}: expected an object of the sweep's options ({', '.join(types)}); found {shown(options)}"
        )
    choices = {"search": SEARCHES, "scheduler": SCHEDULERS}
    errors = []
    for key, value in options.items():
        if key not in types:
            errors.append(f"unknown key {quoted(key)}{did_you_mean(key, types)} (valid keys: {', '.join(types)})")
            continue
        expected = (int, float) if types[key] is float else types[key]  # 4 is a float option's value too
        if isinstance(value, bool) or not isinstance(value, expected):
            errors.append(f"{key}: expected {types[key].__name__}, found {shown(value)}")
        elif key in choices and value not in choices[key]:
            errors.append(f"{key}: expected one of {', '.join(choices[key])}, found {shown(value)}")
    if errors:
        raise ConfigError(f"{path}: {'; '.join(errors)}")


# Ray Tune's state in <sweep>/ray is pickles (tuner.pkl, the searcher's state, the trials inside
# experiment_state-*.json), and unpickling runs whatever code a pickle names. A sweep folder is data that people
# share, so --resume hands that state to Ray only when every file in it is as this machine signed it when the
# sweep stopped: an HMAC of each file by a key that stays in this user's cache, outside every sweep folder.


def state_key() -> bytes:
    """This machine's key for the signatures, made on first use (readable by this user only)."""
    path = cache_home() / "sweep_state.key"
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, tmp = new_temporary(path, mode=0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(secrets.token_bytes(32))
            try:
                os.link(tmp, path)  # whole when it appears, and never replaces a key another sweep made meanwhile
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(
            f"{path}: cannot make or read the key that signs sweeps' Ray state ({e.strerror or e}); "
            "set XDG_CACHE_HOME to a folder of yours"
        ) from None


def ray_state_signatures(folder: Path, key: bytes) -> dict[str, str]:
    """The HMAC of every file under <folder>/ray and of its path from the sweep's folder, by that path."""
    signatures = {}
    for path in sorted((folder / RAY_FOLDER).rglob("*")):
        if path.is_symlink():  # signed as a link: rglob does not follow one into a folder (Ray makes none)
            content = b"a link to " + os.fsencode(os.readlink(path))
        elif path.is_file():
            content = path.read_bytes()
        elif path.is_dir():
            continue
        else:  # a FIFO or a device: never read (a FIFO would block), and Ray makes none
            content = b"neither a file nor a folder"
        name = path.relative_to(folder).as_posix()
        signatures[name] = hmac.new(key, name.encode() + b"\0" + content, "sha256").hexdigest()
    return signatures


def sign_ray_state(folder: Path, key: bytes) -> None:
    """Sign Ray Tune's state as this run leaves it, for check_ray_state on --resume."""
    write_json(ray_state_signatures(folder, key), folder / SIGNATURES_NAME)


def check_ray_state(folder: Path, key: bytes) -> None:
    """A ConfigError naming the first file of Ray Tune's state that is not as this machine signed it."""
    path = folder / SIGNATURES_NAME
    if not path.is_file():
        raise ConfigError(
            f"{path}: not found: this machine signs Ray Tune's state in {RAY_FOLDER}/ when a sweep stops, and "
            "resumes no other (a sweep killed at once, or saved elsewhere, cannot be resumed); start a new sweep"
        )
    signed = read_json(path)
    if not isinstance(signed, dict):
        raise ConfigError(f"{path}: expected an object of file names and signatures, found {shown(signed)}")
    found = ray_state_signatures(folder, key)
    for name in sorted(signed.keys() | found.keys()):
        expected = signed.get(name)
        if name not in found:
            problem = "removed since this machine signed the sweep's state"
        elif not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), found[name].encode()):
            problem = (
                "not as this machine signed it when the sweep stopped (changed or added since, or saved elsewhere)"
            )
        else:
            continue
        raise ConfigError(f"{folder / name}: {problem}; --resume unpickles no such file (it could run any code)")


# What a sweep leaves: one record per trial, read from its run folder (the source of truth: its checkpoints).

STATUSES = {
    "finished": "ran all its epochs, or stopped early by trainer.early_stop",
    "stopped": "stopped by the scheduler: behind the others at an epoch end",
    "error": "failed; the error column says why",
    "unfinished": "the sweep was interrupted; --resume continues it",
}


@dataclass(frozen=True)
class TrialRecord:
    trial: str  # its run id, trial_NNNN
    values: dict[str, Any]  # its drawn values
    status: str  # one of STATUSES
    epochs: int  # epochs its last.pth holds
    best: dict[str, Any] | None  # the results of its best epoch (by trainer.monitor), None before its first epoch
    run_folder: Path
    error: str = ""

    def best_value(self, metric: str) -> float | None:
        return None if self.best is None else self.best[metric]


def run_is_finished(state: dict[str, Any]) -> bool:
    """Whether a run's checkpoint ends its training: its last epoch, or early stopping."""
    from trainer.checkpoint import KEY_BATCH, KEY_CONFIG, KEY_EPOCH, KEY_NOT_IMPROVED

    trainer = state[KEY_CONFIG]["trainer"]
    early_stop = trainer["early_stop"] and state[KEY_NOT_IMPROVED] >= trainer["early_stop"]
    return state[KEY_BATCH] == 0 and (state[KEY_EPOCH] >= trainer["epochs"] or bool(early_stop))


def read_trial(sweep: Sweep, trial: str, values: dict[str, Any], tune_status: str, error: str = "") -> TrialRecord:
    """A trial's record from its run folder and Tune's status (TERMINATED, ERROR, PENDING, RUNNING, PAUSED)."""
    from trainer.checkpoint import KEY_BEST_RESULT, KEY_EPOCH, LAST_NAME, load_checkpoint

    run = sweep.run_folder(trial, values)
    last = run.checkpoint_dir / LAST_NAME
    state = load_checkpoint(last).state if last.is_file() else None
    if tune_status == "ERROR":
        status = "error"
    elif tune_status != "TERMINATED":
        status = "unfinished"
    else:
        status = "finished" if state is not None and run_is_finished(state) else "stopped"
    epochs = state[KEY_EPOCH] if state is not None else 0
    best = state[KEY_BEST_RESULT] if state is not None else None
    return TrialRecord(trial, values, status, epochs, best, run.checkpoint_dir, error)


def last_results(run: RunFolder, keys: list[str]) -> dict[str, float]:
    """The last epoch's results as metrics.csv holds them (`keys`: the result columns, without lr and timings)."""
    with (run.log_dir / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {k: int(rows[-1][k]) if k == "epoch" else float(rows[-1][k]) for k in keys if rows[-1].get(k, "") != ""}


def remove_unstarted_run(run: RunFolder) -> None:
    """Remove the folders of a trial's run stopped before its first checkpoint, so that it starts again."""
    if any(run.checkpoint_dir.glob("*.pth")):
        raise ConfigError(f"{run.checkpoint_dir}: has checkpoints but no last.pth; remove the folder to rerun it")
    shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
    shutil.rmtree(run.log_dir, ignore_errors=True)


def ranked(records: list[TrialRecord], mode: str, metric: str) -> list[TrialRecord]:
    """The trials with a result, best first (of equal ones, the first trial)."""
    sign = -1 if mode == "max" else 1
    scored = [r for r in records if r.best_value(metric) is not None]
    return sorted(scored, key=lambda r: (sign * r.best_value(metric), r.trial))


def write_trials_csv(records: list[TrialRecord], sweep: Sweep, path: Path) -> None:
    metric = sweep.monitor[1]
    fields = ["trial", *(d.key for d in sweep.space), "status", "epochs", f"best_{metric}", "best_epoch"]
    fields += ["run_folder", "error"]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for r in sorted(records, key=lambda r: r.trial):
            best = r.best or {}
            values = [csv_value(r.values.get(d.key)) for d in sweep.space]
            row = [r.trial, *values, r.status, r.epochs, best.get(metric, ""), best.get("epoch", "")]
            writer.writerow([*row, r.run_folder, r.error])
    tmp.replace(path)


def csv_value(value: Any) -> Any:
    """A drawn value in a CSV cell: numbers and strings as they are, lists and objects as JSON."""
    value = plain(value)
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else value


def best_summary(best: TrialRecord, sweep: Sweep) -> dict[str, Any]:
    """best.json: the best trial, its monitored value, its values, its checkpoint and its whole config."""
    from trainer.checkpoint import BEST_NAME as BEST_CHECKPOINT

    mode, metric = sweep.monitor
    checkpoint = best.run_folder / BEST_CHECKPOINT
    return {
        "trial": best.trial,
        "status": best.status,
        "monitor": f"{mode} {metric}",
        "value": best.best_value(metric),
        "epoch": best.best["epoch"] if best.best else None,
        "values": {k: plain(v) for k, v in best.values.items()},
        "metrics": best.best,
        "run_folder": str(best.run_folder),
        "checkpoint": str(checkpoint),
        "test_command": f"python test.py --resume {checkpoint}",
        "config": read_json(best.run_folder / "config.json"),
    }


def write_outputs(records: list[TrialRecord], sweep: Sweep) -> TrialRecord | None:
    """trials.csv, and best.json for the best trial (none before any trial has finished an epoch)."""
    write_trials_csv(records, sweep, sweep.folder / TRIALS_NAME)
    order = ranked(records, *sweep.monitor)
    if order:
        write_json(best_summary(order[0], sweep), sweep.folder / BEST_NAME)
    return order[0] if order else None


def format_value(value: Any) -> str:
    value = plain(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def top_table(records: list[TrialRecord], sweep: Sweep, top: int = 5) -> str:
    """The best trials as a text table, best first."""
    metric = sweep.monitor[1]
    header = ["trial", "status", "epochs", f"best {metric}", *(d.key for d in sweep.space)]
    rows = [header]
    for r in ranked(records, *sweep.monitor)[:top]:
        values = [format_value(r.values[d.key]) for d in sweep.space]
        rows.append([r.trial, r.status, str(r.epochs), format_value(r.best_value(metric)), *values])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def previously_stopped(sweep: Sweep) -> set[str]:
    """The trials an earlier trials.csv of this sweep already called stopped."""
    path = sweep.folder / TRIALS_NAME
    if not path.is_file():
        return set()
    with path.open(newline="") as handle:
        return {row["trial"] for row in csv.DictReader(handle) if row.get("status") == "stopped"}


def write_hparams_of_stopped(records: list[TrialRecord], sweep: Sweep, already: set[str]) -> None:
    """A run writes its config and results to TensorBoard's HPARAMS tab when its training ends, which a trial
    stopped by the scheduler never reaches: write them for it here, once, so that it is compared with the rest."""
    from logger.visualization import Writer, write_hparams
    from trainer.checkpoint import LAST_NAME

    for record in records:
        if record.status != "stopped" or record.best is None or record.trial in already:
            continue
        config = read_json(record.run_folder / "config.json")
        if not config["tensorboard"]:
            continue
        run = RunFolder.of_checkpoint(record.run_folder / LAST_NAME)
        writer = Writer(run.log_dir)
        write_hparams(writer, config, {"last": last_results(run, list(record.best)), "best": record.best})
        writer.close()
