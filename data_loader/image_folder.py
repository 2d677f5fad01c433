"""A folder of labelled images, one sub-folder per class (torchvision's ImageFolder layout):

    data_dir/cat/001.png
    data_dir/dog/xyz.jpg

The images are decoded once (PNG or JPEG, resized to `image_size`), kept as one uint8 tensor and normalized
and augmented a batch at a time, like MNIST; the decoded tensor is cached on disk (in `cache_dir`, by
default ~/.cache/pytorch_template), so later runs skip the decoding, and the cache is rebuilt when a file
is added, removed or changed. With `in_memory` false, each batch is decoded from the files instead (in the
DataLoader's workers), for data that does not fit in memory; the batch order and the augmentation are the same.

The cache is data, never trusted as such: it is kept in a folder only the user can write (a folder others can
write is not used at all), and a cache file holds the digest of the listing it was built from, which a load
compares with the files' listing now; a file that is damaged, planted or built from other files is rebuilt.
"""

import glob
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from base.base_data_loader import IMAGE_SUFFIXES, BaseDataLoader, BatchTransform, InMemoryImages, split_indices
from data_loader.augment import flip_and_affine
from utils.errors import DataError, first_line
from utils.util import cache_home, written_atomically

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics torchvision's pretrained weights were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
# 2: a cache file is {"listing": the digest it was built from, "images": uint8 (N, C, H, W)}; 3: EXIF orientation
CACHE_VERSION = 3

logger = logging.getLogger("data")


def named(path: Path | str) -> str:
    """A file or class name as a one-line message shows it: as it is when every character is printable, else
    JSON-quoted (a folder named "a\\nb" must not split an error line in two)."""
    text = str(path)
    return text if text.isprintable() and '"' not in text and "\\" not in text else json.dumps(text)


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
        what = "is a file, not an image folder" if data_dir.exists() else "image folder not found"
        raise DataError(f"{named(data_dir)}: {what} (expected one sub-folder of images per class)")
    classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"{named(data_dir)}: no class folders; put the images of each class in a sub-folder named after it"
        )
    files, targets = [], []
    for index, name in enumerate(classes):
        found = find_images(data_dir / name)
        if not found:
            raise DataError(f"{named(data_dir / name)}: class folder with no images ({', '.join(IMAGE_SUFFIXES)})")
        files += found
        targets += [index] * len(found)
    return files, targets, classes


# The range of the pixel values of Pillow's modes of more than 8 bits, mapped linearly onto uint8's 0..255
# (Pillow's own convert() clips instead: a 16-bit mid-grey 30000 of 65535 would become 255):
#   "I;16", "I;16B", "I;16L", "I;16N"  unsigned 16-bit, 0..65535 (16-bit PNGs and TIFFs)
#   "I"                                32-bit signed, holding 16-bit samples, 0..65535 (what Pillow used to
#                                      open 16-bit PNGs as); larger values are clipped to 255
#   "F"                                32-bit float, 0.0..1.0 (float images' convention, as in torchvision's
#                                      ToTensor); values outside are clipped, NaN becomes 0
HIGH_BIT_RANGES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def to_8_bit(image: "PILImage") -> "PILImage":
    """A 16-bit or float image scaled by its mode's range to 8-bit grey ("L"); other modes as they are."""
    from PIL import Image

    if image.mode not in HIGH_BIT_RANGES:
        return image
    pixels = np.asarray(image, dtype=np.float64) * (255 / HIGH_BIT_RANGES[image.mode])
    pixels = np.clip(np.rint(np.nan_to_num(pixels, nan=0.0)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def decode(path: Path, image_size: int, channels: int) -> torch.Tensor:
    """One image file as uint8 (channels, image_size, image_size), decoded and resized by Pillow, turned upright
    as its EXIF orientation says (a phone's photo is stored sideways, and every viewer turns it)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = to_8_bit(ImageOps.exif_transpose(image)).convert("RGB" if channels == 3 else "L")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)  # antialiased
            pixels = np.array(image)  # (H, W, C) or (H, W), a copy torch may own
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{named(path)}: unreadable image ({first_line(e)})") from None
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
    """The digest of what the decoded images are built from (sha256, hex): the folder, each file's relative
    path, size, mtime and ctime, and the decoding. A file added, removed, rewritten or touched changes it; so
    does one put back with its old size and mtime (`cp -p`, `tar`, `rsync -t` set those), as the kernel sets
    the inode's ctime at every change and no user can set it back (a chmod or a rename also rebuilds). Only
    the files' metadata is read: a warm start reads no image."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, str(data_dir.resolve()), image_size, channels]).encode())
    for path in files:
        info = path.stat()
        entry = [path.relative_to(data_dir).as_posix(), info.st_size, info.st_mtime_ns, info.st_ctime_ns]
        digest.update(b"\n" + json.dumps(entry).encode())  # JSON: a name holding a newline cannot fake an entry
    return digest.hexdigest()


def private_cache_dir(cache_dir: Path) -> Path | None:
    """`cache_dir`, created 0700 where missing, if only this user can write to it; else None, with a warning.

    A folder that others can write is not used, not refused: whoever can write there could plant a file the
    next run serves as its images, while decoding without the cache gives the same pixels, only slower (and a
    cache is on by default: a run should not stop over a folder its user never chose)."""
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = cache_dir.stat()
    except OSError as e:
        logger.info("Not caching the decoded images (%s: %s)", named(cache_dir), e.strerror or e)
        return None
    if os.name != "posix":
        return cache_dir
    if info.st_uid != os.geteuid():
        problem = f"it belongs to another user (uid {info.st_uid})"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"others can write to it (mode {stat.S_IMODE(info.st_mode):04o})"
    else:
        return cache_dir
    logger.warning(
        "Not using the image cache folder %s: %s, so a file planted there would be served as the images; "
        "decoding without a cache (chmod 700 it, or set cache_dir to a folder of your own)",
        named(cache_dir),
        problem,
    )
    return None


def read_cache(path: Path, key: str, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The images cached in `path` if it holds them for the listing `key`, else None (a log line says why)."""
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # whatever is wrong with a cache file, it is rebuilt, never fatal
        # Only the exception's name: torch's message advises weights_only=False, which a cache must never need.
        logger.warning("Rebuilding the damaged image cache %s (unreadable: %s)", named(path), type(e).__name__)
        return None
    if not isinstance(cached, dict) or cached.get("listing") != key:  # planted, or built from other files
        logger.warning("Rebuilding the image cache %s: it was not built from these files", named(path))
        return None
    images = cached.get("images")
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or tuple(images.shape) != shape:
        logger.warning("Rebuilding the image cache %s: it does not hold uint8 images of %s", named(path), shape)
        return None
    return images


def load_decoded(
    data_dir: Path, files: Sequence[Path], image_size: int, channels: int, cache_dir: Path | None
) -> torch.Tensor:
    """The decoded images, from the cache when it matches the files, else decoded now (and cached, where
    `cache_dir` is private and writable; None: no cache). A folder's cache file is named after its path."""
    started = time.perf_counter()
    cache_dir = private_cache_dir(cache_dir) if cache_dir is not None else None
    key = cache_key(data_dir, files, image_size, channels)
    prefix = f"{data_dir.name}-{hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]}"
    prefix += f"-{image_size}x{channels}"  # a cache per size: a run at another size keeps this one
    path = (cache_dir or Path()) / f"{prefix}-{key[:16]}.pt"
    shape = (len(files), channels, image_size, image_size)
    if cache_dir is not None and (images := read_cache(path, key, shape)) is not None:
        logger.info("Read %d decoded images from %s in %.2f s", len(files), named(path), time.perf_counter() - started)
        return images
    images = decode_all(files, image_size, channels)
    logger.info("Decoded %d images from %s in %.2f s", len(files), named(data_dir), time.perf_counter() - started)
    if cache_dir is not None:
        try:
            for old in cache_dir.glob(f"{glob.escape(prefix)}-*.pt"):  # the files changed: it is stale
                old.unlink()
            with written_atomically(path) as handle:
                torch.save({"listing": key, "images": images}, handle)
            logger.info("Cached them in %s (%.1f MB)", named(path), path.stat().st_size / 2**20)
        except OSError as e:
            logger.info("Not caching the decoded images (%s: %s)", named(cache_dir), e.strerror or e)
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


def check_image_args(channels: int, mean: Sequence[float], std: Sequence[float], image_size: int = 1) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"data_loader.args.image_size: expected a whole number >= 1, found {image_size!r}")
    if channels not in (1, 3):
        raise DataError(f"data_loader.args.channels: expected 1 (grey) or 3 (RGB), found {channels!r}")
    for key, value in (("mean", mean), ("std", std)):
        if len(value) not in (1, channels):
            raise DataError(f"data_loader.args.{key}: expected 1 or {channels} values, found {len(value)}")


def image_dataset(
    root: Path,
    files: Sequence[Path],
    targets: torch.Tensor,
    image_size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool,
    in_memory: bool,
    cache: bool,
    cache_dir: str | None,
) -> InMemoryImages:
    """The images under `root`, decoded once and kept (with `cache`, cached in `cache_dir`, null: the user's
    cache folder), or decoded a batch at a time (`in_memory` false); normalized, and augmented where asked, a
    batch at a time."""
    transform = flip_and_affine if augment else None
    if not in_memory:
        return ImageFiles(files, targets, image_size, channels, mean, std, transform)
    where = (Path(cache_dir) if cache_dir else cache_home()) if cache else None
    images = load_decoded(root, files, image_size, channels, where)
    return InMemoryImages(images, targets, 1 / 255, mean, std, transform)


def new_inputs(root: Path | None, preprocessing: dict | None) -> tuple[list[Path], list[int], list[str]]:
    """(files, targets (-1: unknown), class names) of the images to predict: the file `root`, or every image
    under the folder `root`, and the classes the checkpoint was trained on."""
    if root is None or preprocessing is None:
        raise DataError("the split 'predict' needs inputs (an image or a folder) and the checkpoint's classes")
    files = [root] if root.is_file() else find_images(root)
    if not files:
        raise DataError(f"{named(root)}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files, [-1] * len(files), list(preprocessing["classes"])


class ImageFolderDataLoader(BaseDataLoader):
    """Labelled images in one sub-folder per class; seeded "train", "valid" and "test" splits of the whole, by each
    file's path (`stratify`: each split takes its share of every class).

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
        stratify: bool = False,
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
        check_image_args(channels, mean, std, image_size)
        self.root = Path(inputs if split == "predict" and inputs is not None else data_dir)
        if split == "predict":
            files, targets, classes = new_inputs(self.root if inputs is not None else None, preprocessing)
            indices = torch.arange(len(files))
        else:
            files, targets, classes = scan_classes(self.root)
            if preprocessing is not None and preprocessing.get("classes") != classes:
                raise DataError(
                    f"{named(self.root)}: the class folders ({', '.join(map(named, classes))}) are not the classes "
                    f"the model was trained on ({', '.join(map(named, preprocessing.get('classes', [])))})"
                )
            keys = [f.relative_to(self.root).as_posix() for f in files]
            strata = [str(t) for t in targets] if stratify else None
            indices = split_indices(keys, validation_split, test_split, split_seed, strata)[split]
        dataset = image_dataset(
            self.root, files, torch.tensor(targets), image_size, channels, mean, std, augment, in_memory,
            cache and split != "predict", cache_dir,
        )  # fmt: skip
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
