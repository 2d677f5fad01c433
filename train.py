"""Train a model described by a config file.

python train.py -c config.json
python train.py -c config.json trainer.epochs=3 optimizer.args.lr=0.01
python train.py --resume saved/models/<name>/<run_id>/last.pth            # continue a run
python train.py --resume saved/models/<name>/<run_id>/model_best.pth -c config.json   # fine-tune
python train.py -c config.json --folds 5                                        # cross-validate (the cv feature)
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import ArgumentParser, command_line_overrides, select_devices
from logger.run_folder import check_not_a_fold, check_run_id, is_cross_validation
from parse_config import ConfigParser
from utils.errors import ConfigError, interrupts_held, one_line_errors
from utils.util import feature_module

if TYPE_CHECKING:  # torch is imported inside functions, so that --help answers without loading it
    from trainer.callbacks import Callback
    from trainer.checkpoint import Checkpoint
    from trainer.trainer import Trainer


def main(
    config: ConfigParser,
    resume: "Checkpoint | None" = None,
    weights: "Checkpoint | None" = None,
    run_id: str | None = None,
    dry_run: bool = False,
    callbacks: Sequence["Callback"] = (),
    loader_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train; return {"last": results of the last epoch, "best": results of the best epoch or None}.

    `resume` continues that checkpoint's run in its folder; `weights` starts a new run from a checkpoint's
    weights (fine-tuning). `dry_run` sends one training and one validation batch through the real step and
    writes nothing. `callbacks` are called after the config's own (for scripts and tests). `loader_args` go to
    both data loaders besides the config's args (a cross-validation's fold and shared preprocessing).
    """
    # Heavy imports live here so that --help and config errors answer without loading torch.
    from base.base_data_loader import worker_failures_as_data_errors
    from logger.logger import log_summary, setup_logging, start_run_logging
    from logger.run_folder import run_folder
    from trainer.checkpoint import wandb_run_id
    from utils.distributed import distributed_session, is_main_process
    from utils.util import seed_everything

    # A DataLoader worker's crash is reported by a signal handler wherever the main thread is: one line, too.
    with distributed_session(), worker_failures_as_data_errors():
        setup_logging(None, config["verbosity"] if is_main_process() else 0)  # rank 0 speaks for everyone
        seed_everything(config["seed"], config["deterministic"], config["num_threads"])
        trainer = build_trainer(config, resume, weights, callbacks, loader_args or {})

        # one training and one validation batch through the real step, on a copy of the state: what a config
        # breaks only when it runs fails here, before anything is written (a dry run is this and no more)
        result, folder = trainer.rehearse(), None
        if not dry_run:
            # everything is valid: only now make the run folder, start info.log and TensorBoard, and train
            with run_folder(config.config, run_id, resume.path if resume else None) as folder:
                writer = start_run_logging(folder, config.config, wandb_run_id(resume) if resume else None)
                result = trainer.train(folder, writer)
    log_summary(result, trainer.monitor, config.config, folder.checkpoint_dir if folder else None)
    return result


def build_trainer(
    config: ConfigParser,
    resume: "Checkpoint | None",
    weights: "Checkpoint | None",
    callbacks: Sequence["Callback"],
    loader_args: dict[str, Any],
) -> "Trainer":
    """Everything the config describes, built in order: loss and metrics, model, data, optimizer and scheduler,
    the trainer; with `resume`, at the point where that run stopped."""
    from model.loss import decide_pos_weight
    from trainer.checkpoint import check_resumed_classes, load_model_state
    from trainer.finetuning import Finetuning, build_optimizer
    from trainer.options import TrainerOptions
    from trainer.trainer import Trainer
    from utils.distributed import place_model

    # loss, metrics and model first: what needs no data (a missing weights file) fails before the data is read;
    # a loss with pos_weight "auto" is built once the training split has given the number
    auto = isinstance(config["loss"], dict) and config["loss"].get("args", {}).get("pos_weight") == "auto"
    criterion, metrics = None if auto else config.init_ftn("loss"), config.init_ftn("metrics")

    # model, with the checkpoint's weights when resuming or fine-tuning (only those that fit, unless
    # finetune.strict_load), frozen as the freezing strategy starts, placed on its device(s)
    model = config.init_obj("arch")
    options, finetuning = TrainerOptions.of(config.config), Finetuning(**(config["finetune"] or {}))
    if resume:
        load_model_state(model, resume, purpose="resume")
    elif weights:
        load_model_state(model, weights, strict=finetuning.strict_load, purpose="fine-tune")
    finetuning.freeze(model)
    model_normalization(config, model)
    model, device = place_model(model, config["n_gpu"])

    # data: the training and validation splits (the test split is for test.py)
    data_loader = config.init_obj("data_loader", split="train", seed=config["seed"], **loader_args)
    valid_data_loader = config.init_obj("data_loader", split="valid", seed=config["seed"], **loader_args)
    data_loader.fit_batch_norm(model)  # no training batch of one sample for a model with BatchNorm
    if resume or weights:
        check_resumed_classes(resume or weights, data_loader.classes, fine_tune=weights is not None)
    if decide_pos_weight(config["loss"], data_loader) is not None:  # "auto": the training split's, from now on
        criterion = config.init_ftn("loss")

    # optimizer and scheduler, with every parameter that will ever train in its final group from the start
    optimizer, lr_scheduler = build_optimizer(
        config.init_obj, config["lr_scheduler"], options, finetuning.param_groups(model),
        data_loader.batches_per_epoch,
    )  # fmt: skip

    trainer = Trainer(
        model, criterion, metrics, optimizer, lr_scheduler,
        data_loader=data_loader, valid_data_loader=valid_data_loader, config=config.config, device=device,
        finetuning=finetuning, callbacks=[*config.init_obj("callbacks"), *callbacks], options=options,
    )  # fmt: skip
    if resume:
        trainer.load_state_dict(resume.state)  # where the run stopped: the next batch, optimizer, RNG, ...
    return trainer


def model_normalization(config: ConfigParser, model: Any) -> None:
    """A model that says how its inputs are to be normalized (`mean`, `std`: TimmModel, from timm's pretrained
    config) sets the image loader's where the config leaves both out, and the run's config says so."""
    args = config["data_loader"].setdefault("args", {})
    takes = config.takes("data_loader")
    stated = [getattr(model, "mean", None), getattr(model, "std", None)]  # tuples of numbers, not a layer's tensors
    numbers = all(isinstance(v, tuple) and all(isinstance(x, float) for x in v) for v in stated)
    if numbers and {"mean", "std"} <= takes - set(args):
        args["mean"], args["std"] = list(stated[0]), list(stated[1])


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description="Train a model described by a config file.",
        epilog=(
            "overrides: any config key as dotted.key=value after the options, e.g.\n"
            "  python train.py -c config.json trainer.epochs=3 optimizer.args.lr=0.01\n"
            "  python train.py -c config.json trainer.monitor='max val_accuracy'\n"
            "values are read as JSON where they parse (3, 0.01, true, null, [1,2]) and as strings otherwise."
        ),
    )
    parser.add_argument(
        "-c", "--config", help="config file (e.g. config.json); with --resume: fine-tune into a new run"
    )
    parser.add_argument("-r", "--resume", help="checkpoint (or run folder, for its last.pth) to continue from")
    parser.add_device()
    parser.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="build everything, train and validate on one batch, write nothing"
    )
    parser.add_shortcuts()
    parser.add_argument(
        "--folds", type=int, metavar="K", help="cross-validate in K folds (cross_validation.folds=K; the cv feature)"
    )
    parser.add_argument("--fold", type=int, metavar="I", help="of a cross-validation, train fold I only")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[ConfigParser, dict[str, Any], argparse.Namespace]:
    """The validated config, main's other arguments and the parsed flags; raise a UserError on bad input."""
    args = build_parser().parse_args(argv)
    with interrupts_held():  # torch loads: only once --help is out of the way
        import torch  # noqa: F401
    from trainer.checkpoint import check_resume, load_checkpoint
    from trainer.options import TrainerOptions

    overrides = command_line_overrides(
        args, *([f"cross_validation.folds={args.folds}"] if args.folds is not None else [])
    )
    select_devices(args.device)
    if args.resume is not None and is_cross_validation(args.resume):  # a cross-validation goes on in its folder
        if args.config is not None or args.run_id is not None:
            raise ConfigError(
                "--resume CVDIR: a cross-validation goes on with its own config and folder; drop -c, --run-id"
            )
        cross_validation = feature_module("trainer.cross_validation", "cv", "--resume")
        config = ConfigParser.load(None, cross_validation.stored_config(Path(args.resume)), overrides)
        if config["cross_validation"] is None:
            raise ConfigError(f"{args.resume}/config.json: has no cross_validation section; the folder is damaged")
        return config, {"resume": Path(args.resume), "run_id": None, "dry_run": args.dry_run}, args
    checkpoint = load_checkpoint(args.resume) if args.resume is not None else None
    resuming = checkpoint is not None and args.config is None
    if resuming and args.run_id is not None:
        raise ConfigError("--run-id: a resumed run keeps its folder; add -c config.json to fine-tune into a new run")
    config = ConfigParser.load(args.config, checkpoint, overrides)
    TrainerOptions.of(config.config).check_for_training(config.config)
    # Now rather than after the data is loaded: can the run continue, or is the new run's folder free?
    if args.fold is not None and config["cross_validation"] is None:
        raise ConfigError("--fold: only with a cross-validation (--folds K, or --resume CVDIR)")
    if resuming:
        check_not_a_fold(checkpoint.path)
        check_resume(checkpoint, config.config)
    else:
        check_run_id(config.config, args.run_id)
    return (
        config,
        {
            "resume": checkpoint if resuming else None,
            "weights": None if resuming else checkpoint,
            "run_id": args.run_id,
            "dry_run": args.dry_run,
        },
        args,
    )


if __name__ == "__main__":
    with one_line_errors(interrupted="stopped before training started; nothing was saved"):
        config, main_arguments, args = parse_args()
        if args.print_config:
            print(json.dumps(config.config, indent=4))
        elif config["cross_validation"] is not None:
            cross_validation = feature_module("trainer.cross_validation", "cv", "cross_validation")
            cross_validation.main(config, main, fold=args.fold, **main_arguments)
        else:
            main(config, **main_arguments)
