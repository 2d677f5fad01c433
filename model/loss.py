"""Losses selectable by name in config.json ("loss": "<function name>" or {"type": ..., "args": {...}}).

A loss takes the model output and the targets and returns the mean over the batch.
"""

import torch
import torch.nn.functional as F


def nll_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of log-probabilities (the models here end in log_softmax)."""
    return F.nll_loss(output, target)


def cross_entropy(output: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of raw scores (logits)."""
    _check_smoothing(label_smoothing)
    return F.cross_entropy(output, target, label_smoothing=label_smoothing)


def bce_with_logits(
    output: torch.Tensor, target: torch.Tensor, pos_weight: float | None = None, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Binary cross-entropy of one logit per sample against 0/1 targets (any shape with as many elements).

    `label_smoothing` moves the targets toward 0.5 (1 -> 1 - s/2, 0 -> s/2); `pos_weight` weighs the positive
    samples' term, e.g. n_negative / n_positive for imbalanced data."""
    _check_smoothing(label_smoothing)
    if pos_weight is not None and not pos_weight > 0:  # 0 ignores the positives; below 0 trains against them
        raise ValueError(f"pos_weight: expected a number > 0 (n_negative / n_positive), found {pos_weight!r}")
    target = target.to(output.dtype).reshape(output.shape)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + 0.5 * label_smoothing
    weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=output.dtype, device=output.device)
    return F.binary_cross_entropy_with_logits(output, target, pos_weight=weight)


def _check_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 1.0:  # 1 makes every target 0.5 (nothing to learn); beyond it, the wrong label
        raise ValueError(f"label_smoothing: expected a number in [0, 1), found {label_smoothing!r}")
