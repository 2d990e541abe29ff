"""The multi-scale flow (Glow, or RealNVP as a configuration).

Images are floats in [0, 1], N x 3 x H x W. `encode` returns the raw latents of every level, finest
split first and the top latent last; `decode` inverts them exactly. The edit space is the *standardized*
latents (`standardize`): each latent minus its prior's mean, divided by its prior's scale, where the prior
depends on the coarser latents and on the condition, an opaque vector of `config.condition_dim` numbers.
`generate` maps standardized latents under any condition back to an image. What a conditional flow stands
for without a condition comes from its config (`marginal_conditions`, `sample_conditions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from model.config import FlowConfig
from model.flow.layers import FlowStep, squeeze, unsqueeze
from model.flow.priors import ConditionalGaussianPrior


@dataclass
class Inverted:
    """What the top-down inverse made: the centred image, the latents it came from (finest split first),
    their contexts, and the forward map's log|det J| at the image (per sample)."""

    x: torch.Tensor
    latents: list[torch.Tensor]
    contexts: list[torch.Tensor | None]
    logdet: torch.Tensor


class Glow(nn.Module):
    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        self._marginal_cache: tuple[tuple, list[tuple]] | None = None
        self.levels = nn.ModuleList()
        self.priors = nn.ModuleList()
        channels, side = config.channels, config.resolution
        for level in range(config.levels):
            channels, side = channels * 4, side // 2
            steps = nn.ModuleList()
            n_steps = config.steps_at(level)
            for k in range(n_steps):
                if config.mask == "realnvp":
                    mask = "checkerboard" if k < n_steps // 2 else "channel"
                else:
                    mask = config.mask
                steps.append(
                    FlowStep(
                        channels,
                        config.width_at(level),
                        config.coupling == "affine",
                        config.mixing,
                        mask,
                        parity=k % 2,
                        seed=1000 * level + k,
                    )
                )
            self.levels.append(steps)
            if level < config.levels - 1:
                self.priors.append(
                    ConditionalGaussianPrior((channels // 2, side, side), channels // 2, config.condition_dim)
                )
                channels //= 2
        self.priors.append(ConditionalGaussianPrior((channels, side, side), 0, config.condition_dim))

    def prior_at(self, index: int) -> ConditionalGaussianPrior:
        """The prior of latent `index` (finest split first, top last)."""
        return cast(ConditionalGaussianPrior, self.priors[index])

    def all_priors(self) -> list[ConditionalGaussianPrior]:
        return [self.prior_at(i) for i in range(len(self.priors))]

    def steps_of(self, level: int) -> list[FlowStep]:
        return cast(list[FlowStep], list(cast(nn.ModuleList, self.levels[level])))

    # ---- the bijection ------------------------------------------------------------------------------
    def _run_step(self, step: FlowStep, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(step, h, use_reentrant=False)
        return step(h)

    def flow_forward(self, x: torch.Tensor):
        """x (centred, in [-0.5, 0.5]) -> latents, the contexts of their priors, and log|det J| per sample."""
        latents: list[torch.Tensor] = []
        contexts: list[torch.Tensor | None] = []
        logdet = x.new_zeros(x.shape[0])
        h = x
        for level in range(len(self.levels)):
            h = squeeze(h)
            for step in self.steps_of(level):
                h, ld = self._run_step(step, h)
                logdet = logdet + ld
            if level < len(self.levels) - 1:
                h, z = h.chunk(2, 1)
                latents.append(z)
                contexts.append(h)
        latents.append(h)
        contexts.append(None)
        return latents, contexts, logdet

    def invert(self, latents: list[torch.Tensor] | None, draw=None) -> Inverted:
        """Top-down inverse. Each latent is taken from `latents`, or, where that is None, from
        `draw(index, context)`, which may use the context made by the coarser levels. Returns the centred
        image with the latents it came from, their contexts and the forward map's log|det J| at it."""
        top = len(self.levels) - 1
        h = latents[top] if latents is not None and latents[top] is not None else draw(top, None)
        used: list[torch.Tensor] = [h]
        contexts: list[torch.Tensor | None] = [None]
        logdet = h.new_zeros(h.shape[0])
        for level in reversed(range(len(self.levels))):
            if level < top:
                z = latents[level] if latents is not None and latents[level] is not None else draw(level, h)
                used.insert(0, z)
                contexts.insert(0, h)
                h = torch.cat([h, z], 1)
            for step in reversed(self.steps_of(level)):
                h, ld = step.inverse(h)
                logdet = logdet - ld  # each step's inverse gives its own log|det|, minus the forward one's
            h = unsqueeze(h)
        return Inverted(h, used, contexts, logdet)

    def encode(self, x01: torch.Tensor) -> list[torch.Tensor]:
        """Images in [0, 1] -> raw latents of every level (finest split first, top last)."""
        return self.flow_forward(x01 - 0.5)[0]

    def decode(self, latents: list[torch.Tensor], with_bits: bool = False):
        """Raw latents -> images. Exact inverse of `encode`; not clamped, so the round trip is exact. With
        `with_bits`, also each image's `exact_bits_per_dim`, from the same pass."""
        return self.images_from(self.invert(latents), with_bits)

    def images_from(self, inverted: Inverted, with_bits: bool):
        images = inverted.x + 0.5
        if not with_bits:
            return images
        return images, self.encoding_bits_per_dim(inverted.latents, inverted.contexts, inverted.logdet)

    # ---- likelihood ---------------------------------------------------------------------------------
    def prior_log_prob(self, latents, contexts, condition: torch.Tensor | None) -> torch.Tensor:
        total = latents[0].new_zeros(latents[0].shape[0])
        for prior, z, ctx in zip(self.all_priors(), latents, contexts):
            mean, logs = prior.params(ctx, condition, z.shape[0])
            total = total + prior.log_density(z, mean, logs)
        return total

    def quantize(self, x01: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] -> the flow's input: n_bits levels, centred, plus the bin offset in [0, 1)
        (`noise`, uniform for training; the bin centre when None)."""
        n_bins = 2**self.config.n_bits
        x = torch.floor(x01.clamp(0, 1) * 255.0 / 2 ** (8 - self.config.n_bits) + 1e-4).clamp(max=n_bins - 1)
        return (x + (0.5 if noise is None else noise)) / n_bins - 0.5

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None, with_top: bool = False):
        """The training objective: bits/dim of each flow input `x` (from `quantize`) under `condition`;
        with `with_top`, also the top latent (for supervised heads trained in the same pass)."""
        latents, contexts, logdet = self.flow_forward(x)
        log_p = self.prior_log_prob(latents, contexts, condition) + logdet + self._discretization()
        bits = -log_p / (self.config.dimensions * math.log(2.0))
        return (bits, latents[-1]) if with_top else bits

    def _discretization(self) -> float:
        return -self.config.dimensions * math.log(2**self.config.n_bits)

    def log_prob(
        self, x01: torch.Tensor, condition: torch.Tensor | None = None, dequantize: bool = False
    ) -> torch.Tensor:
        """Log-likelihood in nats of each image's discretized pixels (Glow's objective, per sample).

        Without a condition, a conditional model gives the likelihood averaged uniformly over its config's
        `marginal_conditions`; with `dequantize` the bin offset is uniform noise (for training), otherwise
        the bin centre.
        """
        x = self.quantize(x01, torch.rand_like(x01) if dequantize else None)
        latents, contexts, logdet = self.flow_forward(x)
        return self.encoding_log_prob(latents, contexts, logdet, condition)

    def encoding_log_prob(self, latents, contexts, logdet, condition: torch.Tensor | None = None) -> torch.Tensor:
        """`log_prob` of the flow input that `flow_forward` encoded as (latents, contexts, logdet)."""
        if condition is None and self.config.conditional:
            first, second, sides = self._marginal_sides(latents[0].device)
            prior = self.condition_grid_log_likelihoods(latents, contexts, first, second, sides)
            prior = torch.logsumexp(prior.flatten(1), 1) - math.log(prior[0].numel())
        else:
            prior = self.prior_log_prob(latents, contexts, condition)
        return prior + logdet + self._discretization()

    def encoding_bits_per_dim(self, latents, contexts, logdet) -> torch.Tensor:
        """Bits/dim, without a condition, of the flow input encoded as (latents, contexts, logdet)."""
        return -self.encoding_log_prob(latents, contexts, logdet) / (self.config.dimensions * math.log(2.0))

    def exact_bits_per_dim(self, x01: torch.Tensor) -> torch.Tensor:
        """Bits/dim of images in [0, 1] at their own values, without a condition: the density at the image
        itself rather than at the centre of its n_bits bin (`bits_per_dim`), about 0.3 lower on real faces.
        Unlike `bits_per_dim`, it can be read from an encoding (`encoding_bits_per_dim`) and from a decoding
        (`decode` or `generate` with `with_bits`), so an edit is rated in the pass that makes it."""
        latents, contexts, logdet = self.flow_forward(x01 - 0.5)
        return self.encoding_bits_per_dim(latents, contexts, logdet)

    def bits_per_dim(
        self, x01: torch.Tensor, condition: torch.Tensor | None = None, dequantize: bool = False
    ) -> torch.Tensor:
        return -self.log_prob(x01, condition, dequantize) / (self.config.dimensions * math.log(2.0))

    def condition_log_likelihoods(self, latents, contexts, conditions: torch.Tensor) -> torch.Tensor:
        """Prior log-density of N encoded images under each of M conditions: N x M (the flow is shared)."""
        return self.condition_grid_log_likelihoods(
            latents, contexts, conditions, conditions.new_zeros(1, conditions.shape[1])
        )[:, 0]

    def condition_grid_log_likelihoods(
        self, latents, contexts, first: torch.Tensor, second: torch.Tensor, sides: list[tuple] | None = None
    ) -> torch.Tensor:
        """Prior log-density of N encoded images under every condition `first[m] + second[j]`: N x J x M.

        The priors map conditions affinely, and a Gaussian's quadratic term with log-scale s_nj + t_m,
        sum_d exp(-2 s_njd) exp(-2 t_md) (r_njd - c_md)^2, expands into one matrix product of per-image
        features (J per image) and per-condition features (M), so the elementwise work grows with N * J + M
        rather than N * J * M: a long grid of the first part crossed with a short one of the second is cheap.
        `sides`: `condition_sides(first, second)`, when already made.
        """
        sides = sides if sides is not None else self.condition_sides(first, second)
        n, j = latents[0].shape[0], second.shape[0]
        total = latents[0].new_zeros(n, j, first.shape[0])
        for prior, z, ctx, (other, features, centre, logs_sum) in zip(self.all_priors(), latents, contexts, sides):
            own = prior.context_params(ctx, n)  # each input's part of (mean, log-std): N x 2C x H x W
            own = (own[:, None] + other[None]).flatten(0, 1)  # N*J x 2C x H x W
            own_mean, own_logs = own[:, 0::2].flatten(1), own[:, 1::2].flatten(1)
            r = z.flatten(1).repeat_interleave(j, 0) - own_mean - centre
            u = torch.exp(-2.0 * own_logs)
            square = torch.cat([u * r * r, -2.0 * u * r, u], 1) @ features
            level = -0.5 * r.shape[1] * math.log(2 * math.pi) - own_logs.sum(1, keepdim=True) - logs_sum - 0.5 * square
            total = total + level.view(n, j, -1)
        return total

    def condition_sides(self, first: torch.Tensor, second: torch.Tensor) -> list[tuple]:
        """Per prior, what `condition_grid_log_likelihoods` computes from the conditions alone: the second
        part's (mean, log-std) offsets (J x 2C x H x W), the first part's features (3D x M), the centre both
        sides are taken from (D) and the first part's log-std sums (1 x M)."""
        sides = []
        for prior in self.all_priors():
            channels, height, width = prior.shape
            if prior.condition is None:
                cond = first.new_zeros(first.shape[0], 2 * channels, height, width)
                other = first.new_zeros(second.shape[0], 2 * channels, height, width)
            else:  # the condition's bias is in `cond`, so `other` takes the weight alone
                cond = prior.condition_params(first)  # M x 2C x H x W, with the bias
                other = F.linear(second, prior.condition.weight).view(second.shape[0], 2 * channels, height, width)
            cond_mean, cond_logs = cond[:, 0::2].flatten(1), cond[:, 1::2].flatten(1)
            centre = cond_mean.mean(0)  # centring both sides keeps the expanded square's cancellation small
            c, v = cond_mean - centre, torch.exp(-2.0 * cond_logs)
            sides.append((other, torch.cat([v, c * v, c * c * v], 1).T, centre, cond_logs.sum(1)[None]))
        return sides

    def _marginal_sides(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[tuple]]:
        """The two-part grid the likelihood averages over without a condition (`config.marginal_conditions`)
        and its `condition_sides`, kept between calls outside training as long as the priors' parameters stay
        the same."""
        first, second = (part.to(device) for part in self.config.marginal_conditions())
        if self.training or torch.is_grad_enabled():
            return first, second, self.condition_sides(first, second)
        key = (device, *(p._version for prior in self.all_priors() for p in prior.parameters()))
        if self._marginal_cache is None or self._marginal_cache[0] != key:
            self._marginal_cache = (key, self.condition_sides(first, second))
        return first, second, self._marginal_cache[1]

    # ---- the edit space and sampling ---------------------------------------------------------------
    @staticmethod
    def _at_level(condition, index: int):
        """A condition is one tensor for every level, or a list with one per level (finest first)."""
        return condition[index] if isinstance(condition, (list, tuple)) else condition

    def standardize(self, x01: torch.Tensor, condition) -> list[torch.Tensor]:
        """Images -> standardized latents under `condition`: (z - mean) / scale at every level."""
        latents, contexts, _ = self.flow_forward(x01 - 0.5)
        return self.standardize_latents(latents, contexts, condition)

    def standardize_latents(self, latents, contexts, condition) -> list[torch.Tensor]:
        """`standardize` for latents and contexts that `flow_forward` already gave."""
        eps = []
        for index, (prior, z, ctx) in enumerate(zip(self.all_priors(), latents, contexts)):
            mean, logs = prior.params(ctx, self._at_level(condition, index), z.shape[0])
            eps.append((z - mean) * torch.exp(-logs))
        return eps

    def generate(
        self,
        eps: list[torch.Tensor],
        condition,
        temperature: float = 1.0,
        offsets: list[torch.Tensor] | None = None,
        with_bits: bool = False,
    ):
        """Standardized latents -> images under `condition`: z = mean + scale * temperature * eps, plus
        each level's raw `offsets` where given. Each level's mean and scale come from its prior under the
        context the coarser levels make, so a changed coarse latent carries the finer ones along. With
        `with_bits`, also each image's `exact_bits_per_dim`."""

        def draw(index: int, context: torch.Tensor | None) -> torch.Tensor:
            e = eps[index]
            mean, logs = self.prior_at(index).params(context, self._at_level(condition, index), e.shape[0])
            z = mean + torch.exp(logs) * e * temperature
            return z if offsets is None else z + offsets[index]

        return self.images_from(self.invert(None, draw), with_bits)

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        return [p.shape for p in self.all_priors()]

    def sample(
        self, n: int, temperature: float = 0.7, seed: int = 0, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        """n new images, the same for the same seed. Without a condition, a conditional model draws each
        image's condition from the same seed (`config.sample_conditions`)."""
        generator = torch.Generator().manual_seed(seed)
        device = next(self.parameters()).device
        eps = [torch.randn((n, *shape), generator=generator).to(device) for shape in self.latent_shapes()]
        if condition is None and self.config.conditional:
            condition = self.config.sample_conditions(n, generator).to(device)
        return self.generate(eps, condition, temperature)
