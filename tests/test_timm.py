"""TimmModel (the `kaggle` feature): a timm model whose pretrained weights come from a local file the tests write
(random, nothing is ever downloaded), split into backbone and head, trained by config_kaggle.json's recipe."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, evaluate, run_script, train
from data_loader.image_folder import IMAGENET_MEAN, IMAGENET_STD
from data_loader.make_digit_images import write_kaggle_layout
from logger.run_folder import BEST_NAME
from model.timm_model import TimmModel
from parse_config import ConfigParser, read_config
from test_cli import assert_one_error_line
from trainer.checkpoint import KEY_STATE_DICT, load_checkpoint
from trainer.finetuning import Finetuning
from utils.errors import ConfigError

SMALL = "test_efficientnet"  # timm's own test model: an EfficientNet of 99k parameters, 256 features, at 160x160


@pytest.fixture
def timm(monkeypatch):
    """timm, with the Hugging Face hub offline: anything that tried to download would fail."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return pytest.importorskip("timm")


def saved_weights(timm, name: str, path: Path) -> dict[str, torch.Tensor]:
    """A random timm model's whole state dict (its 1000-class classifier too, as timm's files hold it) in `path`:
    safetensors or torch.save by the suffix. Returns it."""
    torch.manual_seed(0)
    state = timm.create_model(name).state_dict()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize(("name", "suffix"), [(SMALL, ".safetensors"), (SMALL, ".pth"), ("efficientnet_b0", ".pth")])
def test_the_weights_file_fills_the_backbone_and_a_new_head_gives_num_classes(timm, tmp_path, name, suffix):
    source = saved_weights(timm, name, tmp_path / f"weights{suffix}")
    model = TimmModel(name, num_classes=4, weights=str(tmp_path / f"weights{suffix}"))
    body = {k: v for k, v in source.items() if not k.startswith("classifier.")}
    loaded = model.backbone.state_dict()
    assert sorted(loaded) == sorted(body)  # every tensor but the old 1000-class classifier's ...
    assert all(torch.equal(loaded[k], v) for k, v in body.items())  # ... and each as the file has it
    assert torch.equal(model.backbone.conv_stem.weight, source["conv_stem.weight"])  # not timm's initialization
    assert not torch.equal(TimmModel(name, num_classes=4).backbone.conv_stem.weight, source["conv_stem.weight"])
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"backbone", "head"}
    assert (model.head.in_features, model.head.out_features) == ((256 if name == SMALL else 1280), 4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    size = 160 if name == SMALL else 224
    assert (model.mean, model.std, model.input_size) == (IMAGENET_MEAN, IMAGENET_STD, (3, size, size))


def test_a_classifier_inside_the_head_keeps_the_rest_of_the_head_and_its_own_statistics(timm, tmp_path):
    """ConvNeXt's classifier is head.fc, after a head.norm that is part of the pretrained body; its weights were
    trained on images normalized with 0.5, not ImageNet's statistics."""
    source = saved_weights(timm, "test_convnext", tmp_path / "convnext.pth")
    model = TimmModel("test_convnext", num_classes=3, weights=str(tmp_path / "convnext.pth"))
    assert torch.equal(model.backbone.head.norm.weight, source["head.norm.weight"])
    assert "head.fc.weight" not in model.backbone.state_dict() and model.head.in_features == 64
    assert (model.mean, model.std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_the_freezing_strategies_freeze_the_timm_body_and_train_the_head(timm):
    model = TimmModel(SMALL, num_classes=2, model_args={"drop_rate": 0.25})
    assert model.backbone.drop_rate == 0.25  # timm's own arguments reach the model
    Finetuning("freeze").freeze(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"} and model.num_parameters(trainable_only=False) > 90_000


def test_bad_names_files_and_arguments_are_one_line_saying_what_to_do(timm, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown timm model 'efficientnet_b9'; did you mean 'efficientnet_b8'\?"):
        TimmModel("efficientnet_b9", 2)
    with pytest.raises(ConfigError, match=r"unknown timm model 'hf-hub:timm/resnet18\.a1_in1k'"):
        TimmModel("hf-hub:timm/resnet18.a1_in1k", 2)  # timm would fetch its config from the hub: never reached
    with pytest.raises(ConfigError, match=r"efficientnet_b0 has no pretrained tag 'ra_in1kk'; did you mean 'ra_in1k'"):
        TimmModel("efficientnet_b0.ra_in1kk", 2)
    missing = tmp_path / "efficientnet_b0.safetensors"
    with pytest.raises(ConfigError, match=rf"no file {missing}; download model\.safetensors from https://"
                                          r"huggingface\.co/timm/efficientnet_b0\.ra_in1k to it"):  # fmt: skip
        TimmModel("efficientnet_b0", 2, weights=str(missing))
    saved_weights(timm, "test_convnext", tmp_path / "convnext.pth")
    with pytest.raises(ConfigError, match=r"convnext\.pth does not fit timm's test_efficientnet \(\d+ missing key"):
        TimmModel(SMALL, 2, weights=str(tmp_path / "convnext.pth"))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"junk\.safetensors is not a readable state dict"):
        TimmModel(SMALL, 2, weights=str(tmp_path / "junk.safetensors"))
    with pytest.raises(ConfigError, match=r"model_args\.pretrained: .*weights come from arch\.args\.weights"):
        TimmModel(SMALL, 2, model_args={"pretrained": True})
    with pytest.raises(ConfigError, match=r"model_args: test_efficientnet does not take these arguments .*'colour'"):
        TimmModel(SMALL, 2, model_args={"colour": 1})


def test_the_model_file_imports_without_timm_and_building_one_says_what_to_install(monkeypatch):
    """Scanning model/ imports every file: the kaggle feature's must not need timm until a TimmModel is built."""
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed: `import timm` raises ImportError
    spec = importlib.util.find_spec("model.timm_model")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the file, run top to bottom without timm
    with pytest.raises(ConfigError, match=r"^arch\.type: TimmModel needs timm; run pip install -r requirements-kaggle"):
        module.TimmModel(SMALL, 2)


def kaggle_config(arch_args: dict, data_dir: Path, save_dir: Path) -> dict:
    """config_kaggle.json with TimmModel as the model."""
    config = read_config(ROOT / "config_kaggle.json")
    config["name"] = "Kaggle_Digits_Timm"
    config["arch"] = {"type": "TimmModel", "args": {"num_classes": 1, **arch_args}}
    config["data_loader"]["args"]["data_dir"] = str(data_dir)
    config.update(save_dir=str(save_dir), tensorboard=False, verbosity=1)
    return config


def test_config_kaggle_validates_with_a_timm_model(tmp_path):
    ConfigParser(kaggle_config({"name": SMALL, "weights": None, "model_args": {"drop_rate": 0.1}}, tmp_path, tmp_path))


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("arch_args", "fragment"),
    [({"name": "convnext_tiniest"}, "error: arch.args.name: unknown timm model 'convnext_tiniest'; did you mean"),
     ({"name": "convnext_tiny", "weights": "nowhere/convnext_tiny.safetensors"},
      "error: arch.args.weights: no file nowhere/convnext_tiny.safetensors; download model.safetensors from "
      "https://huggingface.co/timm/convnext_tiny.in12k_ft_in1k to it")],
)  # fmt: skip
def test_train_py_answers_a_bad_timm_name_or_a_missing_file_in_one_line(arch_args, fragment, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(kaggle_config(arch_args, tmp_path / "data", tmp_path / "saved")))
    result = run_script(str(ROOT / "train.py"), "-c", str(config), cwd=tmp_path)
    assert_one_error_line(result, fragment)
    assert not (tmp_path / "saved").exists()  # nothing written


@pytest.fixture(scope="module")
def competition(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kaggle") / "digits"
    write_kaggle_layout(folder)
    return folder


@pytest.mark.e2e
def test_config_kaggle_trains_a_timm_model_frozen_then_unfrozen_and_test_py_agrees(timm, competition, tmp_path):
    weights = tmp_path / f"{SMALL}.safetensors"
    source = saved_weights(timm, SMALL, weights)
    config = kaggle_config({"name": SMALL, "weights": str(weights)}, competition, tmp_path / "saved")
    config["trainer"].update(save_period=1, keep_last=None)  # unfreeze_epoch 2: epoch 1 trains the head only
    result, run = train(config, tmp_path, "timm")
    # 0.9925 on 2 CPU cores (seeds 1 and 2 of the run: 0.982, 0.989); timm's smallest model from random weights
    assert result["best"]["val_auroc"] >= 0.98
    args = json.loads((run.checkpoint_dir / "config.json").read_text())["data_loader"]["args"]
    assert (args["mean"], args["std"]) == (list(IMAGENET_MEAN), list(IMAGENET_STD))  # timm's, for the loader
    start = {f"backbone.{k}": v for k, v in source.items() if not k.startswith("classifier.")}
    state = {e: load_checkpoint(run.checkpoint_dir / f"checkpoint-epoch{e}.pth").state[KEY_STATE_DICT] for e in (1, 2)}
    assert all(torch.equal(state[1][k], v) for k, v in start.items())  # frozen: BatchNorm statistics included
    assert not torch.equal(state[1]["head.weight"], state[2]["head.weight"])
    changed = [k for k, v in start.items() if not torch.equal(state[2][k], v)]
    assert len(changed) > 0.9 * len(start)  # unfrozen at epoch 2
    # test.py rebuilds the model from the checkpoint alone: the weights file is not read any more
    weights.rename(weights.with_suffix(".moved"))
    tested = evaluate(run.checkpoint_dir / BEST_NAME, "--split", "valid")
    assert tested["auroc"] == pytest.approx(result["best"]["val_auroc"], abs=1e-3)
