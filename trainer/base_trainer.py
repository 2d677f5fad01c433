"""The epoch loop and everything around it: validation, callbacks, monitoring, early stopping, checkpoints.

A subclass implements `_train_epoch` and `_valid_epoch`; this class owns the fixed lifecycle and fires
every callback hook, so a subclass that rewrites an epoch never loses one:

    on_train_start
    for each epoch: train -> validate -> on_validation_end -> scheduler -> log -> metrics.csv
                    -> monitor -> checkpoints -> on_epoch_end -> early stop?
    on_train_end
"""

import abc
import copy
import logging
import shlex
import signal
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from base.base_data_loader import worker_failure, worker_failures_as_data_errors
from base.base_model import parameter_counts
from logger.metrics_csv import MetricsCsv
from logger.run_folder import BEST_NAME, LAST_NAME, RunFolder, remove_oldest_periodic
from logger.visualization import Writer, write_epoch, write_hparams
from trainer.checkpoint import (
    FORMAT_VERSION,
    KEY_ARCH,
    KEY_BATCH,
    KEY_BEST_RESULT,
    KEY_CONFIG,
    KEY_EPOCH,
    KEY_FORMAT,
    KEY_MONITOR_BEST,
    KEY_NOT_IMPROVED,
    KEY_OPTIMIZER,
    KEY_OPTIMIZER_TYPE,
    KEY_RNG,
    KEY_SCHEDULER,
    KEY_STATE_DICT,
    KEY_WANDB_RUN,
    apply_changed_optimizer_args,
    capture_rng_state,
    restore_rng_state,
    save_checkpoint,
)
from trainer.options import TrainerOptions
from utils.distributed import agree_max, is_distributed, is_main_process, launch_command, unwrap_model
from utils.errors import (
    CallbackError,
    CheckpointError,
    ConfigError,
    DataError,
    OutOfMemory,
    TrainingInterrupted,
    UserError,
    describe_exception,
    stop_requests,
)
from utils.monitor import Monitor


class BaseTrainer(abc.ABC):
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        *,
        options: TrainerOptions,
        config: dict,
        device: torch.device,
        callbacks: list | None = None,
    ) -> None:
        """Builds the loop and writes nothing: where the run writes is given to `train`."""
        self.logger = logging.getLogger("trainer")
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.options = options
        self.config = config
        self.device = device
        self.run: RunFolder | None = None  # set by train()
        self.writer = Writer()  # no backend: writes nothing
        self.callbacks = callbacks or []
        self.monitor = Monitor.parse(options.monitor)
        self.metrics_csv: MetricsCsv | None = None

        self.monitor_best = self.monitor.worst
        self.not_improved_count = 0
        self.best_result: dict[str, float] | None = None
        self.start_epoch = 1
        self.start_batch = 0  # > 0 when resuming in the middle of start_epoch
        self.batch_limit: int | None = None  # 1 during a dry run: one training and one validation batch
        self.rehearsing = False  # true during rehearse(): callbacks may skip what must happen once per real epoch
        self.epoch_samples = 0  # training samples of the epoch, set by `_train_epoch` for the samples/s figure
        # The lr column: the first group's rate at the last optimizer step, whichever loop takes it (a subclass's too).
        self.step_lr = optimizer.param_groups[0]["lr"]
        optimizer.register_step_post_hook(
            lambda stepped, args, kwargs: setattr(self, "step_lr", stepped.param_groups[0]["lr"])
        )
        self.is_main = is_main_process()
        self.stop_signal: int | None = None  # set by SIGINT / SIGTERM; training stops after the current step

    @abc.abstractmethod
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch; return its per-sample averages ("loss" and each metric)."""

    @abc.abstractmethod
    def _valid_epoch(self, epoch: int) -> dict[str, float]:
        """Validate after epoch `epoch`; return its averages, unprefixed ({} when there is no validation data)."""

    def train(
        self, run: RunFolder | None = None, writer: Writer | None = None, dry_run: bool = False
    ) -> dict[str, Any]:
        """Run the remaining epochs; return {"last": last epoch's results, "best": best epoch's or None}.

        Checkpoints go to `run.checkpoint_dir` and metrics.csv to `run.log_dir` (rank 0 only), scalars and
        pictures to `writer`; both are let go at the end (the writer closed, the run folder released). With
        `run` None nothing is saved. `dry_run`: one epoch of one training and one validation batch through the
        real step, every hook included.
        """
        self.run, self.writer = run, writer or Writer()
        if run is not None and self.is_main:
            self.metrics_csv = MetricsCsv(run.log_dir / "metrics.csv")
        self.batch_limit = 1 if dry_run else None
        last_epoch = self.start_epoch if dry_run else self.options.epochs
        try:
            with (
                stop_requests(lambda signum: setattr(self, "stop_signal", signum)),
                worker_failures_as_data_errors(self.logger),
            ):
                return self._train(last_epoch)
        except torch.OutOfMemoryError:
            batch_size = self.config["data_loader"].get("args", {}).get("batch_size", "?")
            raise OutOfMemory.advice(self.start_epoch, batch_size, self.device) from None
        finally:
            self.writer.close()
            if run is not None:
                run.release()

    def _train(self, last_epoch: int) -> dict[str, Any]:
        last: dict[str, float] = {}
        self._call_hooks([c.on_train_start for c in self.callbacks])
        for epoch in range(self.start_epoch, last_epoch + 1):
            last = self._run_epoch(epoch)
            improved = self._update_monitor(last)
            if improved:
                self.best_result = last
            self.start_epoch = epoch + 1
            self._save_epoch(epoch, periodic=epoch % self.options.save_period == 0, best=improved)
            if self.options.log_model == "all":
                self._log_checkpoint(LAST_NAME, last, ["latest", *(["best"] if improved else [])])
            # After the checkpoints: a callback that reports the epoch elsewhere (Ray Tune, which may stop the
            # trial inside its report) leaves the epoch saved.
            self._call_hooks([c.on_epoch_end for c in self.callbacks], epoch, last)
            if self.options.stops_early(self.not_improved_count):
                self.logger.info(
                    "Validation performance didn't improve for %d epochs. Training stops.", self.options.early_stop
                )
                break
            if epoch < last_epoch and self._stop_agreed(share=True):
                self._interrupt(epoch, 0)
        outcome = {"last": last, "best": self.best_result}
        if self.options.log_model is True and last:  # last.pth last: W&B gives "latest" to the version logged last
            if self.best_result is not None:
                self._log_checkpoint(BEST_NAME, self.best_result, ["best"])
            self._log_checkpoint(LAST_NAME, last, ["latest"])
        write_hparams(self.writer, self.config, outcome)
        self._call_hooks([c.on_train_end for c in self.callbacks], outcome)
        self.writer.flush()
        return outcome

    def _run_epoch(self, epoch: int) -> dict[str, float]:
        """Train and validate one epoch, step the scheduler, log; return {"epoch": epoch, **results}."""
        started = time.perf_counter()
        result = {"epoch": epoch, **self._train_epoch(epoch)}
        training_seconds = time.perf_counter() - started
        self.start_batch = 0
        valid = {f"val_{k}": v for k, v in self._valid_epoch(epoch).items()}
        if valid:
            self._call_hooks([c.on_validation_end for c in self.callbacks], epoch, valid)
            result.update(valid)
        if self.lr_scheduler is not None and self.options.scheduler_interval == "epoch":
            if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.lr_scheduler.step(self._monitored(result))
            else:
                self.lr_scheduler.step()
        seconds = time.perf_counter() - started
        extras = {
            "lr": self.step_lr,  # what the epoch's last step used, not the next epoch's rate
            "epoch_seconds": seconds,
            "samples_per_second": self.epoch_samples / max(training_seconds, 1e-9),  # training's, validation aside
        }
        for key, value in result.items():
            shown = f"{value:.6g}" if isinstance(value, float) else value  # every digit: metrics.csv, TensorBoard
            self.logger.info("    %-15s: %s", key, shown)
        write_epoch(self.writer, epoch, result, extras)
        if self.metrics_csv is not None:
            self.metrics_csv.append({k: v for k, v in {**result, **extras}.items() if not isinstance(v, list)})
        return result

    def _call_hooks(self, hooks: list[Callable], *args: Any) -> None:
        """Call each callback's hook in order; a failure ends the run with one line (traceback in info.log)."""
        for hook in hooks:
            try:
                hook(self, *args)
            except Exception as e:
                self.logger.exception("Callback %s failed", hook.__qualname__)
                logs_to_a_file = any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers)
                where = "info.log" if logs_to_a_file else "the log above"  # the rehearsal has no info.log yet
                raise CallbackError(
                    f"callback {hook.__qualname__} failed: {type(e).__name__}: {e} (the traceback is in {where})"
                ) from None

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
        where = f"epoch {epoch} after batch {batch}" if batch else f"the end of epoch {epoch}"
        name = signal.Signals(self.stop_signal).name
        if self.run is None:
            raise TrainingInterrupted(f"{name} received; stopped at {where}", self.stop_signal)
        path = self.run.checkpoint_dir / LAST_NAME
        if batch:
            state = self.state_dict(epoch, batch)  # on every rank: the partial epoch's metrics gather all ranks'
            if self.is_main:  # which hold the same state otherwise
                save_checkpoint(state, path)
        raise TrainingInterrupted(
            f"{name} received; stopped at {where}, state saved to {path}; resume with: "
            f"{launch_command('train.py')} --resume {shlex.quote(str(path))}",
            self.stop_signal,
        )

    def _monitored(self, result: dict[str, float]) -> float:
        if self.monitor.metric not in result:
            raise ConfigError(
                f"trainer.monitor: metric '{self.monitor.metric}' was not logged (logged: {', '.join(result)}); "
                "check validation_split or the monitor"
            )
        return result[self.monitor.metric]

    def _update_monitor(self, result: dict[str, float]) -> bool:
        """Whether the monitored metric improved (by more than min_delta); counts epochs without."""
        if self.monitor.mode == "off":
            return False
        value = self._monitored(result)
        if self.monitor.improves(value, self.monitor_best, self.options.min_delta):
            self.monitor_best = value
            self.not_improved_count = 0
            return True
        self.not_improved_count += 1
        return False

    def state_dict(self, epoch: int, batch: int = 0) -> dict[str, Any]:
        """The complete training state after `batch` batches of `epoch` (0: the whole epoch), as a plain dict."""
        model = unwrap_model(self.model)
        return {
            KEY_FORMAT: FORMAT_VERSION,
            KEY_ARCH: type(model).__name__,
            KEY_OPTIMIZER_TYPE: type(self.optimizer).__name__,
            KEY_EPOCH: epoch,
            KEY_BATCH: batch,
            KEY_STATE_DICT: model.state_dict(),
            KEY_OPTIMIZER: self.optimizer.state_dict(),
            KEY_SCHEDULER: self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            KEY_MONITOR_BEST: self.monitor_best,
            KEY_NOT_IMPROVED: self.not_improved_count,
            KEY_BEST_RESULT: self.best_result,
            KEY_RNG: capture_rng_state(),
            KEY_CONFIG: self.config,
            KEY_WANDB_RUN: self.writer.run_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (checked by trainer.checkpoint.check_resume): the next batch, with the
        optimizer, scheduler, monitor and RNG restored. The model weights are loaded before the optimizer
        is built. Optimizer arguments changed by an override since the checkpoint apply from here on, so
        that the run's config.json says what ran (`--resume RUN --lr 0.5` trains at 0.5)."""
        try:
            self._restore(state)
        except (ValueError, KeyError, TypeError, RuntimeError, AttributeError, IndexError, OverflowError) as e:
            raise CheckpointError(f"the checkpoint's training state does not fit: {describe_exception(e)}") from None
        trainable, total = parameter_counts(self.model)  # after an unfreeze: more than the model summary's count
        self.logger.info(
            "Resuming: training continues at epoch %d, batch %d, with %s of %s parameters trainable.",
            self.start_epoch, self.start_batch + 1, f"{trainable:,}", f"{total:,}",
        )  # fmt: skip

    def _restore(self, state: dict[str, Any]) -> None:
        """Everything `state_dict` saved but the weights; a subclass that saves more restores it here too."""
        try:
            self.optimizer.load_state_dict(state[KEY_OPTIMIZER])
            if self.lr_scheduler is not None:
                self.lr_scheduler.load_state_dict(state[KEY_SCHEDULER])
        except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"the checkpoint's optimizer or scheduler state does not fit: {e}") from None
        saved_args, args = state[KEY_CONFIG]["optimizer"].get("args", {}), self.config["optimizer"].get("args", {})
        for change in apply_changed_optimizer_args(self.optimizer, self.lr_scheduler, saved_args, args):
            self.logger.info("%s", change)
        self.start_batch = state[KEY_BATCH]
        self.start_epoch = state[KEY_EPOCH] + (0 if self.start_batch else 1)
        self.monitor_best = state[KEY_MONITOR_BEST]
        self.not_improved_count = state[KEY_NOT_IMPROVED]
        self.best_result = state[KEY_BEST_RESULT]
        restore_rng_state(state[KEY_RNG])

    def rehearse(self) -> dict[str, Any]:
        """Send one training and one validation batch through the real step, hooks included, on a throw-away
        copy of the state, and restore the state exactly (weights, optimizer, scheduler, counters, RNG).

        What a config breaks only when it runs -- a model's forward, the loss, a metric, the optimizer's or
        scheduler's step -- then fails here, in one line, before the run folder is made. Callbacks see this
        batch too, with a writer that writes nothing and `trainer.rehearsing` true (as Lightning's sanity check does).
        Returns the batch's results: a dry run is this and nothing more. Later epochs where the run changes
        (`_rehearsal_epochs`: a freezing strategy's unfreeze) get one training and one validation batch too.
        """
        epoch = self.start_epoch - (0 if self.start_batch else 1)
        snapshot = copy.deepcopy(self.state_dict(epoch, self.start_batch))
        self.logger.disabled = True  # the rehearsal's epoch lines are not the run's
        self.rehearsing = True
        later_epochs, first_epoch, what = self._rehearsal_epochs(), self.start_epoch, "the first training batch"
        try:
            # Nor are its library warnings: the run meets each again, and one batch warns of what a whole epoch
            # would not (AUROC over a validation batch that lacks a class).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = self.train(dry_run=True)
                if (smallest := self._smallest_batch()) and not snapshot[KEY_BATCH]:  # a layer may fail on few samples
                    what = f"the epoch's last and smallest training batch ({smallest[1]} samples)"
                    self.start_epoch, self.start_batch = first_epoch, smallest[0]
                    self.train(dry_run=True)
                what = "a training batch of an unfreeze epoch"
                for later in later_epochs:
                    self.start_epoch, self.start_batch = later, 0
                    self.train(dry_run=True)
        except UserError:
            raise
        except Exception as e:
            failure = worker_failure(e)  # a worker's crash, reported (by SIGCHLD) wherever the main thread is
            if failure is not None:
                raise DataError(failure) from None
            raise ConfigError(
                f"{what} failed, before anything was written: {describe_exception(e)}; "
                "check arch, loss, metrics, optimizer and lr_scheduler"
            ) from None
        finally:
            self.logger.disabled = False
            self.rehearsing = False
        unwrap_model(self.model).load_state_dict(snapshot[KEY_STATE_DICT])
        self._restore(snapshot)
        return result

    def _smallest_batch(self) -> tuple[int, int] | None:
        """(index, samples) of an epoch's last batch when it is smaller than the first, for the rehearsal."""
        return None

    def _rehearsal_epochs(self) -> list[int]:
        """Epochs after the first whose step differs and the rehearsal also tries (none here; see Trainer)."""
        return []

    def _log_checkpoint(self, name: str, result: dict[str, Any], aliases: list[str]) -> None:
        """The run's checkpoint `name` to its tracker (W&B: a version of its model artifact), with its epoch's
        results."""
        if self.is_main and self.run is not None:
            metadata = {key: value for key, value in result.items() if not isinstance(value, list)}
            self.writer.add_checkpoint(self.run.checkpoint_dir / name, aliases, metadata)

    def _save_epoch(self, epoch: int, periodic: bool, best: bool) -> None:
        """The end-of-epoch checkpoints: last.pth always, checkpoint-epoch<N>.pth every save_period epochs,
        model_best.pth on improvement -- one state, serialized once."""
        if not self.is_main or self.run is None:
            return
        folder = self.run.checkpoint_dir
        paths = [folder / LAST_NAME]
        if periodic:
            paths.append(folder / f"checkpoint-epoch{epoch}.pth")
            self.logger.info("Saving checkpoint: %s ...", paths[-1])
        if best:
            paths.append(folder / BEST_NAME)
            self.logger.info("Saving current best: %s ...", BEST_NAME)
        save_checkpoint(self.state_dict(epoch), *paths)
        if periodic and self.options.keep_last is not None:
            remove_oldest_periodic(folder, self.options.keep_last)
