"""The one exception family that entry points turn into a single error line (no traceback), and the
helpers that name keys, values and close matches in those lines."""

import contextlib
import difflib
import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent


class UserError(Exception):
    """A problem with what the user gave us (config, command line, files), not a bug in the code.

    Entry points print it as one line, `<label>: <message>`, and exit with `exit_code`.
    """

    label = "error"
    exit_code = 1


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C while native libraries load (torch): a KeyboardInterrupt raised inside their initialization
    can abort the interpreter (SIGABRT, exit -6) instead of reaching one_line_errors. It is raised after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def stop_requests(request_stop: Callable[[int], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call `request_stop(signum)` (the trainer stops after the current step, saving where it
    is); a second one acts at once, as the handler before does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        request_stop(signum)
        signal.signal(signum, previous[signum])

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, before)


@contextlib.contextmanager
def one_line_errors(interrupted: str) -> Iterator[None]:
    """How an entry script ends on bad input: a UserError prints its one line and exits with its code, and
    Ctrl-C before the trainer takes over signals prints `interrupted: <interrupted>` and exits with 130."""
    try:
        yield
    except UserError as e:
        line = f"{e.label}: {escaped(str(e))}"
        if not isinstance(e, TrainingInterrupted) or os.environ.get("RANK", "0") == "0":  # all ranks stop; one says it
            print(line, file=sys.stderr)
        record = logging.makeLogRecord({"name": "train", "levelno": logging.ERROR, "levelname": "ERROR", "msg": line})
        for file in [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]:
            file.handle(record)  # a run's info.log, once it started one, ends with why the run stopped
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `... --print-config | head`: the reader left; Python's own advice for this case
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


class ConfigError(UserError):
    """The configuration or the command line is invalid."""


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, unsafe or does not fit the configured model."""


class DataError(UserError):
    """Data files are missing or do not fit the configured split."""


class CallbackError(UserError):
    """A configured callback raised; its traceback goes to info.log."""


class OutOfMemory(UserError):
    """The device ran out of memory; the message says what to try."""

    @classmethod
    def advice(cls, epoch: int, batch_size: Any, device: Any) -> "OutOfMemory":
        import torch

        peak = ""
        if device.type == "cuda":
            peak = f", {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB at the peak on {device}"
        return cls(
            f"out of memory in epoch {epoch} with data_loader.args.batch_size {batch_size}{peak}; try a smaller "
            "batch_size with trainer.accumulate_steps to keep the batch per optimizer step, trainer.amp=true, or "
            "a smaller model (checkpoints of finished epochs are kept)"
        )


class TrainingInterrupted(UserError):
    """SIGINT or SIGTERM stopped training after a step; the exact state was saved."""

    label = "interrupted"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "killed by signal N"


# How a one-line message names things.

PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+\Z")  # \Z: "$" would let a trailing newline through


def escaped(text: str) -> str:
    """`text` on one line whatever it quotes: a newline or another control character shown as a repr shows it."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def describe_exception(error: BaseException) -> str:
    """ "TypeName: first line of the message (file.py, line N)", the line being the innermost one of the
    project's own code where there is one (a user's model or data code), else the innermost of all."""
    if isinstance(error, SyntaxError) and error.filename:  # where the code is, not the frame that imported it
        return f"{type(error).__name__}: {error.msg} ({Path(error.filename).name}, line {error.lineno})"
    everything = traceback.extract_tb(error.__traceback__)
    frames = everything[1:] or everything  # [0] is where it was caught
    own = [f for f in frames if Path(f.filename).resolve().is_relative_to(PROJECT) and f.filename != __file__]
    where = (own or frames)[-1] if frames else None
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    located = f" ({Path(where.filename).name}, line {where.lineno})" if where else ""
    return f"{type(error).__name__}: {text}{located}"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """ "; did you mean 'x'?" for the closest choice, or "" when none is close."""
    choices = list(choices)
    same_letters = [c for c in choices if c.lower() == word.lower()]
    close = same_letters or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def key_text(part: Any) -> str:
    """A key as it can be shown in a one-line message: plain names as they are, anything else JSON-quoted."""
    text = str(part)
    return text if PLAIN_KEY.match(text) else json.dumps(text)


def quoted(name: Any) -> str:
    """A name inside a message: 'plain' in single quotes, anything else JSON-quoted (so it stays one line)."""
    text = str(name)
    return f"'{text}'" if PLAIN_KEY.match(text) else json.dumps(text)


def dotted(path: Sequence[Any]) -> str:
    """["trainer", "epochs"] -> "trainer.epochs" (the whole config when the path is empty)."""
    return ".".join(key_text(p) for p in path) or "config"


def shown(value: Any) -> str:
    """A value as JSON, cut to 60 characters."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
