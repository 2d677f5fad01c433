"""Data loaders selectable by name in config.json ("data_loader": {"type": <class name>, "args": {...}}).

Each class loads its data set once into memory and serves one split of it ("train", "valid" or
"test"); train.py and test.py pass `split` and `seed`, the config passes everything else. A loader may live
in its own file under data_loader/: every BaseDataLoader subclass defined there is selectable by its name.
"""

import pickle
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.error import URLError

import torch

from base.base_data_loader import (
    BaseDataLoader,
    InMemoryImages,
    InMemoryTensors,
    index_keys,
    split_indices,
    split_with_own_test_set,
)
from data_loader.augment import small_affine
from utils.errors import DataError

if TYPE_CHECKING:
    from torchvision import datasets


class DigitsDataLoader(BaseDataLoader):
    """scikit-learn's 1,797 bundled 8x8 handwritten digits: works offline, nothing to download.

    A held-out test split (`test_split`) is drawn first with `split_seed`, then a validation split
    (`validation_split`) from the rest; both are a fraction in [0, 1) or a sample count.
    """

    def __init__(
        self,
        batch_size: int = 64,
        shuffle: bool = True,
        validation_split: float | int = 0.1,
        test_split: float | int = 0.2,
        split_seed: int = 0,
        augment: bool = False,
        num_workers: int = 0,
        split: str = "train",
        seed: int = 0,
    ) -> None:
        from sklearn.datasets import load_digits  # imported here: only this data set needs scikit-learn

        digits = load_digits()
        images = torch.from_numpy(digits.images).to(torch.uint8).unsqueeze(1)  # (1797, 1, 8, 8), values 0..16
        targets = torch.from_numpy(digits.target)
        dataset = InMemoryImages(
            images, targets, scale=1 / 16, mean=0.3053, std=0.3760, augment=small_affine if augment else None
        )
        indices = split_indices(index_keys(len(dataset)), validation_split, test_split, split_seed)[split]
        super().__init__(dataset, indices, batch_size, shuffle, num_workers, seed, training=split == "train")


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_mnist(data_dir: str, train: bool, download: bool) -> "datasets.MNIST":
    """MNIST through torchvision, from `<data_dir>/MNIST/raw`; downloads there where the network allows."""
    from torchvision import datasets  # imported here: only MNIST needs torchvision

    try:
        return datasets.MNIST(data_dir, train=train, download=False)
    except pickle.UnpicklingError:  # torch refused objects other than tensors; its advice (load them) would run code
        processed = Path(data_dir) / "MNIST" / "processed"
        raise DataError(
            f"{processed}: holds Python objects other than tensors, which are never loaded (a pickle runs code when "
            f"read); remove that folder and put {', '.join(MNIST_FILES)} in {processed.parent / 'raw'}"
        ) from None
    except RuntimeError:
        if not download:
            raise DataError(_missing_mnist(data_dir, "download is off")) from None
    raw = Path(data_dir) / "MNIST" / "raw"
    made = [folder for folder in (Path(data_dir), raw.parent, raw) if not folder.exists()]
    try:
        return datasets.MNIST(data_dir, train=train, download=True)
    except (RuntimeError, URLError, OSError) as e:
        for folder in reversed(made):  # a failed download leaves no empty folders behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        said = [line.strip() for line in str(e).splitlines() if line.strip()]  # torchvision's last line says why
        raise DataError(
            _missing_mnist(data_dir, f"download failed: {said[-1] if said else type(e).__name__}")
        ) from None


def _missing_mnist(data_dir: str, reason: str) -> str:
    raw = Path(data_dir) / "MNIST" / "raw"
    return f"MNIST files not found in {raw} and {reason}; put {', '.join(MNIST_FILES)} there (unzipped)"


class MnistDataLoader(BaseDataLoader):
    """MNIST (28x28 digits) via torchvision: the official test set for "test", the training set split
    into "train" and "valid". Decoded once into memory and normalized per batch."""

    def __init__(
        self,
        data_dir: str = "data/",
        batch_size: int = 128,
        shuffle: bool = True,
        validation_split: float | int = 0.1,
        split_seed: int = 0,
        augment: bool = False,
        download: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        split: str = "train",
        seed: int = 0,
    ) -> None:
        mnist = load_mnist(data_dir, train=split != "test", download=download)
        dataset = InMemoryImages(
            mnist.data.unsqueeze(1),
            mnist.targets,
            scale=1 / 255,
            mean=0.1307,
            std=0.3081,
            augment=small_affine if augment else None,
        )
        indices = split_with_own_test_set(len(dataset), split, validation_split, split_seed)
        super().__init__(
            dataset, indices, batch_size, shuffle, num_workers, seed, split == "train", pin_memory, persistent_workers
        )


TABULAR_DATASETS = {"diabetes": "load_diabetes", "breast_cancer": "load_breast_cancer"}


class TabularDataLoader(BaseDataLoader):
    """A table of numeric features and one target, from scikit-learn's bundled data sets (offline):
    "diabetes" (regression: 442 rows, 10 features, disease progression) or "breast_cancer" (binary: 569 rows,
    30 features, 1 = benign).

    Batches are (features (B, F) float32, targets (B, 1) float32). Features, and a regression target, are
    standardized with the mean and std of the training split only, so nothing of the validation or test
    split leaks into training; R² does not change, the loss and MAE are in standard deviations of the target.
    """

    def __init__(
        self,
        dataset: str = "diabetes",
        batch_size: int = 32,
        shuffle: bool = True,
        validation_split: float | int = 0.1,
        test_split: float | int = 0.2,
        split_seed: int = 0,
        num_workers: int = 0,
        split: str = "train",
        seed: int = 0,
    ) -> None:
        import sklearn.datasets  # imported here: only the scikit-learn data sets need it

        if dataset not in TABULAR_DATASETS:
            raise DataError(
                f"data_loader.args.dataset: unknown data set {dataset!r} (valid: {', '.join(TABULAR_DATASETS)})"
            )
        features, targets = getattr(sklearn.datasets, TABULAR_DATASETS[dataset])(return_X_y=True)
        features = torch.as_tensor(features, dtype=torch.float32)
        targets = torch.as_tensor(targets, dtype=torch.float32).unsqueeze(1)  # (N, 1): the shape of the output
        splits = split_indices(index_keys(len(features)), validation_split, test_split, split_seed)
        features = _standardize(features, splits["train"])
        if dataset == "diabetes":
            self.task = "regression"
            mean, std = targets[splits["train"]].mean().item(), targets[splits["train"]].std().item()
            self.preprocessing = {"target_mean": mean, "target_std": std}  # predictions in the target's units
            targets = (targets - mean) / std
        else:
            self.task, self.classes = "binary", ["malignant", "benign"]  # scikit-learn's target_names
        super().__init__(
            InMemoryTensors(features, targets), splits[split], batch_size, shuffle, num_workers, seed, split == "train"
        )


def _standardize(values: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """(values - mean) / std per column, with the statistics of the training rows only."""
    mean, std = values[train].mean(dim=0), values[train].std(dim=0).clamp_min(1e-12)
    return (values - mean) / std
