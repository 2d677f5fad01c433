"""ImageFolderDataLoader's decoded-image cache and pixel decoding (issue 18): the cache is served only to the
files it was built from and only from a folder of the user's own, a damaged one is rebuilt, 16-bit and float
images are scaled rather than clipped, and a name that holds a newline keeps every message on one line."""

import json
import os
import re
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from data_loader import image_folder
from data_loader.image_folder import ImageFolderDataLoader
from data_loader.make_digit_images import save_png
from utils.errors import DataError


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> Path:
    """The decoded-image cache of these tests, away from the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "pytorch_template"


@pytest.fixture(autouse=True)
def data_log(caplog) -> pytest.LogCaptureFixture:
    caplog.set_level("INFO", logger="data")
    return caplog


def write_image(pixels: torch.Tensor | np.ndarray, path: Path) -> None:
    from PIL import Image

    if isinstance(pixels, torch.Tensor):  # uint8 (3, H, W)
        pixels = pixels.permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_folder(root: Path, seed: int = 0, suffix: str = ".png") -> Path:
    """Two classes of three random 8x8 RGB images each."""
    generator = torch.Generator().manual_seed(seed)
    for name in ("cat", "dog"):
        for i in range(3):
            write_image(
                torch.randint(0, 256, (3, 8, 8), generator=generator, dtype=torch.uint8),
                root / name / f"{i:02d}{suffix}",
            )
    return root


def decoded(root: Path, **options) -> torch.Tensor:
    """Every image of the folder as the loader holds it: uint8 (N, C, 8, 8), in file order."""
    loader = ImageFolderDataLoader(str(root), image_size=8, validation_split=0, test_split=0, **options)
    return loader.dataset.pixels(list(range(len(loader.files))))


def warnings_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


# --- what the cache serves -------------------------------------------------------------------------------------


def test_a_tensor_planted_at_the_cache_path_is_rebuilt_not_served(tmp_path, cache_home, data_log):
    root = write_folder(tmp_path / "images")
    real = decoded(root)
    [cache] = cache_home.glob("*.pt")
    torch.save(torch.zeros_like(real), cache)  # the right shape, at the path a run predicts from the listing
    data_log.clear()
    assert torch.equal(decoded(root), real)
    assert warnings_logged(data_log) == [f"Rebuilding the image cache {cache}: it was not built from these files"]
    assert "Decoded 6 images" in data_log.text
    data_log.clear()
    assert torch.equal(decoded(root), real) and "Read 6 decoded images" in data_log.text  # the rebuilt one is good


def test_a_cache_file_built_from_other_files_is_rebuilt(tmp_path, cache_home, data_log):
    a, b = write_folder(tmp_path / "a", seed=1), write_folder(tmp_path / "b", seed=2)
    pixels_a, pixels_b = decoded(a), decoded(b)
    assert not torch.equal(pixels_a, pixels_b)
    [cache_a], [cache_b] = cache_home.glob("a-*.pt"), cache_home.glob("b-*.pt")
    cache_b.write_bytes(cache_a.read_bytes())  # a's images under b's name
    data_log.clear()
    assert torch.equal(decoded(b), pixels_b)
    assert warnings_logged(data_log) == [f"Rebuilding the image cache {cache_b}: it was not built from these files"]


def test_a_file_put_back_with_its_old_size_and_mtime_is_decoded_again(tmp_path, data_log, monkeypatch):
    root = write_folder(tmp_path / "images", suffix=".bmp")  # uncompressed: other pixels, the same size
    first = decoded(root)
    target = root / "cat" / "00.bmp"  # the first file in sorted order
    before = target.stat()
    time.sleep(0.05)  # the kernel's ctime clock ticks every few milliseconds
    white = torch.full((3, 8, 8), 255, dtype=torch.uint8)
    write_image(white, target)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # what cp -p, tar and rsync -t do
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    data_log.clear()
    images = decoded(root)
    assert "Decoded 6 images" in data_log.text
    assert torch.equal(images[0], white) and torch.equal(images[1:], first[1:])
    # A warm start looks at the files' metadata only: not one image is decoded.
    monkeypatch.setattr(image_folder, "decode", lambda *args: pytest.fail(f"decoded {args[0]} on a warm start"))
    data_log.clear()
    assert torch.equal(decoded(root), images) and "Read 6 decoded images" in data_log.text


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda cache: cache.write_bytes(b"garbage\n"), id="echo-garbage"),
        pytest.param(lambda cache: cache.write_bytes(cache.read_bytes()[:200]), id="truncated"),
        pytest.param(lambda cache: cache.write_bytes(b""), id="empty"),
    ],
)
def test_a_damaged_cache_file_is_rebuilt_with_a_line_saying_so(tmp_path, cache_home, data_log, damage):
    root = write_folder(tmp_path / "images")
    real = decoded(root)
    [cache] = cache_home.glob("*.pt")
    damage(cache)
    data_log.clear()
    assert torch.equal(decoded(root), real)
    [line] = warnings_logged(data_log)
    assert line.startswith(f"Rebuilding the damaged image cache {cache} (unreadable: ")
    assert "\n" not in line and "weights_only" not in line
    data_log.clear()
    assert torch.equal(decoded(root), real) and "Read 6 decoded images" in data_log.text


# --- where the cache is kept -----------------------------------------------------------------------------------


def test_the_cache_folder_is_private_and_one_others_can_write_is_not_used(tmp_path, cache_home, data_log):
    root = write_folder(tmp_path / "images")
    umask = os.umask(0o022)  # a usual umask, which would leave a folder made without a mode at 0755
    try:
        real = decoded(root)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(cache_home.stat().st_mode) == 0o700
    [cache] = cache_home.glob("*.pt")
    written = cache.stat().st_mtime_ns
    cache_home.chmod(0o777)  # as /tmp is, or a folder shared with a group
    data_log.clear()
    assert torch.equal(decoded(root), real)
    assert warnings_logged(data_log) == [
        f"Not using the image cache folder {cache_home}: others can write to it (mode 0777), so a file planted "
        "there would be served as the images; decoding without a cache (chmod 700 it, or set cache_dir to a "
        "folder of your own)"
    ]
    assert "Decoded 6 images" in data_log.text and "Read" not in data_log.text
    assert list(cache_home.glob("*.pt")) == [cache] and cache.stat().st_mtime_ns == written  # neither read nor written


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="giving a folder away takes root")
def test_a_cache_folder_of_another_user_is_not_used(tmp_path, data_log):
    root = write_folder(tmp_path / "images")
    cache_dir = tmp_path / "theirs"
    real = decoded(root, cache_dir=str(cache_dir))
    os.chown(cache_dir, 12345, -1)
    data_log.clear()
    assert torch.equal(decoded(root, cache_dir=str(cache_dir)), real)
    [line] = warnings_logged(data_log)
    assert line.startswith(f"Not using the image cache folder {cache_dir}: it belongs to another user (uid 12345)")
    assert "Read" not in data_log.text


# --- pixels ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize(
    ("dtype", "suffix", "top", "middle", "expected_middle"),
    [
        pytest.param(np.uint16, ".png", 65535, 30000, 117, id="16-bit-png-I;16"),  # 30000 / 65535 * 255 = 116.7
        pytest.param(np.int32, ".tif", 65535, 30000, 117, id="32-bit-int-tiff-I"),
        pytest.param(np.float32, ".tif", 1.0, 0.25, 64, id="float-tiff-F"),  # 0.25 * 255 = 63.75
    ],
)
def test_16_bit_and_float_images_are_scaled_by_their_range_not_clipped(
    tmp_path, dtype, suffix, top, middle, expected_middle, in_memory
):
    pixels = np.full((8, 8), middle, dtype=dtype)
    pixels[0, 0], pixels[7, 7] = 0, top
    write_image(pixels, tmp_path / "images" / "grey" / f"00{suffix}")
    expected = torch.full((3, 8, 8), expected_middle, dtype=torch.uint8)
    expected[:, 0, 0], expected[:, 7, 7] = 0, 255
    [image] = decoded(tmp_path / "images", in_memory=in_memory)
    assert torch.equal(image, expected)
    [grey] = decoded(tmp_path / "images", in_memory=in_memory, channels=1, mean=[0.5], std=[0.5])
    assert torch.equal(grey, expected[:1])


# --- names in messages -----------------------------------------------------------------------------------------

ODD = "a\nb"  # a folder name holding a newline
ODD_SHOWN = json.dumps(ODD)[1:-1]  # a\nb with a backslash, as the JSON-quoted name shows it


def empty_class(root: Path) -> dict:
    (root / ODD).mkdir(parents=True)
    return {}


def unreadable_image(root: Path) -> dict:
    write_image(np.zeros((8, 8), np.uint8), root / ODD / "00.png")
    (root / ODD / "01.png").write_bytes(b"not a png")
    return {}


def missing_folder(root: Path) -> dict:
    return {"data_dir": str(root.parent / f"missing{ODD}")}


def other_classes(root: Path) -> dict:
    write_image(np.zeros((8, 8), np.uint8), root / ODD / "00.png")
    return {"preprocessing": {"classes": ["cat"]}}


def nothing_to_predict(root: Path) -> dict:
    (root / ODD).mkdir(parents=True)
    return {"split": "predict", "inputs": str(root / ODD), "preprocessing": {"classes": ["cat"]}}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (empty_class, "class folder with no images"),
        (unreadable_image, "unreadable image"),
        (missing_folder, "image folder not found"),
        (other_classes, "are not the classes the model was trained on"),
        (nothing_to_predict, "no images"),
    ],
)
def test_a_name_holding_a_newline_keeps_the_error_on_one_line(tmp_path, make, message):
    root = tmp_path / "images"
    options = {"data_dir": str(root), **make(root)}
    with pytest.raises(DataError, match=message) as error:
        ImageFolderDataLoader(image_size=8, validation_split=0, test_split=0, **options)
    assert "\n" not in str(error.value)
    assert re.search(rf'"[^"]*{re.escape(ODD_SHOWN)}[^"]*"', str(error.value))  # JSON-quoted, quotes and all


def test_log_lines_quote_a_folder_name_holding_a_newline(tmp_path, data_log):
    root = write_folder(tmp_path / f"images{ODD}")
    decoded(root)
    decoded(root)
    lines = [r.getMessage() for r in data_log.records]
    assert any(line.startswith("Decoded 6 images from") for line in lines)
    assert any(line.startswith("Read 6 decoded images from") for line in lines)
    assert all("\n" not in line and f"images{ODD_SHOWN}" in line for line in lines), lines


def test_the_image_cache_never_follows_a_link_at_a_temporary_name(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    root = tmp_path / "images"
    for c in ("a", "b"):
        save_png(torch.full((3, 8, 8), 40, dtype=torch.uint8), root / c / "0.png")
    ImageFolderDataLoader(str(root), image_size=8)  # the cache's file name, to plant a link beside it
    [made] = (cache / "pytorch_template").glob("*.pt")
    made.unlink()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (made.parent / f".{made.name}.tmp").symlink_to(victim)
    ImageFolderDataLoader(str(root), image_size=8)
    assert victim.read_text() == "keep me" and made.is_file() and not made.is_symlink()


def test_a_photo_is_decoded_upright_as_its_exif_orientation_says(tmp_path):
    from PIL import Image

    from data_loader.image_folder import decode

    wide = torch.zeros(3, 4, 8, dtype=torch.uint8)  # stored 8 wide and 4 high, a bright left column
    wide[:, :, 0] = 255
    image = Image.fromarray(wide.permute(1, 2, 0).numpy())
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view (a phone held upright)
    image.save(tmp_path / "photo.jpg", exif=exif, quality=100)
    upright = decode(tmp_path / "photo.jpg", 8, 3)  # viewed: 4 wide, 8 high, resized to 8x8
    assert upright[0, 0, :].float().mean() > 200 and upright[0, -1, :].float().mean() < 60  # the bright row on top
