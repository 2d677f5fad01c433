"""Write scikit-learn's bundled 8x8 digits as a folder of RGB PNG images, one sub-folder per class (a real image
folder to try ImageFolderDataLoader and config_transfer.json on, offline), or in Kaggle's layout of a binary
competition (the kaggle feature's config_kaggle.json).

python -m data_loader.make_digit_images data/digit_images          # 1,797 images, 32x32
python -m data_loader.make_digit_images data/many_digits --copies 6  # 10,782 images (shifted copies)
python -m data_loader.make_digit_images data/new_digits --flat     # no class folders, shifted: inputs for predict.py
python -m data_loader.make_digit_images data/kaggle_digits --kaggle  # train.csv + train/, test.csv + test/: is it a 3?
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from utils.errors import ConfigError, one_line_errors


def rgb_digits(size: int, classes: int = 10, shift: int = 0) -> tuple[torch.Tensor, list[int]]:
    """The digits of the first `classes` classes as (N, 3, size, size) uint8 RGB, upsampled, shifted by `shift`
    pixels and tinted by it, and their classes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = torch.from_numpy(digits.target) < classes
    images = torch.from_numpy(digits.images)[keep].float().unsqueeze(1) / 16  # (N, 1, 8, 8) in [0, 1]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    moved = torch.roll(images, shifts=(shift % 3, shift % 2), dims=(2, 3))
    tint = torch.tensor([1.0, 0.8 + 0.05 * (shift % 5), 0.6 + 0.1 * (shift % 4)]).view(1, 3, 1, 1)
    return (moved * tint * 255).round().clamp(0, 255).to(torch.uint8), digits.target[keep.numpy()].tolist()


def save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def write_digit_images(
    folder: Path, size: int = 32, copies: int = 1, classes: int = 10, flat: bool = False, offset: int = 0
) -> int:
    """Write the digits of the first `classes` classes, upsampled to size x size RGB, `copies` times (copy c
    shifted by c pixels and tinted, so no two files are equal); return the number of files written.

    `flat`: all files in `folder` itself, named by their index, with no class sub-folders.
    `offset`: the shift of the first copy (a folder of "new" images differs from the training folder).
    """
    written = 0
    for copy in range(copies):
        rgb, targets = rgb_digits(size, classes, copy + offset)
        for index, (image, target) in enumerate(zip(rgb, targets, strict=True)):
            name = f"{copy:02d}_{index:04d}.png"
            save_png(image, folder / name if flat else folder / str(target) / name)
            written += 1
    return written


def write_kaggle_layout(folder: Path, size: int = 32, positive: int = 3) -> int:
    """A binary image competition in Kaggle's layout, from the digits: is it a `positive` (about 1 in 10)?

        train.csv (image_name,target) and train/<image_name>.png    about 80 % of the digits
        test.csv (image_name) and test/<image_name>.png             the rest, unlabelled, in a shuffled order
        solution.csv (image_name,target)                            the test's answers, which Kaggle keeps

    Return the number of images written."""
    rgb, classes = rgb_digits(size)
    order = torch.randperm(len(rgb), generator=torch.Generator().manual_seed(0)).tolist()
    in_test = set(order[: len(order) // 5])
    rows: dict[str, list[str]] = {"train": [], "test": [], "solution": []}
    for index in order:  # Kaggle's files are not sorted by name
        name, target = f"digit_{index:04d}", int(classes[index] == positive)
        part = "test" if index in in_test else "train"
        save_png(rgb[index], folder / part / f"{name}.png")
        if part == "test":
            rows["test"].append(name)
            rows["solution"].append(f"{name},{target}")
        else:
            rows["train"].append(f"{name},{target}")
    headers = {"train": "image_name,target", "test": "image_name", "solution": "image_name,target"}
    for part, lines in rows.items():
        (folder / f"{part}.csv").write_text("\n".join([headers[part], *lines]) + "\n")
    return len(order)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the bundled digits as a folder of PNG images.")
    parser.add_argument("folder", type=Path, help="where to write (must not exist, or be empty)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default: 32)")
    parser.add_argument("--copies", type=int, default=1, help="shifted copies of each digit (default: 1)")
    parser.add_argument("--classes", type=int, default=10, help="the first N digit classes (default: 10)")
    parser.add_argument(
        "--flat", action="store_true", help="no class folders, each digit shifted by a pixel: new inputs for predict.py"
    )
    parser.add_argument(
        "--kaggle", action="store_true", help="Kaggle's layout (train.csv + train/, test.csv + test/): is it a 3?"
    )
    args = parser.parse_args()
    if args.folder.exists() and (not args.folder.is_dir() or any(args.folder.iterdir())):
        raise ConfigError(f"{args.folder}: exists and is not an empty folder; choose a new one")
    if not (4 <= args.size <= 1024 and 1 <= args.copies <= 100 and 2 <= args.classes <= 10):
        raise ConfigError("--size 4..1024, --copies 1..100 and --classes 2..10 are supported")
    if args.kaggle:
        count = write_kaggle_layout(args.folder, args.size)
    else:
        count = write_digit_images(args.folder, args.size, args.copies, args.classes, args.flat, offset=int(args.flat))
    print(f"Wrote {count} images to {args.folder}")


if __name__ == "__main__":
    with one_line_errors(interrupted="stopped; the folder may hold some of the images"):
        main()
