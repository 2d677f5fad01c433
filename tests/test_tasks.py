"""Tasks that are not the digits: the shipped tabular examples, and victoresque's own config as it is."""

import json
import struct

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from conftest import ROOT, evaluate, run_script, train
from logger.run_folder import BEST_NAME
from parse_config import ConfigParser
from trainer.checkpoint import KEY_CONFIG, KEY_STATE_DICT, load_checkpoint

pytestmark = pytest.mark.e2e


def shipped(name: str, tmp_path) -> dict:
    """A shipped config with its base merged in, writing under tmp_path."""
    config = ConfigParser.load(ROOT / name).config
    config.update(save_dir=str(tmp_path / "saved"), tensorboard=False, verbosity=1)
    return config


def outputs_on_the_test_split(checkpoint) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs and the targets on the test split, computed here, outside the template's loop."""
    state = load_checkpoint(checkpoint).state
    config = ConfigParser(state[KEY_CONFIG])
    model = config.init_obj("arch")
    model.load_state_dict(state[KEY_STATE_DICT])
    model.eval()
    with torch.no_grad():
        pairs = [(model(x), y) for x, y in config.init_obj("data_loader", split="test", seed=0)]
    return torch.cat([o for o, _ in pairs]).double(), torch.cat([t for _, t in pairs]).double()


def test_regression_on_diabetes_reports_scikit_learns_r2_and_mae(tmp_path):
    _, run = train(shipped("config_tabular.json", tmp_path), tmp_path, "tabular")
    results = evaluate(run.checkpoint_dir)
    output, target = outputs_on_the_test_split(run.checkpoint_dir / BEST_NAME)
    assert results["n_samples"] == len(target) == 79  # about 20 % of 442
    assert results["r2"] == pytest.approx(sk.r2_score(target.numpy(), output.numpy()), abs=1e-6)
    assert results["mae"] == pytest.approx(sk.mean_absolute_error(target.numpy(), output.numpy()), abs=1e-6)
    assert results["loss"] == pytest.approx(sk.mean_squared_error(target.numpy(), output.numpy()), abs=1e-5)
    assert results["r2"] >= 0.40


def test_binary_classification_on_breast_cancer_reports_scikit_learns_auroc_and_f1(tmp_path):
    _, run = train(shipped("config_binary.json", tmp_path), tmp_path, "binary")
    results = evaluate(run.checkpoint_dir)
    output, target = outputs_on_the_test_split(run.checkpoint_dir / BEST_NAME)
    probability, truth = torch.sigmoid(output).numpy().ravel(), target.numpy().ravel()
    assert results["auroc"] == pytest.approx(sk.roc_auc_score(truth, probability), abs=1e-6)
    assert results["f1"] == pytest.approx(sk.f1_score(truth, probability > 0.5), abs=1e-6)
    assert results["confusion_matrix"] == sk.confusion_matrix(truth, probability > 0.5).tolist()
    assert results["auroc"] >= 0.97


def _write_mnist(raw, n_train: int, n_test: int) -> None:
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())


def test_victoresques_own_config_trains_unchanged_on_mnist_files(tmp_path):
    from test_config import VICTORESQUE_CONFIG

    _write_mnist(tmp_path / "data" / "MNIST" / "raw", 300, 50)
    (tmp_path / "config.json").write_text(json.dumps(VICTORESQUE_CONFIG, indent=4))
    result = run_script(str(ROOT / "train.py"), "-c", "config.json", "trainer.epochs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = list((tmp_path / "saved" / "models" / "Mnist_LeNet").iterdir())
    assert len(runs) == 1 and (runs[0] / "model_best.pth").exists()
    assert (tmp_path / "saved" / "log" / "Mnist_LeNet" / runs[0].name / "info.log").exists()
    result = run_script(str(ROOT / "test.py"), "-r", str(runs[0]), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (result_file,) = runs[0].glob("model_best.epoch*.test.json")
    assert json.loads(result_file.read_text())["n_samples"] == 50
