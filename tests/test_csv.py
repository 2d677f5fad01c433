"""Your own data as CSV files: CsvDataLoader (numeric features; classification, binary, regression)."""

import csv
import json
import math
import os
import random
import stat
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sklearn import metrics as sk

from conftest import ROOT, evaluate, shrink, train
from data_loader.csv_data import CsvDataLoader, as_label
from logger.run_folder import BEST_NAME, LAST_NAME
from model.metric import r2
from parse_config import ConfigParser
from test_outputs import read_fifo_while, rows_of
from trainer.checkpoint import KEY_CONFIG, KEY_DATA, KEY_STATE_DICT, load_checkpoint
from trainer.evaluation import prediction_rows
from utils.errors import ConfigError, DataError


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def houses(path: Path, n: int = 60, seed: int = 0) -> Path:
    """area, rooms, a label and a price that is a linear function of area and rooms plus a little noise."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        area, rooms = round(rng.uniform(30, 150), 1), rng.randint(1, 6)
        price = round(2000 * area + 15000 * rooms + rng.gauss(0, 5000), 2)
        rows.append([f"h{i}", area, rooms, ["flat", "house", "villa"][i % 3], "yes" if area > 90 else "no", price])
    return write_csv(path, ["id", "area", "rooms", "kind", "big", "price"], rows)


def column(path: Path, name: str) -> list[str]:
    with path.open(newline="") as handle:
        return [row[name] for row in csv.DictReader(handle)]


def order(loader) -> list[int]:
    """The file's data rows (0 = the first after the header) the loader serves, in its order when not shuffled."""
    return loader.epoch_sampler.indices.tolist()


def everything(loader) -> tuple[torch.Tensor, torch.Tensor]:
    loader.set_epoch(1)
    pairs = list(loader)
    return torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])


# --- CsvDataLoader ---------------------------------------------------------------------------------------------


def test_features_are_standardized_with_the_training_rows_only(tmp_path):
    path = houses(tmp_path / "houses.csv")
    args = dict(csv_path=str(path), target_column="kind", feature_columns=["area", "rooms"], shuffle=False)
    train_loader, test_loader = (CsvDataLoader(**args, split=s) for s in ("train", "test"))
    train_rows = train_loader.epoch_sampler.indices.tolist()  # the rows of the training split
    assert len(train_rows) + len(test_loader.epoch_sampler.indices) < 60
    for j, name in enumerate(["area", "rooms"]):
        values = [float(v) for v in column(path, name)]
        mean, std = statistics.mean(values[i] for i in train_rows), statistics.stdev(values[i] for i in train_rows)
        assert train_loader.preprocessing["means"][j] == pytest.approx(mean, rel=1e-12)
        assert train_loader.preprocessing["stds"][j] == pytest.approx(std, rel=1e-12)
        test_x, _ = everything(test_loader)
        test_rows = order(test_loader)
        expected = torch.tensor([(values[i] - mean) / std for i in test_rows])
        torch.testing.assert_close(test_x[:, j], expected.float())  # the test rows, with the training statistics
    x, _ = everything(train_loader)
    torch.testing.assert_close(x.mean(dim=0), torch.zeros(2), atol=1e-6, rtol=0)
    assert test_loader.preprocessing == train_loader.preprocessing


def test_classification_targets_are_class_indices_of_the_sorted_labels(tmp_path):
    path = houses(tmp_path / "houses.csv")
    loader = CsvDataLoader(str(path), "kind", ["area", "rooms"], validation_split=0, test_split=0, shuffle=False)
    assert loader.task == "classification" and loader.classes == ["flat", "house", "villa"]
    x, y = everything(loader)
    assert x.shape == (60, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert [loader.classes[c] for c in y.tolist()] == [column(path, "kind")[i] for i in order(loader)]
    assert loader.preprocessing["classes"] == ["flat", "house", "villa"]


def test_numeric_labels_are_sorted_as_numbers(tmp_path):
    path = write_csv(tmp_path / "n.csv", ["x", "grade"], [[i, g] for i, g in enumerate(["10", "2", "1", "2", "10"])])
    loader = CsvDataLoader(str(path), "grade", validation_split=0, test_split=0, shuffle=False)
    assert loader.classes == ["1", "2", "10"]
    assert everything(loader)[1].tolist() == [[2, 1, 0, 1, 2][i] for i in order(loader)]


def test_a_nan_label_comes_last_whatever_the_hash_seed():
    """float("nan") compares with nothing: sorted among numbers, it left the order to the set's, that is, to
    PYTHONHASHSEED, and two runs of one seed trained with different class indices."""
    code = "from data_loader.csv_data import class_names; print(class_names(['1', 'nan', '0', '10', '2', 'NaN']))"
    orders = {
        subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "5", "7")
    }  # fmt: skip
    assert orders == {"['0', '1', '2', '10', 'NaN', 'nan']\n"}


def test_binary_targets_are_floats_of_shape_b_1(tmp_path):
    path = houses(tmp_path / "houses.csv")
    loader = CsvDataLoader(str(path), "big", ["area"], task="binary", validation_split=0, test_split=0, shuffle=False)
    assert loader.task == "binary" and loader.classes == ["no", "yes"]
    _, y = everything(loader)
    assert y.shape == (60, 1) and y.dtype == torch.float32
    assert y[:, 0].tolist() == [float(column(path, "big")[i] == "yes") for i in order(loader)]


def test_regression_target_is_standardized_with_the_training_rows_and_saved(tmp_path):
    path = houses(tmp_path / "houses.csv")
    loader = CsvDataLoader(str(path), "price", ["area", "rooms"], task="regression", shuffle=False)
    prices = [float(v) for v in column(path, "price")]
    train_rows = loader.epoch_sampler.indices.tolist()  # the rows of the training split
    mean, std = statistics.mean(prices[i] for i in train_rows), statistics.stdev(prices[i] for i in train_rows)
    assert loader.preprocessing["target_mean"] == pytest.approx(mean, rel=1e-12)
    assert loader.preprocessing["target_std"] == pytest.approx(std, rel=1e-12)
    _, y = everything(loader)
    assert y.shape == (len(train_rows), 1)
    torch.testing.assert_close(y[:, 0], torch.tensor([(prices[i] - mean) / std for i in train_rows]).float())


def test_a_loader_given_the_preprocessing_reads_the_same_tensors(tmp_path):
    path = houses(tmp_path / "houses.csv")
    for task, target in (("classification", "kind"), ("binary", "big"), ("regression", "price")):
        args = dict(csv_path=str(path), target_column=target, feature_columns=["area", "rooms"], task=task)
        saved = json.loads(json.dumps(CsvDataLoader(**args).preprocessing))  # plain values, as in a checkpoint
        for split in ("train", "valid", "test"):
            fresh, given = CsvDataLoader(**args, split=split), CsvDataLoader(**args, split=split, preprocessing=saved)
            for a, b in zip(everything(fresh), everything(given), strict=True):
                assert torch.equal(a, b), (task, split)
            assert given.classes == fresh.classes and given.preprocessing == fresh.preprocessing


def test_the_given_preprocessing_is_used_not_recomputed(tmp_path):
    path = houses(tmp_path / "houses.csv")
    saved = CsvDataLoader(str(path), "price", ["area", "rooms"], task="regression").preprocessing
    other = houses(tmp_path / "other.csv", n=30, seed=1)  # other rows, other statistics
    loader = CsvDataLoader(str(other), "price", task="regression", split="test", preprocessing=saved, test_split=10)
    x, y = everything(loader)
    area, price = ([float(column(other, name)[i]) for i in order(loader)] for name in ("area", "price"))
    torch.testing.assert_close(
        x[:, 0], torch.tensor([(a - saved["means"][0]) / saved["stds"][0] for a in area]).float()
    )
    torch.testing.assert_close(
        y[:, 0], torch.tensor([(p - saved["target_mean"]) / saved["target_std"] for p in price]).float()
    )
    assert loader.preprocessing == saved


def test_predict_reads_new_rows_with_the_training_statistics(tmp_path):
    path = houses(tmp_path / "houses.csv")
    trained = CsvDataLoader(str(path), "kind", id_column="id", feature_columns=["area", "rooms"])
    new = write_csv(
        tmp_path / "new.csv", ["rooms", "note", "id", "area"], [[3, "x", "a1", 50.0], [1, "y", "b2", 120.5]]
    )
    loader = CsvDataLoader(
        str(path), "kind", id_column="id", split="predict", inputs=str(new), preprocessing=trained.preprocessing
    )
    x, y = everything(loader)
    (means, stds) = trained.preprocessing["means"], trained.preprocessing["stds"]
    expected = [
        [(50.0 - means[0]) / stds[0], (3 - means[1]) / stds[1]],
        [(120.5 - means[0]) / stds[0], (1 - means[1]) / stds[1]],
    ]
    torch.testing.assert_close(x, torch.tensor(expected))
    assert y.tolist() == [-1, -1] and [loader.sample_id(i) for i in range(2)] == ["a1", "b2"]
    assert loader.classes == ["flat", "house", "villa"]
    header, rows = prediction_rows(["a1", "b2"], torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0]]), None, loader)
    assert header[:2] == ["id", "prediction"] and [r[1] for r in rows] == ["house", "villa"]
    unnamed = CsvDataLoader(str(path), "kind", split="predict", inputs=str(new), preprocessing=trained.preprocessing)
    assert [unnamed.sample_id(i) for i in range(2)] == ["1", "2"]  # row numbers without an id column


def test_regression_on_a_users_csv_reports_the_right_r2(tmp_path):
    """A least-squares fit on the standardized training rows: the template's R² on standardized targets is
    scikit-learn's R² in the target's own units, and predictions turn back into those units."""
    path = houses(tmp_path / "houses.csv", n=200)
    train_loader = CsvDataLoader(str(path), "price", ["area", "rooms"], task="regression")
    test_loader = CsvDataLoader(str(path), "price", ["area", "rooms"], task="regression", split="test")
    x, y = everything(train_loader)
    design = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    weights = torch.linalg.lstsq(design, y.double()).solution  # (3, 1)
    test_x, test_y = everything(test_loader)
    output = (torch.cat([test_x, torch.ones(len(test_x), 1)], dim=1).double() @ weights).float()  # (N, 1)
    metric = r2()
    metric.update(output, test_y)
    ids = [test_loader.sample_id(i) for i in order(test_loader)]
    _, rows = prediction_rows(ids, output, test_y, test_loader)
    truth = [float(column(path, "price")[i]) for i in order(test_loader)]
    assert [r[1] for r in rows] == pytest.approx(truth, rel=1e-5)  # the target, back in its units
    assert metric.compute() == pytest.approx(sk.r2_score(truth, [r[2] for r in rows]), abs=1e-5)
    assert metric.compute() > 0.99  # price is linear in area and rooms, with little noise


BAD_DATA = {
    "missing file": (None, {}, r"missing\.csv: CSV file not found$"),
    "empty file": ("", {}, r"data\.csv: no data rows \(expected a header row"),
    "header only": ("a,b,label\n", {}, r"data\.csv: no data rows"),
    "missing target": (
        "a,b,label\n1,2,x\n",
        {"target_column": "lable"},
        r"data\.csv: no target column 'lable'; the file's columns are a, b, label; did you mean 'label'\?$",
    ),
    "missing feature": (
        "a,b,label\n1,2,x\n",
        {"feature_columns": ["a", "c"]},
        r"data\.csv: no feature column 'c'; the file's columns are a, b, label$",
    ),
    "not a number": (
        "a,b,label\n1,2,x\n3,red,y\n",
        {},
        r"data\.csv, line 3, column 'b': 'red' is not a number \(features are numbers; leave the column out",
    ),
    "after blank rows": (  # skipped, but the line number is the file's
        "a,b,label\n1,2,x\n\n,,\n3,red,y\n",
        {},
        r"data\.csv, line 5, column 'b': 'red' is not a number",
    ),
    "not UTF-8": ("a,b,label\n1,2,caf\xe9\n".encode("latin-1"), {}, r"data\.csv: not a UTF-8 text file"),
    "empty cell": ("a,b,label\n1,2,x\n3,,y\n", {}, r"data\.csv, line 3, column 'b': empty cell"),
    "empty label": ("a,b,label\n1,2,x\n3,4,\n", {}, r"data\.csv, line 3, column 'label': empty cell"),
    "regression target": (
        "a,b,label\n1,2,3.5\n3,4,n/a\n",
        {"task": "regression"},
        r"data\.csv, line 3, column 'label': 'n/a' is not a number \(task 'regression'\)$",
    ),
    "binary with three classes": (
        "a,b,label\n1,2,x\n3,4,y\n5,6,z\n",
        {"task": "binary"},
        r"data\.csv: column 'label' has 3 classes \(x, y, z\); task 'binary' needs exactly two",
    ),
    "ragged row": ("a,b,label\n1,2,x\n3,4\n", {}, r"data\.csv, line 3: 2 cells, but the header names 3 columns$"),
    "duplicate column": ("a,a,label\n1,2,x\n", {}, r"data\.csv: the header names column 'a' twice$"),
    "unknown task": ("a,b,label\n1,2,x\n", {"task": "ranking"}, r"data_loader\.args\.task: unknown task 'ranking'"),
    "predict without preprocessing": (
        "a,b,label\n1,2,x\n",
        {"split": "predict", "inputs": "INPUTS"},
        r"the split 'predict' needs inputs \(a CSV file\) and the checkpoint's data preprocessing$",
    ),
    "an unknown class": (
        "a,b,label\n1,2,x\n3,4,w\n",
        {"preprocessing": {"columns": ["a", "b"], "means": [0, 0], "stds": [1, 1], "classes": ["x", "y"]}},
        r"data\.csv, line 3, column 'label': class 'w' is not one the model was trained on \(x, y\)$",
    ),
    "other columns than trained": (
        "a,b,label\n1,2,x\n",
        {"preprocessing": {"columns": ["a", "size"], "means": [0, 0], "stds": [1, 1], "classes": ["x"]}},
        r"data\.csv: no feature column 'size'; the file's columns are a, b, label$",
    ),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_is_one_line_naming_the_file(tmp_path, case):
    text, args, message = BAD_DATA[case]
    path = tmp_path / ("missing.csv" if text is None else "data.csv")
    if text is not None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    args = {"csv_path": str(path), "target_column": "label", "validation_split": 0, "test_split": 0, **args}
    if args.get("inputs") == "INPUTS":
        args["inputs"] = str(path)
    with pytest.raises(DataError, match=message) as error:
        CsvDataLoader(**args)
    assert "\n" not in str(error.value)


def test_a_folder_given_for_the_csv_file_is_named_as_a_folder(tmp_path):
    with pytest.raises(DataError, match=r"^\S+: is a folder; pass the CSV file in it$"):
        CsvDataLoader(str(tmp_path), "label")


@pytest.mark.e2e
def test_regression_on_a_users_csv_trains_and_tests_by_name(tmp_path, base_config):
    config = shrink(base_config, tmp_path / "saved", epochs=40)
    config.update(
        name="Houses_MLP",
        arch={"type": "MLP", "args": {"in_features": 2, "out_features": 1, "hidden": 16, "layers": 1}},
        data_loader={
            "type": "CsvDataLoader",
            "args": {
                "csv_path": str(houses(tmp_path / "houses.csv", n=300)),
                "target_column": "price",
                "feature_columns": ["area", "rooms"],
                "id_column": "id",
                "task": "regression",
                "batch_size": 32,
            },
        },
        optimizer={"type": "Adam", "args": {"lr": 0.01}},
        loss="MSELoss",
        metrics=["r2", "mae"],
        lr_scheduler=None,
    )
    config["trainer"].update(monitor="max val_r2", early_stop=0, save_period=100)
    _, run = train(config, tmp_path)
    results = evaluate(run.checkpoint_dir)
    state = load_checkpoint(run.checkpoint_dir / BEST_NAME).state
    parsed = ConfigParser(state[KEY_CONFIG])
    model = parsed.init_obj("arch")
    model.load_state_dict(state[KEY_STATE_DICT])
    model.eval()
    loader = parsed.init_obj("data_loader", split="test", seed=0, preprocessing=state[KEY_DATA])
    x, y = everything(loader)
    with torch.no_grad():
        output = model(x)
    assert results["n_samples"] == 72
    assert results["r2"] == pytest.approx(sk.r2_score(y.numpy(), output.numpy()), abs=1e-5)
    assert results["r2"] >= 0.95


def test_a_checkpoints_preprocessing_of_the_wrong_kind_is_one_line(tmp_path):
    from data_loader.csv_data import CsvDataLoader

    rows = tmp_path / "new.csv"
    rows.write_text("a,b\n1,2\n3,4\n")
    good = {"columns": ["a", "b"], "means": [0.0, 0.0], "stds": [1.0, 1.0], "target_mean": 1.0, "target_std": 2.0}
    args = dict(csv_path=str(rows), target_column="y", task="regression", split="predict", inputs=str(rows))
    assert CsvDataLoader(**args, preprocessing=good).n_samples == 2
    for key, value, message in (
        ("target_mean", "x", "'target_mean' should be a finite number"),
        ("means", [0.0], "'means' should hold one value per feature column"),
        ("stds", [1.0, 0.0], "'stds' should be a list of numbers > 0"),
    ):
        with pytest.raises(DataError, match=message):
            CsvDataLoader(**args, preprocessing={**good, key: value})


def formula_rows(path: Path, n: int) -> Path:
    """Rows whose ids and classes a spreadsheet would run: `=ID<i>`, classes `=high` and `-low` (by x's sign)."""
    lines = ["id,x,y,label", *(f"=ID{i},{i % 7 - 3},{i % 3},{'=high' if i % 7 >= 3 else '-low'}" for i in range(n))]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.e2e
def test_predictions_go_through_a_fifo_with_formulas_quoted_unless_raw_csv(base_config, tmp_path):
    import predict as predict_script

    config = shrink(base_config, tmp_path / "saved", epochs=1)
    config.update(
        name="Formulas_MLP",
        arch={"type": "MLP", "args": {"in_features": 2, "out_features": 2}},
        data_loader={
            "type": "CsvDataLoader",
            "args": {
                "csv_path": str(formula_rows(tmp_path / "rows.csv", 40)),
                "target_column": "label",
                "id_column": "id",
                "batch_size": 8,
            },
        },
        loss="cross_entropy",
        metrics=["accuracy"],
        lr_scheduler=None,
    )
    config["trainer"].update(monitor="off", early_stop=0)
    _, run = train(config, tmp_path)
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    results = {}
    checkpoint = run.checkpoint_dir / LAST_NAME
    tested = rows_of(read_fifo_while(fifo, lambda: results.update(evaluate(checkpoint, "--predictions", str(fifo)))))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and len(tested) == results["n_samples"] > 0
    assert all(r["id"].startswith("'=ID") and {r["target"], r["prediction"]} <= {"'=high", "'-low"} for r in tested)
    assert list(tested[0]) == ["id", "target", "prediction", "prob_-low", "prob_=high"]  # the header: as it was
    raw_tested = tmp_path / "raw_tested.csv"
    evaluate(checkpoint, "--predictions", str(raw_tested), "--raw-csv", "--out", str(tmp_path / "raw_tested.json"))
    assert [r["id"] for r in rows_of(raw_tested.read_bytes())] == [r["id"][1:] for r in tested]

    new = tmp_path / "new.csv"
    new.write_text("id,x,y\n=1+1,3,0\n@SUM(A1),-3,1\n-7,2,2\n")

    def predict(*args: str) -> int:
        return predict_script.main(*predict_script.parse_args(["-r", str(run.checkpoint_dir), "-i", str(new), *args]))

    predicted = rows_of(read_fifo_while(fifo, lambda: predict("-o", str(fifo))))
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [r["id"] for r in predicted] == ["'=1+1", "'@SUM(A1)", "-7"]  # -7 is a number
    assert all(r["prediction"] in ("'=high", "'-low") and 0 <= float(r["prob_-low"]) <= 1 for r in predicted)
    assert predict("-o", str(tmp_path / "raw.csv"), "--raw-csv") == 3
    raw = rows_of((tmp_path / "raw.csv").read_bytes())
    assert [r["id"] for r in raw] == ["=1+1", "@SUM(A1)", "-7"]
    assert [r["prediction"] for r in raw] == [r["prediction"][1:] for r in predicted]


def test_a_head_of_another_size_than_the_classes_is_refused_before_training(tmp_path, tiny_config):
    rows = ["x,y,label", *(f"{i % 7},{i % 3},{'abc'[i % 3]}" for i in range(60))]
    (tmp_path / "three.csv").write_text("\n".join(rows) + "\n")
    tiny_config["arch"] = {"type": "MLP", "args": {"in_features": 2, "out_features": 5}}
    tiny_config["data_loader"] = {"type": "CsvDataLoader", "args": {"csv_path": str(tmp_path / "three.csv"),
                                                                    "target_column": "label"}}  # fmt: skip
    tiny_config["loss"], tiny_config["metrics"], tiny_config["lr_scheduler"] = "cross_entropy", ["accuracy"], None
    with pytest.raises(ConfigError, match=r"the model gives 5 scores per sample, the data has 3 classes \(a, b, c\)"):
        train(tiny_config, tmp_path, "five")
    (tmp_path / "one.csv").write_text("x,y,label\n" + "".join(f"{i},{i % 3},a\n" for i in range(60)))
    tiny_config["data_loader"]["args"]["csv_path"] = str(tmp_path / "one.csv")  # not "set out_features to 1"
    with pytest.raises(ConfigError, match=r"^data_loader: the training data has one class \(a\); a classifier needs"):
        train(tiny_config, tmp_path, "one")
    assert not (tmp_path / "saved").exists()  # refused in the rehearsal: no run folder


def test_features_and_targets_near_1e200_are_standardized_not_zeroed(tmp_path):
    rows = [[f"r{i}", f"{(i % 5 + 1) * 1e200:.6e}", i % 3, f"{(i % 4 + 1) * 1e200:.6e}"] for i in range(40)]
    path = write_csv(tmp_path / "huge.csv", ["id", "a", "b", "y"], rows)
    loader = CsvDataLoader(str(path), "y", id_column="id", task="regression", validation_split=0, test_split=0)
    features, targets = everything(loader)
    assert torch.isfinite(features).all() and features.std(dim=0).min() > 0.9
    assert targets.std() > 0.9 and loader.preprocessing["target_std"] == pytest.approx(
        statistics.stdev(i % 4 + 1 for i in range(40)) * 1e200
    )


@pytest.mark.parametrize(
    ("labels", "positive_label", "classes"),
    [
        (["no", "Yes"], None, ["no", "Yes"]),  # sorted as text, "Yes" came first and "no" was the positive class
        (["TRUE", "false"], None, ["false", "TRUE"]),
        (["1.0", "0"], None, ["0", "1"]),
        (["benign", "malignant"], "benign", ["malignant", "benign"]),
        (["2", "7"], 2, ["7", "2"]),
    ],
)
def test_the_positive_class_of_a_binary_task_is_defined(tmp_path, labels, positive_label, classes):
    rows = [[i, labels[i % 2]] for i in range(8)]
    path = write_csv(tmp_path / "b.csv", ["x", "label"], rows)
    loader = CsvDataLoader(str(path), "label", task="binary", positive_label=positive_label, validation_split=0,
                           test_split=0, shuffle=False)  # fmt: skip
    assert loader.classes == classes
    targets = everything(loader)[1][:, 0].tolist()
    assert targets == [float(as_label(labels[i % 2]) == classes[1]) for i in order(loader)]


def test_a_binary_task_whose_positive_class_is_not_obvious_must_name_it(tmp_path):
    path = write_csv(tmp_path / "b.csv", ["x", "label"], [[i, ["benign", "malignant"][i % 2]] for i in range(8)])
    with pytest.raises(DataError, match=r"positive_label: which of 'benign' and 'malignant' in column 'label' is the "
                       r"positive class"):  # fmt: skip
        CsvDataLoader(str(path), "label", task="binary")
    with pytest.raises(DataError, match=r"positive_label: 'cyst' is not a label of column 'label'"):
        CsvDataLoader(str(path), "label", task="binary", positive_label="cyst")


def test_numeric_labels_are_one_class_whatever_their_spelling(tmp_path):
    path = write_csv(tmp_path / "n.csv", ["x", "grade"], [[i, g] for i, g in enumerate(["1", "1.0", "2.50", "2.5"])])
    loader = CsvDataLoader(str(path), "grade", validation_split=0, test_split=0, shuffle=False)
    assert loader.classes == ["1", "2.5"]


def test_an_id_listed_twice_with_two_labels_is_one_line_naming_both(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["id", "x", "label"], [["a", 1, "cat"], ["b", 2, "dog"], ["a", 3, "dog"]])
    with pytest.raises(DataError, match=r"d\.csv, line 4, column 'label': id 'a' is labelled 'dog' here and 'cat' "
                       r"on line 2"):  # fmt: skip
        CsvDataLoader(str(path), "label", id_column="id", validation_split=0, test_split=0)


@pytest.mark.e2e
def test_regression_predictions_near_1e200_and_1e_300_are_in_the_targets_units(tmp_path, base_config):
    import predict as predict_script

    for scale in (1e200, 1e-300):
        rows = [[f"r{i}", i % 7, f"{(1 + i % 7) * scale:.6e}"] for i in range(60)]
        path = write_csv(tmp_path / f"y{scale:g}.csv", ["id", "x", "y"], rows)
        config = shrink(base_config, tmp_path / "saved", epochs=1)
        config.update(name="Scaled", arch={"type": "MLP", "args": {"in_features": 1, "out_features": 1}},
                      data_loader={"type": "CsvDataLoader", "args": {"csv_path": str(path), "target_column": "y",
                                                                     "id_column": "id", "task": "regression"}},
                      loss="MSELoss", metrics=["r2"], lr_scheduler=None)  # fmt: skip
        _, run = train(config, tmp_path, f"s{int(scale > 1)}")
        out = tmp_path / f"p{scale:g}.csv"
        predict_script.main(
            *predict_script.parse_args(["-r", str(run.checkpoint_dir), "-i", str(path), "-o", str(out)])
        )
        predicted = [float(v) for v in column(out, "prediction")]
        assert all(math.isfinite(v) and 0.01 * scale < abs(v) < 100 * scale for v in predicted), predicted[:3]


def test_labels_beyond_2_to_the_53_ids_with_two_values_and_positive_label_edges(tmp_path):
    big = write_csv(tmp_path / "big.csv", ["x", "y"], [[i, ["12345678901234567890", "12345678901234567891"][i % 2]]
                                                         for i in range(8)])  # fmt: skip
    assert CsvDataLoader(str(big), "y", validation_split=0, test_split=0).classes == [
        "12345678901234567890", "12345678901234567891"]  # fmt: skip
    twice = write_csv(tmp_path / "r.csv", ["id", "x", "y"], [["a", 1, 7.5], ["b", 2, 3.0], ["a", 3, 999]])
    with pytest.raises(DataError, match=r"line 4, column 'y': id 'a' is labelled '999' here and '7.5' on line 2"):
        CsvDataLoader(str(twice), "y", id_column="id", task="regression", validation_split=0, test_split=0)
    flags = write_csv(tmp_path / "f.csv", ["x", "y"], [[i, ["true", "FALSE"][i % 2]] for i in range(8)])
    args = dict(task="binary", validation_split=0, test_split=0)
    assert CsvDataLoader(str(flags), "y", positive_label=True, **args).classes == ["FALSE", "true"]  # JSON true
    assert CsvDataLoader(str(flags), "y", positive_label="false", **args).classes == ["true", "FALSE"]
    with pytest.raises(DataError, match=r"positive_label: only for task 'binary' \(the task is 'classification'\)"):
        CsvDataLoader(str(flags), "y", positive_label="true", validation_split=0, test_split=0)
