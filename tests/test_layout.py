"""The layout: every concept has one home, and imports run down the layers only (read from the source, so
imports inside functions count too). The template's rules for its own code: a project skips them (template_only)."""

import ast
from pathlib import Path

import pytest

from conftest import ROOT, template_only
from new_project import FEATURES, owner

pytestmark = template_only

# Lowest first. A module may import its own package and any package of a lower layer; packages that share a
# layer (data_loader and model; the entry scripts) import none of each other.
LAYERS = [
    {"utils"},
    {"logger"},
    {"base"},
    {"data_loader", "model"},
    {"trainer"},
    {"roles"},
    {"parse_config"},
    {"cli"},
    {"train", "test", "predict", "new_project"},  # entry scripts: each a leaf, but train.main is what a trial runs
    {"sweep"},  # a sweep's trials run train.main
    {"tune"},
]
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}
ENTRY_SCRIPTS = {"train", "test", "predict", "new_project", "tune"}


def project_imports(path) -> set[str]:
    """The project's top-level packages and modules that the file imports anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(RANK)


def test_every_package_and_entry_script_has_a_layer():
    homes = {p.name for p in ROOT.iterdir() if p.is_dir() and any(p.glob("*.py"))} - {"tests", "benchmarks"}
    homes |= {p.stem for p in ROOT.glob("*.py")}
    feature_homes = {Path(f).with_suffix("").parts[0] for feature in FEATURES.values() for f in feature.files}
    assert homes <= set(RANK) and set(RANK) - homes <= feature_homes  # a project without a feature lacks its homes


def python_files() -> list[Path]:
    return sorted(p for p in [*ROOT.glob("*.py"), *ROOT.glob("*/*.py")] if p.parent.name != "benchmarks")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imported_modules(path: Path) -> set[str]:
    """Every module the file imports, by its full dotted name (`from a.b import c` counts a.b and a.b.c)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def test_a_feature_is_there_whole_or_not_at_all_with_its_tests_and_its_page():
    in_the_template = (ROOT / "benchmarks").is_dir()  # what new_project.py leaves out of every project
    for name, feature in FEATURES.items():
        there = [(ROOT / f).exists() for f in feature.files]
        assert all(there) or (not any(there) and not in_the_template), name
        assert f"docs/{name}.md" in feature.files and any(f.startswith("tests/test_") for f in feature.files)


FEATURE_LIBRARIES = {"ray", "optuna", "transformers", "wandb", "timm"}  # each feature brings its own requirements file


@pytest.mark.parametrize("path", [p for p in python_files() if owner(p.relative_to(ROOT)) is None], ids=str)
def test_no_core_file_imports_a_feature_or_its_library(path):
    """A project without a feature imports, loads and tests the same: the core names none of its modules (its
    parts are found by scanning their role's package) and none of its libraries; nor does it name the Kaggle
    loader."""
    features = {module_name(p) for p in python_files() if owner(p.relative_to(ROOT)) is not None}
    imported = imported_modules(path)
    wrong = {m for m in imported if m in features or m.split(".")[0] in features | FEATURE_LIBRARIES}
    assert wrong == set()
    assert path == Path(__file__) or "CsvImageDataLoader" not in path.read_text()


def test_imports_run_down_the_layers_only_and_entry_scripts_import_no_entry_script():
    wrong = []
    for path in sorted([*ROOT.glob("*.py"), *ROOT.glob("*/*.py")]):
        top = path.stem if path.parent == ROOT else path.parent.name
        if top not in RANK:
            continue
        for imported in project_imports(path) - {top}:
            upward = RANK[imported] > RANK[top]
            sideways = RANK[imported] == RANK[top]
            if upward or sideways or (top in ENTRY_SCRIPTS and imported in ENTRY_SCRIPTS):
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert wrong == []


def test_utils_holds_helpers_only():
    """utils/ is for helpers every layer may use: no feature, and no more than 600 lines."""
    core = [p for p in (ROOT / "utils").glob("*.py") if owner(p.relative_to(ROOT)) is None]  # the text feature aside
    lines = sum(len(p.read_text().splitlines()) for p in core)
    assert lines <= 600, f"utils/ has {lines} lines"


def test_functions_stay_short_and_train_py_main_reads_as_a_recipe():
    """No function over 60 lines outside benchmarks/; train.py's main, the table of contents, at most 45."""
    lengths = {}
    for path in sorted([*ROOT.glob("*.py"), *ROOT.glob("*/*.py")]):
        if path.parent.name in ("tests", "benchmarks"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lengths[f"{path.relative_to(ROOT)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert {name: n for name, n in lengths.items() if n > 60} == {}
    assert lengths["train.py:main"] <= 45


def test_no_file_a_reader_opens_is_over_400_lines():
    """A file is one concept: code, configs, the schema, the README and each docs page (tests and benchmarks aside)."""
    files = [*python_files(), *ROOT.glob("*.json"), *ROOT.glob("*/*.json"), *ROOT.glob("*.md"), *ROOT.glob("docs/*.md")]
    long = {
        str(p.relative_to(ROOT)): n
        for p in files
        if "tests" not in p.parts and (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}
