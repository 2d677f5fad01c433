"""Write scikit-learn's bundled 8x8 digits as a folder of RGB PNG images, one sub-folder per class: a real
image folder to try ImageFolderDataLoader and config_transfer.json on, offline.

python -m data_loader.make_digit_images data/digit_images          # 1,797 images, 32x32
python -m data_loader.make_digit_images data/many_digits --copies 6  # 10,782 images (shifted copies)
python -m data_loader.make_digit_images data/new_digits --flat     # no class folders, shifted: inputs for predict.py
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from utils.errors import ConfigError, one_line_errors


def write_digit_images(
    folder: Path, size: int = 32, copies: int = 1, classes: int = 10, flat: bool = False, offset: int = 0
) -> int:
    """Write the digits of the first `classes` classes, upsampled to size x size RGB, `copies` times (copy c
    shifted by c pixels and tinted, so no two files are equal); return the number of files written.

    `flat`: all files in `folder` itself, named by their index, with no class sub-folders.
    `offset`: the shift of the first copy (a folder of "new" images differs from the training folder).
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = torch.from_numpy(digits.target) < classes
    images = torch.from_numpy(digits.images)[keep].float().unsqueeze(1) / 16  # (N, 1, 8, 8) in [0, 1]
    targets = torch.from_numpy(digits.target)[keep]
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    written = 0
    for copy in range(copies):
        shift = copy + offset
        moved = torch.roll(images, shifts=(shift % 3, shift % 2), dims=(2, 3))
        tint = torch.tensor([1.0, 0.8 + 0.05 * (shift % 5), 0.6 + 0.1 * (shift % 4)]).view(1, 3, 1, 1)
        rgb = (moved * tint * 255).round().clamp(0, 255).to(torch.uint8)  # (N, 3, size, size)
        for index, (image, target) in enumerate(zip(rgb, targets.tolist(), strict=True)):
            name = f"{copy:02d}_{index:04d}.png"
            path = folder / name if flat else folder / str(target) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the bundled digits as a folder of PNG images.")
    parser.add_argument("folder", type=Path, help="where to write (must not exist, or be empty)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default: 32)")
    parser.add_argument("--copies", type=int, default=1, help="shifted copies of each digit (default: 1)")
    parser.add_argument("--classes", type=int, default=10, help="the first N digit classes (default: 10)")
    parser.add_argument(
        "--flat", action="store_true", help="no class folders, each digit shifted by a pixel: new inputs for predict.py"
    )
    args = parser.parse_args()
    if args.folder.exists() and (not args.folder.is_dir() or any(args.folder.iterdir())):
        raise ConfigError(f"{args.folder}: exists and is not an empty folder; choose a new one")
    if not (4 <= args.size <= 1024 and 1 <= args.copies <= 100 and 2 <= args.classes <= 10):
        raise ConfigError("--size 4..1024, --copies 1..100 and --classes 2..10 are supported")
    count = write_digit_images(args.folder, args.size, args.copies, args.classes, args.flat, offset=int(args.flat))
    print(f"Wrote {count} images to {args.folder}")


if __name__ == "__main__":
    with one_line_errors(interrupted="stopped; the folder may hold some of the images"):
        main()
