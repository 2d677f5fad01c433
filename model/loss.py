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
    return F.cross_entropy(output, target, label_smoothing=label_smoothing)
