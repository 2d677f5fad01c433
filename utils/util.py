"""Small helpers shared by the entry points and the trainer: JSON files and seeding.

torch and NumPy are imported inside the functions that need them, so that parsing the command line and
validating a config (which use read_json) answer without loading torch.
"""

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

from utils.errors import ConfigError

logger = logging.getLogger(__name__)


def read_json(path: str | Path) -> Any:
    """Read a JSON file; every failure is a ConfigError naming the file."""
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO would block, /dev/zero never ends
        raise ConfigError(f"{path}: not a regular file; pass a JSON file")
    try:
        text = path.read_text(encoding="utf-8")
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

    return json.loads(text, object_pairs_hook=unique, parse_constant=no_constant)


def write_json(content: Any, path: str | Path) -> None:
    """Write JSON atomically: a reader never sees a half-written file, and a failure leaves no temporary."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=4)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    """JSON to a file the user named: atomically for a regular file; written straight through for what is not
    one (a device, a FIFO), which an atomic replace would destroy; `-` is standard output."""
    if str(path) == "-":
        print(json.dumps(content, indent=4))
        return
    try:
        if path.exists() and not path.is_file():
            with path.open("w", encoding="utf-8") as handle:
                handle.write(json.dumps(content, indent=4) + "\n")
            return
        write_json(content, path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot be written ({e.strerror or e})") from None


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch (all devices); called once from main, never at import."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs this set before its first use to be deterministic (see torch.use_deterministic_algorithms).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
