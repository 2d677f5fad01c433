"""Seeded splits by id: which samples are "train", "valid" and "test" depends on each sample's key and the seed
only, never on its position in a listing."""

import hashlib
import math
from collections.abc import Sequence
from numbers import Integral

import torch

from utils.errors import DataError


def _check_split(split: float | int, available: int, key: str) -> None:
    """A split is a fraction in [0, 1) or a whole number of samples, fewer than are available."""
    expected = f"data_loader.args.{key}: expected a fraction in [0, 1) or a sample count"
    if isinstance(split, bool) or not isinstance(split, (Integral, float)):
        raise DataError(f"{expected}, found {split!r}")
    if split < 0 or (isinstance(split, float) and split >= 1.0):  # a count is a whole number (JSON 1.0 is a float)
        raise DataError(f"{expected}, found {split}")
    if not isinstance(split, float) and split >= available:
        raise DataError(
            f"data_loader.args.{key}: {split} samples asked for, but only {available} are available "
            f"(use a smaller count or a fraction such as 0.1)"
        )


def _unit_hash(seed: int, salt: str, key: str) -> float:
    """A number in [0, 1) that depends on (seed, salt, key) only."""
    digest = hashlib.blake2b(f"{seed}\0{salt}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _take(
    split: float | int, scores: torch.Tensor, available: torch.Tensor, key: str, strata: torch.Tensor | None
) -> torch.Tensor:
    """The samples a split takes among the available ones (a mask): a fraction f takes those whose score is
    below f; a count n the n of lowest score. With `strata` (each sample's class as a number), each class gives
    its share: round(f * size) of lowest score, or a count shared out in proportion to the classes' sizes."""
    _check_split(split, int(available.sum()), key)
    if strata is None and isinstance(split, float):
        return available & (scores < split)
    if strata is None:
        return _lowest(scores, available, int(split))
    groups = [available & (strata == stratum) for stratum in strata.unique()]
    sizes = [int(group.sum()) for group in groups]
    wanted = [split * size if isinstance(split, float) else split * size / sum(sizes) for size in sizes]
    counts = [math.floor(w + 0.5) if isinstance(split, float) else math.floor(w) for w in wanted]  # halves up
    if not isinstance(split, float):  # exactly n: the largest remainders get one more
        for i in sorted(range(len(sizes)), key=lambda i: counts[i] - wanted[i])[: int(split) - sum(counts)]:
            counts[i] += 1
    taken = torch.zeros_like(available)
    for group, count in zip(groups, counts, strict=True):
        taken |= _lowest(scores, group, count)
    return taken


def _lowest(scores: torch.Tensor, available: torch.Tensor, count: int) -> torch.Tensor:
    """A mask of the `count` available samples of lowest score."""
    taken = torch.zeros_like(available)
    candidates = available.nonzero().flatten()
    taken[candidates[scores[candidates].argsort()[:count]]] = True
    return taken


def split_indices(
    keys: Sequence[str] | int,
    validation_split: float | int,
    test_split: float | int,
    seed: int,
    strata: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Split samples into disjoint "train", "valid" and "test" index sets by each sample's key: its id (a file
    name, an id column's value, a row's content, its index in a data set that never changes).

    Which split a sample belongs to depends on its key and the seed only (a seeded hash), never on its position
    in a listing: adding or removing samples does not move any other sample between the splits. A fraction f
    takes the samples whose hash is below f (about f of them); a count n takes the n of lowest hash (exactly n:
    a new sample can move the one at the edge). The test set is taken first, from its own hash, so changing
    `validation_split` never moves a sample into or out of it; the validation set takes its fraction of the rest.
    `strata` (each sample's label: a stratified split) makes every split take its share of each label exactly;
    a new sample then can move the one at the edge of its own label (with a count, of another label too).
    A number n in place of the keys (the earlier `split_indices(n, ...)` that loaders were written to) splits
    by index, as `index_keys(n)` does: right for a data set that never changes, not for files a user adds to.
    A fold of a cross-validation (the cv feature) in place of `validation_split` picks the validation set itself,
    among the samples the test set leaves, from their keys, `strata` and `groups` (a group's samples stay together).
    """
    if isinstance(keys, int) and not isinstance(keys, bool):
        keys = index_keys(keys)
    everything = torch.ones(len(keys), dtype=torch.bool)
    scores = {salt: torch.tensor([_unit_hash(seed, salt, k) for k in keys], dtype=torch.float64) for salt in
              ("test", "valid")}  # fmt: skip
    codes = None
    if strata is not None:
        numbers = {label: i for i, label in enumerate(sorted(set(strata)))}
        codes = torch.tensor([numbers[label] for label in strata], dtype=torch.long)
    test = _take(test_split, scores["test"], everything, "test_split", codes)
    if hasattr(validation_split, "validation_mask"):
        valid = validation_split.validation_mask(keys, ~test, strata, groups)
    else:
        valid = _take(validation_split, scores["valid"], ~test, "validation_split", codes)
    return {
        name: mask.nonzero().flatten() for name, mask in (("test", test), ("valid", valid), ("train", ~(test | valid)))
    }


def index_keys(n: int) -> list[str]:
    """Split keys for a data set that never changes (a library's bundled data, MNIST's files): the index."""
    return [str(i) for i in range(n)]


def split_with_own_test_set(n: int, split: str, validation_split: float | int, seed: int) -> torch.Tensor:
    """The indices of `split` among the `n` samples of a data set that comes with its own test set (MNIST,
    torchvision's): every one of the test set for "test"; the training set split by index into "train" and "valid"."""
    if split == "test":
        return torch.arange(n)
    return split_indices(index_keys(n), validation_split, 0, seed)[split]
