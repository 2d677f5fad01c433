"""Cross-validation (the cv feature): K runs on K folds of the training rows, their out-of-fold predictions and
their scores, in one folder.

python train.py -c config.json --folds 5                          # or a cross_validation section in the config
python train.py --resume saved/models/<name>/<run_id>             # goes on: finished folds are kept
python train.py --resume saved/models/<name>/<run_id> --fold 3    # fold 3 only (folds on several machines)

    <save_dir>/models/<name>/<run_id>/        config.json, folds.json, fold_1/ ... fold_K/ (runs), oof.csv, cv.json
    <save_dir>/log/<name>/<run_id>/fold_<i>/  each fold's info.log, metrics.csv and TensorBoard events

The rows the config's test_split holds out stay out of every fold. The others are dealt into K folds once, by
id, and saved (folds.json): stratified by label where the loader has labels (its `stratify`), and a group's rows
(`group_column`, e.g. a patient) all in one fold. Fold i trains on the other folds and validates on fold i. Every
fold reads the data with the preprocessing of all the training rows (class names, standardization statistics),
so that the folds' models read an input alike and their ensemble (predict.py --resume CVDIR) reads it once.
When every fold is done, oof.csv holds each training row predicted by the best checkpoint of the fold that did
not train on it, and cv.json each fold's best validation results and every metric over oof.csv.
"""

import copy
import dataclasses
import hashlib
import logging
import math
import os
import shlex
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from logger.logger import setup_logging
from logger.run_folder import BEST_NAME, FOLDS_FILE, LAST_NAME, create_run_folder
from model.loss import decide_pos_weight
from trainer.checkpoint import KEY_BEST_RESULT, KEY_CONFIG, Checkpoint, check_resume, load_checkpoint, run_is_finished
from trainer.evaluation import predict, prediction_rows, resolve_amp, trained_model
from trainer.metric_tracker import MetricTracker
from trainer.options import TrainerOptions, loader_task
from utils.errors import CheckpointError, ConfigError, DataError, TrainingInterrupted
from utils.util import read_json, write_csv, write_json

OOF_FILE, CV_FILE = "oof.csv", "cv.json"


@dataclasses.dataclass
class Folds:
    """The cross_validation section, as a data loader's `validation_split`: the loader's split_indices asks it for
    the validation rows (`validation_mask`); `fold` is the fold it serves (0: none, every training row trains).
    `assignment` (id -> fold) is decided by the first data it sees, and every later loader is held to it."""

    folds: int
    stratify: bool | None = None
    group_column: str | None = None
    seed: int = 0
    fold: int = 0
    assignment: dict[str, int] | None = None

    def validation_mask(
        self, keys: Sequence[str], available: torch.Tensor, strata: Sequence[str] | None, groups: Sequence[str] | None
    ) -> torch.Tensor:
        if self.group_column is not None and groups is None:
            raise DataError("cross_validation.group_column: this data loader has no columns to group by; set it null")
        rows = available.nonzero().flatten().tolist()
        development = [keys[i] for i in rows]
        if self.assignment is None:
            picked = [strata[i] for i in rows] if strata is not None else None
            self.assignment = self._decide(development, picked, [groups[i] for i in rows] if groups else None)
        elif set(development) != set(self.assignment):
            added, gone = (
                sorted(set(development) - set(self.assignment)),
                sorted(set(self.assignment) - set(development)),
            )
            example = f"such as {(added or gone)[0]!r}"
            raise DataError(
                f"{FOLDS_FILE}: the saved folds no longer match the data ({len(added)} ids new, {len(gone)} gone, "
                f"{example}); a cross-validation holds to its folds: start a new one on the new data"
            )
        chosen = [bool(a) and self.assignment[k] == self.fold for k, a in zip(keys, available.tolist(), strict=True)]
        return torch.tensor(chosen, dtype=torch.bool)

    def _decide(self, keys: list[str], strata: list[str] | None, groups: list[str] | None) -> dict[str, int]:
        """Each id's fold (1..K) by scikit-learn's (Stratified)(Group)KFold over the ids in an order their hash
        decides, never a listing: a key listed twice is one sample, in one fold."""
        from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        units = sorted(first, key=lambda k: (hashlib.blake2b(f"{self.seed}\0{k}".encode()).digest(), k))
        labels = [strata[first[k]] for k in units] if strata is not None else None
        group_of = [groups[first[k]] for k in units] if groups is not None else None
        what, count = ("groups", len(set(group_of))) if group_of else ("rows", len(units))
        if self.folds > count:
            raise DataError(f"cross_validation.folds: {self.folds} folds of {count} {what}; use at most {count}")
        seeded = {"shuffle": True, "random_state": self.seed}
        if group_of:
            splitter = StratifiedGroupKFold(self.folds, **seeded) if labels else GroupKFold(self.folds)
        else:
            splitter = StratifiedKFold(self.folds, **seeded) if labels else KFold(self.folds, **seeded)
        try:
            with warnings.catch_warnings():  # "the least populated class has only n members": said below, in one line
                warnings.simplefilter("ignore")
                dealt = [valid for _, valid in splitter.split(np.zeros(len(units)), labels, group_of)]
        except ValueError as e:
            raise DataError(f"cross_validation.folds: {e}") from None
        for fold, valid in enumerate(dealt, start=1):
            missing = sorted(set(labels) - {labels[i] for i in valid}) if labels is not None else []
            if missing:
                raise DataError(
                    f"cross_validation.folds: fold {fold} of {self.folds} has no row labelled {missing[0]!r}, so its "
                    f"validation scores (AUROC, F1) are undefined; use fewer folds{' or other groups' * bool(groups)}"
                )
        return {units[i]: fold for fold, valid in enumerate(dealt, start=1) for i in valid}


def stored_config(folder: Path) -> Checkpoint:
    """The config a cross-validation was started with (its config.json), as a checkpoint's stored config, for
    ConfigParser.load to read as it reads one: data, which chooses no host or folder."""
    return Checkpoint(folder / "config.json", {KEY_CONFIG: read_json(folder / "config.json")})


def main(
    config: Any,
    train: Callable[..., dict],
    resume: Path | None = None,
    weights: Checkpoint | None = None,
    run_id: str | None = None,
    dry_run: bool = False,
    fold: int | None = None,
) -> dict | None:
    """Train the folds not done yet (or fold `fold` only) with `train` (train.py's main); when every fold is
    done, write oof.csv and cv.json and return cv.json's content (None while folds remain)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("cross_validation: not under torchrun; train the folds on several machines with --fold I")
    section = config["cross_validation"]
    plan = Folds(section["folds"], section.get("stratify"), section.get("group_column"),
                 config["seed"] if section.get("seed") is None else section["seed"])  # fmt: skip
    if fold is not None and not 1 <= fold <= plan.folds:
        raise ConfigError(f"--fold {fold}: the cross-validation has folds 1 to {plan.folds}")
    if resume is not None:
        plan.assignment = read_folds(resume / FOLDS_FILE, plan.folds)
    loader_args = fold_loader_args(config, plan)  # the shared preprocessing; the folds decided, or checked
    if dry_run:  # fold 1 (or the one asked for) through the real step; nothing written
        first = dataclasses.replace(plan, fold=fold or 1)
        return train(config, dry_run=True, loader_args={**loader_args, "validation_split": first})
    trained = trained_folds(config, resume, plan) if resume is not None else {}  # checked before any training
    folder = resume or start(config, run_id, plan)
    setup_logging(None, config["verbosity"])  # until a fold's run logs to its info.log too, and after the last
    try:
        for i in [fold] if fold is not None else range(1, plan.folds + 1):
            train_fold(config, train, folder, dataclasses.replace(plan, fold=i), loader_args, trained.get(i), weights)
    except BaseException:
        if resume is None and not any(folder.rglob("*.pth")):  # stopped before a fold's first checkpoint
            shutil.rmtree(folder.parents[2] / "log" / folder.parent.name / folder.name, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return conclude(config, plan, folder, loader_args)


def train_fold(
    config: Any, train: Callable, folder: Path, plan: Folds, loader_args: dict, last: Checkpoint | None, weights: Any
) -> None:
    """Fold `plan.fold`: kept when done, resumed from `last`, or trained from the start."""
    logger, i, fold_config = logging.getLogger("cross_validation"), plan.fold, for_fold(config, folder, plan.fold)
    if last is not None and run_is_finished(last):
        logger.info("Fold %d of %d: done, kept", i, plan.folds)
        return
    logger.info("Fold %d of %d", i, plan.folds)
    args = {**loader_args, "validation_split": plan}
    try:
        if last is not None:
            check_resume(last, fold_config.config)
            train(fold_config, resume=last, loader_args=args)
        else:
            train(fold_config, weights=weights, run_id=f"{folder.name}/fold_{i}", loader_args=args)
    except TrainingInterrupted as e:
        e.args = (f"fold {i} of {plan.folds}: {str(e).split('; resume with')[0]}; continue the cross-validation "
                  f"with: python train.py --resume {shlex.quote(str(folder))}",)  # fmt: skip
        raise


# What the folds of one cross-validation share: a resume, an override or a hand-edited file may change none of it.
ALIKE = ("arch", "loss", "metrics", "optimizer", "lr_scheduler", "finetune", "trainer", "seed", "cross_validation")


def trained_folds(config: Any, folder: Path, plan: Folds) -> dict[int, Checkpoint]:
    """Each fold's last.pth, checked: its own fold's, trained as the config says now."""
    found = {}
    for i in range(1, plan.folds + 1):
        path = folder / f"fold_{i}" / LAST_NAME
        if not path.is_file():
            continue
        found[i], now = load_checkpoint(path), for_fold(config, folder, i).config
        saved = found[i].state[KEY_CONFIG]
        if (owner := (saved.get("cross_validation") or {}).get("fold")) != i:
            raise CheckpointError(f"{path}: not fold {i}'s checkpoint (its config says fold {owner}); damaged folder")
        for key in ALIKE:
            if saved.get(key) != now.get(key):
                raise ConfigError(
                    f"{key}: fold {i} was trained with another {key} than the config gives now (an override, an "
                    f"edited config.json, or a damaged {path}); the folds of a cross-validation are trained alike"
                )
    return found


def fold_loader_args(config: Any, plan: Folds) -> dict[str, Any]:
    """What every fold's loaders get besides the config's args: `stratify` as the section says (true by default
    where the loader takes it and the task has labels), and the preprocessing of all the training rows, from a
    loader of every training row (which decides the folds, or checks the saved ones); pos_weight "auto" too."""
    takes = config.takes("data_loader")
    task = loader_task(config.config)
    args: dict[str, Any] = {}
    if "stratify" in takes and task != "regression" and plan.stratify is not False:
        args["stratify"] = True
    elif plan.stratify:
        why = "a regression target has" if task == "regression" else f"{config['data_loader']['type']} gives"
        raise ConfigError(f"cross_validation.stratify: {why} no labels to stratify by; set it null")
    everything = config.init_obj("data_loader", split="train", seed=config["seed"], validation_split=plan, **args)
    decide_pos_weight(config["loss"], everything)  # "auto": of all the training rows, one number for every fold
    if "preprocessing" in takes:
        args["preprocessing"] = everything.preprocessing
    return args


def read_folds(path: Path, folds: int) -> dict[str, int]:
    """The saved folds (id -> fold), checked: a folder is data like any other, and its folds stay as decided."""
    saved = read_json(path)
    assignment = saved.get("assignment") if isinstance(saved, dict) else None
    if not isinstance(assignment, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in assignment.items()
    ):
        raise CheckpointError(f'{path}: damaged: expected {{"folds": K, "assignment": {{id: fold}}}}')
    if saved.get("folds") != folds:
        raise ConfigError(
            f"cross_validation.folds: the cross-validation has {saved.get('folds')} folds ({path.name}); a resumed "
            f"one keeps them (drop --folds {folds} or the override)"
        )
    empty = sorted(set(range(1, folds + 1)) - set(assignment.values()))
    if empty or not set(assignment.values()) <= set(range(1, folds + 1)):
        raise CheckpointError(f"{path}: damaged: folds 1 to {folds} expected, fold {(empty or ['?'])[0]} has no id")
    return assignment


def start(config: Any, run_id: str | None, plan: Folds) -> Path:
    """The new cross-validation's folder, with its config and its folds."""
    run = create_run_folder(config.config, run_id)
    run.release()  # each fold holds its own run's lock
    write_json(config.config, run.checkpoint_dir / "config.json")
    write_json({"folds": plan.folds, "seed": plan.seed, "assignment": plan.assignment}, run.checkpoint_dir / FOLDS_FILE)
    return run.checkpoint_dir


def for_fold(config: Any, folder: Path, fold: int) -> Any:
    """The config of fold `fold`'s run: in the cross-validation's folder, and one W&B group for all folds."""
    fold_config = copy.deepcopy(config.config)
    fold_config["save_dir"], fold_config["name"] = str(folder.parents[2]), folder.parent.name
    fold_config["cross_validation"] = {**fold_config["cross_validation"], "fold": fold}  # whose checkpoint it is
    if isinstance(fold_config.get("wandb"), dict):
        group = f"{folder.parent.name}-{folder.name}"
        fold_config["wandb"] = {"group": group, **fold_config["wandb"], "name": f"{group}-fold_{fold}"}
    return type(config)(fold_config)  # a ConfigParser, validated


def conclude(config: Any, plan: Folds, folder: Path, loader_args: dict) -> dict | None:
    """oof.csv and cv.json once every fold is done; the command that finishes the rest otherwise. The folder is
    read again: folds trained on other machines meanwhile (--fold I each) count."""
    logger = logging.getLogger("cross_validation")
    lasts = [folder / f"fold_{i}" / LAST_NAME for i in range(1, plan.folds + 1)]
    remaining = [
        i for i, last in enumerate(lasts, 1) if not last.is_file() or not run_is_finished(load_checkpoint(last))
    ]
    if remaining:
        logger.info("Folds %s of %d remain: python train.py --resume %s", remaining, plan.folds, folder)
        return None
    header, rows, oof, best = out_of_fold(config, plan, folder, loader_args)
    write_csv(header, rows, folder / OOF_FILE, raw=False, replace=True)
    summary = {"folds": best, "oof": {"n_samples": len(rows), **oof}}
    write_json(summary, folder / CV_FILE)
    scores = ", ".join(f"{k} {v:.6g}" for k, v in oof.items() if isinstance(v, float) and math.isfinite(v))
    logger.info("Cross-validation of %d folds, out of fold over %d rows: %s", plan.folds, len(rows), scores)
    reads_inputs = "inputs" in config.takes("data_loader")
    then = (
        f"predict.py --resume {shlex.quote(str(folder))} --input FILE --out submission.csv"
        if reads_inputs
        else f"test.py --resume {shlex.quote(str(folder))}"
    )
    logger.info("Written: %s, %s; the folds' ensemble: python %s", folder / OOF_FILE, folder / CV_FILE, then)
    return summary


def out_of_fold(config: Any, plan: Folds, folder: Path, loader_args: dict) -> tuple[list[str], list[list], dict, list]:
    """Every training row predicted by the fold that validated on it (its best checkpoint), in the data's order,
    with test.py --predictions' columns and `fold`; every metric over them; each fold's best validation results."""
    from utils.distributed import place_model

    criterion, metrics = config.init_ftn("loss"), config.init_ftn("metrics")
    indexed, outputs, targets, best, header = [], [], [], [], []
    for i in range(1, plan.folds + 1):
        checkpoint = load_checkpoint(folder / f"fold_{i}", in_folder=(BEST_NAME, LAST_NAME))
        best.append({"fold": i, **(checkpoint.state[KEY_BEST_RESULT] or {})})
        args = {**loader_args, "validation_split": dataclasses.replace(plan, fold=i)}
        loader = config.init_obj("data_loader", split="valid", seed=config["seed"], **args)
        model, device = place_model(trained_model(config, checkpoint), config["n_gpu"])
        amp = resolve_amp(TrainerOptions.of(config.config).amp, device)
        ids, output, target = predict(model, loader, device, amp, desc=f"Out of fold {i}")
        header, rows = prediction_rows(ids, output, target, loader)
        indexed += [(index, [*row, i]) for index, row in zip(loader.epoch_sampler.indices.tolist(), rows, strict=True)]
        outputs.append(output)
        targets.append(target)
    tracker = MetricTracker(metrics)
    output, target = torch.cat(outputs), torch.cat(targets)
    tracker.update(criterion(output, target), output, target)
    return [*header, "fold"], [row for _, row in sorted(indexed, key=lambda pair: pair[0])], tracker.result(), best
