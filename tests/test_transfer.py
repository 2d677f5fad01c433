"""Bring your data and a pretrained model: image folders, torchvision backbones, freezing strategies,
partial loading, predictions (issue 12). The e2e tests run the shipped config_transfer.json."""

import copy
import csv
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from base.base_model import BaseModel
from conftest import ROOT, evaluate, run_script, shrink, train
from data_loader.image_folder import ImageFolderDataLoader
from data_loader.make_digit_images import write_digit_images
from logger.run_folder import BEST_NAME, LAST_NAME
from model.torchvision_model import TorchvisionModel
from trainer.checkpoint import (
    KEY_DATA,
    KEY_OPTIMIZER,
    KEY_STATE_DICT,
    Checkpoint,
    apply_changed_optimizer_args,
    load_checkpoint,
    load_model_state,
)
from trainer.evaluation import prediction_rows
from trainer.finetuning import Finetuning, per_group_lrs, set_learning_rate
from utils.errors import CheckpointError, ConfigError, DataError
from utils.util import read_json


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> Path:
    """The decoded-image cache of these tests, away from the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "pytorch_template"


def write_image_folder(root: Path, per_class: int = 6, classes: tuple[str, ...] = ("cat", "dog", "owl")) -> Path:
    """A tiny folder of 8x8 PNGs, one sub-folder per class; class c's images have brightness ~ 80 c."""

    generator = torch.Generator().manual_seed(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = (torch.rand(3, 8, 8, generator=generator) * 40 + 80 * c).to(torch.uint8)
            write_png(image, root / name / f"{i:02d}.png")
    return root


def write_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def batches(loader: ImageFolderDataLoader, epoch: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


# --- ImageFolderDataLoader -------------------------------------------------------------------------------------


def test_image_folder_splits_every_image_once_with_its_class(tmp_path):
    root = write_image_folder(tmp_path / "images")
    loaders = {s: ImageFolderDataLoader(str(root), image_size=8, split=s, validation_split=3, test_split=3) for s in
               ("train", "valid", "test")}  # fmt: skip
    assert loaders["train"].classes == ["cat", "dog", "owl"]
    assert {s: loader.n_samples for s, loader in loaders.items()} == {"train": 12, "valid": 3, "test": 3}
    seen = [
        loader.sample_id(i) for loader in loaders.values() for _, b in loader.epoch_sampler.iter_batches() for i in b
    ]
    assert sorted(seen) == sorted(f"{c}/{i:02d}.png" for c in ("cat", "dog", "owl") for i in range(6))
    images, targets = batches(loaders["train"])[0]
    assert images.shape == (12, 3, 8, 8)
    # Class c is brightest where c is largest: the labels belong to their images.
    brightness = images.mean(dim=(1, 2, 3))
    assert all(brightness[targets == 0].max() < brightness[targets == 1].min() for _ in [0])
    assert brightness[targets == 1].max() < brightness[targets == 2].min()
    # stratify: a count of 3 takes one image of each class.
    counts = {"validation_split": 3, "test_split": 3}
    for s in ("valid", "test"):
        loader = ImageFolderDataLoader(str(root), image_size=8, split=s, **counts, stratify=True)
        assert sorted(batches(loader)[0][1].tolist()) == [0, 1, 2]


def test_image_folder_resizes_normalizes_and_keeps_grey_images_grey(tmp_path):
    root = write_image_folder(tmp_path / "images")
    loader = ImageFolderDataLoader(str(root), image_size=4, channels=1, mean=[0.5], std=[0.25], split="test")
    images, _ = batches(loader)[0]
    assert images.shape[1:] == (1, 4, 4)
    raw = ImageFolderDataLoader(str(root), image_size=4, channels=1, mean=[0.0], std=[1.0], split="test")
    assert torch.allclose(images, (batches(raw)[0][0] - 0.5) / 0.25, atol=1e-6)


def test_the_decoded_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path, caplog, cache_home):
    root = write_image_folder(tmp_path / "images")
    caplog.set_level("INFO", logger="data")
    first = batches(ImageFolderDataLoader(str(root), image_size=8, split="test"))
    assert "Decoded 18 images" in caplog.text
    [cache] = cache_home.glob("*.pt")
    caplog.clear()
    again = batches(ImageFolderDataLoader(str(root), image_size=8, split="test"))
    assert "Read 18 decoded images from" in caplog.text and "Decoded" not in caplog.text
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    # A file rewritten with other pixels (and a later time stamp): the stale cache is replaced.
    write_png(torch.full((3, 8, 8), 255, dtype=torch.uint8), root / "cat" / "00.png")
    os.utime(root / "cat" / "00.png", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    caplog.clear()
    ImageFolderDataLoader(str(root), image_size=8, split="test")
    assert "Decoded 18 images" in caplog.text
    assert not cache.exists() and len(list(cache_home.glob("*.pt"))) == 1
    # Not cached at all where asked not to.
    ImageFolderDataLoader(str(root), image_size=8, split="test", cache=False)
    assert len(list(cache_home.glob("*.pt"))) == 1


def test_decoding_per_batch_gives_the_in_memory_batches_augmentation_included(tmp_path):
    root = write_image_folder(tmp_path / "images")
    common = dict(image_size=8, batch_size=5, augment=True, seed=3, split="train")
    in_memory = batches(ImageFolderDataLoader(str(root), **common), epoch=2)
    from_files = batches(ImageFolderDataLoader(str(root), in_memory=False, num_workers=1, **common), epoch=2)
    assert len(in_memory) == len(from_files) == 3
    for (a, ta), (b, tb) in zip(in_memory, from_files, strict=True):
        assert torch.equal(ta, tb) and torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / "dog" / "03.png").write_bytes(b"not a png"), r"dog/03\.png: unreadable image"),
        (lambda root: (root / "empty").mkdir(), r"empty: class folder with no images"),
        (lambda root: [p.unlink() for p in root.rglob("*.png")] and None, r"class folder with no images"),
    ],
)
def test_bad_image_data_is_one_line_naming_the_file(tmp_path, damage, message):
    root = write_image_folder(tmp_path / "images")
    damage(root)
    with pytest.raises(DataError, match=message):
        ImageFolderDataLoader(str(root), image_size=8)
    with pytest.raises(DataError, match=r"nowhere: image folder not found"):
        ImageFolderDataLoader(str(tmp_path / "nowhere"))
    (tmp_path / "labels.csv").write_text("id,label\n")  # a file where the folder was meant
    with pytest.raises(DataError, match=r"labels\.csv: is a file, not an image folder \(expected one sub-folder"):
        ImageFolderDataLoader(str(tmp_path / "labels.csv"))


# --- TorchvisionModel and weights ------------------------------------------------------------------------------


def test_torchvision_model_loads_local_weights_and_gets_a_new_head(tmp_path):
    import torchvision

    source = torchvision.models.get_model("mobilenet_v3_small")
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    model = TorchvisionModel("mobilenet_v3_small", num_classes=4, weights=str(tmp_path / "weights.pth"))
    loaded = model.backbone.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in source.state_dict().items() if k in loaded)
    assert not any(k.startswith("classifier.3") for k in loaded)  # the old head is gone
    assert model.head.out_features == 4 and model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_torchvision_weights_that_are_not_here_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ConfigError, match=r"not on this machine; download https://\S+ to .*torch/hub/checkpoints/"):
        TorchvisionModel("resnet18", 10, weights="ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(
        ConfigError, match=r"'nope' is neither a file nor weights of resnet18 \(valid names: IMAGENET1K"
    ):
        TorchvisionModel("resnet18", 10, weights="nope")
    with pytest.raises(ConfigError, match=r"unknown torchvision model 'resnet81'; did you mean 'resnet18'"):
        TorchvisionModel("resnet81", 10)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"junk\.pth is not a readable state dict"):
        TorchvisionModel("resnet18", 10, weights=str(tmp_path / "junk.pth"))


class Small(BaseModel):
    """A backbone with a BatchNorm layer and a head, named as TorchvisionModel names them."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def test_fine_tuning_loads_what_fits_and_lists_what_it_skipped(tmp_path, caplog):
    source = Small(num_classes=5)
    checkpoint = Checkpoint(tmp_path / "source.pth", {KEY_STATE_DICT: source.state_dict()})
    target = Small(num_classes=3)
    caplog.set_level("WARNING", logger="train")
    load_model_state(target, checkpoint, strict=False)
    assert torch.equal(target.backbone[0].weight, source.backbone[0].weight)
    assert "9 tensors loaded, 2 skipped (head.weight: (5, 8) there, (3, 8) here; head.bias: (5,) there, (3,) here)" in (
        caplog.text
    )
    with pytest.raises(CheckpointError, match=r"head\.weight has shape \(5, 8\) there, \(3, 8\) here.*strict_load"):
        load_model_state(Small(num_classes=3), checkpoint, strict=True, purpose="fine-tune")
    with pytest.raises(CheckpointError, match=r"a resumed run keeps its model; add -c CONFIG to fine-tune from the"):
        load_model_state(Small(num_classes=3), checkpoint, purpose="resume")
    foreign = Checkpoint(tmp_path / "foreign.pth", {KEY_STATE_DICT: {"other.weight": torch.zeros(2)}})
    with pytest.raises(CheckpointError, match=r"weights do not fit the configured model"):
        load_model_state(Small(), foreign, strict=False)  # nothing at all fits: surely the wrong file


# --- Finetuning ------------------------------------------------------------------------------------------------


def test_freeze_unfreeze_keeps_the_backbone_in_its_own_group_from_the_start_and_can_go_back():
    model = Small()
    finetuning = Finetuning("freeze_unfreeze", unfreeze_epoch=3, backbone_lr_scale=0.1)
    finetuning.freeze(model)
    optimizer = torch.optim.SGD(finetuning.param_groups(model), lr=0.5)
    set_learning_rate(optimizer, 0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 6]  # the head; the whole backbone
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.5, 0.05])
    assert scheduler.base_lrs == pytest.approx([0.5, 0.05])
    assert [p.requires_grad for p in model.backbone.parameters()] == [False] * 6
    # A step while frozen moves the head only, and the optimizer keeps no state for the backbone.
    before = copy.deepcopy(model.backbone.state_dict())
    finetuning.train_mode(model)  # frozen BatchNorm in eval mode: its running statistics stay too
    model(torch.randn(4, 4)).sum().backward()
    optimizer.step()
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in before.items())
    assert finetuning.set_epoch(2) == []
    [line] = finetuning.set_epoch(3)
    assert line == "Unfreezing backbone at epoch 3: 128 parameters at lr scale 0.1"
    assert all(p.requires_grad for p in model.parameters())
    finetuning.set_epoch(2)  # a rehearsal's restore goes back to the epoch before
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert len(optimizer.param_groups) == 2  # nothing is ever added to or taken from the optimizer


def test_a_new_learning_rate_keeps_each_groups_scale():
    """One writer of learning rates: `--lr 0.01` on resume gives the backbone 0.001, not 0.01."""
    model = Small()
    finetuning = Finetuning("freeze_unfreeze", unfreeze_epoch=1, backbone_lr_scale=0.1)
    finetuning.freeze(model)
    optimizer = torch.optim.Adam(finetuning.param_groups(model), lr=0.1)
    set_learning_rate(optimizer, 0.1)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
    changes = apply_changed_optimizer_args(optimizer, scheduler, {"lr": 0.1}, {"lr": 0.01, "eps": 1e-6})
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.001])
    assert scheduler.base_lrs == pytest.approx([0.01, 0.001])
    assert [g["eps"] for g in optimizer.param_groups] == [1e-6, 1e-6]
    assert changes[0] == "optimizer.args.lr: 0.01 from now on (the checkpoint had 0.1)"


def test_one_cycle_per_batch_runs_across_the_unfreeze_with_the_backbone_at_its_scale():
    """Issue 17's blocker: OneCycleLR stepped every batch crashed (KeyError: 'max_lr') at the first step after
    the unfreeze, when the backbone joined the optimizer as a new group."""
    model = Small()
    finetuning = Finetuning("freeze_unfreeze", unfreeze_epoch=2, backbone_lr_scale=0.1)
    finetuning.freeze(model)
    optimizer = torch.optim.AdamW(finetuning.param_groups(model), lr=0.01)
    set_learning_rate(optimizer, 0.01)
    args = {"max_lr": 0.01, "total_steps": 20}
    per_group = per_group_lrs({"type": "OneCycleLR", "args": args}, optimizer)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, **{**args, **per_group})
    seen = []
    for epoch in (1, 2):
        finetuning.set_epoch(epoch)
        for _ in range(10):
            model(torch.randn(4, 4)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            seen.append([g["lr"] for g in optimizer.param_groups])
    assert all(backbone == pytest.approx(head * 0.1) for head, backbone in seen)
    assert max(head for head, _ in seen) == pytest.approx(0.01, rel=0.05)


def test_frozen_batchnorm_stays_in_eval_mode_unless_train_bn():
    for train_bn in (False, True):
        model, finetuning = Small(), Finetuning("freeze", train_bn=train_bn)
        finetuning.freeze(model)
        finetuning.train_mode(model)
        assert model.backbone[1].training is train_bn and model.head.training


def test_milestones_unfreeze_in_stages_and_bad_sections_are_one_line():
    model = Small()
    finetuning = Finetuning(
        "unfreeze_milestones",
        milestones=[{"epoch": 2, "modules": ["backbone.3"]}, {"epoch": 4, "modules": ["backbone"]}],
    )
    finetuning.freeze(model)
    optimizer = torch.optim.Adam(finetuning.param_groups(model), lr=1.0)
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2, 4]  # the head; backbone.3; the rest
    finetuning.set_epoch(3)
    assert [p.requires_grad for p in model.backbone.parameters()] == [False] * 4 + [True] * 2
    finetuning.set_epoch(4)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match=r"finetune\.backbone: no parameters under 'trunk' \(the model's modules: "):
        Finetuning("freeze", backbone="trunk").freeze(Small())
    assert Finetuning("freeze_unfreeze").check() == [
        "finetune.unfreeze_epoch: the freeze_unfreeze strategy needs the epoch to unfreeze at"
    ]


def test_the_finetune_section_is_validated_with_the_config(base_config):
    base_config["finetune"] = {"strategy": "freeze_all", "backbone_lr_scale": 0}
    with pytest.raises(ConfigError) as error:
        from parse_config import ConfigParser

        ConfigParser(base_config)
    assert "finetune.strategy" in str(error.value) and "finetune.backbone_lr_scale" in str(error.value)


# --- Predictions -----------------------------------------------------------------------------------------------


class Task:
    """What prediction_rows reads of a data loader."""

    def __init__(self, task: str, classes: list[str] | None = None, preprocessing: dict | None = None) -> None:
        self.task, self.classes, self.preprocessing = task, classes, preprocessing or {}
        self.submission = None


def test_prediction_rows_read_each_task():
    header, rows = prediction_rows(["a", "b"], torch.tensor([[0.0, 2.0], [1.0, 0.0]]), torch.tensor([1, 1]),
                                   Task("classification", ["no", "yes"]))  # fmt: skip
    assert header == ["id", "target", "prediction", "prob_no", "prob_yes"]
    assert rows[0][:3] == ["a", "yes", "yes"] and rows[1][:3] == ["b", "yes", "no"]
    assert float(rows[0][4]) == pytest.approx(torch.tensor([0.0, 2.0]).softmax(0)[1].item(), rel=1e-5)
    _, rows = prediction_rows(
        ["r"], torch.tensor([[0.5]]), None, Task("regression", None, {"target_mean": 10.0, "target_std": 2.0})
    )
    assert rows == [["r", 11.0]]
    _, rows = prediction_rows(["x"], torch.tensor([[-1.0]]), None, Task("binary", ["malignant", "benign"]))
    assert rows[0][1] == "malignant" and float(rows[0][3]) == pytest.approx(
        torch.sigmoid(torch.tensor(-1.0)).item(), rel=1e-5
    )


# --- End to end: the shipped config_transfer.json --------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory) -> dict[str, Path]:
    """The digits as a folder of 32x32 RGB PNGs (all ten classes), new unlabelled images, and a "pretrained"
    resnet18 weights file (random: the digits are learnt from scratch, in a few epochs)."""
    import torchvision

    root = tmp_path_factory.mktemp("transfer")
    write_digit_images(root / "digits", size=32)
    write_digit_images(root / "new", size=32, flat=True, offset=1)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), root / "resnet18.pth")
    return {"digits": root / "digits", "new": root / "new", "weights": root / "resnet18.pth", "root": root}


def transfer_config(folders: dict[str, Path], save_dir: Path) -> dict:
    from parse_config import read_config

    config = shrink(read_config(ROOT / "config_transfer.json"), save_dir, epochs=5)
    config["arch"]["args"]["weights"] = str(folders["weights"])
    config["data_loader"]["args"]["data_dir"] = str(folders["digits"])
    config["finetune"]["unfreeze_epoch"] = 3
    config["trainer"]["save_period"] = 1
    config["trainer"]["keep_last"] = None
    return config


@pytest.mark.e2e
def test_transfer_example_freezes_then_unfreezes_reaches_090_and_predicts(digit_folders, tmp_path):
    config = transfer_config(digit_folders, tmp_path / "saved")
    result, run = train(config, tmp_path, "transfer")
    pretrained = torch.load(digit_folders["weights"], weights_only=True)
    start = {f"backbone.{k}": v for k, v in pretrained.items() if not k.startswith("fc.")}
    epoch = {e: load_checkpoint(run.checkpoint_dir / f"checkpoint-epoch{e}.pth").state for e in (1, 2, 3)}
    # Frozen for epochs 1-2: every backbone tensor, BatchNorm running statistics included, bitwise unchanged,
    # and no optimizer state for it (it is in the second parameter group from the start).
    for e in (1, 2):
        assert all(torch.equal(epoch[e][KEY_STATE_DICT][k], v) for k, v in start.items())
        groups = epoch[e][KEY_OPTIMIZER]["param_groups"]
        assert len(groups) == 2 and not set(groups[1]["params"]) & set(epoch[e][KEY_OPTIMIZER]["state"])
    assert any("running_mean" in k for k in start)
    # Epoch 3: the backbone trains, in a second group at lr * 0.1.
    changed = [k for k, v in start.items() if not torch.equal(epoch[3][KEY_STATE_DICT][k], v)]
    assert len(changed) > 0.9 * len(start)
    groups = epoch[3][KEY_OPTIMIZER]["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(groups[0]["lr"] * 0.1)
    assert set(groups[1]["params"]) <= set(epoch[3][KEY_OPTIMIZER]["state"])
    assert epoch[3][KEY_DATA] == {"classes": [str(d) for d in range(10)]}

    # test.py: accuracy >= 0.9, and the per-sample file agrees with it; the pretrained file is not needed any more.
    digit_folders["weights"].rename(digit_folders["weights"].with_suffix(".moved"))
    predictions = tmp_path / "test_predictions.csv"
    tested = evaluate(run.checkpoint_dir / BEST_NAME, "--predictions", str(predictions))
    assert tested["accuracy"] >= 0.9
    rows = list(csv.DictReader(predictions.open()))
    assert len(rows) == tested["n_samples"] == 326
    assert sum(r["target"] == r["prediction"] for r in rows) / len(rows) == pytest.approx(tested["accuracy"], abs=1e-9)

    # predict.py on a folder of new images: one row per image, named by file, mostly right.
    from sklearn.datasets import load_digits

    out = tmp_path / "predictions.csv"
    done = run_script("predict.py", "--resume", str(run.checkpoint_dir), "--input", str(digit_folders["new"]),
                      "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    truth = load_digits().target
    assert len(rows) == len(truth) and list(rows[0])[:2] == ["id", "prediction"]
    assert sum(int(r["prediction"]) == truth[int(r["id"][3:7])] for r in rows) / len(rows) >= 0.9
    assert all(abs(sum(float(r[f"prob_{d}"]) for d in range(10)) - 1) < 1e-4 for r in rows)
    assert result["best"]["val_accuracy"] >= 0.9
    # --strip-extension: the same rows, each id without its file extension.
    bare = tmp_path / "bare.csv"
    done = run_script("predict.py", "--resume", str(run.checkpoint_dir), "--input", str(digit_folders["new"]),
                      "--out", str(bare), "--strip-extension")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in csv.DictReader(bare.open())] == [r["id"].rsplit(".", 1)[0] for r in rows]


@pytest.mark.e2e
def test_resume_across_the_unfreeze_equals_an_uninterrupted_run(tiny_config, tmp_path):
    tiny_config["trainer"]["epochs"] = 4
    tiny_config["finetune"] = {"strategy": "freeze_unfreeze", "backbone": ["conv1", "conv2", "fc1"],
                               "unfreeze_epoch": 3}  # fmt: skip
    straight, straight_run = train(tiny_config, tmp_path, "straight")
    half = copy.deepcopy(tiny_config)
    half["trainer"]["epochs"] = 2  # stops before the unfreeze; resumed after it
    _, run = train(half, tmp_path, "interrupted")
    resumed, _ = train(None, tmp_path, overrides=["trainer.epochs=4"], resume=run.checkpoint_dir)
    assert resumed["last"] == straight["last"]
    a = load_checkpoint(straight_run.checkpoint_dir / LAST_NAME).state
    b = load_checkpoint(run.checkpoint_dir / LAST_NAME).state
    assert all(torch.equal(a[KEY_STATE_DICT][k], b[KEY_STATE_DICT][k]) for k in a[KEY_STATE_DICT])
    assert len(b[KEY_OPTIMIZER]["param_groups"]) == 2
    assert b[KEY_OPTIMIZER]["param_groups"] == a[KEY_OPTIMIZER]["param_groups"]


@pytest.mark.e2e
def test_fine_tuning_a_checkpoint_into_another_head_and_strict_load(tiny_config, tmp_path):
    _, source = train(tiny_config, tmp_path, "ten_classes")
    five = copy.deepcopy(tiny_config)
    five["arch"]["args"]["num_classes"] = 11  # another head: fc2 does not fit
    five["trainer"]["epochs"] = 1
    _, tuned = train(five, tmp_path, "eleven", resume=source.checkpoint_dir / LAST_NAME)
    log = (tuned.log_dir / "info.log").read_text()
    assert "6 tensors loaded, 2 skipped (fc2.weight: (10, 128) there, (11, 128) here; fc2.bias: (10,) there" in log
    five["finetune"] = {"strict_load": True}
    with pytest.raises(CheckpointError, match=r"fc2\.weight has shape \(10, 128\) there, \(11, 128\) here"):
        train(five, tmp_path, "strict", resume=source.checkpoint_dir / LAST_NAME)


def test_shipped_transfer_config_is_valid_and_names_a_real_folder_layout():
    from parse_config import ConfigParser, read_config

    config = ConfigParser(read_config(ROOT / "config_transfer.json")).config
    assert config["finetune"]["strategy"] == "freeze_unfreeze" and config["arch"]["type"] == "TorchvisionModel"
    assert read_json(ROOT / "config_transfer.json")["extends"] == "config.json"


@pytest.mark.e2e
def test_predict_py_refuses_bad_requests_with_one_line(tiny_config, tmp_path):
    tiny_config["trainer"].update(epochs=1, len_epoch=2)
    _, run = train(tiny_config, tmp_path, "digits")
    (tmp_path / "taken.csv").write_text("keep me")
    for args, message in (
        (["--input", str(tmp_path), "--out", str(tmp_path / "p.csv")], "DigitsDataLoader cannot read new inputs"),
        (["--input", str(tmp_path / "nothing"), "--out", str(tmp_path / "p.csv")], "nothing: not found"),
        (["--input", str(tmp_path), "--out", str(tmp_path / "taken.csv")], "taken.csv: exists; choose a new file"),
    ):
        done = run_script("predict.py", "--resume", str(run.checkpoint_dir), *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
            lines
        )
    assert (tmp_path / "taken.csv").read_text() == "keep me" and not (tmp_path / "p.csv").exists()
    # test.py --predictions on the digits: every test image once, agreeing with the reported accuracy.
    rows_path = tmp_path / "rows.csv"
    tested = evaluate(run.checkpoint_dir / LAST_NAME, "--predictions", str(rows_path))
    rows = list(csv.DictReader(rows_path.open()))
    assert len({r["id"] for r in rows}) == len(rows) == tested["n_samples"]
    assert sum(r["target"] == r["prediction"] for r in rows) / len(rows) == pytest.approx(tested["accuracy"], abs=1e-9)


@pytest.mark.e2e
def test_the_transfer_recipe_trains_through_its_unfreeze_with_a_last_batch_of_one(tmp_path):
    """3 classes of the digits in an image folder, and a batch size that leaves one sample for the last batch:
    BatchNorm cannot train on it (the recipe crashed at its unfreeze epoch, after two epochs' work)."""
    write_digit_images(tmp_path / "three", size=32, classes=3)
    torch.manual_seed(0)
    torch.save(__import__("torchvision").models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    folders = {"digits": tmp_path / "three", "weights": tmp_path / "resnet18.pth"}
    config = transfer_config(folders, tmp_path / "saved")
    config["trainer"]["epochs"], config["finetune"]["unfreeze_epoch"] = 3, 2
    config["arch"]["args"]["num_classes"] = 3
    n = ImageFolderDataLoader(str(folders["digits"]), image_size=32, split="train").n_samples
    batch_size = next(b for b in range(16, n) if n % b == 1)
    config["data_loader"]["args"]["batch_size"] = batch_size
    result, run = train(config, tmp_path)
    assert result["last"]["epoch"] == 3 and load_checkpoint(run.checkpoint_dir / LAST_NAME).state["epoch"] == 3
    info = (run.log_dir / "info.log").read_text()
    assert info.count("The last training batch would hold one sample, which BatchNorm cannot train on") == 1
    assert n // batch_size == ImageFolderDataLoader(str(folders["digits"]), image_size=32, split="train",
                                                    batch_size=batch_size).batches_per_epoch - 1  # fmt: skip


def test_an_image_size_of_zero_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"image_size: expected a whole number >= 1, found 0"):
        ImageFolderDataLoader(str(tmp_path), image_size=0)


def test_a_resume_on_data_whose_classes_changed_is_one_line(tmp_path, tiny_config):
    root = write_image_folder(tmp_path / "pets")
    tiny_config["arch"]["args"]["num_classes"] = 3
    args = {"data_dir": str(root), "image_size": 8, "channels": 1, "batch_size": 4, "validation_split": 3}
    args.update(test_split=3, mean=[0.5], std=[0.25])
    tiny_config["data_loader"] = {"type": "ImageFolderDataLoader", "args": args}
    tiny_config["trainer"]["epochs"] = 1
    _, run = train(tiny_config, tmp_path, "pets")
    last = run.checkpoint_dir / LAST_NAME
    before = last.read_bytes()
    (root / "dog").rename(root / "eel")
    with pytest.raises(ConfigError, match=r"^data_loader: the run was trained on the classes cat, dog, owl; the data "
                       r"now has cat, eel, owl \(gone: dog; new: eel\); a resumed run keeps its classes"):  # fmt: skip
        train(None, tmp_path, resume=last, overrides=["trainer.epochs=2"])
    assert last.read_bytes() == before
    # A fine-tune may change the classes; a head of as many outputs is loaded, and the log says whose they were.
    tiny_config["save_dir"] = str(tmp_path / "tuned")
    _, tuned = train(tiny_config, tmp_path, "tuned", resume=last)
    said = "the weights were trained on the classes ['cat', 'dog', 'owl'], the data has ['cat', 'eel', 'owl']: a head"
    assert said in (tuned.log_dir / "info.log").read_text()
