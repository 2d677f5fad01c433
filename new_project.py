"""Copy this template into a new project folder, ready to train: the core, and the features asked for.

python new_project.py ../myproj                       # the core: train, test and predict on your own data
python new_project.py ../myproj --with sweeps,text    # the core and these features (--with all: everything)
python new_project.py --list                          # each feature and what it adds
python new_project.py ../myproj --with cv             # later: add a feature to a project made without it
cd ../myproj && python train.py -c config.json
"""

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cli import ArgumentParser
from utils.errors import ConfigError, did_you_mean, one_line_errors

TEMPLATE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Feature:
    """A part a project opts into: its files and folders (code, tests, requirements file, example configs and its
    docs/ page). Leaving it out needs no edit of any other file: the core imports none of it, and the parts of a
    role (models, data loaders) are found by scanning their package."""

    summary: str
    files: tuple[str, ...]
    requires: tuple[str, ...] = ()  # features it builds on, added with it


FEATURES = {
    "images": Feature(
        "image folders, torchvision data sets and backbones, transfer learning and fine-tuning: config_transfer.json",
        (
            "data_loader/image_folder.py",
            "data_loader/make_digit_images.py",
            "data_loader/torchvision_data.py",
            "model/torchvision_model.py",
            "config_transfer.json",
            "tests/test_transfer.py",
            "tests/test_image_cache.py",
            "tests/test_torchvision_data.py",
            "docs/images.md",
        ),
    ),
    "csv": Feature(
        "your own CSV tables: numeric features, classification, binary or regression (CsvDataLoader)",
        ("data_loader/csv_data.py", "tests/test_csv.py", "docs/csv.md"),
    ),
    "sweeps": Feature(
        "hyper-parameter sweeps with Ray Tune and Optuna: tune.py, sweep/, space.json",
        ("tune.py", "sweep", "space.json", "requirements-tune.txt", "tests/test_tune.py", "docs/sweeps.md"),
    ),
    "text": Feature(
        "text classification with Hugging Face transformers: HuggingFaceModel, TextCsvDataLoader",
        (
            "model/huggingface.py",
            "utils/huggingface.py",
            "data_loader/text_csv.py",
            "requirements-hf.txt",
            "tests/test_text.py",
            "docs/text.md",
        ),
        requires=("csv",),
    ),
    "wandb": Feature(
        "Weights & Biases: a run's numbers, images and checkpoints to a W&B run too, test.py's results to its summary",
        ("logger/wandb_writer.py", "requirements-wandb.txt", "tests/test_wandb.py", "docs/wandb.md"),
    ),
    "cv": Feature(
        "k-fold cross-validation (train.py --folds K): out-of-fold predictions and scores, fold ensembles and "
        "test-time augmentation in test.py and predict.py",
        ("trainer/cross_validation.py", "trainer/ensemble.py", "tests/test_cross_validation.py", "docs/cv.md"),
    ),
    "kaggle": Feature(
        "Kaggle image competitions: train.csv/test.csv with image folders to a submission, 5 folds to one "
        "(config_kaggle.json, config_kaggle_cv.json), timm backbones (TimmModel)",
        (
            "data_loader/csv_images.py",
            "model/timm_model.py",
            "requirements-kaggle.txt",
            "tests/test_timm.py",
            "config_kaggle.json",
            "config_kaggle_cv.json",
            "tests/test_kaggle.py",
            "docs/kaggle.md",
        ),
        requires=("csv", "images", "cv"),
    ),
}

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


def owner(path: Path) -> str | None:
    """The feature a template file belongs to, or None for the core."""
    for name, feature in FEATURES.items():
        if any(path == Path(f) or Path(f) in path.parents for f in feature.files):
            return name
    return None


def template_files() -> list[Path]:
    """The template's files, relative to it: those git tracks (as they are in the working tree now), so that a
    stray file beside them (notes, a .env, a large checkpoint) is not copied; without git, every plain file but
    runs, data and caches. Links are never followed (a link may point anywhere, or at itself)."""
    if (TEMPLATE / ".git").exists() and shutil.which("git") is not None:
        listed = subprocess.run(["git", "-C", str(TEMPLATE), "ls-files", "-z"], capture_output=True, check=False)
        if listed.returncode == 0:
            paths = [Path(name) for name in listed.stdout.decode().split("\0") if name]
            return [p for p in paths if p.parts[0] not in SKIPPED_AT_TOP and _plain_file(TEMPLATE / p)]
    found = []
    for folder, folders, names in os.walk(TEMPLATE):
        here = Path(folder).relative_to(TEMPLATE)
        folders[:] = [d for d in folders if d not in SKIPPED and not (here == Path() and d in SKIPPED_AT_TOP)]
        found += [here / n for n in names if not n.endswith(".pyc") and _plain_file(Path(folder) / n)]
    return sorted(found)


def _plain_file(path: Path) -> bool:
    return not path.is_symlink() and path.is_file()


def held(name: str, folder: Path = TEMPLATE) -> bool:
    """Whether a folder (this copy) holds the feature: a project made without it can make no project with it."""
    return all((folder / f).exists() for f in FEATURES[name].files)


def _stage(files: list[Path], staging: Path) -> None:
    """Copy the template's `files` into a staging folder: a full disk leaves the destination as it was."""
    for path in files:
        (staging / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(TEMPLATE / path, staging / path)


def parse_features(values: list[str] | None) -> list[str]:
    """The names of every --with ("sweeps,text", or "all"), checked against FEATURES and this copy."""
    names = [n.strip() for value in values or [] for n in value.split(",") if n.strip()]
    if "all" in names:
        if names != ["all"]:
            raise ConfigError("--with all: it takes every feature; name no other with it")
        return [name for name in FEATURES if held(name)]
    for name in names:
        if name not in FEATURES:
            raise ConfigError(
                f"--with {name}: no such feature{did_you_mean(name, list(FEATURES))} (features: "
                f"{', '.join(FEATURES)}, or all; python new_project.py --list says what each adds)"
            )
        if not held(name):
            raise ConfigError(
                f"--with {name}: this copy was made without the {name} feature; run the new_project.py of the "
                "template it came from"
            )
    with_required = [needed for name in names for needed in (*FEATURES[name].requires, name)]
    return [name for name in FEATURES if name in with_required]  # in FEATURES' order, each once


def check_target(target: Path) -> None:
    """Refuse a target that would overwrite or nest anything; nothing is written before this passes."""
    if not str(target).isprintable():
        raise ConfigError(f"{str(target)!r}: a folder name with control characters (a newline?); choose another")
    if target == TEMPLATE or TEMPLATE in target.parents:
        raise ConfigError(f"{target}: is inside the template itself; choose a folder outside {TEMPLATE}")
    if target.is_file():
        raise ConfigError(f"{target}: is an existing file; choose a new folder name")
    if target.is_dir() and any(target.iterdir()):
        also = "; to add a feature to this project: --with F" if is_project(target) else ""
        raise ConfigError(f"{target}: folder exists and is not empty; choose a new folder name{also}")
    if not target.parent.is_dir():
        raise ConfigError(f"{target.parent}: folder not found; create it first, or choose another place")


def main(target: str | Path, features: Sequence[str] = ()) -> Path:
    """Copy the core and `features` to `target` (new or empty); return the new project's path.

    The copy is made in a hidden folder beside the target and moved into place when complete: a full disk or an
    interrupt leaves no half-made project behind."""
    target = absolute(target)
    if is_project(target) and features:
        return add_features(target, features)
    check_target(target)
    files = [p for p in template_files() if owner(p) is None or owner(p) in features]
    staging = Path(tempfile.mkdtemp(prefix=".new_project.", dir=target.parent))  # any length of name fits
    try:
        _stage(files, staging)
        _drop_missing_requirements(staging)
        if (staging / "README.md").is_file():
            (staging / "README.md").write_text(readme_for((staging / "README.md").read_text(), features))
        (staging / "saved").mkdir(exist_ok=True)
        (staging / "saved" / ".gitkeep").touch()
        staging.chmod(0o777 & ~_umask())  # mkdtemp's folder is private; the project is an ordinary folder
        os.replace(staging, target)  # onto a missing or empty folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def absolute(target: str | Path) -> Path:
    """The target folder's absolute path, `~` expanded."""
    try:
        return Path(target).expanduser().resolve()
    except RuntimeError as e:  # ~someone who has no home here
        raise ConfigError(f"{target}: {e}; give the folder's path") from None


def is_project(folder: Path) -> bool:
    """Whether a folder holds a project made by a template like this one (its entry script and config parser)."""
    return (folder / "train.py").is_file() and (folder / "parse_config.py").is_file()


def add_features(project: Path, features: Sequence[str]) -> Path:
    """Copy into an existing project the files of each feature it lacks; its own files are never replaced. The
    dev requirements get the features' requirements files; the README their rows, unless the user has edited it.
    All or nothing: a failure or an interrupt puts back what was added."""
    if TEMPLATE in project.parents:
        raise ConfigError(f"{project}: is inside the template itself; choose a project outside {TEMPLATE}")
    had = [name for name in FEATURES if held(name, project)]
    missing = [name for name in features if name not in had]
    if not missing:
        raise ConfigError(f"{project}: has {', '.join(features)} already; nothing to add")
    files = [p for p in template_files() if owner(p) in missing]
    for path in files:
        for here in [project / path, *(project / p for p in path.parents if p != Path())]:
            if here.is_symlink() or (here.exists() and (here == project / path or not here.is_dir())):
                raise ConfigError(
                    f"{here}: is in the way of the {owner(path)} feature's {path} (a file, or a link); move it first"
                )
    edits = _project_edits(project, had, [*had, *missing], files)
    staging = Path(tempfile.mkdtemp(prefix=".new_project.", dir=project.parent))
    added: list[Path] = []  # files and folders made, in order
    originals = {path: path.read_bytes() for path in edits}
    try:
        _stage(files, staging)
        for path in files:
            for folder in reversed([project / p for p in path.parents if p != Path()]):
                if not folder.exists():
                    folder.mkdir()
                    added.append(folder)
            os.replace(staging / path, project / path)
            added.append(project / path)
        for path, text in edits.items():
            path.write_text(text)
    except BaseException:
        for path, original in originals.items():
            path.write_bytes(original)
        for path in reversed(added):
            path.rmdir() if path.is_dir() else path.unlink()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return project


def _project_edits(project: Path, had: list[str], has: list[str], files: list[Path]) -> dict[Path, str]:
    """The new text of the project's files that name its features: requirements-dev.txt gets a `-r` line for each
    new requirements file; README.md gets the new features' rows, where it is still as new_project.py wrote it."""
    edits = {}
    dev, readme, template_readme = project / "requirements-dev.txt", project / "README.md", TEMPLATE / "README.md"
    if dev.is_file():
        text = dev.read_text()
        present = {line.strip() for line in text.splitlines()}
        new = [f"-r {p.name}\n" for p in files if p.name.startswith("requirements-") and f"-r {p.name}" not in present]
        if new:
            edits[dev] = text + ("\n" if text and not text.endswith("\n") else "") + "".join(new)
    if readme.is_file() and template_readme.is_file():
        template_text = template_readme.read_text()
        if readme.read_text() == readme_for(template_text, had):
            edits[readme] = readme_for(template_text, has)
    return edits


def _drop_missing_requirements(project: Path) -> None:
    """A requirements file's `-r other.txt` line goes where that file was left out with its feature."""
    for path in project.glob("requirements*.txt"):
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not _includes_missing(line, project)]
        if kept != lines:
            path.write_text("".join(kept))


def readme_for(text: str, features: Sequence[str]) -> str:
    """The README of a project with `features`: its tables list what the project has (the row of a feature left
    out, its name then its page, goes, and so do the rows of its parts, `CsvDataLoader` (`csv`)); the config
    reference keeps every key. A link to the page of a feature left out becomes the page's name in the template:
    no link leads nowhere."""

    def absent(line: str) -> bool:
        cell = line.split("|")[1].strip() if line.startswith("| ") else ""
        return any(
            (cell == f"`{n}`" and line.rstrip().endswith(f"(docs/{n}.md) |")) or cell.endswith(f"(`{n}`)")
            for n in FEATURES
            if n not in features
        )

    lines = [line for line in text.splitlines(keepends=True) if not absent(line)]

    def empty_table_head(i: int) -> bool:  # a table's header and separator with no row left under them
        below = lines[i + 2] if i + 2 < len(lines) else ""
        return lines[i].startswith("| ") and lines[i + 1].startswith("|---") and not below.startswith("| ")

    heads = {i for i in range(len(lines) - 1) if empty_table_head(i)}
    kept = "".join(line for i, line in enumerate(lines) if i not in heads and i - 1 not in heads)
    left_out = "|".join(n for n in FEATURES if n not in features) or "(?!)"
    return re.sub(rf"\[docs/({left_out})\.md\]\(docs/\1\.md\)", r"the template's docs/\1.md", kept)


def _includes_missing(line: str, project: Path) -> bool:
    words = line.split()
    return len(words) == 2 and words[0] == "-r" and not (project / words[1]).is_file()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Create a new project from this template: the core (train, test, predict; the files git tracks, "
        "benchmarks/ left out) and the features asked for with --with.",
        epilog="example:\n  python new_project.py ../myproj --with sweeps\n"
        "  cd ../myproj && python train.py -c config.json",
    )
    parser.add_argument("target", nargs="?", help="folder to create (must not exist, or be empty)")
    parser.add_argument(
        "--with", dest="features", action="append", metavar="F,G", help="features to add (see --list), or all"
    )
    parser.add_argument("--list", action="store_true", help="print each feature and what it adds, then exit")
    return parser


def feature_list() -> str:
    width = max(map(len, FEATURES))
    absent = "  (not in this copy)"
    return "\n".join(
        f"{name:<{width}}  {feature.summary}{'' if held(name) else absent}" for name, feature in FEATURES.items()
    )


if __name__ == "__main__":
    with one_line_errors(interrupted="stopped while copying; nothing was created or changed"):
        args = build_parser().parse_args()
        if args.list:
            print(feature_list())
            raise SystemExit(0)
        if args.target is None:
            raise ConfigError("the following arguments are required: target (see new_project.py --help)")
        chosen = parse_features(args.features)
        existing = is_project(absolute(args.target))
        try:
            created = main(args.target, chosen)
        except OSError as e:
            what = "add to the project" if existing else "create the project"
            raise ConfigError(f"could not {what}: {e}; nothing was created or changed") from None
    needs = [f for n in chosen for f in FEATURES[n].files if f.startswith("requirements-")]  # the features' libraries
    if existing:
        pages = ", ".join(f"docs/{n}.md" for n in chosen)
        print(f"{created} now has {', '.join(chosen)} (none of your files replaced); what each adds: {pages}")
        print(f"Next: {''.join(f'pip install -r {f} && ' for f in needs)}python -m pytest")
    else:
        print(f"New project in {created} (the core{''.join(f', {n}' for n in chosen)})")
        install = " ".join(f"-r {f}" for f in ["requirements.txt", *needs])
        print(f"Next: cd {created} && pip install {install} && python train.py -c config.json")
