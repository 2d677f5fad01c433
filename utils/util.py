"""Small helpers shared by the entry points and the trainer: JSON files, output files and seeding.

torch and NumPy are imported inside the functions that need them, so that parsing the command line and
validating a config (which use read_json) answer without loading torch.
"""

import contextlib
import csv
import importlib
import importlib.util
import json
import math
import os
import pkgutil
import random
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, Any, TextIO

from utils.errors import ConfigError, describe_exception


def read_json(path: str | Path) -> Any:
    """Read a JSON file; every failure is a ConfigError naming the file."""
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO would block, /dev/zero never ends
        raise ConfigError(f"{path}: not a regular file; pass a JSON file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Notepad's UTF-8) is not JSON: dropped
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a JSON file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it ({e})") from None
    try:
        return strict_json_loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply to be a config") from None
    except ValueError as e:  # a duplicate key or NaN / Infinity, from the hooks below
        raise ConfigError(f"{path}: {e}") from None


def strict_json_loads(text: str) -> Any:
    """json.loads, refusing what Python's json accepts and a config must not hold: a key twice in one object
    (JSON keeps the last silently) and NaN / Infinity (not JSON; NaN compares false with everything)."""

    def unique(pairs: list[tuple[str, Any]]) -> dict:
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ValueError(f"key {repeated[0]!r} appears twice in one object; keep one")
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a number a config can hold")

    def finite(number: str) -> float:
        value = float(number)
        if not math.isfinite(value):  # 1e400: beyond a float's range, it would read as Infinity
            raise ValueError(f"{number} is beyond the range of a number a config can hold")
        return value

    return json.loads(text, object_pairs_hook=unique, parse_constant=no_constant, parse_float=finite)


def write_json(content: Any, path: str | Path, replace: bool = True) -> None:
    """Write JSON through output_file: atomically, and straight through to a device or a FIFO."""
    with output_file(Path(path), replace=replace) as handle:
        json.dump(json_safe(content), handle, indent=4)
        handle.write("\n")


def json_safe(value: Any) -> Any:
    """NaN and infinities (an undefined metric) as null: JSON has no word for them, and parsers refuse `NaN`."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return [json_safe(v) for v in value] if isinstance(value, list) else value


def cache_home() -> Path:
    """This template's folder in the user's cache: decoded images, the key that signs sweeps' state."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytorch_template"


@contextlib.contextmanager
def written_atomically(
    path: Path, mode: str = "wb", replace: bool = True, permissions: int = 0o666, **open_args: Any
) -> Iterator[IO]:
    """A handle whose content becomes the regular file `path` when the block ends: written into a new temporary
    file beside it, flushed to disk, then renamed over `path` (`replace`) or linked to its name, which raises
    FileExistsError if a file is there. A reader never sees half a file; a failure leaves no temporary.

    The temporary file has an unpredictable name made with O_EXCL: never an existing file, nor a link planted at
    a name known in advance. `permissions` 0o666 keeps the umask's (mkstemp's are 0600)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")  # .*.tmp: what a resume clears up
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, permissions)
    try:
        with os.fdopen(descriptor, mode, **open_args) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def output_file(path: Path, newline: str | None = None, replace: bool = True) -> Iterator[TextIO]:
    """A UTF-8 text handle whose content becomes the file `path` when the block ends, written atomically (see
    written_atomically); without `replace`, a file that appeared there meanwhile is kept and this is one line (an
    output the user named is never overwritten). A device or a FIFO is written straight through: a rename would
    put a regular file in its place (as root, `--out /dev/null` would replace the system's)."""
    try:
        if _is_device_or_fifo(path):
            # O_NOFOLLOW: a link put there since is refused (ELOOP), not followed; no O_CREAT: nothing new is made.
            descriptor = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(descriptor, "w", encoding="utf-8", newline=newline) as handle:
                yield handle
            return
        with written_atomically(path, "w", replace, encoding="utf-8", newline=newline) as handle:
            yield handle
    except FileExistsError:
        raise ConfigError(f"{path}: a file appeared there while this one was written; it is kept") from None
    except OSError as e:  # a full disk, no permission, a name too long
        raise ConfigError(f"{path}: cannot be written ({e.strerror or e})") from None


def _is_device_or_fifo(path: Path) -> bool:
    """Whether `path` itself (not a link's target) is something else than a file, a folder or a link."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


def check_output_path(path: Path) -> None:
    """Refuse, before any work, an output the user named that cannot be written as they mean it."""
    if str(path) == "-":  # standard output
        return
    if not str(path).isprintable():
        raise ConfigError(f"{str(path)!r}: a file name with control characters (a newline?); choose another")
    try:
        _check_output_path(path)
    except OSError as e:  # a name too long, a path the system refuses to look at
        raise ConfigError(f"{path}: cannot be written ({e.strerror or e})") from None


def _check_output_path(path: Path) -> None:
    if path.is_symlink():
        raise ConfigError(f"{path}: is a symbolic link; pass the path of the file itself")
    if path.is_file():
        raise ConfigError(f"{path}: exists; choose a new file name (an existing file is never overwritten)")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; pass a file name")
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: folder {path.parent} does not exist; create it first")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise ConfigError(f"{path}: cannot be written (no permission); pass --out with a writable path")


def write_output(content: Any, path: Path) -> None:
    """JSON to a file the user named (see output_file); `-` is standard output."""
    if str(path) == "-":
        print(json.dumps(json_safe(content), indent=4))
        return
    write_json(content, path, replace=False)


def seed_everything(seed: int, deterministic: bool, num_threads: int | None = None) -> None:
    """Seed Python, NumPy and torch (all devices), and set torch's threads (None: torch's default); called
    once from main, never at import."""
    import numpy as np
    import torch

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs this set before its first use to be deterministic (see torch.use_deterministic_algorithms).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


# What a spreadsheet opening a CSV reads as the start of a formula (OWASP, "CSV Injection"), and a plain number,
# which starts with + or - and is harmless: -1.5 stays a number.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: Any, raw: bool = False) -> Any:
    """A cell of every CSV file the project writes: a float in full, and unless `raw`, a text cell that a
    spreadsheet would read as a formula with a leading single quote."""
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if not raw and isinstance(value, str) and value.startswith(FORMULA_STARTS) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value  # OWASP's advice: the cell is shown as the text it is, never evaluated
    return value


def write_csv(header: list[str], rows: list[list[Any]], path: Path, *, raw: bool, replace: bool = False) -> None:
    """The one CSV writer (predictions, oof.csv, a sweep's trials.csv): the rows, written by output_file
    (atomically; straight through to a device or a FIFO); a file the user named is never replaced unless
    `replace`. Every cell is a `csv_cell`: unless `raw`, a formula is defused."""
    with output_file(path, newline="", replace=replace) as handle:
        writer = csv.writer(handle)
        writer.writerow([csv_cell(v, raw) for v in header])
        writer.writerows([[csv_cell(v, raw) for v in row] for row in rows])


def imported(name: str, is_package: bool = False) -> ModuleType:
    """A project module by its dotted name; one that does not import is one line naming its file, not a traceback."""
    try:
        return importlib.import_module(name)
    except Exception as e:  # a user's file: a syntax error, an import of something not installed, ...
        path = name.replace(".", "/") + ("/__init__.py" if is_package else ".py")
        raise ConfigError(f"{path} could not be imported: {describe_exception(e)}") from None


def feature_module(name: str, feature: str, needed_by: str) -> ModuleType:
    """The module `name` of a feature, which the core never imports by itself: a command that needs it (a config
    section, a flag) asks for it here, by name; a project made without the feature gets one line saying so."""
    if importlib.util.find_spec(name) is None:
        raise ConfigError(
            f"{needed_by}: needs the {feature} feature, which this project was made without; the template's "
            f"new_project.py adds it: python TEMPLATE/new_project.py {Path(__file__).resolve().parents[1]} "
            f"--with {feature}"
        )
    return imported(name)


def package_modules(package: str) -> list[ModuleType]:
    """Every file and sub-package of the project's package `package`, imported, by name: where the parts of a
    role are found (models in model/, loaders in data_loader/, trackers in logger/), with nothing to register."""
    found = sorted(pkgutil.iter_modules(imported(package, is_package=True).__path__), key=lambda m: m.name)
    return [imported(f"{package}.{m.name}", m.ispkg) for m in found]
