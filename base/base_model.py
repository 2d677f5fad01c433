import torch.nn as nn


class BaseModel(nn.Module):
    """An nn.Module whose printout ends with its number of trainable parameters."""

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def __str__(self) -> str:
        return f"{super().__str__()}\nTrainable parameters: {self.num_parameters():,}"
