import torch
import torch.nn as nn


class BaseModel(nn.Module):
    """An nn.Module whose printout ends with its number of trainable parameters."""

    def num_parameters(self, trainable_only: bool = True) -> int:
        return parameter_counts(self)[0 if trainable_only else 1]

    def __str__(self) -> str:
        return f"{super().__str__()}\nTrainable parameters: {self.num_parameters():,}"


def state_differences(
    own: dict[str, torch.Tensor], given: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """The keys of a state dict `given` that do not fit a model whose state dict is `own`: (missing,
    unexpected, of another shape)."""
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    mismatched = [k for k in own if k in given and given[k].shape != own[k].shape]
    return missing, unexpected, mismatched


def weights_mismatch(own: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    """What keeps a state dict `given` from loading strictly into a model whose state dict is `own`, in a few
    words (a shape, then the counts of missing and unexpected keys with one of each), or None when it fits."""
    missing, unexpected, mismatched = state_differences(own, given)
    parts = [f"{k} has shape {tuple(given[k].shape)} there, {tuple(own[k].shape)} here" for k in mismatched[:1]]
    parts += [f"{len(missing)} missing key(s) such as {missing[0]}"] if missing else []
    parts += [f"{len(unexpected)} unexpected key(s) such as {unexpected[0]}"] if unexpected else []
    return "; ".join(parts) or None


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of a model: what a freezing strategy leaves to train, of how many."""
    counts = [(p.numel(), p.requires_grad) for p in model.parameters()]
    return sum(n for n, trainable in counts if trainable), sum(n for n, _ in counts)


def summary(model: nn.Module) -> str:
    """A table of the model's top-level layers with their parameter counts, and its total size."""
    rows = [f"{'layer':<20} {'type':<20} {'parameters':>12}"]
    for name, child in model.named_children():
        count = sum(p.numel() for p in child.parameters())
        rows.append(f"{name:<20} {type(child).__name__:<20} {count:>12,}")
    trainable, total = parameter_counts(model)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    rows.append(f"{type(model).__name__}: {total:,} parameters ({trainable:,} trainable), {size / 2**20:.2f} MiB")
    return "\n".join(rows)
