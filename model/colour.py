"""Colour and tone of an edit: CIELab, the controls that keep an age edit from changing skin tone, adding a
tint or leaving the pixel range, and the measures of its blotches and patches."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from model.align import face_scale
from model.masks import central_face, face_skin_mask, skin_region

# a blotched edit (the flow issue's "patchy", with colour as well as lightness): its CIELab change, blurred by
# BLOTCH_BLUR of the crop's side, departs from its own median over the central face by more than BLOTCH_DELTA
# (delta E) on more than a share of it (the guard's `max_blotch_share`; BLOTCH_SHARE is the shipped one, which
# model.guard writes). Aging moves the median; folds are thin; blotches cover area.
BLOTCH_DELTA, BLOTCH_SHARE, BLOTCH_BLUR = 12.0, 0.10, 1 / 64

# sRGB (linear) to CIE XYZ, each row divided by the D65 white's
_XYZ_OF_RGB = (
    torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]], dtype=torch.float64)
    / torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)[:, None]
)


def cielab(images: torch.Tensor) -> torch.Tensor:
    """CIELab (D65) of N x 3 x S x S sRGB images in [0, 1]: N x 3 x S x S (L*, a*, b*)."""
    rgb = images.clamp(0, 1)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,njhw->nihw", _XYZ_OF_RGB.to(images), linear)
    f = torch.where(xyz > (6 / 29) ** 3, xyz.clamp(min=1e-12) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def blotch_shares(before: torch.Tensor, after: torch.Tensor, framing: str = "loose") -> np.ndarray:
    """Per face, the share of the central face where the edit's CIELab change, blurred, departs from its
    median there by more than BLOTCH_DELTA: above the guard's `max_blotch_share`, the edit is blotched (dark,
    pale or coloured patches)."""
    side = before.shape[-1]
    change = blur(cielab(after) - cielab(before), BLOTCH_BLUR * side)
    inside = change[:, :, central_face(side, framing).to(change.device)]  # N x 3 x P
    departs = channel_length(inside - inside.median(2, keepdim=True).values)[:, 0] > BLOTCH_DELTA
    return departs.float().mean(1).cpu().numpy()


LUMA = (0.299, 0.587, 0.114)


def channel_length(images: torch.Tensor) -> torch.Tensor:
    """N x 1 x ...: the length of each pixel's vector over the channels (dimension 1). The same as
    `images.norm(dim=1, keepdim=True)` to float rounding; torch's vector norm over that dimension runs 30 to 60
    times slower on this project's CPUs (a 256 px crop: 12 ms against 0.2)."""
    return images.square().sum(1, keepdim=True).sqrt()


def no_added_tint(
    before: torch.Tensor, after: torch.Tensor, max_gain: float = 1.1, max_turn: float = 0.0
) -> torch.Tensor:
    """`after` with its colour, per pixel, made a scaling (0 to `max_gain`) of the colour `before` had, plus at
    most `max_turn` times that colour's strength across it: the brightness change stays, hair can grey, but
    the edit adds no tint of its own (a flow moved far from its data tends to cast faces blue or purple). A
    grey pixel stays grey whatever the limits, and with `max_turn` 0 every pixel keeps its hue."""
    weights = torch.tensor(LUMA, device=before.device, dtype=before.dtype).view(1, 3, 1, 1)
    luma_after = (after * weights).sum(1, keepdim=True)
    chroma_before = before - (before * weights).sum(1, keepdim=True)
    chroma_after = after - luma_after
    strength = channel_length(chroma_before)
    unit = chroma_before / (strength + 1e-8)
    along = (chroma_after * unit).sum(1, keepdim=True)
    across = chroma_after - along * unit
    across_length = channel_length(across)
    across = across * (max_turn * strength / (across_length + 1e-12)).clamp(max=1.0)
    along = torch.minimum(along.clamp(min=0), max_gain * strength)
    return luma_after + along * unit + across


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of N x C x S x S images over 3 sigma each side, edges reflected: torchvision's
    `gaussian_blur` kernel, applied as two 1-D passes (its single 2-D convolution costs a 12 px blur's
    73-tap kernel 36 times as much)."""
    size = 2 * max(1, int(3 * sigma)) + 1
    half = (size - 1) * 0.5
    taps = torch.linspace(-half, half, size, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (taps / sigma).square())
    kernel = kernel / kernel.sum()
    channels, pad = images.shape[1], size // 2
    out = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)


def keep_skin_tone(before: torch.Tensor, after: torch.Tensor, framing: str = "loose") -> torch.Tensor:
    """`after` without the edit's broad colour and brightness change over the face's skin (what stays there:
    wrinkles, shadows, the shape of the face), and with the cheeks' average colour exactly as before; the
    hair may still grey and the background is not touched. In this data older faces are also darker and
    redder, and an age edit must not change skin tone."""
    side = before.shape[-1]
    mask = face_skin_mask(side, framing).to(before.device)
    after = after - blur(after - before, side / 24 * face_scale(framing)) * mask
    return after - cheek_shift(before, after, framing) * mask


def cheek_shift(before: torch.Tensor, after: torch.Tensor, framing: str = "loose") -> torch.Tensor:
    """How far the cheeks' average colour moved from `before` to `after`: N x 3 x 1 x 1."""
    region = skin_region(before.shape[-1], framing).to(before.device)
    return ((after - before) * region).sum((2, 3), keepdim=True) / region.sum()


def keep_cheek_colour(
    before: torch.Tensor, after: torch.Tensor, rounds: int = 4, framing: str = "loose"
) -> torch.Tensor:
    """`after` (in [0, 1]) with the cheeks' average colour set back to `before`'s over the face's skin, in
    `rounds` that each clip to [0, 1] again: where an edit reaches the end of the pixel range (light skin in
    bright light), clipping alone would shift the cheeks' colour."""
    mask = face_skin_mask(before.shape[-1], framing).to(before.device)
    for _ in range(rounds):
        after = (after - cheek_shift(before, after, framing) * mask).clamp(0, 1)
    return after


def limit_patches(
    before: torch.Tensor,
    after: torch.Tensor,
    max_departure: float,
    sigma_64: float,
    framing: str = "loose",
    max_line_departure: float | None = None,
) -> torch.Tensor:
    """`after` with the edit's patches flattened over the face's skin: the change, blurred by `sigma_64`
    pixels of a 64 px crop, departs from its median over the skin by at most `max_departure` (the length of
    the RGB departure, in [0, 1] units). Blotches cover area, so they are what the blurred change holds;
    thin folds and lines pass as they are, and so does whatever changes off the skin (hair that greys).

    With `max_line_departure`, the change itself (not blurred) is then held within that departure from its
    median over the skin, pixel by pixel: a fold or line may deepen the face's shading by that much and no
    more, so a far edit's gashes of near-black or near-white across a face come back as shading of that
    depth; the change's finer texture, within the limit, passes as it is. A zero change stays exactly zero."""
    side = before.shape[-1]
    skin = face_skin_mask(side, framing).to(before.device)
    after = after - clipped_departure(blur(after - before, sigma_64 * side / 64), max_departure, skin) * skin
    if max_line_departure is not None:
        after = after - clipped_departure(after - before, max_line_departure, skin) * skin
    return after


def keep_structure(
    before: torch.Tensor,
    after: torch.Tensor,
    sigma_64: float,
    area_sigma_64: float,
    max_softening: float = 1.0,
    grow_64: int = 0,
    feature_depth: float = 0.0,
    max_growth: float = 1.0,
) -> torch.Tensor:
    """`after` with its change made of what an edit toward a younger age may do to a face without drawing
    another face's features over it: the change's broad part (blurred by `sigma_64` pixels of a 64 px crop:
    tone, shading, a rounder lighting of the face) as it is, and of its finer part a softening of the face's
    own detail: at each pixel the share (0 to `max_softening`, fitted over `area_sigma_64` pixels) of
    `before`'s detail band (`before` less its blur) that the change takes away. So a younger face's folds
    fade and its skin smooths, but no eye, lip or edge is drawn where the face has none, which is where a
    flow moved far toward childhood puts a generic child's.

    With `grow_64` > 0, the face's own features may also grow: what is left of the finer change may darken a
    pixel within `grow_64` pixels of a dark feature of the face (its detail's lightness at least
    `feature_depth` below its surroundings), by at most `max_growth` times the part of that feature's depth
    beyond `feature_depth`, and lighten one near a light feature likewise. Eyes and brows can widen, a mouth
    can change its line, but the skin between them gets nothing new. A zero change stays exactly zero."""
    scale = before.shape[-1] / 64
    change = after - before
    broad = blur(change, sigma_64 * scale)
    detail = before - blur(before, sigma_64 * scale)
    along = blur((change - broad).mul(detail).sum(1, keepdim=True), area_sigma_64 * scale)
    energy = blur(detail.square().sum(1, keepdim=True), area_sigma_64 * scale)
    softening = (-along / (energy + 1e-5)).clamp(0, max_softening)
    kept = before + broad - softening * detail
    if grow_64 <= 0:
        return kept.clamp(0, 1)
    residual = change - broad + softening * detail
    weights = torch.tensor(LUMA, device=before.device, dtype=before.dtype).view(1, 3, 1, 1)
    feature, drawn = (detail * weights).sum(1, keepdim=True), (residual * weights).sum(1, keepdim=True)
    reach = max(1, round(grow_64 * scale))
    near = partial(F.max_pool2d, kernel_size=2 * reach + 1, stride=1, padding=reach)
    dark = max_growth * (near(-feature) - feature_depth).clamp(min=0)
    light = max_growth * (near(feature) - feature_depth).clamp(min=0)
    allowed = torch.minimum(torch.maximum(drawn, -dark), light)
    share = torch.where(drawn.abs() > 1e-6, allowed / torch.where(drawn.abs() > 1e-6, drawn, 1.0), 0.0)
    return (kept + share * residual).clamp(0, 1)


def clipped_departure(change: torch.Tensor, limit: float, skin: torch.Tensor) -> torch.Tensor:
    """The part of `change` (N x 3 x S x S) beyond `limit` (RGB length) from its median over the skin."""
    inside = change[:, :, skin > 0.5]  # N x 3 x P
    departure = change - inside.median(2).values[:, :, None, None]
    length = channel_length(departure)
    return departure * (1 - limit / length.clamp(min=1e-12)).clamp(min=0)


def within_gamut(before: torch.Tensor, after: torch.Tensor, max_outside: float = 0.1) -> torch.Tensor:
    """`after` with each face's change scaled down, in steps, until at most `max_outside` of its pixels
    leave [0, 1], so that no edit burns out into flat black or white."""
    change = after - before
    factors = torch.linspace(1.0, 0.1, 10, device=before.device)
    trial = before[None] + factors[:, None, None, None, None] * change[None]  # F x N x 3 x S x S
    outside = ((trial < 0) | (trial > 1)).float().flatten(2).mean(2)  # F x N
    first_fit = (outside <= max_outside).float().argmax(0)  # F - 1 (0.1) when none fits
    first_fit[~(outside <= max_outside).any(0)] = len(factors) - 1
    return before + factors[first_fit][:, None, None, None] * change
