"""TorchvisionDataLoader: torchvision's own data sets by name, from files the test writes (never downloaded)."""

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from data_loader.torchvision_data import TorchvisionDataLoader
from parse_config import ConfigParser
from utils.errors import DataError


def write_fashion_mnist(root: Path, n_train: int = 120, n_test: int = 30) -> dict[str, np.ndarray]:
    """FashionMNIST's four idx files; image i of a set is filled with the value i % 256, its label i % 10."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    written = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None], 28, axis=1).repeat(28, axis=2)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())
        written[prefix] = labels
    return written


def test_a_torchvision_data_set_by_name_splits_normalizes_and_names_its_classes(tmp_path):
    write_fashion_mnist(tmp_path)
    loaders = {
        s: TorchvisionDataLoader("FashionMNIST", str(tmp_path), mean=[0.5], std=[0.5], split=s, batch_size=500)
        for s in ("train", "valid", "test")
    }
    assert {s: loader.n_samples for s, loader in loaders.items()}["test"] == 30
    assert loaders["train"].n_samples + loaders["valid"].n_samples == 120 and loaders["valid"].n_samples > 0
    assert loaders["train"].classes[0] == "T-shirt/top" and len(loaders["train"].classes) == 10
    loaders["test"].set_epoch(1)
    images, targets = next(iter(loaders["test"]))
    assert images.shape == (30, 1, 28, 28) and targets.tolist() == [i % 10 for i in range(30)]
    # image i holds the value i everywhere: (i / 255 - 0.5) / 0.5 after normalization
    expected = (torch.arange(30, dtype=torch.float32) / 255 - 0.5) / 0.5
    assert torch.allclose(images[:, 0, 5, 5], expected, atol=1e-6)


def test_missing_files_unknown_names_and_pickled_sets_are_one_line(tmp_path):
    with pytest.raises(DataError, match=r"data_loader\.args\.root: FashionMNIST not found in .*; put its files there"):
        TorchvisionDataLoader("FashionMNIST", str(tmp_path))
    with pytest.raises(DataError, match=r"no data set 'FashionMnist'.*did you mean 'FashionMNIST'"):
        TorchvisionDataLoader("FashionMnist", str(tmp_path))
    with pytest.raises(
        DataError, match=r"CIFAR10's files are Python pickles, which run code when read: set allow_pickle"
    ):
        TorchvisionDataLoader("CIFAR10", str(tmp_path))


def test_it_is_selectable_in_a_config(base_config, tmp_path):
    write_fashion_mnist(tmp_path)
    base_config["data_loader"] = {
        "type": "TorchvisionDataLoader",
        "args": {"dataset": "FashionMNIST", "root": str(tmp_path)},
    }
    loader = ConfigParser(base_config).init_obj("data_loader", split="valid", seed=0)
    assert loader.n_samples == 120 - TorchvisionDataLoader("FashionMNIST", str(tmp_path)).n_samples


def test_a_data_sets_own_arguments_pass_through_and_files_that_fail_the_checksum_say_so(tmp_path):
    with pytest.raises(DataError, match=r"^data_loader\.args\.dataset_args: EMNIST needs 'split' \(its own: split\)"):
        TorchvisionDataLoader("EMNIST", str(tmp_path))  # it said "not found" when its split was the problem
    with pytest.raises(DataError, match=r"dataset_args: EMNIST takes no argument 'splt' \(its own: split\)"):
        TorchvisionDataLoader("EMNIST", str(tmp_path), dataset_args={"splt": "letters"})
    with pytest.raises(DataError, match=r"^data_loader\.args\.root: EMNIST not found in .*, or its files are not the "
                       r"official ones, whose checksums torchvision checks"):  # fmt: skip
        TorchvisionDataLoader("EMNIST", str(tmp_path), dataset_args={"split": "letters"})
    (tmp_path / "cifar-10-batches-py").mkdir()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (tmp_path / "cifar-10-batches-py" / name).write_bytes(b"not the official file")
    with pytest.raises(DataError, match=r"CIFAR10 not found in .*, or its files are not the official ones"):
        TorchvisionDataLoader("CIFAR10", str(tmp_path), allow_pickle=True)


def test_files_in_cifars_format_that_are_not_the_official_ones_load_with_checksums_off(tmp_path):
    import pickle

    import numpy as np

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b", "c", "d"]}))
    with pytest.raises(DataError, match=r"or set checksums false for your own"):
        TorchvisionDataLoader("CIFAR10", str(tmp_path), allow_pickle=True)
    loader = TorchvisionDataLoader("CIFAR10", str(tmp_path), allow_pickle=True, checksums=False, split="test")
    assert loader.n_samples == 4 and loader.classes == ["a", "b", "c", "d"]
