"""Around the loop: callbacks, metrics.csv, TensorBoard extras, info.log, --print-config and --dry-run."""

import csv
import json
import re
from types import SimpleNamespace

import pytest
import torch

from base.base_data_loader import BaseDataLoader, InMemoryTensors
from conftest import ROOT, run_script, train, tree_snapshot
from logger.visualization import Writer
from parse_config import ConfigParser
from trainer.callbacks import Callback, ImagePredictionLogger
from trainer.options import TrainerOptions
from trainer.trainer import Trainer
from utils.errors import CallbackError, ConfigError, OutOfMemory


class Recorder(Callback):
    def __init__(self, calls: list, label: str = "a", fail_at: str = "") -> None:
        self.calls, self.label, self.fail_at = calls, label, fail_at

    def _record(self, name: str, *args) -> None:
        self.calls.append((self.label, name, *args))
        if name == self.fail_at:
            raise RuntimeError("disk quota exceeded in my callback")

    def on_train_start(self, trainer):
        self._record("on_train_start")

    def on_validation_end(self, trainer, epoch, result):
        self._record("on_validation_end", epoch, sorted(result))

    def on_epoch_end(self, trainer, epoch, result):
        self._record("on_epoch_end", epoch, result["val_accuracy"])

    def on_train_end(self, trainer, result):
        self._record("on_train_end", result["last"]["epoch"])


class OwnEpoch(Trainer):
    """A user's trainer that rewrites the training epoch: it must keep every hook."""

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.data_loader.set_epoch(epoch)
        for data, target in self.data_loader:
            self.optimizer.zero_grad()
            self.criterion(self.model(data), target).backward()
            self.optimizer.step()
        return {"loss": 0.0}


def trainer_with(config: dict, callbacks: list, trainer_class: type = Trainer, model=None) -> Trainer:
    parser = ConfigParser(config)
    model = model or parser.init_obj("arch")
    return trainer_class(
        model, parser.init_ftn("loss"), parser.init_ftn("metrics"), parser.init_obj("optimizer", model.parameters()),
        data_loader=parser.init_obj("data_loader", split="train", seed=0),
        valid_data_loader=parser.init_obj("data_loader", split="valid", seed=0),
        config=parser.config, device=torch.device("cpu"), callbacks=callbacks,
        options=TrainerOptions.of(parser.config),
    )  # fmt: skip


def test_the_lr_column_follows_the_steps_of_a_loop_a_subclass_rewrote(tiny_config):
    trainer = trainer_with(tiny_config, [], OwnEpoch)
    trainer.lr_scheduler = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1, gamma=0.5)
    trainer.train()
    assert tiny_config["trainer"]["epochs"] == 2  # epoch 2's steps took half the rate; the next epoch's is a quarter
    assert trainer.step_lr == tiny_config["optimizer"]["args"]["lr"] / 2


@pytest.mark.parametrize("trainer_class", [Trainer, OwnEpoch])
def test_callbacks_are_called_in_order_with_the_results(trainer_class, tiny_config):
    calls = []
    trainer = trainer_with(tiny_config, [Recorder(calls, "a"), Recorder(calls, "b")], trainer_class)
    result = trainer.train()
    names = [(label, name) for label, name, *_ in calls]
    one_epoch = [("a", "on_validation_end"), ("b", "on_validation_end"), ("a", "on_epoch_end"), ("b", "on_epoch_end")]
    assert names == [("a", "on_train_start"), ("b", "on_train_start"), *one_epoch, *one_epoch,
                     ("a", "on_train_end"), ("b", "on_train_end")]  # fmt: skip
    assert calls[2] == ("a", "on_validation_end", 1, ["val_accuracy", "val_loss", "val_top_k_acc"])
    assert calls[-4] == ("a", "on_epoch_end", 2, result["last"]["val_accuracy"])
    assert calls[-1] == ("b", "on_train_end", 2)


def test_a_failing_callback_ends_the_run_with_one_line_and_logs_the_traceback(tiny_config, tmp_path):
    from logger.logger import setup_logging

    setup_logging(tmp_path, 1)
    trainer = trainer_with(tiny_config, [Recorder([], fail_at="on_epoch_end")])
    with pytest.raises(CallbackError) as info:
        trainer.train()
    assert str(info.value) == (
        "callback Recorder.on_epoch_end failed: RuntimeError: disk quota exceeded in my callback "
        "(the traceback is in info.log)"
    )
    assert "Traceback" in (tmp_path / "info.log").read_text()


def test_a_callback_failing_in_the_rehearsal_points_to_the_log_it_is_in(tiny_config, tmp_path):
    """The rehearsal runs before any run folder exists: there is no info.log to point to yet."""
    from logger.logger import setup_logging

    setup_logging(None, 1)  # as train.main starts: the console only
    trainer = trainer_with(tiny_config, [Recorder([], fail_at="on_train_start")])
    with pytest.raises(CallbackError, match=r"my callback \(the traceback is in the log above\)$"):
        trainer.rehearse()


def test_a_callback_that_does_not_fit_the_task_is_refused_before_the_first_epoch(tmp_path):
    config = ConfigParser.load(ROOT / "config_tabular.json").config
    config.update(save_dir=str(tmp_path / "saved"), callbacks=[{"type": "ImagePredictionLogger"}])
    with pytest.raises(CallbackError, match=r"ImagePredictionLogger\.on_train_start failed: .* outputs \(1,\)") as info:
        train(config, tmp_path, "tabular")
    assert "remove it from callbacks" in str(info.value)
    assert not list((tmp_path / "saved" / "models" / "Diabetes_MLP" / "tabular").glob("*.pth"))


class CatsAndDogs(BaseDataLoader):
    """Four 8x8 pictures, dark, bright, bright, dark, of a cat, a dog, a cat and a dog, two a batch."""

    def __init__(self) -> None:
        self.classes = ["cat", "dog"]
        images = torch.tensor([-1.0, 1.0, 1.0, -1.0]).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
        targets = torch.tensor([0, 1, 0, 1])
        super().__init__(InMemoryTensors(images, targets), torch.arange(4), 2, False, 0, 0, training=False)


class Brightness(torch.nn.Module):
    """Calls bright pictures dogs and dark ones cats (with sign -1, the other way round): scores (N, 2)."""

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        self.sign = sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        brightness = self.sign * x.mean(dim=(1, 2, 3))
        return torch.stack([-brightness, brightness], dim=1)


def pets_trainer(writer: Writer) -> SimpleNamespace:
    """What ImagePredictionLogger reads of a trainer, with the cats-and-dogs loader and the brightness model."""
    return SimpleNamespace(
        valid_data_loader=CatsAndDogs(), model=Brightness(), device=torch.device("cpu"), is_main=True, writer=writer
    )


def test_image_predictions_are_captioned_with_class_names_and_use_the_ema_weights(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = pets_trainer(Writer(tmp_path))
    logger = ImagePredictionLogger(max_images=3)
    logger.on_validation_end(trainer, 1, {})
    trainer.ema_model = Brightness(-1.0)  # EMA weights that disagree with the model: validation uses them
    logger.on_validation_end(trainer, 2, {})
    trainer.valid_data_loader.classes = None  # a loader without names: the class numbers
    logger.on_validation_end(trainer, 3, {})
    trainer.writer.close()

    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0, "images": 0})
    events.Reload()
    tables = [event.tensor_proto.string_val[0].decode() for event in events.Tensors("predictions/images/text_summary")]
    header = "| image | caption |\n|---|---|\n"
    assert tables == [
        header + "| 0 | Pred: cat, Label: cat |\n| 1 | Pred: dog, Label: dog |\n| 2 | Pred: dog, Label: cat |",
        header + "| 0 | Pred: dog, Label: cat |\n| 1 | Pred: cat, Label: dog |\n| 2 | Pred: cat, Label: cat |",
        header + "| 0 | Pred: 1, Label: 0 |\n| 1 | Pred: 0, Label: 1 |\n| 2 | Pred: 0, Label: 0 |",
    ]
    grids = events.Images("predictions/images")  # three 8x8 images in a row, 2 pixels of padding around each
    assert [(grid.step, grid.width, grid.height) for grid in grids] == [(1, 32, 12), (2, 32, 12), (3, 32, 12)]


class Greedy(torch.nn.Module):
    """Runs out of memory on batches larger than 16, as a too large model or batch does on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.linear(x.flatten(1)).log_softmax(dim=1)


def test_out_of_memory_is_one_line_with_the_batch_size_and_what_to_try(tiny_config):
    trainer = trainer_with(tiny_config, [], model=Greedy())
    with pytest.raises(OutOfMemory) as info:
        trainer.train()
    assert str(info.value).startswith("out of memory in epoch 1 with data_loader.args.batch_size 64")
    assert "trainer.accumulate_steps" in str(info.value) and "\n" not in str(info.value)
    tiny_config["data_loader"]["args"]["batch_size"] = 16
    assert trainer_with(tiny_config, [], model=Greedy()).train()["last"]["epoch"] == 2


def test_the_rehearsal_before_training_leaves_no_trace(tiny_config):
    tiny_config["data_loader"]["args"]["augment"] = True  # dropout and augmentation draw random numbers

    def trained(rehearse: bool) -> tuple[dict, dict]:
        torch.manual_seed(0)
        trainer = trainer_with(tiny_config, [])
        if rehearse:
            assert set(trainer.rehearse()["last"]) >= {"loss", "val_loss"} and trainer.start_epoch == 1
        return {**trainer.train(), "step": trainer.global_step}, trainer.model.state_dict()

    (plain, plain_weights), (rehearsed, rehearsed_weights) = trained(False), trained(True)
    assert plain == rehearsed and plain["step"] == 2 * 21
    assert all(torch.equal(plain_weights[k], rehearsed_weights[k]) for k in plain_weights)


def test_unknown_callbacks_list_the_valid_ones(tiny_config, tmp_path):
    tiny_config["callbacks"] = [{"type": "ImageLogger"}]
    with pytest.raises(
        ConfigError, match=r"callbacks\.0\.type: unknown callbacks 'ImageLogger'.*ImagePredictionLogger"
    ):
        ConfigParser(tiny_config)


def test_metrics_csv_has_a_row_per_epoch_and_a_stable_header_across_resume(tiny_config, tmp_path):
    tiny_config["trainer"].update(epochs=3, save_period=1)
    tiny_config["lr_scheduler"] = {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}}
    _, run = train(tiny_config, tmp_path, "csv")
    # A resume from epoch 2 redoes epoch 3: its row is replaced, not repeated.
    train(None, tmp_path, overrides=["trainer.epochs=4"], resume=run.checkpoint_dir / "checkpoint-epoch2.pth")
    with (run.log_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert list(rows[0]) == [
        "epoch", "loss", "accuracy", "top_k_acc", "val_loss", "val_accuracy", "val_top_k_acc",
        "lr", "epoch_seconds", "samples_per_second",
    ]  # fmt: skip
    assert all(0 <= float(r["val_accuracy"]) <= 1 and float(r["samples_per_second"]) > 0 for r in rows)
    lr = tiny_config["optimizer"]["args"]["lr"]  # each epoch's row: the rate it trained at, not the next one's
    assert [float(r["lr"]) for r in rows] == pytest.approx([lr, lr / 2, lr / 4, lr / 8], rel=1e-12)


@pytest.mark.e2e
def test_tensorboard_images_histograms_hparams_and_rates(tiny_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_config["tensorboard"] = True
    tiny_config["callbacks"] = [
        {"type": "ImagePredictionLogger", "args": {"max_images": 8}},
        {"type": "ParameterHistograms"},
    ]
    result, run = train(tiny_config, tmp_path, "board")
    events = EventAccumulator(str(run.log_dir), size_guidance={"tensors": 0, "images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert "predictions/images" in tags["images"]
    assert len(events.Images("predictions/images")) == 2
    assert "parameters/conv1.weight" in tags["histograms"]
    assert {"time/samples_per_second", "time/epoch_seconds", "lr"} <= set(tags["scalars"])
    # The grid's captions: each image's predicted and true class (Digits has no names: the numbers).
    valid = ConfigParser(tiny_config).init_obj("data_loader", split="valid", seed=0)
    valid.set_epoch(2)
    labels = [str(t) for t in next(iter(valid))[1][:8].tolist()]
    table = events.Tensors("predictions/images/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert re.findall(r"\| (\d) \| Pred: \d, Label: (\d) \|", table) == [(str(i), t) for i, t in enumerate(labels)]
    # add_hparams writes its own event file in the same folder, read here event by event.
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util.tensor_util import make_ndarray

    hparams = {}
    for path in sorted(run.log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                array = make_ndarray(value.tensor) if value.WhichOneof("value") == "tensor" else None
                number = value.simple_value if array is None else (array.item() if array.size == 1 else None)
                hparams[value.tag] = (value.metadata.plugin_data.plugin_name, number)
    assert hparams["_hparams_/experiment"][0] == "hparams"
    best = result["best"]["val_accuracy"]
    assert hparams["hparam/best_val_accuracy"][1] == pytest.approx(best, abs=1e-6)
    logged = events.Scalars("accuracy/valid")[-1].value
    assert logged == pytest.approx(result["last"]["val_accuracy"], abs=1e-6)


def test_info_log_starts_with_command_versions_code_and_config(tiny_config, tmp_path):
    _, run = train(tiny_config, tmp_path, "header")
    lines = (run.log_dir / "info.log").read_text().splitlines()
    assert "Command: " in lines[0] and "Versions: Python " in lines[1] and "Code: " in lines[2]
    assert "Seed 0; deterministic False; 1 CPU thread(s) for torch (num_threads 1)" in lines[3]
    assert "Config:" in lines[4] and '"name": "Digits_CNN"' in "\n".join(lines[5:40])


@pytest.mark.e2e
def test_print_config_and_dry_run_write_nothing(tmp_path):
    config = json.loads((ROOT / "config.json").read_text())
    config["save_dir"] = str(tmp_path / "saved")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    before = tree_snapshot(tmp_path)
    printed = run_script(str(ROOT / "train.py"), "-c", str(path), "--print-config", "trainer.epochs=3", cwd=tmp_path)
    assert printed.returncode == 0 and json.loads(printed.stdout)["trainer"]["epochs"] == 3
    dry = run_script(str(ROOT / "train.py"), "-c", str(path), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "DigitsModel: 151,306 parameters (151,306 trainable), 0.58 MiB" in dry.stdout
    numbers = json.loads(dry.stdout[dry.stdout.index("{", dry.stdout.index("Dry run:")) :])
    assert set(numbers) == {"epoch", "loss", "accuracy", "top_k_acc", "val_loss", "val_accuracy", "val_top_k_acc"}
    assert 0 <= numbers["val_accuracy"] <= 1
    assert tree_snapshot(tmp_path) == before


def test_a_loss_or_metric_that_cannot_score_the_task_is_one_line_before_anything_is_written(tiny_config):
    """cross_entropy over one logit is 0 whatever the model does; a metric of classes on a regression is noise."""
    tiny_config["arch"]["args"]["num_classes"] = 1
    tiny_config.update(loss="cross_entropy", metrics=[])
    with pytest.raises(ConfigError, match=r"^loss: cross_entropy over one score per sample is always 0"):
        trainer_with(tiny_config, []).rehearse()
    tiny_config.update(loss="mse_loss", metrics=["r2", "accuracy", {"type": "auroc", "name": "area"}])
    tiny_config["data_loader"] = {"type": "TabularDataLoader", "args": {"dataset": "diabetes", "batch_size": 32}}
    tiny_config["arch"] = {"type": "MLP", "args": {"in_features": 10, "out_features": 1}}
    with pytest.raises(ConfigError, match=r"^metrics: accuracy, area: of classes, and the task is a regression"):
        trainer_with(tiny_config, [])


def test_a_mid_epoch_resume_must_start_a_group_of_accumulated_batches(tiny_config):
    tiny_config["trainer"]["accumulate_steps"] = 3
    state = trainer_with(tiny_config, []).state_dict(1, 3)  # stopped after its first step, 3 batches in
    tiny_config["trainer"]["accumulate_steps"] = 2  # batch 4 would start a group of 2 that ends one batch short
    with pytest.raises(ConfigError, match=r"^trainer\.accumulate_steps: the checkpoint stopped after batch 3, inside"):
        trainer_with(tiny_config, []).load_state_dict(state)
    tiny_config["trainer"]["accumulate_steps"] = 1  # groups that start where it stopped are whole
    trainer_with(tiny_config, []).load_state_dict(state)


@pytest.mark.parametrize("loss", ["nll_loss", {"type": "NLLLoss"}], ids=["nll_loss", "NLLLoss"])
def test_nll_loss_on_raw_scores_is_one_line_before_anything_is_written(tiny_config, loss):
    """A model without log_softmax trained with nll_loss would give a loss below 0 that falls without end, and a
    "best" checkpoint of it: the rehearsal says so. The same model ending in log_softmax trains."""
    from torch import nn

    def model(*ending: nn.Module) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), *ending)  # 8x8 digits, 10 classes

    tiny_config["loss"] = loss
    with pytest.raises(ConfigError, match=r"^loss: nll_loss takes log-probabilities, and the model's outputs are not"):
        trainer_with(tiny_config, [], model=model()).rehearse()
    assert trainer_with(tiny_config, [], model=model(nn.LogSoftmax(dim=1))).rehearse()["last"]["loss"] > 0
