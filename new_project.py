"""Copy this template into a new project folder, ready to train.

python new_project.py ../myproj
cd ../myproj && python train.py -c config.json
"""

import shutil
import subprocess
from pathlib import Path

from parse_config import ArgumentParser
from utils.errors import ConfigError, one_line_errors

TEMPLATE = Path(__file__).resolve().parent
# Never copied: version control, runs, downloaded data, caches and virtual environments.
SKIPPED = {
    ".git",
    "saved",
    "data",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".benchmarks",
    ".venv",
    "venv",
}


# Never copied from the template's top level: what measures the template itself, not a user's project.
SKIPPED_AT_TOP = {"benchmarks"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    skipped = SKIPPED | (SKIPPED_AT_TOP if Path(folder) == TEMPLATE else set())
    return {n for n in names if n in skipped or n.endswith((".pyc", ".egg-info"))}


def tracked_files() -> list[Path] | None:
    """The files of the template that git tracks (as they are in the working tree now), or None outside a git
    checkout: a stray file beside them (notes, a .env, a large checkpoint) is not the template."""
    if not (TEMPLATE / ".git").exists() or shutil.which("git") is None:
        return None
    listed = subprocess.run(["git", "-C", str(TEMPLATE), "ls-files", "-z"], capture_output=True, check=False)
    if listed.returncode != 0:
        return None
    paths = [Path(name) for name in listed.stdout.decode().split("\0") if name]
    return [p for p in paths if p.parts[0] not in SKIPPED_AT_TOP and (TEMPLATE / p).is_file()]


def check_target(target: Path) -> None:
    """Refuse a target that would overwrite or nest anything; nothing is written before this passes."""
    if not str(target).isprintable():
        raise ConfigError(f"{str(target)!r}: a folder name with control characters (a newline?); choose another")
    if target == TEMPLATE or TEMPLATE in target.parents:
        raise ConfigError(f"{target}: is inside the template itself; choose a folder outside {TEMPLATE}")
    if target.is_file():
        raise ConfigError(f"{target}: is an existing file; choose a new folder name")
    if target.is_dir() and any(target.iterdir()):
        raise ConfigError(f"{target}: folder exists and is not empty; choose a new folder name")


def main(target: str | Path) -> Path:
    """Copy the template to `target` (new or empty); return the new project's path."""
    target = Path(target).expanduser().resolve()
    check_target(target)
    files = tracked_files()
    if files is None:  # a copy without git (a downloaded archive): everything but runs, data and caches
        shutil.copytree(TEMPLATE, target, ignore=_ignore, dirs_exist_ok=True)
    for path in files or []:
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(TEMPLATE / path, target / path)
    (target / "saved").mkdir(exist_ok=True)
    (target / "saved" / ".gitkeep").touch()
    return target


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Create a new project from this template: the files git tracks (without git: everything but "
        ".git, saved runs, data and caches), benchmarks/ left out.",
        epilog="example:\n  python new_project.py ../myproj && cd ../myproj && python train.py -c config.json",
    )
    parser.add_argument("target", help="folder to create (must not exist, or be empty)")
    return parser


if __name__ == "__main__":
    with one_line_errors(interrupted="stopped while copying; remove the target folder and try again"):
        try:
            created = main(build_parser().parse_args().target)
        except OSError as e:
            raise ConfigError(f"could not create the project: {e}") from None
    print(f"New project in {created}\nNext: cd {created} && python train.py -c config.json")
