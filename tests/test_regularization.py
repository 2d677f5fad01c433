"""EMA of the weights and mixup / CutMix (trainer.ema_decay, trainer.mixup): what they compute, that evaluation
uses the EMA, that a resumed run equals an uninterrupted one, and their bad values as one line."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from conftest import evaluate, run_script, train
from logger.run_folder import BEST_NAME, LAST_NAME
from trainer.checkpoint import KEY_EMA, KEY_STATE_DICT, load_checkpoint
from trainer.regularization import Mixup
from utils.errors import ConfigError


def test_mixup_is_the_loss_of_the_mixed_soft_target_and_cutmix_keeps_lam_of_each_image():
    target, output = torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(6, 3)
    basis = torch.eye(6).reshape(6, 6, 1, 1)  # sample i is the i-th unit vector: a mix shows its parts
    mixed, loss_of = Mixup(mixup_alpha=0.4).mix(basis, target, seed=5)
    mixed = mixed.reshape(6, 6)
    partner = torch.tensor([int((row - torch.eye(6)[i] * row[i]).argmax()) if row[i] < 1 else i
                            for i, row in enumerate(mixed)])  # fmt: skip
    lam = mixed[0, 0].item()
    assert 0.0 < lam < 1.0 and torch.allclose(mixed, lam * torch.eye(6) + (1 - lam) * torch.eye(6)[partner])
    one_hot = F.one_hot(target, 3).float()
    soft = lam * one_hot + (1 - lam) * one_hot[partner]
    assert loss_of(F.cross_entropy, output).item() == pytest.approx(F.cross_entropy(output, soft).item(), rel=1e-6)

    images = torch.arange(1.0, 7.0).reshape(6, 1, 1, 1).expand(6, 1, 8, 8)  # image i is all i + 1
    cut, cut_loss = Mixup(cutmix_alpha=1.0).mix(images, target, seed=3)
    pasted = torch.tensor([int(next((v for v in c.flatten().tolist() if v != i + 1), i + 1)) - 1
                           for i, c in enumerate(cut)])  # fmt: skip
    box = (cut != images).float().mean(dim=(1, 2, 3)).max().item()  # the box's share of an image
    assert 0.0 < box < 1.0
    kept = 1.0 - box
    a, b = F.cross_entropy(output, target).item(), F.cross_entropy(output, target[pasted]).item()
    assert cut_loss(F.cross_entropy, output).item() == pytest.approx(kept * a + (1 - kept) * b, rel=1e-6)


def test_validation_and_test_py_use_the_ema_which_resumes_bitwise_with_mixup(tiny_config, tmp_path, capsys):
    tiny_config["trainer"].update(epochs=4, ema_decay=0.9, mixup={"mixup_alpha": 0.4, "cutmix_alpha": 1.0})
    tiny_config["data_loader"]["args"]["augment"] = True
    straight, run = train(tiny_config, tmp_path, "straight")
    state = load_checkpoint(run.checkpoint_dir / BEST_NAME).state
    raw, ema = state[KEY_STATE_DICT], state[KEY_EMA]
    assert not torch.equal(raw["fc2.weight"], ema["module.fc2.weight"])  # the average is not the weights
    # test.py on the validation split gives the trainer's validation numbers: it reads the EMA
    capsys.readouterr()
    result = evaluate(run.checkpoint_dir / BEST_NAME, "--split", "valid", "--out", str(tmp_path / "valid.json"))
    assert f"Weights from {run.checkpoint_dir / BEST_NAME} (its EMA of the weights)" in capsys.readouterr().out
    assert result["loss"] == pytest.approx(straight["best"]["val_loss"], rel=1e-5)
    assert result["accuracy"] == pytest.approx(straight["best"]["val_accuracy"], rel=1e-6)
    assert straight["last"]["val_accuracy"] > 0.8  # mixed batches still learn the digits

    half = copy.deepcopy(tiny_config)
    half["trainer"]["epochs"] = 2
    _, first = train(half, tmp_path, "halves")
    resumed, _ = train(None, tmp_path, overrides=["trainer.epochs=4"], resume=first.checkpoint_dir)
    assert resumed["last"] == straight["last"]
    a, b = (load_checkpoint(r.checkpoint_dir / LAST_NAME).state for r in (run, first))
    assert all(torch.equal(a[KEY_EMA][k], b[KEY_EMA][k]) for k in a[KEY_EMA])
    assert all(torch.equal(a[KEY_STATE_DICT][k], b[KEY_STATE_DICT][k]) for k in a[KEY_STATE_DICT])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"trainer": {"ema_decay": 1.0}}, "trainer.ema_decay"),
        ({"trainer": {"mixup": {"prob": 0.5}}}, "trainer.mixup: set mixup_alpha or cutmix_alpha"),
        ({"trainer": {"mixup": {"mixup_alpha": 0.2, "beta": 1}}}, "trainer.mixup"),
        (
            {
                "trainer": {"mixup": {"mixup_alpha": 0.2}},
                "data_loader": {"type": "TabularDataLoader", "args": {"dataset": "diabetes"}},
                "arch": {"type": "MLP", "args": {"in_features": 10, "out_features": 1}},
                "loss": "MSELoss",
                "metrics": [],
            },
            "trainer.mixup: mixes class labels, and the task is 'regression'",
        ),
    ],
)
def test_bad_ema_and_mixup_values_are_one_line_and_nothing_is_written(change, expected, tiny_config, tmp_path):
    config = copy.deepcopy(tiny_config)
    for section, values in change.items():
        if isinstance(values, dict) and section in ("trainer",):
            config[section].update(values)
        else:
            config[section] = values
    config["trainer"]["monitor"] = "min val_loss"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    done = run_script("train.py", "-c", str(path), "--dry-run")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and expected in lines[0], done.stderr
    assert not (tmp_path / "saved").exists()


def test_cutmix_of_inputs_that_are_not_images_is_one_line():
    with pytest.raises(ConfigError, match="CutMix cuts boxes of images"):
        Mixup(cutmix_alpha=1.0).mix(torch.randn(4, 5), torch.tensor([0, 1, 0, 1]), seed=0)
    with pytest.raises(ConfigError, match=r"this loader.s batches are torch\.int64"):
        Mixup(mixup_alpha=1.0).mix(torch.ones(4, 5, dtype=torch.long), torch.tensor([0, 1, 0, 1]), seed=0)
