"""The contract every invertible layer keeps, stated once."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class InvertibleLayer(Protocol):
    """`forward(x) -> (y, logdet)` and `inverse(y) -> (x, logdet)`, logdet per sample (shape N);
    `inverse(forward(x)[0])[0] == x` to float32 precision, and the two logdets cancel."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class ConditionalInvertibleLayer(Protocol):
    """The same contract for every fixed `condition` (an opaque tensor the layer's networks read):
    `forward(x, condition) -> (y, logdet)`, `inverse(y, condition) -> (x, logdet)`."""

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def inverse(self, y: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
