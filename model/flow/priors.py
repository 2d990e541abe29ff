"""The flow's priors: diagonal Gaussians whose parameters come from the coarser levels and an opaque
condition vector (the flow does not know what the condition means)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from model.flow.nets import ZeroConv2d


class ConditionalGaussianPrior(nn.Module):
    """Diagonal Gaussian over a latent of shape C x H x W, whose mean and log-std come from an optional
    context tensor (the other half of a split, through a zero-initialized convolution) plus a linear map of
    the condition vector, in the way Glow conditions its prior on a class."""

    def __init__(self, shape: tuple[int, int, int], context_channels: int, condition_dim: int) -> None:
        super().__init__()
        c, h, w = shape
        self.shape = shape
        self.context = ZeroConv2d(context_channels, 2 * c) if context_channels else None
        self.base = nn.Parameter(torch.zeros(1, 2 * c, h, w))
        self.condition = nn.Linear(condition_dim, 2 * c * h * w) if condition_dim else None
        if self.condition is not None:
            nn.init.zeros_(self.condition.weight)
            nn.init.zeros_(self.condition.bias)

    def context_params(self, context: torch.Tensor | None, n: int) -> torch.Tensor:
        """The part of (mean, log-std) that does not depend on the condition: N x 2C x H x W."""
        params = self.base.expand(n, -1, -1, -1)
        if self.context is not None:
            params = params + self.context(context)
        return params

    def condition_params(self, condition: torch.Tensor) -> torch.Tensor:
        """The part of (mean, log-std) that the condition adds, bias included: M x 2C x H x W."""
        if self.condition is None:
            raise ValueError("this prior takes no condition")
        return self.condition(condition).view(-1, 2 * self.shape[0], self.shape[1], self.shape[2])

    def params(self, context: torch.Tensor | None, condition: torch.Tensor | None, n: int):
        params = self.context_params(context, n)
        if self.condition is not None and condition is not None:
            params = params + self.condition_params(condition)
        return params[:, 0::2], params[:, 1::2]

    @staticmethod
    def log_density(z: torch.Tensor, mean: torch.Tensor, logs: torch.Tensor) -> torch.Tensor:
        """Sum over all but the leading dimensions of the Gaussian log-density."""
        d = -0.5 * (np.log(2 * np.pi) + 2.0 * logs + (z - mean) ** 2 * torch.exp(-2.0 * logs))
        return d.flatten(d.dim() - 3).sum(-1)
