"""Console and info.log: set up from logger_config.json, a header that says what ran, a summary at the end."""

import json
import logging
import logging.config
import logging.handlers
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from logger.run_folder import BEST_NAME, LAST_NAME, RunFolder
from logger.visualization import Writer, make_writer
from utils.distributed import is_main_process
from utils.errors import ConfigError
from utils.monitor import Monitor
from utils.util import read_json, write_json

CONFIG_PATH = Path(__file__).resolve().parent / "logger_config.json"
LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


def setup_logging(log_dir: Path | None, verbosity: int = 2, console: str = "stdout") -> None:
    """Configure the console and `<log_dir>/info.log` from logger_config.json.

    With `log_dir=None` (before a run folder exists) the console is set up, and the messages are also kept
    in memory until `start_run_logging` writes them to info.log. `verbosity` 0, 1 or 2 shows warnings,
    info or debug messages.
    """
    config = read_json(CONFIG_PATH)
    handlers = config["handlers"]
    for name, handler in list(handlers.items()):
        if "filename" in handler:
            if log_dir is None:
                del handlers[name]
                config["root"]["handlers"].remove(name)
            else:
                handler["filename"] = str(log_dir / handler["filename"])
    config["root"]["level"] = LOG_LEVELS[verbosity]
    handlers["console"]["stream"] = f"ext://sys.{console}"  # "stderr" where stdout holds a result (test.py --out -)
    logging.config.dictConfig(config)
    # A log line that cannot be written (a full disk) must not print a traceback of its own, once per line:
    # the save that fails on the same disk ends the run with one line.
    logging.raiseExceptions = False
    # Library warnings (a zero-size layer, a deprecated argument) become log lines: on the console and in
    # info.log like everything else, never extra lines on stderr, which holds only the one error line.
    logging.captureWarnings(True)
    if log_dir is None:
        early = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1, flushOnClose=False)
        early.setLevel(logging.INFO)
        logging.getLogger().addHandler(early)


def start_run_logging(run: RunFolder, config: dict, run_id: str | None = None) -> Writer:
    """Start the run's writer (a tracker such as W&B going on with the run `run_id`, when resuming one), save the
    config in the run folder, and from here on give info.log what the console gets, after a header.

    Only rank 0 writes; other ranks get a Writer with no backend and touch nothing.
    """
    if not is_main_process():
        return Writer()
    try:  # first: a tracker that refuses to start (W&B without an API key) does so before anything is written
        writer = make_writer(run.log_dir, config, run_id)
    except ConfigError:
        run.remove_unused()  # a new run leaves no folder behind
        run.release()  # a resumed run's folder is left as it was
        raise
    write_json(config, run.checkpoint_dir / "config.json")  # the run's config, with this command's overrides
    root = logging.getLogger()
    early = [h for h in root.handlers if isinstance(h, logging.handlers.MemoryHandler)]
    setup_logging(run.log_dir, config["verbosity"])
    log_run_header(config)
    # What was said before the folder existed (devices, weights loaded) follows the header in info.log.
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    for handler in early:
        for record in handler.buffer:
            for file in files:
                if record.levelno >= file.level:
                    file.handle(record)
        handler.close()
    return writer


def log_run_header(config: dict) -> None:
    """What info.log starts with: the command, the versions, the code's commit, the threads and the config."""
    import numpy
    import torch

    logger = logging.getLogger("train")
    logger.info("Command: %s", shlex.join([sys.executable, *sys.argv]))  # quoted: safe to paste into a shell
    cuda = torch.version.cuda if torch.cuda.is_available() else "not available"
    logger.info(
        "Versions: Python %s, torch %s, numpy %s; CUDA %s",
        platform.python_version(), torch.__version__, numpy.__version__, cuda,
    )  # fmt: skip
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = ""
    logger.info("Code: %s", f"git commit {commit}" if commit else "not a git checkout")
    logger.info(
        "Seed %d; deterministic %s; %d CPU thread(s) for torch (num_threads %s)",
        config["seed"], config["deterministic"], torch.get_num_threads(), config["num_threads"],
    )  # fmt: skip
    logger.info("Config:\n%s", json.dumps(config, indent=4))


def log_summary(result: dict[str, Any], monitor: Monitor, config: dict, checkpoint_dir: Path | None) -> None:
    """The end of a run in a few lines a user can act on: the best epoch, where the run is, how to test it."""
    logger = logging.getLogger("train")
    last, best = result["last"], result["best"]
    if checkpoint_dir is None:
        logger.info("Dry run: one training and one validation batch went through the real step; nothing was written.")
        logger.info("%s", json.dumps(last, indent=4))
        return
    if best is not None and monitor.mode != "off":  # (a damaged checkpoint's config may have lost its monitor)
        metric = monitor.metric
        logger.info("Best: epoch %d, %s %.6g (monitor: %s)", best["epoch"], metric, best[metric], monitor.text)
        checkpoint = checkpoint_dir / BEST_NAME
    else:
        logger.info("Last: epoch %d (monitor: %s, so no best checkpoint)", last["epoch"], monitor.text)
        checkpoint = checkpoint_dir / LAST_NAME
    logger.info("Run folder: %s", checkpoint_dir)
    logger.info("Checkpoint: %s", checkpoint)
    if (config.get("cross_validation") or {}).get("fold"):  # a fold: its cross-validation says what comes next
        return
    resume = shlex.quote(str(checkpoint))  # a command to paste into a shell, whatever the folder's name
    if config["data_loader"].get("args", {}).get("test_split") == 0:  # nothing held out: the validation split
        logger.info("Evaluate it on the validation split: python test.py --resume %s --split valid", resume)
    else:
        logger.info("Evaluate it on the test split: python test.py --resume %s", resume)
