"""Weights & Biases (the wandb feature): a run's numbers, pictures and checkpoints go to a W&B run too.

`"wandb": {...}` in a config turns it on with any arguments of wandb.init (project, entity, name, group, tags, ...),
checked against its signature. W&B's files go to `<log_dir>/wandb`; `WANDB_MODE=offline` keeps everything on disk.
wandb is optional (requirements-wandb.txt) and imported only here, when a run starts.
"""

import contextlib
import importlib.util
import inspect
import logging
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from logger.visualization import WANDB_RUN_ID, Writer, flatten_config
from utils.errors import ConfigError, did_you_mean, first_line

# What a checkpoint's stored section may say: which run and project it belongs to, as plain text. Never where
# W&B talks (settings.base_url, which would get the user's API key), where it writes, or in which mode.
FROM_CHECKPOINT = ("project", "entity", "group", "job_type", "name", "notes", "tags")


class WandbWriter(Writer):
    """TensorBoard as Writer does, and W&B: one `log` per epoch, with everything of that epoch and an explicit
    `epoch` axis, and one per logged training step, on a `global_step` axis: its own step counter then counts
    rows, and batch and epoch numbers never mix."""

    section = "wandb"

    def __init__(self, tensorboard_dir: Path | None, run: Any, run_id: str | None = None) -> None:
        super().__init__(tensorboard_dir)
        self.wandb = run
        self.run_id = run_id if run.disabled else run.id  # disabled for a while (wandb.mode): the run is kept
        self._row: dict[str, Any] = {}  # what the epoch `_row_epoch` logged so far
        self._row_epoch: int | None = None
        run.define_metric("epoch")
        run.define_metric("global_step")
        run.define_metric("*", step_metric="epoch")
        run.define_metric("loss/train_step", step_metric="global_step")

    @classmethod
    def start(cls, log_dir: Path, tensorboard_dir: Path | None, config: dict, run_id: str | None) -> "WandbWriter":
        run = init_wandb(log_dir, config["wandb"], run_id, config=flatten_config(config))
        return cls(tensorboard_dir, run, run_id)

    def add_scalar(self, tag: str, value: float, epoch: int) -> None:
        super().add_scalar(tag, value, epoch)
        self._add_to_row(epoch, tag, value)

    def add_step_scalar(self, tag: str, value: float, global_step: int) -> None:
        super().add_step_scalar(tag, value, global_step)
        self._log_row()
        self.wandb.log({tag: value, "global_step": global_step})

    def add_image(self, tag: str, image: "torch.Tensor", epoch: int) -> None:
        import wandb

        super().add_image(tag, image, epoch)
        self._add_to_row(epoch, tag, wandb.Image(_pixels(image)))

    def add_images(self, tag: str, images: "torch.Tensor", captions: list[str], epoch: int) -> None:
        """One wandb.Image per image, with its caption, as a list under `tag` in the epoch's row."""
        import wandb

        super().add_images(tag, images, captions, epoch)
        captioned = [wandb.Image(_pixels(image), caption=c) for image, c in zip(images, captions, strict=True)]
        self._add_to_row(epoch, tag, captioned)

    def add_histogram(self, tag: str, values: "torch.Tensor", epoch: int) -> None:
        import wandb

        super().add_histogram(tag, values, epoch)
        self._add_to_row(epoch, tag, wandb.Histogram(values.numpy()))

    def add_checkpoint(self, path: Path, aliases: list[str], metadata: dict[str, Any]) -> None:
        """A checkpoint file as a new version of the W&B model artifact `model-<run id>` (as Lightning's
        WandbLogger names it). W&B copies the file at once, so the trainer may overwrite it next epoch."""
        import wandb

        artifact = wandb.Artifact(f"model-{self.wandb.id}", type="model", metadata=metadata)
        artifact.add_file(str(path))
        self.wandb.log_artifact(artifact, aliases=aliases)

    def add_hparams(self, hparams: dict, metrics: dict) -> None:
        super().add_hparams(hparams, metrics)
        self.wandb.summary.update(metrics)  # the config went in at wandb.init

    def flush(self) -> None:
        self._log_row()
        super().flush()

    def close(self) -> None:
        super().close()
        self.wandb.finish()

    def _add_to_row(self, epoch: int, tag: str, value: Any) -> None:
        if epoch != self._row_epoch:
            self._log_row()
            self._row_epoch = epoch
        self._row[tag] = value

    def _log_row(self) -> None:
        if self._row:
            self.wandb.log({**self._row, "epoch": self._row_epoch})
        self._row = {}

    @classmethod
    def errors(cls, args: dict[str, Any]) -> list[str]:
        """The config's section, checked against wandb.init's own signature (every argument passes through)."""
        if importlib.util.find_spec("wandb") is None:
            return ['wandb: the wandb package is not installed; run pip install wandb, or set "wandb": null']
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
            errors.append(
                f"wandb.id: expected 1 to 122 characters, none of / \\ # ? % : or blanks; found {run_id!r:.60}"
            )
        return errors + _settings_errors(args.get("settings"))

    @classmethod
    def stored_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        def plain(value: Any) -> bool:
            return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))

        return {key: value for key, value in args.items() if key in FROM_CHECKPOINT and plain(value)}

    @classmethod
    @contextlib.contextmanager
    def summary(cls, log_dir: Path, args: dict[str, Any], run_id: str) -> Iterator[dict[str, Any]]:
        """The run is joined at the start, so that a refusal by W&B comes before any work is done or any file
        written; the items go to its summary when the block ends."""
        run = init_wandb(log_dir, args, run_id)
        summary: dict[str, Any] = {}
        try:
            yield summary
            run.summary.update(summary)
            if not run.disabled:
                logging.getLogger("test").info("Results added to the summary of W&B run %s", run_id)
        finally:
            run.finish()


def _pixels(image: "torch.Tensor") -> Any:
    """A (C, H, W) image in [0, 1] as (H, W, C) uint8: W&B reads an array as uint8 pixels, so floats in [0, 1]
    would be black."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _settings_errors(settings: Any) -> list[str]:
    """`settings` in the user's own config: W&B's files stay in the run's folder (no *_dir or *_path setting), and
    its server is reached over https (or on this machine)."""
    if settings is None:
        return []
    if not isinstance(settings, dict):
        return [f"wandb.settings: expected an object of wandb.Settings' fields, found {type(settings).__name__}"]
    errors = [  # x_files_dir, root_dir, x_sync_dir_suffix, sync_file, ...: anything that names a place on disk
        f"wandb.settings.{key}: W&B's files go to the run's log folder; remove it"
        for key in settings
        if any(part in str(key).lower() for part in ("dir", "path", "file", "root"))
    ]
    url = settings.get("base_url")
    if url is not None and not _trusted_address(url):
        errors.append(
            f"wandb.settings.base_url: expected an https:// address, or http:// on this machine (your API key goes "
            f"there); found {url!r}"
        )
    return errors


def _trusted_address(url: Any) -> bool:
    """https to any host, or plain http to this machine only: the host compared whole, no user part."""
    try:
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        host = parts.hostname if parts is not None else None
    except ValueError:
        return False
    if parts is None or host is None or "@" in parts.netloc:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and host in ("localhost", "127.0.0.1", "::1"))


def init_wandb(log_dir: Path, args: dict[str, Any], run_id: str | None, **more: Any) -> Any:
    """wandb.init with the config's arguments, continuing the run `run_id` if given; a refusal is one line."""
    import wandb

    if run_id is not None:  # unless the config names a run, or how to resume, itself
        args = {"id": run_id, "resume": "allow", **args}
    try:
        return wandb.init(dir=str(log_dir), **args, **more)
    except Exception as e:  # wandb's own checks (an id, a project name, a missing API key): one line
        dropped = run_id is not None and "mode" not in args and "WANDB_MODE" not in os.environ
        hint = " (a run's stored wandb.mode is not used again: add wandb.mode=offline, or set WANDB_MODE)"
        raise ConfigError(f"wandb: wandb.init refused its arguments: {_reason(e)}{hint if dropped else ''}") from None


def _reason(error: Exception) -> str:
    """The first line of W&B's refusal; for its settings (a pydantic ValidationError, whose first line names no
    key: "1 validation error for Settings"), each field and what is wrong with it."""
    fields = error.errors() if callable(getattr(error, "errors", None)) else None
    if not isinstance(fields, list) or not all(isinstance(f, dict) for f in fields):
        return first_line(error)
    return "; ".join(
        f"settings.{'.'.join(map(str, f.get('loc', ())))}: {first_line(Exception(f.get('msg', '')))}" for f in fields
    )
