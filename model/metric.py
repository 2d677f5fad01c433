"""Metrics selectable by name in config.json ("metrics": ["accuracy", {"type": "top_k_acc", "args": {"k": 3}}]).

A metric takes the model output and the targets and returns the batch mean as a 0-d tensor; the
trainer keeps it on the device and averages it per sample over the epoch (no host sync per batch).
"""

import torch


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose highest-scoring class is the target."""
    return (output.argmax(dim=1) == target).float().mean()


def top_k_acc(output: torch.Tensor, target: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Fraction of samples whose target is among the k highest-scoring classes."""
    top = output.topk(k, dim=1).indices  # (B, k)
    return (top == target.unsqueeze(1)).any(dim=1).float().mean()
