"""Names: where each `type` of a config is looked up, and how its `args` are checked against the constructor.

A role is one kind of config entry (arch, data_loader, loss, ...): the module its names come from, what an object
must be to fill it, and the arguments the code passes itself. A name outside the role's module (or, for models and
data loaders, its package), a private name or an object of the wrong kind is refused with the list of valid names.
"""

import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, get_args, get_origin

from utils.errors import ConfigError, did_you_mean, key_text, quoted, shown
from utils.util import imported, package_modules


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
    whole_package: bool = False  # every file of the module's package adds its own names (a model in its own file)


ROLES: dict[str, Role] = {
    "arch": Role("model.model", subclass_of("torch.nn:Module"), whole_package=True),
    "data_loader": Role(
        "data_loader.data_loaders",
        subclass_of("base.base_data_loader:BaseDataLoader"),
        keywords=("split", "seed"),
        whole_package=True,
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


def valid_names(role: Role) -> dict[str, Any]:
    """Every name the role accepts, with its object: the project module's first, then the libraries'."""
    found: dict[str, Any] = {}
    if role.module is not None and role.fits is not None:
        package = role.module.split(".")[0]
        for module in _modules(role):
            for name in dir(module):
                obj = getattr(module, name)
                if name.startswith("_") or inspect.ismodule(obj) or found.get(name) is obj:
                    continue
                home = getattr(obj, "__module__", None) or ""
                if (home.split(".")[0] == package and role.fits(name, obj)) or _library_member(role, obj):
                    if name in found:  # a config names a part by its class name: two would be a silent choice
                        where = sorted({_file(found[name]), _file(obj)})
                        raise ConfigError(f"{where[0]} and {where[1]} both define {name}; rename one of them")
                    found[name] = obj
    for library, fits in role.libraries:
        module = importlib.import_module(library)
        for name in dir(module):
            obj = getattr(module, name)
            if not name.startswith("_") and name not in found and fits(name, obj):
                found[name] = obj
    return found


def _modules(role: Role) -> list[Any]:
    """The role's module and, for a `whole_package` role, every other file of its package: a part is found
    where it is written, and a feature's file that is left out of a project needs no edit anywhere."""
    first = imported(role.module)
    others = package_modules(role.module.split(".")[0]) if role.whole_package else []
    owned = {other.module for other in ROLES.values() if other is not role}  # a loss class is no model
    return [first, *(module for module in others if module is not first and module.__name__ not in owned)]


def _file(obj: Any) -> str:
    return (getattr(obj, "__module__", None) or "?").replace(".", "/") + ".py"


def _library_member(role: Role, obj: Any) -> bool:
    """Whether `obj` is one of the role's library objects (`mse = F.mse_loss` in model/loss.py)."""
    name = getattr(obj, "__name__", None)
    for library, fits in role.libraries:
        if name and getattr(importlib.import_module(library), name, None) is obj and fits(name, obj):
            return True
    return False


def entries(config: dict, role_name: str) -> list[tuple[str, str | dict]]:
    """(dotted path, entry) of each entry of a role: "metrics.1" or "loss" and what the config holds there."""
    value = config.get(role_name)
    if value is None:
        return []
    if isinstance(value, list):
        return [(f"{role_name}.{index}", item) for index, item in enumerate(value)]
    return [(role_name, value)]


def type_name(entry: str | dict) -> str:
    """The `type` an entry names (a plain string is a function's name)."""
    return entry if isinstance(entry, str) else entry["type"]


def entry_args(entry: str | dict) -> dict:
    """The config's arguments of an entry (none for a plain name)."""
    return {} if isinstance(entry, str) else entry.get("args", {})


def metric_name(entry: str | dict) -> str:
    """The label a metric is logged under: its "name", or its function name."""
    return entry if isinstance(entry, str) else entry.get("name", entry["type"])


def check_names(config: dict) -> list[str]:
    """Every entry's type must be a valid name of its role, and its args must fit the constructor."""
    from trainer.finetuning import run_length_args  # a scheduler's run length: filled in by the code, if left out

    errors = []
    for role_name, role in ROLES.items():
        names = valid_names(role)
        for where, entry in entries(config, role_name):
            name = type_name(entry)
            if name not in names:
                at = where if isinstance(entry, str) else f"{where}.type"
                errors.append(
                    f"{at}: unknown {role_name} {quoted(name)}{did_you_mean(name, names)} "
                    f"(valid: {', '.join(sorted(names)) or 'none'}; from {_homes(role)})"
                )
            else:
                filled = tuple(run_length_args({"type": name}, 1, 1)) if role_name == "lr_scheduler" else ()
                errors.extend(_check_arguments(where, names[name], role, entry_args(entry), filled))
    return errors


def _check_arguments(where: str, target: Callable, role: Role, args: dict, filled: tuple[str, ...] = ()) -> list[str]:
    """Bind `args` to the constructor's signature the way the code will call it; name what does not fit: an
    unknown or missing argument, or a value of another kind than the parameter's type or default says (a number,
    true or false, a string, a list of numbers for a tuple such as Adam's betas)."""
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
        elif key in by_name and _numbers(by_name[key].default) and not _numbers(value, _length(by_name[key])):
            many = f"{_length(by_name[key]) or ''} numbers".lstrip()  # Adam's betas: 2, typed tuple[float, float]
            errors.append(
                f"{where}.args.{key}: expected a list of {many}; {label}'s default is {list(by_name[key].default)}; "
                f"found {shown(value)}"
            )
        elif key in by_name and (kinds := _text(by_name[key])) and not isinstance(value, kinds):
            expected = "a string or null" if type(None) in kinds else "a string"
            errors.append(f"{where}.args.{key}: expected {expected}; found {shown(value)}")
        elif key in by_name and _wants_bool(by_name[key]) and not isinstance(value, bool):  # "false" is true
            errors.append(f"{where}.args.{key}: expected true or false; found {shown(value)}")
    for p in named:
        if p.name not in passed_by_code and p.default is p.empty and p.name not in args and p.name not in filled:
            errors.append(f"{where}.args.{p.name}: {label} needs this argument (accepted: {', '.join(accepted)})")
    return errors


def _homes(role: Role) -> str:
    own = [f"{role.module.split('.')[0]}/*.py" if role.whole_package else role.module] if role.module else []
    return ", ".join([*own, *(library for library, _ in role.libraries)])


def _wants_number(parameter: inspect.Parameter) -> bool:
    """A parameter typed, or defaulting to, a plain int or float."""
    default = parameter.default
    typed = parameter.annotation in (int, float, "int", "float")
    return typed or (isinstance(default, (int, float)) and not isinstance(default, bool))


def _text(parameter: inspect.Parameter) -> tuple[type, ...]:
    """What a parameter typed as text takes: str (typed str), str or None (str | None), or nothing is checked."""
    if parameter.annotation in (str, "str"):
        return (str,)
    return (str, type(None)) if set(get_args(parameter.annotation)) == {str, type(None)} else ()


def _wants_bool(parameter: inspect.Parameter) -> bool:
    """A parameter typed as a plain bool, or untyped with a bool default."""
    if parameter.annotation is inspect.Parameter.empty:
        return isinstance(parameter.default, bool)
    return parameter.annotation in (bool, "bool")


def _numbers(value: Any, length: int | None = None) -> bool:
    """A tuple or list of numbers (of `length` of them, if given)."""
    if not isinstance(value, (tuple, list)) or not value:
        return False
    return (length is None or len(value) == length) and all(map(_is_number, value))


def _length(parameter: inspect.Parameter) -> int | None:
    """How many items a parameter typed as a tuple of fixed length takes (tuple[float, float]: 2), else None."""
    items = get_args(parameter.annotation)
    return len(items) if get_origin(parameter.annotation) is tuple and Ellipsis not in items else None


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def resolve(role_name: str, entry: str | dict) -> Callable:
    """What an entry names, with its config args bound: a class to call with the code's arguments, or, for a
    loss or metric, what is called with (output, target): the function with its args, or the class built
    from them."""
    role = ROLES[role_name]
    target, args = valid_names(role)[type_name(entry)], entry_args(entry)
    if role.called and inspect.isclass(target):
        if role_name == "loss":  # nn.BCEWithLogitsLoss(pos_weight=...), nn.CrossEntropyLoss(weight=...): tensors
            args = {k: _as_tensor(v) if isinstance(v, list) else v for k, v in args.items()}
        return target(**args)
    return partial(target, **args)


def _as_tensor(values: list) -> Any:
    """A JSON list of numbers (a loss's `weight` or `pos_weight`) as the float tensor torch's loss classes take."""
    import torch

    return torch.tensor(values, dtype=torch.float32)
