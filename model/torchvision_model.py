"""Any torchvision classification model, pretrained weights loaded from a local file, with a new head."""

import logging
from pathlib import Path

import torch
from torch import nn

from base.base_model import BaseModel, weights_mismatch
from utils.errors import ConfigError, did_you_mean


class TorchvisionModel(BaseModel):
    """A torchvision classification model (`torchvision.models.get_model(name)`: resnet18, efficientnet_b0,
    convnext_tiny, vit_b_16, ...) whose classification layer is replaced by a new `head` of `num_classes`.

    `weights`, loaded before the head is replaced, is one of:
    - a file holding the model's state dict (`torch.save(model.state_dict(), path)`, or a file
      torchvision downloads, such as resnet18-f37072fd.pth);
    - a torchvision weights name (`ResNet18_Weights.IMAGENET1K_V1`, or `IMAGENET1K_V1`, or `DEFAULT`),
      read from the torch hub cache (`~/.cache/torch/hub/checkpoints/`) and never downloaded: without the
      file there, one line says where to put it;
    - null: random weights.

    The pretrained body is `self.backbone` (what the freezing strategies freeze) and the new layer is
    `self.head`: parameter names are backbone.* and head.*.
    """

    def __init__(self, name: str, num_classes: int, weights: str | None = None) -> None:
        super().__init__()
        from torchvision import models

        names = models.list_models(module=models)  # the classification models
        if name not in names:
            raise ConfigError(f"arch.args.name: unknown torchvision model {name!r}{did_you_mean(name, names)}")
        net = models.get_model(name, weights=None)
        if weights is not None:
            _load_pretrained(net, name, weights)
        head_name, old_head = _classifier(net)
        net.set_submodule(head_name, nn.Identity())
        self.backbone = net
        self.head = nn.Linear(old_head.in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, num_classes) logits


def _classifier(net: nn.Module) -> tuple[str, nn.Linear]:
    """The model's classification layer: its last nn.Linear (fc of a ResNet, classifier.1 of an
    EfficientNet, heads.head of a ViT)."""
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(net).__name__} has no linear classification layer to replace")
    return linears[-1]


def _load_pretrained(net: nn.Module, name: str, weights: str) -> None:
    path = Path(weights).expanduser()
    if not path.is_file():
        path = _hub_file(name, weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a file that is no state dict: pickle, zip and format errors alike
        raise ConfigError(f"arch.args.weights: {path} is not a readable state dict ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"arch.args.weights: {path} is not a state dict (a dict of tensors) of {name}")
    if problem := weights_mismatch(net.state_dict(), state):
        raise ConfigError(f"arch.args.weights: {path} does not fit {name} ({problem})")
    net.load_state_dict(state)
    logging.getLogger("model").info("Pretrained weights of %s from %s", name, path)


def _hub_file(name: str, weights: str) -> Path:
    """Where torchvision would have downloaded the named weights; one line when they are not there."""
    from torchvision import models

    enum = models.get_model_weights(name)
    member = weights.removeprefix(f"{enum.__name__}.")
    try:
        url = enum[member].url if member != "DEFAULT" else enum.DEFAULT.url
    except KeyError:
        raise ConfigError(
            f"arch.args.weights: {weights!r} is neither a file nor weights of {name} "
            f"(valid names: {', '.join(w.name for w in enum)}, DEFAULT)"
        ) from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise ConfigError(
            f"arch.args.weights: {weights} is not on this machine; download {url} to {path} "
            f"(or set arch.args.weights to the path of a state dict file)"
        )
    return path
