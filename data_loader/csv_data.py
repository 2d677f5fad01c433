"""Tables from a CSV file with a header row: numeric features (CsvDataLoader) or a text (TextCsvDataLoader, in
text_csv.py), and one target column.

    area,rooms,city_id,price            review,label
    52.0,2,3,189000                     "A fine film, well acted.",good

The file is read once, with the standard library's csv module, into memory. A sample's id in predictions
files is its row number (1 = the first row after the header; blank rows are not counted) or the value of
`id_column`; error lines name the file, the line (the header is line 1) and the column. Every statistic is
taken from the training split only and saved as the loader's `preprocessing`, so test.py and predict.py
read new rows as training did.
"""

import csv
import math
from pathlib import Path
from typing import Any

import torch

from base.base_data_loader import BaseDataLoader, InMemoryTensors, split_indices
from utils.errors import DataError, did_you_mean

TASKS = ("classification", "binary", "regression")
NOT_A_FEATURE = " (features are numbers; leave the column out with data_loader.args.feature_columns)"


class CsvTable:
    """A CSV file's column names and data rows, as stripped strings; blank rows are skipped (and not counted)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            wrong = "is a folder; pass the CSV file in it" if self.path.is_dir() else "CSV file not found"
            raise DataError(f"{self.path}: {wrong}")
        self.rows: list[list[str]] = []
        self.lines: list[int] = []  # the file's line number of each row, for error messages
        try:
            with self.path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's byte-order mark
                reader = csv.reader(handle)
                self.columns = [name.strip() for name in next(reader, [])]
                for row in reader:
                    if not any(cell.strip() for cell in row):  # a blank line, or Excel's ",,," for an empty row
                        continue
                    if len(row) != len(self.columns):
                        raise DataError(
                            f"{self.path}, line {reader.line_num}: {len(row)} cells, but the header names "
                            f"{len(self.columns)} columns"
                        )
                    self.rows.append([cell.strip() for cell in row])
                    self.lines.append(reader.line_num)
        except UnicodeDecodeError:
            raise DataError(f"{self.path}: not a UTF-8 text file (save it as CSV UTF-8)") from None
        except OSError as e:
            raise DataError(f"{self.path}: cannot be read ({e.strerror or e})") from None
        except csv.Error as e:
            raise DataError(f"{self.path}, line {reader.line_num}: not valid CSV ({e})") from None
        if not self.rows:
            raise DataError(f"{self.path}: no data rows (expected a header row of column names, then a row per sample)")
        for name in self.columns:
            if self.columns.count(name) > 1:
                raise DataError(f"{self.path}: the header names column {name!r} twice")

    def __len__(self) -> int:
        return len(self.rows)

    def check_column(self, name: str, role: str) -> None:
        if name not in self.columns:
            raise DataError(
                f"{self.path}: no {role} column {name!r}; the file's columns are "
                f"{', '.join(self.columns)}{did_you_mean(name, self.columns)}"
            )

    def error(self, row: int, column: str, problem: str) -> DataError:
        return DataError(f"{self.path}, line {self.lines[row]}, column {column!r}: {problem}")

    def texts(self, column: str, role: str) -> list[str]:
        """The column's cells; an empty one is an error."""
        self.check_column(column, role)
        index = self.columns.index(column)
        cells = [row[index] for row in self.rows]
        for i, cell in enumerate(cells):
            if not cell:
                raise self.error(i, column, "empty cell (every row needs a value here)")
        return cells

    def numbers(self, column: str, role: str, advice: str = "") -> torch.Tensor:
        """The column as float64 (N,); a cell that is not a finite number is an error."""
        values = []
        for i, cell in enumerate(self.texts(column, role)):
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise self.error(i, column, f"{cell!r} is not a number{advice}")
            values.append(value)
        return torch.tensor(values, dtype=torch.float64)

    def ids(self, id_column: str | None) -> list[str]:
        """A name per row: the id column's value, or the row number (1 = the first row after the header)."""
        return self.texts(id_column, "id") if id_column is not None else [str(i + 1) for i in range(len(self))]


def read_split(csv_path: str, split: str, inputs: str | None, preprocessing: dict | None) -> tuple[CsvTable, dict]:
    """The table a split reads (`inputs` for "predict", which needs the checkpoint's `preprocessing`, else
    `csv_path`) and the saved preprocessing ({} when there is none: compute it from the training rows)."""
    if split != "predict":
        return CsvTable(csv_path), preprocessing or {}
    if inputs is None or not preprocessing:
        raise DataError("the split 'predict' needs inputs (a CSV file) and the checkpoint's data preprocessing")
    return CsvTable(inputs), preprocessing


def rows_of(
    table: CsvTable,
    id_column: str | None,
    split: str,
    validation_split: float | int,
    test_split: float | int,
    seed: int,
    stratify_by: str | None = None,
) -> dict:
    """The row indices of each split: {"train", "valid", "test"}, or every row as "predict". A row's split
    follows its id column's value, or without one its content: never its position in the file. With
    `stratify_by` (the target column), each split takes its share of every label."""
    if split == "predict":
        return {"predict": torch.arange(len(table))}
    keys = table.texts(id_column, "id") if id_column is not None else [",".join(row) for row in table.rows]
    strata = table.texts(stratify_by, "target") if stratify_by is not None else None
    group_column = getattr(validation_split, "group_column", None)  # a cross-validation's fold keeps groups whole
    groups = table.texts(group_column, "group") if group_column is not None else None
    splits = split_indices(keys, validation_split, test_split, seed, strata, groups)
    if len(splits["train"]) == 0:
        raise DataError(
            f"{table.path}: {len(table)} rows leave none for training; lower validation_split or test_split"
        )
    return splits


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# What each value of a checkpoint's preprocessing must be: a checkpoint is input like any other.
SAVED_CHECKS = {
    "target_mean": (_number, "a finite number"),
    "target_std": (lambda v: _number(v) and v > 0, "a number > 0"),
    "means": (lambda v: isinstance(v, list) and all(map(_number, v)), "a list of numbers"),
    "stds": (lambda v: isinstance(v, list) and all(_number(x) and x > 0 for x in v), "a list of numbers > 0"),
    "columns": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of column names"),
    "classes": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v) and v, "a list of class names"),
}


def saved(preprocessing: dict, key: str, table: CsvTable) -> list | float:
    """A value of the checkpoint's preprocessing; one line when the checkpoint was made by another loader, or
    the value is not what this loader saves there."""
    if key not in preprocessing:
        raise DataError(
            f"{table.path}: the checkpoint's data preprocessing has no {key!r} (it was made by another data "
            "loader or task); evaluate it with the data loader it was trained with"
        )
    check, expected = SAVED_CHECKS[key]
    if not check(preprocessing[key]):
        raise DataError(f"the checkpoint's data preprocessing: {key!r} should be {expected}")
    if key in ("means", "stds") and len(preprocessing[key]) != len(preprocessing.get("columns", [])):
        raise DataError(f"the checkpoint's data preprocessing: {key!r} should hold one value per feature column")
    return preprocessing[key]


def mean_and_std(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of (N, ...) values; a constant column (or a single row) gets std 1 instead of 0 or NaN. Taken on
    the values divided by the column's largest magnitude: squares of values near 1e200 pass float64's range, and
    an infinite std made every value 0."""
    scale = values.abs().amax(dim=0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    mean, std = (values / scale).mean(dim=0) * scale, (values / scale).std(dim=0) * scale
    return mean, torch.where(std > 0, std, torch.ones_like(std))  # NaN > 0 is False


def class_names(labels: list[str]) -> list[str]:
    """The distinct labels, sorted numerically when all are numbers ("2" before "10"), else as text."""
    distinct = set(labels)
    try:  # ties of float (integers beyond 2**53) broken by the text: an order that never moves with the hash seed
        nan = {label for label in distinct if math.isnan(float(label))}  # "nan", "NaN": ordered by no number, last
        return sorted(distinct - nan, key=lambda label: (float(label), len(label), label)) + sorted(nan)
    except ValueError:
        return sorted(distinct)


def as_label(cell: str) -> str:
    """A label as a class name: a number as its shortest form ("1.0" and "1" are one class, "2.50" is "2.5")."""
    try:
        return str(int(cell))  # exact, however long (12345678901234567890 and ...891 stay two classes)
    except ValueError:
        pass
    try:
        value = float(cell)
    except ValueError:
        return cell
    if not math.isfinite(value):
        return cell
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


# Binary labels whose positive class goes without saying, compared lower-case: the second of each pair is 1.
BINARY_PAIRS = (("0", "1"), ("false", "true"), ("no", "yes"), ("n", "y"), ("negative", "positive"))


def binary_classes(classes: list[str], positive_label: str | None, column: str) -> list[str]:
    """[negative, positive]: `positive_label`, else the pair's obvious one (1, true, yes); anything else must be
    named, as which of "benign" and "malignant" is 1 is the question the model answers."""
    if positive_label is not None:  # true in JSON is "True"; "yes" names "Yes": matched regardless of case
        named = [c for c in classes if c.lower() == as_label(str(positive_label)).lower()]
        if len(named) != 1:
            raise DataError(
                f"data_loader.args.positive_label: {positive_label!r} is not a label of column {column!r} "
                f"({', '.join(classes)})"
            )
        return sorted(classes, key=lambda c: c == named[0])
    for negative, positive in BINARY_PAIRS:
        if sorted(c.lower() for c in classes) == [negative, positive]:
            return sorted(classes, key=lambda c: c.lower() == positive)
    raise DataError(
        f"data_loader.args.positive_label: which of {classes[0]!r} and {classes[1]!r} in column {column!r} is the "
        "positive class (the 1 the model's probability is of)? name it, e.g. positive_label: "
        f"{classes[1]!r}"
    )


def check_one_target_per_id(table: CsvTable, id_column: str, column: str) -> None:
    """An id listed twice with two targets would train both ways without a word: one line naming both lines."""
    labels, first = [as_label(cell) for cell in table.texts(column, "target")], {}
    for i, name in enumerate(table.ids(id_column)):
        j = first.setdefault(name, i)
        if labels[j] != labels[i]:
            raise table.error(
                i, column, f"id {name!r} is labelled {labels[i]!r} here and {labels[j]!r} on line {table.lines[j]}"
            )


def class_targets(
    table: CsvTable, column: str, split: str, preprocessing: dict, id_column: str | None = None
) -> tuple[list[str], torch.Tensor]:
    """The class names (the checkpoint's, or the file's labels sorted) and each row's class index (N,) int64;
    -1 for every row of the split "predict" (no labels). An id listed twice with two labels is an error."""
    if split == "predict":
        return list(saved(preprocessing, "classes", table)), torch.full((len(table),), -1)
    labels = [as_label(cell) for cell in table.texts(column, "target")]
    if id_column is not None:
        check_one_target_per_id(table, id_column, column)
    classes = list(saved(preprocessing, "classes", table)) if preprocessing else class_names(labels)
    number = {as_label(name): i for i, name in enumerate(classes)}
    for i, label in enumerate(labels):
        if label not in number:
            raise table.error(i, column, f"class {label!r} is not one the model was trained on ({', '.join(classes)})")
    return classes, torch.tensor([number[label] for label in labels], dtype=torch.int64)


def check_task(task: str, stratify: bool = False) -> None:
    if task not in TASKS:
        raise DataError(f"data_loader.args.task: unknown task {task!r} (valid: {', '.join(TASKS)})")
    if stratify and task == "regression":
        raise DataError("data_loader.args.stratify: a regression target has no labels to stratify by; set it false")


def csv_targets(
    table: CsvTable,
    column: str,
    task: str,
    split: str,
    train_rows: torch.Tensor | None,
    preprocessing: dict,
    id_column: str | None = None,
    positive_label: str | None = None,
) -> tuple[torch.Tensor, list[str] | None, dict]:
    """(each row's target, the class names or None, what predictions need to read an output) for `task`:
    - "classification": class indices (N,) int64 of the labels sorted (numerically when all are numbers);
    - "binary": exactly two labels, `positive_label` (or 1, true, yes) is 1: (N, 1) float 0/1, for one logit;
    - "regression": the value standardized with the training rows' mean and std, (N, 1) float.
    Rows of the split "predict" have no target: -1. Statistics and classes come from the checkpoint's
    `preprocessing` when there is one, else from the training rows."""
    if positive_label is not None and task != "binary":
        raise DataError(f"data_loader.args.positive_label: only for task 'binary' (the task is {task!r}); remove it")
    if split != "predict" and id_column is not None:
        check_one_target_per_id(table, id_column, column)
    if task == "regression":
        values = None if split == "predict" else table.numbers(column, "target", " (task 'regression')")
        if preprocessing:
            mean, std = (saved(preprocessing, k, table) for k in ("target_mean", "target_std"))
        else:
            mean, std = (v.item() for v in mean_and_std(values[train_rows]))
        if values is None:
            return torch.full((len(table), 1), -1.0), None, {"target_mean": mean, "target_std": std}
        return ((values - mean) / std).float().unsqueeze(1), None, {"target_mean": mean, "target_std": std}
    classes, targets = class_targets(table, column, split, preprocessing)
    if task == "binary":
        if len(classes) != 2:
            raise DataError(
                f"{table.path}: column {column!r} has {len(classes)} classes ({', '.join(classes[:10])}); "
                "task 'binary' needs exactly two (or use 'classification')"
            )
        if not preprocessing:  # [negative, positive]; a checkpoint's order stays as it was trained
            ordered = binary_classes(classes, positive_label, column)
            targets = targets if ordered == classes else 1 - targets
            classes = ordered
        targets = targets.float().unsqueeze(1)  # (N, 1) 0/1, for one logit (BCEWithLogitsLoss, bce_with_logits)
    return targets, classes, {"classes": classes}


class CsvDataLoader(BaseDataLoader):
    """Numeric features and one target from a CSV file: your own table, without writing a loader.

    `feature_columns`: the columns the model reads (null: every column but the target and `id_column`);
    each is standardized with the mean and std of the training rows. `task`, one of:
    - "classification": the targets are class labels (any text); the classes are the distinct labels,
      sorted (numerically when all are numbers); targets are class indices (B,) int64 and the model gives a
      score per class (cross_entropy);
    - "binary": exactly two labels; `positive_label` is 1 (by default 1, true or yes, whatever the case; other
      labels must be named); targets (B, 1) float 0/1 and the model gives one logit (BCEWithLogitsLoss);
    - "regression": a numeric target, standardized with the training rows' mean and std (as (B, 1) float):
      R² is unchanged, the loss and MAE are in standard deviations; predictions are in the target's units.
    Batches are (features (B, F) float32, targets). For predictions, `inputs` is a CSV file with the same
    feature columns (the target column may be absent), served as the split "predict".
    """

    def __init__(
        self,
        csv_path: str,
        target_column: str,
        feature_columns: list[str] | None = None,
        id_column: str | None = None,
        task: str = "classification",  # classification | binary | regression
        positive_label: str | None = None,
        batch_size: int = 32,
        shuffle: bool = True,
        validation_split: float | int = 0.1,
        test_split: float | int = 0.2,
        split_seed: int = 0,
        stratify: bool = False,
        num_workers: int = 0,
        split: str = "train",
        seed: int = 0,
        inputs: str | None = None,
        preprocessing: dict | None = None,
    ) -> None:
        check_task(task, stratify)
        table, preprocessing = read_split(csv_path, split, inputs, preprocessing)
        if split != "predict":
            table.check_column(target_column, "target")
        columns = self._feature_columns(table, target_column, feature_columns, id_column, preprocessing)
        strata = target_column if stratify else None
        splits = rows_of(table, id_column, split, validation_split, test_split, split_seed, strata)
        features = torch.stack([table.numbers(c, "feature", NOT_A_FEATURE) for c in columns], dim=1)  # (N, F) f64
        if preprocessing:
            mean = torch.tensor(saved(preprocessing, "means", table), dtype=torch.float64)
            std = torch.tensor(saved(preprocessing, "stds", table), dtype=torch.float64)
        else:
            mean, std = mean_and_std(features[splits["train"]])
        self.preprocessing = {"columns": columns, "means": mean.tolist(), "stds": std.tolist()}
        features = ((features - mean) / std).float()

        self.task = task
        targets, self.classes, kept = csv_targets(
            table, target_column, task, split, splits.get("train"), preprocessing, id_column, positive_label
        )
        self.preprocessing |= kept
        self.ids = table.ids(id_column)
        super().__init__(
            InMemoryTensors(features, targets), splits[split], batch_size, shuffle, num_workers, seed, split == "train"
        )

    @staticmethod
    def _feature_columns(
        table: CsvTable, target: str, given: list[str] | None, id_column: str | None, preprocessing: dict
    ) -> list[str]:
        """The feature columns: the checkpoint's, the configured ones, or every column but the target and id."""
        if given is not None and (isinstance(given, str) or not given):
            raise DataError(f"data_loader.args.feature_columns: expected a list of column names, found {given!r}")
        if preprocessing:
            columns = list(saved(preprocessing, "columns", table))
            if given is not None and list(given) != columns:
                raise DataError(
                    f"data_loader.args.feature_columns: {', '.join(given)}: not the columns the model was trained on "
                    f"({', '.join(columns)})"
                )
        else:
            columns = list(given) if given is not None else [c for c in table.columns if c not in (target, id_column)]
            if target in columns:
                raise DataError(f"data_loader.args.feature_columns: the target column {target!r} cannot be a feature")
            if not columns:
                raise DataError(f"{table.path}: no feature columns (the file has only {', '.join(table.columns)})")
        for column in columns:
            table.check_column(column, "feature")
        return columns

    def sample_id(self, index: int) -> str:
        """The row number in the file (1 = the first row after the header), or the id column's value."""
        return self.ids[index]
