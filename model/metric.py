"""Metrics selectable by name in config.json ("metrics": ["accuracy", {"type": "top_k_acc", "args": {"k": 3}}]).

Two kinds:
- a function (output, target) -> the batch mean as a 0-d tensor, for what is a mean over samples
  (accuracy); the trainer keeps it on the device and averages it per sample over the epoch;
- an EpochMetric class, for what is not (R², AUROC, F1, a confusion matrix): it sees every batch and
  computes once per epoch, exactly, also over DDP ranks and across a mid-epoch resume.
"""

import logging
import math
from typing import TYPE_CHECKING

import torch

from base.base_metric import EpochMetric

if TYPE_CHECKING:  # torchmetrics is imported when an epoch-level metric is built: a whole second on import
    from torchmetrics import Metric


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose highest-scoring class is the target; with one logit per sample (binary), whose
    logit is above 0 where the target is 1 and not above where it is 0."""
    predicted = output.argmax(dim=1) if output.shape[1] > 1 else (output[:, 0] > 0).long()
    return (predicted == target.reshape(-1)).float().mean()


def top_k_acc(output: torch.Tensor, target: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Fraction of samples whose target is among the k highest-scoring classes."""
    top = output.topk(k, dim=1).indices  # (B, k)
    return (top == target.unsqueeze(1)).any(dim=1).float().mean()


class r2(EpochMetric):  # lower case, like the metric functions: it is selected by this name
    """Coefficient of determination over the epoch (one output; output and target of the same size)."""

    def __init__(self) -> None:
        from torchmetrics.regression import R2Score

        super().__init__(R2Score())

    def prepare(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return output.reshape(-1), target.reshape(-1)


class mae(EpochMetric):
    """Mean absolute error over the epoch."""

    def __init__(self) -> None:
        from torchmetrics.regression import MeanAbsoluteError

        super().__init__(MeanAbsoluteError())

    def prepare(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return output.reshape(-1), target.reshape(-1)


class _Classification(EpochMetric):
    """Binary (`num_classes` None: one logit per sample, targets 0/1) or multi-class (scores per class)."""

    def __init__(self, binary: "Metric", multiclass: "Metric | None") -> None:
        super().__init__(binary if multiclass is None else multiclass)
        self.binary = multiclass is None

    def prepare(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.binary and output.shape[1] > 1:
            name = type(self).__name__
            raise ValueError(
                f"{name} without num_classes scores one logit per sample, and the model gives {output.shape[1]}; "
                f'give it the number of classes: {{"type": "{name}", "args": {{"num_classes": {output.shape[1]}}}}}'
            )
        if self.binary:  # logits to probabilities here: torchmetrics guesses from the value range otherwise
            return torch.sigmoid(output.reshape(-1)), target.reshape(-1).long()
        return output.softmax(dim=1), target.long()


class auroc(_Classification):
    """Area under the ROC curve over the epoch; multi-class: one-vs-rest, macro-averaged."""

    def __init__(self, num_classes: int | None = None) -> None:
        from torchmetrics import classification

        multiclass = None if num_classes is None else classification.MulticlassAUROC(num_classes, average="macro")
        super().__init__(classification.BinaryAUROC(), multiclass)

    def compute(self) -> float:
        """NaN where the area is undefined: a class missing from the epoch's targets (torchmetrics says 0.0)."""
        from torchmetrics.utilities import dim_zero_cat

        with self.metric.sync_context():  # every rank's targets, under DDP (then one tensor, not a list)
            target = self.metric.target
            if isinstance(target, list):
                target = dim_zero_cat(target) if target else torch.empty(0)
            classes = target.unique().numel()
        needed = 2 if self.binary else self.metric.num_classes
        if classes < needed:
            return _undefined("auroc", f"the epoch's targets hold {classes} of its {needed} classes")
        return super().compute()


class f1(_Classification):
    """F1 score over the epoch: binary (threshold 0.5 on the probability), or macro-averaged over classes."""

    def __init__(self, num_classes: int | None = None) -> None:
        from torchmetrics import classification

        multiclass = None if num_classes is None else classification.MulticlassF1Score(num_classes, average="macro")
        super().__init__(classification.BinaryF1Score(), multiclass)

    def compute(self) -> float:
        """NaN where binary F1 is undefined: no positive target in the epoch (recall divides by zero)."""
        if self.binary:
            with self.metric.sync_context():
                positives = int(self.metric.tp.sum() + self.metric.fn.sum())
            if positives == 0:
                return _undefined("f1", "the epoch's targets hold no positive")
        return super().compute()


def _undefined(name: str, why: str) -> float:
    """An epoch-level metric with no value: NaN (never the best epoch), said in one warning line."""
    logging.getLogger("trainer").warning("%s is undefined: %s; logged as NaN, never the best epoch", name, why)
    return math.nan


class confusion_matrix(_Classification):
    """Counts of (true class, predicted class) over the epoch: rows are true classes. Logged as a picture."""

    def __init__(self, num_classes: int | None = None) -> None:
        from torchmetrics import classification

        multiclass = None if num_classes is None else classification.MulticlassConfusionMatrix(num_classes)
        super().__init__(classification.BinaryConfusionMatrix(), multiclass)

    def compute(self) -> list[list[int]]:
        return [[int(count) for count in row] for row in super().compute()]


CLASS_METRICS = (accuracy, top_k_acc, auroc, f1, confusion_matrix)  # what scores classes: no regression metric
