"""Invertible layers, each an `InvertibleLayer` (see model/flow/contract.py). The networks inside the
couplings are in nets.py, the priors in priors.py."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.flow.contract import InvertibleLayer
from model.flow.nets import coupling_network


class ActNorm(nn.Module):
    """Per-channel affine map, initialized from the first batch to zero mean and unit variance."""

    initialized: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.logs.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.initialized and self.training:
            self.initialize(x)
        y = (x + self.bias) * torch.exp(self.logs)
        logdet = self.logs.sum() * x.shape[2] * x.shape[3]
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = y * torch.exp(-self.logs) - self.bias
        logdet = -self.logs.sum() * y.shape[2] * y.shape[3]
        return x, logdet.expand(y.shape[0])


class InvertibleConv1x1(nn.Module):
    """1x1 convolution W = P L (U + diag(sign * exp(log_s))), with its determinant and inverse in float64.

    In eval mode the float64 inverse weight is cached, keyed on the parameters' versions and device, so that
    optimizer steps and `load_state_dict` (which change the parameters in place) invalidate it.
    """

    p: torch.Tensor
    sign_s: torch.Tensor
    lower_mask: torch.Tensor

    def __init__(self, channels: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        w = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))[0]
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels, dtype=torch.float64), -1))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())
        self._inverse_cache: tuple[tuple, torch.Tensor] | None = None
        self._weight_cache: tuple[tuple, torch.Tensor] | None = None

    def weight64(self) -> torch.Tensor:
        eye = torch.eye(self.p.shape[0], dtype=torch.float64, device=self.p.device)
        lower = self.lower.double() * self.lower_mask + eye
        upper = self.upper.double() * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s.double()))
        return self.p @ lower @ upper

    def _cache_key(self) -> tuple:
        """Changes whenever the parameters do (an optimizer step or a load bumps their versions)."""
        return (self.p.device, self.lower._version, self.upper._version, self.log_s._version)

    def _weight(self) -> torch.Tensor:
        """The weight, kept between calls outside training (gradients need it rebuilt from the parameters)."""
        if self.training or torch.is_grad_enabled():
            return self.weight64()
        key = self._cache_key()
        if self._weight_cache is None or self._weight_cache[0] != key:
            self._weight_cache = (key, self.weight64().detach())
        return self._weight_cache[1]

    def _inverse_weight(self) -> torch.Tensor:
        if self.training:
            return torch.linalg.inv(self.weight64())
        key = self._cache_key()
        if self._inverse_cache is None or self._inverse_cache[0] != key:
            self._inverse_cache = (key, torch.linalg.inv(self.weight64()).detach())
        return self._inverse_cache[1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self._weight().to(x.dtype)
        logdet = self.log_s.sum() * x.shape[2] * x.shape[3]
        return F.conv2d(x, w[:, :, None, None]), logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self._inverse_weight().to(y.dtype)
        logdet = -self.log_s.sum() * y.shape[2] * y.shape[3]
        return F.conv2d(y, w[:, :, None, None]), logdet.expand(y.shape[0])


class ChannelReverse(nn.Module):
    """RealNVP's fixed permutation: reverse the channel order (volume preserving)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y.flip(1), y.new_zeros(y.shape[0])


class Coupling(nn.Module):
    """Affine or additive coupling. The mask is either the channel halves (Glow) or a checkerboard (RealNVP).

    Affine scales are sigmoid(h + 2), so they lie in (0, 1) and start near 0.88: the forward map never
    explodes, and the additive variant has an inverse that is exactly as stable as its forward map.
    """

    def __init__(self, channels: int, width: int, affine: bool = True, mask: str = "channel", parity: int = 0):
        super().__init__()
        self.affine = affine
        self.mask = mask
        self.parity = parity
        if mask == "channel":
            n_in, n_out = channels // 2, channels - channels // 2
        else:
            n_in, n_out = channels, channels
        self.net = coupling_network(n_in, n_out * (2 if affine else 1), width)

    def _checkerboard(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        grid = (torch.arange(h, device=x.device)[:, None] + torch.arange(w, device=x.device)[None, :]) % 2
        return (grid == self.parity).to(x.dtype)[None, None]

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self.mask == "channel":
            a, b = x.chunk(2, 1) if self.parity == 0 else x.chunk(2, 1)[::-1]
            return a, b, None
        m = self._checkerboard(x)
        return x * m, x, m

    def _join(self, a: torch.Tensor, b: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        if m is None:
            return torch.cat([a, b], 1) if self.parity == 0 else torch.cat([b, a], 1)
        return a + b * (1 - m)

    def _shift_scale(self, a: torch.Tensor, m: torch.Tensor | None):
        h = self.net(a)
        if not self.affine:
            return h if m is None else h * (1 - m), None
        shift, raw = h[:, 0::2], h[:, 1::2]
        log_scale = F.logsigmoid(raw + 2.0)
        if m is not None:
            shift, log_scale = shift * (1 - m), log_scale * (1 - m)
        return shift, log_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, m = self._split(x)
        shift, log_scale = self._shift_scale(a, m)
        if log_scale is None:
            b = b + shift
            logdet = x.new_zeros(x.shape[0])
        else:
            b = (b + shift) * torch.exp(log_scale)
            logdet = log_scale.flatten(1).sum(1)
        return self._join(a, b, m), logdet

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, m = self._split(y)
        shift, log_scale = self._shift_scale(a, m)
        if log_scale is None:
            b = b - shift
            logdet = y.new_zeros(y.shape[0])
        else:
            b = b * torch.exp(-log_scale) - shift
            logdet = -log_scale.flatten(1).sum(1)
        return self._join(a, b, m), logdet


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """Space to depth: N x C x H x W -> N x 4C x H/2 x W/2."""
    n, c, h, w = x.shape
    x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    x = x.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // 4, h * 2, w * 2)


class FlowStep(nn.Module):
    """ActNorm -> channel mixing (1x1 convolution, or a fixed reversal) -> coupling."""

    def __init__(self, channels: int, width: int, affine: bool, mixing: str, mask: str, parity: int, seed: int):
        super().__init__()
        self.layers = nn.ModuleList(
            [
                ActNorm(channels),
                InvertibleConv1x1(channels, seed) if mixing == "conv1x1" else ChannelReverse(),
                Coupling(channels, width, affine, mask, parity),
            ]
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = y.new_zeros(y.shape[0])
        for layer in reversed(cast(list[InvertibleLayer], list(self.layers))):
            y, ld = layer.inverse(y)
            logdet = logdet + ld
        return y, logdet
