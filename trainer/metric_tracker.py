"""The loss and the metrics of one epoch: per-batch functions averaged per sample, epoch-level metrics
computed once from their state.

A per-batch function's batch mean is kept as a running sum and a sample count on the device, so updating
never waits for the GPU; `result()` reads them back once. Under DistributedDataParallel every rank's sums
and counts are added, and epoch-level metrics reduce their states over the ranks, so the results equal one
process's over the same samples.
"""

import copy
from collections.abc import Callable
from typing import Any

import torch

from base.base_metric import EpochMetric
from utils.distributed import all_reduce_sum, is_distributed, is_main_process


class MetricTracker:
    def __init__(self, metrics: dict[str, Callable | EpochMetric], device: torch.device | str = "cpu") -> None:
        self._device = torch.device(device)
        self._names = ["loss", *metrics]  # the order of the results
        self._batch_fns = {k: f for k, f in metrics.items() if not isinstance(f, EpochMetric)}
        # Each tracker keeps its own copy: training and validation must not share one state.
        self._epoch_metrics = {
            k: copy.deepcopy(m).to(self._device) for k, m in metrics.items() if k not in self._batch_fns
        }
        self._sum_keys = ["loss", *self._batch_fns]
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        self._sums = {k: torch.zeros((), device=self._device) for k in self._sum_keys}
        self._counts = dict.fromkeys(self._sum_keys, 0)
        for metric in self._epoch_metrics.values():
            metric.reset()

    def update(self, loss: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: its mean loss, and its (output, target) for every metric."""
        n = len(target)
        self._add("loss", loss.detach().float(), n)
        with torch.no_grad():
            output = output.detach().float()
            for name, fn in self._batch_fns.items():
                self._add(name, fn(output, target), n)
            for metric in self._epoch_metrics.values():
                metric.update(output, target)

    def _add(self, key: str, batch_mean: torch.Tensor, n: int) -> None:
        self._sums[key] += batch_mean.detach() * n
        self._counts[key] += n

    def result(self) -> dict[str, Any]:
        """Every value of the epoch, in config order: numbers, and nested lists for matrix-valued metrics."""
        sums = torch.stack([self._sums[k] for k in self._sum_keys]).double()
        counts = torch.tensor([self._counts[k] for k in self._sum_keys], dtype=torch.float64, device=self._device)
        totals = all_reduce_sum(torch.cat([sums, counts]))  # every rank's samples, under DDP
        sums, counts = totals[: len(self._sum_keys)].tolist(), totals[len(self._sum_keys) :].tolist()  # one sync
        values: dict[str, Any] = {k: s / c for k, s, c in zip(self._sum_keys, sums, counts, strict=True) if c}
        if counts[0]:
            values.update({k: m.compute() for k, m in self._epoch_metrics.items()})
        return {k: values[k] for k in self._names if k in values}

    def state_dict(self) -> dict:
        """The partial state of an interrupted epoch, of every rank's samples: under DDP a collective (every rank
        calls it), whose state `load_state_dict` gives to rank 0 alone. One process keeps its tensors as they
        are, for a bitwise-equal resume."""
        sums, counts, gathered = dict(self._sums), dict(self._counts), {}
        if is_distributed():
            keys = self._sum_keys
            local = [*(sums[k].double() for k in keys), *(torch.tensor(float(counts[k])) for k in keys)]
            totals = all_reduce_sum(torch.stack([t.to(self._device) for t in local])).cpu()
            sums = {k: totals[i] for i, k in enumerate(keys)}
            counts = {k: int(totals[len(keys) + i].item()) for i, k in enumerate(keys)}
        for k, m in self._epoch_metrics.items():
            with m.metric.sync_context():  # every rank's states (predictions gathered, sums added); none outside DDP
                gathered[k] = m.state_dict()
        return {"sums": {k: v.cpu() for k, v in sums.items()}, "counts": counts, "epoch_metrics": gathered}

    def load_state_dict(self, state: dict) -> None:
        """Rank 0 takes the partial epoch of every rank (see `state_dict`); the other ranks start it at zero, so
        the epoch's result adds each sample once, whatever the number of processes before and after."""
        self.reset()
        if not is_main_process():
            return
        self._sums = {k: state["sums"][k].to(self._device) for k in self._sum_keys}
        self._counts = {k: int(state["counts"][k]) for k in self._sum_keys}
        for k, metric in self._epoch_metrics.items():
            metric.load_state_dict(state["epoch_metrics"][k])
