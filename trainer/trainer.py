"""The training and validation epochs: batches, mixed precision, accumulation, clipping, metrics."""

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from base.base_data_loader import BaseDataLoader, derive_seed
from base.base_model import summary
from model.metric import CLASS_METRICS
from trainer.base_trainer import BaseTrainer
from trainer.checkpoint import KEY_DATA, KEY_EMA, KEY_EPOCH, KEY_PARTIAL, KEY_SCALER, KEY_STEP
from trainer.evaluation import autocast, evaluate, resolve_amp
from trainer.finetuning import Finetuning, check_schedule_length
from trainer.metric_tracker import MetricTracker
from trainer.options import TrainerOptions
from trainer.regularization import Mixup, averaged_model
from utils.distributed import agree_max, describe_placement, unwrap_model
from utils.errors import CheckpointError, ConfigError, UserError


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite."""


class Trainer(BaseTrainer):
    """Trains with mixed precision, gradient accumulation and clipping, optionally mixup/CutMix and an EMA of
    the weights (which validation then uses); validates with `evaluate`.

    Takes its own arguments and passes the loop's (`options`, `config`, `device`, `callbacks`: see BaseTrainer)
    on unchanged; `options` holds the config's trainer section, this class's keys and the loop's.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Callable,
        metric_fns: dict[str, Callable],
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        *,
        data_loader: BaseDataLoader,
        valid_data_loader: BaseDataLoader | None = None,
        finetuning: Finetuning | None = None,
        **loop: Any,
    ) -> None:
        super().__init__(model, optimizer, lr_scheduler, **loop)
        # The freezing strategy, with the model already frozen as it starts (Finetuning.freeze).
        self.finetuning = finetuning or Finetuning()
        self.criterion = criterion
        self.metric_fns = metric_fns
        self.data_loader = data_loader
        self.valid_data_loader = valid_data_loader if valid_data_loader is not None and len(valid_data_loader) else None
        if self.valid_data_loader is None and self.monitor.metric.startswith("val_"):
            raise ConfigError(
                f"trainer.monitor: {self.monitor.metric} needs validation data and the validation split is empty; "
                'set data_loader.args.validation_split, or monitor a training metric ("min loss")'
            )
        self.global_step = 0  # batches trained on since the start of the run
        self.optimizer_steps = 0  # optimizer steps taken by this process (paces the DDP stop check)

        options: TrainerOptions = self.options
        if options.compile:
            # In place (nn.Module.compile): state_dict keys stay free of an `_orig_mod.` prefix.
            self.model.compile()
        self.amp, self.amp_dtype = options.amp, resolve_amp(options.amp, self.device)
        # Loss scaling is needed for fp16 only: bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.train_metrics = MetricTracker(metric_fns, device=self.device)
        self.ema = averaged_model(unwrap_model(self.model), options.ema_decay)
        self.mixup = Mixup(**options.mixup) if options.mixup is not None else None
        if self.mixup is not None and (errors := self.mixup.errors(data_loader.task)):
            raise ConfigError("; ".join(errors))
        of_classes = [label for label, fn in metric_fns.items() if getattr(fn, "func", type(fn)) in CLASS_METRICS]
        if data_loader.task == "regression" and of_classes:
            named = ", ".join(of_classes)
            raise ConfigError(f"metrics: {named}: of classes, and the task is a regression; use r2 or mae")
        self._log_decisions()

    @property
    def ema_model(self) -> nn.Module | None:
        """The moving average of the weights (trainer.ema_decay), or None."""
        return self.ema.module if self.ema is not None else None

    def _log_decisions(self) -> None:
        """Every automatic choice, in info.log: device and parallelism, precision, samples per step, model."""
        sampler = self.data_loader.epoch_sampler
        self.logger.info("Device: %s", describe_placement(self.model, self.device))
        self.logger.info(
            "Training on %d samples, validating on %d",
            self.data_loader.n_samples,
            self.valid_data_loader.n_samples if self.valid_data_loader is not None else 0,
        )
        if self.amp_dtype is None:
            amp = "off (fp32)" + (": this CPU has no native bf16 (AVX512-BF16 or AMX)" if self.amp == "auto" else "")
        else:
            amp = f"{str(self.amp_dtype).removeprefix('torch.')} autocast"
            amp += " (auto: what this device runs natively)" if self.amp == "auto" else ""
            amp += " with loss scaling" if self.scaler.is_enabled() else ""
        per_step = sampler.batch_size * sampler.world_size * self.options.accumulate_steps
        self.logger.info(
            "Mixed precision: %s; %d samples per optimizer step (batch %d x %d process(es) x %d accumulation step(s))",
            amp,
            per_step,
            sampler.batch_size,
            sampler.world_size,
            self.options.accumulate_steps,
        )
        if self.ema is not None:
            decay = self.options.ema_decay
            self.logger.info("EMA of the weights, decay %g: validation and model_best.pth use it", decay)
        if self.mixup is not None:
            self.logger.info("Training batches mixed: %s; metrics use the true labels", self.mixup)
        late = [str(stage.epoch) for stage, _ in self.finetuning.stages if stage.epoch > self.options.epochs]
        if late:  # allowed: a resume with more epochs reaches them
            self.logger.warning(
                "finetune: unfreezing at epoch %s, after this run's %d epochs: those layers stay frozen unless the run "
                "is resumed with more epochs",
                ", ".join(late),
                self.options.epochs,
            )
        self.logger.info("%s", summary(unwrap_model(self.model)))

    def batches_in_epoch(self) -> int:
        """The epoch's batches (len_epoch, or one pass); under a batch limit (a dry run, the rehearsal) the limit's
        worth after the batch the epoch starts at: a run resumed mid-epoch rehearses its next batch."""
        n = self.options.batches(self.data_loader.batches_per_epoch)
        return n if self.batch_limit is None else min(n, self.start_batch + self.batch_limit)

    def _epoch_batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The training batches of an epoch from batch `start` on: a window of `batches_in_epoch()` batches
        of an endless stream of passes over the data (with `len_epoch` None, exactly one pass)."""
        per_pass = self.data_loader.batches_per_epoch
        if per_pass == 0:
            return
        per_epoch = self.options.batches(per_pass)
        position = (epoch - 1) * per_epoch + start
        end = (epoch - 1) * per_epoch + self.batches_in_epoch()
        while position < end:
            data_pass, offset = divmod(position, per_pass)
            self.data_loader.set_epoch(data_pass + 1, offset)
            for batch in self.data_loader:
                yield batch
                position += 1
                if position == end:
                    return

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        for line in self.finetuning.set_epoch(epoch):
            self.logger.info("%s", line)
        self.finetuning.train_mode(self.model)
        start = self.start_batch  # > 0 only in the first epoch of a run resumed mid-epoch
        if not start:
            self.train_metrics.reset()
        n_batches = self.batches_in_epoch()
        started = time.perf_counter()
        # Index of the first batch whose loss was not finite, kept on the device: no sync per step.
        first_bad = torch.full((), -1, device=self.device)
        samples = 0
        batches = self._epoch_batches(epoch, start)
        bar = tqdm(batches, total=n_batches, initial=start, desc=f"Epoch {epoch}", disable=None, leave=False)
        for batch_idx, (data, target) in enumerate(bar, start=start):
            data = data.to(self.device, non_blocking=True)
            target = target.to(self.device, non_blocking=True)
            loss_of = None
            if self.mixup is not None:
                sampler = self.data_loader.epoch_sampler
                data, loss_of = self.mixup.mix(data, target, derive_seed(sampler.seed, epoch, batch_idx, sampler.rank))
            with autocast(self.device, self.amp_dtype):
                output = self.model(data)
                if self.rehearsing:
                    self._check_output_fits_the_classes(output)
                    self._check_output_fits_the_loss(output)
                loss = self.criterion(output, target) if loss_of is None else loss_of(self.criterion, output)

            share, group_size, stepped = self._accumulation(epoch, batch_idx, n_batches, len(target))
            self.scaler.scale(loss * share / group_size).backward()
            if stepped:
                self._optimizer_step()

            n = len(target)
            samples += n
            detached = loss.detach()
            if not self.scaler.is_enabled():  # with fp16 the scaler skips non-finite steps itself
                bad = ~torch.isfinite(detached) & (first_bad < 0)
                first_bad = torch.where(bad, batch_idx, first_bad)
            self.train_metrics.update(detached, output, target)
            self.global_step += 1

            if batch_idx % self.options.log_step == 0 or batch_idx == n_batches - 1:
                self._check_finite(first_bad, epoch)  # a host sync, once per log interval
                value = detached.item()
                self.writer.add_step_scalar("loss/train_step", value, self.global_step)
                rate = samples / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{value:.4f}", samples_per_s=f"{rate:.0f}", refresh=False)
            pace = self.optimizer_steps % self.options.log_step == 0
            if stepped and batch_idx < n_batches - 1 and self._stop_agreed(pace):
                bar.close()
                self._interrupt(epoch, batch_idx + 1)
        bar.close()
        self._check_finite(first_bad, epoch)

        self.epoch_samples = samples
        return self.train_metrics.result()

    def _accumulation(self, epoch: int, batch: int, n_batches: int, samples: int) -> tuple[float, int, bool]:
        """A batch's share of its group's samples (times the group's batches: 1.0 where all are full), the group's
        batches, and whether the optimizer steps after this one. Each step averages over its group, as one batch
        that many times larger: every sample weighs the same, also with a short last batch in the group."""
        first = batch - batch % self.options.accumulate_steps
        size = min(self.options.accumulate_steps, n_batches - first)
        per_pass = self.data_loader.batches_per_epoch
        start = (epoch - 1) * self.options.batches(per_pass) + first
        group = sum(self.data_loader.epoch_sampler.batch_samples(p % per_pass) for p in range(start, start + size))
        return samples * size / group, size, batch - first + 1 == size

    def _smallest_batch(self) -> tuple[int, int] | None:
        sampler = self.data_loader.epoch_sampler
        last = sampler.num_batches() - 1
        if self.options.len_epoch is not None or last < 1 or sampler.batch_samples(last) == sampler.batch_samples(0):
            return None  # no pass of its own, one batch, or a last batch as large as the first
        return last, sampler.batch_samples(last)

    def _rehearsal_epochs(self) -> list[int]:
        """The epochs where a freezing strategy unfreezes a stage: the step then trains other parameters."""
        return sorted({s.epoch for s, _ in self.finetuning.stages if self.start_epoch < s.epoch <= self.options.epochs})

    def _check_output_fits_the_loss(self, output: torch.Tensor) -> None:
        """nll_loss reads log-probabilities: raw scores (a model without log_softmax) would give a loss below 0
        that falls without end, and a "best" checkpoint of it. Each row of log-probabilities has logsumexp 0."""
        criterion = getattr(self.criterion, "func", self.criterion)  # a config's args are bound by functools.partial
        if (
            output.ndim == 2
            and output.shape[1] == 1
            and (getattr(criterion, "__name__", "") == "cross_entropy" or isinstance(criterion, nn.CrossEntropyLoss))
        ):
            raise ConfigError(
                "loss: cross_entropy over one score per sample is always 0 and trains nothing; with one logit per "
                'sample (binary) use "bce_with_logits", or give the model a score per class'
            )
        named = getattr(criterion, "__name__", "") == "nll_loss"  # model/loss.py's or torch's
        if not (named or isinstance(criterion, nn.NLLLoss)) or output.ndim != 2:
            return
        off = output.detach().float().logsumexp(dim=1).abs().max().item()
        if off > 0.05:  # bf16 autocast's log_softmax is within 0.01
            raise ConfigError(
                f"loss: nll_loss takes log-probabilities, and the model's outputs are not (their logsumexp is off "
                f'by {off:.3g}); end the model\'s forward with F.log_softmax(x, dim=1), or use "cross_entropy", '
                "which takes raw scores"
            )

    def _check_output_fits_the_classes(self, output: torch.Tensor) -> None:
        """A classifier's scores per sample must match the data's classes (their names are known for folders
        and CSV files): a head of another size would train silently and fail only when predicting."""
        classes = self.data_loader.classes
        if self.data_loader.task != "classification" or classes is None or output.ndim != 2:
            return
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        if len(classes) == 1:  # nothing to tell apart: no head size helps
            raise ConfigError(f"data_loader: the training data has one class ({shown}); a classifier needs two or more")
        if output.shape[1] != len(classes):
            raise ConfigError(
                f"arch: the model gives {output.shape[1]} scores per sample, the data has {len(classes)} classes "
                f"({shown}); set the model's number of classes (arch.args.num_classes) to {len(classes)}"
            )

    def _optimizer_step(self) -> None:
        if self.options.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.options.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        if self.ema is not None:
            self.ema.update_parameters(unwrap_model(self.model))
        if self.lr_scheduler is not None and self.options.scheduler_interval == "step":
            self.lr_scheduler.step()

    def _check_finite(self, first_bad: torch.Tensor, epoch: int) -> None:
        bad = agree_max(int(first_bad), self.device)  # under DDP every rank stops together
        if bad >= 0:
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite at epoch {epoch}, batch {bad + 1}; "
                "lower optimizer.args.lr or set trainer.clip_grad_norm (checkpoints written so far are kept)"
            )

    def _valid_epoch(self, epoch: int) -> dict[str, float]:
        if self.valid_data_loader is None:
            return {}
        self.valid_data_loader.set_epoch(epoch)
        batches = self.valid_data_loader
        if self.batch_limit is not None:
            batches = itertools.islice(batches, self.batch_limit)
        model = self.ema_model or self.model
        return evaluate(model, batches, self.criterion, self.metric_fns, self.device, self.amp_dtype)

    def state_dict(self, epoch: int, batch: int = 0) -> dict[str, Any]:
        state = super().state_dict(epoch, batch)
        state[KEY_SCALER] = self.scaler.state_dict()
        state[KEY_STEP] = self.global_step
        state[KEY_DATA] = self.data_loader.preprocessing
        state[KEY_EMA] = self.ema.state_dict() if self.ema is not None else None
        if batch:
            state[KEY_PARTIAL] = self.train_metrics.state_dict()
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        self.finetuning.set_epoch(state[KEY_EPOCH])  # the stages unfrozen by then
        super()._restore(state)
        per_epoch = self.options.batches(self.data_loader.batches_per_epoch)
        if self.start_batch >= per_epoch:
            raise CheckpointError(
                f"the checkpoint stopped after batch {self.start_batch} of epoch {state[KEY_EPOCH]}, which has "
                f"{per_epoch} batches with this config; resume with the batch_size and len_epoch it was trained with"
            )
        if self.start_batch % self.options.accumulate_steps:  # it stopped after a step: between two groups
            raise ConfigError(
                f"trainer.accumulate_steps: the checkpoint stopped after batch {self.start_batch}, inside a group of "
                f"{self.options.accumulate_steps} batches; resume with the accumulate_steps it was trained with"
            )
        if self.lr_scheduler is not None:
            steps = self.options.scheduler_steps(self.data_loader.batches_per_epoch)
            entry = self.config["lr_scheduler"]
            check_schedule_length(self.lr_scheduler, entry, self.options.epochs, steps, resumed=True)
        self.optimizer_steps = 0
        if state[KEY_SCALER]:  # empty when the run trained without loss scaling
            self.scaler.load_state_dict(state[KEY_SCALER])
        self.global_step = state[KEY_STEP]
        if self.ema is not None and state.get(KEY_EMA) is not None:
            self.ema.load_state_dict(state[KEY_EMA])
        elif self.ema is not None:  # trained without an EMA until now: it starts from these weights
            self.logger.info("trainer.ema_decay: the checkpoint has no EMA of the weights; it starts here")
        if self.start_batch:
            self.train_metrics.load_state_dict(state[KEY_PARTIAL])
