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
    """Shows validation images, each captioned with its predicted and true class names (`Pred: cat, Label: dog`).

    Every `every` epochs, the first `max_images` images of the validation split go to `predictions/images`: in
    TensorBoard a grid (IMAGES tab) and its captions in the grid's order (TEXT tab), in W&B one captioned image
    each. The names are the validation loader's `classes` (the class numbers where it has none); the predictions
    are the EMA weights' where the trainer keeps them (`trainer.ema_model`), as validation's are.
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
        binary = trainer.valid_data_loader.task == "binary" and output.shape[-1] == 1  # one logit per image
        if data.ndim != 4 or output.ndim != 2 or (output.shape[1] < 2 and not binary):
            raise ValueError(
                f"it shows images with predicted classes, and this task's inputs are {tuple(data.shape)[1:]}, "
                f"outputs {tuple(output.shape)[1:]}, targets {target.dtype}; remove it from callbacks"
            )

    def on_validation_end(self, trainer: Any, epoch: int, result: dict[str, float]) -> None:
        if epoch % self.every or trainer.valid_data_loader is None or not trainer.is_main:
            return
        trainer.valid_data_loader.set_epoch(epoch)
        batches = []
        for batch in trainer.valid_data_loader:  # as many batches as the first max_images take
            batches.append(batch)
            if sum(len(target) for _, target in batches) >= self.max_images:
                break
        data, target = (torch.cat(parts)[: self.max_images] for parts in zip(*batches, strict=True))
        model = trainer.ema_model if getattr(trainer, "ema_model", None) is not None else trainer.model
        model.eval()
        with torch.no_grad():
            scores = model(data.to(trainer.device)).float().cpu()  # (N, classes), or (N, 1) logits (binary)
        predicted = scores.argmax(dim=1) if scores.shape[1] > 1 else (scores[:, 0] > 0).long()
        names = trainer.valid_data_loader.classes or [str(c) for c in range(max(scores.shape[1], 2))]
        truth = target.reshape(len(target), -1)[:, 0].long()
        captions = [
            f"Pred: {names[p]}, Label: {names[t]}" for p, t in zip(predicted.tolist(), truth.tolist(), strict=True)
        ]
        images = (data - data.amin()) / (data.amax() - data.amin() + 1e-12)  # to [0, 1] for display
        trainer.writer.add_images("predictions/images", images, captions, epoch)


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
