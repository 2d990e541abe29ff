"""The learned age transport (model/transport.py), the likelihood guard and the editor's exact zero edit.

The transport is trained for real on vectors whose age is known: one coordinate follows age, one is the
person's own trait; a small flow whose priors have small random weights stands in for the face flow.
"""

import numpy as np
import pytest
import torch

from model.age import load_trajectory, save_trajectory
from model.colour import blotch_shares
from model.condition import condition_vector
from model.config import FlowConfig
from model.edit_rules import InvalidEdit
from model.editor import GUARD_KEY, AgeEditor
from model.flow.glow import Glow
from model.masks import central_face
from model.transport import (
    ConditionalCoupling,
    LatentBasis,
    TransportTrajectory,
    coarse_latents,
    fit_basis,
    load_transport,
    save_transport,
    train_transport,
    transport_condition,
)

SIDE = 16
KNOTS = (0.0, 20.0, 45.0, 90.0)


def vectors(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """x[:, 0] rises with age, x[:, 1] is the person's own (age-free) trait, the rest is noise."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(1, 90, n)
    x = rng.normal(size=(n, 6)) * 0.5
    x[:, 0] += 2.0 * (ages - 45) / 45
    x[:, 1] = rng.normal(size=n)
    return torch.tensor(x, dtype=torch.float32), ages


@pytest.fixture(scope="module")
def trained():
    x, ages = vectors(3000, seed=0)
    transport, history = train_transport(
        x, ages, ["female"] * len(ages), [None] * len(ages), KNOTS, steps=800, batch=128, blocks=4, hidden=32, log=None
    )
    return transport


def test_a_coupling_inverts_and_its_logdet_is_the_log_jacobian():
    torch.manual_seed(0)
    coupling = ConditionalCoupling(5, 3, 16, seed=0)
    for parameter in coupling.parameters():
        parameter.data.normal_(0, 0.3)
    x, c = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    coupling = coupling.double()
    y, logdet = coupling(x, c)
    back, inverse_logdet = coupling.inverse(y, c)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(logdet + inverse_logdet, torch.zeros(4, dtype=torch.float64))
    for i in range(4):
        jacobian = torch.autograd.functional.jacobian(lambda v: coupling(v[None], c[i : i + 1])[0][0], x[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jacobian)[1])


def test_moving_to_the_same_age_gives_the_vectors_back(trained):
    x, ages = vectors(200, seed=1)
    c = transport_condition(KNOTS, ages)
    torch.testing.assert_close(trained.move(x, c, c), x, atol=1e-4, rtol=0)


def test_thirty_years_older_moves_the_age_coordinate_and_keeps_the_persons_trait(trained):
    x, ages = vectors(400, seed=2)
    young = ages <= 55
    x, ages = x[young], ages[young]
    with torch.no_grad():
        older = trained.move(x, transport_condition(KNOTS, ages), transport_condition(KNOTS, ages + 30))
    rise = (older[:, 0] - x[:, 0]).mean().item()
    assert 2.0 * 30 / 45 * 0.7 < rise < 2.0 * 30 / 45 * 1.3  # the age coordinate's slope times 30 years
    assert np.corrcoef(older[:, 1].numpy(), x[:, 1].numpy())[0, 1] > 0.95


def test_each_vector_keeps_its_rank_among_vectors_of_its_age(trained):
    x, _ = vectors(100, seed=3)
    ages = np.full(100, 30.0)
    with torch.no_grad():
        older = trained.move(x, transport_condition(KNOTS, ages), transport_condition(KNOTS, ages + 30))
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    assert np.corrcoef(ranks(older[:, 0].numpy()), ranks(x[:, 0].numpy()))[0, 1] > 0.95


def test_the_base_variable_carries_less_age_than_the_vectors(trained):
    x, ages = vectors(1000, seed=4)
    with torch.no_grad():
        u, _ = trained(x, transport_condition(KNOTS, ages))
    age_correlation = lambda v: abs(np.corrcoef(v.numpy(), ages)[0, 1])  # noqa: E731
    assert age_correlation(x[:, 0]) > 0.8
    assert max(age_correlation(u[:, i]) for i in range(u.shape[1])) < 0.2


# ---- the trajectory on a flow -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flow() -> Glow:
    torch.manual_seed(0)
    flow = Glow(FlowConfig(resolution=SIDE, levels=3, steps=2, width=16)).eval()
    with torch.no_grad():
        flow.log_prob(torch.rand(64, 3, SIDE, SIDE), condition_vector(flow.config, np.full(64, 30.0)))
        for prior in flow.priors:
            for parameter in prior.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
    return flow


def faces(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def trajectory(flow) -> TransportTrajectory:
    train = torch.rand(80, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(5))
    ages = np.random.default_rng(5).uniform(1, 90, 80)
    with torch.no_grad():
        coarse = coarse_latents(flow.encode(train))
    basis = fit_basis(coarse, ages, rank=12, age_directions=3)
    basis = LatentBasis(basis.mean, basis.std, basis.basis.half().float())  # as saved
    transport, _ = train_transport(
        basis.vectors(coarse),
        ages,
        [None] * 80,
        [None] * 80,
        flow.config.age_knots,
        steps=100,
        batch=32,
        blocks=2,
        hidden=16,
        log=None,
    )
    dim = sum(int(np.prod(shape)) for shape in flow.latent_shapes())
    generator = torch.Generator().manual_seed(6)
    tensors = {
        "latent_mean": torch.zeros(dim),
        "latent_std": torch.ones(dim),
        "age_weights": 0.01 * torch.randn(dim, generator=generator),
        "age_bias": torch.tensor([35.0]),
    }
    return TransportTrajectory(flow, tensors, transport, basis, [1.0, 1.0, 1.0], keep_skin_tone=False)


def test_a_transport_edit_to_the_current_age_gives_the_face_back(trajectory):
    x = faces()
    reading = trajectory.estimate(x)
    assert (trajectory.move(x, reading, reading.ages) - x).abs().max().item() < 1e-4


def test_a_transport_edit_changes_the_face(trajectory):
    x = faces()
    reading = trajectory.estimate(x)
    assert (trajectory.move(x, reading, np.minimum(reading.ages + 30, 90)) - x).abs().max().item() > 1e-3


def test_a_saved_transport_loads_as_the_same_trajectory(trajectory, flow, tmp_path):
    from safetensors.torch import save_file

    save_file(trajectory.tensors, str(tmp_path / "age_posthoc.safetensors"))
    save_transport(tmp_path, trajectory.transport, trajectory.basis, {"trained_on": "test vectors"})
    save_trajectory(tmp_path, trajectory)
    loaded = load_trajectory(tmp_path, flow)
    assert isinstance(loaded, TransportTrajectory)
    x = faces()
    reading = trajectory.estimate(x)
    target = np.minimum(reading.ages + 30, 90)
    assert torch.equal(loaded.move(x, reading, target), trajectory.move(x, reading, target))
    transport, _ = load_transport(tmp_path)
    assert transport.rank == 12


# ---- the editor ---------------------------------------------------------------------------------------
def test_a_zero_edit_returns_the_faces_bit_identical(trajectory):
    editor = AgeEditor(trajectory, {})
    x = faces()
    for edit in editor.edit(x, years=0):
        assert torch.equal(edit.after, edit.before)
        assert edit.strength == 1.0


def test_a_target_beyond_the_range_is_clamped_and_says_so(trajectory):
    editor = AgeEditor(trajectory, {})
    edits = editor.edit(faces(2), target_age=[95.0, 50.0])
    assert (edits[0].age_target, edits[0].clamped) == (90.0, True)
    assert (edits[1].age_target, edits[1].clamped) == (50.0, False)


def test_with_a_generous_guard_every_edit_gets_its_full_strength(trajectory):
    editor = AgeEditor(trajectory, {GUARD_KEY: {"max_bits_per_dim": 1e6}})
    assert all(edit.strength == 1.0 for edit in editor.edit(faces(), years=30))


def decoded_bits(trajectory, x, ages) -> np.ndarray:
    """Exact bits/dim of what the flow decodes for faces `x` moved to `ages`: what the guard rates."""
    return trajectory.move(x, trajectory.estimate(x), np.asarray(ages, np.float64), with_bits=True)[1].numpy()


def test_the_bits_an_edit_is_rated_by_are_those_of_the_face_it_decodes(trajectory):
    x = faces()
    reading = trajectory.estimate(x)
    decoded, bits = trajectory.move(x, reading, reading.ages + 30, with_bits=True)
    torch.testing.assert_close(bits, trajectory.flow.exact_bits_per_dim(decoded), atol=1e-4, rtol=0)
    assert torch.equal(decoded, trajectory.move(x, reading, reading.ages + 30))
    # and at the face's own age, those of the face itself
    torch.testing.assert_close(
        trajectory.move(x, reading, reading.ages, with_bits=True)[1],
        trajectory.flow.exact_bits_per_dim(x),
        atol=1e-4,
        rtol=0,
    )


def test_the_guard_leaves_no_edited_face_less_likely_than_real_faces_or_its_original(trajectory):
    editor = AgeEditor(trajectory, {})
    x = faces()
    ages = editor.trajectory.estimate(x).ages
    older = np.clip(ages + 30, *trajectory.age_range)
    limit = float(np.median(decoded_bits(trajectory, x, older)))  # half the faces must be scaled back, or kept
    guard = {"max_bits_per_dim": limit, "max_rise_bits_per_dim": 0.0}
    guarded = AgeEditor(trajectory, {GUARD_KEY: guard}).edit(x, years=30)
    allowed = np.maximum(limit, editor.exact_bits_per_dim(x))
    assert (decoded_bits(trajectory, x, [e.age_after for e in guarded]) <= allowed + 1e-4).all()
    assert any(e.strength < 1.0 for e in guarded)
    for edit in guarded:
        assert 0.0 <= edit.strength <= 1.0
        assert edit.age_after == pytest.approx(edit.age_before + edit.strength * (edit.age_target - edit.age_before))
        if edit.strength == 0.0:
            assert torch.equal(edit.after, edit.before)


def guarded_editor(trajectory, x):
    """An editor whose guard limit is the median exact bits/dim of the unguarded +30 edits of `x`."""
    older = np.clip(trajectory.estimate(x).ages + 30, *trajectory.age_range)
    limit = float(np.median(decoded_bits(trajectory, x, older)))
    return AgeEditor(trajectory, {GUARD_KEY: {"max_bits_per_dim": limit, "max_rise_bits_per_dim": 0.0}})


def test_the_guard_given_the_originals_bits_edits_as_it_does_measuring_them(trajectory):
    x = faces()
    editor = guarded_editor(trajectory, x)
    measured = editor.edit(x, years=30)
    given = editor.edit(x, years=30, original_bits=editor.exact_bits_per_dim(x))
    assert [e.strength for e in given] == [e.strength for e in measured]
    for a, b in zip(given, measured):
        assert torch.equal(a.after, b.after)


def test_the_guard_stops_a_search_early_only_when_little_strength_is_left_to_gain(trajectory, monkeypatch):
    import model.editor as editor_module

    x = faces()
    editor = guarded_editor(trajectory, x)
    early = np.array([e.strength for e in editor.edit(x, years=30)])
    monkeypatch.setattr(editor_module, "GUARD_STEP", 0.0)  # every face searched for all GUARD_ROUNDS rounds
    full = np.array([e.strength for e in editor.edit(x, years=30)])
    assert (early <= full + 1e-9).all()
    assert (full - early).max() < 0.1


def overflowing(move, beyond_years: float):
    """The trajectory's `move`, except that moving a face more than `beyond_years` overflows (NaN pixels),
    as a decode of a latent pushed very far can."""

    def broken_move(faces, reading, target_ages, with_bits=False):
        after, bits = move(faces, reading, target_ages, with_bits=True)
        far = torch.from_numpy(np.abs(np.asarray(target_ages) - reading.ages) > beyond_years)
        after, bits = after.clone(), bits.clone()
        after[far], bits[far] = float("nan"), float("nan")
        return (after, bits) if with_bits else after

    return broken_move


@pytest.mark.parametrize("asked", [{}, {"years": 10, "target_age": 40}])
def test_an_edit_gives_exactly_one_of_years_and_target_age(trajectory, asked):
    with pytest.raises(InvalidEdit):
        AgeEditor(trajectory, {}).edit(faces(), **asked)


def test_an_edit_that_overflows_gives_the_face_back_and_says_so(trajectory, monkeypatch):
    editor = AgeEditor(trajectory, {})
    monkeypatch.setattr(trajectory, "move", overflowing(trajectory.move, 10.0))
    x = faces()
    for edit in editor.edit(x, years=30):
        assert torch.equal(edit.after, edit.before)
        assert (edit.strength, edit.age_after) == (0.0, edit.age_before)
    assert all(torch.isfinite(e.after).all() and e.strength == 1.0 for e in editor.edit(x, years=5))


def test_the_guard_scales_an_overflowing_edit_back_to_a_strength_that_gives_a_face(trajectory, monkeypatch):
    editor = AgeEditor(trajectory, {GUARD_KEY: {"max_bits_per_dim": 1e6}})
    monkeypatch.setattr(trajectory, "move", overflowing(trajectory.move, 20.0))
    for edit in editor.edit(faces(), years=30):
        assert torch.isfinite(edit.after).all()
        assert 0.0 < edit.strength <= 20.0 / 30.0


def test_a_smooth_change_of_lightness_is_no_blotch_and_a_dark_patch_is():
    before = torch.full((3, 3, 64, 64), 0.5)
    ys, xs = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    patch = ((ys - 36) ** 2 + (xs - 32) ** 2 <= 100).float()  # a blotch of 20 px across
    orange = torch.tensor([0.15, 0.0, -0.2]).view(3, 1, 1) * patch  # about as light as the grey around it
    after = torch.stack([before[0] + 0.15, before[1] - 0.2 * patch, before[2] + 0.05 * ys / 64, before[0] + orange])
    before = torch.cat([before, before[:1]])
    shares = blotch_shares(before, after, "tight")
    assert shares[0] == 0.0 and shares[2] == 0.0  # a uniform or gradual change moves the median only
    assert shares[1] > 0.1 and shares[3] > 0.1  # a dark patch, and a coloured one
    assert shares[1] <= patch[central_face(64, "tight")].mean().item() + 0.05


def blotching(move):
    """The trajectory's `move`, plus a dark patch on the middle of each face that deepens with the years
    moved, as a flow pushed far from its data can leave: 30 years darken it by 0.4."""

    def blotched_move(faces, reading, target_ages, with_bits=False):
        after, bits = move(faces, reading, target_ages, with_bits=True)
        depth = torch.from_numpy(np.abs(np.asarray(target_ages) - reading.ages) / 30 * 0.4).float()
        after = after.clone()
        after[:, :, 5:11, 5:11] -= depth[:, None, None, None]
        return (after, bits) if with_bits else after

    return blotched_move


def test_with_a_blotch_limit_no_guarded_edit_is_blotched(trajectory, monkeypatch):
    monkeypatch.setattr(trajectory, "move", blotching(trajectory.move))
    x = faces().mul(0.5).add(0.25)  # mid-grey faces: the patch stays inside the pixel range
    unguarded = AgeEditor(trajectory, {}).edit(x, years=30)
    assert (blotch_shares(x, torch.stack([e.after for e in unguarded])) > 0.05).all()
    editor = AgeEditor(trajectory, {GUARD_KEY: {"max_bits_per_dim": 1e6, "max_blotch_share": 0.05}})
    edits = editor.edit(x, years=30)
    assert (blotch_shares(x, torch.stack([e.after for e in edits])) <= 0.05).all()
    assert all(0.0 < e.strength < 1.0 for e in edits)
