"""Hyper-parameter sweeps (tune.py): the space checked before Ray starts, then real sweeps on Ray Tune.

The checks of a space run in this process and start nothing (fast tier). The sweeps run tune.py as a user
does, in a subprocess that starts a local Ray (e2e tier; skipped without Ray installed).
"""

import csv
import http.server
import importlib.util
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_script, tree_snapshot
from utils.errors import ConfigError

# A sweep's trials are compared on the monitored metric; the shrunken config monitors the validation loss.
MONITOR = "min val_loss"
# A sweep is parsed only where Ray is installed (it is optional: requirements-tune.txt); found without importing it.
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs Ray Tune")


@pytest.fixture
def sweep_config(tiny_config: dict, write_config) -> tuple[dict, Path]:
    tiny_config["trainer"]["monitor"] = MONITOR
    return tiny_config, write_config(tiny_config)


@pytest.fixture
def write_space(tmp_path: Path):
    def write(space: dict | str, name: str = "space.json") -> Path:
        path = tmp_path / name
        path.write_text(space if isinstance(space, str) else json.dumps(space))
        return path

    return write


def parse(*argv: str):
    import tune

    return tune.parse_args([str(a) for a in argv])


# The space, checked before anything starts (no Ray, nothing written).

BAD_SPACES = [
    (
        {"trainer.epoch": {"randint": [1, 3]}},
        "trainer.epoch: no key trainer.epoch; did you mean 'epochs'? (keys there: epochs,",
    ),
    (
        {"optimizer.args.lrr": {"loguniform": [0.001, 0.1]}},
        "optimizer.args.lrr: Adam has no argument 'lrr'; did you mean 'lr'?",
    ),
    (
        {"optimizer.args.lr": {"loguniform": [0, 0.1]}},
        "optimizer.args.lr: loguniform takes bounds > 0 (it draws the logarithm); found [0, 0.1]",
    ),
    ({"data_loader.args.batch_size": {"choice": []}}, "data_loader.args.batch_size: choice takes a non-empty list"),
    ({"arch.args.dropout": {"uniform": [0.5, 0.1]}}, "arch.args.dropout: uniform takes low < high; found [0.5, 0.1]"),
    (
        {"arch.args.channels": {"randint": [8, 8]}},
        "arch.args.channels: randint takes low < high (high itself is excluded); found [8, 8]",
    ),
    (
        {"arch.args.channels": {"randint": [8.5, 16]}},
        "arch.args.channels: randint takes [low, high], two whole numbers; found [8.5, 16]",
    ),
    ({"arch.args.dropout": {"normal": [0, 1]}}, "arch.args.dropout: unknown distribution 'normal'"),
    ({"arch.args.dropout": [0.1, 0.2]}, "arch.args.dropout: expected one distribution, e.g."),
    ({"trainer.monitor": {"choice": ["min val_loss"]}}, "trainer.monitor: cannot be swept"),
    # Every end of a range is checked through the whole validation before the sweep starts.
    (
        {"trainer.epochs": {"randint": [0, 3]}},
        "the trial trainer.epochs=0 would be refused: trainer.epochs: expected a number >= 1, found 0",
    ),
    (
        {"optimizer.type": {"choice": ["Adam", "SGD"]}},
        "optimizer.type=\"SGD\" would be refused: optimizer.args.amsgrad: SGD has no argument 'amsgrad'",
    ),
]


@pytest.mark.parametrize(("space", "expected"), BAD_SPACES, ids=[e[:40] for _, e in BAD_SPACES])
def test_a_bad_space_is_one_line_before_anything_starts(space, expected, sweep_config, write_space, monkeypatch):
    config, config_path = sweep_config
    monkeypatch.setitem(sys.modules, "ray", None)  # an `import ray` would fail: nothing may start Ray here
    path = write_space(space)
    with pytest.raises(ConfigError) as info:
        parse("-c", config_path, "--space", path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "\n" not in message
    assert not Path(config["save_dir"]).exists()


def test_every_problem_of_a_space_is_named_in_the_one_line(sweep_config, write_space):
    _, config_path = sweep_config
    path = write_space({"optimizer.args.lr": {"loguniform": [-1, 1]}, "arch.args.dropout": {"choice": []}})
    with pytest.raises(ConfigError, match=r"optimizer\.args\.lr: loguniform .*; arch\.args\.dropout: choice"):
        parse("-c", config_path, "--space", path)


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ("[1, 2]", "expected an object of config keys and distributions"),
        ("{}", "expected an object of config keys and distributions"),
        ('{"arch.args.dropout": {"uniform": [0, 1]}, "arch.args.dropout": {"uniform": [0, 1]}}', "appears twice"),
    ],
)
def test_a_space_file_that_is_not_a_space(space, expected, sweep_config, write_space):
    _, config_path = sweep_config
    with pytest.raises(ConfigError, match=expected):
        parse("-c", config_path, "--space", write_space(space))


@needs_ray
def test_a_valid_space_becomes_a_sweep_in_the_save_dir(sweep_config, write_space):
    config, config_path = sweep_config
    path = write_space({"optimizer.args.lr": {"loguniform": [0.001, 0.01]}, "arch.args.channels": {"grid": [8, 16]}})
    sweep, options = parse("-c", config_path, "--space", path, "--sweep-id", "s1", "--epochs", "3", "--samples", "2")
    assert sweep.folder == (Path(config["save_dir"]) / "sweeps" / "Digits_CNN" / "s1").resolve()
    assert sweep.config["trainer"]["epochs"] == 3  # the command line's overrides are in the base config
    assert [(d.key, d.kind, d.values) for d in sweep.space] == [
        ("optimizer.args.lr", "loguniform", (0.001, 0.01)),
        ("arch.args.channels", "grid", (8, 16)),
    ]
    assert (sweep.samples, sweep.search, sweep.scheduler, sweep.cpus_per_trial, sweep.gpus_per_trial) == (
        2, "random", "fifo", 1, 0,
    )  # fmt: skip
    assert sweep.monitor == ("min", "val_loss")
    assert options == {"resume": False, "address": None}
    assert not Path(config["save_dir"]).exists()  # parsing writes nothing


@needs_ray
def test_a_trial_gets_its_values_as_overrides(sweep_config, write_space):
    from parse_config import ConfigParser

    _, config_path = sweep_config
    path = write_space(
        {"optimizer.args.lr": {"loguniform": [0.001, 0.01]}, "optimizer.args.betas": {"choice": [[0.8, 0.9]]}}
    )
    sweep, _ = parse("-c", config_path, "--space", path, "--sweep-id", "s1")
    overrides = sweep.trial_overrides({"optimizer.args.lr": 0.004, "optimizer.args.betas": [0.8, 0.9]})
    config = ConfigParser.load(config_path, None, overrides).config
    assert config["optimizer"]["args"]["lr"] == 0.004
    assert config["optimizer"]["args"]["betas"] == [0.8, 0.9]
    assert config["save_dir"] == str(sweep.folder)


def test_the_ends_of_a_range_that_are_checked(sweep_config):
    from sweep.space import parse_dimension

    assert parse_dimension("a", {"randint": [2, 5]}).corners() == [2, 4]  # high is excluded, as in range()
    assert parse_dimension("a", {"loguniform": [1e-4, 1e-1]}).corners() == [1e-4, 1e-1]
    assert parse_dimension("a", {"choice": ["x", "y", "z"]}).corners() == ["x", "y", "z"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--samples", "0"], "--samples 0: expected at least 1"),
        (["--scheduler", "asha", "--grace-period", "0"], "--grace-period 0: expected at least 1 epoch"),
        (["--reduction-factor", "1"], "--reduction-factor 1: expected more than 1"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial 0: expected above 0"),
        (["--search", "grid"], "argument --search: invalid choice: 'grid'"),
        (["--sweep-id", "a/b"], "--sweep-id 'a/b': expected a single folder name"),
    ],
)
def test_options_out_of_range_are_one_line(argv, expected, sweep_config, write_space):
    _, config_path = sweep_config
    path = write_space({"optimizer.args.lr": {"loguniform": [0.001, 0.01]}})
    with pytest.raises(ConfigError) as info:
        parse("-c", config_path, "--space", path, *argv)
    assert expected in str(info.value)


def test_a_sweep_needs_a_monitored_metric(sweep_config, write_space, write_config):
    config, _ = sweep_config
    config["trainer"]["monitor"] = "off"
    path = write_space({"optimizer.args.lr": {"loguniform": [0.001, 0.01]}})
    with pytest.raises(ConfigError, match=r"trainer\.monitor: a sweep compares trials on the monitored metric"):
        parse("-c", write_config(config), "--space", path)


def test_optuna_draws_every_value_itself(sweep_config, write_space):
    _, config_path = sweep_config
    grid = write_space({"optimizer.args.lr": {"grid": [0.001, 0.01]}})
    with pytest.raises(ConfigError, match="Optuna draws every value and runs no grid"):
        parse("-c", config_path, "--space", grid, "--search", "optuna")
    lists = write_space({"optimizer.args.betas": {"choice": [[0.9, 0.99], [0.8, 0.9]]}}, "lists.json")
    with pytest.raises(ConfigError, match="Optuna chooses among numbers, strings, booleans and null only"):
        parse("-c", config_path, "--space", lists, "--search", "optuna")


def test_without_ray_the_one_line_says_what_to_install(sweep_config, write_space, monkeypatch):
    _, config_path = sweep_config
    monkeypatch.setitem(sys.modules, "ray", None)
    path = write_space({"optimizer.args.lr": {"loguniform": [0.001, 0.01]}})
    with pytest.raises(ConfigError) as info:
        parse("-c", config_path, "--space", path)
    assert str(info.value) == "tune.py needs Ray Tune, which is not installed: pip install -r requirements-tune.txt"


def test_resume_keeps_the_sweeps_own_config_space_and_options(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse("--resume", tmp_path, "-c", "config.json", "--samples", "3", "trainer.epochs=3")
    assert str(info.value) == (
        "--resume: a sweep continues with its own config, space and options; drop -c, --samples, overrides"
    )
    with pytest.raises(ConfigError, match="not a sweep folder"):
        parse("--resume", tmp_path)


@needs_ray
def test_the_shipped_space_fits_the_shipped_config(tmp_path):
    sweep, _ = parse("-c", ROOT / "config.json", "--space", ROOT / "space.json", f"save_dir={tmp_path}")
    assert {d.key for d in sweep.space} <= {"optimizer.args.lr", "data_loader.args.batch_size", "arch.args.dropout",
                                             "arch.args.channels"}  # fmt: skip
    assert not any(tmp_path.iterdir())


# Real sweeps on a local Ray, through the command line.


def sweep_cli(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_script(str(ROOT / "tune.py"), *[str(a) for a in args], timeout=timeout)


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def metric_column(run_log: Path, column: str) -> list[float]:
    return [float(row[column]) for row in read_rows(run_log / "metrics.csv")]


def hparams_sessions(log_dir: Path) -> set[str]:
    """The run folders TensorBoard's HPARAMS tab shows as sessions."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = set()
    for run in sorted(p for p in log_dir.iterdir() if p.is_dir()):
        events = EventAccumulator(str(run))
        events.Reload()
        if "_hparams_/session_start_info" in events.PluginTagToContent("hparams"):
            found.add(run.name)
    return found


def sweep_folder(config: dict, sweep_id: str) -> Path:
    return Path(config["save_dir"]) / "sweeps" / config["name"] / sweep_id


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"trainer.epoch": {"randint": [1, 3]}}, "did you mean 'epochs'?"),
        ({"optimizer.args.lr": {"loguniform": [-0.1, 0.1]}}, "loguniform takes bounds > 0"),
        ({"data_loader.args.batch_size": {"choice": []}}, "choice takes a non-empty list of values"),
    ],
)
def test_the_command_refuses_a_bad_space_at_once_with_one_line(space, expected, sweep_config, write_space):
    config, config_path = sweep_config
    started = time.perf_counter()
    result = sweep_cli("-c", config_path, "--space", write_space(space), "--samples", 4)
    seconds = time.perf_counter() - started
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert result.stdout == ""
    assert seconds < 4, f"{seconds:.1f} s: the space is checked before torch or Ray are loaded"
    assert not Path(config["save_dir"]).exists()


@pytest.mark.e2e
def test_a_sweep_leaves_trials_best_and_a_checkpoint_that_evaluates(sweep_config, write_space, tmp_path):
    pytest.importorskip("ray")
    config, _ = sweep_config
    config["tensorboard"] = True  # each trial's run writes its HPARAMS record, as a normal run does
    config_path = tmp_path / "tb.json"
    config_path.write_text(json.dumps(config))
    # 2 samples of the random values for each of the 2 grid values: 4 trials.
    space = {"optimizer.args.lr": {"loguniform": [0.001, 0.01]}, "arch.args.dropout": {"uniform": [0, 0.5]}}
    space["arch.args.channels"] = {"grid": [8, 16]}
    result = sweep_cli("-c", config_path, "--space", write_space(space), "--samples", 2, "--sweep-id", "random")
    assert result.returncode == 0, result.stderr[-3000:]
    folder = sweep_folder(config, "random")

    rows = read_rows(folder / "trials.csv")
    assert [r["trial"] for r in rows] == ["trial_0000", "trial_0001", "trial_0002", "trial_0003"]
    assert sorted(int(r["arch.args.channels"]) for r in rows) == [8, 8, 16, 16]  # the grid, once per sample
    assert len({(r["optimizer.args.lr"], r["arch.args.dropout"]) for r in rows}) == 4
    assert all(
        0.001 <= float(r["optimizer.args.lr"]) <= 0.01 and 0 <= float(r["arch.args.dropout"]) <= 0.5 for r in rows
    )
    assert [(r["status"], r["epochs"]) for r in rows] == [("finished", "2")] * 4
    logs = folder / "log" / "Digits_CNN"
    for row in rows:  # each trial is a normal run of its values, and its best is its run's best epoch
        run_config = json.loads((Path(row["run_folder"]) / "config.json").read_text())
        assert run_config["optimizer"]["args"]["lr"] == float(row["optimizer.args.lr"])
        assert run_config["arch"]["args"]["dropout"] == float(row["arch.args.dropout"])
        assert run_config["arch"]["args"]["channels"] == int(row["arch.args.channels"])
        assert float(row["best_val_loss"]) == min(metric_column(logs / row["trial"], "val_loss"))

    best = json.loads((folder / "best.json").read_text())
    winner = min(rows, key=lambda r: float(r["best_val_loss"]))
    assert best["trial"] == winner["trial"] and best["value"] == float(winner["best_val_loss"])
    assert best["values"]["optimizer.args.lr"] == float(winner["optimizer.args.lr"])
    assert best["config"]["optimizer"]["args"]["lr"] == best["values"]["optimizer.args.lr"]
    assert best["checkpoint"] == str(Path(winner["run_folder"]) / "model_best.pth")
    assert f"python test.py --resume {best['checkpoint']}" in result.stdout
    assert f"{winner['trial']}  finished" in result.stdout  # the table of the top trials, best first

    # test.py evaluates the best trial's checkpoint: on the validation split, the trainer's number again.
    out = tmp_path / "valid.json"
    evaluated = run_script(str(ROOT / "test.py"), "--resume", best["checkpoint"], "--split", "valid", "--out", str(out))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(out.read_text())["loss"] == pytest.approx(best["value"], abs=1e-6)
    assert hparams_sessions(logs) == {r["trial"] for r in rows}


@pytest.mark.e2e
def test_optuna_searches_the_space(sweep_config, write_space):
    pytest.importorskip("ray")
    pytest.importorskip("optuna")
    config, config_path = sweep_config
    space = write_space(
        {"optimizer.args.lr": {"loguniform": [0.001, 0.01]}, "data_loader.args.batch_size": {"choice": [32, 64]}}
    )
    result = sweep_cli(
        "-c",
        config_path,
        "--space",
        space,
        "--search",
        "optuna",
        "--samples",
        3,
        "--sweep-id",
        "tpe",
        "trainer.epochs=1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "A new study created" not in result.stdout + result.stderr  # Optuna's own log line stays out
    folder = sweep_folder(config, "tpe")
    rows = read_rows(folder / "trials.csv")
    assert [r["trial"] for r in rows] == ["trial_0000", "trial_0001", "trial_0002"]
    assert all(
        0.001 <= float(r["optimizer.args.lr"]) <= 0.01 and r["data_loader.args.batch_size"] in ("32", "64")
        for r in rows
    )
    best = json.loads((folder / "best.json").read_text())
    assert best["value"] == min(float(r["best_val_loss"]) for r in rows)


@pytest.mark.e2e
def test_asha_stops_a_hopeless_trial_at_its_first_rung(sweep_config, write_space, tmp_path):
    pytest.importorskip("ray")
    config, _ = sweep_config
    config["tensorboard"] = True
    config_path = tmp_path / "tb.json"
    config_path.write_text(json.dumps(config))
    # Two good trials run first (two at a time, whatever the number of cores), then one that cannot learn:
    # at epoch 1 it is behind both, and ASHA (a rung at every power of 2 epochs) stops it there.
    space = write_space({"optimizer.args.lr": {"grid": [0.003, 0.003, 1e-9]}})
    result = sweep_cli(
        "-c", config_path, "--space", space, "--sweep-id", "asha", "--scheduler", "asha", "--grace-period", 1,
        "--reduction-factor", 2, "--cpus-per-trial", os.cpu_count() / 2, "trainer.epochs=4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    folder = sweep_folder(config, "asha")
    rows = {r["trial"]: r for r in read_rows(folder / "trials.csv")}
    assert [(r["status"], r["epochs"]) for r in rows.values()] == [
        ("finished", "4"),
        ("finished", "4"),
        ("stopped", "1"),
    ]
    assert "trial_0002 stopped: 1 epoch(s)" in result.stdout
    # The stopped trial keeps its run: the checkpoint and metrics of the epoch it was stopped after.
    from trainer.checkpoint import KEY_EPOCH, load_checkpoint

    stopped = Path(rows["trial_0002"]["run_folder"])
    assert load_checkpoint(stopped / "last.pth").state[KEY_EPOCH] == 1
    logs = folder / "log" / "Digits_CNN"
    assert metric_column(logs / "trial_0002", "epoch") == [1]
    assert float(rows["trial_0002"]["best_val_loss"]) > 2 * float(rows["trial_0000"]["best_val_loss"])
    assert json.loads((folder / "best.json").read_text())["trial"] == "trial_0000"
    assert hparams_sessions(logs) == set(rows)  # the stopped trial too, written by tune.py


@pytest.mark.e2e
def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(sweep_config, write_space):
    pytest.importorskip("ray")
    config, config_path = sweep_config
    # trial_0000 and trial_0002 train 1 epoch, trial_0001 and trial_0003 train 12: when trial_0000 has
    # finished, trial_0001 is part-way through its run.
    space = write_space({"trainer.epochs": {"grid": [1, 12]}, "optimizer.args.lr": {"loguniform": [0.001, 0.01]}})
    folder = sweep_folder(config, "stopped")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tune.py"), "-c", str(config_path), "--space", str(space), "--samples", "2",
         "--sweep-id", "stopped", "trainer.early_stop=0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    for line in process.stdout:
        if "trial_0000 finished" in line:
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: the sweep stopped with"), stderr
    assert lines[0].endswith(f"continue it with: python tune.py --resume {folder.resolve()}")

    before = {r["trial"]: r for r in read_rows(folder / "trials.csv")}
    finished_before = [t for t, r in before.items() if r["status"] == "finished"]
    assert "trial_0000" in finished_before and len(before) == 4
    assert before["trial_0001"]["status"] == "unfinished"
    models = folder / "models" / "Digits_CNN"
    done_at_stop = int(before["trial_0001"]["epochs"])
    assert 1 <= done_at_stop < 12, "trial_0001 should have been stopped part-way through its run"
    finished_files = {t: tree_snapshot(models / t) for t in finished_before}

    resumed = sweep_cli("--resume", folder)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = read_rows(folder / "trials.csv")
    assert [r["trial"] for r in after] == ["trial_0000", "trial_0001", "trial_0002", "trial_0003"]
    assert [(r["status"], r["epochs"]) for r in after] == [("finished", e) for e in ("1", "12", "1", "12")]
    for trial, files in finished_files.items():  # not rerun: its run folder is as it was
        assert tree_snapshot(models / trial) == files
        assert f"{trial} started" not in resumed.stdout
    info = (folder / "log" / "Digits_CNN" / "trial_0001" / "info.log").read_text()
    assert f"Resuming: training continues at epoch {done_at_stop + 1}, batch 1, with" in info
    assert metric_column(folder / "log" / "Digits_CNN" / "trial_0001", "epoch") == list(range(1, 13))


# --resume reads a sweep folder as data: Ray Tune's state (pickles) only as this machine signed it.


class Planted:
    """A pickle that creates `marker` when it is unpickled: what a malicious tuner.pkl would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture
def stopped_sweep(sweep_config, write_space, monkeypatch, tmp_path) -> Path:
    """A sweep folder as a stopped sweep leaves it, without running one: its plain files and a harmless Ray
    state, signed with this machine's key (the test's own, in its cache folder)."""
    from sweep.space import RAY_FOLDER, sign_ray_state, state_key

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the command inherits it
    _, config_path = sweep_config
    space = write_space({"optimizer.args.lr": {"loguniform": [0.001, 0.01]}})
    sweep, _ = parse("-c", config_path, "--space", space, "--sweep-id", "stopped")
    sweep.folder.mkdir(parents=True)
    sweep.save()
    (sweep.folder / RAY_FOLDER / "trial_0000").mkdir(parents=True)
    (sweep.folder / RAY_FOLDER / "tuner.pkl").write_bytes(pickle.dumps({"harmless": True}))
    (sweep.folder / RAY_FOLDER / "experiment_state-1.json").write_text('{"trial_data": []}')
    sign_ray_state(sweep.folder, state_key())
    assert (tmp_path / "cache" / "pytorch_template" / "sweep_state.key").stat().st_mode & 0o777 == 0o600
    return sweep.folder


def forge_signature(folder: Path, name: str) -> None:
    """List `name` in ray_signatures.json with an HMAC made by a key other than this machine's."""
    from sweep.space import SIGNATURES_NAME, ray_state_signatures

    signed = json.loads((folder / SIGNATURES_NAME).read_text())
    signed[name] = ray_state_signatures(folder, b"another machine's key")[name]
    (folder / SIGNATURES_NAME).write_text(json.dumps(signed))


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The message of a command that ended with one error line, exit code 1 and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0].removeprefix("error: ")


@needs_ray
@pytest.mark.e2e
@pytest.mark.parametrize("planted", ["replaces tuner.pkl", "is added, with a forged signature"])
def test_resume_never_unpickles_a_pickle_planted_in_the_sweep_folder(planted, stopped_sweep, tmp_path):
    marker = tmp_path / "the planted pickle ran"
    name = "ray/tuner.pkl" if planted == "replaces tuner.pkl" else "ray/searcher-state-1.pkl"
    (stopped_sweep / name).write_bytes(pickle.dumps(Planted(marker)))
    if planted != "replaces tuner.pkl":
        forge_signature(stopped_sweep, name)
    result = sweep_cli("--resume", stopped_sweep, timeout=120)
    assert not marker.exists(), "tune.py --resume unpickled the planted file"
    line = one_error_line(result)
    assert line.startswith(f"{stopped_sweep / name}: not as this machine signed it when the sweep stopped"), line


DAMAGED = [  # (file, its new content or None to remove it, the problem named)
    ("ray/experiment_state-1.json", '{"trial_da', "not as this machine signed it when the sweep stopped"),
    ("ray/experiment_state-1.json", None, "removed since this machine signed the sweep's state"),
    ("ray_signatures.json", '{"ray/tuner.pkl": ', "not valid JSON"),
    ("ray_signatures.json", None, "not found: this machine signs Ray Tune's state"),
    ("sweep.json", '{"sampels": 8}', "unknown key 'sampels'; did you mean 'samples'? (valid keys: samples, search,"),
    ("sweep.json", '[["samples", 8]]', "expected an object of the sweep's options (samples, search, scheduler,"),
    ("sweep.json", '{"samples": "8", "search": "tpe"}', 'samples: expected int, found "8"; search: expected one of'),
    ("sweep.json", '{"samples": 0, "cpus_per_trial": -1}', "samples: expected at least 1, found 0; cpus_per_trial: ex"),
]


@needs_ray
@pytest.mark.e2e
@pytest.mark.parametrize(("name", "content", "expected"), DAMAGED, ids=[f"{n}: {e[:24]}" for n, _, e in DAMAGED])
def test_resume_refuses_a_damaged_sweep_folder_with_one_line(name, content, expected, stopped_sweep):
    path = stopped_sweep / name
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    line = one_error_line(sweep_cli("--resume", stopped_sweep, timeout=120))
    assert line.startswith(f"{path}: {expected}"), line


@needs_ray
@pytest.mark.e2e
def test_an_address_where_something_else_answers_is_one_line_at_once(sweep_config, write_space):
    _, config_path = sweep_config
    space = write_space({"optimizer.args.lr": {"loguniform": [0.001, 0.01]}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    started = time.perf_counter()
    try:
        result = sweep_cli("-c", config_path, "--space", space, "--address", address, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    seconds = time.perf_counter() - started
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"error: --address {address}: something answers there, but not Ray (it does not speak gRPC); pass the "
        "head node's port (ray start --head prints it: 6379 by default, not the dashboard's 8265), or auto"
    ]
    assert seconds < 20, f"{seconds:.1f} s: Ray retries such an address for minutes"


def test_a_signing_key_that_others_can_read_or_that_is_short_is_refused(stopped_sweep, tmp_path):
    from sweep.space import state_key

    key = tmp_path / "cache" / "pytorch_template" / "sweep_state.key"
    key.chmod(0o644)  # readable by all: anyone could sign a forged sweep folder
    with pytest.raises(ConfigError, match=r"sweep_state\.key: the key that signs sweeps' Ray state must be yours and "
                       r"private \(owner uid \d+, mode 0644\); remove it"):  # fmt: skip
        state_key()
    key.chmod(0o600)
    key.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"holds 0 bytes, not 32: anyone could sign with it; remove it"):
        state_key()
    key.unlink()
    assert len(state_key()) == 32 and key.stat().st_mode & 0o777 == 0o600  # a new one is made


def test_trials_csv_quotes_what_a_spreadsheet_would_run(sweep_config, write_space, tmp_path, capsys):
    """One CSV writer for every CSV the project writes: text such as "=HYPERLINK(...)" is text in trials.csv."""
    from sweep.space import TRIALS_NAME, TrialRecord, write_outputs

    _, config_path = sweep_config
    space = write_space({"optimizer.args.lr": {"choice": [0.5, 1]}})
    sweep, _ = parse("-c", config_path, "--space", space, "--sweep-id", "formulas")
    sweep.folder.mkdir(parents=True)
    values = {"optimizer.args.lr": "=HYPERLINK(1)"}  # as a drawn text value could be
    records = [TrialRecord("trial_0000", values, "error", 0, None, tmp_path / "run", error="@SUM(A1)")]
    records.append(TrialRecord("trial_0001", {"optimizer.args.lr": -0.5}, "error", 0, None, tmp_path / "r1"))
    write_outputs(records, sweep)
    with (sweep.folder / TRIALS_NAME).open(newline="") as handle:
        first, second = list(csv.DictReader(handle))
    assert first["optimizer.args.lr"] == "'=HYPERLINK(1)" and first["error"] == "'@SUM(A1)"
    assert second["optimizer.args.lr"] == "-0.5"  # a number stays a number


def test_a_signing_key_that_is_not_a_plain_file_is_refused_without_waiting(tmp_path, monkeypatch):
    import os

    from sweep.space import state_key

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    key = tmp_path / "cache" / "pytorch_template" / "sweep_state.key"
    key.parent.mkdir(parents=True)
    os.mkfifo(key, 0o600)  # reading it would wait for ever
    with pytest.raises(ConfigError, match=r"sweep_state\.key: the key that signs sweeps' Ray state is not a plain "
                       r"file; remove it \(a new one is made\)"):  # fmt: skip
        state_key()
    key.unlink()
    (tmp_path / "private").write_bytes(b"k" * 32)
    (tmp_path / "private").chmod(0o600)
    key.symlink_to(tmp_path / "private")  # chmod would change the file it points to, not the link
    with pytest.raises(ConfigError, match=r"is not a plain file; remove it"):
        state_key()
