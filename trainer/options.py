"""The `trainer` section of a config, key for key: what the loop is told to do.

Each key's type and bounds are the schema's (utils/config_schema.json, which documents the file); its default
is here, once; so are the rules that tie a trainer key to another key or section.
"""

import dataclasses
import inspect
import math
from dataclasses import dataclass

from utils.errors import ConfigError, did_you_mean
from utils.monitor import Monitor


@dataclass(frozen=True)
class TrainerOptions:
    epochs: int
    save_period: int = 1  # checkpoint-epoch<N>.pth every this many epochs
    keep_last: int | None = None  # periodic checkpoints kept (oldest removed first); None: all
    monitor: str = "off"  # "off", "min <metric>" or "max <metric>": model_best.pth and early stopping
    min_delta: float = 0.0  # an improvement beats the best by more than this
    early_stop: int = 0  # epochs without improvement before stopping; 0: never
    scheduler_interval: str = "epoch"  # step the lr_scheduler per "epoch" or per optimizer "step"
    log_model: bool | str = False  # checkpoints to W&B: False, True (model_best and last at the end), "all"
    len_epoch: int | None = None  # batches per epoch; None: one pass over the training split
    log_step: int = 10  # log the training loss every this many batches
    amp: bool | str = False  # False, True, "fp16", "bf16" or "auto" (what the device runs natively)
    accumulate_steps: int = 1  # batches per optimizer step
    clip_grad_norm: float | None = None
    compile: bool = False  # torch.compile, in place
    ema_decay: float | None = None  # an exponential moving average of the weights, which validation uses
    mixup: dict | None = None  # Mixup's arguments (trainer/regularization.py), or None

    @classmethod
    def of(cls, config: dict) -> "TrainerOptions":
        """The options of a validated config (one that has its defaults filled in)."""
        return cls(**config["trainer"])

    @staticmethod
    def fill_defaults(section: dict) -> None:
        """Write each default the section leaves out into it, so that the saved config.json says what ran."""
        for field in dataclasses.fields(TrainerOptions):
            if field.default is not dataclasses.MISSING and field.name not in section:
                section[field.name] = field.default

    def stops_early(self, not_improved: int) -> bool:
        """Whether `not_improved` epochs without improvement end the run (early_stop 0: never)."""
        return self.early_stop > 0 and not_improved >= self.early_stop

    def batches(self, batches_per_epoch: int) -> int:
        """The batches of an epoch: len_epoch, or one pass of `batches_per_epoch`."""
        return self.len_epoch if self.len_epoch is not None else batches_per_epoch

    def scheduler_steps(self, batches_per_epoch: int) -> int:
        """The scheduler's steps in an epoch: 1 when it steps once an epoch, else the optimizer's steps."""
        steps = math.ceil(self.batches(batches_per_epoch) / self.accumulate_steps)
        return steps if self.scheduler_interval == "step" else 1

    def errors(self, metric_labels: list[str], lr_scheduler: dict | None) -> list[str]:
        """The rules between these options and the rest of the config, one message per broken rule."""
        errors, monitor = [], Monitor.parse(self.monitor)
        known = ["loss", *metric_labels]
        known += [f"val_{n}" for n in known]
        if monitor.mode != "off" and monitor.metric not in known:
            errors.append(
                f"trainer.monitor: no metric '{monitor.metric}'{did_you_mean(monitor.metric, known)} "
                f"(logged metrics: {', '.join(known)})"
            )
        if lr_scheduler is not None and lr_scheduler["type"] == "ReduceLROnPlateau":
            from torch.optim.lr_scheduler import ReduceLROnPlateau

            default_mode = inspect.signature(ReduceLROnPlateau).parameters["mode"].default
            mode = lr_scheduler.get("args", {}).get("mode", default_mode)
            if monitor.mode == "off":
                errors.append(
                    "lr_scheduler: ReduceLROnPlateau steps on the monitored metric; "
                    'set trainer.monitor, e.g. "min val_loss"'
                )
            elif monitor.mode != mode:
                errors.append(f"lr_scheduler.args.mode: '{mode}' disagrees with trainer.monitor '{monitor.text}'")
            if self.scheduler_interval == "step":
                errors.append(
                    "trainer.scheduler_interval: ReduceLROnPlateau steps once an epoch, on the monitored metric; "
                    'set it "epoch"'
                )
        return errors

    def check_for_training(self, config: dict) -> None:
        """What only training asks (test.py and predict.py evaluate the same config without W&B or mixing),
        checked before any data is read: log_model needs W&B, mixup a task with class labels."""
        from trainer.regularization import Mixup

        errors = []
        if self.log_model and config["wandb"] is None:
            errors.append('trainer.log_model: checkpoints go to W&B; add a "wandb" section, or set log_model false')
        if self.mixup is not None:
            errors.extend(Mixup(**self.mixup).errors(loader_task(config)))
        if errors:
            raise ConfigError("; ".join(errors))


def loader_task(config: dict) -> str:
    """The data loader's task as the config gives it ("classification", its loaders' default, if it names none)."""
    return (config["data_loader"].get("args") or {}).get("task", "classification")
