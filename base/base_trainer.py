"""The epoch loop and everything around it: monitoring, early stopping, checkpoints, resume.

A subclass implements `_train_epoch`; this class owns the fixed lifecycle:

    for each epoch: train (and validate) -> log -> monitor -> checkpoints -> early stop?
"""

import abc
import contextlib
import csv
import logging
import math
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from base.base_data_loader import worker_failures_as_data_errors
from logger.visualization import Writer
from utils.checkpoint import (
    BEST_NAME,
    FORMAT_VERSION,
    KEY_ARCH,
    KEY_BATCH,
    KEY_BEST_RESULT,
    KEY_CONFIG,
    KEY_EPOCH,
    KEY_FORMAT,
    KEY_MODEL,
    KEY_MONITOR_BEST,
    KEY_NOT_IMPROVED,
    KEY_OPTIMIZER,
    KEY_OPTIMIZER_TYPE,
    KEY_RNG,
    KEY_RUN_ID,
    KEY_SCHEDULER,
    LAST_NAME,
    capture_rng_state,
    restore_rng_state,
    save_checkpoint,
)
from utils.distributed import agree_max, is_distributed, is_main_process
from utils.errors import CallbackError, ConfigError, TrainingInterrupted

PERIODIC_PATTERN = re.compile(r"^checkpoint-epoch(\d+)\.pth$")


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"epochs": 3}} -> {"trainer.epochs": 3}; lists and nulls become text (TensorBoard's hparams
    take numbers, strings and booleans only)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel, whose state_dict has no `module.` prefix."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


class BaseTrainer(abc.ABC):
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any,
        *,
        config: dict,
        device: torch.device,
        checkpoint_dir: Path,
        writer: Writer,
        run_id: str = "",
        epochs: int,
        save_period: int = 1,
        keep_last: int | None = None,
        monitor: str = "off",
        min_delta: float = 0.0,
        early_stop: int = 0,
        callbacks: list | None = None,
        metrics_file: Path | None = None,
    ) -> None:
        self.logger = logging.getLogger("trainer")
        self.callbacks = callbacks or []
        self.metrics_file = metrics_file  # one CSV row per epoch, beside info.log
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.config = config
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        self.writer = writer
        self.run_id = run_id
        self.epochs = epochs
        self.save_period = save_period
        self.keep_last = keep_last
        self.min_delta = min_delta
        self.early_stop = early_stop

        self.monitor = monitor
        self.mnt_mode, self.mnt_metric = ("off", "") if monitor == "off" else monitor.split()
        self.mnt_best = {"min": math.inf, "max": -math.inf, "off": 0.0}[self.mnt_mode]
        self.not_improved_count = 0
        self.best_result: dict[str, float] | None = None
        self.start_epoch = 1
        self.start_batch = 0  # > 0 when resuming in the middle of start_epoch
        self.is_main = is_main_process()
        self.stop_signal: int | None = None  # set by SIGINT / SIGTERM; training stops after the current step

    @abc.abstractmethod
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (and validate); return its per-sample averages, validation keys prefixed `val_`."""

    def train(self) -> dict[str, Any]:
        """Run the remaining epochs; return {"last": last epoch's results, "best": best epoch's or None}."""
        with self._stop_on_signals(), worker_failures_as_data_errors(self.logger):
            return self._train()

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """Turn SIGINT and SIGTERM into a request to stop after the current step; a second one acts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def request_stop(signum: int, frame: Any) -> None:
            self.stop_signal = signum
            signal.signal(signum, previous[signum])

        for s in previous:
            signal.signal(s, request_stop)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop_agreed(self, share: bool) -> bool:
        """Whether a stop signal arrived. Under DDP every rank must stop at the same step, so the flag is
        shared (one small collective) only where `share` is true: every few steps and at epoch ends."""
        if not is_distributed():
            return self.stop_signal is not None
        if not share:
            return False
        agreed = agree_max(self.stop_signal or 0, self.device)
        self.stop_signal = agreed or None
        return agreed > 0

    def _interrupt(self, epoch: int, batch: int) -> None:
        """Stop with the resume command; mid-epoch (`batch` > 0) the exact state is saved to last.pth first."""
        path = self.checkpoint_dir / LAST_NAME
        if batch:
            self._save(path, epoch, batch)
        where = f"epoch {epoch} after batch {batch}" if batch else f"the end of epoch {epoch}"
        raise TrainingInterrupted(
            f"{signal.Signals(self.stop_signal).name} received; stopped at {where}, state saved to {path}; "
            f"resume with: python train.py --resume {path}",
            self.stop_signal,
        )

    def _callback(self, method: str, *args: Any) -> None:
        """Call `method` of every callback in order; a failure ends the run with one line."""
        for callback in self.callbacks:
            try:
                getattr(callback, method)(self, *args)
            except Exception as e:
                self.logger.exception("Callback %s.%s failed", type(callback).__name__, method)
                raise CallbackError(
                    f"callback {type(callback).__name__}.{method} failed: {type(e).__name__}: {e} "
                    "(the traceback is in info.log)"
                ) from None

    def _train(self) -> dict[str, Any]:
        last: dict[str, float] = {}
        self._callback("on_train_start")
        for epoch in range(self.start_epoch, self.epochs + 1):
            result = self._train_epoch(epoch)
            self.start_batch = 0
            last = {"epoch": epoch, **result}
            for key, value in last.items():
                self.logger.info("    %-15s: %s", key, value)
            self._callback("on_epoch_end", epoch, last)
            self._append_metrics_row(last)

            improved = self._update_monitor(last)
            if improved:
                self.best_result = last
            self.start_epoch = epoch + 1
            self._save_epoch(epoch, periodic=epoch % self.save_period == 0, best=improved)
            if self.early_stop and self.not_improved_count >= self.early_stop:
                self.logger.info(
                    "Validation performance didn't improve for %d epochs. Training stops.", self.early_stop
                )
                break
            if epoch < self.epochs and self._stop_agreed(share=True):
                self._interrupt(epoch, 0)
        outcome = {"last": last, "best": self.best_result}
        self._write_hparams(outcome)
        self._callback("on_train_end", outcome)
        self.writer.flush()
        return outcome

    def _append_metrics_row(self, row: dict[str, float]) -> None:
        """metrics.csv: one row per epoch; a resumed run keeps the header and drops rows it will redo."""
        if self.metrics_file is None or not self.is_main:
            return
        fields = list(row)
        rows: list[dict[str, str]] = []
        if self.metrics_file.exists():
            with self.metrics_file.open(newline="") as handle:
                reader = csv.DictReader(handle)
                fields = list(reader.fieldnames or fields)
                rows = [r for r in reader if r.get("epoch", "").isdigit() and int(r["epoch"]) < row["epoch"]]
        fields += [k for k in row if k not in fields]
        with self.metrics_file.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
            writer.writerow(row)

    def _write_hparams(self, outcome: dict[str, Any]) -> None:
        """The flattened config beside the final and best results, for TensorBoard's HPARAMS tab."""
        if not outcome["last"]:
            return
        results = {f"hparam/last_{k}": v for k, v in outcome["last"].items() if k != "epoch"}
        if outcome["best"]:
            results.update({f"hparam/best_{k}": v for k, v in outcome["best"].items() if k != "epoch"})
        self.writer.add_hparams(flatten_config(self.config), results)

    def _update_monitor(self, result: dict[str, float]) -> bool:
        """Whether the monitored metric improved strictly (by more than min_delta); counts epochs without."""
        if self.mnt_mode == "off":
            return False
        if self.mnt_metric not in result:
            raise ConfigError(
                f"trainer.monitor: metric '{self.mnt_metric}' was not logged (logged: {', '.join(result)}); "
                "check validation_split or the monitor"
            )
        value = result[self.mnt_metric]
        if self.mnt_mode == "min":
            improved = value < self.mnt_best - self.min_delta
        else:
            improved = value > self.mnt_best + self.min_delta
        if improved:
            self.mnt_best = value
            self.not_improved_count = 0
        else:
            self.not_improved_count += 1
        return improved

    def state_dict(self, epoch: int, batch: int = 0) -> dict[str, Any]:
        """The complete training state after `batch` batches of `epoch` (0: the whole epoch), as a plain dict."""
        model = unwrap_model(self.model)
        return {
            KEY_FORMAT: FORMAT_VERSION,
            KEY_ARCH: type(model).__name__,
            KEY_OPTIMIZER_TYPE: type(self.optimizer).__name__,
            KEY_EPOCH: epoch,
            KEY_BATCH: batch,
            KEY_RUN_ID: self.run_id,
            KEY_MODEL: model.state_dict(),
            KEY_OPTIMIZER: self.optimizer.state_dict(),
            KEY_SCHEDULER: self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            KEY_MONITOR_BEST: self.mnt_best,
            KEY_NOT_IMPROVED: self.not_improved_count,
            KEY_BEST_RESULT: self.best_result,
            KEY_RNG: capture_rng_state(),
            KEY_CONFIG: self.config,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: the next batch, with optimizer, scheduler, monitor and RNG restored.

        The model weights are loaded by the caller before the optimizer is built.
        """
        self.optimizer.load_state_dict(state[KEY_OPTIMIZER])
        if self.lr_scheduler is not None and state.get(KEY_SCHEDULER) is not None:
            self.lr_scheduler.load_state_dict(state[KEY_SCHEDULER])
        self.start_batch = state.get(KEY_BATCH, 0)
        self.start_epoch = state[KEY_EPOCH] + (0 if self.start_batch else 1)
        self.mnt_best = state[KEY_MONITOR_BEST]
        self.not_improved_count = state[KEY_NOT_IMPROVED]
        self.best_result = state.get(KEY_BEST_RESULT)
        restore_rng_state(state[KEY_RNG])
        self.logger.info("Resuming: training continues at epoch %d, batch %d.", self.start_epoch, self.start_batch + 1)

    def _save(self, path: Path, epoch: int, batch: int = 0) -> None:
        """Write a checkpoint (rank 0 only: every rank holds the same state)."""
        if self.is_main:
            save_checkpoint(self.state_dict(epoch, batch), path)

    def _save_epoch(self, epoch: int, periodic: bool, best: bool) -> None:
        """The end-of-epoch checkpoints: last.pth always, checkpoint-epoch<N>.pth every save_period epochs,
        model_best.pth on improvement -- one state, serialized once."""
        if not self.is_main:
            return
        paths = [self.checkpoint_dir / LAST_NAME]
        if periodic:
            paths.append(self.checkpoint_dir / f"checkpoint-epoch{epoch}.pth")
            self.logger.info("Saving checkpoint: %s ...", paths[-1])
        if best:
            paths.append(self.checkpoint_dir / BEST_NAME)
            self.logger.info("Saving current best: %s ...", BEST_NAME)
        save_checkpoint(self.state_dict(epoch), *paths)
        if periodic and self.keep_last is not None:
            periodic_files = sorted(
                (int(m.group(1)), p) for p in self.checkpoint_dir.iterdir() if (m := PERIODIC_PATTERN.match(p.name))
            )
            for _, old in periodic_files[: -self.keep_last]:
                old.unlink()
