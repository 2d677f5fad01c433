"""TensorBoard and Weights & Biases output through one small explicit writer."""

import contextlib
import html
import inspect
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from utils.errors import ConfigError, did_you_mean, first_line

# A W&B run id as W&B takes it (none of / \ # ? % :, nor blanks), short enough for the artifact name
# model-<id>, which W&B caps at 128 characters. Checked in the config and in a checkpoint alike.
WANDB_RUN_ID = re.compile(r"[^/\\#?%:\s\x00-\x1f\x7f]{1,122}")


class Writer:
    """What a run shows in TensorBoard and in Weights & Biases: scalars, pictures, text and histograms at an epoch,
    the training loss at a global step, and the final results. Either backend may be off; with both off (a dry
    run, a rank other than 0, a config without them) it writes nothing.

    TensorBoard gets every call as it comes. W&B gets one `log` per epoch, with everything of that epoch and an
    explicit `epoch` axis, and one per logged training step, on a `global_step` axis: its own step counter then
    counts rows, and batch and epoch numbers never mix.
    """

    def __init__(self, tensorboard_dir: Path | None = None, wandb_run: Any = None) -> None:
        self.tensorboard = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imported here: runs without TensorBoard never load it

            self.tensorboard = SummaryWriter(log_dir=str(tensorboard_dir))
        self.wandb = wandb_run
        self._row: dict[str, Any] = {}  # W&B: what the epoch `_row_epoch` logged so far
        self._row_epoch: int | None = None
        if wandb_run is not None:
            wandb_run.define_metric("epoch")
            wandb_run.define_metric("global_step")
            wandb_run.define_metric("*", step_metric="epoch")
            wandb_run.define_metric("loss/train_step", step_metric="global_step")

    def add_scalar(self, tag: str, value: float, epoch: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(tag, value, epoch)
        self._add_to_row(epoch, tag, value)

    def add_step_scalar(self, tag: str, value: float, global_step: int) -> None:
        """A training-step value (the loss every log_step batches), on the global-step axis."""
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(tag, value, global_step)
        if self.wandb is not None:
            self._log_row()
            self.wandb.log({tag: value, "global_step": global_step})

    def add_image(self, tag: str, image: "torch.Tensor", epoch: int) -> None:
        """A (C, H, W) image with values in [0, 1]."""
        if self.tensorboard is not None:
            self.tensorboard.add_image(tag, image, epoch)
        if self.wandb is not None:  # W&B reads an array as uint8 pixels: floats in [0, 1] would be black
            import wandb

            pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            self._add_to_row(epoch, tag, wandb.Image(pixels))

    def add_text(self, tag: str, text: str, epoch: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_text(tag, text, epoch)
        if self.wandb is not None:
            import wandb

            self._add_to_row(epoch, tag, wandb.Html(f"<pre>{html.escape(text)}</pre>"))

    def add_histogram(self, tag: str, values: "torch.Tensor", epoch: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_histogram(tag, values, epoch)
        if self.wandb is not None:
            import wandb

            self._add_to_row(epoch, tag, wandb.Histogram(values.numpy()))

    def add_checkpoint(self, path: Path, aliases: list[str], metadata: dict[str, Any]) -> None:
        """A checkpoint file as a new version of the W&B model artifact `model-<run id>` (as Lightning's
        WandbLogger names it). W&B copies the file at once, so the trainer may overwrite it next epoch."""
        if self.wandb is not None:
            import wandb

            artifact = wandb.Artifact(f"model-{self.wandb.id}", type="model", metadata=metadata)  # Lightning's name
            artifact.add_file(str(path))
            self.wandb.log_artifact(artifact, aliases=aliases)

    @property
    def wandb_run_id(self) -> str | None:
        """The id of the W&B run written to (None without one, or when W&B is disabled)."""
        return self.wandb.id if self.wandb is not None and not self.wandb.disabled else None

    def add_hparams(self, hparams: dict, metrics: dict) -> None:
        """The flat config beside the final results: TensorBoard's HPARAMS tab, the W&B run's summary (its
        config went in at wandb.init)."""
        if self.tensorboard is not None:
            self.tensorboard.add_hparams(hparams, metrics, run_name=".")
        if self.wandb is not None:
            self.wandb.summary.update(metrics)

    def flush(self) -> None:
        self._log_row()
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self) -> None:
        self.flush()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()

    def _add_to_row(self, epoch: int, tag: str, value: Any) -> None:
        if self.wandb is None:
            return
        if epoch != self._row_epoch:
            self._log_row()
            self._row_epoch = epoch
        self._row[tag] = value

    def _log_row(self) -> None:
        if self._row:
            self.wandb.log({**self._row, "epoch": self._row_epoch})
        self._row = {}


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


def make_writer(log_dir: Path, config: dict, wandb_run_id: str | None = None) -> Writer:
    """The writer a config asks for: TensorBoard (`tensorboard`), W&B (`wandb`: wandb.init's arguments), both,
    or neither. W&B's files go to `<log_dir>/wandb`; `WANDB_MODE=offline` keeps everything on disk. With
    `wandb_run_id` (a resumed run), W&B goes on with the run of that id."""
    wandb_run = None
    if config["wandb"] is not None:
        wandb_run = init_wandb(log_dir, config["wandb"], wandb_run_id, config=flatten_config(config))
    return Writer(log_dir if config["tensorboard"] else None, wandb_run)


def init_wandb(log_dir: Path, args: dict[str, Any], run_id: str | None, **more: Any) -> Any:
    """wandb.init with the config's arguments, continuing the run `run_id` if given; a refusal is one line."""
    import wandb  # imported here: W&B is optional

    if run_id is not None:  # unless the config names a run, or how to resume, itself
        args = {"id": run_id, "resume": "allow", **args}
    try:
        return wandb.init(dir=str(log_dir), **args, **more)
    except Exception as e:  # wandb's own checks (an id, a project name, a missing API key): one line
        raise ConfigError(f"wandb: wandb.init refused its arguments: {first_line(e)}") from None


@contextlib.contextmanager
def wandb_summary(log_dir: Path, args: dict[str, Any] | None, run_id: str | None) -> Iterator[dict[str, Any]]:
    """A dict whose items go to the summary of the W&B run `run_id` when the block ends (test.py's results, to
    the run that trained the model); nothing without a wandb section (`args`) or a run. The run is joined at
    the start, so that a refusal by W&B comes before any work is done or any file written."""
    if args is None or run_id is None:
        yield {}
        return
    run = init_wandb(log_dir, args, run_id)
    summary: dict[str, Any] = {}
    try:
        yield summary
        run.summary.update(summary)
        if not run.disabled:
            logging.getLogger("test").info("Results added to the summary of W&B run %s", run_id)
    finally:
        run.finish()


def wandb_errors(args: dict[str, Any]) -> list[str]:
    """The config's `wandb` section, checked against wandb.init's own signature (every argument passes through)."""
    import wandb

    accepted = [name for name in inspect.signature(wandb.init).parameters if name not in ("dir", "config")]
    errors = []
    for key in args:
        if key in ("dir", "config"):
            errors.append(f"wandb.{key}: set by the template (the run's log folder, its config); remove it")
        elif key not in accepted:
            errors.append(f"wandb.{key}: wandb.init has no argument {key!r}{did_you_mean(key, accepted)}")
    run_id = args.get("id")
    if run_id is not None and not (isinstance(run_id, str) and WANDB_RUN_ID.fullmatch(run_id)):
        errors.append(f"wandb.id: expected 1 to 122 characters, none of / \\ # ? % : or blanks; found {run_id!r:.60}")
    return errors
