"""ConfigParser: reads config.json (or a checkpoint's config), applies command-line overrides, validates
everything, and builds objects by name.

The order is the point: load -> override -> JSON Schema -> defaults -> names and constructor signatures ->
monitor. Every error found is collected and reported at once, in one line, before any folder is made or
any data is read.
"""

import copy
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema

from roles import ROLES, check_names, metric_name, resolve, type_name, valid_names
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
            if part not in node or (node[part] is None and not last):  # a section left null: set its keys
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
        hint = did_you_mean(found, [v for v in allowed if isinstance(v, str)]) if isinstance(found, str) else ""
        return [f"{where}: expected one of {', '.join(shown(v) for v in allowed)}; found {shown(found)}{hint}"]
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in bounds:
        return [f"{where}: expected a number {bounds[kind]} {error.validator_value}, found {shown(found)}"]
    if kind in ("pattern", "minLength"):
        expected = error.schema.get("description", f"a string matching {error.validator_value}").rstrip(".")
        return [f"{where}: expected {expected}; found {shown(found)}"]
    return [f"{where}: {error.message}"]


def fill_defaults(config: dict, schema: dict) -> None:
    """Write every default into the config, so the saved config.json says what ran.

    Each default has one home: top-level keys in the schema, trainer keys in TrainerOptions, finetune keys in
    the signature of Finetuning.
    """
    from trainer.finetuning import Finetuning
    from trainer.options import TrainerOptions

    for key, spec in schema["properties"].items():
        if "default" in spec and key not in config:
            config[key] = copy.deepcopy(spec["default"])
    TrainerOptions.fill_defaults(config["trainer"])
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
    from trainer.options import TrainerOptions

    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a JSON object, found {shown(config)}")
    schema = read_json(SCHEMA_PATH)
    errors = _shape_errors(config, schema)
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
    errors.extend(TrainerOptions.of(config).errors(labels, config["lr_scheduler"]))
    if config["finetune"] is not None:
        from trainer.finetuning import Finetuning

        errors.extend(Finetuning(**config["finetune"]).check())
    from logger.visualization import tracker_errors

    errors.extend(tracker_errors(config))
    if errors:
        raise ConfigError("; ".join(errors))


def _shape_errors(config: dict, schema: dict) -> list[str]:
    """What the JSON schema (the file's shape: keys, types, bounds) finds wrong, a message each."""
    found = sorted(VALIDATOR(schema).iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    return [message for e in found for message in _schema_messages(e)]


def _validates(config: dict) -> bool:
    try:
        validate(config)
    except ConfigError:
        return False
    return True


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
            from logger.visualization import stored_trackers

            stored_trackers(config)  # data: a stranger's checkpoint chooses no host, folder or mode for W&B
        move_victoresque_keys(config)
        stored = copy.deepcopy(config) if config_path is None else None
        for override in overrides:
            apply_override(config, override)
        try:
            return cls(config)
        except ConfigError as e:
            if stored is None or _validates(stored):  # the overrides' fault: the error as it is
                raise
            if _shape_errors(stored, read_json(SCHEMA_PATH)):
                raise ConfigError(f"{resume.path}: the config stored in it is damaged ({e})") from None
            raise ConfigError(  # sound in shape: it names what this project lacks (another project's model)
                f"{resume.path}: its config does not fit this project ({e}); use the checkpoint in the project that "
                "trained it, or add the parts it names here"
            ) from None

    def __getitem__(self, key: str) -> Any:
        return self.config[key]

    def class_of(self, name: str) -> Any:
        """The class (or function) the entry `name` selects, unbuilt: e.g. class_of("data_loader")."""
        return valid_names(ROLES[name])[type_name(self.config[name])]

    def takes(self, name: str) -> set[str]:
        """The argument names of the class the entry `name` selects: e.g. "stratify" in takes("data_loader")."""
        return set(inspect.signature(self.class_of(name)).parameters)

    def init_obj(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Build a class entry: `cls(*args, **config_args, **kwargs)`, e.g. init_obj("optimizer", params).

        For a list of class entries (callbacks) return the list of objects.
        """
        if isinstance(self.config[name], list):
            return [self._build(f"{name}.{i}", name, e, args, kwargs) for i, e in enumerate(self.config[name])]
        return self._build(name, name, self.config[name], args, kwargs)

    def init_ftn(self, name: str) -> Callable | dict[str, Callable]:
        """A function entry with its config args bound (the loss); for a list of function entries (the
        metrics) a dict of label -> function, in config order."""
        if isinstance(self.config[name], list):
            return {metric_name(e): self._build(f"{name}.{i}", name, e) for i, e in enumerate(self.config[name])}
        return self._build(name, name, self.config[name])

    @staticmethod
    def _build(where: str, role: str, entry: str | dict, args: tuple = (), kwargs: dict | None = None) -> Any:
        """resolve() and, for a class entry (`kwargs` given, maybe empty), the call; what the constructor raises
        becomes one line naming the entry, the error and the line of code it came from (the user's own model or
        data code, often)."""
        try:
            built = resolve(role, entry)
            return built(*args, **kwargs) if kwargs is not None else built
        except UserError:
            raise
        except Exception as e:
            raise ConfigError(f"{where}: {type_name(entry)} could not be built: {describe_exception(e)}") from None
