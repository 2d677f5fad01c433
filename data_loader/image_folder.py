"""A folder of labelled images, one sub-folder per class (torchvision's ImageFolder layout):

    data_dir/cat/001.png
    data_dir/dog/xyz.jpg

The images are decoded once (PNG or JPEG, resized to `image_size`), kept as one uint8 tensor and normalized
and augmented a batch at a time, like MNIST; the decoded tensor is cached on disk (in `cache_dir`, by
default ~/.cache/pytorch_template), so later runs skip the decoding, and the cache is rebuilt when a file
is added, removed or changed. With
`in_memory` false, each batch is decoded from the files instead (in the DataLoader's workers), for data
that does not fit in memory; the batch order and the augmentation are the same.
"""

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from base.base_data_loader import BaseDataLoader, BatchTransform, InMemoryImages, split_indices
from data_loader.augment import flip_and_affine
from utils.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")  # what Pillow reads
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics torchvision's pretrained weights were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_VERSION = 1

logger = logging.getLogger("data")


def find_images(folder: Path) -> list[Path]:
    """The image files under `folder` (recursively, hidden folders skipped), sorted."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def scan_classes(data_dir: Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, class index of each, class names) of a folder with one sub-folder per class."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: image folder not found (expected one sub-folder of images per class)")
    classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{data_dir}: no class folders; put the images of each class in a sub-folder named after it")
    files, targets = [], []
    for index, name in enumerate(classes):
        found = find_images(data_dir / name)
        if not found:
            raise DataError(f"{data_dir / name}: class folder with no images ({', '.join(IMAGE_SUFFIXES)})")
        files += found
        targets += [index] * len(found)
    return files, targets, classes


def decode(path: Path, image_size: int, channels: int) -> torch.Tensor:
    """One image file as uint8 (channels, image_size, image_size), decoded and resized by Pillow."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)  # antialiased
            pixels = np.array(image)  # (H, W, C) or (H, W), a copy torch may own
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: unreadable image ({reason})") from None
    return torch.from_numpy(pixels).reshape(image_size, image_size, channels).permute(2, 0, 1)


def decode_all(files: Sequence[Path], image_size: int, channels: int) -> torch.Tensor:
    """Every file, decoded in a few threads (Pillow's decoders release the GIL): uint8 (N, C, H, W)."""
    images = torch.empty(len(files), channels, image_size, image_size, dtype=torch.uint8)

    def into(i: int) -> None:
        images[i] = decode(files[i], image_size, channels)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(into, range(len(files))))
    return images


def cache_key(data_dir: Path, files: Sequence[Path], image_size: int, channels: int) -> str:
    """Changes when a file is added, removed, rewritten or touched, or the decoding changes."""
    digest = hashlib.sha256(f"{CACHE_VERSION} {image_size} {channels}".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"\n{path.relative_to(data_dir)} {stat.st_size} {stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    """Where decoded images are cached unless `cache_dir` says otherwise: the user's cache folder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytorch_template"


def load_decoded(
    data_dir: Path, files: Sequence[Path], image_size: int, channels: int, cache_dir: Path | None
) -> torch.Tensor:
    """The decoded images, from the cache when it matches the files, else decoded now (and cached, where
    `cache_dir` is writable; None: no cache). A folder's cache file is named after the folder's path."""
    started = time.perf_counter()
    folder_id = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    key = cache_key(data_dir, files, image_size, channels)
    folder_id += f"-{image_size}x{channels}"  # a cache per size: a run at another size keeps this one
    path = (cache_dir or Path()) / f"{data_dir.name}-{folder_id}-{key}.pt"
    cache = cache_dir is not None
    if cache and path.is_file():
        try:
            images = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(images, torch.Tensor) and images.shape == (len(files), channels, image_size, image_size):
                logger.info("Read %d decoded images from %s in %.2f s", len(files), path, time.perf_counter() - started)
                return images
        except (RuntimeError, OSError, EOFError, ValueError):
            pass  # a damaged cache is rebuilt below
    images = decode_all(files, image_size, channels)
    logger.info("Decoded %d images from %s in %.2f s", len(files), data_dir, time.perf_counter() - started)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for old in path.parent.glob(f"{data_dir.name}-{folder_id}-*.pt"):  # the files changed: it is stale
                old.unlink()
            tmp = path.with_name(f".{path.name}.tmp")
            torch.save(images, tmp)
            tmp.replace(path)
            logger.info("Cached them in %s (%.1f MB)", path, path.stat().st_size / 2**20)
        except OSError as e:
            logger.info("Not caching the decoded images (%s: %s)", path.parent, e.strerror or e)
    return images


class ImageFiles(InMemoryImages):
    """Like InMemoryImages, but each batch is decoded from its files when it is asked for (in the workers)."""

    def __init__(
        self,
        files: Sequence[Path],
        targets: torch.Tensor,
        image_size: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: BatchTransform | None = None,
    ) -> None:
        placeholder = torch.empty(len(files), channels, 0, 0, dtype=torch.uint8)  # shape checks only, no pixels
        super().__init__(placeholder, targets, 1 / 255, mean, std, augment)
        self.files = list(files)
        self.image_size = image_size
        self.channels = channels

    def pixels(self, indices: list[int]) -> torch.Tensor:
        return torch.stack([decode(self.files[i], self.image_size, self.channels) for i in indices])


class ImageFolderDataLoader(BaseDataLoader):
    """Labelled images in one sub-folder per class; seeded "train", "valid" and "test" splits of the whole.

    `image_size`: every image is resized to image_size x image_size. `channels`: 3 (RGB) or 1 (grey).
    `mean`/`std` per channel: ImageNet's by default, what torchvision's pretrained weights expect.
    `augment`: a random flip, rotation and shift per image, on whole batches. `cache`: keep the decoded
    images in `cache_dir` (null: ~/.cache/pytorch_template) for the next run. For predictions, `inputs` is an
    image file or a folder of images (any layout), served as the split "predict".
    """

    def __init__(
        self,
        data_dir: str,
        image_size: int = 32,
        channels: int = 3,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 64,
        shuffle: bool = True,
        validation_split: float | int = 0.1,
        test_split: float | int = 0.2,
        split_seed: int = 0,
        augment: bool = False,
        in_memory: bool = True,
        cache: bool = True,
        cache_dir: str | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        split: str = "train",
        seed: int = 0,
        inputs: str | None = None,
        preprocessing: dict | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise DataError(f"data_loader.args.channels: expected 1 (grey) or 3 (RGB), found {channels!r}")
        for key, value in (("mean", mean), ("std", std)):
            if len(value) not in (1, channels):
                raise DataError(f"data_loader.args.{key}: expected 1 or {channels} values, found {len(value)}")
        self.root = Path(inputs if split == "predict" else data_dir)
        if split == "predict":
            if inputs is None or preprocessing is None:
                raise DataError("the split 'predict' needs inputs (an image or a folder) and the checkpoint's classes")
            files = [self.root] if self.root.is_file() else find_images(self.root)
            if not files:
                raise DataError(f"{self.root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
            targets, classes = [-1] * len(files), list(preprocessing["classes"])
            indices = torch.arange(len(files))
        else:
            files, targets, classes = scan_classes(self.root)
            if preprocessing is not None and preprocessing.get("classes") != classes:
                raise DataError(
                    f"{self.root}: the class folders ({', '.join(classes)}) are not the classes the model was "
                    f"trained on ({', '.join(preprocessing.get('classes', []))})"
                )
            indices = split_indices(
                [f.relative_to(self.root).as_posix() for f in files], validation_split, test_split, split_seed
            )[split]
        transform = flip_and_affine if augment else None
        if in_memory:
            where = (Path(cache_dir) if cache_dir else default_cache_dir()) if cache and split != "predict" else None
            images = load_decoded(self.root, files, image_size, channels, where)
            dataset = InMemoryImages(images, torch.tensor(targets), 1 / 255, mean, std, transform)
        else:
            dataset = ImageFiles(files, torch.tensor(targets), image_size, channels, mean, std, transform)
        self.files = files
        self.classes = classes
        self.preprocessing = {"classes": classes}
        super().__init__(
            dataset, indices, batch_size, shuffle, num_workers, seed, split == "train", pin_memory, persistent_workers
        )

    def sample_id(self, index: int) -> str:
        """The file's path, relative to the folder."""
        path = self.files[index]
        return path.name if path == self.root else str(path.relative_to(self.root))
