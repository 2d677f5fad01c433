"""Data loading shared by every data set: seeded splits, a batch order that is a pure function of
(seed, epoch), sharding across DDP ranks, and an in-memory image set normalized per batch.

Because the order of batch b in epoch e depends on nothing but (seed, e, b), resuming a run -- even in
the middle of an epoch -- replays exactly the batches an uninterrupted run would have seen, whatever
`num_workers` is, and every DDP rank agrees on the shards without communicating.
"""

import contextlib
import copy
import hashlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from numbers import Integral

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from utils.distributed import rank_and_world_size
from utils.errors import DataError, UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")  # what Pillow reads
# A batch transform: (images (B, C, H, W) float, generator) -> images; runs on whole batches of tensors.
BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _check_split(split: float | int, available: int, key: str) -> None:
    """A split is a fraction in [0, 1) or a whole number of samples, fewer than are available."""
    expected = f"data_loader.args.{key}: expected a fraction in [0, 1) or a sample count"
    if isinstance(split, bool) or not isinstance(split, (Integral, float)):
        raise DataError(f"{expected}, found {split!r}")
    if isinstance(split, float) and not 0.0 <= split < 1.0:  # a count is a whole number (JSON 1.0 is a float)
        raise DataError(f"{expected}, found {split}")
    if not isinstance(split, float) and not 0 <= split < available:
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


@contextlib.contextmanager
def worker_failures_as_data_errors(logger: logging.Logger | None = None) -> Iterator[None]:
    """Turn a DataLoader worker that raised or died into one DataError line; any other error passes through.

    With a `logger`, the worker's whole traceback is logged there first and the line points to it.
    """
    try:
        yield
        return
    except UserError:  # already one line (a worker failure turned into a DataError further in, among others)
        raise
    except Exception as e:
        failure = worker_failure(e)
        if failure is None:
            raise
        if logger is not None:
            logger.error("Data loader worker failed:\n%s", e)
            failure += " (the full traceback is in info.log)"
    # Raised outside the except clause: the worker's error and its frames (which hold the DataLoader's
    # iterator) are freed now, so the iterator shuts its workers down and torch's SIGCHLD handler no longer
    # raises when another of them exits.
    raise DataError(failure)


def worker_failure(error: BaseException) -> str | None:
    """One line describing a DataLoader worker that raised or died, or None for any other error.

    A worker's exception reaches the main process re-raised with the worker's traceback in its message;
    a worker killed by the system (out of memory, a crash in native code) becomes a RuntimeError.
    """
    text = str(error)
    if "in DataLoader worker process" in text:
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return f"{lines[0].removeprefix('Caught ').rstrip('.')}: {lines[-1]}"
    if isinstance(error, RuntimeError) and text.startswith("DataLoader worker"):
        return text.strip().splitlines()[0]
    if isinstance(error, ConnectionResetError):  # a worker killed (SIGSEGV) while the main process read from it
        return f"a DataLoader worker died ({text or 'connection reset'})"
    return None


def derive_seed(*numbers: int) -> int:
    """A 63-bit seed derived from several integers (independent streams for each (seed, epoch, batch))."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, dtype=np.uint64)[0] >> 1)


class EpochBatchSampler(Sampler[list[int]]):
    """Yields this rank's list of dataset indices for each batch of an epoch.

    Global batch b of an epoch holds `batch_size * world_size` samples of a permutation seeded by
    (seed, epoch); rank r takes every world_size-th of them, so N ranks with batch B see together
    exactly the batches one process with batch N*B would see.
    """

    def __init__(
        self,
        indices: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        equal_shards: bool = False,
    ) -> None:
        self.indices = indices
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        # Training under DDP needs the same number of steps on every rank: a final global batch too
        # small to give each rank a sample is dropped (at most world_size - 1 samples an epoch).
        self.min_global = world_size if equal_shards else 1
        self.epoch = 1
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation; `start_batch` > 0 skips the batches already trained on."""
        self.epoch = epoch
        self.start_batch = start_batch

    def keep_batches_of_at_least(self, samples: int) -> bool:
        """Leave out a last batch that would give a rank fewer than `samples` samples; True if that drops one."""
        before = self.num_batches()
        self.min_global = max(self.min_global, samples * self.world_size)
        return self.num_batches() < before

    def num_batches(self) -> int:
        """Batches in a whole epoch (before `start_batch` is skipped)."""
        global_batch = self.batch_size * self.world_size
        full, rest = divmod(len(self.indices), global_batch)
        last = rest >= self.min_global and rest > self.rank
        return full + int(last)

    def __len__(self) -> int:
        return max(self.num_batches() - self.start_batch, 0)

    def batch_seed(self, batch: int) -> int:
        return derive_seed(self.seed, self.epoch, batch)

    def iter_batches(self) -> Iterator[tuple[int, list[int]]]:
        """(batch number within the epoch, this rank's indices) from `start_batch` on."""
        order = self.indices
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = order[torch.randperm(len(order), generator=generator)]
        global_batch = self.batch_size * self.world_size
        for batch in range(self.start_batch, self.num_batches()):
            chunk = order[batch * global_batch : (batch + 1) * global_batch]
            yield batch, chunk[self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for _, indices in self.iter_batches():
            yield indices


class _SeededBatches(Sampler[tuple[list[int], int]]):
    """Adds to each batch the seed of its augmentation, so augmentation depends on (seed, epoch, batch) only."""

    def __init__(self, batches: EpochBatchSampler) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[list[int], int]]:
        for batch, indices in self.batches.iter_batches():
            yield indices, self.batches.batch_seed(batch)


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


class BaseDataLoader(DataLoader):
    """A DataLoader over one split of a data set, in a seeded, resumable, DDP-aware batch order.

    Subclasses load their data and call this with the indices of the split they were asked for.
    An `InMemoryImages` or `InMemoryTensors` data set is read a whole batch at a time; any other map-style
    Dataset is read a sample at a time and collated, in the same order.

    What predictions need besides the batches (predict.py, test.py --predictions), set by a subclass:
    - `task`: how an output reads: "classification" (a score per class, (B, C)), "binary" (one logit per
      sample) or "regression" (the value itself);
    - `classes`: the class names, in the order of the outputs (None: the class numbers);
    - `preprocessing`: what the loader learned from the training split and needs again to read new inputs
      (class names, standardization statistics), as plain values; saved in every checkpoint and given back
      as the `preprocessing` argument of a loader that takes one (test.py, predict.py);
    - `sample_id(index)`: the name of a sample in the rows of a predictions file (a file name, a row number);
    - `submission`: (id column, target column) to write predictions of new inputs as a competition's
      submission (`image_name,target`: the positive class's probability, the class or the value), or None.
    A loader that can read new, unlabelled inputs (predict.py) takes `inputs` (a path) and serves them as the
    split "predict", with -1 as every target.
    """

    task = "classification"
    classes: list[str] | None = None
    preprocessing: dict = {}  # noqa: RUF012 -- replaced, never mutated, by subclasses
    submission: tuple[str, str] | None = None

    def __init__(
        self,
        dataset: Dataset,
        indices: torch.Tensor,
        batch_size: int,
        shuffle: bool,
        num_workers: int,
        seed: int,
        training: bool,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
            raise DataError(f"data_loader.args.batch_size: expected a whole number >= 1, found {batch_size!r}")
        rank, world_size = rank_and_world_size()
        # Only the training split is shuffled: the others are read in index order (predictions files follow it).
        self.epoch_sampler = EpochBatchSampler(
            indices, batch_size, shuffle and training, seed, rank, world_size, equal_shards=training and world_size > 1
        )
        self.n_samples = len(indices)
        # The loader's own generator: creating an iterator draws the workers' base seed from it, never from
        # the global RNG (which would shift dropout masks after a mid-epoch resume).
        self.worker_generator = torch.Generator()
        common = dict(
            num_workers=num_workers,
            pin_memory=pin_memory and torch.cuda.is_available(),  # pinning helps host-to-GPU copies only
            persistent_workers=persistent_workers and num_workers > 0,
            generator=self.worker_generator,
        )
        if isinstance(dataset, (InMemoryImages, InMemoryTensors)):
            if not training:
                dataset = dataset.without_augmentation()
            super().__init__(dataset, sampler=_SeededBatches(self.epoch_sampler), batch_size=None, **common)
        else:
            super().__init__(dataset, batch_sampler=self.epoch_sampler, **common)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Call before iterating: selects the epoch's order and skips `start_batch` batches."""
        self.epoch_sampler.set_epoch(epoch, start_batch)
        # Worker seeds: a function of (seed, epoch) only.
        self.worker_generator.manual_seed(derive_seed(self.epoch_sampler.seed, epoch, 1))

    def fit_batch_norm(self, model: torch.nn.Module) -> None:
        """BatchNorm in training mode cannot train on one sample ("Expected more than 1 value per channel"): for a
        model that holds it (frozen now, maybe trained after an unfreeze), a last training batch of one sample is
        left out of every epoch, and info.log says so once. Call it before the optimizer counts the batches."""
        has_batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if has_batch_norm and self.epoch_sampler.keep_batches_of_at_least(2):
            logging.getLogger("trainer").info(
                "The last training batch would hold one sample, which BatchNorm cannot train on: it is left out of "
                "each epoch (a different sample each epoch when shuffled); choose another batch_size to keep it"
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.epoch_sampler.num_batches()

    def sample_id(self, index: int) -> str:
        """The name of sample `index` of the data set in a predictions file (its index, unless a subclass
        has better: a file name, a row number of a CSV file)."""
        return str(index)
