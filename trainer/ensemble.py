"""Fold ensembles and test-time augmentation (the cv feature), for predict.py and test.py.

predict.py --resume CVDIR --input test.csv --out submission.csv             # the mean of the folds' predictions
predict.py --resume CVDIR --input test.csv --out submission.csv --tta hflip # and of each image's mirror

An `Ensemble` is a model: each batch goes through every member, as it is and as each augmented view, and the
output is the mean prediction read back the way the members' outputs are read (the log of the mean probability
for a classifier, the logit of the mean probability of a binary one, the mean value for regression), so that
evaluation, metrics and prediction files work on it unchanged and each input is decoded once for all.
"""

import shlex
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from logger.run_folder import BEST_NAME, LAST_NAME
from trainer.checkpoint import Checkpoint, load_checkpoint
from utils.errors import CheckpointError, ConfigError
from utils.util import read_json

# The test-time views by name: flips of the image's last two dimensions (height, width).
VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot180": lambda x: x.flip(-2, -1),
}
CV_SUMMARY = "cv.json"  # written when every fold is done


def views(tta: str | None) -> list[str]:
    """`--tta hflip,vflip` as view names; an unknown one is one line."""
    names = [name.strip() for name in (tta or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in VIEWS]
    if unknown or (tta is not None and not names) or len(set(names)) < len(names):
        problem = f"unknown view {unknown[0] if unknown else ''!r}" if unknown or not names else "a view named twice"
        raise ConfigError(f"--tta {tta}: {problem} (views: {', '.join(VIEWS)}, each once)")
    return names


def fold_checkpoints(folder: Path) -> list[Checkpoint]:
    """Each fold's best checkpoint (else its last), in fold order, of a finished cross-validation: all of them."""
    if not (folder / CV_SUMMARY).is_file():
        raise CheckpointError(
            f"{folder}: the cross-validation is not finished (no {CV_SUMMARY}); continue it with "
            f"python train.py --resume {shlex.quote(str(folder))}"
        )
    summary = read_json(folder / CV_SUMMARY)
    folds = summary.get("folds") if isinstance(summary, dict) else None
    if not isinstance(folds, list) or not folds:
        raise CheckpointError(
            f"{folder / CV_SUMMARY}: damaged (no list of folds); python train.py --resume {shlex.quote(str(folder))} "
            "writes it again"
        )
    if missing := [f"fold_{i}" for i in range(1, len(folds) + 1) if not (folder / f"fold_{i}").is_dir()]:
        raise CheckpointError(f"{folder}: {missing[0]} is missing, of the {len(folds)} folds its ensemble averages")
    return [load_checkpoint(folder / f"fold_{i}", in_folder=(BEST_NAME, LAST_NAME)) for i in range(1, len(folds) + 1)]


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module], task: str, tta: list[str]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.task = task
        self.views = [lambda x: x, *(VIEWS[name] for name in tta)]
        self.tta = tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tta and x.ndim != 4:
            raise ConfigError(f"--tta: flips images, and the inputs are {tuple(x.shape)[1:]}; leave --tta out")
        outputs = torch.stack([member(view(x)).float() for member in self.members for view in self.views])
        if self.task == "regression":
            return outputs.mean(dim=0)
        if self.task == "binary":
            return torch.logit(torch.sigmoid(outputs).mean(dim=0))
        return outputs.softmax(dim=-1).mean(dim=0).log()  # softmax: of logits and of log-probabilities alike
