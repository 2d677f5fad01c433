"""Checkpoints: plain dicts of tensors and primitives, written atomically, read with weights_only=True.

A checkpoint never holds a pickled object of ours, so `torch.load(path, map_location="cpu",
weights_only=True)` reads it anywhere, and a file from a stranger cannot run code when loaded.
"""

import io
import logging
import pickle
import random
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from base.base_model import state_differences, weights_mismatch
from logger.run_folder import LAST_NAME, RunFolder
from logger.visualization import WANDB_RUN_ID
from trainer.finetuning import check_resumed_lr, laid_out_by_trainer
from trainer.options import TrainerOptions
from utils.errors import CheckpointError, ConfigError, did_you_mean, first_line, shown
from utils.util import written_atomically

FORMAT_VERSION = 1

# Keys of the checkpoint dict, in one place.
KEY_FORMAT = "format_version"
KEY_ARCH = "arch"
KEY_OPTIMIZER_TYPE = "optimizer_type"
KEY_EPOCH = "epoch"
KEY_STEP = "global_step"
KEY_BATCH = "batch_in_epoch"  # > 0: saved in the middle of epoch KEY_EPOCH, after that many batches
KEY_PARTIAL = "partial_epoch_metrics"
KEY_STATE_DICT = "state_dict"  # the model's weights, under victoresque's name for them
KEY_OPTIMIZER = "optimizer"
KEY_SCHEDULER = "lr_scheduler"
KEY_SCALER = "scaler"
KEY_MONITOR_BEST = "monitor_best"
KEY_NOT_IMPROVED = "not_improved_count"
KEY_BEST_RESULT = "best_result"
KEY_RNG = "rng"
KEY_CONFIG = "config"
KEY_DATA = "data_preprocessing"  # the training loader's `preprocessing` (class names, statistics), for predictions
KEY_EMA = "ema"  # trainer.ema_decay's AveragedModel state (module.* weights, n_averaged), or None
KEY_WANDB_RUN = "wandb_run_id"  # the W&B run the training logged to, or None: a resume and test.py add to it
REQUIRED_KEYS = (KEY_FORMAT, KEY_ARCH, KEY_EPOCH, KEY_STATE_DICT, KEY_CONFIG)  # to evaluate or fine-tune
RESUME_KEYS = (
    *REQUIRED_KEYS,
    *(KEY_OPTIMIZER_TYPE, KEY_STEP, KEY_BATCH, KEY_OPTIMIZER, KEY_SCHEDULER, KEY_SCALER),
    *(KEY_MONITOR_BEST, KEY_NOT_IMPROVED, KEY_BEST_RESULT, KEY_RNG),
)  # to continue training


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the file it came from and its state (tensors on the CPU)."""

    path: Path
    state: dict[str, Any]


def save_checkpoint(state: dict[str, Any], *paths: Path) -> None:
    """Serialize `state` once and write it to each path atomically: a temporary file in the same folder,
    flushed, then renamed over the target.

    A crash or a kill while saving leaves the previous file under each path intact, never a truncated one.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    for path in paths:
        try:
            with written_atomically(path) as handle:
                handle.write(data)
        except OSError as e:
            raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}") from None


def resolve_checkpoint_path(path: str | Path, in_folder: tuple[str, ...] = (LAST_NAME,)) -> Path:
    """The checkpoint file a user means: the file itself, or in a run folder the first of `in_folder` there."""
    path = Path(path)
    if path.is_dir():
        for name in in_folder:
            if (path / name).is_file():
                return path / name
        found = sorted(p.name for p in path.glob("*.pth"))
        runs = sorted(p.name for p in path.iterdir() if p.is_dir() and any(p.glob("*.pth")))
        hint = f"; it has {', '.join(found)}" if found else ""
        hint += f"; it holds the run folders {', '.join(runs[-5:])}: pass one of them" if runs else ""
        raise CheckpointError(
            f"{path}: folder has no {' or '.join(in_folder)}{hint}; pass a checkpoint file with --resume"
        )
    if not path.exists():
        try:
            beside = sorted(p.name for p in path.parent.iterdir() if p.name.isprintable())
        except OSError:  # no such folder, or not ours to list
            beside = []
        hint = f"{did_you_mean(path.name, beside)} (there: {', '.join(beside[-5:])})" if beside else ""
        raise CheckpointError(f"{path}: checkpoint not found{hint}")
    if not path.is_file():  # a FIFO or a device would block or never end
        raise CheckpointError(f"{path}: not a regular file; pass a checkpoint file with --resume")
    return path


def load_checkpoint(path: str | Path, in_folder: tuple[str, ...] = (LAST_NAME,)) -> Checkpoint:
    """Load and check a checkpoint (or, for a run folder, the first of `in_folder` in it) on the CPU; every
    failure is one CheckpointError naming the file."""
    path = resolve_checkpoint_path(path, in_folder)
    # torch.save has written zip archives since PyTorch 1.6; anything else is not one of our checkpoints.
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a readable checkpoint (empty, truncated or another format)")
    _verify_checksums(path)
    try:
        with warnings.catch_warnings():  # a crafted file's pickle protocol warning is not the user's concern
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses anything but tensors and plain values: a file that would run code lands here.
        global_name = re.search(r"GLOBAL (\S+)", str(e))
        unsupported = re.search(r"(Unsupported [^\n]+)", str(e))
        if global_name:
            what = f"it would load {global_name.group(1)}"
        elif unsupported:
            what = f"it uses pickle features a checkpoint never needs ({unsupported.group(1).strip()})"
        else:
            what = "it holds objects other than tensors and plain values"
        raise CheckpointError(
            f"{path}: refused, {what}; a checkpoint must hold only tensors and plain values (weights_only=True)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(e)})") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path}: not a checkpoint of this project (keys {', '.join(REQUIRED_KEYS)} expected)")
    version = state[KEY_FORMAT]
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this code understands ({FORMAT_VERSION}); "
            "update the code"
        )
    _check_fields(path, state, REQUIRED_KEYS)
    return Checkpoint(path, state)


def _verify_checksums(path: Path) -> None:
    """Every record of the archive against the CRC-32 the zip format stores beside it: a checkpoint damaged
    on disk or in a copy is refused here, instead of training on garbage weights."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(e)})") from None
    if damaged is not None:
        raise CheckpointError(
            f"{path}: checkpoint is corrupted ({damaged} fails its checksum); use another checkpoint of the run"
        )


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


# What each field must be; a checkpoint is input like any other, and a wrong field is one line, not a traceback.
FIELD_CHECKS: dict[str, tuple[Any, str]] = {
    KEY_FORMAT: (lambda v: _is_int(v, 1), "a format version >= 1"),
    KEY_ARCH: (lambda v: isinstance(v, str), "a class name"),
    KEY_EPOCH: (_is_int, "a whole number >= 0"),
    KEY_STATE_DICT: (_is_tensor_dict, "a dict of parameter names to tensors"),
    KEY_CONFIG: (lambda v: isinstance(v, dict), "a config object"),
    KEY_OPTIMIZER_TYPE: (lambda v: isinstance(v, str), "a class name"),
    KEY_STEP: (_is_int, "a whole number >= 0"),
    KEY_BATCH: (_is_int, "a whole number >= 0"),
    KEY_OPTIMIZER: (lambda v: isinstance(v, dict) and {"state", "param_groups"} <= set(v), "an optimizer state"),
    KEY_SCHEDULER: (lambda v: v is None or isinstance(v, dict), "a scheduler state or null"),
    KEY_SCALER: (lambda v: isinstance(v, dict), "a loss scaler state"),
    KEY_MONITOR_BEST: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v == v, "a number"),
    KEY_NOT_IMPROVED: (_is_int, "a whole number >= 0"),
    KEY_BEST_RESULT: (
        lambda v: v is None or (isinstance(v, dict) and all(isinstance(x, (int, float, list)) for x in v.values())),
        "the best epoch's results (numbers) or null",
    ),
    KEY_RNG: (lambda v: isinstance(v, dict) and {"python", "numpy", "torch"} <= set(v), "the random states"),
    KEY_PARTIAL: (lambda v: isinstance(v, dict) and {"sums", "counts"} <= set(v), "partial epoch metrics"),
    KEY_DATA: (lambda v: isinstance(v, dict), "the data loader's preprocessing (a dict)"),
    KEY_EMA: (lambda v: v is None or _is_tensor_dict(v), "the EMA of the weights (a dict of tensors) or null"),
    KEY_WANDB_RUN: (
        lambda v: v is None or (isinstance(v, str) and WANDB_RUN_ID.fullmatch(v) is not None),
        "a W&B run id or null",
    ),
}


def _check_fields(path: Path, state: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        check, expected = FIELD_CHECKS[key]
        if not check(state[key]):
            shown = repr(state[key]) if not isinstance(state[key], (dict, list)) else type(state[key]).__name__
            raise CheckpointError(f"{path}: field {key!r} should be {expected}, found {shown[:60]}")


def wandb_run_id(checkpoint: Checkpoint) -> str | None:
    """The id of the W&B run that the checkpoint's training logged to; None without one (or from an older version)."""
    _check_fields(checkpoint.path, checkpoint.state, (KEY_WANDB_RUN,) if KEY_WANDB_RUN in checkpoint.state else ())
    return checkpoint.state.get(KEY_WANDB_RUN)


def run_is_finished(checkpoint: Checkpoint) -> bool:
    """Whether a checkpoint ends its run: its last epoch trained, or stopped early (not in the middle of an epoch),
    as the trainer section of its own config says."""
    state = checkpoint.state
    _check_fields(checkpoint.path, state, (KEY_CONFIG, KEY_EPOCH, KEY_BATCH, KEY_NOT_IMPROVED))
    try:
        options = TrainerOptions.of(state[KEY_CONFIG])
        stopped_early = options.stops_early(state[KEY_NOT_IMPROVED])
        return state[KEY_BATCH] == 0 and (state[KEY_EPOCH] >= options.epochs or stopped_early)
    except (TypeError, KeyError) as e:  # a section that no run wrote: a key missing, unknown or of another type
        raise CheckpointError(f"{checkpoint.path}: the trainer section of its config is damaged ({e})") from None


def check_resume(checkpoint: Checkpoint, config: dict) -> None:
    """Every reason a checkpoint cannot continue training under `config` (the checkpoint's own config with
    the command line's overrides), checked before anything is built.

    What resume restores from the checkpoint (the optimizer's and scheduler's state) must not be changed
    by an override, except the optimizer's arguments, which are applied to it after loading.
    """
    state, path = checkpoint.state, checkpoint.path
    RunFolder.of_checkpoint(path)  # the run goes on in the folder the checkpoint lies in
    _require(checkpoint, RESUME_KEYS)
    if state[KEY_BATCH]:  # the partial epoch's metrics only when it stopped in the middle of one
        _require(checkpoint, (KEY_PARTIAL,))
    wandb_run_id(checkpoint)
    if KEY_EMA in state:
        _check_fields(path, state, (KEY_EMA,))
    saved, done, options = state[KEY_CONFIG], state[KEY_EPOCH], TrainerOptions.of(config)
    trained = saved["trainer"] if isinstance(saved.get("trainer"), dict) else {}  # data: read with care
    for key, then, now in (
        ("arch.type", state[KEY_ARCH], config["arch"]["type"]),
        ("optimizer.type", state[KEY_OPTIMIZER_TYPE], config["optimizer"]["type"]),
        ("lr_scheduler", saved.get("lr_scheduler"), config["lr_scheduler"]),
        ("trainer.monitor", trained.get("monitor", "off"), options.monitor),  # the best so far is of its metric
    ):
        if then != now:
            raise ConfigError(
                f"{key}: the checkpoint was trained with {shown(then)}, the config asks for {shown(now)}; a resumed "
                "run keeps what its state was saved with; add -c CONFIG to fine-tune from its weights instead"
            )
    check_resumed_lr(config["lr_scheduler"], saved.get("optimizer"), config["optimizer"])
    epochs = options.epochs
    if done >= epochs and not state[KEY_BATCH]:
        raise ConfigError(
            f"trainer.epochs: the checkpoint has finished epoch {done} and trainer.epochs is {epochs}; "
            f"pass trainer.epochs=N with N > {done} to train further"
        )
    scheduler = config["lr_scheduler"]  # a schedule laid out for the run's length is kept: stepping past it fails
    if scheduler is not None and laid_out_by_trainer(scheduler) and trained.get("epochs") != epochs:
        raise ConfigError(
            f"trainer.epochs: {scheduler['type']}'s schedule was laid out for the {trained.get('epochs')} epochs "
            f"the run started with; a resumed run keeps it (trainer.epochs={trained.get('epochs')}); add -c "
            "CONFIG to fine-tune from its weights with a new schedule"
        )


def _require(checkpoint: Checkpoint, keys: tuple[str, ...]) -> None:
    """The keys a resume needs, each there and sound."""
    missing = [key for key in keys if key not in checkpoint.state]
    if missing:
        raise CheckpointError(
            f"{checkpoint.path}: cannot resume, the checkpoint lacks {', '.join(missing)}; "
            "add -c CONFIG to start a new run from its weights instead"
        )
    _check_fields(checkpoint.path, checkpoint.state, keys)


def check_resumed_classes(checkpoint: Checkpoint, classes: list[str] | None, fine_tune: bool = False) -> None:
    """The class list a run was trained on is part of the run: a resume on data whose classes changed (a folder
    renamed, a label added) would train each output toward another class than before, and rewrite the list."""
    then = (checkpoint.state.get(KEY_DATA) or {}).get("classes")
    if then is None or classes is None or list(then) == list(classes):
        return
    if fine_tune:  # a new run may change them: a head of as many outputs is loaded, and the log says so
        if len(then) == len(classes):
            logging.getLogger("train").warning(
                "data_loader: the weights were trained on the classes %s, the data has %s: a head of as many "
                "outputs is loaded as it is, each output from its old class's weights", list(then), list(classes)
            )  # fmt: skip
        return
    gone, new = [c for c in then if c not in classes], [c for c in classes if c not in then]
    change = "; ".join(
        f"{what}: {', '.join(map(str, names))}" for what, names in (("gone", gone), ("new", new)) if names
    )
    raise ConfigError(
        f"data_loader: the run was trained on the classes {', '.join(map(str, then))}; the data now has "
        f"{', '.join(map(str, classes))} ({change or 'another order'}); a resumed run keeps its classes: restore the "
        "data, or add -c CONFIG to fine-tune into a new run"
    )


# What to do when a checkpoint's weights do not fit the configured model, by what the weights are loaded for.
WEIGHTS_ADVICE = {
    "evaluate": "evaluate it with the arch it was trained with",
    "resume": "a resumed run keeps its model; add -c CONFIG to fine-tune from the tensors that fit",
    "fine-tune": "without finetune.strict_load the tensors that fit are loaded",
}


def load_model_state(
    model: torch.nn.Module, checkpoint: Checkpoint, strict: bool = True, purpose: str = "evaluate"
) -> None:
    """Load the checkpoint's weights into `model` to `purpose` ("evaluate", "resume" or "fine-tune").

    Evaluating and fine-tuning read the EMA of the weights where the run kept one (trainer.ema_decay).
    Strict (evaluating, resuming): every tensor must fit; another model's weights are one clear error, not a
    wall of keys. Not strict (fine-tuning into a model with another head): every tensor whose name and shape
    match is loaded and one line lists the others; nothing matching at all is still an error.
    """
    state_dict, path, source = checkpoint.state[KEY_STATE_DICT], checkpoint.path, str(checkpoint.path)
    ema = checkpoint.state.get(KEY_EMA)
    if ema is not None and purpose != "resume":
        _check_fields(path, checkpoint.state, (KEY_EMA,))
        state_dict = {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}
        source += " (its EMA of the weights)"
    own = model.state_dict()
    missing, unexpected, mismatched = state_differences(own, state_dict)
    fits = [k for k in own if k in state_dict and k not in mismatched]
    logger = logging.getLogger("train")
    if (strict and (missing or unexpected or mismatched)) or not fits:
        hint = "" if not fits else f"; {WEIGHTS_ADVICE[purpose]}"
        raise CheckpointError(
            f"{path}: weights do not fit the configured model ({weights_mismatch(own, state_dict)}){hint}"
        )
    try:
        model.load_state_dict({k: state_dict[k] for k in fits}, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the configured model ({first_line(e)})") from None
    skipped = [f"{k}: {tuple(state_dict[k].shape)} there, {tuple(own[k].shape)} here" for k in mismatched]
    skipped += [f"{k}: not there" for k in missing] + [f"{k}: not here" for k in unexpected]
    if skipped:
        logger.warning(
            "Weights from %s: %d tensors loaded, %d skipped (%s)", source, len(fits), len(skipped), "; ".join(skipped)
        )
    else:
        logger.info("Weights from %s, %d tensors", source, len(fits))


def apply_changed_optimizer_args(
    optimizer: torch.optim.Optimizer, lr_scheduler: Any, saved_args: dict[str, Any], args: dict[str, Any]
) -> list[str]:
    """Re-set the optimizer arguments the config changed since the checkpoint (`optimizer.load_state_dict`
    restored the saved ones); return a line per change. Every torch optimizer keeps its arguments in its
    param groups; a new learning rate goes through `set_learning_rate`, which keeps each group's lr_scale."""
    from trainer.finetuning import set_learning_rate

    changes = []
    for key, value in args.items():
        if saved_args.get(key) == value:
            continue
        if key == "lr":
            set_learning_rate(optimizer, value, lr_scheduler)
        else:
            for group in optimizer.param_groups:
                group[key] = tuple(value) if isinstance(group.get(key), tuple) else value
        changes.append(f"optimizer.args.{key}: {value} from now on (the checkpoint had {saved_args.get(key)})")
    return changes


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and primitives (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
