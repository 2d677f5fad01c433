"""new_project.py: a project holds the core and the features it asks for, and each such project passes its own
tests; bad targets and feature names are one line, and nothing is left half made."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import new_project
from conftest import ROOT, run_script, template_only, tree_snapshot
from new_project import FEATURES, owner
from test_cli import assert_one_error_line


@pytest.mark.e2e
def test_new_project_scaffold_trains_tests_and_passes_its_tests(tmp_path):
    target = tmp_path / "myproj"
    result = run_script(str(ROOT / "new_project.py"), str(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = {p.name for p in target.iterdir()}
    assert {"train.py", "test.py", "config.json", "base", "tests", "README.md", "requirements.txt", ".ci"} <= names
    assert not {".git", "data", "__pycache__", "benchmarks"} & names and [
        p.name for p in (target / "saved").iterdir()
    ] == [".gitkeep"]
    result = run_script("train.py", "-c", "config.json", "trainer.epochs=1", "--run-id", "first", cwd=target)
    assert result.returncode == 0, result.stderr
    result = run_script("test.py", "-r", "saved/models/Digits_CNN/first/model_best.pth", cwd=target)
    assert result.returncode == 0, result.stderr
    # The user's own task: a model in its own file (found there, with nothing to import), a torch loss by name,
    # an epoch-level metric, and a config that extends a shipped one -- edits only in files the user owns.
    (target / "model" / "regressor.py").write_text(
        "import torch\nfrom torch import nn\n\n\nclass Regressor(nn.Module):\n"
        "    def __init__(self, in_features: int) -> None:\n        super().__init__()\n"
        "        self.linear = nn.Linear(in_features, 1)\n\n"
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n        return self.linear(x)\n"
    )
    mine = {
        "extends": "config_tabular.json",
        "name": "Mine",
        "arch": {"type": "Regressor", "args": {"in_features": 10}},
        "loss": {"type": "HuberLoss", "args": {"delta": 1.0}},
        "metrics": ["r2", "mae"],
        "optimizer": {"args": {"lr": 0.05}},
        "trainer": {"epochs": 5},
    }
    (target / "mine.json").write_text(json.dumps(mine))
    result = run_script("train.py", "-c", "mine.json", "--run-id", "mine", cwd=target)
    assert result.returncode == 0, result.stderr
    result = run_script("test.py", "-r", "saved/models/Mine/mine", cwd=target)
    assert result.returncode == 0 and "model_best.pth on the test split" in result.stdout, result.stderr
    (result_file,) = (target / "saved/models/Mine/mine").glob("model_best.epoch*.test.json")
    assert json.loads(result_file.read_text())["r2"] > 0.2
    # Its own tests (the fast tier) still pass with the user's model, config and run beside the shipped ones.
    result = run_script("-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=target)
    assert result.returncode == 0 and " passed" in result.stdout, result.stdout[-2000:]


@pytest.mark.e2e
@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="needs a git checkout")
def test_new_project_copies_the_files_git_tracks_as_they_are_and_nothing_beside_them(tmp_path):
    template = tmp_path / "template"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(template)], check=True)
    for name in ("new_project.py", "cli.py"):  # the ones under test, committed or not
        shutil.copy2(ROOT / name, template / name)
    (template / "notes.txt").write_text("my notes")  # beside the tracked files: a user's, not the template's
    (template / ".env").write_text("TOKEN=secret")
    (template / "model" / "scratch.py").write_text("x = 1\n")
    with (template / "config.json").open("a") as handle:  # a tracked file, edited: copied as it is now
        handle.write("\n")
    tracked = subprocess.run(["git", "-C", str(template), "ls-files"], capture_output=True, text=True, check=True)
    shipped = [p for p in tracked.stdout.split() if not p.startswith("benchmarks/")]
    for name, features, expected in (
        ("all", ["--with", "all"], shipped),
        ("core", [], [p for p in shipped if owner(Path(p)) is None]),
        ("two", ["--with", "text,sweeps"], [p for p in shipped if owner(Path(p)) in (None, "csv", "text", "sweeps")]),
    ):
        result = run_script(str(template / "new_project.py"), str(tmp_path / name), *features, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        copied = sorted(str(p.relative_to(tmp_path / name)) for p in (tmp_path / name).rglob("*") if p.is_file())
        assert copied == sorted(expected), name
        assert (tmp_path / name / "config.json").read_text() == (template / "config.json").read_text()
    # a feature left out takes its requirements file with it, and the line that asked for it
    assert "-r requirements-tune.txt" in (tmp_path / "all" / "requirements-dev.txt").read_text()
    assert "requirements-tune.txt" not in (tmp_path / "core" / "requirements-dev.txt").read_text()
    assert "-r requirements-tune.txt" in (tmp_path / "two" / "requirements-dev.txt").read_text()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("existing_file", "is an existing file"),
        ("full_folder", "folder exists and is not empty"),
        (None, "is inside the template itself"),
        ("new\nline", "a folder name with control characters"),
    ],
)
def test_new_project_refuses_targets_it_would_damage(target, fragment, tmp_path):
    (tmp_path / "existing_file").write_text("keep me")
    (tmp_path / "full_folder").mkdir()
    (tmp_path / "full_folder" / "notes.txt").write_text("keep me too")
    before = tree_snapshot(tmp_path)
    path = str(tmp_path / target) if target else str(ROOT / "inner")
    assert_one_error_line(run_script(str(ROOT / "new_project.py"), path, cwd=tmp_path), fragment)
    assert tree_snapshot(tmp_path) == before and not (ROOT / "inner").exists()
    assert_one_error_line(run_script(str(ROOT / "new_project.py"), cwd=tmp_path), "required: target")
    result = run_script(str(ROOT / "new_project.py"), str(tmp_path / "new"), "--with", "text,sweep", cwd=tmp_path)
    assert_one_error_line(result, "--with sweep: no such feature; did you mean 'sweeps'?")
    result = run_script(str(ROOT / "new_project.py"), str(tmp_path / "new"), "--with", "all,text", cwd=tmp_path)
    assert_one_error_line(result, "--with all: it takes every feature; name no other with it")
    assert tree_snapshot(tmp_path) == before


@pytest.mark.e2e
def test_list_names_every_feature_with_what_it_adds():
    result = run_script(str(ROOT / "new_project.py"), "--list")
    assert result.returncode == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(FEATURES)
    assert all(feature.summary in result.stdout for feature in FEATURES.values())


def test_a_copy_that_fails_leaves_nothing_behind(tmp_path, monkeypatch):
    copied = []

    def copy_until_the_disk_is_full(source, destination):
        if len(copied) == 5:
            raise OSError(28, "No space left on device")
        copied.append(destination)
        shutil.copyfile(source, destination)

    monkeypatch.setattr(new_project.shutil, "copy2", copy_until_the_disk_is_full)
    with pytest.raises(OSError, match="No space left"):
        new_project.main(tmp_path / "myproj", ["sweeps"])
    assert list(tmp_path.iterdir()) == []  # neither the project nor the hidden folder it was made in
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()
    assert new_project.main(tmp_path / "empty") == tmp_path / "empty"  # an empty folder is filled: the core
    assert (tmp_path / "empty" / "train.py").is_file() and not (tmp_path / "empty" / "tune.py").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("feature", ["", *FEATURES])
def test_each_features_project_passes_its_own_tests(tmp_path, feature):
    """The fast tier of a project made with one feature (or the core alone) passes there, where the other
    features' files are not."""
    target = tmp_path / "proj"
    result = run_script(str(ROOT / "new_project.py"), str(target), *(["--with", feature] if feature else []))
    assert result.returncode == 0, result.stderr
    chosen = new_project.parse_features([feature])  # with what it builds on
    others = [f for name, spec in FEATURES.items() if name not in chosen for f in spec.files]
    assert not any((target / f).exists() for f in others)
    if feature:  # --with twice adds both; a feature this copy was made without is refused in one line
        result = run_script(str(ROOT / "new_project.py"), str(tmp_path / "two"), "--with", feature, "--with", "text")
        assert result.returncode == 0 and (tmp_path / "two" / FEATURES[feature].files[0]).exists(), result.stderr
        assert (tmp_path / "two" / "data_loader" / "text_csv.py").is_file()
        other = next(name for name in FEATURES if name not in chosen)  # one this project was made without
        result = run_script("new_project.py", str(tmp_path / "again"), "--with", other, cwd=target)
        assert_one_error_line(result, f"--with {other}: this copy was made without the {other} feature")
        assert not (tmp_path / "again").exists()
    result = run_script("-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", cwd=target)
    assert result.returncode == 0 and " passed" in result.stdout, result.stdout[-3000:]


def test_the_longest_folder_name_and_an_unknown_home_are_handled(tmp_path):
    name = "p" * 255  # the staging folder beside it must not need a longer name
    assert new_project.main(tmp_path / name).name == name
    result = run_script(str(ROOT / "new_project.py"), "~nosuchuser_xyz/proj", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "~nosuchuser_xyz/proj" in result.stderr


def readme_rows(readme: Path) -> list[str]:
    return [line for line in readme.read_text().splitlines() if line.startswith("| `")]


def of_a_feature(row: str) -> bool:  # a feature's row in the table of features, or a loader of a feature
    return any(
        (row.startswith(f"| `{n}` | ") and row.endswith(f"(docs/{n}.md) |")) or f"(`{n}`) |" in row for n in FEATURES
    )


def test_the_readme_of_a_project_lists_only_the_features_it_has(tmp_path):
    core_project = new_project.main(tmp_path / "core", [])
    assert not any(of_a_feature(row) for row in readme_rows(core_project / "README.md"))
    links = re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", (core_project / "README.md").read_text())
    assert all((core_project / link).is_file() for link in links)  # no link leads nowhere
    lines = (core_project / "README.md").read_text().splitlines()
    heads = zip(lines, [*lines[1:], ""], [*lines[2:], "", ""], strict=True)
    assert not [a for a, b, c in heads if a.startswith("| ") and b.startswith("|---") and not c.startswith("| ")]


@template_only
def test_the_templates_readme_has_a_row_for_each_feature_and_a_project_keeps_the_rest(tmp_path):
    core = readme_rows(new_project.main(tmp_path / "core", []) / "README.md")
    assert any(row.startswith("| `wandb` | object or null |") for row in core)  # the reference keeps its keys
    template = readme_rows(ROOT / "README.md")  # its features' rows, and only theirs
    held = [n for n in FEATURES if new_project.held(n)]
    assert {n for n in FEATURES if any(row.startswith(f"| `{n}` | ") and of_a_feature(row) for row in template)} == set(
        held
    )

    def page_named(row: str) -> str:  # a link to a page, or the page's name where the project lacks it
        return re.sub(r"\[(docs/\w+\.md)\]\(\1\)|the template's (docs/\w+\.md)", r"\1\2", row)

    assert [page_named(row) for row in template if not of_a_feature(row)] == [page_named(row) for row in core]


def test_a_feature_is_added_to_an_existing_project_without_replacing_its_files(tmp_path, monkeypatch):
    held = [n for n in FEATURES if new_project.held(n) and not FEATURES[n].requires]
    if not held:
        pytest.skip("this copy holds no feature to add")
    with_requirements = [n for n in held if any(f.startswith("requirements-") for f in FEATURES[n].files)]
    name = (with_requirements or held)[0]  # sweeps in the template: its requirements file joins the dev ones
    spec = FEATURES[name]
    project = new_project.main(tmp_path / "proj", [])
    (project / "model" / "model.py").write_text("# the user's own model\n")
    dev, readme = "requirements-dev.txt", "README.md"
    (project / dev).write_text((project / dev).read_text().rstrip("\n"))  # a last line without its newline
    before = tree_snapshot(project)
    result = run_script(str(ROOT / "new_project.py"), str(project), "--with", name)
    assert result.returncode == 0 and f"now has {name}" in result.stdout, result.stderr
    after = tree_snapshot(project)
    assert {k: v for k, v in after.items() if k in before and k not in (dev, readme)} == {
        k: v for k, v in before.items() if k not in (dev, readme)
    }
    requirements = [f"-r {f}" for f in spec.files if f.startswith("requirements-")]
    assert after[dev].decode().splitlines() == [*before[dev].decode().splitlines(), *requirements]
    template_readme = (ROOT / "README.md").read_text()
    assert after[readme].decode() == new_project.readme_for(template_readme, [name])  # as if made --with it
    added = {Path(p) for p in set(after) - set(before)}
    assert added == {Path(p) for p in after if new_project.owner(Path(p)) == name}
    assert all((project / f).exists() for f in spec.files)
    assert_one_error_line(run_script(str(ROOT / "new_project.py"), str(project), "--with", name), "nothing to add")

    other = new_project.main(tmp_path / "other", [])  # the user's file where the feature has one: refused
    (other / "README.md").write_text("# my own README\n")  # edited: kept as it is
    taken = other / spec.files[0]
    taken.parent.mkdir(parents=True, exist_ok=True)
    taken.write_text("# mine\n")
    owned = [p for p in new_project.template_files() if new_project.owner(p) == name]
    new_folders = sorted({other / q for p in owned for q in p.parents if q != Path() and not (other / q).exists()})
    before = tree_snapshot(tmp_path)
    result = run_script(str(ROOT / "new_project.py"), str(other), "--with", name)
    assert_one_error_line(result, f"{taken}: is in the way of the {name} feature's {spec.files[0]}")
    assert tree_snapshot(tmp_path) == before
    taken.unlink()
    for folder in new_folders[:1]:  # a file where the feature has a folder (sweep/): in the way too
        folder.write_text("notes\n")
        result = run_script(str(ROOT / "new_project.py"), str(other), "--with", name)
        assert_one_error_line(result, f"{folder}: is in the way of the {name} feature's")
        folder.unlink()
    before = tree_snapshot(tmp_path)
    calls = []

    def interrupted_after_two(source, destination):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(destination)
        os.rename(source, destination)

    monkeypatch.setattr(new_project.os, "replace", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        new_project.main(other, [name])
    assert tree_snapshot(tmp_path) == before and len(calls) == 2  # what was added is taken back
    monkeypatch.undo()
    new_project.main(other, [name])
    assert (other / "README.md").read_text() == "# my own README\n"
    result = run_script(str(ROOT / "new_project.py"), str(tmp_path / "fresh"))
    assert result.returncode == 0
    result = run_script(str(ROOT / "new_project.py"), str(tmp_path / "fresh"))
    assert_one_error_line(result, "folder exists and is not empty; choose a new folder name; to add a feature")


def test_a_project_without_a_feature_says_how_to_add_it_and_then_has_it(tmp_path):
    if not new_project.held("cv"):
        pytest.skip("this copy was made without the cv feature")
    project = new_project.main(tmp_path / "proj", [])
    command = ("train.py", "-c", "config.json", "--folds", "2", "--dry-run")
    assert_one_error_line(
        run_script(*command, cwd=project),
        "cross_validation: needs the cv feature, which this project was made without; the template's new_project.py "
        f"adds it: python TEMPLATE/new_project.py {project} --with cv",
    )
    new_project.main(project, ["cv"])
    result = run_script(*command, cwd=project)
    assert result.returncode == 0 and "Dry run" in result.stdout + result.stderr, result.stderr[-2000:]
