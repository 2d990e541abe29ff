"""Age-appropriate fine detail (model.fine_detail): the fitted curve, the gain and the change it makes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.fine_detail import DetailEnergy, central_energy, fit_detail_energy, highpass


def textured_faces(ages: np.ndarray, side: int = 64, seed: int = 0) -> np.ndarray:
    """Grey faces whose fine texture's amplitude grows with age: 2 + age / 10 grey levels."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((len(ages), side, side, 1)) * (2.0 + ages[:, None, None, None] / 10.0)
    return np.clip(np.rint(128 + noise), 0, 255).astype(np.uint8).repeat(3, 3)


def test_the_fit_finds_the_energy_rising_with_age_and_the_gain_follows_the_amplitude():
    ages = np.repeat(np.arange(5, 90, 5, dtype=np.float64), 12)
    curve, energy = fit_detail_energy(textured_faces(ages), ages, "tight")
    assert energy.shape == (len(ages),)
    assert np.all(np.diff(curve.log_energy_at([10, 30, 50, 70])) > 0)
    # the texture of a 20-year-old is 4 grey levels, of a 70-year-old 9: the amplitude ratio is 2.25, which
    # the gain clips to the largest it allows; 40 -> 60 is 8 / 6
    assert curve.gain(20, 70) == pytest.approx(curve.max_gain)
    assert curve.gain(40, 60) == pytest.approx(8 / 6, rel=0.08)
    assert curve.gain(60, 40) == pytest.approx(1 / curve.gain(40, 60), rel=1e-6)


def test_no_change_of_age_is_exactly_no_change():
    curve = DetailEnergy((0.0, 90.0), (-8.0, -6.0))
    crops = torch.rand(3, 3, 32, 32)
    change = curve.change(crops, [30.0, 41.5, 70.0], [30.0, 41.5, 70.0])
    assert curve.gain(41.5, 41.5) == 1.0
    assert torch.equal(change, torch.zeros_like(crops))


def test_the_change_scales_the_crops_own_fine_detail_by_the_gain():
    curve = DetailEnergy((0.0, 90.0), (-8.0, -6.0))
    crops = torch.rand(2, 3, 32, 32)
    change = curve.change(crops, [20.0, 60.0], [50.0, 60.0])
    gain = curve.gain(20.0, 50.0)
    assert gain == pytest.approx(np.exp(0.5 * 2.0 * 30 / 90))
    torch.testing.assert_close(change[0], (gain - 1) * highpass(crops[:1])[0])
    assert torch.equal(change[1], torch.zeros_like(crops[1]))


def test_the_gain_stays_within_its_limit_and_the_curve_round_trips():
    curve = DetailEnergy((0.0, 90.0), (-12.0, -4.0), max_gain=1.5)
    assert curve.gain(1, 90) == pytest.approx(1.5)
    assert curve.gain(90, 1) == pytest.approx(1 / 1.5)
    assert DetailEnergy.from_dict(curve.to_dict()) == curve


def test_central_energy_reads_the_texture_inside_the_face_only():
    faces = torch.full((2, 3, 64, 64), 0.5)
    faces[1, :, ::2] += 0.1  # stripes over the whole crop
    corner = torch.full((1, 3, 64, 64), 0.5)
    corner[0, :, :8, :8] = torch.rand(3, 8, 8)  # texture in a corner, outside the central face
    energy = central_energy(torch.cat([faces, corner]), "tight")
    assert energy[0] < 1e-12 and energy[1] > 1e-3 and energy[2] < 1e-12


def test_the_curve_rises_with_age_even_where_the_youngest_photos_are_grainier():
    ages = np.repeat(np.arange(0, 90, 5, dtype=np.float64), 12)
    amplitude_ages = np.where(ages < 20, 60 - 2 * ages, ages)  # U-shaped: the youngest as grainy as 60
    faces = textured_faces(amplitude_ages)
    curve, _ = fit_detail_energy(faces, ages, "tight")
    assert np.all(np.diff(curve.log_energy) >= -1e-12)
    assert curve.gain(25, 5) == pytest.approx(1.0, abs=0.03)  # no sharpening for a younger edit
    assert curve.gain(60, 30) < 0.85
