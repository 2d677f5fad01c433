"""The cv feature: k folds decided once by id, out-of-fold predictions and their scores, a resume that keeps the
finished folds, folds trained one at a time, fold ensembles and test-time augmentation, and bad input as one line."""

import collections
import csv
import json
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import ROOT, run_script, tree_snapshot
from trainer.checkpoint import KEY_BEST_RESULT, load_checkpoint
from trainer.cross_validation import Folds
from trainer.ensemble import Ensemble
from utils.errors import ConfigError, DataError


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_folds_keep_each_group_whole_even_out_the_labels_and_ignore_the_listing_order():
    rng = random.Random(0)
    keys = [f"img{i}" for i in range(300)]
    groups = [f"patient{i // 3}" for i in range(300)]  # three images a patient, one label a patient
    labels = ["1" if (i // 3) % 7 == 0 else "0" for i in range(300)]
    plan = Folds(5, group_column="patient_id", seed=3)
    mask = plan.validation_mask(keys, torch.ones(300, dtype=torch.bool), labels, groups)
    assert mask.sum() == 0  # fold 0 is none: every row trains (the loader that decides the folds)
    fold_of_group = collections.defaultdict(set)
    for key, group in zip(keys, groups, strict=True):
        fold_of_group[group].add(plan.assignment[key])
    assert all(len(folds) == 1 for folds in fold_of_group.values())
    positives = collections.Counter(plan.assignment[k] for k, y in zip(keys, labels, strict=True) if y == "1")
    assert sorted(positives) == [1, 2, 3, 4, 5] and max(positives.values()) - min(positives.values()) <= 3
    assert sorted(collections.Counter(plan.assignment.values()).values()) == [60] * 5

    order = list(range(300))
    rng.shuffle(order)
    again = Folds(5, group_column="patient_id", seed=3)
    again.validation_mask([keys[i] for i in order], torch.ones(300, dtype=torch.bool),
                          [labels[i] for i in order], [groups[i] for i in order])  # fmt: skip
    assert again.assignment == plan.assignment  # decided by id, never by position


def test_the_test_split_stays_out_of_every_fold_and_changed_data_is_refused():
    keys, available = [str(i) for i in range(10)], torch.tensor([True] * 9 + [False])  # "9": the test split's
    plan = Folds(3, seed=0)
    plan.validation_mask(keys, available, None, None)
    assert set(plan.assignment) == set(keys[:9])
    masks = [
        Folds(3, fold=f, assignment=plan.assignment).validation_mask(keys, available, None, None) for f in (1, 2, 3)
    ]
    assert [int(m.sum()) for m in masks] == [3, 3, 3] and not any(m[9] for m in masks)
    assert torch.equal(masks[0] | masks[1] | masks[2], available)
    with pytest.raises(DataError, match=r"folds.json: the saved folds no longer match the data \(1 ids new, 0 gone"):
        Folds(3, fold=1, assignment=plan.assignment).validation_mask([*keys[:9], "new"], torch.ones(10, dtype=bool),
                                                                     None, None)  # fmt: skip


@pytest.mark.parametrize(
    ("plan", "labels", "groups", "expected"),
    [
        (Folds(5), None, ["a", "a", "b", "b", "c", "c"], "cross_validation.folds: 5 folds of 3 groups; use at most 3"),
        (
            Folds(3),
            ["1", "1", "0", "0", "0", "0"],
            None,
            "of 3 has no row labelled '1', so its validation scores (AUROC, F1) are undefined",
        ),
        (Folds(2, group_column="site"), None, None, "cross_validation.group_column: this data loader has no columns"),
    ],
)
def test_folds_that_cannot_be_dealt_are_one_line(plan, labels, groups, expected):
    with pytest.raises(DataError, match=re.escape(expected)):
        plan.validation_mask([str(i) for i in range(6)], torch.ones(6, dtype=torch.bool), labels, groups)


class Halves(nn.Module):
    """Scores two classes by the left and the right half of an image: a mirror swaps them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.stack([x[..., :half].mean(dim=(1, 2, 3)), x[..., half:].mean(dim=(1, 2, 3))], dim=1)


def test_an_ensemble_is_the_mean_of_its_members_and_hflip_of_an_image_and_its_mirror():
    images = torch.rand(4, 1, 6, 6)
    other = nn.Sequential(Halves(), nn.Linear(2, 2))
    ensemble = Ensemble([Halves(), other], "classification", ["hflip"])
    probabilities = [m(v).softmax(dim=1) for m in (Halves(), other) for v in (images, images.flip(-1))]
    assert torch.allclose(ensemble(images).exp(), torch.stack(probabilities).mean(dim=0), atol=1e-6)
    binary = Ensemble([nn.Flatten(), nn.Flatten()], "binary", [])
    logits = torch.tensor([[0.3], [-2.0]])
    assert torch.allclose(torch.sigmoid(binary(logits)), torch.sigmoid(logits), atol=1e-6)
    with pytest.raises(ConfigError, match=r"--tta: flips images, and the inputs are \(5,\)"):
        Ensemble([nn.Identity()], "regression", ["hflip"])(torch.rand(2, 5))


def cross_validate(tmp_path: Path, *args: str, run_id: str = "cv") -> tuple[subprocess.CompletedProcess, Path]:
    epochs = [] if any(a.startswith("trainer.epochs=") for a in args) else ["trainer.epochs=1"]  # a key given once
    done = run_script("train.py", "-c", "config.json", "--folds", "3", "--run-id", run_id, *epochs,
                      f"save_dir={tmp_path / 'saved'}", "tensorboard=false", "verbosity=1", *args)  # fmt: skip
    return done, tmp_path / "saved" / "models" / "Digits_CNN" / run_id


@pytest.mark.e2e
def test_digit_folds_give_every_training_row_once_their_scores_and_an_ensemble_of_the_folds(tmp_path):
    done, folder = cross_validate(tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"the folds' ensemble: python test.py --resume {folder}" in done.stdout  # digits: no new inputs to read
    assert "Evaluate it on" not in done.stdout  # a fold's own test.py hint would not be the next step
    oof, folds = rows(folder / "oof.csv"), json.loads((folder / "folds.json").read_text())["assignment"]
    assert list(oof[0]) == ["id", "target", "prediction", *(f"prob_{c}" for c in range(10)), "fold"]
    assert sorted(r["id"] for r in oof) == sorted(folds) and len(folds) == 1449  # 1797 less the test split's 348
    assert all(int(r["fold"]) == folds[r["id"]] for r in oof)
    assert [int(r["id"]) for r in oof] == sorted(int(r["id"]) for r in oof)  # in the data's order
    summary = json.loads((folder / "cv.json").read_text())
    accuracy = sum(r["prediction"] == r["target"] for r in oof) / len(oof)
    assert summary["oof"]["accuracy"] == pytest.approx(accuracy) and summary["oof"]["n_samples"] == 1449
    for i, fold in enumerate(summary["folds"], start=1):
        best = load_checkpoint(folder / f"fold_{i}" / "model_best.pth").state[KEY_BEST_RESULT]
        assert fold == {"fold": i, **best}
    done = run_script("test.py", "--resume", str(folder / "fold_1"), "--split", "valid")  # rows it trained on
    assert done.returncode == 1 and "a cross-validation's folds each trained on the others' rows" in done.stderr

    ensemble, members = tmp_path / "ensemble.csv", []
    assert run_script("test.py", "--resume", str(folder), "--predictions", str(ensemble)).returncode == 0
    assert (folder / "ensemble.test.json").is_file()
    for i in (1, 2, 3):
        member = tmp_path / f"fold{i}.csv"
        assert run_script("test.py", "--resume", str(folder / f"fold_{i}"), "--out", str(tmp_path / f"{i}.json"),
                          "--predictions", str(member)).returncode == 0  # fmt: skip
        members.append(rows(member))
    for k, row in enumerate(rows(ensemble)):
        for c in range(10):
            mean = sum(float(m[k][f"prob_{c}"]) for m in members) / 3
            assert float(row[f"prob_{c}"]) == pytest.approx(mean, abs=2e-6)
    (folder / "fold_2").rename(tmp_path / "fold_2")  # an ensemble of the folds there are would be another model
    done = run_script("test.py", "--resume", str(folder), "--out", str(tmp_path / "two.json"))
    assert done.returncode == 1 and "fold_2 is missing, of the 3 folds its ensemble averages" in done.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--folds", "1"], "cross_validation.folds: expected a number >= 2, found 1"),
        (["--fold", "4"], "--fold 4: the cross-validation has folds 1 to 3"),
        (["cross_validation.group_column=site"], "cross_validation.group_column: this data loader has no columns"),
        (["cross_validation.stratify=true"], "cross_validation.stratify: DigitsDataLoader gives no labels"),
        (["loss=bce_with_logits"], "the first training batch failed, before anything was written"),  # in fold 1
        (['loss={"type": "BCEWithLogitsLoss", "args": {"pos_weight": "auto"}}'], '"auto" needs a binary task'),
    ],
)
def test_bad_cross_validation_settings_are_one_line_and_write_nothing(args, expected, tmp_path):
    done, _ = cross_validate(tmp_path, *args)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and expected in lines[0], done.stderr
    assert tree_snapshot(tmp_path / "saved") == {}


@pytest.mark.e2e
def test_a_fold_resumes_only_with_its_cross_validation_and_tta_names_are_checked(tmp_path):
    done, folder = cross_validate(tmp_path, "--fold", "1")
    assert done.returncode == 0, done.stderr
    assert "Folds [2, 3] of 3 remain: python train.py --resume" in done.stdout and not (folder / "cv.json").exists()
    before = tree_snapshot(folder)
    for command, expected in [
        (["train.py", "--resume", str(folder / "fold_1" / "last.pth")], "continue it with python train.py --resume"),
        (["predict.py", "--resume", str(folder), "--input", "x.csv", "--out", "o.csv"], "--input x.csv: not found"),
        (["test.py", "--resume", str(folder)], "the cross-validation is not finished (no cv.json)"),
        (["test.py", "--resume", str(folder / "fold_1"), "--tta", "spin"], "--tta spin: unknown view 'spin'"),
        (["train.py", "--resume", str(folder), "-c", "config.json"], "--resume CVDIR: a cross-validation goes on"),
        (["train.py", "-c", "config.json", "--fold", "2"], "--fold: only with a cross-validation"),
        (["train.py", "--resume", str(folder), "--folds", "5"], "the cross-validation has 3 folds (folds.json)"),
        (["train.py", "--resume", str(folder), "trainer.epochs=2"], "trainer: fold 1 was trained with another"),
        (["test.py", "--resume", str(folder / "fold_1"), "--tta", "hflip,hflip"], "a view named twice"),
    ]:  # fmt: skip
        done = run_script(*command)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and expected in lines[0], (command, done.stderr)
    assert tree_snapshot(folder) == before
    damaged = tmp_path / "damaged"
    for edit, expected in [
        (lambda f: (f / "fold_1").rename(f / "fold_2"), "fold_2/last.pth: not fold 2's checkpoint"),
        (lambda f: edit_json(f / "config.json", arch={"type": "DigitsModel"}), "arch: fold 1"),
        (lambda f: edit_json(f / "config.json", cross_validation=None), "has no cross_validation section"),
    ]:  # fmt: skip
        shutil.rmtree(damaged, ignore_errors=True)
        shutil.copytree(folder, damaged)
        edit(damaged)
        snapshot = tree_snapshot(damaged)
        done = run_script("train.py", "--resume", str(damaged))
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and expected in lines[0], done.stderr
        assert tree_snapshot(damaged) == snapshot  # nothing trained, nothing written


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.e2e
def test_an_interrupted_cross_validation_resumes_to_the_same_oof_csv_and_folds_can_train_apart(tmp_path):
    done, straight = cross_validate(tmp_path, "trainer.epochs=2", run_id="straight")
    assert done.returncode == 0, done.stderr

    command = [sys.executable, str(ROOT / "train.py"), "-c", "config.json", "--folds", "3", "--run-id", "stopped",
               "trainer.epochs=2", f"save_dir={tmp_path / 'saved'}", "tensorboard=false", "verbosity=1"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # fold 2's first epoch is over: the signal lands inside its second
        if "Fold 2 of 3" in line:
            break
    for line in process.stdout:
        if line.startswith("    epoch          : 1"):
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    folder = tmp_path / "saved" / "models" / "Digits_CNN" / "stopped"
    assert process.returncode == 130, stderr
    assert stderr.strip().startswith("interrupted: fold 2 of 3: SIGINT received; stopped at")
    assert stderr.strip().endswith(f"continue the cross-validation with: python train.py --resume {folder}")
    fold_1 = (folder / "fold_1" / "model_best.pth").read_bytes()

    resumed = run_script("train.py", "--resume", str(folder))
    assert resumed.returncode == 0, resumed.stderr
    assert "Fold 1 of 3: done, kept" in resumed.stdout and (folder / "fold_1" / "model_best.pth").read_bytes() == fold_1
    assert (folder / "oof.csv").read_bytes() == (straight / "oof.csv").read_bytes()
    assert (folder / "cv.json").read_bytes() == (straight / "cv.json").read_bytes()

    done, apart = cross_validate(tmp_path, "trainer.epochs=2", "--fold", "3", run_id="apart")  # machine 1: fold 3
    assert done.returncode == 0, done.stderr
    for fold in ("2", "1"):  # the others, with the folder: a shared disk, or folds copied in
        done = run_script("train.py", "--resume", str(apart), "--fold", fold)
        assert done.returncode == 0, done.stderr
    assert (apart / "oof.csv").read_bytes() == (straight / "oof.csv").read_bytes()


@pytest.mark.e2e
def test_regression_folds_of_a_csv_table_grouped_by_a_column_score_in_the_targets_units(tmp_path, base_config):
    pytest.importorskip("data_loader.csv_data", reason="the csv feature reads CSV tables")
    from sklearn.metrics import r2_score

    from test_csv import houses

    config = {**base_config, "name": "Houses_CV", "save_dir": str(tmp_path / "saved"), "tensorboard": False}
    config.update(
        arch={"type": "MLP", "args": {"in_features": 2, "out_features": 1, "hidden": 16, "layers": 1}},
        data_loader={"type": "CsvDataLoader", "args": {
            "csv_path": str(houses(tmp_path / "houses.csv", n=300)), "target_column": "price", "id_column": "id",
            "feature_columns": ["area", "rooms"], "task": "regression", "batch_size": 32, "test_split": 30}},
        optimizer={"type": "Adam", "args": {"lr": 0.01}}, loss="MSELoss", metrics=["r2"], lr_scheduler=None,
        cross_validation={"folds": 3, "group_column": "kind"},  # flat, house, villa: one kind a fold
    )  # fmt: skip
    config["trainer"] = {**config["trainer"], "epochs": 30, "monitor": "max val_r2", "save_period": 100}
    (tmp_path / "houses.json").write_text(json.dumps(config))
    done = run_script("train.py", "-c", str(tmp_path / "houses.json"), "--run-id", "cv")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "saved" / "models" / "Houses_CV" / "cv"
    oof = rows(folder / "oof.csv")
    kinds = {r["id"]: r["kind"] for r in rows(tmp_path / "houses.csv")}
    assert len(oof) == 270 and len({(kinds[r["id"]], r["fold"]) for r in oof}) == 3  # each kind in one fold only
    truth, predicted = [float(r["target"]) for r in oof], [float(r["prediction"]) for r in oof]
    assert min(truth) > 50000  # in the target's units: the folds share one standardization
    r2 = json.loads((folder / "cv.json").read_text())["oof"]["r2"]
    assert r2 == pytest.approx(r2_score(truth, predicted), abs=1e-4)


def test_each_fold_is_a_run_of_its_own_in_one_wandb_group_and_torchrun_is_refused(tmp_path, monkeypatch, base_config):
    pytest.importorskip("logger.wandb_writer", reason="the wandb feature")
    from parse_config import ConfigParser
    from trainer import cross_validation

    config = ConfigParser(
        {**base_config, "cross_validation": {"folds": 3}, "wandb": {"project": "p", "mode": "offline"}}
    )
    folder = tmp_path / "saved" / "models" / "Digits_CNN" / "0101_120000"
    fold = cross_validation.for_fold(config, folder, 2).config
    assert fold["save_dir"] == str(tmp_path / "saved") and fold["name"] == "Digits_CNN"
    assert fold["cross_validation"] == {**config["cross_validation"], "fold": 2}
    assert fold["wandb"] == {"project": "p", "mode": "offline", "group": "Digits_CNN-0101_120000",
                             "name": "Digits_CNN-0101_120000-fold_2"}  # fmt: skip
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="cross_validation: not under torchrun; train the folds on several machines"):
        cross_validation.main(config, train=None)
