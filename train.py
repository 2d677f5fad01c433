"""Train a model described by a config file.

python train.py -c config.json
python train.py -c config.json trainer.epochs=3 optimizer.args.lr=0.01
python train.py --resume saved/models/<name>/<run_id>/last.pth            # continue a run
python train.py --resume saved/models/<name>/<run_id>/model_best.pth -c config.json   # fine-tune
"""

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from parse_config import ArgumentParser, ConfigParser
from utils.errors import ConfigError, UserError

if TYPE_CHECKING:  # torch is imported inside main(), so that --help answers without loading it
    import torch
    from torch import nn

    from base.base_data_loader import BaseDataLoader

# Short flags for common overrides: flag -> dotted config key.
SHORTCUTS = {
    "--lr": ("optimizer.args.lr", "learning rate"),
    "--bs": ("data_loader.args.batch_size", "batch size"),
    "--epochs": ("trainer.epochs", "number of epochs"),
}


def main(config: ConfigParser, dry_run: bool = False) -> dict[str, Any]:
    """Train; return {"last": results of the last epoch, "best": results of the best epoch or None}.

    With `dry_run`, build everything, train on one batch and validate on one, print the model summary and
    return {"dry_run": {"train_loss": ..., "val_loss": ...}}, writing nothing.
    """
    # Heavy imports live here so that --help and config errors answer without loading torch.
    import torch
    from torch import nn

    from base.base_trainer import flatten_config
    from logger import NullWriter, make_writer, setup_logging
    from trainer.trainer import Trainer
    from utils.checkpoint import KEY_BATCH, KEY_EPOCH, KEY_MODEL, load_model_state
    from utils.distributed import broadcast_object, init_distributed
    from utils.util import prepare_device, seed_everything

    epochs = config["trainer"]["epochs"]
    if config.resuming and config.checkpoint[KEY_EPOCH] >= epochs and not config.checkpoint.get(KEY_BATCH):
        done = config.checkpoint[KEY_EPOCH]
        raise ConfigError(
            f"trainer.epochs: the checkpoint has finished epoch {done} of {epochs}; "
            f"pass trainer.epochs=N with N > {done} to train further"
        )
    verbosity = config.get("verbosity", 2)
    setup_logging(None, verbosity)
    logger = logging.getLogger("train")
    # torchrun sets WORLD_SIZE; each process then trains on its own shard of every batch.
    rank, local_rank, world_size = init_distributed()
    if rank != 0:
        setup_logging(None, 0)  # rank 0 speaks for everyone
    try:
        seed = config.get("seed", 0)
        seed_everything(seed, config.get("deterministic", False))

        # data: the training and validation splits (the test split is for test.py)
        data_loader = config.init_obj("data_loader", split="train", seed=seed)
        valid_data_loader = config.init_obj("data_loader", split="valid", seed=seed)

        # model, with the checkpoint's weights when resuming or fine-tuning
        model = config.init_obj("arch")
        if config.checkpoint is not None:
            load_model_state(model, config.checkpoint[KEY_MODEL], config.checkpoint_path)

        # device: the CPU, one GPU, DataParallel over several, or one GPU per process under torchrun
        if world_size > 1:
            use_gpu = torch.cuda.is_available() and config.get("n_gpu", 1) > 0
            device = torch.device(f"cuda:{local_rank}" if use_gpu else "cpu")
            model = model.to(device)
            model = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if use_gpu else None)
            parallel = f"DistributedDataParallel, {world_size} processes ({'nccl' if use_gpu else 'gloo'})"
        else:
            device, device_ids = prepare_device(config.get("n_gpu", 1))
            model = model.to(device)
            parallel = "single process"
            if len(device_ids) > 1:
                model = nn.DataParallel(model, device_ids=device_ids)
                parallel = f"DataParallel on GPUs {device_ids}"

        # loss and metrics
        criterion = config.init_ftn("loss")
        metric_fns = config.metric_fns()

        # optimizer and learning rate scheduler
        trainable_params = [p for p in model.parameters() if p.requires_grad]
        optimizer = config.init_obj("optimizer", trainable_params)
        lr_scheduler = config.init_obj("lr_scheduler", optimizer) if config.get("lr_scheduler") else None

        if dry_run:
            numbers = one_batch_each(model, data_loader, valid_data_loader, criterion, metric_fns, optimizer, device)
            return {"dry_run": numbers}

        # everything is valid: only now create the run folders (rank 0 decides, every rank uses them)
        outcome = None
        if rank == 0:
            try:
                config.make_run_dirs()
                outcome = ("ok", config.run_id)
            except ConfigError as e:
                outcome = ("error", str(e))
        status, value = broadcast_object(outcome)
        if status == "error":
            raise ConfigError(value)
        config.use_run_dirs(value)
        if rank == 0:
            setup_logging(config.log_dir, verbosity)
            log_run_header(logger, config)
        logger.info("Run folder: %s", config.save_dir)
        logger.info(
            "Device: %s; %s; seed %d; deterministic %s; training on %d samples, validating on %d",
            device,
            parallel,
            seed,
            config.get("deterministic", False),
            data_loader.n_samples,
            valid_data_loader.n_samples,
        )
        logger.debug("%s", model)

        writer = NullWriter()
        if rank == 0:
            hparams = flatten_config(config.config)
            writer = make_writer(config.log_dir, config.get("tensorboard", True), config.get("wandb"), hparams)
        trainer = Trainer(
            model,
            criterion,
            metric_fns,
            optimizer,
            config=config.config,
            device=device,
            data_loader=data_loader,
            valid_data_loader=valid_data_loader,
            lr_scheduler=lr_scheduler,
            checkpoint_dir=config.save_dir,
            writer=writer,
            run_id=config.run_id,
            callbacks=config.init_callbacks(),
            metrics_file=config.log_dir / "metrics.csv",
            **config["trainer"],
        )
        if config.resuming:
            trainer.load_state_dict(config.checkpoint)
        try:
            result = trainer.train()
        finally:
            writer.close()
        if world_size > 1:
            # Leave together: a rank that tears down its connections while another still uses them aborts.
            torch.distributed.barrier()
        return result
    finally:
        if world_size > 1:
            torch.distributed.destroy_process_group()


def log_run_header(logger: logging.Logger, config: ConfigParser) -> None:
    """What info.log starts with: the command, the versions, the code's commit and the resolved config."""
    import platform
    import subprocess

    import numpy
    import torch

    logger.info("Command: %s", " ".join([sys.executable, *sys.argv]))
    cuda = torch.version.cuda if torch.cuda.is_available() else "not available"
    logger.info(
        "Versions: Python %s, torch %s, numpy %s; CUDA %s",
        platform.python_version(), torch.__version__, numpy.__version__, cuda,
    )  # fmt: skip
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = ""
    logger.info("Code: %s", f"git commit {commit}" if commit else "not a git checkout")
    logger.info("Config:\n%s", json.dumps(config.config, indent=4))


def one_batch_each(
    model: "nn.Module",
    data_loader: "BaseDataLoader",
    valid_data_loader: "BaseDataLoader",
    criterion: Callable,
    metric_fns: dict[str, Callable],
    optimizer: "torch.optim.Optimizer",
    device: "torch.device",
) -> dict[str, float]:
    """--dry-run: one optimizer step on one training batch, one validation batch, and the model summary."""
    from base.base_model import summary
    from trainer.trainer import evaluate

    print(summary(model))
    model.train()
    data_loader.set_epoch(1)
    data, target = next(iter(data_loader))
    loss = criterion(model(data.to(device)), target.to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    numbers = {"train_loss": loss.item()}
    if len(valid_data_loader):
        valid_data_loader.set_epoch(1)
        batch = next(iter(valid_data_loader))
        numbers.update({f"val_{k}": v for k, v in evaluate(model, [batch], criterion, metric_fns, device).items()})
    print("Dry run: one training batch and one validation batch went through; nothing was written.")
    print(json.dumps(numbers, indent=4))
    return numbers


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
    parser.add_argument("-d", "--device", help="GPU indices to use, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="build everything, train and validate on one batch, write nothing"
    )
    for flag, (key, what) in SHORTCUTS.items():
        parser.add_argument(flag, metavar="VALUE", help=f"{what} (same as {key}=VALUE)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def select_devices(devices: str | None) -> None:
    """Make only the chosen GPUs visible; must happen before CUDA is first used."""
    if devices is None:
        return
    ids = [d.strip() for d in devices.split(",")]
    if not all(d.isdigit() for d in ids):
        raise ConfigError(f"--device {devices}: expected GPU indices such as 0 or 0,1")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    import torch

    available = torch.cuda.device_count()
    if available < len(ids):
        raise ConfigError(
            f"--device {devices}: asks for {len(ids)} GPU(s) but {available} exist on this machine"
            + ("; run without --device to train on the CPU" if available == 0 else "")
        )


def parse_args(argv: list[str] | None = None) -> tuple[ConfigParser, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    overrides = [
        f"{key}={getattr(args, flag[2:])}"
        for flag, (key, _) in SHORTCUTS.items()
        if getattr(args, flag[2:]) is not None
    ]
    select_devices(args.device)
    return ConfigParser.load(args.config, args.resume, overrides + args.overrides, args.run_id), args


if __name__ == "__main__":
    try:
        config, args = parse_args()
        if args.print_config:
            print(json.dumps(config.config, indent=4))
        else:
            main(config, dry_run=args.dry_run)
    except UserError as e:
        print(f"{e.label}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
