"""Data sets kept in memory and read a whole batch at a time, indexed with `(indices, seed)`: tensors as they are,
or uint8 images normalized (and augmented) per batch."""

import copy
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")  # what Pillow reads
# A batch transform: (images (B, C, H, W) float, generator) -> images; runs on whole batches of tensors.
BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class InMemoryTensors(Dataset):
    """Inputs and targets kept in tensors, read a whole batch at a time: indexed with `(indices, seed)` it
    returns `(inputs[indices], targets[indices])` (the seed is for augmentation, which this class has none of)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"expected as many targets as inputs, got {len(targets)} and {len(inputs)}")
        self.inputs = inputs
        self.targets = targets

    def without_augmentation(self) -> "InMemoryTensors":
        return self

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, request: tuple[list[int], int]) -> tuple[torch.Tensor, torch.Tensor]:
        indices, _ = request
        return self.inputs[indices], self.targets[indices]


class InMemoryImages(Dataset):
    """Images kept decoded in one tensor; normalization and augmentation run once per batch, not per image.

    Indexed with `(indices, seed)` it returns a whole batch `(images (B, C, H, W) float32, targets (B,))`.
    Storing uint8 pixels keeps MNIST's 60,000 training images at 47 MB.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        scale: float,
        mean: float | Sequence[float],
        std: float | Sequence[float],
        augment: BatchTransform | None = None,
    ) -> None:
        if images.ndim != 4 or len(images) != len(targets):
            raise ValueError(
                f"expected images (N, C, H, W) and N targets, got {tuple(images.shape)} and {len(targets)}"
            )
        self.images = images
        self.targets = targets  # class indices (N,) int64, or (N, 1) float for one logit or a value
        # (x * scale - mean) / std folded into one multiply-add per pixel; a mean and std per channel
        # broadcast as (C, 1, 1).
        mean_, std_ = (torch.as_tensor(v, dtype=torch.float32).reshape(-1, 1, 1) for v in (mean, std))
        self.multiplier = scale / std_
        self.offset = -mean_ / std_
        self.augment = augment

    def without_augmentation(self) -> "InMemoryImages":
        view = copy.copy(self)  # shares the image tensor
        view.augment = None
        return view

    def __len__(self) -> int:
        return len(self.images)

    def pixels(self, indices: list[int]) -> torch.Tensor:
        """The batch's images as stored: uint8 (B, C, H, W)."""
        return self.images[indices]

    def __getitem__(self, request: tuple[list[int], int]) -> tuple[torch.Tensor, torch.Tensor]:
        indices, seed = request
        images = self.pixels(indices).float().mul_(self.multiplier).add_(self.offset)
        if self.augment is not None:
            images = self.augment(images, torch.Generator().manual_seed(seed))
        return images, self.targets[indices]
