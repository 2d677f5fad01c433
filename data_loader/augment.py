"""Augmentations of whole batches: (images (B, C, H, W) float, generator) -> images, seeded per batch."""

import math

import torch
import torch.nn.functional as F


def random_affine(images: torch.Tensor, generator: torch.Generator, degrees: float, translate: float) -> torch.Tensor:
    """Rotate each image by up to `degrees` and shift it by up to `translate` of its size, a batch at a time."""
    n = len(images)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * translate * 2  # affine_grid spans [-1, 1]
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, H, W, 2)
    # Pixels moved in from outside take the background value (the normalized zero pixel).
    background = images.amin(dim=(1, 2, 3), keepdim=True)
    return F.grid_sample(images - background, grid, align_corners=False, padding_mode="zeros") + background


def small_affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The training augmentation of the digit data sets: up to 10 degrees and 10% shift."""
    return random_affine(images, generator, degrees=10.0, translate=0.1)


def flip_and_affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Half of the images mirrored left to right, then up to 10 degrees of rotation and 10% of shift."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return small_affine(images, generator)
