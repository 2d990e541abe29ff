"""The networks inside the couplings and priors: ordinary, not invertible, modules."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn


class ZeroConv2d(nn.Module):
    """3x3 convolution that starts at zero, with a learned output scale (Glow's Conv2dZeros)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(cast(torch.Tensor, self.conv.bias))
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.exp(self.logs * 3)


def coupling_network(in_channels: int, out_channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 1),
        nn.ReLU(),
        ZeroConv2d(width, out_channels),
    )
