"""Shared fixtures: a shrunken copy of the real config.json, and a way to run the real commands."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from logger.run_folder import RunFolder
from utils.util import read_json

ROOT = Path(__file__).resolve().parent.parent
# The template's own rules for its code and documents (layers, line budgets, the README's tables), which a project
# inherits no obligation to keep: new_project.py leaves benchmarks/ out, so a project skips them and its user's
# own scripts, packages and README never fail its tests.
template_only = pytest.mark.skipif(
    not (ROOT / "benchmarks").is_dir(), reason="the template's own code and documents; a project's are its user's"
)


def pytest_configure(config) -> None:
    """One torch thread for the tests in this process: on a shared 2-core machine more threads than free
    cores make every test several times slower."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def private_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a run caches (decoded images, the key that signs a sweep's state) goes under this test's own folder,
    never into the user's ~/.cache; subprocesses inherit it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def shrink(config: dict, save_dir: Path, epochs: int = 2) -> dict:
    """The real config, made small: a few epochs, output under save_dir, no TensorBoard."""
    config = copy.deepcopy(config)
    config["save_dir"] = str(save_dir)
    config["tensorboard"] = False
    config["verbosity"] = 1
    config["num_threads"] = 1
    config["trainer"]["epochs"] = epochs
    config["data_loader"]["args"]["batch_size"] = 64
    return config


@pytest.fixture
def base_config() -> dict:
    return read_json(ROOT / "config.json")


@pytest.fixture
def tiny_config(base_config: dict, tmp_path: Path) -> dict:
    return shrink(base_config, tmp_path / "saved")


@pytest.fixture
def write_config(tmp_path: Path):
    def write(config: dict, name: str = "config.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(config, indent=2))
        return path

    return write


def run_script(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run one of the project's commands as a user would, in a subprocess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def tree_snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder with its content, to prove nothing changed."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train(
    config: dict | None, tmp_path: Path, run_id: str = "run", overrides=(), resume: Path | None = None, callbacks=()
) -> tuple[dict, RunFolder]:
    """Train through train.py's own path (parse_args, then main) in this process; return the results and
    the run folder. With `resume` alone the checkpoint's run continues; with `config` too, a new run
    starts from its weights."""
    import train as train_script

    argv = [*(["--resume", str(resume)] if resume is not None else [])]
    if config is not None:
        path = tmp_path / f"{run_id}.json"
        path.write_text(json.dumps(config))
        argv += ["-c", str(path), "--run-id", run_id]
    parsed, options, _ = train_script.parse_args([*argv, *overrides])
    result = train_script.main(parsed, **options, callbacks=callbacks)
    if config is None:
        return result, RunFolder.of_checkpoint(options["resume"].path)
    return result, RunFolder.for_new_run(parsed["save_dir"], parsed["name"], run_id)


def evaluate(checkpoint: Path, *args: str) -> dict:
    """Evaluate through test.py's own path (parse_args, then main) in this process."""
    import test as test_script

    return test_script.main(*test_script.parse_args(["--resume", str(checkpoint), *args]))
