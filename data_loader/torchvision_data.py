"""Any image data set of torchvision.datasets, by name, from files already on disk (never downloaded)."""

import inspect
from collections.abc import Sequence

import numpy as np
import torch

from base.base_data_loader import BaseDataLoader, InMemoryImages, split_with_own_test_set
from data_loader.augment import flip_and_affine
from data_loader.image_folder import check_image_args
from utils.errors import DataError, did_you_mean, first_line

# Data sets whose files are Python pickles, which torchvision unpickles: a planted file would run its code.
PICKLED = ("CIFAR10", "CIFAR100")


def load_torchvision(
    name: str, root: str, train: bool, allow_pickle: bool, dataset_args: dict | None = None, checksums: bool = True
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images (N, C, H, W) uint8, targets (N,) int64, class names) of torchvision's data set `name` in `root`:
    its training set, or its test set (`train` false); `dataset_args`: the class's own further arguments (EMNIST's
    `split`)."""
    from torchvision import datasets

    names = [n for n in dir(datasets) if inspect.isclass(getattr(datasets, n)) and n[0].isupper()]
    if name not in names:
        raise DataError(f"data_loader.args.dataset: torchvision has no data set {name!r}{did_you_mean(name, names)}")
    if name in PICKLED and not allow_pickle:
        raise DataError(
            f"data_loader.args.dataset: {name}'s files are Python pickles, which run code when read: set "
            "allow_pickle to true for files you downloaded yourself from the data set's own site"
        )
    cls = getattr(datasets, name)
    if not checksums and hasattr(cls, "_check_integrity"):  # files in the set's format that are not its own
        unchecked = {"_check_integrity": lambda self: True}  # and CIFAR's metadata file, checked by its md5
        cls = type(name, (cls,), {**unchecked, **({"meta": {**cls.meta, "md5": None}} if hasattr(cls, "meta") else {})})
    signature = inspect.signature(cls).parameters
    parameters = {n: p for n, p in signature.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    passes_on = len(parameters) < len(signature)  # EMNIST(root, split, **kwargs): `train` goes on to MNIST
    which = {"train": train} if "train" in parameters or passes_on else {"split": "train" if train else "test"}
    given = {**(dataset_args or {}), **which, **({"download": False} if "download" in parameters or passes_on else {})}
    own = [n for n in parameters if n not in ("root", "download", "transform", "target_transform", "loader", *which)]
    wrong = [k for k in dataset_args or {} if k not in own or k in which]
    needed = [n for n, p in parameters.items() if p.default is p.empty and n != "root" and n not in given]
    if wrong or needed:
        problem = f"{name} takes no argument {wrong[0]!r}" if wrong else f"{name} needs {needed[0]!r}"
        raise DataError(f"data_loader.args.dataset_args: {problem} (its own: {', '.join(own) or 'none'})")
    try:
        dataset = cls(root, **given)
    except (RuntimeError, OSError, ValueError) as e:
        raise DataError(
            f"data_loader.args.root: {name} not found in {root}, or its files are not the official ones, whose "
            f"checksums torchvision checks ({first_line(e)}); put its files there, or set checksums false for your own"
        ) from None
    images, targets = as_tensors(dataset)
    classes = [str(c) for c in getattr(dataset, "classes", None) or range(int(targets.max()) + 1)]
    return images, targets, classes


def as_tensors(dataset: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision data set's images as one uint8 (N, C, H, W) tensor and its class indices: read from its
    arrays where it keeps them (MNIST's, CIFAR's, SVHN's `data`), else image by image."""
    data = getattr(dataset, "data", None)
    targets = getattr(dataset, "targets", getattr(dataset, "labels", None))
    if isinstance(data, (np.ndarray, torch.Tensor)) and targets is not None and data.dtype in (np.uint8, torch.uint8):
        images = torch.as_tensor(np.asarray(data))
        if images.ndim == 3:  # (N, H, W): grey
            images = images.unsqueeze(1)
        elif images.shape[-1] in (1, 3):  # (N, H, W, C), CIFAR's layout; SVHN's is (N, C, H, W) already
            images = images.permute(0, 3, 1, 2)
        return images.contiguous(), torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    pairs = [(np.asarray(image), int(target)) for image, target in dataset]
    shapes = {p[0].shape for p in pairs}
    if len(shapes) != 1:
        raise DataError(f"{type(dataset).__name__}: images of {len(shapes)} sizes; use ImageFolderDataLoader")
    images = torch.as_tensor(np.stack([p[0] for p in pairs]))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.tensor([p[1] for p in pairs])


class TorchvisionDataLoader(BaseDataLoader):
    """A data set of torchvision.datasets by name (FashionMNIST, KMNIST, CIFAR10, SVHN, ...), read from `root`
    as torchvision lays it out, never downloaded: its test set for "test", its training set split into
    "train" and "valid" (by each image's index). Decoded once into memory, normalized with `mean` and `std`
    per channel, and augmented (`augment`: a random flip, rotation and shift) a batch at a time, as the other
    loaders. `allow_pickle`: CIFAR10's and CIFAR100's files are pickles; read them only when set. `dataset_args`:
    the data set's own further arguments, e.g. {"split": "letters"} for EMNIST. `checksums` false: read files in
    the data set's format that are not the official ones (torchvision otherwise refuses them by their checksums).
    """

    def __init__(
        self,
        dataset: str,
        root: str = "data/",
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.25,),
        augment: bool = False,
        allow_pickle: bool = False,
        dataset_args: dict | None = None,
        checksums: bool = True,
        batch_size: int = 128,
        shuffle: bool = True,
        validation_split: float | int = 0.1,
        split_seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        split: str = "train",
        seed: int = 0,
    ) -> None:
        images, targets, self.classes = load_torchvision(
            dataset, root, split != "test", allow_pickle, dataset_args, checksums
        )
        check_image_args(images.shape[1], mean, std)
        transform = flip_and_affine if augment else None
        data = InMemoryImages(images, targets, 1 / 255, mean, std, transform)
        indices = split_with_own_test_set(len(images), split, validation_split, split_seed)
        self.preprocessing = {"classes": self.classes}
        super().__init__(
            data, indices, batch_size, shuffle, num_workers, seed, split == "train", pin_memory, persistent_workers
        )
