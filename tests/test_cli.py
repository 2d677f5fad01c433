"""The real commands in subprocesses, as a user runs them: exit codes, the one error line, files on disk."""

import json
import os
import pickle
import shlex
import stat
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_script, tree_snapshot
from logger.logger import log_summary
from logger.run_folder import BEST_NAME, LAST_NAME
from utils.monitor import Monitor

pytestmark = pytest.mark.e2e  # subprocesses and whole runs: pytest -m e2e


def assert_one_error_line(result, *fragments: str) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One real `python train.py` run of the shrunken default config; returns its checkpoint folder."""
    folder = tmp_path_factory.mktemp("cli")
    config = json.loads((ROOT / "config.json").read_text())
    config.update(save_dir=str(folder / "saved"), tensorboard=True)
    config["trainer"].update(epochs=2)
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    result = run_script("train.py", "-c", str(path), "--run-id", "cli", "--lr", "0.003")
    assert result.returncode == 0, result.stderr
    assert "epoch          : 2" in result.stdout
    return folder / "saved" / "models" / "Digits_CNN" / "cli"


def test_train_then_test_from_the_command_line(trained_run):
    saved = trained_run.parent.parent.parent
    assert json.loads((trained_run / "config.json").read_text())["optimizer"]["args"]["lr"] == 0.003
    assert list((saved / "log" / "Digits_CNN" / "cli").glob("events.out.tfevents.*"))
    result = run_script("test.py", "--resume", str(trained_run / BEST_NAME))
    assert result.returncode == 0, result.stderr
    (result_file,) = trained_run.glob("model_best.epoch*.test.json")  # the epoch model_best.pth holds
    written = json.loads(result_file.read_text())
    assert written["split"] == "test" and written["n_samples"] == 348 and written["accuracy"] > 0.85
    out = trained_run.parent / "elsewhere.json"
    result = run_script("test.py", "-r", str(trained_run), "--split", "valid", "--out", str(out))
    assert result.returncode == 0 and json.loads(out.read_text())["n_samples"] == 152


def test_help_lists_options_and_the_override_syntax():
    result = run_script("train.py", "--help")
    assert result.returncode == 0
    for option in ("--config", "--resume", "--device", "--run-id", "--lr", "--bs", "key=value", "trainer.epochs=3"):
        assert option in result.stdout
    assert "--split" in run_script("test.py", "--help").stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["-c", "missing.json"], ["missing.json: file not found"]),
        ([], ["no config given: pass -c config.json"]),
        (["-c", "config.json", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["-c", "config.json", "trainer.epochs"], ["override 'trainer.epochs': expected key=value"]),
        (["-c", "config.json", "trainer.epoch=3"], ["no key trainer.epoch; did you mean 'epochs'?"]),
        (["-c", "config.json", "trainer.epochs=many"], ['trainer.epochs: expected integer, found "many"']),
        (
            ["-c", "config.json", "arch.type=Resnet"],
            ["arch.type: unknown arch 'Resnet'", "(valid: ", "DigitsModel", "from model/*.py)"],
        ),
        (["-c", "config.json", "data_loader.args.validation_split=5000"], ["validation_split: 5000 samples asked for"]),
        (["-c", "config.json", "-d", "7"], ["--device 7: asks for 1 GPU(s) but"]),
        (["-c", "config.json", "--run-id", "a/b"], ["--run-id 'a/b': expected a single folder name"]),
    ],
)
def test_bad_input_ends_with_one_clear_line_and_writes_nothing(args, fragments, tmp_path):
    config = json.loads((ROOT / "config.json").read_text())
    config["save_dir"] = str(tmp_path / "saved")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    args = [str(path) if a == "config.json" else a for a in args]
    result = run_script(str(ROOT / "train.py"), *args, cwd=tmp_path)
    assert_one_error_line(result, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def _bad_checkpoints(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir(parents=True)
    files = {}
    files["empty"] = folder / "empty.pth"
    files["empty"].write_bytes(b"")
    files["truncated"] = folder / "truncated.pth"
    files["truncated"].write_bytes(good.read_bytes()[:2000])
    files["text"] = folder / "notes.pth"
    files["text"].write_text("not a checkpoint")
    files["foreign"] = folder / "foreign.pth"
    torch.save({"weights": torch.zeros(3)}, files["foreign"])
    state = torch.load(good, weights_only=True)
    files["newer"] = folder / "newer.pth"
    torch.save({**state, "format_version": 99}, files["newer"])
    files["other_model"] = folder / "other_model.pth"
    state["state_dict"] = {**state["state_dict"], "fc2.weight": torch.zeros(5, 128)}
    torch.save(state, files["other_model"])
    files["no_folder_checkpoint"] = folder
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = os.urandom(4096)  # damaged on disk or in a copy
    files["corrupted"] = folder / "corrupted.pth"
    files["corrupted"].write_bytes(bytes(data))
    files["fifo"] = folder / "fifo.pth"
    os.mkfifo(files["fifo"])  # would block a reader forever
    good_state = torch.load(good, weights_only=True)
    for case, change in {
        "version_text": {"format_version": "1"},
        "version_negative": {"format_version": -5},
        "weights_list": {"state_dict": [1, 2]},
        "weights_not_tensors": {"state_dict": {"fc1.weight": [1.0, 2.0]}},
        "config_list": {"config": [1]},
        "epoch_text": {"epoch": "3"},
    }.items():
        files[case] = folder / f"{case}.pth"
        torch.save({**good_state, **change}, files[case])
    return files


class Payload:
    """Unpickling this would create a marker file: a checkpoint must never be able to do that."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("script", ["train.py", "test.py"])
def test_bad_checkpoints_are_refused_with_one_line(script, trained_run, tmp_path):
    bad = _bad_checkpoints(tmp_path / "saved" / "models" / "Bad" / "run", trained_run / LAST_NAME)
    expected = {
        "empty": "not a readable checkpoint",
        "truncated": "not a readable checkpoint",
        "text": "not a readable checkpoint",
        "foreign": "not a checkpoint of this project",
        "newer": "format version 99 is newer than this code understands",
        "other_model": "weights do not fit the configured model (fc2.weight has shape (5, 128) there, (10, 128) here",
        "no_folder_checkpoint": "folder has no",
        "corrupted": "checkpoint is corrupted",
        "fifo": "not a regular file",
        "version_text": "field 'format_version' should be a format version >= 1, found '1'",
        "version_negative": "field 'format_version' should be a format version >= 1, found -5",
        "weights_list": "field 'state_dict' should be a dict of parameter names to tensors, found list",
        "weights_not_tensors": "field 'state_dict' should be a dict of parameter names to tensors",
        "config_list": "field 'config' should be a config object, found list",
        "epoch_text": "field 'epoch' should be a whole number >= 0, found '3'",
    }
    before = tree_snapshot(trained_run.parent.parent.parent)
    for case, path in bad.items():
        extra = ["trainer.epochs=5"] if script == "train.py" else []
        result = run_script(str(ROOT / script), "--resume", str(path), *extra, cwd=tmp_path)
        assert_one_error_line(result, str(path), expected[case])
    assert tree_snapshot(trained_run.parent.parent.parent) == before

    marker = tmp_path / "pwned"
    for protocol, reason in ((2, "it would load posix.system"), (pickle.HIGHEST_PROTOCOL, "it uses pickle features")):
        evil = tmp_path / f"evil{protocol}.pth"
        torch.save({"format_version": 1, "payload": Payload(marker)}, evil, pickle_protocol=protocol)
        result = run_script(str(ROOT / script), "--resume", str(evil), cwd=tmp_path)
        assert_one_error_line(result, f"refused, {reason}", "a checkpoint must hold only tensors and plain values")
        assert not marker.exists()


def test_resume_checks_every_field_and_writes_only_in_the_checkpoints_own_run_folder(trained_run, tmp_path):
    state = torch.load(trained_run / LAST_NAME, weights_only=True)
    saved = tmp_path / "saved"
    cases = {
        "monitor_text": ({"monitor_best": "low"}, "field 'monitor_best' should be a number"),
        "batch_negative": ({"batch_in_epoch": -1}, "field 'batch_in_epoch' should be a whole number >= 0"),
        "no_rng": ({"rng": {}}, "field 'rng' should be the random states"),
        "mid_epoch_without_partial": (
            {"batch_in_epoch": 3},
            "cannot resume, the checkpoint lacks partial_epoch_metrics",
        ),
        "rng_of_another_size": (
            {"rng": {**state["rng"], "torch": torch.zeros(5, dtype=torch.uint8)}},
            "state does not fit",
        ),
        "partial_of_another_run": (
            {"batch_in_epoch": 3, "partial_epoch_metrics": {"sums": {"x": torch.zeros(())}, "counts": {}}},
            "the checkpoint's training state does not fit",
        ),
        "monitor_nan": ({"monitor_best": float("nan")}, "field 'monitor_best' should be a number"),
        "wandb_run_a_path": ({"wandb_run_id": "../../x"}, "field 'wandb_run_id' should be a W&B run id or null"),
        "batch_beyond_the_epoch": (
            {"batch_in_epoch": 10_000, "partial_epoch_metrics": {"sums": {}, "counts": {}}},
            "the checkpoint stopped after batch 10000 of epoch 2, which has 41 batches with this config",
        ),
        "optimizer_of_another_model": (
            {"optimizer": {"state": {}, "param_groups": [{**state["optimizer"]["param_groups"][0], "params": [0]}]}},
            "the checkpoint's optimizer or scheduler state does not fit",
        ),
    }
    for case, (change, _) in cases.items():
        folder = saved / "models" / "Digits_CNN" / case
        folder.mkdir(parents=True)
        torch.save({**state, **change}, folder / LAST_NAME)
    before = tree_snapshot(tmp_path)
    for case, (_, fragment) in cases.items():
        result = run_script("train.py", "--resume", str(saved / "models" / "Digits_CNN" / case), "trainer.epochs=5")
        assert_one_error_line(result, fragment)
    assert tree_snapshot(tmp_path) == before

    # A crafted run_id and save_dir inside the checkpoint choose nothing: the run stays in its own folder.
    crafted = saved / "models" / "Digits_CNN" / "crafted"
    crafted.mkdir()
    config = {**state["config"], "save_dir": str(tmp_path / "elsewhere")}
    torch.save({**state, "run_id": "../../../../elsewhere", "config": config}, crafted / LAST_NAME)
    result = run_script(str(ROOT / "train.py"), "--resume", str(crafted), "trainer.epochs=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "elsewhere").exists()
    assert (saved / "log" / "Digits_CNN" / "crafted" / "info.log").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_test_py_writes_to_devices_through_and_refuses_outputs_it_would_damage(trained_run, tmp_path):
    result = run_script("test.py", "-r", str(trained_run / LAST_NAME), "--out", "/dev/null")
    assert result.returncode == 0, result.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # still the device, not a file put in its place
    result = run_script("test.py", "-r", str(trained_run / LAST_NAME), "--out", "-")
    assert result.returncode == 0 and json.loads(result.stdout)["n_samples"] == 348  # stdout: the JSON alone
    (tmp_path / "target.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    (tmp_path / "folder").mkdir()
    before = tree_snapshot(tmp_path)
    for out, fragment in (
        ("link.json", "is a symbolic link"),
        ("folder", "is a folder"),
        ("missing/results.json", "does not exist; create it first"),
        ("target.json", "exists; choose a new file name"),
        ("a" * 300 + ".json", "File name too long"),
        ("new\nline.json", "control characters"),
        ("/proc/results.json", "/proc/results.json: cannot be written"),
    ):
        result = run_script("test.py", "-r", str(trained_run / LAST_NAME), "--out", str(tmp_path / out))
        assert_one_error_line(result, fragment)
    assert tree_snapshot(tmp_path) == before and (tmp_path / "target.json").read_text() == "{}"


def test_the_test_command_a_run_prints_can_be_pasted_into_a_shell(caplog, tiny_config, tmp_path):
    caplog.set_level("INFO")
    folder = tmp_path / "my runs" / "models" / "Digits_CNN" / "it's"
    log_summary({"last": {"epoch": 2}, "best": None}, Monitor.parse("off"), tiny_config, folder)
    command = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Evaluate it"))
    assert shlex.split(command.split(": ", 1)[1]) == ["python", "test.py", "--resume", str(folder / LAST_NAME)]
