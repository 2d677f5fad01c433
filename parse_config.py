"""ConfigParser: reads config.json (or a checkpoint's config), applies command-line overrides, validates
everything, and builds objects by name.

The order is the point: load -> override -> JSON Schema -> defaults -> names and constructor signatures ->
monitor. Every error found is collected and reported at once, in one line, before any folder is made or
any data is read.
"""

import argparse
import copy
import importlib
import importlib.util
import inspect
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema

from utils.errors import (
    ConfigError,
    UserError,
    describe_exception,
    did_you_mean,
    dotted,
    escaped,
    key_text,
    quoted,
    shown,
)
from utils.util import read_json, strict_json_loads

if TYPE_CHECKING:  # torch is imported only once a config is validated, so that --help answers without it
    from trainer.checkpoint import Checkpoint

PROJECT = Path(__file__).resolve().parent
SCHEMA_PATH = PROJECT / "utils" / "config_schema.json"

# Classes of torch a config can name but this trainer cannot drive, with the reason.
UNSUPPORTED = {
    "LBFGS": "its step() needs a closure that re-evaluates the model, and the trainer's step passes none",
    "SparseAdam": "it takes sparse gradients only (nn.Embedding(sparse=True)); use Adam or AdamW",
    "SequentialLR": "it takes other schedulers as objects, which a config cannot build; use one scheduler",
    "ChainedScheduler": "it takes other schedulers as objects, which a config cannot build; use one scheduler",
    "LambdaLR": "its lr_lambda is a Python function, which a config cannot hold; use StepLR, MultiStepLR, ...",
    "MultiplicativeLR": "its lr_lambda is a Python function, which a config cannot hold; use ExponentialLR",
}


# JSON Schema counts 2.0 as an integer; a config that says 2.0 epochs is refused instead of half-accepted.
VALIDATOR = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    ),
)


# --- The command line every entry script shares: one-line argparse errors, short flags, GPU selection.

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

    def add_shortcuts(self) -> None:
        """--lr, --bs and --epochs, each the same as its dotted override (read back by `shortcut_overrides`)."""
        for flags, (key, what) in SHORTCUTS.items():
            self.add_argument(*flags, dest=key, metavar="VALUE", help=f"{what} (same as {key}=VALUE)")

    def add_device(self) -> None:
        self.add_argument("-d", "--device", help="GPU indices to use, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES)")


def shortcut_overrides(args: argparse.Namespace) -> list[str]:
    """The short flags given on the command line, as `dotted.key=value` overrides."""
    return [f"{key}={getattr(args, key)}" for key, _ in SHORTCUTS.values() if getattr(args, key) is not None]


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


# --- Names: where each `type` of a config is looked up, and how its `args` are checked against the constructor.
# A role is one kind of config entry (arch, data_loader, loss, ...): the module its names come from, what an object
# must be to fill it, and the arguments the code passes itself. A name outside the role's module, a private name or
# an object of the wrong kind is refused with the list of valid names.


def subclass_of(path: str) -> Callable[[str, Any], bool]:
    """A test for classes derived from `module:Class` (imported when first used, not at import)."""

    def fits(name: str, obj: Any) -> bool:
        module, _, class_name = path.partition(":")
        base = getattr(importlib.import_module(module), class_name)
        return inspect.isclass(obj) and issubclass(obj, base) and obj is not base and not inspect.isabstract(obj)

    return fits


def loss_function(name: str, obj: Any) -> bool:
    """The loss functions of torch.nn.functional (not its other functions, such as relu)."""
    return inspect.isfunction(obj) and (name.endswith("_loss") or name in TORCH_LOSS_FUNCTIONS)


def loss(name: str, obj: Any) -> bool:
    """A loss written in the project: a function (output, target) -> tensor, or an nn.Module class."""
    return inspect.isfunction(obj) or subclass_of("torch.nn:Module")(name, obj)


def metric(name: str, obj: Any) -> bool:
    """A per-batch metric function (output, target) -> batch mean, or an epoch-level EpochMetric class."""
    return inspect.isfunction(obj) or subclass_of("base.base_metric:EpochMetric")(name, obj)


TORCH_LOSS_FUNCTIONS = ("cross_entropy", "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div")


@dataclass(frozen=True)
class Role:
    """Where the names of one config entry are looked up, what fits, and what the code passes besides `args`.

    A name resolves in the project's `module` (whatever is defined or imported there) when its object fits
    and is either defined in the project's own package (`model`, `data_loader`, `trainer`) or is a fitting
    member of one of the role's `libraries`, which are also looked up directly. Anything else -- modules,
    builtins, private names, `os.system` imported into model.py -- is not a name of the role.
    """

    module: str | None  # None: library names only
    fits: Callable[[str, Any], bool] | None  # what a name of `module` must be
    libraries: tuple[tuple[str, Callable[[str, Any], bool]], ...] = ()
    positional: int = 0  # arguments the code passes positionally (parameters, optimizer, output and target)
    keywords: tuple[str, ...] = ()  # arguments the code passes by keyword
    called: bool = False  # called with (output, target): a class is built from its args, then called


ROLES: dict[str, Role] = {
    "arch": Role("model.model", subclass_of("torch.nn:Module")),
    "data_loader": Role(
        "data_loader.data_loaders", subclass_of("base.base_data_loader:BaseDataLoader"), keywords=("split", "seed")
    ),
    "optimizer": Role(None, None, (("torch.optim", subclass_of("torch.optim:Optimizer")),), positional=1),
    "lr_scheduler": Role(
        None, None, (("torch.optim.lr_scheduler", subclass_of("torch.optim.lr_scheduler:LRScheduler")),), positional=1
    ),
    "loss": Role(
        "model.loss",
        loss,
        (("torch.nn", subclass_of("torch.nn.modules.loss:_Loss")), ("torch.nn.functional", loss_function)),
        positional=2,
        called=True,
    ),
    "metrics": Role("model.metric", metric, positional=2, called=True),
    "callbacks": Role("trainer.callbacks", subclass_of("trainer.callbacks:Callback")),
}


# Schedulers whose arguments give the length of the run, filled in (`run_length_args`) unless the config sets them.
RUN_LENGTH = {"OneCycleLR": ("total_steps", "epochs", "steps_per_epoch"), "CosineAnnealingLR": ("T_max",)}


def run_length_args(scheduler: dict, epochs: int, steps_per_epoch: int) -> dict[str, int]:
    """OneCycleLR's `epochs` and `steps_per_epoch` (unless `total_steps` is given) and CosineAnnealingLR's
    `T_max`, from `trainer.epochs` and the scheduler's steps in an epoch (1 when it steps once an epoch; the
    optimizer steps of an epoch when `trainer.scheduler_interval` is "step")."""
    args = scheduler.get("args", {})
    if scheduler["type"] == "OneCycleLR" and "total_steps" not in args:
        return {"epochs": args.get("epochs", epochs), "steps_per_epoch": args.get("steps_per_epoch", steps_per_epoch)}
    if scheduler["type"] == "CosineAnnealingLR" and "T_max" not in args:
        return {"T_max": epochs * steps_per_epoch}
    return {}


def check_for_training(config: dict) -> None:
    """What only training asks of a config: test.py and predict.py evaluate the same config without W&B."""
    if config["trainer"]["log_model"] and config["wandb"] is None:
        raise ConfigError('trainer.log_model: checkpoints go to W&B; add a "wandb" section, or set log_model false')


def check_schedule_length(saved: dict, config: dict) -> None:
    """A resumed run whose scheduler got the run's length from trainer.epochs (`run_length_args`) keeps that
    length: its state was laid out for it, and stepping past it fails."""
    scheduler = config["lr_scheduler"]
    if scheduler is None or not run_length_args(scheduler, 1, 1):
        return
    then, now = saved["trainer"]["epochs"], config["trainer"]["epochs"]
    if then != now:
        raise ConfigError(
            f"trainer.epochs: {scheduler['type']}'s schedule was laid out for the {then} epochs the run started with; "
            f"a resumed run keeps it (trainer.epochs={then}); add -c CONFIG to fine-tune from its weights with a new "
            "schedule"
        )


def valid_names(role: Role) -> dict[str, Any]:
    """Every name the role accepts, with its object: the project module's first, then the libraries'."""
    found: dict[str, Any] = {}
    if role.module is not None and role.fits is not None:
        module = importlib.import_module(role.module)
        package = role.module.split(".")[0]
        for name in dir(module):
            obj = getattr(module, name)
            if name.startswith("_") or inspect.ismodule(obj):
                continue
            home = getattr(obj, "__module__", None) or ""
            if (home.split(".")[0] == package and role.fits(name, obj)) or _library_member(role, obj):
                found[name] = obj
    for library, fits in role.libraries:
        module = importlib.import_module(library)
        for name in dir(module):
            obj = getattr(module, name)
            if not name.startswith("_") and name not in found and fits(name, obj):
                found[name] = obj
    return found


def _library_member(role: Role, obj: Any) -> bool:
    """Whether `obj` is one of the role's library objects (`mse = F.mse_loss` in model/loss.py)."""
    name = getattr(obj, "__name__", None)
    for library, fits in role.libraries:
        if name and getattr(importlib.import_module(library), name, None) is obj and fits(name, obj):
            return True
    return False


def entries(config: dict, role_name: str) -> list[tuple[str, str, dict]]:
    """(dotted path, type name, args) of each entry of a role; plain-name functions have empty args."""
    value = config.get(role_name)
    if value is None:
        return []
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    found = []
    for index, item in items:
        where = role_name if index is None else f"{role_name}.{index}"
        if isinstance(item, str):
            found.append((where, item, {}))
        else:
            found.append((where, item["type"], item.get("args", {})))
    return found


def type_name(entry: str | dict) -> str:
    """The `type` an entry names (a plain string is a function's name)."""
    return entry if isinstance(entry, str) else entry["type"]


def metric_name(entry: str | dict) -> str:
    """The label a metric is logged under: its "name", or its function name."""
    return entry if isinstance(entry, str) else entry.get("name", entry["type"])


def check_names(config: dict) -> list[str]:
    """Every entry's type must be a valid name of its role, and its args must fit the constructor."""
    errors = []
    for role_name, role in ROLES.items():
        names = valid_names(role)
        for where, type_name, args in entries(config, role_name):
            if type_name not in names:
                at = where if isinstance(_entry_at(config, where), str) else f"{where}.type"
                errors.append(
                    f"{at}: unknown {role_name} {quoted(type_name)}{did_you_mean(type_name, names)} "
                    f"(valid: {', '.join(sorted(names)) or 'none'}; from {_homes(role)})"
                )
            else:
                filled = RUN_LENGTH.get(type_name, ()) if role_name == "lr_scheduler" else ()
                errors.extend(_check_arguments(where, names[type_name], role, args, filled))
    return errors


def _entry_at(config: dict, where: str) -> Any:
    """The config entry at "metrics.1" or "loss"."""
    role, _, index = where.partition(".")
    return config[role][int(index)] if index else config[role]


def _check_arguments(where: str, target: Callable, role: Role, args: dict, filled: tuple[str, ...] = ()) -> list[str]:
    """Bind `args` to the constructor's signature the way the code will call it; name what does not fit."""
    label = getattr(target, "__name__", str(target))
    params = list(inspect.signature(target).parameters.values())
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    positional = 0 if role.called and inspect.isclass(target) else role.positional  # a loss class: built from args
    passed_by_code = {p.name for p in named[:positional]} | set(role.keywords)
    accepted = [p.name for p in named if p.name not in passed_by_code]
    errors = []
    by_name = {p.name: p for p in named}
    for key, value in args.items():
        if key in passed_by_code:
            errors.append(f"{where}.args.{key}: set by the code, not the config; remove it")
        elif key not in accepted and not takes_any:
            errors.append(
                f"{where}.args.{key_text(key)}: {label} has no argument {quoted(key)}{did_you_mean(key, accepted)} "
                f"(accepted: {', '.join(accepted) or 'none'})"
            )
        elif key in by_name and _wants_number(by_name[key]) and not _is_number(value):
            default = by_name[key].default
            known = f"; {label}'s default is {default!r}" if default is not inspect.Parameter.empty else ""
            errors.append(f"{where}.args.{key}: expected a number{known}; found {value!r}")
        elif key in by_name and _wants_bool(by_name[key]) and not isinstance(value, bool):  # "false" is true
            errors.append(f"{where}.args.{key}: expected true or false; found {shown(value)}")
    for p in named:
        if p.name not in passed_by_code and p.default is p.empty and p.name not in args and p.name not in filled:
            errors.append(f"{where}.args.{p.name}: {label} needs this argument (accepted: {', '.join(accepted)})")
    return errors


def _homes(role: Role) -> str:
    return ", ".join([*([role.module] if role.module else []), *(library for library, _ in role.libraries)])


def _wants_number(parameter: inspect.Parameter) -> bool:
    """A parameter typed, or defaulting to, a plain int or float."""
    default = parameter.default
    typed = parameter.annotation in (int, float, "int", "float")
    return typed or (isinstance(default, (int, float)) and not isinstance(default, bool))


def _wants_bool(parameter: inspect.Parameter) -> bool:
    """A parameter typed as a plain bool, or untyped with a bool default."""
    if parameter.annotation is inspect.Parameter.empty:
        return isinstance(parameter.default, bool)
    return parameter.annotation in (bool, "bool")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def resolve(role_name: str, entry: str | dict) -> Callable:
    """What an entry names, with its config args bound: a class to call with the code's arguments, or, for a
    loss or metric, what is called with (output, target): the function with its args, or the class built
    from them."""
    role = ROLES[role_name]
    type_name, args = (entry, {}) if isinstance(entry, str) else (entry["type"], entry.get("args", {}))
    target = valid_names(role)[type_name]
    if role.called and inspect.isclass(target):
        if role_name == "loss":  # nn.BCEWithLogitsLoss(pos_weight=...), nn.CrossEntropyLoss(weight=...): tensors
            args = {k: _as_tensor(v) if isinstance(v, list) else v for k, v in args.items()}
        return target(**args)
    return partial(target, **args)


def _as_tensor(values: list) -> Any:
    """A JSON list of numbers (a loss's `weight` or `pos_weight`) as the float tensor torch's loss classes take."""
    import torch

    return torch.tensor(values, dtype=torch.float32)


# --- Reading a config: files, "extends", overrides, the schema.


MAX_EXTENDS = 20  # configs in one chain of "extends": a longer one is a mistake (and its error line unreadable)


def read_config(path: Path, extended_by: tuple[Path, ...] = ()) -> dict:
    """Read a config file; `"extends": "base.json"` (relative to the file) starts from that config and
    merges this one's keys into it."""
    config = read_json(path)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top, found {shown(config)}")
    base_name = config.pop("extends", None)
    if base_name is None:
        return config
    if not isinstance(base_name, str) or not base_name:
        raise ConfigError(f"{path}: extends: expected the file name of another config, found {shown(base_name)}")
    if len(extended_by) >= MAX_EXTENDS:
        raise ConfigError(f"{path}: extends {base_name}: more than {MAX_EXTENDS} configs in a chain of extends")
    base_path = path.parent / base_name
    try:
        chain, resolved = (*extended_by, path.resolve()), base_path.resolve()
    except (RuntimeError, OSError) as e:  # a symbolic link loop
        raise ConfigError(f"{path}: extends {base_name}: cannot follow it ({e})") from None
    if resolved in chain:
        cycle = " -> ".join(p.name for p in (*chain, resolved))
        raise ConfigError(
            f"{path}: extends {base_name}: a cycle ({cycle}); a config cannot extend itself, directly or through others"
        )
    try:
        base = read_config(base_path, chain)
    except ConfigError as e:  # named from the file the user gave: the innermost problem, once
        raise ConfigError(str(e) if extended_by else f"{path}: extends {base_name}: {e}") from None
    return merge(base, config)


def merge(base: dict, changes: dict) -> dict:
    """`changes` merged into `base`, recursively. An object that names another `type` replaces the base's
    whole (its `args` belong to another constructor); anything else that is not an object replaces."""
    merged = dict(base)
    for key, value in changes.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value.get("type", old.get("type")) == old.get("type"):
            merged[key] = merge(old, value)
        else:
            merged[key] = value
    return merged


# victoresque/pytorch-template keeps these in "trainer"; this template keeps them at the top.
VICTORESQUE_KEYS = ("save_dir", "verbosity", "tensorboard")


def move_victoresque_keys(config: dict) -> None:
    """Accept a victoresque config as it is: its trainer.save_dir, trainer.verbosity and trainer.tensorboard
    move to the top, where this template keeps them (one place each in the config that runs and is saved)."""
    trainer = config.get("trainer")
    if not isinstance(trainer, dict):
        return
    for key in VICTORESQUE_KEYS:
        if key in trainer:
            value = trainer.pop(key)
            if key in config and config[key] != value:
                raise ConfigError(
                    f"trainer.{key}: {shown(value)} disagrees with {key}: {shown(config[key])}; keep one of them"
                )
            config[key] = value


def parse_value(text: str) -> Any:
    """An override's value: JSON where it parses (3, 0.01, true, null, [1, 2], "x"), a plain string otherwise."""
    try:
        return strict_json_loads(text)
    except (ValueError, RecursionError):  # not JSON, or NaN / Infinity: a string, which the checks then refuse
        return text


def apply_override(config: dict, override: str) -> None:
    """Apply one `dotted.key=value` override in place.

    A key must already exist, except directly inside an `args` object, whose keys are checked against
    the constructor instead.
    """
    key, sep, raw = override.partition("=")
    written = escaped(override)  # one line, whatever it holds
    if not sep or not key.strip():
        raise ConfigError(f"override '{written}': expected key=value, e.g. trainer.epochs=3")
    parts = key.strip().split(".")
    node: Any = config
    for depth, part in enumerate(parts):
        here = ".".join(key_text(p) for p in parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override '{written}': {here} is not an index of that list (0..{len(node) - 1})")
            index: Any = int(part)
        elif isinstance(node, dict):
            in_args = depth > 0 and parts[depth - 1] in ("args", "wandb")  # checked against a signature
            if part not in node:
                if part == "args" and "type" in node:
                    node["args"] = {}
                elif _schema_knows(parts[: depth + 1]):  # a key the file leaves to its default
                    node[part] = {}
                elif not (last and in_args):
                    known = [*node, *(k for k in _schema_keys(parts[:depth]) if k not in node)]
                    keys = ", ".join(key_text(k) for k in known) or "none"
                    raise ConfigError(
                        f"override '{written}': no key {here}{did_you_mean(part, known)} (keys there: {keys})"
                    )
            index = part
        else:
            parent = ".".join(key_text(p) for p in parts[:depth]) or "config"
            raise ConfigError(f"override '{written}': {parent} is {shown(node)}, it has no key {quoted(part)}")
        if last:
            node[index] = parse_value(raw)
        else:
            node = node[index]


def _schema_keys(parts: list[str]) -> list[str]:
    """The keys the schema defines inside the object at `parts` ([] for the top level)."""
    spec = read_json(SCHEMA_PATH)
    for part in parts:
        spec = spec.get("properties", {}).get(part, {})
    return list(spec.get("properties", {}))


def _schema_knows(parts: list[str]) -> bool:
    """Whether the schema defines the key `parts` (trainer.amp, finetune.strict_load), file or no file."""
    return parts[-1] in _schema_keys(parts[:-1])


def _schema_messages(error: jsonschema.ValidationError) -> list[str]:
    """Turn one jsonschema error into messages naming the dotted key, the expected and the found value."""
    where = dotted(error.absolute_path)
    found = error.instance
    kind = error.validator
    if kind == "required":
        return [
            f"{dotted([*error.absolute_path, k])}: missing required key"
            for k in error.validator_value
            if k not in found
        ]
    if kind == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in found if k not in allowed]
        return [
            f"{dotted([*error.absolute_path, k])}: unknown key{did_you_mean(k, allowed)} "
            f"(valid keys: {', '.join(allowed)})"
            for k in extra
        ]
    if kind == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return [f"{where}: expected {' or '.join(types)}, found {shown(found)}"]
    if kind in ("enum", "const"):
        allowed = error.validator_value if kind == "enum" else [error.validator_value]
        return [f"{where}: expected one of {', '.join(shown(v) for v in allowed)}; found {shown(found)}"]
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in bounds:
        return [f"{where}: expected a number {bounds[kind]} {error.validator_value}, found {shown(found)}"]
    if kind in ("pattern", "minLength"):
        expected = error.schema.get("description", f"a string matching {error.validator_value}")
        return [f"{where}: expected {expected}; found {shown(found)}"]
    return [f"{where}: {error.message}"]


def fill_defaults(config: dict, schema: dict) -> None:
    """Write every default into the config, so the saved config.json says what ran.

    Each default has one home: top-level keys in the schema, trainer keys in the signatures of Trainer
    and BaseTrainer, finetune keys in the signature of Finetuning.
    """
    from trainer.finetuning import Finetuning
    from trainer.trainer import trainer_defaults

    for key, spec in schema["properties"].items():
        if "default" in spec and key not in config:
            config[key] = copy.deepcopy(spec["default"])
    defaults = trainer_defaults()
    for key in schema["properties"]["trainer"]["properties"]:
        if key not in config["trainer"] and key in defaults:
            config["trainer"][key] = defaults[key]
    if config["finetune"] is not None:
        for key, parameter in inspect.signature(Finetuning).parameters.items():
            config["finetune"].setdefault(key, parameter.default)


RESERVED_LABELS = ("loss", "epoch", "lr", "epoch_seconds", "samples_per_second")


def _label_errors(labels: list[str]) -> list[str]:
    """A metric's label must be its own: not another metric's, the loss's or a validation column's."""
    errors = []
    duplicates = sorted({n for n in labels if labels.count(n) > 1})
    if duplicates:
        errors.append(f'metrics: {quoted(duplicates[0])} appears twice; give one a distinct "name"')
    for index, label in enumerate(labels):
        if label in RESERVED_LABELS or label.startswith("val_"):
            errors.append(
                f'metrics.{index}: the label {quoted(label)} is the loss\'s or a validation column; give it a "name"'
            )
    return errors


def validate(config: dict) -> None:
    """Check a whole config and fill in its defaults; raise one ConfigError listing every problem found."""
    from utils.monitor import Monitor

    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a JSON object, found {shown(config)}")
    schema = read_json(SCHEMA_PATH)
    validator = VALIDATOR(schema)
    errors = [
        message
        for e in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
        for message in _schema_messages(e)
    ]
    if errors:
        raise ConfigError("; ".join(errors))
    fill_defaults(config, schema)
    errors = check_names(config)
    for role in ("optimizer", "lr_scheduler"):
        chosen = config[role]["type"] if config[role] else None
        if chosen in UNSUPPORTED:
            errors.append(f"{role}.type: {chosen} is not supported: {UNSUPPORTED[chosen]}")

    labels = [metric_name(m) for m in config["metrics"]]
    errors.extend(_label_errors(labels))
    monitor = Monitor.parse(config["trainer"]["monitor"])
    if monitor.mode != "off":
        known = ["loss", *labels]
        known += [f"val_{n}" for n in known]
        if monitor.metric not in known:
            errors.append(
                f"trainer.monitor: no metric '{monitor.metric}'{did_you_mean(monitor.metric, known)} "
                f"(logged metrics: {', '.join(known)})"
            )
    if config["finetune"] is not None:
        from trainer.finetuning import Finetuning

        errors.extend(Finetuning(**config["finetune"]).check())
    if config["wandb"] is not None and importlib.util.find_spec("wandb") is None:
        errors.append('wandb: the wandb package is not installed; run pip install wandb, or set "wandb": null')
    elif config["wandb"] is not None:
        from logger.visualization import wandb_errors

        errors.extend(wandb_errors(config["wandb"]))
    scheduler = config["lr_scheduler"]
    if scheduler is not None and scheduler["type"] == "ReduceLROnPlateau":
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        default_mode = inspect.signature(ReduceLROnPlateau).parameters["mode"].default
        scheduler_mode = scheduler.get("args", {}).get("mode", default_mode)
        if monitor.mode == "off":
            errors.append(
                "lr_scheduler: ReduceLROnPlateau steps on the monitored metric; "
                'set trainer.monitor, e.g. "min val_loss"'
            )
        elif monitor.mode != scheduler_mode:
            errors.append(f"lr_scheduler.args.mode: '{scheduler_mode}' disagrees with trainer.monitor '{monitor.text}'")
    if errors:
        raise ConfigError("; ".join(errors))


class ConfigParser:
    """A validated config (a plain dict, with every default filled in) and the way to build its parts by name."""

    def __init__(self, config: dict) -> None:
        validate(config)
        self.config = config

    @classmethod
    def load(
        cls, config_path: str | Path | None = None, resume: "Checkpoint | None" = None, overrides: Sequence[str] = ()
    ) -> "ConfigParser":
        """Read, override and validate a config; nothing is written and no data is read.

        - `config_path`: the config of a new run (that starts from `resume`'s weights, if given: fine-tuning).
        - `resume` alone: the config stored in that checkpoint (to continue its run, or to evaluate it).
        """
        from trainer.checkpoint import KEY_CONFIG

        if config_path is None and resume is None:
            named = [o for o in overrides if o.endswith(".json") and "=" not in o]
            hint = f"; did you mean -c {named[0]}?" if named else ""
            raise ConfigError(
                f"no config given: pass -c config.json for a new run, or -r CHECKPOINT to resume one{hint}"
            )
        if config_path is not None:
            config = read_config(Path(config_path))
        else:
            config = copy.deepcopy(resume.state[KEY_CONFIG])
            if not isinstance(config, dict):
                raise ConfigError(f"{resume.path}: the checkpoint's config is {shown(config)}, not a JSON object")
        move_victoresque_keys(config)
        for override in overrides:
            apply_override(config, override)
        return cls(config)

    def __getitem__(self, key: str) -> Any:
        return self.config[key]

    def class_of(self, name: str) -> Any:
        """The class (or function) the entry `name` selects, unbuilt: e.g. class_of("data_loader")."""
        return valid_names(ROLES[name])[type_name(self.config[name])]

    def init_obj(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Build a class entry: `cls(*args, **config_args, **kwargs)`, e.g. init_obj("optimizer", params).

        For a list of class entries (callbacks) return the list of objects.
        """
        if isinstance(self.config[name], list):
            return [self._build(f"{name}.{i}", name, e, args, kwargs) for i, e in enumerate(self.config[name])]
        return self._build(name, name, self.config[name], args, kwargs)

    def init_optimizer(self, param_groups: list[dict[str, Any]], batches_per_epoch: int) -> tuple[Any, Any]:
        """The optimizer over `param_groups` and its lr_scheduler (or None). Each group's learning rate is the
        configured one times the group's `lr_scale` (trainer.finetuning), in the optimizer and in the scheduler's
        per-group arguments (OneCycleLR's max_lr); the length of the run is filled in where the scheduler needs
        it and the config leaves it out (`run_length_args`)."""
        from trainer.finetuning import per_group_lrs, set_learning_rate

        optimizer = self.init_obj("optimizer", param_groups)
        set_learning_rate(optimizer, optimizer.defaults["lr"])
        scheduler, trainer = self.config["lr_scheduler"], self.config["trainer"]
        if scheduler is None:
            return optimizer, None
        batches = trainer["len_epoch"] or batches_per_epoch
        steps = math.ceil(batches / trainer["accumulate_steps"]) if trainer["scheduler_interval"] == "step" else 1
        filled = run_length_args(scheduler, trainer["epochs"], steps)
        return optimizer, self.init_obj("lr_scheduler", optimizer, **filled, **per_group_lrs(scheduler, optimizer))

    def init_ftn(self, name: str) -> Callable | dict[str, Callable]:
        """A function entry with its config args bound (the loss); for a list of function entries (the
        metrics) a dict of label -> function, in config order."""
        if isinstance(self.config[name], list):
            return {metric_name(e): self._build(f"{name}.{i}", name, e) for i, e in enumerate(self.config[name])}
        return self._build(name, name, self.config[name])

    @staticmethod
    def _build(where: str, role: str, entry: str | dict, args: tuple = (), kwargs: dict | None = None) -> Any:
        """resolve() and, for a class entry, the call; what the constructor raises becomes one line naming the
        entry, the error and the line of code it came from (the user's own model or data code, often)."""
        called = kwargs is not None
        try:
            built = resolve(role, entry)
            return built(*args, **kwargs) if called else built
        except UserError:
            raise
        except Exception as e:
            raise ConfigError(f"{where}: {type_name(entry)} could not be built: {describe_exception(e)}") from None
