"""ConfigParser: reads config.json (or a checkpoint's config), applies command-line overrides, validates
everything, and only then creates the run folders and builds objects by name.

The order is the point: load -> override -> JSON Schema -> names and constructor signatures -> monitor.
Every error found is collected and reported at once, in one line, before any folder is made or any
data is read.
"""

import argparse
import copy
import difflib
import importlib
import importlib.util
import inspect
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import jsonschema

from utils.errors import ConfigError
from utils.util import read_json, write_json

SCHEMA_PATH = Path(__file__).resolve().parent / "utils" / "config_schema.json"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class Role:
    """Where the names of one config entry are looked up, and what the code passes besides `args`."""

    module: str
    kind: str  # "class" or "function"
    base: str | None = None  # "module:Class" that a class must subclass
    positional: int = 0  # arguments the code passes positionally (parameters, optimizer, output and target)
    keywords: tuple[str, ...] = ()  # arguments the code passes by keyword


ROLES: dict[str, Role] = {
    "arch": Role("model.model", "class", base="torch.nn:Module"),
    "data_loader": Role(
        "data_loader.data_loaders", "class", base="base.base_data_loader:BaseDataLoader", keywords=("split", "seed")
    ),
    "optimizer": Role("torch.optim", "class", base="torch.optim:Optimizer", positional=1),
    "lr_scheduler": Role(
        "torch.optim.lr_scheduler", "class", base="torch.optim.lr_scheduler:LRScheduler", positional=1
    ),
    "loss": Role("model.loss", "function", positional=2),
    "metrics": Role("model.metric", "function", positional=2),
    "callbacks": Role("trainer.callbacks", "class", base="trainer.callbacks:Callback"),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (as a ConfigError) instead of usage text and exit code 2."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see {self.prog} --help)")


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    same_letters = [c for c in choices if c.lower() == word.lower()]
    close = same_letters or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(part: Any) -> str:
    """A key as it can be shown in a one-line message: plain names as they are, anything else JSON-quoted."""
    text = str(part)
    return text if PLAIN_KEY.match(text) else json.dumps(text)


def _quoted(name: Any) -> str:
    """A name inside a message: 'plain' in single quotes, anything else JSON-quoted (so it stays one line)."""
    text = str(name)
    return f"'{text}'" if PLAIN_KEY.match(text) else json.dumps(text)


def _dotted(path: Sequence[Any], prefix: str = "") -> str:
    parts = [prefix] if prefix else []
    parts += [_key(p) for p in path]
    return ".".join(parts) or "config"


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_value(text: str) -> Any:
    """An override's value: JSON where it parses (3, 0.01, true, null, [1, 2], "x"), a plain string otherwise."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text


def apply_override(config: dict, override: str) -> None:
    """Apply one `dotted.key=value` override in place.

    A key must already exist, except directly inside an `args` object, whose keys are checked against
    the constructor instead.
    """
    key, sep, raw = override.partition("=")
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in override)  # one line, whatever it holds
    if not sep or not key.strip():
        raise ConfigError(f"override '{shown}': expected key=value, e.g. trainer.epochs=3")
    parts = key.strip().split(".")
    node: Any = config
    for depth, part in enumerate(parts):
        here = ".".join(_key(p) for p in parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override '{shown}': {here} is not an index of that list (0..{len(node) - 1})")
            index: Any = int(part)
        elif isinstance(node, dict):
            in_args = depth > 0 and parts[depth - 1] == "args"
            if part not in node:
                if part == "args" and "type" in node:
                    node["args"] = {}
                elif not (last and in_args):
                    keys = ", ".join(_key(k) for k in node) or "none"
                    raise ConfigError(
                        f"override '{shown}': no key {here}{_did_you_mean(part, node)} (keys there: {keys})"
                    )
            index = part
        else:
            parent = ".".join(_key(p) for p in parts[:depth]) or "config"
            raise ConfigError(f"override '{shown}': {parent} is {_show(node)}, it has no key {_quoted(part)}")
        if last:
            node[index] = parse_value(raw)
        else:
            node = node[index]


def _schema_messages(error: jsonschema.ValidationError, schema: dict) -> list[str]:
    """Turn one jsonschema error into messages naming the dotted key, the expected and the found value."""
    where = _dotted(error.absolute_path)
    found = error.instance
    kind = error.validator
    if kind == "required":
        return [
            f"{_dotted([*error.absolute_path, k])}: missing required key"
            for k in error.validator_value
            if k not in found
        ]
    if kind == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in found if k not in allowed]
        return [
            f"{_dotted([*error.absolute_path, k])}: unknown key{_did_you_mean(k, allowed)} "
            f"(valid keys: {', '.join(allowed)})"
            for k in extra
        ]
    if kind == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return [f"{where}: expected {' or '.join(types)}, found {_show(found)}"]
    if kind in ("enum", "const"):
        allowed = error.validator_value if kind == "enum" else [error.validator_value]
        return [f"{where}: expected one of {', '.join(_show(v) for v in allowed)}; found {_show(found)}"]
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in bounds:
        return [f"{where}: expected a number {bounds[kind]} {error.validator_value}, found {_show(found)}"]
    if kind in ("pattern", "minLength"):
        expected = error.schema.get("description", f"a string matching {error.validator_value}")
        return [f"{where}: expected {expected}; found {_show(found)}"]
    return [f"{where}: {error.message}"]


def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def valid_names(role: Role) -> dict[str, Any]:
    """The public names of the role's module that fit the role (classes of the base type, or functions).

    A name imported into the module from elsewhere (`nn`, `F`, `BaseModel`) is not one of its names.
    """
    module = importlib.import_module(role.module)
    exported = getattr(module, "__all__", None)
    bases = tuple(_import(b) for b in role.base.split("|")) if role.base else ()
    found = {}
    for name in exported if exported is not None else dir(module):
        obj = getattr(module, name, None)
        if name.startswith("_") or obj is None:
            continue
        if exported is None and getattr(obj, "__module__", None) != module.__name__:
            continue
        if role.kind == "class":
            fits = inspect.isclass(obj) and issubclass(obj, bases) and obj not in bases and not inspect.isabstract(obj)
        else:
            fits = inspect.isfunction(obj)
        if fits:
            found[name] = obj
    return found


def _check_arguments(where: str, target: Callable, role: Role, args: dict) -> list[str]:
    """Bind `args` to the constructor's signature the way the code will call it; name what does not fit."""
    label = getattr(target, "__name__", str(target))
    signature = inspect.signature(target)
    params = list(signature.parameters.values())
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    passed_by_code = {p.name for p in named[: role.positional]} | set(role.keywords)
    accepted = [p.name for p in named if p.name not in passed_by_code]
    errors = []
    for key in args:
        if key in passed_by_code:
            errors.append(f"{where}.args.{key}: set by the code, not the config; remove it")
        elif key not in accepted and not takes_any:
            errors.append(
                f"{where}.args.{_key(key)}: {label} has no argument {_quoted(key)}{_did_you_mean(key, accepted)} "
                f"(accepted: {', '.join(accepted) or 'none'})"
            )
    for p in named:
        if p.name not in passed_by_code and p.default is p.empty and p.name not in args:
            errors.append(f"{where}.args.{p.name}: {label} needs this argument (accepted: {', '.join(accepted)})")
    return errors


def _entries(config: dict, role_name: str) -> list[tuple[str, str, dict]]:
    """(dotted path, type name, args) of each entry of a role; plain-name functions have empty args."""
    value = config.get(role_name)
    if value is None:
        return []
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    entries = []
    for index, item in items:
        where = role_name if index is None else f"{role_name}.{index}"
        if isinstance(item, str):
            entries.append((where, item, {}))
        else:
            entries.append((where, item["type"], item.get("args", {})))
    return entries


def metric_name(entry: str | dict) -> str:
    return entry if isinstance(entry, str) else entry.get("name", entry["type"])


def validate(config: dict) -> None:
    """Check a whole config; raise one ConfigError listing every problem found."""
    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a JSON object, found {_show(config)}")
    schema = read_json(SCHEMA_PATH)
    validator = jsonschema.Draft202012Validator(schema)
    errors = [
        m
        for e in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
        for m in _schema_messages(e, schema)
    ]
    if errors:
        raise ConfigError("; ".join(errors))

    for role_name, role in ROLES.items():
        names = valid_names(role)
        for where, type_name, args in _entries(config, role_name):
            if type_name not in names:
                errors.append(
                    f"{where}.type: unknown {role_name} {_quoted(type_name)}{_did_you_mean(type_name, names)} "
                    f"(valid: {', '.join(sorted(names)) or 'none'}, from {role.module})"
                )
            else:
                errors.extend(_check_arguments(where, names[type_name], role, args))

    labels = [metric_name(m) for m in config["metrics"]]
    duplicates = sorted({n for n in labels if labels.count(n) > 1})
    if duplicates:
        errors.append(f'metrics: {_quoted(duplicates[0])} appears twice; give one a distinct "name"')
    monitor = config["trainer"].get("monitor", "off")
    if monitor != "off":
        _, metric = monitor.split()
        known = ["loss", *labels]
        known += [f"val_{n}" for n in known]
        if metric not in known:
            errors.append(
                f"trainer.monitor: no metric '{metric}'{_did_you_mean(metric, known)} "
                f"(logged metrics: {', '.join(known)})"
            )
    if config.get("wandb") is not None and importlib.util.find_spec("wandb") is None:
        errors.append('wandb: the wandb package is not installed; run pip install wandb, or set "wandb": null')
    scheduler = config.get("lr_scheduler")
    if scheduler is not None and scheduler["type"] == "ReduceLROnPlateau":
        scheduler_mode = scheduler.get("args", {}).get("mode", "min")
        if monitor == "off":
            errors.append(
                "lr_scheduler: ReduceLROnPlateau steps on the monitored metric; "
                'set trainer.monitor, e.g. "min val_loss"'
            )
        elif monitor.split()[0] != scheduler_mode:
            errors.append(f"lr_scheduler.args.mode: '{scheduler_mode}' disagrees with trainer.monitor '{monitor}'")
    if errors:
        raise ConfigError("; ".join(errors))


class ConfigParser:
    """A validated config, the checkpoint it resumes from (if any), and the run's folders once made."""

    def __init__(
        self,
        config: dict,
        checkpoint: dict | None = None,
        checkpoint_path: Path | None = None,
        fine_tune: bool = False,
        run_id: str | None = None,
    ) -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint_path
        self.fine_tune = fine_tune
        self.run_id = run_id
        self.save_dir: Path | None = None  # set by make_run_dirs()
        self.log_dir: Path | None = None

    @classmethod
    def load(
        cls,
        config_path: str | Path | None = None,
        resume: str | Path | None = None,
        overrides: Sequence[str] = (),
        run_id: str | None = None,
    ) -> "ConfigParser":
        """Read, override and validate a config; nothing is written and no data is read.

        - `config_path` alone: a new run.
        - `resume` alone: continue that run with the config stored in the checkpoint.
        - both: a new run with `config_path` that starts from the checkpoint's weights (fine-tuning).
        """
        from utils.checkpoint import (
            KEY_ARCH,
            KEY_CONFIG,
            KEY_OPTIMIZER_TYPE,
            load_checkpoint,
            resolve_checkpoint_path,
        )

        if config_path is None and resume is None:
            raise ConfigError("no config given: pass -c config.json for a new run, or -r CHECKPOINT to resume one")
        if run_id is not None and not RUN_ID_PATTERN.match(run_id):
            raise ConfigError(f"--run-id {run_id!r}: expected a single folder name (letters, digits, '_', '-', '.')")
        checkpoint = checkpoint_path = None
        if resume is not None:
            checkpoint_path = resolve_checkpoint_path(resume)
            checkpoint = load_checkpoint(checkpoint_path)
        fine_tune = resume is not None and config_path is not None
        if config_path is not None:
            config = read_json(config_path)
        else:
            config = copy.deepcopy(checkpoint[KEY_CONFIG])
            if run_id is not None:
                raise ConfigError(
                    "--run-id: a resumed run keeps its folder; add -c config.json to fine-tune into a new run"
                )
        if not isinstance(config, dict):
            raise ConfigError(f"{config_path}: expected a JSON object at the top, found {_show(config)}")
        for override in overrides:
            apply_override(config, override)
        validate(config)
        if checkpoint is not None and not fine_tune:
            for key, saved, now in (
                ("arch.type", checkpoint[KEY_ARCH], config["arch"]["type"]),
                ("optimizer.type", checkpoint.get(KEY_OPTIMIZER_TYPE), config["optimizer"]["type"]),
            ):
                if saved != now:
                    raise ConfigError(
                        f"{key}: the checkpoint was trained with {saved}, the config asks for {now}; "
                        "add -c CONFIG to fine-tune from its weights instead"
                    )
        parser = cls(config, checkpoint, checkpoint_path, fine_tune, run_id)
        if run_id is not None:
            parser._refuse_taken_run_id(run_id)  # now, not after the data is loaded
        return parser

    @property
    def resuming(self) -> bool:
        """Continuing a run (as opposed to a new run or fine-tuning)."""
        return self.checkpoint is not None and not self.fine_tune

    def __getitem__(self, key: str) -> Any:
        return self.config[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)

    def resolve(self, role_name: str, entry: str | dict) -> Callable:
        """The class or function an entry names, bound to its config args (functions via partial)."""
        role = ROLES[role_name]
        type_name, args = (entry, {}) if isinstance(entry, str) else (entry["type"], entry.get("args", {}))
        target = valid_names(role)[type_name]
        return partial(target, **args) if role.kind == "function" else target

    def init_obj(self, role_name: str, *args: Any, **kwargs: Any) -> Any:
        """Build the object of a role: `cls(*args, **config_args, **kwargs)`, e.g. init_obj("optimizer", params)."""
        entry = self.config[role_name]
        target = valid_names(ROLES[role_name])[entry["type"]]
        return target(*args, **entry.get("args", {}), **kwargs)

    def init_ftn(self, role_name: str) -> Callable:
        """The loss function, with its config args bound."""
        return self.resolve(role_name, self.config[role_name])

    def init_callbacks(self) -> list[Any]:
        """The configured callbacks, in order."""
        names = valid_names(ROLES["callbacks"])
        return [names[entry["type"]](**entry.get("args", {})) for entry in self.config.get("callbacks", [])]

    def metric_fns(self) -> dict[str, Callable]:
        """Metric label -> function with its config args bound."""
        return {metric_name(entry): self.resolve("metrics", entry) for entry in self.config["metrics"]}

    def _run_paths(self, run_id: str) -> tuple[Path, Path]:
        root = Path(self.config.get("save_dir", "saved/"))
        return root / "models" / self.config["name"] / run_id, root / "log" / self.config["name"] / run_id

    def _refuse_taken_run_id(self, run_id: str) -> None:
        save_dir, log_dir = self._run_paths(run_id)
        if save_dir.exists() or log_dir.exists():
            raise ConfigError(
                f"--run-id {run_id}: {save_dir} already exists; "
                f"choose another id, or resume it with --resume {save_dir}"
            )

    def use_run_dirs(self, run_id: str) -> None:
        """Adopt the folders another process (DDP rank 0) created for this run, without touching the disk."""
        if self.resuming:
            self.run_id, self.save_dir = run_id, self.checkpoint_path.parent
            self.log_dir = self._run_paths(run_id)[1]
        else:
            self.run_id = run_id
            self.save_dir, self.log_dir = self._run_paths(run_id)

    def make_run_dirs(self, timestamp: str | None = None) -> None:
        """Create the run's checkpoint and log folders and save the resolved config there.

        A new run never reuses a folder: two runs started in the same second get `<time>` and `<time>_1`.
        A resumed run continues in the folder of its checkpoint.
        """
        from utils.checkpoint import KEY_RUN_ID

        if self.resuming:
            self.use_run_dirs(self.checkpoint.get(KEY_RUN_ID) or self.checkpoint_path.parent.name)
            self.log_dir.mkdir(parents=True, exist_ok=True)
        else:
            base = self.run_id or timestamp or datetime.now().strftime("%m%d_%H%M%S")
            for attempt in range(1000):
                run_id = base if attempt == 0 else f"{base}_{attempt}"
                save_dir, log_dir = self._run_paths(run_id)
                if save_dir.exists() or log_dir.exists():
                    if self.run_id is not None:
                        self._refuse_taken_run_id(run_id)
                    continue
                try:
                    save_dir.mkdir(parents=True, exist_ok=False)
                except FileExistsError:  # another run took it a moment ago
                    continue
                except OSError as e:
                    raise ConfigError(f"save_dir: cannot create {save_dir} ({e.strerror or e})") from None
                log_dir.mkdir(parents=True, exist_ok=True)
                self.use_run_dirs(run_id)
                break
        write_json(self.config, self.save_dir / "config.json")
