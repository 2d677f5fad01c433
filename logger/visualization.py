"""TensorBoard output through a small explicit writer; a NullWriter with the same methods when it is off."""

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

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


class WandbWriter:
    """Sends the same scalars, pictures and results to Weights & Biases (optional: `pip install wandb`).

    The run's files go to `<log_dir>/wandb`; `WANDB_MODE=offline` keeps everything on disk.
    """

    def __init__(self, log_dir: Path, config: dict, **init_args: Any) -> None:
        import wandb  # imported here: W&B is optional

        self._wandb = wandb
        self._run = wandb.init(dir=str(log_dir), config=config, **init_args)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        # Epoch scalars and per-step losses count different things, so the step travels as a value.
        self._run.log({tag: value, "step": step})

    def add_image(self, tag: str, image: "torch.Tensor", step: int) -> None:
        self._run.log({tag: self._wandb.Image(image.permute(1, 2, 0).numpy()), "step": step})

    def add_text(self, tag: str, text: str, step: int) -> None:
        self._run.log({tag: self._wandb.Html(f"<pre>{text}</pre>"), "step": step})

    def add_histogram(self, tag: str, values: "torch.Tensor", step: int) -> None:
        self._run.log({tag: self._wandb.Histogram(values.numpy()), "step": step})

    def add_hparams(self, hparams: dict, metrics: dict) -> None:
        self._run.summary.update(metrics)  # the config went in at wandb.init

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self._run.finish()


class WriterGroup:
    """Passes every call on to each of its writers (TensorBoard and W&B together)."""

    def __init__(self, writers: list[Writer]) -> None:
        self.writers = writers

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        for writer in self.writers:
            writer.add_scalar(tag, value, step)

    def add_image(self, tag: str, image: "torch.Tensor", step: int) -> None:
        for writer in self.writers:
            writer.add_image(tag, image, step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        for writer in self.writers:
            writer.add_text(tag, text, step)

    def add_histogram(self, tag: str, values: "torch.Tensor", step: int) -> None:
        for writer in self.writers:
            writer.add_histogram(tag, values, step)

    def add_hparams(self, hparams: dict, metrics: dict) -> None:
        for writer in self.writers:
            writer.add_hparams(hparams, metrics)

    def flush(self) -> None:
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def matrix_image(matrix: list[list[float]], cell: int = 16) -> "torch.Tensor":
    """A (3, H, W) picture of a matrix (a confusion matrix: rows are true classes): each row scaled to its
    largest entry, white for 0 and dark blue for the largest, `cell` pixels a cell."""
    import torch

    values = torch.tensor(matrix, dtype=torch.float64)
    shade = values / values.amax(dim=1, keepdim=True).clamp_min(1e-12)  # (R, C) in [0, 1]
    blue = torch.tensor([0.03, 0.19, 0.42], dtype=torch.float64).view(3, 1, 1)
    image = 1 - shade.unsqueeze(0) * (1 - blue)  # (3, R, C)
    return image.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2).float()


def write_epoch(writer: Writer, epoch: int, result: dict[str, Any], extras: dict[str, float]) -> None:
    """An epoch's results as `<metric>/train` and `<metric>/valid` (a matrix as a picture), and its extras
    (learning rate, time, samples per second) as `lr` and `time/...`."""
    for key, value in result.items():
        if key == "epoch":
            continue
        name, mode = (key[4:], "valid") if key.startswith("val_") else (key, "train")
        if isinstance(value, list):  # a matrix (confusion_matrix)
            writer.add_image(f"{name}/{mode}", matrix_image(value), epoch)
        else:
            writer.add_scalar(f"{name}/{mode}", value, epoch)
    for key, value in extras.items():
        writer.add_scalar(key if key == "lr" else f"time/{key}", value, epoch)


def write_hparams(writer: Writer, config: dict, outcome: dict[str, Any]) -> None:
    """The flattened config beside the final and best results, for TensorBoard's HPARAMS tab."""
    if not outcome["last"]:
        return
    numbers = {"last": outcome["last"], "best": outcome["best"] or {}}
    results = {
        f"hparam/{which}_{k}": v
        for which, values in numbers.items()
        for k, v in values.items()
        if k != "epoch" and not isinstance(v, list)
    }
    writer.add_hparams(flatten_config(config), results)


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"trainer": {"epochs": 3}} -> {"trainer.epochs": 3}; lists and nulls become text (TensorBoard's hparams
    take numbers, strings and booleans only)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def make_writer(log_dir: Path, config: dict) -> Writer:
    """The writer a config asks for: TensorBoard (`tensorboard`), W&B (`wandb`: wandb.init's arguments), both,
    or none."""
    writers: list[Writer] = []
    if config["tensorboard"]:
        writers.append(TensorboardWriter(log_dir))
    if config["wandb"] is not None:
        writers.append(WandbWriter(log_dir, flatten_config(config), **config["wandb"]))
    if not writers:
        return NullWriter()
    return writers[0] if len(writers) == 1 else WriterGroup(writers)
