"""Losses selectable by name in config.json ("loss": "<function name>" or {"type": ..., "args": {...}}).

A loss takes the model output and the targets and returns the mean over the batch.
"""

import logging
from typing import Any

import torch
import torch.nn.functional as F

from utils.errors import ConfigError


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
    samples' term, e.g. n_negative / n_positive for imbalanced data ("auto": that ratio of the training split,
    which train.py writes into the run's config)."""
    _check_smoothing(label_smoothing)
    if pos_weight == "auto":  # train.py puts the number in its place; a config evaluated elsewhere has none
        raise ValueError('pos_weight: "auto" is decided by train.py from the training split; give the number')
    if pos_weight is not None and not pos_weight > 0:  # 0 ignores the positives; below 0 trains against them
        raise ValueError(f"pos_weight: expected a number > 0 (n_negative / n_positive), found {pos_weight!r}")
    target = target.to(output.dtype).reshape(output.shape)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + 0.5 * label_smoothing
    weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=output.dtype, device=output.device)
    return F.binary_cross_entropy_with_logits(output, target, pos_weight=weight)


def decide_pos_weight(loss: str | dict, data_loader: Any) -> float | None:
    """The config's loss entry with pos_weight "auto": n_negative / n_positive of the loader's split (training),
    written into the entry in place (a run's config.json, its checkpoints and a resume hold the number) and to
    info.log; the number, or None where the entry says no "auto"."""
    args = loss.get("args", {}) if isinstance(loss, dict) else {}
    if args.get("pos_weight") != "auto":
        return None
    targets = getattr(data_loader.dataset, "targets", None)
    if data_loader.task != "binary" or not isinstance(targets, torch.Tensor):
        raise ConfigError(
            'loss.args.pos_weight: "auto" needs a binary task whose loader holds its targets; give a number'
        )
    targets = targets[data_loader.epoch_sampler.indices].reshape(-1)
    positives = int((targets > 0.5).sum())
    if positives == 0:
        raise ConfigError('loss.args.pos_weight: "auto", and the training split holds no positive; give a number')
    weight = (targets.numel() - positives) / positives
    args["pos_weight"] = weight if loss["type"] == "bce_with_logits" else [weight]  # a torch class takes a list
    logging.getLogger("train").info(
        "loss.args.pos_weight auto: %.6g (negatives / positives of the training split)", weight
    )
    return weight


def _check_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 1.0:  # 1 makes every target 0.5 (nothing to learn); beyond it, the wrong label
        raise ValueError(f"label_smoothing: expected a number in [0, 1), found {label_smoothing!r}")
