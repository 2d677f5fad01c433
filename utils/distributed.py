"""DistributedDataParallel under torchrun: detected from the environment torchrun sets."""

import os
from typing import Any

import torch
import torch.distributed as dist


def init_distributed() -> tuple[int, int, int]:
    """Join the process group when started by torchrun; return (rank, local_rank, world_size).

    nccl on CUDA, gloo on the CPU. A plain `python train.py` is rank 0 of a world of 1 and joins nothing.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world_size


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Rank 0, the one process that writes logs, TensorBoard events and checkpoints."""
    return not is_distributed() or dist.get_rank() == 0


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
