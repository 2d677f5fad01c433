"""The epoch loop and everything around it: monitoring, early stopping, checkpoints, resume.

A subclass implements `_train_epoch`; this class owns the fixed lifecycle:

    for each epoch: train (and validate) -> log -> monitor -> checkpoints -> early stop?
"""

import abc
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
from utils.errors import ConfigError

PERIODIC_PATTERN = re.compile(r"^checkpoint-epoch(\d+)\.pth$")


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
        checkpoint_dir: Path,
        writer: Writer,
        run_id: str = "",
        epochs: int,
        save_period: int = 1,
        keep_last: int | None = None,
        monitor: str = "off",
        min_delta: float = 0.0,
        early_stop: int = 0,
    ) -> None:
        self.logger = logging.getLogger("trainer")
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.config = config
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

    @abc.abstractmethod
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (and validate); return its per-sample averages, validation keys prefixed `val_`."""

    def train(self) -> dict[str, Any]:
        """Run the remaining epochs; return {"last": last epoch's results, "best": best epoch's or None}."""
        last: dict[str, float] = {}
        for epoch in range(self.start_epoch, self.epochs + 1):
            result = self._train_epoch(epoch)
            last = {"epoch": epoch, **result}
            for key, value in last.items():
                self.logger.info("    %-15s: %s", key, value)

            improved = self._update_monitor(last)
            if improved:
                self.best_result = last
            self.start_epoch = epoch + 1
            if epoch % self.save_period == 0:
                self._save_periodic(epoch)
            if improved:
                self._save(self.checkpoint_dir / BEST_NAME, epoch)
                self.logger.info("Saving current best: %s ...", BEST_NAME)
            self._save(self.checkpoint_dir / LAST_NAME, epoch)

            if self.early_stop and self.not_improved_count >= self.early_stop:
                self.logger.info(
                    "Validation performance didn't improve for %d epochs. Training stops.", self.early_stop
                )
                break
        self.writer.flush()
        return {"last": last, "best": self.best_result}

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

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """The complete training state as a plain dict (loadable with weights_only=True)."""
        model = unwrap_model(self.model)
        return {
            KEY_FORMAT: FORMAT_VERSION,
            KEY_ARCH: type(model).__name__,
            KEY_OPTIMIZER_TYPE: type(self.optimizer).__name__,
            KEY_EPOCH: epoch,
            KEY_BATCH: 0,
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
        """Continue from a checkpoint: the next epoch, with optimizer, scheduler, monitor and RNG restored.

        The model weights are loaded by the caller before the optimizer is built.
        """
        self.optimizer.load_state_dict(state[KEY_OPTIMIZER])
        if self.lr_scheduler is not None and state.get(KEY_SCHEDULER) is not None:
            self.lr_scheduler.load_state_dict(state[KEY_SCHEDULER])
        self.start_epoch = state[KEY_EPOCH] + 1
        self.mnt_best = state[KEY_MONITOR_BEST]
        self.not_improved_count = state[KEY_NOT_IMPROVED]
        self.best_result = state.get(KEY_BEST_RESULT)
        restore_rng_state(state[KEY_RNG])
        self.logger.info("Resumed from epoch %d; training continues at epoch %d.", state[KEY_EPOCH], self.start_epoch)

    def _save(self, path: Path, epoch: int) -> None:
        save_checkpoint(self.state_dict(epoch), path)

    def _save_periodic(self, epoch: int) -> None:
        path = self.checkpoint_dir / f"checkpoint-epoch{epoch}.pth"
        self._save(path, epoch)
        self.logger.info("Saving checkpoint: %s ...", path)
        if self.keep_last is None:
            return
        periodic = sorted(
            (int(m.group(1)), p) for p in self.checkpoint_dir.iterdir() if (m := PERIODIC_PATTERN.match(p.name))
        )
        for _, old in periodic[: -self.keep_last]:
            old.unlink()
