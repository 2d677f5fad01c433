"""Data loading shared by every data set: a batch order that is a pure function of (seed, epoch), sharding
across DDP ranks, and worker failures as one line (the seeded splits are in splits.py, the in-memory data sets
in datasets.py; both are imported from here too).

Because the order of batch b in epoch e depends on nothing but (seed, e, b), resuming a run -- even in
the middle of an epoch -- replays exactly the batches an uninterrupted run would have seen, whatever
`num_workers` is, and every DDP rank agrees on the shards without communicating.
"""

import contextlib
import logging
from collections.abc import Iterator
from numbers import Integral

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

# Where a loader author imports from (the README's contract): the splits and the in-memory data sets too.
from base.datasets import IMAGE_SUFFIXES as IMAGE_SUFFIXES
from base.datasets import BatchTransform as BatchTransform
from base.datasets import InMemoryImages as InMemoryImages
from base.datasets import InMemoryTensors as InMemoryTensors
from base.splits import index_keys as index_keys
from base.splits import split_indices as split_indices
from base.splits import split_with_own_test_set as split_with_own_test_set
from utils.distributed import rank_and_world_size
from utils.errors import DataError, UserError


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

    def batch_samples(self, batch: int) -> int:
        """This rank's samples in batch `batch` of an epoch (the last one may hold fewer)."""
        global_batch = self.batch_size * self.world_size
        chunk = min(global_batch, len(self.indices) - batch * global_batch)
        return len(range(self.rank, max(chunk, 0), self.world_size))

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


class BaseDataLoader(DataLoader):
    """A DataLoader over one split of a data set, in a seeded, resumable, DDP-aware batch order.

    What a loader must do (DigitsDataLoader in data_loader/data_loaders.py is the whole of it): take its own
    arguments (the config's data_loader.args) and `split` ("train", "valid", "test") and `seed`, which the scripts
    pass; load the data; pick the split's indices (`split_indices(keys, validation_split, test_split, split_seed)`,
    by each sample's id); call `super().__init__(dataset, indices, batch_size, shuffle, num_workers, seed,
    training=split == "train")`. An `InMemoryImages` or `InMemoryTensors` data set is read a whole batch at a
    time; any other map-style Dataset is read a sample at a time and collated, in the same order.

    Optional, for predictions (predict.py, test.py --predictions) and a run's record, set by a subclass:
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
        if has_batch_norm and self.epoch_sampler.batch_size < 2:
            raise DataError(
                "data_loader.args.batch_size: 1 sample a batch, which BatchNorm cannot train on; use 2 or more"
            )
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
