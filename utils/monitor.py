"""`trainer.monitor` as a small value: which metric decides model_best.pth and early stopping, and how."""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Monitor:
    """`trainer.monitor` parsed once: "off", or a mode ("min"/"max") and the metric it watches."""

    mode: str
    metric: str = ""

    @classmethod
    def parse(cls, text: str) -> "Monitor":
        """ "off", "min val_loss" or "max val_accuracy" (the schema has checked the form)."""
        return cls("off") if text == "off" else cls(*text.split())

    @property
    def text(self) -> str:
        return "off" if self.mode == "off" else f"{self.mode} {self.metric}"

    @property
    def worst(self) -> float:
        """The starting best value, that any first value improves on."""
        return {"min": math.inf, "max": -math.inf, "off": 0.0}[self.mode]

    def improves(self, value: float, best: float, min_delta: float) -> bool:
        """Whether `value` beats `best` by more than `min_delta`."""
        if self.mode == "min":
            return value < best - min_delta
        return self.mode == "max" and value > best + min_delta
