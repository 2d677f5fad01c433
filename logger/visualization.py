"""TensorBoard output through a small explicit writer; a NullWriter with the same methods when it is off."""

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class Writer(Protocol):
    def add_scalar(self, tag: str, value: float, step: int) -> None: ...
    def add_image(self, tag: str, image: "torch.Tensor", step: int) -> None: ...
    def add_text(self, tag: str, text: str, step: int) -> None: ...
    def add_histogram(self, tag: str, values: "torch.Tensor", step: int) -> None: ...
    def add_hparams(self, hparams: dict, metrics: dict) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class TensorboardWriter:
    """Writes scalars to TensorBoard event files in `log_dir` (view with `tensorboard --logdir saved/log`)."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported here: runs without TensorBoard never load it

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, value, step)

    def add_image(self, tag: str, image: "torch.Tensor", step: int) -> None:
        """A (C, H, W) image with values in [0, 1]."""
        self._writer.add_image(tag, image, step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        self._writer.add_text(tag, text, step)

    def add_histogram(self, tag: str, values: "torch.Tensor", step: int) -> None:
        self._writer.add_histogram(tag, values, step)

    def add_hparams(self, hparams: dict, metrics: dict) -> None:
        self._writer.add_hparams(hparams, metrics, run_name=".")

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class NullWriter:
    """Accepts what a TensorboardWriter accepts and writes nothing."""

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        return None

    def add_image(self, tag: str, image: "torch.Tensor", step: int) -> None:
        return None

    def add_text(self, tag: str, text: str, step: int) -> None:
        return None

    def add_histogram(self, tag: str, values: "torch.Tensor", step: int) -> None:
        return None

    def add_hparams(self, hparams: dict, metrics: dict) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def make_writer(log_dir: Path, enabled: bool) -> Writer:
    return TensorboardWriter(log_dir) if enabled else NullWriter()
