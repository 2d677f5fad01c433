"""One run across two machines: two torchrun launchers (two "nodes" of one process each) meet at a c10d
rendezvous, here both on this machine at 127.0.0.1, and train one run with gloo.

This is the command of the "One run on several machines" section of docs/distributed.md, with 127.0.0.1 in
place of the first machine's address; the results must equal one process's, as the single-machine DDP test
(test_engine.py) asserts.
"""

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, train
from logger.run_folder import LAST_NAME
from trainer.checkpoint import KEY_BEST_RESULT, KEY_STATE_DICT, load_checkpoint

pytestmark = pytest.mark.e2e


@pytest.fixture
def ddp_config(tiny_config: dict) -> dict:
    """As in test_engine.py: dropout off (each rank would draw its own masks), SGD (Adam turns 1e-9 gradient
    noise into lr-sized steps on near-zero gradients), 1,280 training samples, a whole number of batches."""
    config = copy.deepcopy(tiny_config)
    config["arch"]["args"]["dropout"] = 0.0
    config["optimizer"] = {"type": "SGD", "args": {"lr": 0.05, "momentum": 0.9}}
    config["data_loader"]["args"]["validation_split"] = 169  # 1797 - 348 (test) - 169 = 1280
    config["trainer"].update(epochs=1, monitor="max val_accuracy")
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_node(node_rank: int, port: int, *args: str) -> subprocess.Popen:
    """One machine's launcher: `torchrun --nnodes=2 --nproc-per-node=1 --node-rank=R --rdzv-backend=c10d
    --rdzv-endpoint=HOST:PORT train.py ...`; --local-addr keeps the processes' own connections on 127.0.0.1."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={node_rank}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=multinode",
        "--rdzv-conf=join_timeout=120", "--local-addr=127.0.0.1", str(ROOT / "train.py"), *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_nodes_under_torchrun_train_one_run_equal_to_one_process(ddp_config, tmp_path):
    single, single_run = train(ddp_config, tmp_path, "single")  # one process, batch 64
    half = copy.deepcopy(ddp_config)
    half["data_loader"]["args"]["batch_size"] = 32  # per process: 2 nodes x 32 = the same 64 per step
    path = tmp_path / "multinode.json"
    path.write_text(json.dumps(half))

    port = free_port()
    nodes = [launch_node(rank, port, "-c", str(path), "--run-id", "multinode") for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=240) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (_, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, stderr[-3000:]

    save_dir = Path(ddp_config["save_dir"])
    run = save_dir / "models" / "Digits_CNN" / "multinode"
    assert sorted(p.name for p in (save_dir / "models" / "Digits_CNN").iterdir()) == ["multinode", "single"]
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in single_run.checkpoint_dir.iterdir())
    info = (save_dir / "log" / "Digits_CNN" / "multinode" / "info.log").read_text()
    assert "DistributedDataParallel, 2 processes (gloo)" in info
    assert sum(stdout.count("epoch          : 1") for stdout, _ in outputs) == 1  # rank 0 speaks for both

    # The same tolerance as the single-machine DDP test: weights to 1e-5, metrics (sums and counts over
    # the ranks) to 1e-6.
    state = load_checkpoint(run / LAST_NAME).state
    ours, reference = (
        state[KEY_STATE_DICT],
        load_checkpoint(single_run.checkpoint_dir / LAST_NAME).state[KEY_STATE_DICT],
    )
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key], rtol=0, atol=1e-5)
    for key, value in single["best"].items():
        assert state[KEY_BEST_RESULT][key] == pytest.approx(value, abs=1e-6), key
