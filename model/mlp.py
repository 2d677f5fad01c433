"""A multi-layer perceptron for tables of numeric features (the tabular examples' model)."""

import torch
from torch import nn

from base.base_model import BaseModel


class MLP(BaseModel):
    """`layers` hidden layers of `hidden` units with ReLU and dropout, then a linear output of `out_features`
    raw scores (regression values, or logits for BCEWithLogitsLoss / CrossEntropyLoss)."""

    def __init__(
        self, in_features: int, out_features: int = 1, hidden: int = 64, layers: int = 2, dropout: float = 0.0
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(width, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, out_features)
