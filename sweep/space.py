"""A sweep without Ray (imported later, once the space is checked): its space, checked as overrides are, its options,
the signatures of Ray's state, and what it leaves (trials.csv, best.json) read from each trial's run folder."""

import contextlib
import copy
import hmac
import json
import os
import secrets
import shlex
import stat
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from logger.run_folder import RunFolder
from parse_config import ConfigParser, apply_override, move_victoresque_keys, read_config
from utils.errors import ConfigError, did_you_mean, quoted, shown
from utils.util import cache_home, read_json, write_csv, write_json, written_atomically

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice", "grid")
SEARCHES = ("random", "optuna")  # random: grid values in turn, the other distributions drawn at random
SCHEDULERS = ("fifo", "asha")  # fifo: every trial runs all its epochs
# The options' allowed values, checked alike on tune.py's command line and in a sweep.json read back.
LIMITS = {
    "samples": (lambda v: v >= 1, "at least 1"),
    "grace_period": (lambda v: v >= 1, "at least 1 epoch"),
    "reduction_factor": (lambda v: v > 1, "more than 1"),
    "cpus_per_trial": (lambda v: v > 0, "above 0"),
    "gpus_per_trial": (lambda v: v >= 0, "0 or more"),
}
STATUSES = ("finished", "stopped", "error", "unfinished")  # stopped: by the scheduler
SET_BY_SWEEP = {  # keys a space cannot vary, and why
    "save_dir": "the sweep puts every trial's run inside its own folder",
    "trainer.monitor": "trials are compared on one monitored metric",
}
OPTIONS_NAME, CONFIG_NAME, SPACE_NAME = "sweep.json", "config.json", "space.json"
TRIALS_NAME, BEST_NAME, RAY_FOLDER, SIGNATURES_NAME = "trials.csv", "best.json", "ray", "ray_signatures.json"


@dataclass(frozen=True)
class Dimension:
    key: str
    kind: str  # one of DISTRIBUTIONS
    values: tuple  # (low, high) of a range; the values of choice and grid

    def corners(self) -> list:
        """The values checked before the sweep starts: both ends of a range, every value of a list."""
        return [self.values[0], self.values[1] - 1] if self.kind == "randint" else list(self.values)


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
    two = isinstance(values, list) and len(values) == 2  # of finite numbers: read_json refuses NaN and Infinity
    if not (two and all(isinstance(v, int if whole else (int, float)) and not isinstance(v, bool) for v in values)):
        raise ConfigError(
            f"{key}: {kind} takes [low, high], two {'whole ' if whole else ''}numbers; found {shown(values)}"
        )
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
        example = '{"optimizer.args.lr": {"loguniform": [0.0001, 0.1]}}'
        raise ConfigError(f"{path}: expected an object of config keys and distributions, e.g. {example}")
    dimensions, errors = [], []
    for key, spec in space.items():
        try:
            dimensions.append(parse_dimension(key, spec))
        except ConfigError as e:
            errors.append(str(e))
    if errors:
        raise ConfigError(f"{path}: {'; '.join(errors)}")
    return dimensions


def plain(value: Any) -> Any:
    """A drawn value as a JSON value: Tune draws whole numbers as NumPy integers."""
    return value.item() if hasattr(value, "item") else value


def as_overrides(values: dict[str, Any]) -> list[str]:
    """Drawn values as command-line overrides, `key=<JSON>`: the path every config change takes."""
    return [f"{key}={json.dumps(plain(value))}" for key, value in values.items()]


def check_space(space: list[Dimension], space_path: str | Path, config_path: str | Path, overrides: list[str]) -> dict:
    """Check a space against a config before anything starts; return the validated base config.

    First every key as an override on the config as read (cheap: no torch). Then a few drawn configs through
    the whole validation: the first value of every key together, then each other corner of a key in turn.
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
        from trainer.options import TrainerOptions

        mode, metric = TrainerOptions.of(self.config).monitor.split()
        return mode, metric

    def save(self) -> None:
        options = {k: v for k, v in asdict(self).items() if k not in ("folder", "config", "space")}
        write_json(options, self.folder / OPTIONS_NAME)
        write_json(self.config, self.folder / CONFIG_NAME)
        write_json({d.key: {d.kind: list(d.values)} for d in self.space}, self.folder / SPACE_NAME)

    @classmethod
    def load(cls, folder: str | Path) -> "Sweep":
        folder = Path(folder)
        if not (folder / OPTIONS_NAME).is_file():
            raise ConfigError(f"{folder}: not a sweep folder (it has no {OPTIONS_NAME}); pass saved/sweeps/<name>/<id>")
        path, options = folder / OPTIONS_NAME, read_json(folder / OPTIONS_NAME)
        types = {f.name: f.type for f in fields(cls) if f.name not in ("folder", "config", "space")}
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
            elif key in LIMITS and not LIMITS[key][0](value):
                errors.append(f"{key}: expected {LIMITS[key][1]}, found {shown(value)}")
        if errors:
            raise ConfigError(f"{path}: {'; '.join(errors)}")
        config = ConfigParser.load(folder / CONFIG_NAME).config
        return cls(folder.resolve(), config, read_space(folder / SPACE_NAME), **options)

    def trial_overrides(self, values: dict[str, Any]) -> list[str]:
        """A trial's overrides of the base config: its drawn values, and its run inside the sweep's folder."""
        return [f"save_dir={json.dumps(str(self.folder))}", *as_overrides(values)]

    def run_folder(self, trial: str, values: dict[str, Any]) -> RunFolder:
        return RunFolder.for_new_run(self.folder, values.get("name", self.config["name"]), trial)


# Ray Tune's state in <sweep>/ray is pickles (tuner.pkl, the searcher's state, the trials inside
# experiment_state-*.json), and unpickling runs whatever code a pickle names. A sweep folder is data that people
# share, so --resume hands that state to Ray only when every file in it is as this machine signed it when the
# sweep stopped: an HMAC of each file by a key that stays in this user's cache, outside every sweep folder.


KEY_BYTES = 32


def state_key() -> bytes:
    """This machine's key for the signatures, made on first use (readable by this user only)."""
    path = cache_home() / "sweep_state.key"
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Whole when it appears; a key another sweep made meanwhile is kept.
            with (
                contextlib.suppress(FileExistsError),
                written_atomically(path, replace=False, permissions=0o600) as handle,
            ):
                handle.write(secrets.token_bytes(KEY_BYTES))
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):  # a link, a folder, a FIFO (whose read would wait for ever)
            raise ConfigError(
                f"{path}: the key that signs sweeps' Ray state is not a plain file; remove it (a new one is made)"
            )
        key = path.read_bytes()
    except OSError as e:
        raise ConfigError(
            f"{path}: cannot make or read the key that signs sweeps' Ray state ({e.strerror or e}); "
            "set XDG_CACHE_HOME to a folder of yours"
        ) from None
    # Whoever can read the key can sign a forged sweep folder, whose pickles --resume would then run.
    if os.name == "posix" and (info.st_uid != os.geteuid() or info.st_mode & 0o077):
        found = f"owner uid {info.st_uid}, mode {info.st_mode & 0o777:04o}"
        fix = "remove it (a new one is made)" + (" or chmod 600 it" if info.st_uid == os.geteuid() else "")
        raise ConfigError(f"{path}: the key that signs sweeps' Ray state must be yours and private ({found}); {fix}")
    if len(key) < KEY_BYTES:
        raise ConfigError(
            f"{path}: the key that signs sweeps' Ray state holds {len(key)} bytes, not {KEY_BYTES}: anyone could sign "
            "with it; remove it (a new one is made; sweeps signed with the old one cannot be resumed)"
        )
    return key


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


@dataclass(frozen=True)
class TrialRecord:
    trial: str  # its run id, trial_NNNN
    values: dict[str, Any]  # its drawn values
    status: str  # one of STATUSES
    epochs: int  # epochs its last.pth holds
    best: dict[str, Any] | None  # the results of its best epoch (by trainer.monitor), None before its first epoch
    run_folder: Path
    error: str = ""


def read_trial(sweep: Sweep, trial: str, values: dict[str, Any], ended: bool, error: str = "") -> TrialRecord:
    """A trial's record from its run folder; `ended`: Tune ended it (its run returned, or the scheduler stopped it)."""
    from logger.run_folder import LAST_NAME
    from trainer.checkpoint import KEY_BEST_RESULT, KEY_EPOCH, load_checkpoint, run_is_finished

    run = sweep.run_folder(trial, values)
    last = run.checkpoint_dir / LAST_NAME
    checkpoint = load_checkpoint(last) if last.is_file() else None
    state = checkpoint.state if checkpoint is not None else None
    finished = checkpoint is not None and run_is_finished(checkpoint)
    status = "error" if error else "unfinished" if not ended else "finished" if finished else "stopped"
    epochs, best = (state[KEY_EPOCH], state[KEY_BEST_RESULT]) if state is not None else (0, None)
    return TrialRecord(trial, values, status, epochs, best, run.checkpoint_dir, error)


def as_text(value: Any, digits: int | None = None) -> str:
    """A drawn value in a CSV cell or a table: strings as they are, floats to `digits` if given, the rest as JSON."""
    value = plain(value)
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}g}"
    return value if isinstance(value, str) else json.dumps(value)


def write_outputs(records: list[TrialRecord], sweep: Sweep, top: int = 5) -> TrialRecord | None:
    """Write trials.csv, and best.json once a trial has finished an epoch; print how many trials ended how and
    the best trials, best first (of equal ones, the first trial); return the best."""
    from logger.run_folder import BEST_NAME as BEST_CHECKPOINT

    mode, metric = sweep.monitor
    keys = [d.key for d in sweep.space]
    header = ["trial", *keys, "status", "epochs", f"best_{metric}", "best_epoch", "run_folder", "error"]
    rows = []
    for r in sorted(records, key=lambda r: r.trial):
        best = r.best or {}
        values = [as_text(r.values.get(key)) for key in keys]
        rows.append([r.trial, *values, r.status, r.epochs, best.get(metric, ""), best.get("epoch", ""), r.run_folder,
                     r.error])  # fmt: skip
    write_csv(header, rows, sweep.folder / TRIALS_NAME, raw=False, replace=True)
    counts = ", ".join(f"{sum(r.status == s for r in records)} {s}" for s in STATUSES)
    print(f"\n{len(records)} trials: {counts}; {sweep.folder / TRIALS_NAME}")
    sign = -1 if mode == "max" else 1
    order = sorted((r for r in records if r.best is not None), key=lambda r: (sign * r.best[metric], r.trial))
    if not order:
        return None
    rows = [["trial", "status", "epochs", f"best {metric}", *keys]]
    for r in order[:top]:
        values = [as_text(r.values[key], 4) for key in keys]
        rows.append([r.trial, r.status, str(r.epochs), as_text(r.best[metric], 4), *values])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    best, checkpoint = order[0], order[0].run_folder / BEST_CHECKPOINT
    print(f"Best: {best.trial}, {metric} {best.best[metric]:.6g} at epoch {best.best['epoch']} ({mode})")
    test_command = f"python test.py --resume {shlex.quote(str(checkpoint))}"
    print(f"Evaluate it on the test split: {test_command}")
    summary = {
        "trial": best.trial, "status": best.status, "monitor": f"{mode} {metric}", "value": best.best[metric],
        "epoch": best.best["epoch"], "values": {k: plain(v) for k, v in best.values.items()}, "metrics": best.best,
        "run_folder": str(best.run_folder), "checkpoint": str(checkpoint),
        "test_command": test_command, "config": read_json(best.run_folder / "config.json"),
    }  # fmt: skip
    write_json(summary, sweep.folder / BEST_NAME)
    return best
