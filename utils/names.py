"""Where each `type` of a config is looked up, and how its `args` are checked against the constructor.

A role is one kind of config entry (arch, data_loader, loss, ...): the module its names come from, what
an object must be to fill it, and the arguments the code passes itself. A name outside the role's module,
a private name or an object of the wrong kind is refused with the list of valid names.
"""

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from utils.errors import did_you_mean, key_text, quoted


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


def valid_names(role: Role) -> dict[str, Any]:
    """The public names of the role's module that fit the role (classes of the base type, or functions).

    A name imported into the module from elsewhere (`nn`, `F`, `BaseModel`) is not one of its names.
    """
    module = importlib.import_module(role.module)
    exported = getattr(module, "__all__", None)
    base = None
    if role.base is not None:
        base_module, _, base_name = role.base.partition(":")
        base = getattr(importlib.import_module(base_module), base_name)
    found = {}
    for name in exported if exported is not None else dir(module):
        obj = getattr(module, name, None)
        if name.startswith("_") or obj is None:
            continue
        if exported is None and getattr(obj, "__module__", None) != module.__name__:
            continue
        if role.kind == "class":
            fits = inspect.isclass(obj) and issubclass(obj, base) and obj is not base and not inspect.isabstract(obj)
        else:
            fits = inspect.isfunction(obj)
        if fits:
            found[name] = obj
    return found


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
                errors.append(
                    f"{where}.type: unknown {role_name} {quoted(type_name)}{did_you_mean(type_name, names)} "
                    f"(valid: {', '.join(sorted(names)) or 'none'}, from {role.module})"
                )
            else:
                errors.extend(_check_arguments(where, names[type_name], role, args))
    return errors


def _check_arguments(where: str, target: Callable, role: Role, args: dict) -> list[str]:
    """Bind `args` to the constructor's signature the way the code will call it; name what does not fit."""
    label = getattr(target, "__name__", str(target))
    params = list(inspect.signature(target).parameters.values())
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
                f"{where}.args.{key_text(key)}: {label} has no argument {quoted(key)}{did_you_mean(key, accepted)} "
                f"(accepted: {', '.join(accepted) or 'none'})"
            )
    for p in named:
        if p.name not in passed_by_code and p.default is p.empty and p.name not in args:
            errors.append(f"{where}.args.{p.name}: {label} needs this argument (accepted: {', '.join(accepted)})")
    return errors


def resolve(role_name: str, entry: str | dict) -> Callable:
    """What an entry names, with its config args bound: a class (to call with the code's arguments) or a
    function (a partial, called with output and target)."""
    role = ROLES[role_name]
    type_name, args = (entry, {}) if isinstance(entry, str) else (entry["type"], entry.get("args", {}))
    return partial(valid_names(role)[type_name], **args)
