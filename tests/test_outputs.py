"""The files the commands write for a user (predictions CSVs, results JSON) and for a run (its config.json):
written straight through to a device or a FIFO and never put in its place; a temporary file nobody can plant
a link at; cells a spreadsheet would run as formulas written as text."""

import csv
import errno
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from utils.errors import ConfigError
from utils.util import output_file, write_csv, write_json

# Each writer with what it writes, as bytes on disk.
WRITERS: dict[str, tuple[Callable[[Path], None], bytes]] = {
    "csv": (
        lambda path: write_csv(["id", "prediction"], [["a1", "cat"]], path, raw=False),
        b"id,prediction\r\na1,cat\r\n",
    ),
    "json": (lambda path: write_json({"accuracy": 0.5}, path), b'{\n    "accuracy": 0.5\n}\n'),
}


def read_fifo_while(fifo: Path, write: Callable[[], object]) -> bytes:
    """Call `write` while a reader holds the FIFO open; return what the reader got (b"" when nothing was written
    to the FIFO itself). What is written must fit in the pipe's buffer (64 KiB): it is read after `write`."""
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open first, so that opening it to write does not wait
    try:
        write()
        os.set_blocking(reader, True)
        chunks = []
        while chunk := os.read(reader, 65536):  # b"" once the writer has closed it, or if none ever opened it
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(reader)


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("writer", WRITERS)
def test_a_fifo_or_a_device_is_written_through_and_never_replaced(writer, kind, tmp_path):
    write, expected = WRITERS[writer]
    path = tmp_path / f"out.{writer}"
    if kind == "fifo":
        os.mkfifo(path)
        assert read_fifo_while(path, lambda: write(path)) == expected
        assert stat.S_ISFIFO(os.lstat(path).st_mode)
    else:  # a node of /dev/null's kind (1, 3): as root, `--out /dev/null` would replace the system's own
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root")
        write(path)
        assert stat.S_ISCHR(os.lstat(path).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


@pytest.mark.parametrize("writer", WRITERS)
def test_a_link_at_a_temporary_name_is_never_followed_and_a_failure_leaves_nothing(writer, tmp_path, monkeypatch):
    write, expected = WRITERS[writer]
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    path = tmp_path / f"p.{writer}"
    planted = tmp_path / f".{path.name}.tmp"  # the temporary file's name was known in advance
    planted.symlink_to(victim)
    before = sorted(p.name for p in tmp_path.iterdir())

    def disk_full(source: str, target: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", disk_full)  # a file a run owns (config.json) is renamed into place,
        patch.setattr(os, "link", disk_full)  # an output the user named is linked: never over another file
        with pytest.raises((ConfigError, OSError), match="No space left on device"):
            write(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # the failed write left nothing, removed nothing
    write(path)
    assert victim.read_text() == "keep me" and planted.is_symlink() and planted.resolve() == victim
    assert not path.is_symlink() and path.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, path.name])
    (tmp_path / "new.txt").write_text("")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "new.txt").stat().st_mode)  # as any file


def test_cells_a_spreadsheet_would_run_get_a_quote_unless_raw_and_numbers_stay_numbers(tmp_path):
    texts = [
        '=HYPERLINK("http://x","y")',
        "+1+1",
        "-2+3",
        "@SUM(A1)",
        "\tx",
        "\rx",
        "-",
        "plain",
        "-1.5",
        "+3",
        "1e-07",
    ]
    quoted = ['\'=HYPERLINK("http://x","y")', "'+1+1", "'-2+3", "'@SUM(A1)", "'\tx", "'\rx", "'-", "plain", "-1.5"]
    quoted += ["+3", "1e-07"]  # a number written as text is not a formula
    rows = [[text, text, -1.5, float("-inf")] for text in texts]
    for raw, name in ((False, "safe.csv"), (True, "raw.csv")):
        write_csv(["id", "prediction", "value", "low"], rows, tmp_path / name, raw=raw)
    with (tmp_path / "safe.csv").open(newline="") as handle:
        safe = list(csv.reader(handle))[1:]
    assert [r[0] for r in safe] == [r[1] for r in safe] == quoted
    assert all(r[2:] == ["-1.5", "-inf"] for r in safe)  # numbers (a negative regression value) are never quoted
    with (tmp_path / "raw.csv").open(newline="") as handle:
        assert [r[:2] for r in list(csv.reader(handle))[1:]] == [[t, t] for t in texts]


def rows_of(text: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text.decode(), newline="")))


def test_an_output_that_appears_while_it_is_written_is_kept(tmp_path):
    """An output the user named is never overwritten, also when another program creates it meanwhile."""
    path = tmp_path / "p.csv"
    appeared = r"p\.csv: a file appeared there while this one was written; it is kept"
    with pytest.raises(ConfigError, match=appeared), output_file(path, newline="", replace=False) as handle:
        handle.write("ours\n")
        path.write_text("precious\n")  # another program, meanwhile
    assert path.read_text() == "precious\n" and sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]


def test_strip_extension_takes_only_an_image_files_extension_and_never_merges_two_ids():
    from predict import without_image_extension

    ids = ["cats/0001.png", "sub.dir/a.b/7.JPG", "v1.final", "12"]
    assert without_image_extension(ids) == ["cats/0001", "sub.dir/a.b/7", "v1.final", "12"]
    with pytest.raises(
        ConfigError, match=r"^--strip-extension: x\.tar\.png and x\.tar\.jpg would both be written as x\.tar$"
    ):
        without_image_extension(["x.tar.png", "x.tar.jpg"])
