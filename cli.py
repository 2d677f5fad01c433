"""The command line every entry script shares: one-line argparse errors, the short flags (--lr, --bs, --epochs),
GPU selection, and the prelude of the scripts that evaluate a checkpoint (test.py, predict.py)."""

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logger.run_folder import is_cross_validation
from parse_config import ConfigParser
from utils.errors import ConfigError, interrupts_held
from utils.util import feature_module

if TYPE_CHECKING:
    from trainer.checkpoint import Checkpoint


# Short flags for common overrides, with victoresque's long names beside them: flags -> dotted config key.
SHORTCUTS = {
    ("--lr", "--learning_rate"): ("optimizer.args.lr", "learning rate"),
    ("--bs", "--batch_size"): ("data_loader.args.batch_size", "batch size"),
    ("--epochs",): ("trainer.epochs", "number of epochs"),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (as a ConfigError) instead of usage text and exit code 2."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see {self.prog} --help)")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        """Options and key=value overrides in any order (`-c config.json a=1 --folds 5 b=2`)."""
        return self.parse_intermixed_args(args, namespace)

    def add_shortcuts(self) -> None:
        """--lr, --bs and --epochs, each the same as its dotted override (read back by `command_line_overrides`)."""
        for flags, (key, what) in SHORTCUTS.items():
            self.add_argument(*flags, dest=key, metavar="VALUE", help=f"{what} (same as {key}=VALUE)")

    def add_device(self) -> None:
        self.add_argument("-d", "--device", help="GPU indices to use, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES)")

    def add_raw_csv(self, condition: str = "") -> None:
        self.add_argument(
            "--raw-csv",
            action="store_true",
            help=f"{condition}write ids and class names as they are, even those a spreadsheet would run as a formula "
            "(starting with = + - @, a tab or a carriage return); by default such a cell gets a leading single quote",
        )

    def add_tta(self) -> None:
        self.add_argument(
            "--tta",
            metavar="VIEWS",
            help="test-time augmentation: average each image's predictions over it and these views, e.g. hflip or "
            "hflip,vflip (hflip, vflip, rot180; the cv feature)",
        )


def command_line_overrides(args: argparse.Namespace, *more: str) -> list[str]:
    """The short flags given (as `dotted.key=value`), `more`, then the overrides; a key given twice is refused,
    as a JSON key written twice is: the first one would be dropped without a word."""
    shortcuts = [f"{key}={getattr(args, key)}" for key, _ in SHORTCUTS.values() if getattr(args, key, None) is not None]
    overrides = [*shortcuts, *more, *args.overrides]
    keys = [override.partition("=")[0].strip() for override in overrides]
    for key in keys:
        if keys.count(key) > 1:
            given = ", ".join(o for o, k in zip(overrides, keys, strict=True) if k == key)
            raise ConfigError(f"{key}: given twice on the command line ({given}); keep one")
    return overrides


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
            + ("; run without --device to use the CPU" if available == 0 else "")
        )


def check_csv_file(path: Path, flag: str) -> None:
    """A CSV output named on the command line: `-` (standard output) does not take one."""
    if str(path) == "-":
        raise ConfigError(f"{flag}: a file name is needed (predictions are a CSV file)")


def load_for_evaluation(
    resume: str, config_path: str | None, overrides: list[str], device: str | None
) -> tuple[ConfigParser, list["Checkpoint"]]:
    """The prelude of the scripts that evaluate a checkpoint: torch loaded (once --help is out of the way), the
    GPUs chosen, the checkpoint (a run folder: its model_best.pth, else last.pth; a cross-validation's folder:
    each fold's, for their ensemble) read as data, and its config (or `config_path`) with the overrides, validated."""
    with interrupts_held():
        import torch  # noqa: F401
    from logger.run_folder import BEST_NAME, LAST_NAME
    from trainer.checkpoint import load_checkpoint

    select_devices(device)
    if is_cross_validation(resume):
        checkpoints = feature_module("trainer.ensemble", "cv", "--resume").fold_checkpoints(Path(resume))
    else:
        checkpoints = [load_checkpoint(resume, in_folder=(BEST_NAME, LAST_NAME))]
    return ConfigParser.load(config_path, checkpoints[0], overrides), checkpoints


def check_tta(tta: str | None) -> None:
    if tta is not None:
        feature_module("trainer.ensemble", "cv", "--tta").views(tta)
