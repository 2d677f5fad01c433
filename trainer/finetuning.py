"""Freezing strategies for fine-tuning a pretrained model (the config's "finetune" section).

    no_freeze            everything trains from the first epoch
    freeze               only the head trains: the backbone stays frozen
    freeze_unfreeze      the backbone unfreezes at `unfreeze_epoch`
    unfreeze_milestones  stages of modules unfreeze at given epochs: [{"epoch": 3, "modules": ["backbone.layer4"]}, ...]

Frozen parameters are left out of the optimizer (and need no gradients); a stage that unfreezes joins the
optimizer as a new parameter group whose learning rate is the first group's times `backbone_lr_scale`. With
`train_bn` false, frozen BatchNorm layers stay in eval mode, so their running statistics do not move either.

The state is a pure function of the epoch: `set_epoch(e)` makes the model and optimizer what they are
during epoch e (stages with epoch <= e unfrozen). Resuming calls it with the checkpoint's epoch before the
optimizer's state is loaded, so the parameter groups fit, and a resumed run equals one that never stopped.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from utils.distributed import is_distributed
from utils.errors import ConfigError

STRATEGIES = ("no_freeze", "freeze", "freeze_unfreeze", "unfreeze_milestones")


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
        self.model: nn.Module | None = None
        self.frozen: dict[str, nn.Parameter] = {}  # frozen at the start, by name
        self.stages: list[Stage] = []
        self.base_groups = 0  # the optimizer's own parameter groups, before any stage joined

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
        """Freeze what the strategy freezes at the start; call before the optimizer is built from the
        parameters that require gradients."""
        self.model = model
        if self.strategy == "no_freeze":
            return
        backbone = self.backbone if self.backbone is not None else getattr(model, "backbone_prefix", "backbone")
        prefixes = (backbone,) if isinstance(backbone, str) else tuple(backbone)
        self.frozen = self._matching(model, "finetune.backbone", prefixes)
        if self.strategy == "freeze_unfreeze":
            self.stages = [Stage(self.unfreeze_epoch, prefixes)]
        elif self.strategy == "unfreeze_milestones":
            self.stages = [Stage(m["epoch"], tuple(m["modules"])) for m in self.milestones]
            for i, stage in enumerate(self.stages):
                outside = set(self._matching(model, f"finetune.milestones.{i}.modules", stage.modules)) - set(
                    self.frozen
                )
                if outside:
                    raise ConfigError(
                        f"finetune.milestones.{i}.modules: {sorted(outside)[0]} is not in the frozen backbone "
                        f"({', '.join(prefixes)}); name modules inside it"
                    )
        if self.stages and is_distributed():
            # DDP registers the parameters that need gradients once, when it wraps the model: a parameter
            # unfrozen later would train on each rank's own gradient and the ranks would drift apart.
            raise ConfigError(
                f"finetune.strategy: {self.strategy} is not supported under torchrun (DDP); "
                "use freeze or no_freeze, or train on one process"
            )
        for parameter in self.frozen.values():
            parameter.requires_grad_(False)

    def _matching(self, model: nn.Module, key: str, prefixes: tuple[str, ...] | list[str]) -> dict[str, nn.Parameter]:
        found = {}
        for prefix in prefixes:
            named = {n: p for n, p in model.named_parameters() if n == prefix or n.startswith(prefix + ".")}
            if not named:
                top = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
                raise ConfigError(f"{key}: no parameters under {prefix!r} (the model's modules: {', '.join(top)})")
            found.update(named)
        return found

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Remember the optimizer's own parameter groups (built from the trainable parameters)."""
        self.base_groups = len(optimizer.param_groups)

    def set_epoch(self, epoch: int, optimizer: torch.optim.Optimizer, lr_scheduler: Any) -> list[str]:
        """Make the model and the optimizer what they are during `epoch` (0: before the first); return a line
        per stage that joined now."""
        if not self.stages:
            return []
        unfrozen = [s for s in self.stages if s.epoch <= epoch]
        trainable = {n for s in unfrozen for n in self._matching(self.model, "finetune", s.modules)}
        for name, parameter in self.frozen.items():
            parameter.requires_grad_(name in trainable)
        groups = optimizer.param_groups
        while len(groups) > self.base_groups + len(unfrozen):  # back to an earlier epoch (a rehearsal's restore)
            for parameter in groups.pop()["params"]:
                optimizer.state.pop(parameter, None)
            for per_group in ("base_lrs", "min_lrs"):
                if hasattr(lr_scheduler, per_group):
                    getattr(lr_scheduler, per_group).pop()
        joined, taken = [], {id(p) for g in groups for p in g["params"]}
        for stage in unfrozen[len(groups) - self.base_groups :]:
            params = [p for n, p in self._matching(self.model, "finetune", stage.modules).items() if id(p) not in taken]
            taken |= {id(p) for p in params}
            first = groups[0]
            lr = first["lr"] * self.backbone_lr_scale
            group = {"params": params, "lr": lr}
            if "initial_lr" in first:  # a scheduler's base for this group
                group["initial_lr"] = first["initial_lr"] * self.backbone_lr_scale
            optimizer.add_param_group(group)
            if hasattr(lr_scheduler, "base_lrs"):  # one entry per parameter group
                lr_scheduler.base_lrs.append(group.get("initial_lr", lr))
            if hasattr(lr_scheduler, "min_lrs"):  # ReduceLROnPlateau
                lr_scheduler.min_lrs.append(lr_scheduler.min_lrs[0])
            count = sum(p.numel() for p in params)
            joined.append(f"Unfreezing {', '.join(stage.modules)} at epoch {epoch}: {count:,} parameters at lr {lr:g}")
        return joined

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
