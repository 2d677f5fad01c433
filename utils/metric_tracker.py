"""Per-sample averages over an epoch: a running sum and a sample count per key, nothing more."""

import torch

from utils.distributed import all_reduce_sum


class MetricTracker:
    """Sums stay on the device as tensors, so updating never waits for the GPU; `result()` reads them back
    once per call. Under DistributedDataParallel, `result()` adds up every rank's sums and counts, so the
    averages equal one process's over the same samples.
    """

    def __init__(self, *keys: str, device: torch.device | str = "cpu") -> None:
        self._keys = keys
        self._device = torch.device(device)
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        self._sums = {k: torch.zeros((), device=self._device) for k in self._keys}
        self._counts = dict.fromkeys(self._keys, 0)

    def update(self, key: str, value: torch.Tensor | float, n: int = 1) -> None:
        """Add a batch mean `value` computed over `n` samples."""
        value = value.detach() if isinstance(value, torch.Tensor) else value
        self._sums[key] += value * n
        self._counts[key] += n

    def result(self) -> dict[str, float]:
        sums = torch.stack([self._sums[k] for k in self._keys]).double()
        counts = torch.tensor([self._counts[k] for k in self._keys], dtype=torch.float64, device=self._device)
        totals = all_reduce_sum(torch.cat([sums, counts]))  # every rank's samples, under DDP
        sums, counts = totals[: len(self._keys)], totals[len(self._keys) :]
        sums, counts = sums.tolist(), counts.tolist()  # the one host sync
        return {k: s / c for k, s, c in zip(self._keys, sums, counts, strict=True) if c}

    def state_dict(self) -> dict:
        """The partial sums of an interrupted epoch (tensors kept as they are, for a bitwise-equal resume)."""
        return {"sums": {k: v.cpu() for k, v in self._sums.items()}, "counts": dict(self._counts)}

    def load_state_dict(self, state: dict) -> None:
        self._sums = {k: state["sums"][k].to(self._device) for k in self._keys}
        self._counts = {k: int(state["counts"][k]) for k in self._keys}
