"""Training on the real digits data, in process: results, checkpoints, resume, fine-tuning, round trip."""

import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch

from conftest import evaluate, shrink, train
from logger.run_folder import BEST_NAME, LAST_NAME
from parse_config import ConfigParser
from trainer.checkpoint import KEY_BATCH, KEY_EPOCH, KEY_STATE_DICT, KEY_STEP, load_checkpoint
from utils.errors import ConfigError


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state[KEY_STATE_DICT]


def test_training_learns_and_returns_its_results(tiny_config, tmp_path):
    tiny_config["trainer"].update(epochs=4, save_period=2)
    result, run = train(tiny_config, tmp_path, "learn")
    assert result["last"]["epoch"] == 4
    assert set(result["last"]) == {
        "epoch",
        "loss",
        "accuracy",
        "top_k_acc",
        "val_loss",
        "val_accuracy",
        "val_top_k_acc",
    }
    assert result["last"]["val_accuracy"] > 0.9
    assert result["best"]["val_loss"] == min(result["best"]["val_loss"], result["last"]["val_loss"])
    files = sorted(p.name for p in run.checkpoint_dir.iterdir())
    assert files == ["checkpoint-epoch2.pth", "checkpoint-epoch4.pth", "config.json", LAST_NAME, BEST_NAME]
    assert (run.log_dir / "info.log").read_text().count("val_accuracy") == 4


@pytest.mark.e2e
def test_accuracy_rises_over_training(tiny_config, tmp_path):
    tiny_config["trainer"]["epochs"] = 1
    first, _ = train(tiny_config, tmp_path, "one")
    tiny_config["trainer"]["epochs"] = 5
    later, _ = train(tiny_config, tmp_path, "five")
    assert later["last"]["val_accuracy"] > first["last"]["val_accuracy"]
    assert later["last"]["loss"] < first["last"]["loss"] / 2


def test_checkpoints_are_plain_and_portable(tiny_config, tmp_path):
    _, run = train(tiny_config, tmp_path, "plain")
    raw = torch.load(run.checkpoint_dir / LAST_NAME, map_location="cpu", weights_only=True)
    assert raw["format_version"] == 1 and raw["arch"] == "DigitsModel" and raw[KEY_EPOCH] == 2
    assert raw["config"]["arch"] == tiny_config["arch"] and raw[KEY_BATCH] == 0
    assert raw["config"] == json.loads((run.checkpoint_dir / "config.json").read_text())
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in raw[KEY_STATE_DICT])


def test_test_py_reproduces_the_trainers_numbers_on_the_same_data(tiny_config, tmp_path):
    tiny_config["trainer"]["epochs"] = 3
    result, run = train(tiny_config, tmp_path, "roundtrip")
    evaluated = evaluate(run.checkpoint_dir / BEST_NAME, "--split", "valid")
    assert evaluated["n_samples"] == 152
    assert evaluated["accuracy"] == pytest.approx(result["best"]["val_accuracy"], abs=1e-6)
    assert evaluated["loss"] == pytest.approx(result["best"]["val_loss"], abs=1e-6)
    assert evaluated["top_k_acc"] == pytest.approx(result["best"]["val_top_k_acc"], abs=1e-6)
    best_epoch = result["best"]["epoch"]
    assert (run.checkpoint_dir / f"model_best.epoch{best_epoch}.valid.json").exists()
    held_out = evaluate(run.checkpoint_dir / BEST_NAME, "--out", str(tmp_path / "test.json"))
    assert held_out["n_samples"] == 348 and held_out["accuracy"] > 0.85


def test_test_py_takes_a_run_folders_best_checkpoint_and_never_overwrites_a_result(tiny_config, tmp_path):
    tiny_config["trainer"]["monitor"] = "max val_accuracy"
    _, run = train(tiny_config, tmp_path, "results")
    first = evaluate(run.checkpoint_dir)  # a run folder: its model_best.pth
    best_epoch = load_checkpoint(run.checkpoint_dir / BEST_NAME).state[KEY_EPOCH]
    written = json.loads((run.checkpoint_dir / f"model_best.epoch{best_epoch}.test.json").read_text())
    assert written["checkpoint"] == str(run.checkpoint_dir / BEST_NAME) and written["accuracy"] == first["accuracy"]
    with pytest.raises(
        ConfigError, match=r"model_best\.epoch\d+\.test\.json: an earlier result of the same evaluation"
    ):
        evaluate(run.checkpoint_dir)
    other = evaluate(run.checkpoint_dir, "data_loader.args.batch_size=7")  # named by a hash of the overrides
    assert len(list(run.checkpoint_dir.glob(f"model_best.epoch{best_epoch}.test.*.json"))) == 1
    assert other == pytest.approx(first, abs=1e-6)  # per-sample averages do not depend on the batch size


def test_resume_continues_exactly_where_an_uninterrupted_run_would_be(tiny_config, tmp_path):
    tiny_config["trainer"]["epochs"] = 4
    straight, straight_run = train(tiny_config, tmp_path, "straight")
    half = copy.deepcopy(tiny_config)
    half["trainer"]["epochs"] = 2
    _, first_run = train(half, tmp_path, "interrupted")
    resumed, resumed_run = train(None, tmp_path, overrides=["trainer.epochs=4"], resume=first_run.checkpoint_dir)
    assert resumed_run == first_run  # same run folder
    assert resumed["last"] == straight["last"]
    assert resumed["best"] == straight["best"]
    a, b = weights(straight_run.checkpoint_dir / LAST_NAME), weights(first_run.checkpoint_dir / LAST_NAME)
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = load_checkpoint(first_run.checkpoint_dir / LAST_NAME).state
    assert state["optimizer"]["state"][0]["step"].item() == 4 * 21  # Adam's step count carried over
    assert state["lr_scheduler"]["last_epoch"] == 4


def test_resume_refuses_a_finished_run_and_a_changed_architecture(tiny_config, tmp_path):
    _, run = train(tiny_config, tmp_path, "done")
    with pytest.raises(
        ConfigError, match=r"has finished epoch 2 and trainer\.epochs is 2; pass trainer\.epochs=N with N > 2"
    ):
        train(None, tmp_path, resume=run.checkpoint_dir / LAST_NAME)
    with pytest.raises(
        ConfigError,
        match=r'arch\.type: the checkpoint was trained with "DigitsModel", the config asks for "MnistModel"',
    ):
        train(None, tmp_path, overrides=["arch.type=MnistModel", "arch.args={}"], resume=run.checkpoint_dir)
    monitored = tiny_config["trainer"]["monitor"]  # the best so far is of that metric: another would misread it
    with pytest.raises(ConfigError, match=rf'trainer\.monitor: the checkpoint was trained with "{monitored}", the '
                       'config asks for "off"; a resumed run keeps'):  # fmt: skip
        train(None, tmp_path, overrides=["trainer.monitor=off", "trainer.epochs=3"], resume=run.checkpoint_dir)


def test_resume_trains_at_an_overridden_learning_rate_and_the_config_says_so(tiny_config, tmp_path):
    tiny_config["optimizer"] = {"type": "SGD", "args": {"lr": 0.01}}
    tiny_config["lr_scheduler"] = None
    _, run = train(tiny_config, tmp_path, "lr")
    train(None, tmp_path, overrides=["--lr", "0.5", "trainer.epochs=3"], resume=run.checkpoint_dir)
    state = load_checkpoint(run.checkpoint_dir / LAST_NAME).state
    assert state[KEY_EPOCH] == 3
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.5
    assert state["config"]["optimizer"]["args"]["lr"] == 0.5
    assert json.loads((run.checkpoint_dir / "config.json").read_text())["optimizer"]["args"]["lr"] == 0.5
    assert "optimizer.args.lr: 0.5 from now on (the checkpoint had 0.01)" in (run.log_dir / "info.log").read_text()


def test_resume_with_a_new_learning_rate_keeps_the_backbones_scale(tiny_config, tmp_path):
    """`--resume RUN --lr 0.5` on a freeze_unfreeze run: the head trains at 0.5, the backbone at 0.5 x 0.1."""
    tiny_config["optimizer"] = {"type": "SGD", "args": {"lr": 0.01}}
    tiny_config["finetune"] = {"strategy": "freeze_unfreeze", "backbone": ["conv1", "conv2"], "unfreeze_epoch": 2}
    _, run = train(tiny_config, tmp_path, "scaled")
    groups = load_checkpoint(run.checkpoint_dir / LAST_NAME).state["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.001])
    train(None, tmp_path, overrides=["--lr", "0.5", "trainer.epochs=3"], resume=run.checkpoint_dir)
    state = load_checkpoint(run.checkpoint_dir / LAST_NAME).state
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx([0.5, 0.05])
    assert [g["lr_scale"] for g in state["optimizer"]["param_groups"]] == [1.0, 0.1]
    # info.log's model summary counts what trains at epoch 1; the resume says what trains now: everything
    said = re.findall(
        r"Resuming: .*, with ([\d,]+) of ([\d,]+) parameters trainable", (run.log_dir / "info.log").read_text()
    )
    assert len(said) == 1 and said[0][0] == said[0][1]


def test_one_cycle_per_batch_across_an_unfreeze_with_the_run_length_filled_in(tiny_config, tmp_path):
    """Issue 17's recipe: OneCycleLR stepped every batch, no epochs or steps_per_epoch written, the backbone
    frozen for epoch 1 then unfrozen at a tenth of the rate; the rehearsal tries the unfreeze epoch too."""
    from trainer.callbacks import Callback

    class RehearsedEpochs(Callback):
        def __init__(self) -> None:
            self.epochs: list[int] = []

        def on_validation_end(self, trainer, epoch: int, result: dict) -> None:
            if trainer.rehearsing:
                self.epochs.append(epoch)

    tiny_config["trainer"].update(epochs=3, scheduler_interval="step")
    tiny_config["optimizer"] = {"type": "AdamW", "args": {"lr": 0.003}}
    tiny_config["lr_scheduler"] = {"type": "OneCycleLR", "args": {"max_lr": 0.003}}
    tiny_config["finetune"] = {"strategy": "freeze_unfreeze", "backbone": ["conv1", "conv2"], "unfreeze_epoch": 2}
    rehearsed = RehearsedEpochs()
    result, run = train(tiny_config, tmp_path, "onecycle", callbacks=[rehearsed])
    # epoch 1's first batch, its last and smallest (1297 samples: 17 in the last batch of 64), the unfreeze's
    assert rehearsed.epochs == [1, 1, 2] and result["last"]["epoch"] == 3
    state = load_checkpoint(run.checkpoint_dir / LAST_NAME).state
    scheduler = state["lr_scheduler"]
    assert scheduler["total_steps"] == 3 * 21 and scheduler["_step_count"] == 3 * 21 + 1  # 1297 samples, batch 64
    laid_out = "lr_scheduler: OneCycleLR laid out for this run: epochs=3, steps_per_epoch=21"
    assert laid_out in (run.log_dir / "info.log").read_text()
    head, backbone = state["optimizer"]["param_groups"]
    assert backbone["lr"] == pytest.approx(head["lr"] * 0.1) and head["max_lr"] == pytest.approx(0.003)
    assert head["lr"] < 0.003 / 100  # annealed to the end of the cycle


@pytest.mark.e2e
def test_resume_refuses_a_changed_scheduler_whose_state_it_would_overwrite(tiny_config, tmp_path):
    _, run = train(tiny_config, tmp_path, "sched")
    with pytest.raises(ConfigError, match=r"lr_scheduler: the checkpoint was trained with .*add -c CONFIG"):
        train(None, tmp_path, overrides=["lr_scheduler.args.gamma=0.1", "trainer.epochs=3"], resume=run.checkpoint_dir)


@pytest.mark.e2e
def test_fine_tuning_starts_a_new_run_from_the_checkpoint_weights(tiny_config, tmp_path):
    _, source = train(tiny_config, tmp_path, "source")
    frozen = copy.deepcopy(tiny_config)
    frozen["optimizer"] = {"type": "SGD", "args": {"lr": 0.0}}  # another optimizer, and weights that cannot move
    frozen["lr_scheduler"] = None
    frozen["trainer"]["epochs"] = 1
    _, tuned = train(frozen, tmp_path, "tuned", resume=source.checkpoint_dir / BEST_NAME)
    assert tuned.checkpoint_dir != source.checkpoint_dir and tuned.checkpoint_dir.name == "tuned"
    start, end = weights(source.checkpoint_dir / BEST_NAME), weights(tuned.checkpoint_dir / LAST_NAME)
    assert all(torch.equal(start[k], end[k]) for k in start)
    assert load_checkpoint(tuned.checkpoint_dir / LAST_NAME).state[KEY_EPOCH] == 1


@pytest.mark.e2e
def test_keep_last_removes_the_oldest_periodic_checkpoints(tiny_config, tmp_path):
    tiny_config["trainer"].update(epochs=5, save_period=1, keep_last=2, monitor="off")
    _, run = train(tiny_config, tmp_path, "keep")
    assert sorted(p.name for p in run.checkpoint_dir.glob("*.pth")) == [
        "checkpoint-epoch4.pth",
        "checkpoint-epoch5.pth",
        LAST_NAME,
    ]


@pytest.mark.e2e
def test_early_stopping_stops_after_early_stop_epochs_without_improvement(tiny_config, tmp_path):
    # Nothing can beat the first epoch by more than min_delta=1: epochs 2 and 3 do not improve.
    tiny_config["trainer"].update(epochs=10, monitor="max val_accuracy", min_delta=1.0, early_stop=2)
    result, run = train(tiny_config, tmp_path, "early")
    assert result["last"]["epoch"] == 3 and result["best"]["epoch"] == 1
    assert load_checkpoint(run.checkpoint_dir / BEST_NAME).state[KEY_EPOCH] == 1


@pytest.mark.e2e
def test_len_epoch_runs_exactly_that_many_batches(tiny_config, tmp_path):
    tiny_config["trainer"].update(epochs=3, len_epoch=30)  # 21 batches a pass: epochs cross passes
    _, run = train(tiny_config, tmp_path, "iterations")
    assert load_checkpoint(run.checkpoint_dir / LAST_NAME).state[KEY_STEP] == 90


@pytest.mark.e2e
def test_same_seed_same_weights(tiny_config, tmp_path):
    _, a = train(tiny_config, tmp_path, "seed_a")
    _, b = train(tiny_config, tmp_path, "seed_b")
    wa, wb = weights(a.checkpoint_dir / LAST_NAME), weights(b.checkpoint_dir / LAST_NAME)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.e2e
@pytest.mark.parametrize("validation_split", [154, 152])
def test_gradient_accumulation_equals_one_larger_batch(validation_split, tiny_config, tmp_path):
    tiny_config["trainer"].update(epochs=1, monitor="off")
    tiny_config["arch"]["args"]["dropout"] = 0.0
    tiny_config["optimizer"] = {"type": "SGD", "args": {"lr": 0.1}}
    big = shrink(tiny_config, tmp_path / "saved", epochs=1)
    big["data_loader"]["args"]["batch_size"] = 64
    # 1295 training samples: 20 x 64 + 15 = 80 x 16 + 15, the last group one short batch; 1297: 20 x 64 + 17 =
    # 81 x 16 + 1, the last group a full batch and a batch of one, each sample weighing 1/17 of the step
    big["data_loader"]["args"]["validation_split"] = validation_split
    small = copy.deepcopy(big)
    small["data_loader"]["args"]["batch_size"] = 16
    small["trainer"]["accumulate_steps"] = 4
    _, a = train(big, tmp_path, "big")
    _, b = train(small, tmp_path, "accumulated")
    wa, wb = weights(a.checkpoint_dir / LAST_NAME), weights(b.checkpoint_dir / LAST_NAME)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_bf16_autocast_trains_on_the_cpu(tiny_config, tmp_path):
    tiny_config["trainer"].update(epochs=3, amp=True)
    result, _ = train(tiny_config, tmp_path, "bf16")
    assert result["last"]["val_accuracy"] > 0.85


@pytest.mark.e2e
def test_a_diverging_loss_stops_with_the_epoch_and_batch(tiny_config, tmp_path):
    tiny_config["optimizer"] = {"type": "SGD", "args": {"lr": 1e12}}
    tiny_config["trainer"].update(epochs=3, log_step=1)
    with pytest.raises(Exception, match=r"the training loss became NaN or infinite at epoch 1, batch \d+") as info:
        train(tiny_config, tmp_path, "diverge")
    assert type(info.value).__name__ == "NonFiniteLossError"


def test_a_checkpoint_of_a_wrapped_model_has_no_module_prefix(tiny_config):
    from torch import nn

    from model.model import DigitsModel
    from trainer.options import TrainerOptions
    from trainer.trainer import Trainer
    from utils.distributed import unwrap_model

    wrapped = nn.DataParallel(DigitsModel())  # on the CPU DataParallel just calls the module
    assert unwrap_model(wrapped) is wrapped.module
    data_loader = ConfigParser(tiny_config).init_obj("data_loader", split="train", seed=0)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    trainer = Trainer(
        wrapped, None, {}, optimizer, data_loader=data_loader, config=tiny_config, device=torch.device("cpu"),
        options=TrainerOptions(epochs=1),
    )  # fmt: skip
    state = trainer.state_dict(epoch=1)
    assert set(state[KEY_STATE_DICT]) == set(DigitsModel().state_dict())
    assert not math.isnan(state["monitor_best"])


@pytest.mark.e2e
def test_the_default_config_reaches_095_test_accuracy(base_config, tmp_path):
    config = copy.deepcopy(base_config)
    config.update(save_dir=str(tmp_path / "saved"), tensorboard=False, verbosity=1)
    _, run = train(config, tmp_path, "default")
    held_out = evaluate(run.checkpoint_dir / BEST_NAME)
    assert held_out["n_samples"] == 348
    assert held_out["accuracy"] >= 0.95


@pytest.mark.e2e
def test_reduce_lr_on_plateau_steps_on_the_monitored_metric(tiny_config, tmp_path):
    # threshold=10 (relative): no epoch beats best * (1 - 10), not even the first, so the lr halves every epoch.
    tiny_config["lr_scheduler"] = {
        "type": "ReduceLROnPlateau",
        "args": {"mode": "min", "factor": 0.5, "patience": 0, "threshold": 10.0},
    }
    tiny_config["trainer"]["epochs"] = 3
    _, run = train(tiny_config, tmp_path, "plateau")
    lr = load_checkpoint(run.checkpoint_dir / LAST_NAME).state["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(tiny_config["optimizer"]["args"]["lr"] * 0.5**3)


@pytest.mark.e2e
def test_tensorboard_receives_the_returned_numbers(tiny_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_config["tensorboard"] = True
    result, run = train(tiny_config, tmp_path, "board")
    events = EventAccumulator(str(run.log_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/valid", "accuracy/train", "accuracy/valid", "lr", "loss/train_step"} <= tags
    logged = events.Scalars("accuracy/valid")
    assert [e.step for e in logged] == [1, 2]
    assert logged[-1].value == pytest.approx(result["last"]["val_accuracy"], abs=1e-6)
