"""Issue 17's recipe: a Kaggle-style binary image competition (train.csv + train/, test.csv + test/), trained with
a pretrained backbone frozen then unfrozen under OneCycleLR per batch, to a submission file."""

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import ROOT, run_script, train
from data_loader.csv_images import CsvImageDataLoader
from data_loader.make_digit_images import save_png, write_kaggle_layout
from parse_config import read_config
from utils.errors import DataError


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def competition(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kaggle") / "digits"
    write_kaggle_layout(folder)
    return folder


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_the_kaggle_layout_is_read_by_id_with_binary_targets(competition):
    train_rows = rows(competition / "train.csv")
    loaders = {
        s: CsvImageDataLoader(str(competition), extension=".png", split=s, batch_size=4096)
        for s in ("train", "valid", "test")
    }
    assert sum(loader.n_samples for loader in loaders.values()) == len(train_rows) == 1438
    images, targets = next(iter(loaders["train"]))
    assert images.shape[1:] == (3, 32, 32) and targets.dtype == torch.float32 and targets.shape[1:] == (1,)
    truth = {r["image_name"]: float(r["target"]) for r in train_rows}
    ids = [loaders["train"].sample_id(i) for _, b in loaders["train"].epoch_sampler.iter_batches() for i in b]
    assert targets[:, 0].tolist() == [truth[i] for i in ids]  # each image keeps its own label
    assert 0.05 < targets.mean() < 0.2 and loaders["train"].classes == ["0", "1"]


def test_a_stratified_split_keeps_the_positive_share_in_every_split(competition):
    positives = sum(r["target"] == "1" for r in rows(competition / "train.csv"))
    loaders = {
        s: CsvImageDataLoader(str(competition), extension=".png", split=s, stratify=True, batch_size=4096)
        for s in ("train", "valid", "test")
    }
    shares = {s: float(next(iter(loader))[1].sum()) for s, loader in loaders.items()}
    test_positives = math.floor(0.2 * positives + 0.5)  # each label's share, rounded half up
    valid_positives = math.floor(0.1 * (positives - test_positives) + 0.5)
    assert shares == {"train": positives - test_positives - valid_positives, "valid": valid_positives,
                      "test": test_positives}  # fmt: skip
    with pytest.raises(DataError, match=r"data_loader\.args\.stratify: a regression target has no labels"):
        CsvImageDataLoader(str(competition), extension=".png", task="regression", stratify=True)


def test_a_missing_image_or_column_is_one_line_naming_it(competition, tmp_path):
    broken = tmp_path / "train.csv"
    broken.write_text("image_name,target\nnot_there,1\n")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"not_there\.png: image not found \(1 of the 1 images named in .* missing\)"):
        CsvImageDataLoader(str(tmp_path), extension=".png")
    with pytest.raises(DataError, match=r"no id column 'image_id'.*did you mean 'image_name'"):
        CsvImageDataLoader(str(competition), id_column="image_id", extension=".png")


def test_the_shipped_config_validates_with_the_run_length_left_out():
    config = read_config(ROOT / "config_kaggle.json")
    assert "steps_per_epoch" not in config["lr_scheduler"]["args"] and "epochs" not in config["lr_scheduler"]["args"]
    from parse_config import ConfigParser

    ConfigParser(config)


@pytest.mark.e2e
def test_config_kaggle_trains_across_the_unfreeze_and_writes_a_submission(competition, tmp_path, capsys):
    weights = tmp_path / "resnet18.pth"  # a "pretrained" start: random, the digits are learnt in a few epochs
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    config = read_config(ROOT / "config_kaggle.json")
    config["data_loader"]["args"]["data_dir"] = str(competition)
    config["arch"]["args"]["weights"] = str(weights)
    config.update(save_dir=str(tmp_path / "saved"), tensorboard=False, verbosity=1)
    result, run = train(config, tmp_path, "kaggle")
    assert result["best"]["val_auroc"] >= 0.99
    # No test split held out (test.csv is the competition's): the hint evaluates the validation split.
    best = run.checkpoint_dir / "model_best.pth"
    hint = f"Evaluate it on the validation split: python test.py --resume {best} --split valid"
    assert hint in capsys.readouterr().out

    submission = tmp_path / "submission.csv"
    done = run_script("predict.py", "--resume", str(run.checkpoint_dir), "--input", str(competition / "test.csv"),
                      "--out", str(submission), "--float-format", ".5f")  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = rows(submission)
    assert list(written[0]) == ["image_name", "target"]
    assert [r["image_name"] for r in written] == [r["image_name"] for r in rows(competition / "test.csv")]
    assert all(len(r["target"].split(".")[1]) == 5 and 0 <= float(r["target"]) <= 1 for r in written)
    truth = {r["image_name"]: int(r["target"]) for r in rows(competition / "solution.csv")}
    auroc = roc_auc_score([truth[r["image_name"]] for r in written], [float(r["target"]) for r in written])
    assert auroc >= 0.99


def test_a_csv_id_cannot_name_a_file_outside_its_folder_and_training_needs_rows(tmp_path):
    (tmp_path / "secret.png").write_bytes(b"")
    save_png(torch.zeros(3, 8, 8, dtype=torch.uint8), tmp_path / "train" / "a.png")
    (tmp_path / "train.csv").write_text("image_name,target\n../secret,1\na,0\n")
    with pytest.raises(DataError, match=r"train\.csv: the id \.\./secret names a file outside .*train"):  # as written
        CsvImageDataLoader(str(tmp_path), extension=".png", image_size=8)
    (tmp_path / "train.csv").write_text("image_name,target\na,0\n")
    with pytest.raises(DataError, match=r"train\.csv: 1 rows leave none for training"):
        CsvImageDataLoader(str(tmp_path), extension=".png", image_size=8, test_split=0.99)


def test_the_shipped_recipe_runs_in_what_the_device_runs_natively():
    """bf16 on a CPU without AVX512-BF16 or AMX is emulated: 90 s a step against fp32's 2.5 s (issue 25)."""
    assert read_config(ROOT / "config_kaggle.json")["trainer"]["amp"] == "auto"


def test_an_id_that_ends_in_the_extension_is_not_given_it_twice_and_a_nul_names_its_line(tmp_path):
    for name in ("a", "b"):
        save_png(torch.zeros(3, 8, 8, dtype=torch.uint8), tmp_path / "train" / f"{name}.png")
    (tmp_path / "train.csv").write_text("image_name,target\na.png,0\nb,1\n")  # one id with the extension, one without
    loader = CsvImageDataLoader(str(tmp_path), extension=".png", image_size=8, validation_split=0, test_split=0)
    assert loader.n_samples == 2
    (tmp_path / "train.csv").write_text("image_name,target\na,0\nb\0x,1\n")
    with pytest.raises(DataError, match=r"train\.csv, line 3, column 'image_name': the id holds a NUL byte"):
        CsvImageDataLoader(str(tmp_path), extension=".png", image_size=8)


@pytest.mark.e2e
def test_five_grouped_folds_to_one_submission_with_test_time_augmentation(competition, tmp_path):
    """Issue 24's recipe: config_kaggle_cv.json with a patient column, 5 folds, then the folds' ensemble with
    hflip on test.csv: every training row out of fold once, no patient in two folds, the scores of oof.csv."""
    data = tmp_path / "grouped"
    data.mkdir()
    for name in ("train", "test"):
        shutil.copytree(competition / name, data / name)
    (data / "test.csv").write_bytes((competition / "test.csv").read_bytes())
    train_rows = rows(competition / "train.csv")
    with (data / "train.csv").open("w", newline="") as handle:  # three images a patient, in the file's order
        writer = csv.writer(handle)
        writer.writerow(["image_name", "target", "patient_id"])
        writer.writerows([r["image_name"], r["target"], f"p{i // 3}"] for i, r in enumerate(train_rows))
    weights = tmp_path / "resnet18.pth"
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    done = run_script("train.py", "-c", "config_kaggle_cv.json", f"data_loader.args.data_dir={data}",
                      "cross_validation.group_column=patient_id", "--folds", "5", f"arch.args.weights={weights}",
                      "trainer.epochs=3", f"save_dir={tmp_path / 'saved'}", "tensorboard=false", "--run-id", "cv",
                      timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "saved" / "models" / "Kaggle_Digits_ResNet18_CV" / "cv"
    assert f"the folds' ensemble: python predict.py --resume {folder} --input FILE" in done.stdout
    oof, folds = rows(folder / "oof.csv"), json.loads((folder / "folds.json").read_text())["assignment"]
    assert sorted(r["id"] for r in oof) == sorted(r["image_name"] for r in train_rows)
    patients = {}
    for i, r in enumerate(train_rows):
        patients.setdefault(f"p{i // 3}", set()).add(folds[r["image_name"]])
    assert all(len(fold) == 1 for fold in patients.values())
    summary = json.loads((folder / "cv.json").read_text())
    auroc = roc_auc_score([int(r["target"]) for r in oof], [float(r["prob_1"]) for r in oof])
    assert summary["oof"]["auroc"] == pytest.approx(auroc, abs=1e-5) and auroc >= 0.97
    assert len(summary["folds"]) == 5 and all(f["val_auroc"] >= 0.9 for f in summary["folds"])
    config = json.loads((folder / "config.json").read_text())
    assert isinstance(config["loss"]["args"]["pos_weight"], float)  # "auto": the number, written into the run

    submission = tmp_path / "submission.csv"
    done = run_script("predict.py", "--resume", str(folder), "--input", str(data / "test.csv"), "--out",
                      str(submission), "--tta", "hflip")  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = rows(submission)
    assert [r["image_name"] for r in written] == [r["image_name"] for r in rows(competition / "test.csv")]
    truth = {r["image_name"]: int(r["target"]) for r in rows(competition / "solution.csv")}
    assert roc_auc_score([truth[r["image_name"]] for r in written], [float(r["target"]) for r in written]) >= 0.97


@pytest.mark.e2e
def test_mixup_and_cutmix_train_the_kaggle_recipe_with_its_binary_loss(competition, tmp_path):
    """trainer.mixup in the shipped recipe's setting: one logit, pos_weight and label smoothing, freeze-unfreeze,
    OneCycleLR per batch, bf16 where the CPU runs it; the metrics on the true labels."""
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    config = read_config(ROOT / "config_kaggle.json")
    config["data_loader"]["args"]["data_dir"] = str(competition)
    config["arch"]["args"]["weights"] = str(weights)
    config["trainer"]["mixup"] = {"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "prob": 0.8}
    config.update(save_dir=str(tmp_path / "saved"), tensorboard=False, verbosity=1)
    result, _ = train(config, tmp_path, "mixed")
    assert result["best"]["val_auroc"] >= 0.97
    assert result["last"]["loss"] > result["last"]["val_loss"]  # the training loss is the mixed targets'
