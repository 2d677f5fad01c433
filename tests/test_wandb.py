"""The wandb feature: W&B runs read back from their offline files (numbers, images, checkpoints as artifacts, a
resume going on with the run, test.py's summary), its config section checked, and a checkpoint's stored section
read as data: it chooses no host, folder or mode."""

import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import ROOT, evaluate, run_script, train, tree_snapshot
from logger.run_folder import LAST_NAME
from parse_config import ConfigParser
from test_around_the_loop import pets_trainer
from test_cli import assert_one_error_line
from trainer.callbacks import ImagePredictionLogger
from trainer.checkpoint import load_checkpoint
from utils.errors import ConfigError


def test_asking_for_wandb_without_the_package_is_one_clear_error(tiny_config, tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a)
    )
    tiny_config["wandb"] = {"project": "digits"}
    with pytest.raises(
        ConfigError, match=r'^wandb: the wandb package is not installed; run pip install wandb, or set "wandb": null$'
    ):
        ConfigParser(tiny_config)


def read_wandb_run(path: Path) -> dict[str, dict]:
    """Summary, history and config of an offline W&B run, read from its run-<id>.wandb file.

    The file is a LevelDB-style log (a 7-byte ":W&B" header, 32 KiB blocks of records with a 7-byte header:
    crc, length, type full/first/middle/last) of wandb's own protobuf Records.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    chunks, position, pending = [], 7, b""
    while position + 7 <= len(data):
        space = 32768 - position % 32768
        if space < 7:  # a block's tail too short for a record header is padding
            position += space
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
            if kind == 4:
                chunks.append(pending)
    run: dict[str, Any] = {"summary": {}, "history": {}, "config": {}, "artifacts": []}
    for chunk in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            run["summary"].update({item.key: json.loads(item.value_json) for item in record.summary.update})
        elif kind == "history":
            for item in record.history.item:
                run["history"].setdefault(item.key or "/".join(item.nested_key), []).append(json.loads(item.value_json))
        elif kind == "run":
            run["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "artifact":
            artifact = record.artifact
            files = [entry.path for entry in artifact.manifest.contents]
            metadata = json.loads(artifact.metadata or "{}")
            aliases = list(artifact.aliases)
            run["artifacts"].append({"name": artifact.name, "aliases": aliases, "files": files, **metadata})
    return run


class RecordedRun:
    """A W&B run that keeps what WandbWriter logs to it, row by row (the offline tests read W&B's own files)."""

    disabled, id = False, "recorded"

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        pass

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


def test_wandb_gets_each_image_captioned_with_its_predicted_and_true_class_names():
    import wandb

    from logger.wandb_writer import WandbWriter

    run = RecordedRun()
    trainer = pets_trainer(WandbWriter(None, run))
    ImagePredictionLogger(max_images=3).on_validation_end(trainer, 1, {})
    trainer.writer.add_scalar("accuracy/valid", 0.5, 1)
    trainer.writer.flush()
    [row] = run.rows  # the images in the epoch's one row, beside its numbers
    images = row.pop("predictions/images")
    assert row == {"accuracy/valid": 0.5, "epoch": 1}
    captions = ["Pred: cat, Label: cat", "Pred: dog, Label: dog", "Pred: dog, Label: cat"]
    assert wandb.Image.all_captions(images) == captions
    assert [image.image.getpixel((0, 0)) for image in images] == [(0, 0, 0), (255, 255, 255), (255, 255, 255)]


@pytest.mark.e2e
def test_wandb_offline_run_gets_the_same_numbers(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tiny_config["wandb"] = {"project": "digits", "name": "offline-test"}
    tiny_config["callbacks"] = [{"type": "ImagePredictionLogger", "args": {"max_images": 4}}]
    tiny_config["trainer"]["log_model"] = True
    result, folder = train(tiny_config, tmp_path, "wandb")
    runs = list((folder.log_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    run = read_wandb_run(runs[0])
    assert run["summary"]["hparam/best_val_accuracy"] == pytest.approx(result["best"]["val_accuracy"], abs=1e-6)
    assert run["history"]["accuracy/valid"][-1] == pytest.approx(result["last"]["val_accuracy"], abs=1e-6)
    assert len(run["history"]["accuracy/valid"]) == 2
    assert any(key.startswith("predictions/images") for key in run["history"])  # an image: nested keys
    assert run["config"]["name"] == "Digits_CNN" and run["config"]["trainer.epochs"] == 2
    # log_model true: at the end, model_best.pth as "best" and last.pth as "latest", with their epochs' results.
    # (W&B moves "latest" to the version logged last: last.pth's.)
    artifacts = [(a["files"], set(a["aliases"]), a["epoch"], a["val_loss"]) for a in run["artifacts"]]
    assert artifacts == [
        (["model_best.pth"], {"latest", "best"}, result["best"]["epoch"], pytest.approx(result["best"]["val_loss"])),
        (["last.pth"], {"latest"}, 2, pytest.approx(result["last"]["val_loss"])),
    ]
    # One row per epoch on an explicit epoch axis, one per logged training step on the global-step axis.
    assert run["history"]["epoch"] == [1, 2]
    steps = run["history"]["global_step"]
    assert len(run["history"]["loss/train_step"]) == len(steps) and steps == sorted(steps) and len(steps) >= 4
    assert run["history"]["_step"] == list(range(len(steps) + 2))  # W&B's own counter: rows, nothing else
    # Each epoch's 4 images, each captioned with its predicted and true class (Digits has no names: the numbers).
    valid = ConfigParser(tiny_config).init_obj("data_loader", split="valid", seed=0)
    valid.set_epoch(2)
    labels = [str(t) for t in next(iter(valid))[1][:4].tolist()]
    captions = run["history"]["predictions/images/captions"]
    assert len(captions) == 2 and [re.fullmatch(r"Pred: \d, Label: (\d)", c)[1] for c in captions[-1]] == labels
    # The images are visible: uint8 pixels, not floats in [0, 1] cast to black.
    from PIL import Image

    files = run["history"]["predictions/images/filenames"][-1]
    pixels = torch.stack(  # np.array makes a copy: writable
        [torch.from_numpy(np.array(Image.open(runs[0].parent / "files" / f).convert("L"))).float() for f in files]
    )
    assert len(files) == 4 and pixels.mean() > 30 and pixels.max() == 255


def wandb_runs(log_dir: Path, run_id: str) -> list[Path]:
    """The offline files of W&B run `run_id`, oldest first (one folder per process that logged to it; a second
    in the same second gets a -1 suffix, so names do not sort in time)."""
    return sorted(log_dir.glob(f"wandb/offline-run-*-{run_id}*/run-{run_id}.wandb"), key=lambda p: p.stat().st_mtime_ns)


@pytest.mark.e2e
def test_wandb_run_goes_on_at_resume_gets_checkpoints_and_test_results(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tiny_config["wandb"] = {"project": "digits", "job_type": "train"}
    tiny_config["trainer"].update(monitor="max val_accuracy", log_model="all")
    _, folder = train(tiny_config, tmp_path, "wandb")
    run_id = torch.load(folder.checkpoint_dir / "last.pth", weights_only=True)["wandb_run_id"]
    first = read_wandb_run(wandb_runs(folder.log_dir, run_id)[0])
    # One version of model-<run id> after each epoch: last.pth, with the epoch's results; "best" where it improved.
    assert [a["epoch"] for a in first["artifacts"]] == [1, 2]
    assert {a["name"] for a in first["artifacts"]} == {f"model-{run_id}"}
    assert all(a["files"] == ["last.pth"] and "latest" in a["aliases"] for a in first["artifacts"])
    assert "best" in first["artifacts"][0]["aliases"]

    # A resume goes on with the same W&B run (a second offline folder of the same id, to sync into it).
    train(None, tmp_path, resume=folder.checkpoint_dir / "last.pth", overrides=["trainer.epochs=3"])
    runs = wandb_runs(folder.log_dir, run_id)
    assert len(runs) == 2
    assert read_wandb_run(runs[1])["history"]["epoch"] == [3]

    # test.py adds its results to that run's summary, as <checkpoint>/<metric>/<split>.
    results = evaluate(folder.checkpoint_dir / "model_best.pth")
    runs = wandb_runs(folder.log_dir, run_id)
    assert len(runs) == 3
    summary = read_wandb_run(runs[2])["summary"]
    assert summary["model_best/accuracy/test"] == pytest.approx(results["accuracy"], abs=1e-9)
    assert summary["model_best/n_samples/test"] == results["n_samples"] > 0
    # W&B's own switch keeps an evaluation out of the run.
    evaluate(folder.checkpoint_dir / "model_best.pth", "--out", str(tmp_path / "r.json"), "wandb.mode=disabled")
    assert len(list((folder.log_dir / "wandb").glob("offline-run-*"))) == 3

    # A resume with W&B switched off keeps the run's id, and the next one with it on goes on with that run.
    last = folder.checkpoint_dir / "last.pth"
    train(None, tmp_path, resume=last, overrides=["trainer.epochs=4", "wandb.mode=disabled", "trainer.log_model=false"])
    assert torch.load(last, weights_only=True)["wandb_run_id"] == run_id
    train(None, tmp_path, resume=last, overrides=["trainer.epochs=5"])
    runs = wandb_runs(folder.log_dir, run_id)
    assert len(runs) == 4 and read_wandb_run(runs[3])["history"]["epoch"] == [5]


def test_log_model_without_a_wandb_section_is_refused_for_training_only(tiny_config, tmp_path):
    tiny_config["trainer"]["log_model"] = True
    with pytest.raises(ConfigError, match=r"trainer.log_model: checkpoints go to W&B; add a \"wandb\" section"):
        train(tiny_config, tmp_path)
    assert not (tmp_path / "saved").exists()
    ConfigParser(tiny_config)  # test.py and predict.py evaluate such a run's config with wandb=null


def test_the_wandb_section_takes_any_argument_of_wandb_init(tiny_config):
    tiny_config["wandb"] = {"project": "digits", "job_type": "train", "save_code": False}
    ConfigParser(tiny_config)  # accepted: wandb.init's own arguments
    tiny_config["wandb"] = {"project": "digits", "job_typ": "train", "dir": "/tmp", "id": "a/b"}
    with pytest.raises(ConfigError) as error:
        ConfigParser(tiny_config)
    # An id W&B would refuse, or too long for the artifact model-<id>: refused before anything starts.
    assert "wandb.id: expected 1 to 122 characters, none of / \\ # ? % : or blanks; found 'a/b'" in str(error.value)
    assert "wandb.job_typ: wandb.init has no argument 'job_typ'; did you mean 'job_type'?" in str(error.value)
    assert "wandb.dir: set by the template" in str(error.value)


@pytest.mark.e2e
def test_wandb_inits_own_refusal_is_one_line_and_leaves_no_run_folder(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    tiny_config["wandb"] = {"project": "a/b"}
    path = tmp_path / "wandb.json"
    path.write_text(json.dumps(tiny_config))
    result = run_script(str(ROOT / "train.py"), "-c", str(path), "--run-id", "refused")
    assert_one_error_line(result, "wandb: wandb.init refused its arguments: Invalid project name")
    assert not list(Path(tiny_config["save_dir"]).glob("models/*/refused"))
    tiny_config["wandb"] = {"project": "digits", "settings": {"console": 5}}  # pydantic's first line names no key
    path.write_text(json.dumps(tiny_config))
    result = run_script(str(ROOT / "train.py"), "-c", str(path), "--run-id", "refused")
    assert_one_error_line(result, "wandb: wandb.init refused its arguments: settings.console: Input should be")
    assert not list(Path(tiny_config["save_dir"]).glob("models/*/refused"))


def test_a_refusal_on_resume_says_that_the_runs_stored_mode_is_not_used(tmp_path, monkeypatch):
    """A checkpoint's wandb.mode is not used (a stored section chooses no mode): a run trained offline, resumed
    or evaluated without WANDB_MODE, is refused for want of an API key; the line says how to stay offline."""
    import wandb

    from logger.wandb_writer import init_wandb

    def no_key(**args: Any) -> None:
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_key)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    hint = "(a run's stored wandb.mode is not used again: add wandb.mode=offline, or set WANDB_MODE)"
    with pytest.raises(ConfigError, match=re.escape(f"No API key configured. Use `wandb login` to log in. {hint}")):
        init_wandb(tmp_path, {"project": "digits"}, "abc123")
    for args, run_id in (({"project": "digits", "mode": "online"}, "abc123"), ({"project": "digits"}, None)):
        with pytest.raises(ConfigError) as error:  # the mode given, or a new run: nothing was dropped
            init_wandb(tmp_path, args, run_id)
        assert str(error.value).endswith("Use `wandb login` to log in.")


@pytest.mark.e2e
def test_a_resume_whose_wandb_refuses_to_start_leaves_the_run_folder_as_it_was(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    tiny_config["wandb"] = {"project": "digits"}
    _, folder = train(tiny_config, tmp_path)
    saved = Path(tiny_config["save_dir"])
    before = tree_snapshot(saved)
    last = folder.checkpoint_dir / LAST_NAME
    result = run_script(str(ROOT / "train.py"), "--resume", str(last), "trainer.epochs=3", "wandb.project=a/b")
    assert_one_error_line(result, "wandb: wandb.init refused its arguments: Invalid project name")
    assert tree_snapshot(saved) == before  # config.json, info.log, no lock file: all as they were
    train(None, tmp_path, resume=last, overrides=["trainer.epochs=3"])  # and the run goes on
    assert json.loads((folder.checkpoint_dir / "config.json").read_text())["trainer"]["epochs"] == 3


def test_where_wandb_talks_and_writes_is_checked_in_the_users_own_config(tiny_config):
    tiny_config["wandb"] = {"project": "digits", "settings": {"base_url": "https://wandb.example.org"}}
    ConfigParser(tiny_config)  # a server of one's own, over https
    tiny_config["wandb"]["settings"] = {"base_url": "http://evil.example", "x_files_dir": "/tmp/elsewhere"}
    with pytest.raises(ConfigError) as error:
        ConfigParser(tiny_config)
    assert "wandb.settings.base_url: expected an https:// address, or http:// on this machine" in str(error.value)
    assert "wandb.settings.x_files_dir: W&B's files go to the run's log folder; remove it" in str(error.value)
    # The host compared whole, and any setting that names a place on disk (a suffix of a folder too).
    for url in ("http://localhost.evil.example:80", "http://127.0.0.1.nip.io", "http://localhost@evil.example/"):
        tiny_config["wandb"]["settings"] = {"base_url": url}
        with pytest.raises(ConfigError, match=r"wandb\.settings\.base_url: expected an https:// address"):
            ConfigParser(tiny_config)
    tiny_config["wandb"]["settings"] = {"base_url": "http://localhost:8080", "x_sync_dir_suffix": "/../../x"}
    with pytest.raises(ConfigError, match=r"^wandb\.settings\.x_sync_dir_suffix: W&B's files go to the run's log"):
        ConfigParser(tiny_config)


@pytest.mark.e2e
def test_a_checkpoints_stored_wandb_section_chooses_no_host_folder_or_mode(tiny_config, tmp_path, monkeypatch):
    """A stranger's checkpoint whose config sends W&B to their server (with the user's API key) or writes its
    files elsewhere: test.py and a resume use only which project and run it names."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tiny_config["wandb"] = {"project": "digits"}
    _, run = train(tiny_config, tmp_path, "planted")
    last = run.checkpoint_dir / LAST_NAME
    state = load_checkpoint(last).state
    elsewhere = tmp_path / "elsewhere"
    state["config"]["wandb"] = {
        "project": "digits",
        "mode": "online",
        "settings": {"base_url": "http://attacker.example", "x_files_dir": str(elsewhere)},
    }
    torch.save(state, last)
    loaded = ConfigParser.load(None, load_checkpoint(last)).config
    assert loaded["wandb"] == {"project": "digits"}
    results = evaluate(last, "--out", str(tmp_path / "r.json"))
    assert results["n_samples"] > 0 and not elsewhere.exists()
    offline = list((run.log_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2  # the training and test.py's, both offline as this machine says, in the run's folder
    # The user's own command line still chooses: W&B off for this evaluation.
    evaluate(last, "--out", str(tmp_path / "r2.json"), "wandb.mode=disabled")
    assert len(list((run.log_dir / "wandb").glob("offline-run-*"))) == 2
