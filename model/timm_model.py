"""Any timm image model (efficientnet_b0, tf_efficientnet_b0.ap_in1k, convnext_tiny, ...), pretrained weights read
from a local file and never downloaded, with a new head. timm is optional (requirements-kaggle.txt) and imported
only when one is built, so that scanning model/ for the config's names never needs it."""

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from base.base_model import BaseModel, weights_mismatch
from utils.errors import ConfigError, did_you_mean

logger = logging.getLogger("model")

# timm.create_model's arguments that TimmModel sets itself, and those that would read or fetch weights elsewhere.
RESERVED_ARGS = (
    "num_classes", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
)  # fmt: skip


class TimmModel(BaseModel):
    """A timm model (`timm.create_model(name)`; `name` an architecture of `timm.list_models()`, or one with a
    pretrained tag of `timm.list_pretrained()`, such as tf_efficientnet_b0.ap_in1k) with its classifier removed
    and a new `head` of `num_classes`.

    `weights`: a file holding the model's state dict, read as data (safetensors, or a weights-only torch file):
    timm's model.safetensors or pytorch_model.bin from huggingface.co/timm/<name>, or what
    `torch.save(timm_model.state_dict(), path)` wrote. The old classifier's tensors in it are dropped; every other
    tensor must fit. Null: random weights. `model_args`: timm's own keyword arguments for the model
    (`drop_rate`, `drop_path_rate`; `img_size` for a ViT at another size).

    The body is `self.backbone` (what the freezing strategies freeze) and the new layer `self.head`: parameter
    names are backbone.* and head.*. Input: images (B, 3, H, W) normalized as the weights were trained, which
    `mean`, `std` and `input_size` (C, H, W) say (timm's pretrained_cfg); the data loader normalizes, and train.py
    gives it these `mean` and `std` unless data_loader.args sets them (ImageNet's for efficientnet_b0 and
    convnext_tiny; 0.5 for tf_efficientnet_b0.ap_in1k; name the tag the weights file comes from: without one,
    these are the architecture's default tag's). Output: (B, num_classes) logits.
    """

    def __init__(
        self, name: str, num_classes: int, weights: str | None = None, model_args: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        net = _create(name, model_args or {})
        if weights is not None:
            _load_pretrained(net, name, weights)
        cfg = net.pretrained_cfg
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        self.input_size = tuple(cfg["input_size"])
        size = "x".join(map(str, self.input_size[1:]))
        logger.info(
            "timm's %s was trained on %s images normalized with mean %s and std %s: a run normalizes its images "
            "with these unless data_loader.args gives mean and std", name, size, list(self.mean), list(self.std),
        )  # fmt: skip
        self.backbone = net
        self.head = nn.Linear(getattr(net, "head_hidden_size", net.num_features), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, features) pooled, then (B, num_classes) logits


def _import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError("arch.type: TimmModel needs timm; run pip install -r requirements-kaggle.txt") from None
    return timm


def _create(name: str, model_args: dict[str, Any]) -> nn.Module:
    """The model `name` without its classifier (num_classes=0: the pooled features), random weights; one line
    for an unknown name or tag. Only names timm lists get this far: an hf-hub: or local-dir: name would fetch."""
    timm = _import_timm()
    arch, _, tag = name.partition(".")
    archs = timm.list_models()
    if arch not in archs:
        raise ConfigError(
            f"arch.args.name: unknown timm model {name!r}{did_you_mean(arch, archs)} (timm.list_models() lists them)"
        )
    tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
    if tag and tag not in tags:
        raise ConfigError(
            f"arch.args.name: timm's {arch} has no pretrained tag {tag!r}{did_you_mean(tag, tags)} "
            f"(its tags: {', '.join(tags) or 'none'})"
        )
    for key in RESERVED_ARGS:
        if key in model_args:
            why = "arch.args.num_classes sets it" if key == "num_classes" else "weights come from arch.args.weights"
            raise ConfigError(f"arch.args.model_args.{key}: not a model argument TimmModel passes on ({why})")
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **model_args)
    except TypeError as e:  # an argument the model's class does not take
        if not model_args:
            raise
        raise ConfigError(f"arch.args.model_args: {arch} does not take these arguments ({e})") from None


def _load_pretrained(net: nn.Module, name: str, weights: str) -> None:
    path = Path(weights).expanduser()
    if not path.is_file():
        hub = net.pretrained_cfg.get("hf_hub_id")
        source = f"model.safetensors from https://huggingface.co/{hub}" if hub else f"a state dict file of {name}"
        raise ConfigError(
            f"arch.args.weights: no file {path}; download {source} to it (or set arch.args.weights to the path of "
            "a state dict file, or to null for random weights)"
        )
    state = _read_state_dict(path, name)
    classifier = net.pretrained_cfg.get("classifier") or ()
    old_head = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier))
    state = {k: v for k, v in state.items() if not k.startswith(old_head)}  # replaced by the new head
    if problem := weights_mismatch(net.state_dict(), state):
        raise ConfigError(f"arch.args.weights: {path} does not fit timm's {name} ({problem})")
    net.load_state_dict(state)
    logger.info("Pretrained weights of %s from %s", name, path)


def _read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, or of a torch file read weights-only (no pickled objects run)."""
    from safetensors.torch import load_file  # a dependency of timm

    try:
        if path.suffix == ".safetensors":
            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a file that is no state dict: pickle, zip, header and format errors alike
        raise ConfigError(f"arch.args.weights: {path} is not a readable state dict ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"arch.args.weights: {path} is not a state dict (a dict of tensors) of {name}")
    return state
