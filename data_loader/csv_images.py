"""Images named in a CSV file, in a folder beside it, labelled by another column: Kaggle's layout.

    data/train.csv    image_name,target       data/test.csv    image_name
                      ISIC_0001,0                              ISIC_1001
    data/train/       ISIC_0001.png ...       data/test/       ISIC_1001.png ...

The images are decoded, resized, cached, normalized and augmented as in ImageFolderDataLoader; the targets
are read as in CsvDataLoader (task "binary", "classification" or "regression").
"""

from collections.abc import Sequence
from pathlib import Path

from base.base_data_loader import BaseDataLoader
from data_loader.csv_data import check_task, csv_targets, read_split, rows_of
from data_loader.image_folder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_image_args,
    image_dataset,
    named,
)
from utils.errors import DataError


def image_files(folder: Path, ids: list[str], extension: str, csv_path: Path) -> list[Path]:
    """The image file of each id (with `extension` where it does not end in it already, as ids of Kaggle's files
    do or do not); one line naming the first that is missing."""
    files = [folder / (name if name.lower().endswith(extension.lower()) else f"{name}{extension}") for name in ids]
    inside = folder.resolve()
    outside = [name for name, f in zip(ids, files, strict=True) if not f.resolve().is_relative_to(inside)]
    if outside:  # an id such as ../../secret: a CSV file names images in its folder, nowhere else
        raise DataError(f"{named(csv_path)}: the id {named(outside[0])} names a file outside {named(folder)}")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"{named(missing[0])}: image not found ({len(missing)} of the {len(files)} images named in "
            f"{named(csv_path)} are missing); check image_dir, id_column and extension"
        )
    return files


class CsvImageDataLoader(BaseDataLoader):
    """Images named by `id_column` of the CSV file `csv_file` in the folder `data_dir` (plus `extension`, e.g.
    ".png", where the ids have none), in `image_dir` of `data_dir` (null: the folder named like the CSV file:
    train.csv -> train/), with their label in `target_column`.

    `task`: "binary" (two labels, `positive_label` or 1/true/yes is 1; targets (B, 1) float, for one logit:
    bce_with_logits, BCEWithLogitsLoss), "classification" (class indices, a score per class) or "regression"
    (the value, standardized with the training rows). A sample's split follows its id; `stratify` gives each
    split its share of every label (binary and classification). For predictions,
    `inputs` is a CSV file of ids (Kaggle's test.csv), its images in the folder named like it beside it; the
    predictions file is then a submission, `<id_column>,<target_column>` in the input's order (for a binary
    task the probability of the positive class). Image arguments as in ImageFolderDataLoader.
    """

    def __init__(
        self,
        data_dir: str,
        csv_file: str = "train.csv",
        id_column: str = "image_name",
        target_column: str = "target",
        task: str = "binary",
        positive_label: str | None = None,
        image_dir: str | None = None,
        extension: str = "",
        image_size: int = 32,
        channels: int = 3,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 64,
        shuffle: bool = True,
        validation_split: float | int = 0.1,
        test_split: float | int = 0.2,
        split_seed: int = 0,
        stratify: bool = False,
        augment: bool = False,
        in_memory: bool = True,
        cache: bool = True,
        cache_dir: str | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        split: str = "train",
        seed: int = 0,
        inputs: str | None = None,
        preprocessing: dict | None = None,
    ) -> None:
        check_task(task, stratify)
        check_image_args(channels, mean, std, image_size)
        csv_path = Path(data_dir) / csv_file
        table, preprocessing = read_split(str(csv_path), split, inputs, preprocessing)
        if image_dir is not None and split != "predict":
            folder = Path(data_dir) / image_dir
        else:
            folder = table.path.with_suffix("")  # data/train.csv -> data/train/
        self.ids = table.texts(id_column, "id")
        for i, name in enumerate(self.ids):  # no file has such a name: the line says where, not "embedded null byte"
            if "\0" in name:
                raise table.error(i, id_column, "the id holds a NUL byte; no file can be named so")
        files = image_files(folder, self.ids, extension, table.path)
        if split != "predict":
            table.check_column(target_column, "target")
        strata = target_column if stratify else None
        rows = rows_of(table, id_column, split, validation_split, test_split, split_seed, strata)  # by id
        self.task, self.submission = task, (id_column, target_column)
        targets, self.classes, self.preprocessing = csv_targets(
            table, target_column, task, split, rows.get("train"), preprocessing, id_column, positive_label
        )
        dataset = image_dataset(folder, files, targets, image_size, channels, mean, std, augment, in_memory,
                                cache and split != "predict", cache_dir)  # fmt: skip
        super().__init__(dataset, rows[split], batch_size, shuffle, num_workers, seed, split == "train", pin_memory,
                         persistent_workers)  # fmt: skip

    def sample_id(self, index: int) -> str:
        """The image's id, as the CSV file writes it."""
        return self.ids[index]
