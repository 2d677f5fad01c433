"""Freezing strategies for fine-tuning a pretrained model (the config's "finetune" section).

    no_freeze            everything trains from the first epoch
    freeze               only the head trains: the backbone stays frozen
    freeze_unfreeze      the backbone unfreezes at `unfreeze_epoch`
    unfreeze_milestones  stages of modules unfreeze at given epochs: [{"epoch": 3, "modules": ["backbone.layer4"]}, ...]

Every parameter that will ever train is in the optimizer from the start, in its final parameter group: the
head (and anything outside the backbone) in the first, each stage that unfreezes in a group of its own whose
`lr_scale` is `backbone_lr_scale`. A frozen parameter only has `requires_grad` off, so it gets no gradient
and the optimizer skips it; nothing is added to the optimizer at an unfreeze, and every scheduler -- those
that keep a value per group (OneCycleLR's max_lr) included -- sees the same groups all along. With
`train_bn` false, frozen BatchNorm layers stay in eval mode, so their running statistics do not move either.

The state is a pure function of the epoch: `set_epoch(e)` makes the model what it is during epoch e
(stages with epoch <= e unfrozen), so a resumed run (and the rehearsal's restore) equals one that never stopped.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainer.options import TrainerOptions
from utils.distributed import is_distributed
from utils.errors import ConfigError

# A scheduler argument that gives each parameter group's learning rate itself: one value becomes one per group,
# scaled like the group's learning rate.
PER_GROUP_LR_ARGS = ("max_lr", "base_lr", "min_lr")


@dataclass(frozen=True)
class Stage:
    epoch: int  # the first epoch it trains in
    modules: tuple[str, ...]  # parameter-name prefixes


class Finetuning:
    def __init__(
        self,
        strategy: str = "no_freeze",
        backbone: str | list[str] | None = None,
        unfreeze_epoch: int | None = None,
        milestones: list[dict] | None = None,
        backbone_lr_scale: float = 0.1,
        train_bn: bool = False,
        strict_load: bool = False,
    ) -> None:
        """`backbone`: the parameter-name prefix (or prefixes) of the pretrained body; None takes the model's
        `backbone_prefix` (HuggingFaceModel), else "backbone" (TorchvisionModel). `strict_load`: fine-tuning
        from a checkpoint (`--resume CKPT -c CONFIG`) refuses weights that do not all fit, instead of
        loading those that do and listing the others."""
        self.strategy = strategy
        self.backbone = backbone
        self.unfreeze_epoch = unfreeze_epoch
        self.milestones = milestones or []
        self.backbone_lr_scale = backbone_lr_scale
        self.train_bn = train_bn
        self.strict_load = strict_load
        self.frozen: dict[str, nn.Parameter] = {}  # frozen at the start, by name
        self.stages: list[tuple[Stage, dict[str, nn.Parameter]]] = []  # each stage with the parameters it unfreezes

    def check(self) -> list[str]:
        """The problems of the section's values, as config error lines. (An unfreeze after the last epoch is
        allowed: a run may be resumed with more epochs.)"""
        errors = []
        if self.strategy == "freeze_unfreeze" and self.unfreeze_epoch is None:
            errors.append("finetune.unfreeze_epoch: the freeze_unfreeze strategy needs the epoch to unfreeze at")
        if self.strategy == "unfreeze_milestones" and not self.milestones:
            errors.append(
                'finetune.milestones: the unfreeze_milestones strategy needs [{"epoch": N, "modules": [...]}]'
            )
        epochs = [m["epoch"] for m in self.milestones]
        if epochs != sorted(set(epochs)):
            errors.append(f"finetune.milestones: the epochs must increase, found {epochs}")
        return errors

    def freeze(self, model: nn.Module) -> None:
        """Freeze what the strategy freezes at the start; call before `param_groups`."""
        if self.strategy == "no_freeze":
            return
        backbone = self.backbone if self.backbone is not None else getattr(model, "backbone_prefix", "backbone")
        prefixes = (backbone,) if isinstance(backbone, str) else tuple(backbone)
        self.frozen = _matching(model, "finetune.backbone", prefixes)
        if len(self.frozen) == len(list(model.parameters())):  # backward would find nothing that needs a gradient
            raise ConfigError(
                f"finetune.backbone: {', '.join(prefixes)} holds every parameter of the model, so the first epoch "
                "would train nothing; name only the pretrained body (the head stays trainable)"
            )
        stages = []
        if self.strategy == "freeze_unfreeze":
            stages = [Stage(self.unfreeze_epoch, prefixes)]
        elif self.strategy == "unfreeze_milestones":
            stages = [Stage(m["epoch"], tuple(m["modules"])) for m in self.milestones]
        taken: set[str] = set()
        for i, stage in enumerate(stages):
            named = _matching(model, f"finetune.milestones.{i}.modules", stage.modules)
            outside = set(named) - set(self.frozen)
            if outside:
                raise ConfigError(
                    f"finetune.milestones.{i}.modules: {sorted(outside)[0]} is not in the frozen backbone "
                    f"({', '.join(prefixes)}); name modules inside it"
                )
            self.stages.append((stage, {n: p for n, p in named.items() if n not in taken}))  # first stage wins
            taken |= set(named)
        if self.stages and is_distributed():
            # DDP registers the parameters that need gradients once, when it wraps the model: a parameter
            # unfrozen later would train on each rank's own gradient and the ranks would drift apart.
            raise ConfigError(
                f"finetune.strategy: {self.strategy} is not supported under torchrun (DDP); "
                "use freeze or no_freeze, or train on one process"
            )
        for parameter in self.frozen.values():
            parameter.requires_grad_(False)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """The optimizer's parameter groups, final from the start: what trains now, then one group per stage
        (with its `lr_scale`); a backbone that never unfreezes is left out."""
        groups = [{"params": [p for n, p in model.named_parameters() if n not in self.frozen], "lr_scale": 1.0}]
        groups += [{"params": list(named.values()), "lr_scale": self.backbone_lr_scale} for _, named in self.stages]
        return [g for g in groups if g["params"]]

    def set_epoch(self, epoch: int) -> list[str]:
        """Make the model what it is during `epoch` (0: before the first); return a line per stage that
        unfreezes at this epoch."""
        trainable = {n for stage, named in self.stages if stage.epoch <= epoch for n in named}
        for name, parameter in self.frozen.items():
            parameter.requires_grad_(name in trainable)
        return [
            f"Unfreezing {', '.join(stage.modules)} at epoch {epoch}: {sum(p.numel() for p in named.values()):,} "
            f"parameters at lr scale {self.backbone_lr_scale:g}"
            for stage, named in self.stages
            if stage.epoch == epoch
        ]

    def train_mode(self, model: nn.Module) -> None:
        """model.train(), with the BatchNorm layers whose parameters are all frozen kept in eval mode
        (unless train_bn): their running statistics stay those of the pretrained model."""
        model.train()
        if self.train_bn or not self.frozen:
            return
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                own = list(module.parameters(recurse=False))
                if own and not any(p.requires_grad for p in own):
                    module.eval()


# Schedulers that set each step's rate from their own arguments, not from the optimizer's lr.
SETS_ITS_OWN_RATE = {"OneCycleLR": "max_lr", "CyclicLR": "base_lr and max_lr"}


def check_resumed_lr(scheduler: dict | None, saved_optimizer: Any, optimizer: dict) -> None:
    """A resumed run's new `optimizer.args.lr` goes to every group (set_learning_rate), where a scheduler that
    sets each step's rate from its own arguments would undo it at the next step: refused, not ignored."""
    saved_args = saved_optimizer.get("args") if isinstance(saved_optimizer, dict) else None  # data: read with care
    then, now = (saved_args if isinstance(saved_args, dict) else {}).get("lr"), optimizer.get("args", {}).get("lr")
    kind = scheduler["type"] if scheduler else None
    if then != now and kind in SETS_ITS_OWN_RATE:
        raise ConfigError(
            f"optimizer.args.lr: {kind} sets the learning rate from its own {SETS_ITS_OWN_RATE[kind]}, so a new lr "
            "would last one step; a resumed run keeps its schedule; add -c CONFIG to fine-tune from its weights "
            f"with another lr_scheduler.args.{SETS_ITS_OWN_RATE[kind].split()[-1]}"
        )


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float, lr_scheduler: Any = None) -> None:
    """The one writer of the learning rates: each parameter group gets `lr` times its `lr_scale` (1 unless a
    freezing strategy set one), as its current rate and, when a scheduler is attached, as the scheduler's base."""
    for i, group in enumerate(optimizer.param_groups):
        scale = group.get("lr_scale", 1.0)
        group["lr"] = lr if scale == 1.0 else lr * scale  # as given where unscaled: bitwise the configured value
        if "initial_lr" in group:
            group["initial_lr"] = group["lr"]
        if hasattr(lr_scheduler, "base_lrs"):
            lr_scheduler.base_lrs[i] = group["lr"]


def build_optimizer(
    build: Callable[..., Any],
    scheduler: dict | None,
    options: TrainerOptions,
    param_groups: list[dict],
    batches_per_epoch: int,
) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer over `param_groups` and its lr_scheduler (or None), each built by `build(role, *args,
    **kwargs)` (ConfigParser.init_obj). Each group's learning rate is the configured one times the group's
    `lr_scale`, in the optimizer and in the scheduler's per-group arguments (OneCycleLR's max_lr); the length of
    the run is filled in where the scheduler needs it and the config leaves it out (`run_length_args`)."""
    optimizer = build("optimizer", param_groups)
    set_learning_rate(optimizer, optimizer.defaults["lr"])
    if scheduler is None:
        return optimizer, None
    steps = options.scheduler_steps(batches_per_epoch)
    filled = run_length_args(scheduler, options.epochs, steps)
    if set(filled) - set(scheduler.get("args", {})):  # an automatic decision: info.log says it
        laid_out = ", ".join(f"{key}={value}" for key, value in filled.items())
        logging.getLogger("trainer").info("lr_scheduler: %s laid out for this run: %s", scheduler["type"], laid_out)
    lr_scheduler = build("lr_scheduler", optimizer, **filled, **per_group_lrs(scheduler, optimizer))
    check_schedule_length(lr_scheduler, scheduler, options.epochs, steps)
    return optimizer, lr_scheduler


def check_schedule_length(lr_scheduler: Any, entry: dict, epochs: int, steps: int, resumed: bool = False) -> None:
    """OneCycleLR raises on the step past its `total_steps` ("Tried to step N times"), after that much training:
    a schedule shorter than the run is refused before it starts. A resumed run whose schedule the trainer laid
    out (`run_length_args`) must keep the steps an epoch it was laid out for."""
    filled = laid_out_by_trainer(entry)
    laid_out = getattr(lr_scheduler, "total_steps", None)
    if laid_out is None and filled:
        laid_out = getattr(lr_scheduler, "T_max", None)
    needed = epochs * steps
    if resumed and filled and laid_out != needed:
        raise ConfigError(
            f"lr_scheduler: the checkpoint's {entry['type']} was laid out for {laid_out} steps; with this config the "
            f"run takes {needed} ({epochs} epochs x {steps}); resume with the batch_size, len_epoch and "
            "accumulate_steps it was trained with"
        )
    if entry["type"] == "OneCycleLR" and laid_out is not None and laid_out < needed:
        raise ConfigError(
            f"lr_scheduler.args: OneCycleLR is laid out for {laid_out} steps, the run takes {needed} (trainer.epochs "
            f"{epochs} x {steps} steps an epoch); leave out epochs, steps_per_epoch and total_steps to have them "
            "filled in for the run"
        )


def run_length_args(scheduler: dict, epochs: int, steps_per_epoch: int) -> dict[str, int]:
    """OneCycleLR's `epochs` and `steps_per_epoch` (unless `total_steps` is given) and CosineAnnealingLR's
    `T_max`, from `trainer.epochs` and the scheduler's steps in an epoch (1 when it steps once an epoch; the
    optimizer steps of an epoch when `trainer.scheduler_interval` is "step")."""
    args = scheduler.get("args", {})
    if scheduler["type"] == "OneCycleLR" and "total_steps" not in args:
        return {"epochs": args.get("epochs", epochs), "steps_per_epoch": args.get("steps_per_epoch", steps_per_epoch)}
    if scheduler["type"] == "CosineAnnealingLR" and "T_max" not in args:
        return {"T_max": epochs * steps_per_epoch}
    return {}


def laid_out_by_trainer(entry: dict) -> bool:
    """Whether the trainer filled in the scheduler's run length (`run_length_args`), which a resume then keeps."""
    return bool(set(run_length_args(entry, 1, 1)) - set(entry.get("args", {})))


def per_group_lrs(scheduler: dict | None, optimizer: torch.optim.Optimizer) -> dict[str, list[float]]:
    """The `lr_scheduler` entry's arguments that give each group's learning rate itself (OneCycleLR's max_lr,
    CyclicLR's base_lr and max_lr, ReduceLROnPlateau's min_lr) written as one number, as one number per group,
    each scaled like its group. Passed to the scheduler after the config's own arguments, which they replace."""
    scales = [group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    if scheduler is None or all(scale == 1.0 for scale in scales):
        return {}
    args = scheduler.get("args", {})
    numbers = {k: v for k, v in args.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {key: [value * scale for scale in scales] for key, value in numbers.items() if key in PER_GROUP_LR_ARGS}


def _matching(model: nn.Module, key: str, prefixes: tuple[str, ...] | list[str]) -> dict[str, nn.Parameter]:
    found = {}
    for prefix in prefixes:
        named = {n: p for n, p in model.named_parameters() if n == prefix or n.startswith(prefix + ".")}
        if not named:
            top = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
            raise ConfigError(f"{key}: no parameters under {prefix!r} (the model's modules: {', '.join(top)})")
        found.update(named)
    return found
