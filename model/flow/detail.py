"""A conditional flow of an image's Haar detail given its low band (Wavelet Flow, SRFlow).

`haar_split` turns an image into its low band (the 2x2 average) and its three detail bands; `DetailFlow`
models p(detail | context, condition), where the context is an image (the low band) and the condition an
opaque vector, both read by a small encoder whose features feed every coupling and the prior. The encoder
uses only valid convolutions on a context padded by `DetailConfig.margin`, so the features of a patch are
exactly the matching crop of the features of the whole image: the flow trains on patches and runs on faces.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.flow.layers import ActNorm, InvertibleConv1x1, squeeze, unsqueeze
from model.flow.nets import coupling_network
from model.flow.priors import ConditionalGaussianPrior


def haar_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """N x C x 2H x 2W -> low band N x C x H x W (each 2x2 block's average) and detail N x 3C x H x W
    (horizontal, vertical, diagonal bands, each C channels). Sums of four and divisions by four only, so
    images on a grid of 2**-k (8-bit pixels / 256, for example) go there and back bit-exactly."""
    a, b = x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2]
    c, d = x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]
    low = (a + b + c + d) / 4
    horizontal = (a - b + c - d) / 4
    vertical = (a + b - c - d) / 4
    diagonal = (a - b - c + d) / 4
    return low, torch.cat([horizontal, vertical, diagonal], 1)


def haar_merge(low: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
    """The inverse of `haar_split`."""
    horizontal, vertical, diagonal = detail.chunk(3, 1)
    n, c, h, w = low.shape
    x = low.new_empty(n, c, 2 * h, 2 * w)
    x[:, :, 0::2, 0::2] = low + horizontal + vertical + diagonal
    x[:, :, 0::2, 1::2] = low - horizontal + vertical - diagonal
    x[:, :, 1::2, 0::2] = low + horizontal - vertical - diagonal
    x[:, :, 1::2, 1::2] = low - horizontal - vertical + diagonal
    return x


class HaarSplit(nn.Module):
    """`haar_split` as an invertible layer: N x C x 2H x 2W -> N x 4C x H x W (low band first). Every
    coefficient is half an orthonormal Haar coefficient, so log|det J| = -log 2 per dimension."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, detail = haar_split(x)
        return torch.cat([low, detail], 1), x.new_full((x.shape[0],), -math.log(2.0) * x[0].numel())

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = y.shape[1] // 4
        return haar_merge(y[:, :c], y[:, c:]), y.new_full((y.shape[0],), math.log(2.0) * y[0].numel())


class ConditionalCoupling(nn.Module):
    """Affine coupling on the channel halves whose network reads the kept half and the condition features
    (same spatial size). Scales are sigmoid(h + 2) as in `Coupling`, or with `scale_bound` > 0 the
    log-scale is bound * tanh(h / bound): within exp(+-bound) both ways, so the inverse of a latent from
    an unfamiliar context cannot blow up (sigmoid scales near zero divide by it). Any channel count."""

    def __init__(
        self, channels: int, condition_channels: int, width: int, parity: int = 0, scale_bound: float = 0.0
    ) -> None:
        super().__init__()
        self.split = channels // 2
        self.parity = parity
        self.scale_bound = float(scale_bound)
        kept = self.split if parity == 0 else channels - self.split
        self.net = coupling_network(kept + condition_channels, 2 * (channels - kept), width)

    def _halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = x[:, : self.split], x[:, self.split :]
        return (first, second) if self.parity == 0 else (second, first)

    def _join(self, kept: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        return torch.cat([kept, changed] if self.parity == 0 else [changed, kept], 1)

    def _shift_log_scale(self, kept: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(torch.cat([kept, condition], 1))
        if self.scale_bound > 0:
            return h[:, 0::2], self.scale_bound * torch.tanh(h[:, 1::2] / self.scale_bound)
        return h[:, 0::2], F.logsigmoid(h[:, 1::2] + 2.0)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, changed = self._halves(x)
        shift, log_scale = self._shift_log_scale(kept, condition)
        return self._join(kept, (changed + shift) * torch.exp(log_scale)), log_scale.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, changed = self._halves(y)
        shift, log_scale = self._shift_log_scale(kept, condition)
        return self._join(kept, changed * torch.exp(-log_scale) - shift), -log_scale.flatten(1).sum(1)


class ConditionalFlowStep(nn.Module):
    """ActNorm -> 1x1 convolution -> conditional affine coupling."""

    def __init__(
        self, channels: int, condition_channels: int, width: int, parity: int, seed: int, scale_bound: float = 0.0
    ) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.mixing = InvertibleConv1x1(channels, seed)
        self.coupling = ConditionalCoupling(channels, condition_channels, width, parity, scale_bound)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, ld_norm = self.actnorm(x)
        x, ld_mix = self.mixing(x)
        x, ld_coupling = self.coupling(x, condition)
        return x, ld_norm + ld_mix + ld_coupling

    def inverse(self, y: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, ld_coupling = self.coupling.inverse(y, condition)
        y, ld_mix = self.mixing.inverse(y)
        y, ld_norm = self.actnorm.inverse(y)
        return y, ld_norm + ld_mix + ld_coupling


def context_margins(levels: int) -> tuple[int, list[int]]:
    """The context padding the encoder needs, and the margin its trunk output keeps at each level.
    Level 0: three valid 3x3 convolutions; each coarser level: crop to an even margin, 2x2 average, two
    valid 3x3 convolutions."""
    margin = 4
    while True:
        margins = [margin - 3]
        for _ in range(levels - 1):
            margins.append(margins[-1] // 2 - 2)
        if min(margins) >= 0:
            return margin, margins
        margin += 2


class ContextEncoder(nn.Module):
    """Features at every level's resolution from a context image (padded by the margin) and a condition
    vector (broadcast over the image), with valid convolutions only."""

    def __init__(self, context_channels: int, condition_dim: int, width: int, features: int, levels: int) -> None:
        super().__init__()
        self.margin, self.margins = context_margins(levels)
        self.trunk = nn.Sequential(
            nn.Conv2d(context_channels + condition_dim, width, 3),
            nn.ReLU(),
            nn.Conv2d(width, width, 3),
            nn.ReLU(),
            nn.Conv2d(width, features, 3),
            nn.ReLU(),
        )
        self.coarser = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(features, width, 3),
                    nn.ReLU(),
                    nn.Conv2d(width, features, 3),
                    nn.ReLU(),
                )
                for _ in range(levels - 1)
            ]
        )

    @staticmethod
    def _crop(h: torch.Tensor, margin: int) -> torch.Tensor:
        return h[:, :, margin : h.shape[2] - margin, margin : h.shape[3] - margin] if margin else h

    def forward(self, context: torch.Tensor, condition: torch.Tensor | None) -> list[torch.Tensor]:
        if condition is not None and condition.shape[1]:
            grid = condition[:, :, None, None].expand(-1, -1, *context.shape[2:])
            context = torch.cat([context, grid.to(context.dtype)], 1)
        h = self.trunk(context)
        out = [self._crop(h, self.margins[0])]
        for net, previous, margin in zip(self.coarser, self.margins, self.margins[1:]):
            h = net(F.avg_pool2d(self._crop(h, previous % 2), 2))
            out.append(self._crop(h, margin))
        return out


CONDITION_PLACES = ("encoder", "prior")


@dataclass
class DetailConfig:
    channels: int = 9  # detail channels (three Haar bands of an RGB image)
    context_channels: int = 3
    condition_dim: int = 0
    steps: tuple[int, ...] = (4, 6)  # flow steps per level, finest first; a squeeze before each coarser level
    width: int = 64  # hidden channels of the coupling networks
    encoder_width: int = 48
    features: int = 32  # encoder feature channels fed to each coupling and the prior
    # where the condition enters: "encoder" (with the context, so every coupling and the prior see it) or
    # "prior" (only the prior's mean and log-std: the likelihood under many conditions costs one pass)
    condition_in: str = "encoder"
    scale_bound: float = 0.0  # the couplings' log-scale bound (0: sigmoid scales), see ConditionalCoupling

    def __post_init__(self) -> None:
        self.steps = tuple(int(k) for k in self.steps)
        if self.condition_in not in CONDITION_PLACES:
            raise ValueError(f"condition_in must be one of {CONDITION_PLACES}, not {self.condition_in!r}")

    @property
    def levels(self) -> int:
        return len(self.steps)

    @property
    def margin(self) -> int:
        return context_margins(self.levels)[0]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


class DetailFlow(nn.Module):
    """p(x | context, condition) for x of N x C x H x W, H and W divisible by 2**(levels-1), and a context
    of N x context_channels x (H + 2 margin) x (W + 2 margin). Every latent is kept (no split), so
    `untransform(transform(x))` is exact and the prior is one conditional Gaussian on the last level."""

    def __init__(self, config: DetailConfig) -> None:
        super().__init__()
        self.config = config
        in_prior = config.condition_in == "prior"
        self.encoder = ContextEncoder(
            config.context_channels,
            0 if in_prior else config.condition_dim,
            config.encoder_width,
            config.features,
            config.levels,
        )
        self.levels = nn.ModuleList()
        channels = config.channels
        for level, n_steps in enumerate(config.steps):
            if level:
                channels *= 4
            self.levels.append(
                nn.ModuleList(
                    [
                        ConditionalFlowStep(
                            channels, config.features, config.width, k % 2, 100 * level + k, config.scale_bound
                        )
                        for k in range(n_steps)
                    ]
                )
            )
        self.latent_channels = channels
        # mean and log-std from the last level's features through a zero-initialized 1x1 map: local, so a
        # patch's prior is the crop of the whole image's
        self.prior = nn.Conv2d(config.features, 2 * channels, 1)
        nn.init.zeros_(self.prior.weight)
        nn.init.zeros_(cast(torch.Tensor, self.prior.bias))
        self.prior_base = nn.Parameter(torch.zeros(1, 2 * channels, 1, 1))
        # with the condition in the prior: a small per-pixel network of the features and the condition adds
        # to (mean, log-std); zero at the start, so the flow starts as without it
        self.condition_prior: nn.Sequential | None = None
        if in_prior and config.condition_dim:
            last = nn.Conv2d(config.features, 2 * channels, 1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(cast(torch.Tensor, last.bias))
            self.condition_prior = nn.Sequential(
                nn.Conv2d(config.features + config.condition_dim, config.features, 1), nn.ReLU(), last
            )

    def features(self, context: torch.Tensor, condition: torch.Tensor | None) -> list[torch.Tensor]:
        """The encoder's features at every level (the condition read with the context where it enters there)."""
        return self.encoder(context, None if self.condition_prior is not None else condition)

    def steps_of(self, level: int) -> list[ConditionalFlowStep]:
        return cast(list[ConditionalFlowStep], list(cast(nn.ModuleList, self.levels[level])))

    def transform(self, x: torch.Tensor, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> the latent (last level's shape) and log|det J| per sample."""
        logdet = x.new_zeros(x.shape[0])
        for level in range(len(self.levels)):
            if level:
                x = squeeze(x)
            for step in self.steps_of(level):
                x, ld = step(x, features[level])
                logdet = logdet + ld
        return x, logdet

    def untransform(self, z: torch.Tensor, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = z.new_zeros(z.shape[0])
        for level in reversed(range(len(self.levels))):
            for step in reversed(self.steps_of(level)):
                z, ld = step.inverse(z, features[level])
                logdet = logdet + ld
            if level:
                z = unsqueeze(z)
        return z, logdet

    def prior_params(
        self, features: list[torch.Tensor], condition: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        last = features[-1]
        params = self.prior_base + self.prior(last)
        if self.condition_prior is not None and condition is not None:
            grid = condition[:, :, None, None].to(last.dtype).expand(-1, -1, *last.shape[2:])
            params = params + self.condition_prior(torch.cat([last, grid], 1))
        return params[:, 0::2], params[:, 1::2]

    def log_prob(self, x: torch.Tensor, context: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        """Log-density in nats of each x (continuous) under its context and condition."""
        features = self.features(context, condition)
        z, logdet = self.transform(x, features)
        mean, logs = self.prior_params(features, condition)
        return ConditionalGaussianPrior.log_density(z, mean, logs) + logdet

    def log_prob_under(self, x: torch.Tensor, context: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """N x K log-densities of each x under its context and each of K conditions (K x N x D: one per
        sample for each k), from one pass of the flow: only for a flow whose condition enters the prior."""
        if self.condition_prior is None:
            raise ValueError("the condition enters the encoder: each condition needs its own pass")
        features = self.features(context, None)
        z, logdet = self.transform(x, features)
        out = []
        for condition in conditions:
            mean, logs = self.prior_params(features, condition)
            out.append(ConditionalGaussianPrior.log_density(z, mean, logs) + logdet)
        return torch.stack(out, 1)

    def standardize(self, x: torch.Tensor, context: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        """x -> its standardized latent (z - mean) / scale under the context and condition."""
        features = self.features(context, condition)
        z, _ = self.transform(x, features)
        mean, logs = self.prior_params(features, condition)
        return (z - mean) * torch.exp(-logs)

    def generate(
        self, eps: torch.Tensor, context: torch.Tensor, condition: torch.Tensor | None, temperature: float = 1.0
    ) -> torch.Tensor:
        """Standardized latent -> x under the context and condition: the inverse of `standardize`."""
        features = self.features(context, condition)
        mean, logs = self.prior_params(features, condition)
        return self.untransform(mean + torch.exp(logs) * eps * temperature, features)[0]
