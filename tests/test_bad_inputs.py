"""Reliability: every bad input answered in one line, nothing lost; faults while training; a soak test."""

import copy
import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from base.base_data_loader import InMemoryImages
from conftest import ROOT, evaluate, run_script, train, tree_snapshot
from logger.run_folder import LAST_NAME, RunFolder
from parse_config import ConfigParser
from test_cli import assert_one_error_line
from trainer.callbacks import Callback
from trainer.checkpoint import Checkpoint, load_checkpoint, run_is_finished
from utils.errors import CheckpointError, ConfigError, DataError

REQUIRED = ["name", "arch", "data_loader", "optimizer", "loss", "metrics", "trainer"]


def cli_case(tmp_path: Path, config: dict | str | None, *args: str, script: str = "train.py"):
    """Run a command on a config written into tmp_path; assert one error line and an unchanged tree."""
    saved = tmp_path / "saved"
    (saved / "models" / "Old" / "run").mkdir(parents=True, exist_ok=True)
    (saved / "models" / "Old" / "run" / "keep.txt").write_text("earlier results")
    path = tmp_path / "config.json"
    if config is not None:
        path.write_text(config if isinstance(config, str) else json.dumps(config))
    before = tree_snapshot(tmp_path)
    result = run_script(str(ROOT / script), *[str(path) if a == "CONFIG" else a for a in args], cwd=tmp_path)
    assert tree_snapshot(tmp_path) == before
    return result


@pytest.fixture
def config(base_config, tmp_path) -> dict:
    config = copy.deepcopy(base_config)
    config["save_dir"] = str(tmp_path / "saved")
    return config


@pytest.mark.e2e
@pytest.mark.parametrize("key", REQUIRED)
def test_each_required_key_missing(key, config, tmp_path):
    config.pop(key)
    assert_one_error_line(cli_case(tmp_path, config, "-c", "CONFIG"), f"{key}: missing required key")


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "not valid JSON (Expecting value at line 1, column 1)"), ("[1, 2]", "expected a JSON object at the top"),
     ('"config"', "expected a JSON object at the top"), ("{", "not valid JSON"), ("[" * 100_000, "nested too deeply"),
     ('{"name": "a", "seed": 1, "seed": 2}', "key 'seed' appears twice in one object"),
     ('{"name": "a", "seed": NaN}', "NaN is not a number a config can hold"),
     ('{"name": "a", "trainer": {"min_delta": -Infinity}}', "-Infinity is not a number a config can hold"),
     ('{"extends": "config.json"}', "extends config.json: a cycle")],
)  # fmt: skip
def test_config_files_that_are_not_configs(text, fragment, tmp_path):
    assert_one_error_line(cli_case(tmp_path, text, "-c", "CONFIG"), fragment)


@pytest.mark.e2e
def test_a_config_that_is_not_a_regular_file(tmp_path):
    result = run_script(str(ROOT / "train.py"), "-c", "/dev/zero", cwd=tmp_path)
    assert_one_error_line(result, "/dev/zero: not a regular file")


@pytest.mark.e2e
def test_a_folder_given_as_config(tmp_path):
    (tmp_path / "folder.json").mkdir()
    result = run_script(str(ROOT / "train.py"), "-c", str(tmp_path / "folder.json"), cwd=tmp_path)
    assert_one_error_line(result, "is a folder, expected a JSON file")


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("override", "fragment"),
    [("data_loader.args.batch_size=-8", "batch_size: expected a whole number >= 1, found -8"),
     ("data_loader.args.batch_size=0.5", "batch_size: expected a whole number >= 1, found 0.5"),
     ("data_loader.args.validation_split=1.0", "expected a fraction in [0, 1) or a sample count, found 1.0"),
     ("data_loader.args.validation_split=1449", "validation_split: 1449 samples asked for, but only 1449"),
     ("data_loader.args.validation_split=1.5", "expected a fraction in [0, 1) or a sample count, found 1.5"),
     ("data_loader.args.test_split=-1", "test_split: expected a fraction in [0, 1) or a sample count, found -1"),
     ("trainer.monitor=sideways val_loss", 'trainer.monitor: expected "off", or "min <metric>"'),
     ("trainer.early_stop=-1", "trainer.early_stop: expected a number >= 0, found -1"),
     ("trainer.epochs=[3]", "trainer.epochs: expected integer, found [3]"),
     ("metrics=7", "metrics: expected array, found 7"),
     ("optimizer.args=5", "optimizer.args: expected object, found 5"),
     ("loss=cross_entropyy", "did you mean 'cross_entropy'?"),
     ("lr_scheduler.type=Cosine", "lr_scheduler.type: unknown lr_scheduler 'Cosine'"),
     ("arch.args.depth=3", "arch.args.depth: DigitsModel has no argument 'depth'"),
     ("name=a/b", "name: expected a single folder name"),
     ("name=..", "name: expected a single folder name"),
     ("name=ok\n", "name: expected a single folder name"),
     # values that pass a loose schema and would break later, or change results quietly
     ("optimizer.args.lr=fast", "optimizer.args.lr: expected a number; Adam's default is 0.001; found 'fast'"),
     ("optimizer.args.lr=NaN", "optimizer.args.lr: expected a number"),
     ("optimizer.args.lr=Infinity", "optimizer.args.lr: expected a number"),
     ('arch.args.num_classes="ten"', "arch.args.num_classes: expected a number; DigitsModel's default is 10"),
     ('data_loader.args.augment="false"', 'data_loader.args.augment: expected true or false; found "false"'),
     ("optimizer.args.amsgrad=1", "optimizer.args.amsgrad: expected true or false; found 1"),
     ('data_loader={"type": "TabularDataLoader", "args": {"dataset": 5}}', "args.dataset: expected a string"),
     ("optimizer.args.betas=0.9", "optimizer.args.betas: expected a list of 2 numbers; Adam's default is [0.9, 0.999]"),
     ('optimizer.args.betas=[0.9, "x"]', 'optimizer.args.betas: expected a list of 2 numbers; Adam\'s default is'),
     ("trainer.epochs=2.0", "trainer.epochs: expected integer, found 2.0"),
     ("trainer.keep_last=1.0", "trainer.keep_last: expected integer or null, found 1.0"),
     ("seed=1.0", "seed: expected integer, found 1.0"),
     ("seed=4294967296", "seed: expected a number <= 4294967295"),
     ("trainer.epochs=1000001", "trainer.epochs: expected a number <= 1000000"),
     ("trainer.min_delta=NaN", 'trainer.min_delta: expected number, found "NaN"'),
     ('metrics=["accuracy", {"type": "top_k_acc", "name": "val_loss"}]', "the label 'val_loss' is the loss's"),
     ('metrics=["accuracy", {"type": "top_k_acc", "name": "accuracy"}]', "metrics: 'accuracy' appears twice"),
     # values that only break when they run: built, then one batch through the real step, before any folder
     ("optimizer.args.lr=-1", "optimizer: Adam could not be built: ValueError: Invalid learning rate: -1"),
     ("data_loader.args.num_workers=-1", "data_loader: DigitsDataLoader could not be built: ValueError"),
     ('callbacks=[{"type": "ParameterHistograms", "args": {"every": 0}}]', "callbacks.0: ParameterHistograms could"),
     ("metrics.1.args.k=100", "the first training batch failed, before anything was written: RuntimeError: selected"),
     ("arch.args.channels=0", "the first training batch failed, before anything was written: RuntimeError"),
     ('loss={"type": "cross_entropy", "args": {"label_smoothing": 5}}', "the first training batch failed"),
     ('lr_scheduler={"type": "StepLR", "args": {"step_size": 0}}', "ZeroDivisionError"),
     ("optimizer.type=LBFGS", "optimizer.type: LBFGS is not supported: its step() needs a closure"),
     ("optimizer.type=SparseAdam", "optimizer.type: SparseAdam is not supported"),
     ('lr_scheduler={"type": "SequentialLR", "args": {"schedulers": [], "milestones": []}}', "is not supported"),
     ('lr_scheduler={"type": "LambdaLR", "args": {"lr_lambda": "x"}}', "LambdaLR is not supported"),
     ("data_loader.args.validation_split=0", "trainer.monitor: val_loss needs validation data"),
     ("arch.args.channels=1" + "0" * 400, "arch: DigitsModel could not be built"),
     ("optimizer.args.lr=1" + "0" * 400, "OverflowError: int too large to convert to float")],
)  # fmt: skip
def test_wrong_values_from_the_command_line(override, fragment, config, tmp_path):
    assert_one_error_line(cli_case(tmp_path, config, "-c", "CONFIG", override), fragment)


@pytest.mark.e2e
def test_test_py_bad_input(config, tmp_path):
    assert_one_error_line(cli_case(tmp_path, config, script="test.py"), "required: -r/--resume")
    assert_one_error_line(
        cli_case(tmp_path, config, "-r", str(tmp_path / "nothing.pth"), script="test.py"), "checkpoint not found"
    )
    assert_one_error_line(cli_case(tmp_path, config, "-r", "x.pth", "--split", "all", script="test.py"), "--split")
    assert_one_error_line(
        cli_case(tmp_path, config, "-r", "x.pth", "--raw-csv", script="test.py"), "--raw-csv: only with --predictions"
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _key_paths(node, prefix=()):
    if isinstance(node, dict):
        for key, child in node.items():
            yield (*prefix, key)
            yield from _key_paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield (*prefix, str(index))
            yield from _key_paths(child, (*prefix, str(index)))


BASE = json.loads((ROOT / "config.json").read_text())
PATHS = sorted(set(_key_paths(BASE)))


def _load_or_refuse(folder: Path, document, overrides=()) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps(document))
    before = sorted(folder.rglob("*"))
    try:
        ConfigParser.load(path, overrides=list(overrides))
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
    assert sorted(folder.rglob("*")) == before  # validation never creates anything


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=json_values)
def test_random_documents_are_valid_or_a_config_error(document, tmp_path):
    _load_or_refuse(tmp_path, document)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), value=json_values, overrides=st.lists(st.text(max_size=20), max_size=3))
def test_random_changes_and_overrides_of_the_real_config(path, value, overrides, tmp_path):
    document = copy.deepcopy(BASE)
    document["save_dir"] = str(tmp_path / "saved")
    node = document
    for part in path[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(path[-1]) if isinstance(node, list) else path[-1]] = value
    _load_or_refuse(tmp_path, document, overrides)


@pytest.mark.e2e
def test_every_file_a_run_writes_is_inside_its_run_folders(tiny_config, tmp_path):
    tiny_config["tensorboard"] = True
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config))
    result = run_script(str(ROOT / "train.py"), "-c", str(path), "--run-id", "r1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    models, log = "saved/models/Digits_CNN/r1/", "saved/log/Digits_CNN/r1/"
    outside = [p for p in written if p != "config.json" and not p.startswith((models, log))]
    assert outside == []
    assert {"config.json", "last.pth", "model_best.pth"} <= {Path(p).name for p in written if p.startswith(models)}


def test_a_failing_disk_stops_with_the_file_and_cause_and_keeps_earlier_checkpoints(tiny_config, tmp_path, monkeypatch):
    real_replace = os.replace
    calls = {"last": 0}

    def replace(src, dst):
        if Path(dst).name == LAST_NAME:
            calls["last"] += 1
            if calls["last"] == 2:  # the second epoch's save
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)  # the rename that makes every atomic write whole
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*last\.pth: No space left on device"):
        train(tiny_config, tmp_path, "disk")
    run = RunFolder.for_new_run(tiny_config["save_dir"], tiny_config["name"], "disk")
    assert load_checkpoint(run.checkpoint_dir / LAST_NAME).state["epoch"] == 1
    assert not list(run.checkpoint_dir.glob(".*.tmp"))


@pytest.mark.e2e
@pytest.mark.parametrize("failure", ["raises", "dies", "segfaults"])
def test_a_failing_data_loader_worker_ends_the_run_with_one_line(failure, tiny_config, tmp_path, monkeypatch):
    real_getitem = InMemoryImages.__getitem__
    parent = os.getpid()

    def getitem(self, request):
        if os.getpid() != parent and self.augment is None and len(self) > 0 and request[0][0] % 7 == 3:
            if failure == "dies":
                os._exit(3)
            if failure == "segfaults":  # a crash in native decoding code
                os.kill(os.getpid(), signal.SIGSEGV)
            raise ValueError("corrupt image at index 3")
        return real_getitem(self, request)

    monkeypatch.setattr(InMemoryImages, "__getitem__", getitem)
    tiny_config["data_loader"]["args"]["num_workers"] = 2
    expected = "ValueError in DataLoader worker process" if failure == "raises" else "DataLoader worker"
    with pytest.raises(DataError, match=expected) as info:
        train(tiny_config, tmp_path, "workers")
    assert "\n" not in str(info.value)
    if failure == "raises":
        assert str(info.value).startswith("ValueError in DataLoader worker process")
        assert "ValueError: corrupt image at index 3" in str(info.value)


class ResourceProbe(Callback):
    """Records (epoch, open file descriptors, resident pages) at every epoch end."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, int, int]] = []

    def on_epoch_end(self, trainer, epoch, result):
        if trainer.rehearsing:  # the one-batch rehearsal before the run is not one of its epochs
            return
        resident = int(Path("/proc/self/statm").read_text().split()[1])
        self.samples.append((epoch, len(os.listdir("/proc/self/fd")), resident))


@pytest.mark.slow
def test_soak_200_epochs_stay_bounded(tiny_config, tmp_path):
    tiny_config["tensorboard"] = True
    tiny_config["data_loader"]["args"]["validation_split"] = 64
    tiny_config["trainer"].update(
        epochs=200, len_epoch=1, save_period=1, keep_last=3, monitor="min val_loss", early_stop=0
    )  # all 200 epochs: no early stop
    probe = ResourceProbe()
    _, run = train(tiny_config, tmp_path, "soak", callbacks=[probe])
    samples = probe.samples
    assert len(samples) == 200
    assert len(list(run.checkpoint_dir.glob("checkpoint-epoch*.pth"))) == 3
    size = sum(p.stat().st_size for p in run.checkpoint_dir.iterdir())
    assert size < 6 * (run.checkpoint_dir / LAST_NAME).stat().st_size
    _, fds_10, rss_10 = samples[9]
    _, fds_200, rss_200 = samples[-1]
    assert fds_200 <= fds_10
    assert rss_200 < rss_10 * 1.10, (rss_10, rss_200)
    assert torch.isfinite(torch.tensor(load_checkpoint(run.checkpoint_dir / LAST_NAME).state["monitor_best"]))


@pytest.mark.e2e
def test_a_config_that_is_not_text(tmp_path):
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe{}")
    result = run_script(str(ROOT / "train.py"), "-c", str(tmp_path / "binary.json"), cwd=tmp_path)
    assert_one_error_line(result, "binary.json: cannot read it")


@pytest.mark.e2e
def test_a_failing_worker_in_test_py_is_one_line_too(tiny_config, tmp_path, monkeypatch):
    _, run = train(tiny_config, tmp_path, "evaluated")
    real_getitem = InMemoryImages.__getitem__
    parent = os.getpid()

    def getitem(self, request):
        if os.getpid() != parent:
            raise ValueError("unreadable image")
        return real_getitem(self, request)

    monkeypatch.setattr(InMemoryImages, "__getitem__", getitem)
    with pytest.raises(DataError, match=r"^ValueError in DataLoader worker process \d: ValueError: unreadable image$"):
        evaluate(run.checkpoint_dir, "data_loader.args.num_workers=2")


@pytest.fixture(scope="module")
def checkpoint_state() -> dict:
    """A real checkpoint's state, from a trainer that has not trained (cheap)."""
    from trainer.options import TrainerOptions
    from trainer.trainer import Trainer

    config = ConfigParser(json.loads((ROOT / "config.json").read_text())).config
    parser = ConfigParser(config)
    model = parser.init_obj("arch")
    trainer = Trainer(
        model, parser.init_ftn("loss"), parser.init_ftn("metrics"), parser.init_obj("optimizer", model.parameters()),
        data_loader=parser.init_obj("data_loader", split="train", seed=0), config=config,
        device=torch.device("cpu"), options=TrainerOptions(**{**config["trainer"], "monitor": "off"}),
    )  # fmt: skip
    return trainer.state_dict(epoch=1)


@pytest.mark.parametrize(
    "trainer", [{"epochs": 2, "early_stop": "5"}, {"epochs": 2, "bogus": 1}, {}, [], None], ids=str
)
def test_a_damaged_trainer_section_is_one_line_where_the_end_of_a_run_is_read(checkpoint_state, trainer, tmp_path):
    """A sweep's trial or a fold is finished or not by its checkpoint's own config: data, like the rest of it."""
    state = {**checkpoint_state, "config": {**checkpoint_state["config"], "trainer": trainer}}
    with pytest.raises(CheckpointError, match=r"last\.pth: the trainer section of its config is damaged \("):
        run_is_finished(Checkpoint(tmp_path / "last.pth", state))
    state["config"]["trainer"] = {"epochs": 1}  # and a sound one is read
    assert run_is_finished(Checkpoint(tmp_path / "last.pth", state))


def test_a_checkpoint_not_found_names_what_is_there(tmp_path):
    for run in ("1207_120000", "1207_130000"):
        (tmp_path / run).mkdir()
    with pytest.raises(
        CheckpointError, match=r"1207_12000: checkpoint not found; did you mean '1207_120000'\? \(there: 1207_120000, "
    ):
        load_checkpoint(tmp_path / "1207_12000")


def test_a_damaged_stored_config_is_named_with_its_checkpoint(checkpoint_state, tmp_path):
    """A resumed or evaluated checkpoint's config that no run wrote: the line says which file; a bad override
    of a sound one stays the override's own line."""
    damaged = {**checkpoint_state, "config": {**checkpoint_state["config"], "trainer": {"epochs": 2, "bogus": 1}}}
    with pytest.raises(ConfigError, match=r"^\S+last\.pth: the config stored in it is damaged \(trainer\.bogus: "):
        ConfigParser.load(None, Checkpoint(tmp_path / "last.pth", damaged))
    with pytest.raises(ConfigError, match=r"^trainer\.epochs: expected"):
        ConfigParser.load(None, Checkpoint(tmp_path / "last.pth", checkpoint_state), ["trainer.epochs=0"])
    # Sound in shape, but trained in another project (with the images feature, or the user's own model file):
    # not damaged, and the line says what to do.
    elsewhere = {**checkpoint_state, "config": {**checkpoint_state["config"], "arch": {"type": "BnMLP", "args": {}}}}
    with pytest.raises(ConfigError, match=r"^\S+last\.pth: its config does not fit this project \(arch\.type: unknown "
                       r"arch 'BnMLP'.*\); use the checkpoint in the project that trained it, or add the parts it "
                       r"names here$"):  # fmt: skip
        ConfigParser.load(None, Checkpoint(tmp_path / "last.pth", elsewhere))


field_values = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12)
field_values = field_values | st.lists(st.integers(), max_size=3) | st.dictionaries(st.text(max_size=5), st.integers())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_checkpoint_fields_are_loaded_or_refused_in_one_line(data, checkpoint_state, tmp_path):
    from trainer.checkpoint import check_resume

    key = data.draw(st.sampled_from(sorted(checkpoint_state)))
    value = data.draw(field_values)
    folder = tmp_path / "saved" / "models" / "Digits_CNN" / "run"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({**checkpoint_state, key: value}, folder / LAST_NAME)
    try:
        checkpoint = load_checkpoint(folder / LAST_NAME)
        config = ConfigParser.load(resume=checkpoint, overrides=["trainer.epochs=5"]).config
        check_resume(checkpoint, config)
    except (CheckpointError, ConfigError) as e:
        assert str(e) and "\n" not in str(e)


@pytest.mark.e2e
def test_a_log_folder_that_is_a_file_is_one_line_and_leaves_nothing_behind(config, tmp_path):
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "log").write_text("not a folder")
    result = cli_case(tmp_path, config, "-c", "CONFIG", "trainer.epochs=1")
    assert_one_error_line(result, "save_dir: cannot create", "saved/log/Digits_CNN")
    assert not (tmp_path / "saved" / "models" / "Digits_CNN").exists()


@pytest.mark.e2e
def test_ctrl_c_during_start_up_is_one_line(config, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "config.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-c", "config.json"], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    time.sleep(1.0)  # parsing is done; torch is loading or the data is being read
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines() == ["interrupted: stopped before training started; nothing was saved"]
    assert not (tmp_path / "saved").exists()


def test_a_full_disk_under_the_log_prints_no_traceback_per_line(tmp_path, capsys):
    import logging

    from logger.logger import setup_logging

    setup_logging(tmp_path, 1)
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler))

    def full(text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    handler.stream.write = full
    for epoch in range(6):
        logging.getLogger("trainer").info("    epoch          : %d", epoch)
    assert "Logging error" not in capsys.readouterr().err
