"""Evaluate a checkpoint on the held-out test split (or another split) and save the results as JSON.

python test.py --resume saved/models/<name>/<run_id>/model_best.pth
python test.py --resume saved/models/<name>/<run_id>/model_best.pth --split valid data_loader.args.batch_size=256
python test.py --resume saved/models/<name>/<cv_run_id> --tta hflip    # a cross-validation's fold ensemble (cv)
"""

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import ArgumentParser, check_csv_file, check_tta, command_line_overrides, load_for_evaluation
from parse_config import ConfigParser
from utils.errors import ConfigError, one_line_errors
from utils.util import check_output_path

if TYPE_CHECKING:  # torch is imported inside functions, so that --help answers without loading it
    from trainer.checkpoint import Checkpoint


def main(
    config: ConfigParser,
    checkpoints: list["Checkpoint"],
    split: str,
    out: Path,
    predictions: Path | None = None,
    raw_csv: bool = False,
    tta: str | None = None,
) -> dict:
    """Evaluate the checkpoint's model (several, a cross-validation's folds: their ensemble; `tta`: with flipped
    views) on `split`; write the per-sample averages to `out` and return them. With `predictions`, also write a
    CSV row per sample there (id, target, prediction, probabilities), formulas defused unless `raw_csv`."""
    # Heavy imports live here so that --help and config errors answer without loading torch.
    import torch

    from base.base_data_loader import worker_failures_as_data_errors
    from logger.logger import setup_logging
    from logger.visualization import tracker_summary
    from trainer.checkpoint import wandb_run_id
    from trainer.evaluation import evaluate, evaluated_model, evaluation_loader, resolve_amp
    from trainer.options import TrainerOptions
    from utils.distributed import place_model
    from utils.util import write_output

    to_stdout = str(out) == "-"
    # with --out -, stdout holds the JSON alone: warnings (an undefined metric) go to stderr
    setup_logging(None, 0 if to_stdout else config["verbosity"], "stderr" if to_stdout else "stdout")
    logger = logging.getLogger("test")
    checkpoint = checkpoints[0]  # its preprocessing is every fold's, and its W&B run the one test.py reports to
    logger.info("Evaluating %s on the %s split", ", ".join(str(c.path) for c in checkpoints), split)
    if config["num_threads"] is not None:
        torch.set_num_threads(config["num_threads"])

    # data: the split to evaluate, never augmented, with the preprocessing the checkpoint was trained with
    data_loader = evaluation_loader(config, checkpoint, split=split)
    check_not_empty(data_loader, split, config["data_loader"]["type"], len(checkpoints) > 1)

    # model with the checkpoint's weights (or the folds' ensemble), on the available device(s), in the run's
    # precision (as its validation was)
    model, device = place_model(evaluated_model(config, checkpoints, data_loader.task, tta), config["n_gpu"])
    amp_dtype = resolve_amp(TrainerOptions.of(config.config).amp, device)

    # loss and metrics, averaged per sample; with a tracker (W&B), also into the summary of the run that trained it
    criterion, metrics = config.init_ftn("loss"), config.init_ftn("metrics")
    run_id = wandb_run_id(checkpoint) if len(checkpoints) == 1 and tta is None else None  # an ensemble: no run's
    with tracker_summary(tracker_dir(checkpoint), config.config, run_id) as summary:
        with worker_failures_as_data_errors():
            results = evaluate(model, data_loader, criterion, metrics, device, amp_dtype, desc=f"Test ({split})")
        results = {"n_samples": data_loader.n_samples, **results}
        if predictions is not None:
            write_predictions(model, data_loader, device, amp_dtype, split, predictions, raw_csv)

        evaluated = [str(c.path) for c in checkpoints] if len(checkpoints) > 1 else str(checkpoint.path)
        write_output({"checkpoint": evaluated, **({"tta": tta} if tta else {}), "split": split, **results}, out)
        logger.info("%s", json.dumps(results, indent=4))
        logger.info("Results written to %s", "standard output" if to_stdout else out)
        # model_best/accuracy/test: which checkpoint, and never a key of the training's own history (accuracy/valid)
        name = checkpoint.path.stem
        summary.update({f"{name}/{k}/{split}": v for k, v in results.items() if not isinstance(v, list)})
    return results


def check_not_empty(data_loader: Any, split: str, loader: str, folds: bool) -> None:
    """An empty split is one line: a cross-validation's folds (no test split held out) are scored by oof.csv."""
    if data_loader.n_samples == 0:
        advice = "the cross-validation's scores are its oof.csv and cv.json" if folds else "choose another --split"
        raise ConfigError(f"the {split} split of {loader} is empty; {advice}")


def write_predictions(
    model: Any, data_loader: Any, device: Any, amp_dtype: Any, split: str, path: Path, raw_csv: bool
) -> None:
    """One CSV row per sample: a second pass over the split, in the same order, keeping every output."""
    from base.base_data_loader import worker_failures_as_data_errors
    from trainer.evaluation import predict, prediction_rows
    from utils.util import write_csv

    with worker_failures_as_data_errors():
        ids, outputs, targets = predict(model, data_loader, device, amp_dtype, desc=f"Predictions ({split})")
    write_csv(*prediction_rows(ids, outputs, targets, data_loader), path, raw=raw_csv)
    logging.getLogger("test").info("Per-sample predictions written to %s", path)


def tracker_dir(checkpoint: "Checkpoint") -> Path:
    """Where a tracker (W&B) keeps its files when test.py reports to a run: the run's log folder, or beside the
    checkpoint when it was taken out of its run folder."""
    from logger.run_folder import RunFolder

    try:
        log_dir = RunFolder.of_checkpoint(checkpoint.path).log_dir
    except ConfigError:
        return checkpoint.path.parent
    return log_dir if log_dir.is_dir() else checkpoint.path.parent


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Evaluate a checkpoint and write its loss and metrics as JSON (beside it, or to --out).",
        epilog=(
            "overrides: any config key as dotted.key=value after the options, e.g.\n"
            "  python test.py -r saved/models/Digits_CNN/0101_120000/model_best.pth data_loader.args.batch_size=256"
        ),
    )
    parser.add_argument(
        "-r",
        "--resume",
        required=True,
        help="checkpoint to evaluate (or a run folder: its model_best.pth, else last.pth)",
    )
    parser.add_argument("-c", "--config", help="config to use instead of the one stored in the checkpoint")
    parser.add_device()
    parser.add_argument(
        "--split", choices=("test", "valid", "train"), default="test", help="split to evaluate (default: test)"
    )
    parser.add_argument(
        "--out",
        help="JSON file for the results, or - for standard output "
        "(default: <checkpoint>.epoch<N>.<split>[.<hash of overrides>].json beside it)",
    )
    parser.add_argument(
        "--predictions", help="also write one CSV row per sample here: id, target, prediction, probabilities"
    )
    parser.add_raw_csv("with --predictions: ")
    parser.add_tta()
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ConfigParser, list["Checkpoint"], str, Path, Path | None, bool, str | None]:
    """main's arguments: the validated config, the checkpoint(s), the split, the results file, the
    predictions file (or None), --raw-csv and --tta."""
    args = build_parser().parse_args(argv)
    if args.raw_csv and args.predictions is None:
        raise ConfigError("--raw-csv: only with --predictions (it says how the predictions CSV is written)")
    predictions = None if args.predictions is None else Path(args.predictions)
    if predictions is not None:
        check_output_path(predictions)
        check_csv_file(predictions, "--predictions")
        if args.out is not None and Path(args.out).absolute() == predictions.absolute():
            raise ConfigError(f"--predictions {predictions}: the same file as --out; give each its own")
    check_tta(args.tta)
    config, checkpoints = load_for_evaluation(args.resume, args.config, command_line_overrides(args), args.device)
    from trainer.checkpoint import wandb_run_id

    wandb_run_id(checkpoints[0])  # checked now, before anything is evaluated or written
    from logger.run_folder import cross_validation_of

    if args.split != "test" and (len(checkpoints) > 1 or cross_validation_of(checkpoints[0].path) is not None):
        raise ConfigError(
            f"--split {args.split}: a cross-validation's folds each trained on the others' rows; their scores on "
            "rows they did not train on are its oof.csv and cv.json; evaluate the ensemble on the test split"
        )
    out = results_path(checkpoints, args.split, args.config, args.overrides, args.out, args.tta)
    return config, checkpoints, args.split, out, predictions, args.raw_csv, args.tta


def results_path(
    checkpoints: list["Checkpoint"],
    split: str,
    config: str | None,
    overrides: list[str],
    out: str | None,
    tta: str | None = None,
) -> Path:
    """`--out`, or beside the checkpoint a name that says what was evaluated: the checkpoint's name and epoch
    (model_best.pth is rewritten as training goes on), the views of --tta, the split, and a hash of -c and the
    overrides when there are any: model_best.epoch17.test.json, model_best.epoch17.tta-hflip.test.json,
    last.epoch3.batch40.valid.json (a checkpoint saved inside epoch 3); a
    cross-validation's ensemble in its folder: ensemble.test.json. An earlier result is never overwritten
    without --out."""
    from trainer.checkpoint import KEY_BATCH, KEY_EPOCH

    if out is not None:
        check_output_path(Path(out))
        return Path(out)
    checkpoint, folder = checkpoints[0], checkpoints[0].path.parent
    batch = checkpoint.state.get(KEY_BATCH) or 0  # a last.pth saved inside an epoch: after that many batches
    name = f"{checkpoint.path.stem}.epoch{checkpoint.state[KEY_EPOCH]}" + (f".batch{batch}" if batch else "")
    if len(checkpoints) > 1:
        name, folder = "ensemble", folder.parent
    name += (f".tta-{tta.replace(',', '-')}" if tta else "") + f".{split}"
    if config is not None or overrides:
        name += "." + hashlib.sha256(json.dumps([config, overrides]).encode()).hexdigest()[:8]
    path = folder / f"{name}.json"
    if path.exists():
        raise ConfigError(f"{path}: an earlier result of the same evaluation exists; pass --out FILE, or remove it")
    check_output_path(path)
    return path


if __name__ == "__main__":
    with one_line_errors(interrupted="stopped before the evaluation finished; nothing was written"):
        main(*parse_args())
