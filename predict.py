"""Predict new inputs with a trained checkpoint and write one CSV row per input.

python predict.py --resume saved/models/<name>/<run_id>/model_best.pth --input new_images/ --out predictions.csv
python predict.py --resume saved/models/<name>/<run_id> --input rows.csv --out predictions.csv
python predict.py --resume saved/models/<name>/<cv_run_id> --input test.csv --out submission.csv --tta hflip  # folds
"""

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from cli import ArgumentParser, check_csv_file, check_tta, command_line_overrides, load_for_evaluation
from parse_config import ConfigParser
from utils.errors import ConfigError, one_line_errors
from utils.util import check_output_path

if TYPE_CHECKING:  # torch is imported inside functions, so that --help answers without loading it
    from trainer.checkpoint import Checkpoint


def main(
    config: ConfigParser,
    checkpoints: list["Checkpoint"],
    inputs: str,
    out: Path,
    raw_csv: bool = False,
    float_format: str = ".6g",
    strip_extension: bool = False,
    tta: str | None = None,
) -> int:
    """Predict every input with the checkpoint's model (several checkpoints, a cross-validation's folds: their
    ensemble; `tta`: and each image's flipped views); write the rows to `out`; return how many. Ids and class
    names a spreadsheet would run as formulas get a leading single quote unless `raw_csv`; probabilities are
    written with `float_format`; `strip_extension` writes image ids without their extension (a/b.png -> a/b)."""
    # Heavy imports live here so that --help and config errors answer without loading torch.
    import torch

    from logger.logger import setup_logging
    from trainer.evaluation import evaluated_model, evaluation_loader, predict, prediction_rows, resolve_amp
    from trainer.options import TrainerOptions
    from utils.distributed import place_model
    from utils.util import write_csv

    setup_logging(None, config["verbosity"])
    logger = logging.getLogger("predict")
    if config["num_threads"] is not None:
        torch.set_num_threads(config["num_threads"])

    # the new inputs, read with the preprocessing of the training data (class names, statistics)
    data_loader = evaluation_loader(config, checkpoints[0], split="predict", inputs=inputs)

    # model with the checkpoint's weights (or the folds' ensemble), on the available device(s), in the run's precision
    model, device = place_model(evaluated_model(config, checkpoints, data_loader.task, tta), config["n_gpu"])
    amp_dtype = resolve_amp(TrainerOptions.of(config.config).amp, device)

    ids, outputs, _ = predict(model, data_loader, device, amp_dtype)
    if strip_extension:
        ids = without_image_extension(ids)
    header, rows = prediction_rows(ids, outputs, None, data_loader, float_format)
    write_csv(header, rows, out, raw=raw_csv)
    what = f"the ensemble of {len(checkpoints)} folds" if len(checkpoints) > 1 else str(checkpoints[0].path)
    logger.info("Wrote %d predictions of %s%s to %s", len(rows), what, f" with TTA {tta}" if tta else "", out)
    return len(rows)


def without_image_extension(ids: list[str]) -> list[str]:
    """Each id without its image file's extension (cats/0001.png -> cats/0001); any other id (v1.final, a row
    number) as it is. Two images that would get the same id are one error line."""
    from base.base_data_loader import IMAGE_SUFFIXES

    stripped, named = [], {}
    for name in ids:
        suffix = Path(name).suffix
        bare = name[: -len(suffix)] if suffix.lower() in IMAGE_SUFFIXES else name
        if named.setdefault(bare, name) != name:
            raise ConfigError(f"--strip-extension: {named[bare]} and {name} would both be written as {bare}")
        stripped.append(bare)
    return stripped


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Predict new inputs with a checkpoint: one CSV row per input (id, prediction, probabilities).",
        epilog=(
            "inputs: an image file or a folder of images (ImageFolderDataLoader), a CSV file without the\n"
            "target column (CsvDataLoader), or whatever else the run's loader reads as `inputs` (the kaggle\n"
            "feature's test.csv + test/, written as a submission in the file's order).\n"
            "overrides: dotted.key=value after the options, e.g. data_loader.args.batch_size=256"
        ),
    )
    parser.add_argument(
        "-r",
        "--resume",
        required=True,
        help="checkpoint (or a run folder: its model_best.pth, else last.pth; a cross-validation's folder: the "
        "ensemble of its folds)",
    )
    parser.add_argument(
        "-i", "--input", required=True, help="what to predict: an image, a folder of images, a CSV file"
    )
    parser.add_argument("-o", "--out", required=True, help="the CSV file to write (never overwritten)")
    parser.add_raw_csv()
    parser.add_argument(
        "--float-format",
        default=".6g",
        help="how probabilities are written: .<digits> then e, f, g or %% (default: .6g; e.g. .4f)",
    )
    parser.add_argument(
        "--strip-extension",
        action="store_true",
        help="write each image's id without its file extension (cats/0001.png -> cats/0001), as a submission may "
        "want; other ids stay as they are",
    )
    parser.add_tta()
    parser.add_device()
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ConfigParser, list["Checkpoint"], str, Path, bool, str, bool, str | None]:
    """main's arguments: the validated config, the checkpoint(s), the inputs, the output file, --raw-csv,
    --float-format, --strip-extension and --tta."""
    args = build_parser().parse_args(argv)
    if not re.fullmatch(r"\.\d{1,2}[efg%]", args.float_format):  # a width or 1e9 digits would never end
        raise ConfigError(f"--float-format {args.float_format!r}: expected .<digits><e, f, g or %>, e.g. .6g or .4f")
    out = Path(args.out)
    check_output_path(out)
    check_csv_file(out, "--out")
    if not Path(args.input).exists():
        raise ConfigError(f"--input {args.input}: not found")
    check_tta(args.tta)
    config, checkpoints = load_for_evaluation(args.resume, None, command_line_overrides(args), args.device)
    return config, checkpoints, args.input, out, args.raw_csv, args.float_format, args.strip_extension, args.tta


if __name__ == "__main__":
    with one_line_errors(interrupted="stopped before the predictions were written; nothing was written"):
        main(*parse_args())
