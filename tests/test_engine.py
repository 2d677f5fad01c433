"""The training engine: DDP equivalence, signals and exact resume, atomic saves, clipping, schedulers, AMP."""

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_script, train
from logger.run_folder import LAST_NAME
from trainer.checkpoint import KEY_BATCH, KEY_EMA, KEY_EPOCH, KEY_STATE_DICT, KEY_STEP, load_checkpoint

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")


pytestmark = pytest.mark.e2e  # subprocesses and whole runs: pytest -m e2e


def write(config: dict, path: Path) -> Path:
    path.write_text(json.dumps(config))
    return path


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state[KEY_STATE_DICT]


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_script(
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(ROOT / "train.py"),
        *args,
        timeout=timeout,
    )


@pytest.fixture
def ddp_config(tiny_config: dict) -> dict:
    """Dropout off (each rank would draw its own masks) and SGD (Adam turns 1e-9 gradient noise into
    lr-sized steps on near-zero gradients); 1,280 training samples, a whole number of batches."""
    config = copy.deepcopy(tiny_config)
    config["arch"]["args"]["dropout"] = 0.0
    config["optimizer"] = {"type": "SGD", "args": {"lr": 0.05, "momentum": 0.9}}
    config["data_loader"]["args"]["validation_split"] = 169  # 1797 - 348 (test) - 169 = 1280
    config["trainer"].update(epochs=1, monitor="max val_accuracy")
    return config


@pytest.mark.parametrize("ema_decay", [None, 0.9])  # the EMA of the weights too, validated on every rank alike
def test_ddp_on_two_processes_equals_one_process_with_the_whole_batch(ema_decay, ddp_config, tmp_path):
    ddp_config["trainer"]["ema_decay"] = ema_decay
    single, single_run = train(ddp_config, tmp_path, "single")
    half = copy.deepcopy(ddp_config)
    half["data_loader"]["args"]["batch_size"] = 32
    result = torchrun("-c", str(write(half, tmp_path / "ddp.json")), "--run-id", "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    save_dir = Path(ddp_config["save_dir"])
    ddp_dir = save_dir / "models" / "Digits_CNN" / "ddp"
    a, b = weights(single_run.checkpoint_dir / LAST_NAME), weights(ddp_dir / LAST_NAME)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)
    a, b = (load_checkpoint(d / LAST_NAME).state[KEY_EMA] for d in (single_run.checkpoint_dir, ddp_dir))
    assert (a is None) == (ema_decay is None)
    for key in a or {}:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)
    # Metrics reduced over ranks as sums and counts: the same numbers as one process.
    best = load_checkpoint(ddp_dir / LAST_NAME).state["best_result"]
    for key, value in single["best"].items():
        assert best[key] == pytest.approx(value, abs=1e-6), key
    assert best["epoch"] == 1 and single["best"]["epoch"] == 1
    # One run folder, one log, one set of checkpoints: only rank 0 writes.
    assert sorted(p.name for p in (save_dir / "models" / "Digits_CNN").iterdir()) == ["ddp", "single"]
    assert sorted(p.name for p in ddp_dir.iterdir()) == sorted(p.name for p in single_run.checkpoint_dir.iterdir())
    assert sorted(p.name for p in (save_dir / "log" / "Digits_CNN" / "ddp").iterdir()) == ["info.log", "metrics.csv"]
    assert result.stdout.count("epoch          : 1") == 1


def test_ddp_early_stopping_and_resume_keep_all_ranks_together(ddp_config, tmp_path):
    ddp_config["data_loader"]["args"]["batch_size"] = 32
    ddp_config["trainer"].update(epochs=10, min_delta=1.0, early_stop=2)
    result = torchrun("-c", str(write(ddp_config, tmp_path / "ddp.json")), "--run-id", "stop", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    run = Path(ddp_config["save_dir"]) / "models" / "Digits_CNN" / "stop"
    assert load_checkpoint(run / LAST_NAME).state[KEY_EPOCH] == 3
    result = torchrun("--resume", str(run), "trainer.epochs=4", "trainer.early_stop=0", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming: training continues at epoch 4, batch 1, with" in result.stdout
    assert load_checkpoint(run / LAST_NAME).state[KEY_EPOCH] == 4


def _start_training(config_path: Path | None, *args: str) -> subprocess.Popen:
    config = ["-c", str(config_path)] if config_path is not None else []
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *config, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_exact_state_and_resuming_matches_an_uninterrupted_run(signum, tiny_config, tmp_path):
    tiny_config["data_loader"]["args"].update(batch_size=8, augment=True)  # 163 batches an epoch (1297 samples)
    tiny_config["trainer"].update(epochs=2, log_step=1000)
    tiny_config["metrics"].append({"type": "auroc", "args": {"num_classes": 10}})  # an epoch-level state too
    path = write(tiny_config, tmp_path / "config.json")
    straight = run_script(str(ROOT / "train.py"), "-c", str(path), "--run-id", "straight")
    assert straight.returncode == 0, straight.stderr

    process = _start_training(path, "--run-id", "stopped")
    for line in process.stdout:  # wait until epoch 1 is over: the signal then lands inside epoch 2
        if line.startswith("    epoch          : 1"):
            break
    time.sleep(0.3)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"interrupted: {signal.Signals(signum).name} received; stopped at")
    run = Path(tiny_config["save_dir"]) / "models" / "Digits_CNN" / "stopped"
    assert f"resume with: python train.py --resume {run / LAST_NAME}" in lines[0]
    info = Path(tiny_config["save_dir"]) / "log" / "Digits_CNN" / "stopped" / "info.log"
    assert info.read_text().splitlines()[-1].endswith(f"ERROR - {lines[0]}")  # info.log says why it ends there
    state = load_checkpoint(run / LAST_NAME).state
    assert state[KEY_EPOCH] == 2 and 0 < state[KEY_BATCH] < 163, "the signal should land inside epoch 2"
    assert state[KEY_STEP] == 163 + state[KEY_BATCH]
    # Evaluated as it stands, the mid-epoch checkpoint's results are named as such: not as epoch 2's
    assert run_script(str(ROOT / "test.py"), "--resume", str(run / LAST_NAME), "--split", "valid").returncode == 0
    assert (run / f"last.epoch2.batch{state[KEY_BATCH]}.valid.json").is_file()

    resumed = run_script(str(ROOT / "train.py"), "--resume", str(run / LAST_NAME))
    assert resumed.returncode == 0, resumed.stderr
    assert f"training continues at epoch 2, batch {state[KEY_BATCH] + 1}, with" in resumed.stdout
    # The rehearsal sends the next batch through the step (it used to train none and compute AUROC on no update).
    assert "Warning" not in resumed.stdout, resumed.stdout
    straight_run = Path(tiny_config["save_dir"]) / "models" / "Digits_CNN" / "straight"
    a, b = weights(straight_run / LAST_NAME), weights(run / LAST_NAME)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The epoch-2 numbers, half of them summed before the signal, equal the uninterrupted run's exactly.
    best = load_checkpoint(run / LAST_NAME).state["best_result"]
    assert best == load_checkpoint(straight_run / LAST_NAME).state["best_result"]


def test_a_run_in_use_is_refused_to_a_second_command(tiny_config, tmp_path):
    tiny_config["trainer"]["epochs"] = 1
    path = write(tiny_config, tmp_path / "config.json")
    assert run_script(str(ROOT / "train.py"), "-c", str(path), "--run-id", "busy").returncode == 0
    run = Path(tiny_config["save_dir"]) / "models" / "Digits_CNN" / "busy"
    first = _start_training(None, "--resume", str(run), "trainer.epochs=400")
    for line in first.stdout:  # the first command holds the run once it trains
        if line.startswith("    epoch          : 2"):
            break
    second = run_script(str(ROOT / "train.py"), "--resume", str(run), "trainer.epochs=400")
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=120)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 1 and len(lines) == 1, second.stderr
    assert "the run is in use by train.py, pid" in lines[0] and "wait for it to finish" in lines[0]
    assert not (Path(tiny_config["save_dir"]) / "log" / "Digits_CNN" / "busy" / ".lock").exists()  # released


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_bitwise_exact_with_workers_and_augmentation(num_workers, tiny_config, tmp_path):
    tiny_config["data_loader"]["args"].update(num_workers=num_workers, augment=True)
    tiny_config["trainer"]["epochs"] = 4
    straight, straight_run = train(tiny_config, tmp_path, "straight")
    tiny_config["trainer"]["epochs"] = 2
    _, first = train(tiny_config, tmp_path, "halves")
    resumed, _ = train(None, tmp_path, overrides=["trainer.epochs=4"], resume=first.checkpoint_dir)
    assert resumed["last"] == straight["last"]
    a, b = weights(straight_run.checkpoint_dir / LAST_NAME), weights(first.checkpoint_dir / LAST_NAME)
    assert all(torch.equal(a[k], b[k]) for k in a)


SAVER = """
import sys, torch
from pathlib import Path
from trainer.checkpoint import save_checkpoint
path = Path(sys.argv[1])
state = {"format_version": 1, "weights": torch.randn(4_000_000)}
print("ready", flush=True)
while True:
    state["weights"].add_(1)
    save_checkpoint(state, path)
"""


def test_a_kill_during_save_never_leaves_a_truncated_checkpoint(tmp_path):
    target = tmp_path / "model_best.pth"
    for delay in (0.05, 0.13, 0.21, 0.34, 0.55, 0.8):
        process = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(target)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert process.stdout.readline().strip() == "ready"
        time.sleep(delay)
        process.kill()  # SIGKILL: no handler, no cleanup
        process.wait()
        if target.exists():
            state = torch.load(target, map_location="cpu", weights_only=True)
            assert state["weights"].shape == (4_000_000,)
    assert target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name != target.name and not p.name.startswith(".")]


def test_gradient_clipping_bounds_every_step(tiny_config, tmp_path):
    tiny_config["optimizer"] = {"type": "SGD", "args": {"lr": 1.0}}
    tiny_config["lr_scheduler"] = None
    tiny_config["trainer"].update(epochs=1, clip_grad_norm=1e-3)
    start = copy.deepcopy(tiny_config)
    start["optimizer"]["args"]["lr"] = 0.0
    _, before = train(start, tmp_path, "before")
    _, after = train(tiny_config, tmp_path, "clipped")
    a, b = weights(before.checkpoint_dir / LAST_NAME), weights(after.checkpoint_dir / LAST_NAME)
    moved = torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)).item()
    steps = 21
    assert 0 < moved <= steps * 1.0 * 1e-3 * (1 + 1e-4)  # each step moves the weights by at most lr * clip
    tiny_config["trainer"]["clip_grad_norm"] = None
    _, free = train(tiny_config, tmp_path, "unclipped")
    c = weights(free.checkpoint_dir / LAST_NAME)
    assert torch.sqrt(sum(((a[k] - c[k]) ** 2).sum() for k in a)).item() > 10 * moved


def test_a_per_step_scheduler_steps_once_per_optimizer_step(tiny_config, tmp_path):
    steps_per_epoch = 11  # 21 batches, 2 per optimizer step
    tiny_config["lr_scheduler"] = {"type": "OneCycleLR", "args": {"max_lr": 0.01, "total_steps": 2 * steps_per_epoch}}
    tiny_config["trainer"].update(epochs=2, scheduler_interval="step", accumulate_steps=2)
    _, run = train(tiny_config, tmp_path, "onecycle")
    state = load_checkpoint(run.checkpoint_dir / LAST_NAME).state
    assert state["lr_scheduler"]["last_epoch"] == 2 * steps_per_epoch
    assert state["optimizer"]["param_groups"][0]["lr"] < 0.01 / 50  # annealed to the end of the cycle


def test_deterministic_mode_is_switched_on(tiny_config, tmp_path):
    tiny_config["deterministic"] = True
    tiny_config["trainer"]["epochs"] = 1
    try:
        _, run = train(tiny_config, tmp_path, "deterministic")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert "Seed 0; deterministic True; 1 CPU thread(s)" in (run.log_dir / "info.log").read_text()


def test_automatic_decisions_are_logged(tiny_config, tmp_path):
    tiny_config["trainer"].update(epochs=1, amp=True, accumulate_steps=2)
    _, run = train(tiny_config, tmp_path, "decisions")
    log = (run.log_dir / "info.log").read_text()
    assert "Device: cpu; single process" in log
    assert "Training on 1297 samples, validating on 152" in log
    assert "Mixed precision: bfloat16 autocast; 128 samples per optimizer step (batch 64 x 1 process(es) x 2" in log


@needs_cuda
def test_fp16_with_grad_scaler_trains_on_cuda(tiny_config, tmp_path):
    tiny_config["trainer"].update(epochs=3, amp="fp16")
    result, run = train(tiny_config, tmp_path, "fp16")
    assert result["last"]["val_accuracy"] > 0.85
    assert load_checkpoint(run.checkpoint_dir / LAST_NAME).state["scaler"]["scale"] > 0
    assert "float16 autocast with loss scaling" in (run.log_dir / "info.log").read_text()


@needs_two_gpus
def test_data_parallel_checkpoint_loads_on_the_cpu(tiny_config, tmp_path):
    tiny_config["n_gpu"] = 2
    _, run = train(tiny_config, tmp_path, "dp")
    state = load_checkpoint(run.checkpoint_dir / LAST_NAME).state
    assert not any(k.startswith("module.") for k in state[KEY_STATE_DICT])
    assert "DataParallel on GPUs [0, 1]" in (run.log_dir / "info.log").read_text()
