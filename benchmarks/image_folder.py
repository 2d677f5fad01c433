"""Measure the image-folder data path side by side in one run (also: python benchmarks/throughput.py --images).

    python benchmarks/image_folder.py           # 10,782 PNGs (the digits, 32x32 RGB, six shifted copies)
    python benchmarks/image_folder.py --tiny    # seconds; what the tests run (the numbers mean nothing)

Every variant is the same train step of a small CNN (batch 128) over one epoch of the same images,
repeated, the repeats interleaved so that a noisy neighbour slows all of them alike:

  our folder    ImageFolderDataLoader: decoded once (or read from its cache), normalized per batch
  per batch     ImageFolderDataLoader with in_memory false: each batch decoded from its files in 2 workers
  torchvision   torchvision.datasets.ImageFolder with per-sample transforms (ToTensor, Normalize), 2 workers
  floor         the train step over a tensor already normalized in memory (no DataLoader at all)

The first epoch's cost, decoding every file (and writing the cache), and a later start that reads the
cache, are reported apart.
"""

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a script in benchmarks/ imports the project like train.py does

from benchmarks.throughput import measure  # noqa: E402


def main(tiny: bool) -> dict[str, float]:
    import torch
    from torch import nn
    from torchvision import datasets, transforms

    from data_loader.image_folder import IMAGENET_MEAN, IMAGENET_STD, ImageFolderDataLoader
    from data_loader.make_digit_images import write_digit_images

    work = Path(tempfile.mkdtemp(prefix="image-folder-"))
    folder = work / "images"
    started = time.perf_counter()
    n_images = write_digit_images(folder, size=32, copies=1 if tiny else 6, classes=3 if tiny else 10)
    write_seconds = time.perf_counter() - started
    repeats, batch_size, workers = (1 if tiny else 5), 128, 2

    def loader(**options: object) -> ImageFolderDataLoader:
        return ImageFolderDataLoader(
            str(folder), 32, batch_size=batch_size, validation_split=0, test_split=0, cache_dir=str(work / "cache"),
            **options,
        )  # fmt: skip

    # The first epoch's extra cost: decoding every file, writing the cache; then a start that reads it.
    started = time.perf_counter()
    ours = loader()
    first_start = time.perf_counter() - started
    cache_bytes = sum(p.stat().st_size for p in (work / "cache").iterdir())
    started = time.perf_counter()
    loader()
    cached_start = time.perf_counter() - started
    per_batch = loader(in_memory=False, num_workers=workers, persistent_workers=True)

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, 16, 16)
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 8, 8)
        nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(data: torch.Tensor, target: torch.Tensor) -> None:
        loss = nn.functional.cross_entropy(model(data), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def epoch_of(data_loader: ImageFolderDataLoader) -> None:
        data_loader.set_epoch(1)
        for data, target in data_loader:
            step(data, target)

    torchvision_folder = datasets.ImageFolder(
        str(folder),
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]),
    )
    torchvision_loader = torch.utils.data.DataLoader(
        torchvision_folder, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=True
    )

    def torchvision_epoch() -> None:
        for data, target in torchvision_loader:
            step(data, target)

    ours.set_epoch(1)
    floor_images, floor_targets = ours.dataset[(list(range(n_images)), 0)]  # everything, normalized once

    def floor() -> None:
        order = torch.randperm(n_images)
        for start in range(0, n_images, batch_size):
            index = order[start : start + batch_size]
            step(floor_images[index], floor_targets[index])

    variants = {"our folder": lambda: epoch_of(ours), "per batch": lambda: epoch_of(per_batch),
                "torchvision": torchvision_epoch, "floor": floor}  # fmt: skip
    times = measure(variants, repeats)
    median = {name: statistics.median(t) for name, t in times.items()}

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
          f"torch {torch.__version__}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"workload: {n_images} PNG files of 32x32 RGB ({write_seconds:.1f} s to write), batch {batch_size}, "
          f"{workers} workers where a variant has workers, {repeats} interleaved repeats")  # fmt: skip
    print(f"first start (decode every file, write the cache): {first_start:.2f} s; "
          f"cache {cache_bytes / 2**20:.1f} MB; a later start reading the cache: {cached_start:.2f} s")  # fmt: skip
    print(f"{'variant':<12} {'median s/epoch':>15} {'min':>8} {'max':>8} {'images/s':>10}")
    for name, t in times.items():
        print(f"{name:<12} {median[name]:>15.3f} {min(t):>8.3f} {max(t):>8.3f} {n_images / median[name]:>10.0f}")
    ratios = {
        "our folder / floor": median["our folder"] / median["floor"],
        "per batch / floor": median["per batch"] / median["floor"],
        "torchvision / our folder": median["torchvision"] / median["our folder"],
    }
    targets = {"our folder / floor": "<= 1.30", "per batch / floor": "(decoding in the workers)",
               "torchvision / our folder": ">= 2.00"}  # fmt: skip
    for name, value in ratios.items():
        print(f"{name:<26} {value:6.3f}   target {targets[name]}")
    shutil.rmtree(work)
    return ratios


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a few seconds, to check the benchmark runs")
    main(parser.parse_args().tiny)
