"""Data: seeded splits, a resumable and shardable batch order, per-batch normalization, the MNIST loader."""

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from base.base_data_loader import EpochBatchSampler, InMemoryImages, split_indices
from data_loader.data_loaders import DigitsDataLoader, MnistDataLoader
from utils.errors import DataError


def test_splits_are_disjoint_cover_everything_and_depend_only_on_the_seed():
    keys = [str(i) for i in range(1797)]
    parts = split_indices(keys, 0.1, 0.2, seed=0)
    sizes = {k: len(v) for k, v in parts.items()}
    assert sizes == {"test": 348, "valid": 152, "train": 1297}  # about 20 % and 10 % of the rest
    joined = torch.cat(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(1797))
    again = split_indices(keys, 0.1, 0.2, seed=0)
    assert all(torch.equal(parts[k], again[k]) for k in parts)
    other = split_indices(keys, 0.1, 0.2, seed=1)
    assert not torch.equal(parts["test"], other["test"])
    # The test split does not move when the validation split changes; a count takes exactly that many.
    assert torch.equal(split_indices(keys, 300, 0.2, seed=0)["test"], parts["test"])
    assert len(split_indices(keys, 300, 0.2, seed=0)["valid"]) == 300


def test_a_loader_written_to_the_earlier_split_indices_of_a_count_keeps_working():
    """The README once told loader authors to call split_indices(n, ...): a number splits by index."""
    by_count = split_indices(1797, 0.1, 0.2, seed=0)
    by_keys = split_indices([str(i) for i in range(1797)], 0.1, 0.2, seed=0)
    assert all(torch.equal(by_count[k], by_keys[k]) for k in by_keys) and len(by_count["test"]) == 348


def test_a_samples_split_follows_its_id_not_its_position():
    """Issue 18: one image added to a folder moved 10 of 12 test images into training. Now a sample's split
    is a function of its id and the seed: adding, removing or reordering samples moves no other sample."""
    names = [f"img_{i:04d}.png" for i in range(500)]

    def split_of(keys: list[str]) -> dict[str, str]:
        parts = split_indices(keys, 0.1, 0.2, seed=0)
        return {keys[i]: name for name, indices in parts.items() for i in indices.tolist()}

    before = split_of(names)
    after = split_of(["aaa_new.png", *names[::-1][:-50], "zzz_new.png"])  # two added, 50 removed, reordered
    assert all(after[name] == before[name] for name in after if name in before)
    assert sum(v == "test" for v in before.values()) == pytest.approx(100, abs=25)


def test_a_stratified_split_gives_each_split_its_share_of_every_label():
    labels = ["rare"] * 30 + ["common"] * 970  # 3 % positives, as in an imbalanced competition
    keys = [f"id_{i}" for i in range(1000)]
    parts = split_indices(keys, 0.1, 0.2, seed=0, strata=labels)
    counts = {name: sum(labels[i] == "rare" for i in part.tolist()) for name, part in parts.items()}
    assert counts == {"test": 6, "valid": 2, "train": 22}  # round(0.2 * 30), round(0.1 * 24), the rest
    assert [len(part) for part in parts.values()] == [200, 80, 720]
    # A count is shared out in proportion to the labels: exactly that many in all.
    counted = split_indices(keys, 33, 0.2, seed=0, strata=labels)["valid"]
    assert len(counted) == 33 and sum(labels[i] == "rare" for i in counted.tolist()) == 1
    # Within a label the split still follows the ids: the same ids in another order land in the same splits.
    order = list(range(999, -1, -1))
    again = split_indices([keys[i] for i in order], 0.1, 0.2, seed=0, strata=[labels[i] for i in order])
    assert sorted(order[i] for i in again["test"].tolist()) == parts["test"].tolist()


@pytest.mark.parametrize(
    ("validation_split", "message"),
    [
        (5000, "validation_split: 5000 samples asked for, but only 1449 are available"),
        (1.5, "validation_split: expected a fraction in \\[0, 1\\) or a sample count, found 1.5"),
        (-0.2, "found -0.2"),
        (True, "found True"),
        ("10%", "found '10%'"),
    ],
)
def test_impossible_splits_are_refused(validation_split, message):
    with pytest.raises(DataError, match=message):
        split_indices([str(i) for i in range(1797)], validation_split, 0.2, seed=0)


def test_batch_order_is_a_function_of_seed_and_epoch():
    indices = torch.arange(100)
    sampler = EpochBatchSampler(indices, batch_size=16, shuffle=True, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    sampler.set_epoch(2)
    second = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) == first and first != second
    assert len(first) == 7 and [len(b) for b in first] == [16] * 6 + [4]
    assert sorted(i for b in first for i in b) == list(range(100))
    # Resuming in the middle of an epoch replays the rest of it exactly.
    sampler.set_epoch(1, start_batch=4)
    assert list(sampler) == first[4:] and len(sampler) == 3


def test_ranks_share_each_global_batch_like_one_process_with_a_larger_batch():
    indices = torch.arange(70)
    single = EpochBatchSampler(indices, batch_size=16, shuffle=True, seed=1)
    ranks = [EpochBatchSampler(indices, batch_size=8, shuffle=True, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for s in (single, *ranks):
        s.set_epoch(5)
    together = [sorted(a + b) for a, b in zip(*ranks, strict=True)]
    assert together == [sorted(b) for b in single]
    # Training shards have equal lengths so that DDP ranks step together.
    tail = [EpochBatchSampler(torch.arange(33), 8, False, 0, rank=r, world_size=2, equal_shards=True) for r in (0, 1)]
    assert [len(t) for t in tail] == [2, 2]


def test_per_batch_normalization_equals_torchvision_per_image():
    from torchvision import transforms

    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    dataset = InMemoryImages(images, torch.arange(10), scale=1 / 255, mean=0.1307, std=0.3081)
    batch, targets = dataset[([3, 1, 4], 0)]
    per_image = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    expected = torch.stack([per_image(images[i, 0].numpy()) for i in (3, 1, 4)])
    torch.testing.assert_close(batch, expected, rtol=1e-5, atol=1e-5)
    assert targets.tolist() == [3, 1, 4]


def test_digits_splits_do_not_overlap_and_only_training_is_augmented():
    loaders = {
        s: DigitsDataLoader(batch_size=2000, shuffle=False, augment=True, split=s) for s in ("train", "valid", "test")
    }
    assert {s: loader.n_samples for s, loader in loaders.items()} == {"train": 1297, "valid": 152, "test": 348}
    plain = {
        s: DigitsDataLoader(batch_size=2000, shuffle=False, augment=False, split=s) for s in ("train", "valid", "test")
    }
    for split in ("valid", "test"):
        ((x, y),) = list(loaders[split])
        ((x_plain, y_plain),) = list(plain[split])
        assert torch.equal(x, x_plain) and torch.equal(y, y_plain)
    ((x_aug, _),) = list(loaders["train"])
    ((x_plain, _),) = list(plain["train"])
    assert x_aug.shape == x_plain.shape == (1297, 1, 8, 8)
    assert (x_aug - x_plain).abs().mean() > 0.1
    # The augmentation of a batch depends on (seed, epoch, batch) only: the same whatever the workers.
    (again,) = list(DigitsDataLoader(batch_size=2000, shuffle=False, augment=True, split="train", num_workers=2))
    assert torch.equal(again[0], x_aug)


def test_digits_pixels_are_normalized():
    ((x, _),) = list(DigitsDataLoader(batch_size=2000, split="train"))
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def _write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's idx format: big-endian magic, sizes, then raw uint8 data."""
    n, rows, cols = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, rows, cols) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())


@pytest.fixture
def mnist_dir(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    train_labels = rng.integers(0, 10, 60, dtype=np.uint8)
    _write_idx(raw, "train", train_images, train_labels)
    _write_idx(raw, "t10k", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), rng.integers(0, 10, 20, dtype=np.uint8))
    return tmp_path, train_images, train_labels


@pytest.mark.e2e
def test_mnist_loader_reads_idx_files_through_torchvision(mnist_dir):
    root, images, labels = mnist_dir
    train = MnistDataLoader(
        str(root), batch_size=100, shuffle=False, validation_split=10, download=False, split="train"
    )
    valid = MnistDataLoader(
        str(root), batch_size=100, shuffle=False, validation_split=10, download=False, split="valid"
    )
    test = MnistDataLoader(str(root), batch_size=100, download=False, split="test")
    assert (train.n_samples, valid.n_samples, test.n_samples) == (50, 10, 20)
    ((x, y),) = list(train)
    index = train.epoch_sampler.indices
    expected = (torch.from_numpy(images[index.numpy()]).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x[:, 0], expected, rtol=1e-5, atol=1e-5)
    assert y.tolist() == labels[index.numpy()].tolist()


def test_missing_mnist_files_say_where_to_put_them(tmp_path, monkeypatch):
    from torchvision import datasets

    with pytest.raises(
        DataError,
        match=f"MNIST files not found in {tmp_path}/MNIST/raw and download is off; put train-images-idx3-ubyte",
    ):
        MnistDataLoader(str(tmp_path), download=False)

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got: network unreachable")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    with pytest.raises(DataError, match=r"download failed: Tried https://\.\.\., got: network unreachable; put"):
        MnistDataLoader(str(tmp_path / "data"), download=True)
    assert not (tmp_path / "data").exists()  # no empty folders left behind


def test_iterating_a_loader_leaves_the_global_rng_alone():
    loader = DigitsDataLoader(batch_size=500, split="train", num_workers=0)
    loader.set_epoch(1)
    before = torch.get_rng_state()
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)


def test_a_planted_pickle_in_an_mnist_folder_runs_nothing_and_the_line_never_advises_loading_it(tmp_path):
    from data_loader.data_loaders import MnistDataLoader

    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    for name in ("training.pt", "test.pt"):
        torch.save({"x": Payload()}, processed / name)
    with pytest.raises(DataError, match=r"MNIST/processed: holds Python objects other than tensors") as error:
        MnistDataLoader(str(tmp_path), download=False)
    assert "weights_only" not in str(error.value) and "trusted" not in str(error.value)


class Payload:
    """What a planted pickle would run when loaded with weights_only=False."""

    def __reduce__(self):
        return (print, ("ran",))
