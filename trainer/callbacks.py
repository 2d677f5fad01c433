"""Callbacks selectable by name in config.json ("callbacks": [{"type": <class name>, "args": {...}}]).

A callback is called at four fixed points of the loop, in the order they are listed (BaseTrainer calls
every one of them, so a trainer that rewrites its epochs keeps them):

    on_train_start(trainer)                      before the first epoch of this process
    on_validation_end(trainer, epoch, result)    after validation, with the validation results (val_ keys)
    on_epoch_end(trainer, epoch, result)         after the epoch, with all its results, once its checkpoints are written
    on_train_end(trainer, result)                after the last epoch, with {"last": ..., "best": ...}

Before the run, one training and one validation batch go through the real step as a rehearsal (so that a
broken callback fails before anything is written); callbacks are called then too, with `trainer.rehearsing`
true and a writer that writes nothing, and may skip what must happen once per real epoch.

Early stopping and checkpointing are built into the trainer, not callbacks. Under DDP every rank calls
its callbacks; `trainer.is_main` is true on the one rank that writes (`trainer.writer` writes nothing on
the others).
"""

from typing import Any

import torch


class Callback:
    """Base class: override the methods you need; the others do nothing."""

    def on_train_start(self, trainer: Any) -> None:
        return None

    def on_validation_end(self, trainer: Any, epoch: int, result: dict[str, float]) -> None:
        return None

    def on_epoch_end(self, trainer: Any, epoch: int, result: dict[str, float]) -> None:
        return None

    def on_train_end(self, trainer: Any, result: dict[str, Any]) -> None:
        return None


class ImagePredictionLogger(Callback):
    """Shows validation images with their predicted and true labels in TensorBoard.

    Every `every` epochs, the first `max_images` images of the validation split go to the IMAGES tab as a
    grid (`predictions/images`), and a table of predicted and true labels, in the grid's order, to the TEXT
    tab (`predictions/labels`).
    """

    def __init__(self, every: int = 1, max_images: int = 16) -> None:
        if every < 1 or max_images < 1:
            raise ValueError("every and max_images must be at least 1")
        self.every = every
        self.max_images = max_images

    def on_train_start(self, trainer: Any) -> None:
        """Refuse, before the first epoch, a task whose batches are not images with class labels."""
        if trainer.valid_data_loader is None:
            return
        trainer.valid_data_loader.set_epoch(1)
        data, target = next(iter(trainer.valid_data_loader))
        trainer.model.eval()
        with torch.no_grad():
            output = trainer.model(data[:2].to(trainer.device))
        if data.ndim != 4 or output.ndim != 2 or output.shape[1] < 2 or target.is_floating_point():
            raise ValueError(
                f"it shows images with predicted classes, and this task's inputs are {tuple(data.shape)[1:]}, "
                f"outputs {tuple(output.shape)[1:]}, targets {target.dtype}; remove it from callbacks"
            )

    def on_validation_end(self, trainer: Any, epoch: int, result: dict[str, float]) -> None:
        if epoch % self.every or trainer.valid_data_loader is None or not trainer.is_main:
            return
        from torchvision.utils import make_grid  # imported here: only this callback needs torchvision

        trainer.valid_data_loader.set_epoch(epoch)
        data, target = next(iter(trainer.valid_data_loader))
        data, target = data[: self.max_images], target[: self.max_images]
        trainer.model.eval()
        with torch.no_grad():
            predicted = trainer.model(data.to(trainer.device)).argmax(dim=1).cpu()
        images = (data - data.amin()) / (data.amax() - data.amin() + 1e-12)  # to [0, 1] for display
        trainer.writer.add_image("predictions/images", make_grid(images, nrow=8, pad_value=1.0), epoch)
        rows = "\n".join(
            f"| {i} | {int(p)} | {int(t)} |" for i, (p, t) in enumerate(zip(predicted, target, strict=True))
        )
        trainer.writer.add_text("predictions/labels", f"| image | predicted | true |\n|---|---|---|\n{rows}", epoch)


class ParameterHistograms(Callback):
    """Writes a histogram of every parameter to TensorBoard every `every` epochs (slow on large models)."""

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise ValueError("every must be at least 1")
        self.every = every

    def on_epoch_end(self, trainer: Any, epoch: int, result: dict[str, float]) -> None:
        if epoch % self.every or not trainer.is_main:
            return
        for name, parameter in trainer.model.named_parameters():
            name = name.removeprefix("module.")
            trainer.writer.add_histogram(f"parameters/{name}", parameter.detach().cpu(), epoch)
