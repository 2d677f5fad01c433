"""The folders of one run: where its checkpoints and its logs go, made only once everything else is valid.

    <save_dir>/models/<name>/<run_id>/   config.json, last.pth, model_best.pth, checkpoint-epoch<N>.pth
    <save_dir>/log/<name>/<run_id>/      info.log, metrics.csv, TensorBoard events

A fold of a cross-validation (the cv feature) is a run inside the cross-validation's folder: its run id is
<run_id>/fold_<i>. A new run never reuses a folder. A resumed run continues in the folder its checkpoint lies in: the
location of the file decides, never a field inside it.
"""

import contextlib
import dataclasses
import fcntl
import os
import re
import shlex
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from utils.errors import ConfigError

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
FOLD_PATTERN = re.compile(r"^fold_[0-9]{1,3}$")  # a fold of a cross-validation, one level below its folder
LAST_NAME, BEST_NAME = "last.pth", "model_best.pth"  # a run's checkpoints: its last state and its best epoch's
FOLDS_FILE = "folds.json"  # what makes a run folder a cross-validation's: the fold of each sample, by id
PERIODIC_PATTERN = re.compile(r"^checkpoint-epoch(\d+)\.pth$")  # every trainer.save_period epochs


@dataclass(frozen=True)
class RunFolder:
    run_id: str
    checkpoint_dir: Path
    log_dir: Path
    # Rank 0's hold on <log_dir>/.lock while it trains: a second command on the same run is refused.
    lock: IO | None = dataclasses.field(default=None, compare=False, repr=False)

    def remove_unused(self) -> None:
        """Remove the folders of a new run stopped before its first checkpoint: there is nothing to resume,
        and its run id stays free. Only the process that made them (the lock holder) does."""
        if self.lock is None or any(self.checkpoint_dir.glob("*.pth")):
            return
        self.release()
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def release(self) -> None:
        """Let another command use the run folder (at the end of training; process exit does it too)."""
        if self.lock is not None and not self.lock.closed:
            (self.log_dir / ".lock").unlink(missing_ok=True)  # while still held: nobody else holds this file
            self.lock.close()

    @classmethod
    def for_new_run(cls, save_dir: str | Path, name: str, run_id: str) -> "RunFolder":
        root = Path(save_dir)
        return cls(run_id, root / "models" / name / run_id, root / "log" / name / run_id)

    @classmethod
    def of_checkpoint(cls, checkpoint_path: Path) -> "RunFolder":
        """The run folder a checkpoint lies in; its log folder is the matching one under <save_dir>/log."""
        checkpoint_dir = checkpoint_path.parent
        if len(checkpoint_dir.parts) < 4:  # a relative path such as <run_id>/last.pth: look at the whole path
            checkpoint_dir = checkpoint_dir.absolute()
        if FOLD_PATTERN.fullmatch(checkpoint_dir.name) and checkpoint_dir.parents[2].name == "models":
            root, name = checkpoint_dir.parents[3], checkpoint_dir.parents[1].name
            run_id = f"{checkpoint_dir.parent.name}/{checkpoint_dir.name}"
            return cls(run_id, checkpoint_dir, root / "log" / name / run_id)
        if len(checkpoint_dir.parents) < 3 or checkpoint_dir.parent.parent.name != "models":
            raise ConfigError(
                f"{checkpoint_path}: a run resumes in its own folder, <save_dir>/models/<name>/<run_id>/, and this "
                "checkpoint is not in one; add -c CONFIG to start a new run from its weights instead"
            )
        root, name, run_id = checkpoint_dir.parents[2], checkpoint_dir.parent.name, checkpoint_dir.name
        return cls(run_id, checkpoint_dir, root / "log" / name / run_id)

    def exists(self) -> bool:
        return self.checkpoint_dir.exists() or self.log_dir.exists()


def remove_oldest_periodic(folder: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoint-epoch<N>.pth files of a run folder; delete the older ones."""
    periodic = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := PERIODIC_PATTERN.match(p.name)))
    for _, old in periodic[:-keep]:
        old.unlink()


def is_cross_validation(path: str | Path) -> bool:
    """Whether `path` is a cross-validation's folder (the cv feature's: folds.json and a run folder per fold)."""
    return (Path(path) / FOLDS_FILE).is_file()


def cross_validation_of(checkpoint_path: Path) -> Path | None:
    """The cross-validation's folder a checkpoint is a fold of, or None."""
    folder = checkpoint_path.parent
    return folder.parent if FOLD_PATTERN.fullmatch(folder.name) and is_cross_validation(folder.parent) else None


def check_not_a_fold(checkpoint_path: Path) -> None:
    """A fold's checkpoint resumes with its cross-validation, which knows the fold's data: not on its own."""
    if (folder := cross_validation_of(checkpoint_path)) is not None:
        raise ConfigError(
            f"{checkpoint_path}: a fold of the cross-validation in {folder}; continue it with "
            f"python train.py --resume {shlex.quote(str(folder))}"
        )


def check_run_id(config: dict, run_id: str | None) -> None:
    """Refuse a --run-id that is not a plain folder name or whose folder exists (before any data is read)."""
    if run_id is None:
        return
    name, _, fold = run_id.partition("/")  # <run_id>/fold_<i>: a fold of a cross-validation
    if not RUN_ID_PATTERN.fullmatch(name) or (fold and not FOLD_PATTERN.fullmatch(fold)):
        raise ConfigError(f"--run-id {run_id!r}: expected a single folder name (letters, digits, '_', '-', '.')")
    run = RunFolder.for_new_run(config["save_dir"], config["name"], run_id)
    if run.checkpoint_dir.exists():
        raise ConfigError(
            f"--run-id {run_id}: {run.checkpoint_dir} already exists; "
            f"choose another id, or resume it with --resume {shlex.quote(str(run.checkpoint_dir))}"
        )
    if run.log_dir.exists():  # the logs of a run whose checkpoints are gone: nothing to resume
        raise ConfigError(f"--run-id {run_id}: {run.log_dir} already exists; choose another id, or remove it")


def create_run_folder(config: dict, run_id: str | None = None, resume_from: Path | None = None) -> RunFolder:
    """Make (or, resuming from `resume_from`, adopt) the run's folders (its config is saved there once its writer
    has started: `start_run_logging`).

    Under DDP rank 0 decides and creates; every rank returns the same RunFolder (or raises the same error).
    """
    from utils.distributed import broadcast_object, is_main_process

    outcome: tuple[RunFolder | None, str] = (None, "")
    own = None
    if is_main_process():
        try:
            own = _make(config, run_id, resume_from)
            outcome = (dataclasses.replace(own, lock=None), "")
        except ConfigError as e:
            outcome = (None, str(e))
    run, error = broadcast_object(outcome)
    if error:
        raise ConfigError(error)
    return own or run


@contextlib.contextmanager
def run_folder(config: dict, run_id: str | None = None, resume_from: Path | None = None) -> Iterator[RunFolder]:
    """`create_run_folder` for the block that trains in it: a new run stopped by Ctrl-C before its first
    checkpoint (before the trainer took Ctrl-C over) leaves no empty folder behind."""
    folder = create_run_folder(config, run_id, resume_from)
    try:
        yield folder
    except KeyboardInterrupt:
        if resume_from is None:
            folder.remove_unused()
        raise


def _make(config: dict, run_id: str | None, resume_from: Path | None) -> RunFolder:
    if resume_from is not None:
        run = RunFolder.of_checkpoint(resume_from)
        _mkdir(run.log_dir, exist_ok=True)
        run = dataclasses.replace(run, lock=_lock(run))
        for orphan in run.checkpoint_dir.glob(".*.tmp"):  # left by a save that was killed
            orphan.unlink()
    else:
        check_run_id(config, run_id)
        # Two runs started in the same second get <time> and <time>_1.
        base = run_id or datetime.now().strftime("%m%d_%H%M%S")
        for attempt in range(1000):
            run = RunFolder.for_new_run(
                config["save_dir"], config["name"], base if attempt == 0 else f"{base}_{attempt}"
            )
            if run.exists():
                continue
            made = _missing_folders(run.checkpoint_dir) + _missing_folders(run.log_dir)
            try:
                run.checkpoint_dir.mkdir(parents=True, exist_ok=False)
            except FileExistsError:  # another run took it a moment ago
                continue
            except OSError as e:
                _remove(made)
                raise ConfigError(f"save_dir: cannot create {run.checkpoint_dir} ({e.strerror or e})") from None
            try:
                _mkdir(run.log_dir, exist_ok=False)
                run = dataclasses.replace(run, lock=_lock(run))
            except ConfigError:
                _remove(made)  # leave nothing behind: these folders are empty and ours
                raise
            break
    return run


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove(folders: list[Path]) -> None:
    """Remove the folders a failed start made (deepest first; a folder something else wrote into stays)."""
    for folder in sorted(set(folders), key=lambda f: len(f.parts), reverse=True):
        with contextlib.suppress(OSError):
            (folder / ".lock").unlink(missing_ok=True)
            folder.rmdir()


def _lock(run: RunFolder) -> IO:
    """Hold <log_dir>/.lock (released when the process ends, however it ends), or say who holds it."""
    try:
        handle = (run.log_dir / ".lock").open("a+")
    except OSError as e:
        raise ConfigError(f"save_dir: cannot write in {run.log_dir} ({e.strerror or e})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(
            f"{run.checkpoint_dir}: the run is in use by {holder}; wait for it to finish, or stop it first"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"train.py, pid {os.getpid()} on {socket.gethostname()}")
    handle.flush()
    return handle


def _mkdir(folder: Path, exist_ok: bool) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=exist_ok)
    except OSError as e:
        raise ConfigError(f"save_dir: cannot create {folder} ({e.strerror or e})") from None
