"""Where the model runs: the CPU, one GPU, DataParallel over several, or DistributedDataParallel under torchrun.

Everything that knows about process groups lives here; the rest of the code asks `is_distributed()`,
`is_main_process()` or `rank_and_world_size()`.
"""

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def distributed_session() -> Iterator[None]:
    """Join the process group when started by torchrun (nccl on CUDA, gloo on the CPU), and leave it together.

    A plain `python train.py` is rank 0 of a world of 1 and joins nothing.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
        # Leave together: a rank that tears down its connections while another still uses them aborts.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def launch_command(script: str) -> str:
    """The command that runs `script` as this process was run: torchrun's, with its processes per node, under DDP."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return f"python {script}"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    nodes = "" if per_node == world_size else f" --nnodes {world_size // per_node} (with your rendezvous flags)"
    return f"torchrun{nodes} --nproc_per_node {per_node} {script}"


def is_main_process() -> bool:
    """Rank 0, the one process that writes logs, TensorBoard events and checkpoints."""
    return rank_and_world_size()[0] == 0


def place_model(model: nn.Module, n_gpu: int) -> tuple[nn.Module, torch.device]:
    """Move the model where it trains; return it (wrapped for several devices) and the device of its inputs.

    Under torchrun each process takes the GPU of its LOCAL_RANK (or the CPU) and the model is wrapped in
    DistributedDataParallel; otherwise `n_gpu` > 1 wraps it in DataParallel over the GPUs that exist.
    """
    if is_distributed():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_gpu = torch.cuda.is_available() and n_gpu > 0
        device = torch.device(f"cuda:{local_rank}" if use_gpu else "cpu")
        model = nn.parallel.DistributedDataParallel(model.to(device), device_ids=[local_rank] if use_gpu else None)
        return model, device
    available = torch.cuda.device_count()
    if n_gpu > 0 and available == 0:
        logger.info("No GPU found: running on the CPU.")
    elif n_gpu > available:
        logger.warning("n_gpu is %d but only %d GPU(s) are available: using %d.", n_gpu, available, available)
    n_gpu = min(n_gpu, available)
    device = torch.device("cuda:0" if n_gpu > 0 else "cpu")
    model = model.to(device)
    if n_gpu > 1:
        model = nn.DataParallel(model, device_ids=list(range(n_gpu)))
    return model, device


def describe_placement(model: nn.Module, device: torch.device) -> str:
    """One line for info.log: the device and how the model is spread over devices or processes."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return f"{device}; DistributedDataParallel, {dist.get_world_size()} processes ({dist.get_backend()})"
    if isinstance(model, nn.DataParallel):
        return f"{device}; DataParallel on GPUs {model.device_ids}"
    return f"{device}; single process"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel, whose state_dict has no `module.` prefix."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (identity outside DDP)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree_max(value: int, device: torch.device) -> int:
    """The largest `value` over all ranks (identity outside DDP): one small collective."""
    if not is_distributed():
        return value
    flag = torch.tensor(value, dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all ranks (the tensor itself outside DDP)."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor
