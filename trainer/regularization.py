"""What timm's train.py adds to a training step: an exponential moving average of the weights (EMA) and
mixup / CutMix. Both are off unless the config asks (`trainer.ema_decay`, `trainer.mixup`).

EMA: `torch.optim.swa_utils.AveragedModel` keeps the average, updated after every optimizer step; validation,
model_best.pth, test.py and predict.py use it. Mixup and CutMix mix each training batch with itself in another
order (mixup blends whole inputs, CutMix pastes a box of one image into another) and the loss with it:
`lam * loss(output, target) + (1 - lam) * loss(output, target[order])`, which for a loss linear in its target
(cross-entropy, binary cross-entropy, with label smoothing and pos_weight) is the loss of the mixed soft target.
The metrics see the true labels. Each batch's draw depends on (seed, epoch, batch, rank) only: a resumed run
mixes as an uninterrupted one.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from utils.errors import ConfigError


def averaged_model(model: nn.Module, decay: float | None) -> "torch.optim.swa_utils.AveragedModel | None":
    """The EMA of `model`'s weights and buffers (BatchNorm statistics too), or None when `decay` is None. Its
    decay warms up as TensorFlow's ExponentialMovingAverage's does: min(decay, (1 + n) / (10 + n)) at update n,
    so that a short run's average is not mostly its first, untrained weights (0.999 ** 1000 is still 37%)."""
    if decay is None:
        return None
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"trainer.ema_decay: expected a number in (0, 1) such as 0.999, found {decay!r}")
    from torch.optim.swa_utils import AveragedModel

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        weight = 1.0 - torch.clamp((1.0 + updates) / (10.0 + updates), max=decay)  # on the device: no sync
        for average, value in zip(averaged, current, strict=True):
            average.lerp_(value, weight.to(average.dtype)) if average.is_floating_point() else average.copy_(value)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


@dataclass(frozen=True)
class Mixup:
    """`trainer.mixup`: each batch is mixed with probability `prob`: by CutMix when only `cutmix_alpha` is set
    (or, both set, half of the time), else by mixup; the share `lam` is drawn from Beta(alpha, alpha)."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0

    def errors(self, task: str) -> list[str]:
        """What is wrong with these settings for a loader of `task`, one message per problem."""
        errors = []
        if not (self.mixup_alpha > 0 or self.cutmix_alpha > 0) or self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            errors.append("trainer.mixup: set mixup_alpha or cutmix_alpha to a number > 0 (e.g. 0.2 or 1.0)")
        if not 0.0 <= self.prob <= 1.0:
            errors.append(f"trainer.mixup.prob: expected a probability in [0, 1], found {self.prob!r}")
        if task not in ("classification", "binary"):
            errors.append(f"trainer.mixup: mixes class labels, and the task is {task!r}; set trainer.mixup null")
        return errors

    def mix(
        self, data: torch.Tensor, target: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, Callable[[Callable, torch.Tensor], torch.Tensor]]:
        """The mixed batch and a function (criterion, output) -> the mixed loss."""
        if not data.is_floating_point():
            raise ConfigError(
                f"trainer.mixup: mixes inputs, and this loader's batches are {data.dtype} (text?); set it null"
            )
        rng = np.random.default_rng(seed)
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < 0.5)
        if rng.random() >= self.prob or len(data) < 2:
            return data, lambda criterion, output: criterion(output, target)
        lam = float(rng.beta(*(2 * [self.cutmix_alpha if use_cutmix else self.mixup_alpha])))
        order = torch.from_numpy(rng.permutation(len(data))).to(data.device)
        if use_cutmix:
            if data.ndim != 4:
                raise ConfigError(f"trainer.mixup.cutmix_alpha: CutMix cuts boxes of images, and the inputs are "
                                  f"{tuple(data.shape)[1:]}; use mixup_alpha")  # fmt: skip
            data, lam = _cutmix(data, order, lam, rng)
        else:
            data = data * lam + data[order] * (1.0 - lam)
        mixed = target[order]
        return data, lambda criterion, output: criterion(output, target) * lam + criterion(output, mixed) * (1 - lam)


def _cutmix(
    data: torch.Tensor, order: torch.Tensor, lam: float, rng: np.random.Generator
) -> tuple[torch.Tensor, float]:
    """A box of (1 - lam) of the area, centred anywhere (clipped at the edges), pasted from the other image;
    lam is then the share of the image that stayed."""
    height, width = data.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    h, w = int(height * cut), int(width * cut)
    top, bottom = max(cy - h // 2, 0), min(cy + h // 2, height)
    left, right = max(cx - w // 2, 0), min(cx + w // 2, width)
    data = data.clone()
    data[:, :, top:bottom, left:right] = data[order, :, top:bottom, left:right]
    return data, 1.0 - (bottom - top) * (right - left) / (height * width)
