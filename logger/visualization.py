"""TensorBoard output through one small explicit writer, and the trackers a project's features add to it."""

import contextlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from utils.util import package_modules

# A W&B run id as W&B takes it (none of / \ # ? % :, nor blanks), short enough for the artifact name
# model-<id>, which W&B caps at 128 characters. Checked in the config and in a checkpoint alike.
WANDB_RUN_ID = re.compile(r"[^/\\#?%:\s\x00-\x1f\x7f]{1,122}")


class Writer:
    """What a run shows in TensorBoard: scalars, pictures (captioned ones too) and histograms at an epoch, the
    training loss at a global step, and the final results. With TensorBoard off (a dry run, a rank other than 0, a
    config without it) it writes nothing.

    An experiment tracker is a subclass in a file of logger/ that names its config `section` (the wandb feature's
    WandbWriter, for "wandb"): `make_writer` finds it there, as a model is found in model/.
    """

    section: str | None = None  # a tracker's top-level config key: its arguments
    run_id: str | None = None  # the tracker's run, kept in the checkpoint: a resume and test.py add to it

    def __init__(self, tensorboard_dir: Path | None = None) -> None:
        self.tensorboard = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # imported here: runs without TensorBoard never load it

            self.tensorboard = SummaryWriter(log_dir=str(tensorboard_dir))

    def add_scalar(self, tag: str, value: float, epoch: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(tag, value, epoch)

    def add_step_scalar(self, tag: str, value: float, global_step: int) -> None:
        """A training-step value (the loss every log_step batches), on the global-step axis."""
        if self.tensorboard is not None:
            self.tensorboard.add_scalar(tag, value, global_step)

    def add_image(self, tag: str, image: "torch.Tensor", epoch: int) -> None:
        """A (C, H, W) image with values in [0, 1]."""
        if self.tensorboard is not None:
            self.tensorboard.add_image(tag, image, epoch)

    def add_images(self, tag: str, images: "torch.Tensor", captions: list[str], epoch: int) -> None:
        """(N, C, H, W) images with values in [0, 1], one caption each: a grid in the IMAGES tab, and the captions
        as a table in the grid's order (row by row) in the TEXT tab, both under `tag`."""
        if self.tensorboard is None:
            return
        from torchvision.utils import make_grid  # imported here: only captioned images need torchvision

        self.tensorboard.add_image(tag, make_grid(images, nrow=8, pad_value=1.0), epoch)
        cells = [caption.replace("|", r"\|") for caption in captions]  # a | in a class name would split its cell
        rows = "".join(f"\n| {i} | {cell} |" for i, cell in enumerate(cells))
        self.tensorboard.add_text(tag, f"| image | caption |\n|---|---|{rows}", epoch)

    def add_histogram(self, tag: str, values: "torch.Tensor", epoch: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_histogram(tag, values, epoch)

    def add_checkpoint(self, path: Path, aliases: list[str], metadata: dict[str, Any]) -> None:
        """A checkpoint file for a tracker that keeps them (trainer.log_model); TensorBoard does not."""

    def add_hparams(self, hparams: dict, metrics: dict) -> None:
        """The flat config beside the final results: TensorBoard's HPARAMS tab."""
        if self.tensorboard is not None:
            self.tensorboard.add_hparams(hparams, metrics, run_name=".")

    def flush(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.flush()

    def close(self) -> None:
        self.flush()
        if self.tensorboard is not None:
            self.tensorboard.close()

    # What a tracker adds: its config section checked, read from a checkpoint, and results added to a run.
    @classmethod
    def errors(cls, args: dict[str, Any]) -> list[str]:
        """What is wrong with the tracker's config section, one message per problem."""
        return []

    @classmethod
    def stored_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        """The part of a checkpoint's stored section that may be used: a checkpoint is data, and nothing in it may
        choose a host, a folder or a mode."""
        return {}

    @classmethod
    def start(cls, log_dir: Path, tensorboard_dir: Path | None, config: dict, run_id: str | None) -> "Writer":
        writer = cls(tensorboard_dir)
        writer.run_id = run_id  # a tracker left out for a while: its run is kept, for a later resume with it on
        return writer

    @classmethod
    @contextlib.contextmanager
    def summary(cls, log_dir: Path, args: dict[str, Any], run_id: str) -> Iterator[dict[str, Any]]:
        """A dict whose items go to the run `run_id`'s summary when the block ends (test.py's results)."""
        yield {}


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


def make_writer(log_dir: Path, config: dict, run_id: str | None = None) -> Writer:
    """The writer a config asks for: TensorBoard (`tensorboard`), a tracker (a section such as `wandb`), both, or
    neither. With `run_id` (a resumed run), the tracker goes on with that run."""
    tensorboard_dir = log_dir if config["tensorboard"] else None
    return tracker(config).start(log_dir, tensorboard_dir, config, run_id)


# The config sections a tracker reads, and the feature that brings each one's writer.
TRACKER_SECTIONS = {"wandb": "wandb"}


def trackers() -> dict[str, type[Writer]]:
    """The trackers of this project, by config section: Writer subclasses defined in the files of logger/."""
    found = {}
    for module in package_modules("logger"):
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, Writer) and obj.section and obj.__module__ == module.__name__:
                found[obj.section] = obj
    return found


def tracker(config: dict) -> type[Writer]:
    """The writer class of the tracker the config turns on, else Writer (TensorBoard only)."""
    chosen = [section for section in TRACKER_SECTIONS if config.get(section) is not None]
    return trackers()[chosen[0]] if chosen else Writer


def tracker_errors(config: dict) -> list[str]:
    """Each tracker section's problems, by its writer; a section whose feature this project lacks is one."""
    errors, found = [], trackers()
    for section, feature in TRACKER_SECTIONS.items():
        if config.get(section) is None:
            continue
        if section not in found:
            errors.append(
                f"{section}: this project has no {section} writer (python new_project.py --with {feature} makes a "
                f'project with it); set "{section}": null'
            )
        else:
            errors.extend(found[section].errors(config[section]))
    return errors


def stored_trackers(config: dict) -> None:
    """A checkpoint's stored config, made safe to run (in place): of each tracker section, only what its writer
    lets a checkpoint say (`Writer.stored_args`); a section this project has no writer for is turned off."""
    found = trackers()
    for section in TRACKER_SECTIONS:
        if isinstance(config.get(section), dict) and section in found:
            config[section] = found[section].stored_args(config[section])
        elif section in config:
            config[section] = None


@contextlib.contextmanager
def tracker_summary(log_dir: Path, config: dict, run_id: str | None) -> Iterator[dict[str, Any]]:
    """A dict whose items go to the summary of the tracker's run `run_id` when the block ends (test.py's results,
    to the run that trained the model); nothing without a tracker section or a run."""
    writer = tracker(config)
    if writer is Writer or run_id is None:
        yield {}
        return
    with writer.summary(log_dir, config[writer.section], run_id) as summary:
        yield summary
