"""Epoch-level metrics: they see every batch of an epoch and compute once at its end.

A per-batch metric function returns a batch mean, and the trainer averages those per sample: right for
accuracy, wrong for R², AUROC, F1 or a confusion matrix, which are not means over samples. An EpochMetric
keeps the state it needs (sums, or the predictions themselves) in a torchmetrics.Metric, which is well kept,
exact in float64 here, and reduces its states over DDP ranks (sums added, predictions gathered) at compute.
"""

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # imported by the subclasses that use it: `import torchmetrics` costs about a second
    from torchmetrics import Metric


class EpochMetric:
    """Wraps a torchmetrics.Metric; a subclass builds it in `__init__` and may adapt (output, target) in
    `prepare` (shapes, logits to probabilities)."""

    def __init__(self, metric: "Metric") -> None:
        self.metric = metric.set_dtype(torch.float64)

    def prepare(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return output, target

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.metric.update(*self.prepare(output.detach(), target.detach()))

    def compute(self) -> float | list:
        """The epoch's value over every rank's samples: a number, or nested lists for a matrix."""
        value = self.metric.compute()
        return value.item() if value.numel() == 1 else value.tolist()

    def reset(self) -> None:
        self.metric.reset()

    def to(self, device: torch.device) -> "EpochMetric":
        self.metric = self.metric.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The states of a partly seen epoch, as tensors and lists of tensors (saved in mid-epoch checkpoints)."""
        return {
            name: [t.cpu() for t in value] if isinstance(value, list) else value.cpu()
            for name, value in self.metric.metric_state.items()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.metric.device
        for name, value in state.items():
            if isinstance(getattr(self.metric, name), list) and not isinstance(value, list):
                value = [value]  # a list state gathered over DDP ranks is saved as one tensor
            setattr(self.metric, name, [t.to(device) for t in value] if isinstance(value, list) else value.to(device))
