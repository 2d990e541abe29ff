"""The multi-scale model as a whole: exact reconstruction, log-determinant, likelihood, conditioning, the
standardized edit space, sampling, and saving."""

import ast
import copy
import math
import pickle
from pathlib import Path

import pytest
import torch

from model.checkpoint import WEIGHTS, load_flow, save_flow
from model.condition import condition_grid, condition_parts, condition_vector
from model.config import FlowConfig
from model.flow.glow import Glow
from model.flow.nets import ZeroConv2d

TINY = dict(resolution=16, levels=2, steps=2, width=16)
CONFIGS = {
    "glow": lambda **overrides: FlowConfig(**{**TINY, **overrides}),
    "realnvp": lambda **overrides: FlowConfig.realnvp(**{**TINY, **overrides}),
}


def conditions(config: FlowConfig, n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ages = torch.randint(1, 90, (n,), generator=generator)
    genders = ["male", "female"] * n
    races = ["white", "black", "asian", "indian", None] * n
    return condition_vector(config, ages, genders[:n], races[:n])


def images(n: int, side: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1], so that the flow has structure to fit."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, side // 4, side // 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=side, mode="bilinear", align_corners=False)


def trained(config: FlowConfig, steps: int = 4) -> Glow:
    """The model after ActNorm initialization and a few optimizer steps, every zero-initialized map moved."""
    torch.manual_seed(0)
    model = Glow(config)
    x = images(8, config.resolution)
    cond = conditions(config, 8) if config.conditional else None
    with torch.no_grad():
        model.log_prob(x, cond, dequantize=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        loss = model(model.quantize(x, torch.rand_like(x)), cond).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for module in model.modules():
        if isinstance(module, ZeroConv2d):
            assert module.conv.weight.abs().max() > 0.01, "a zero-initialized convolution is still at zero"
    if config.conditional:
        assert all(prior.condition.weight.abs().max() > 0.01 for prior in model.priors)
    return model.eval()


@pytest.fixture(scope="module")
def conditional_glow() -> Glow:
    return trained(CONFIGS["glow"]())


@pytest.mark.parametrize("kind", CONFIGS)
def test_decode_of_encode_reconstructs_input_after_training(kind):
    model = trained(CONFIGS[kind]())
    x = images(4, seed=1)
    with torch.no_grad():
        x_back = model.decode(model.encode(x))
    assert (x_back - x).abs().max().item() < 1e-4


@pytest.mark.parametrize("kind", CONFIGS)
def test_encode_keeps_every_split_latent(kind):
    config = CONFIGS[kind]()
    latents = trained(config).encode(images(2))
    assert [tuple(z.shape[1:]) for z in latents] == [(6, 8, 8), (24, 4, 4)]
    assert sum(z[0].numel() for z in latents) == config.dimensions


@pytest.mark.parametrize("kind", CONFIGS)
def test_model_logdet_equals_log_abs_det_of_numerical_jacobian(kind):
    config = CONFIGS[kind](resolution=8, width=8)
    model = copy.deepcopy(trained(config)).double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64) - 0.5

    def flat_latents(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([z.flatten() for z in model.flow_forward(v.view_as(x))[0]])

    jacobian = torch.autograd.functional.jacobian(flat_latents, x.flatten())
    _, _, logdet = model.flow_forward(x)
    assert abs(logdet.item()) > 1e-2
    assert logdet.item() == pytest.approx(torch.linalg.slogdet(jacobian).logabsdet.item(), abs=1e-8)


def test_bits_per_dim_is_finite_with_one_value_per_image(conditional_glow):
    x = images(5, seed=2)
    bpd = conditional_glow.bits_per_dim(x, conditions(conditional_glow.config, 5))
    assert bpd.shape == (5,)
    assert torch.isfinite(bpd).all()


def test_training_objective_at_bin_centres_equals_bits_per_dim(conditional_glow):
    x = images(3, seed=3)
    cond = conditions(conditional_glow.config, 3)
    with torch.no_grad():
        objective = conditional_glow(conditional_glow.quantize(x), cond)
        bpd = conditional_glow.bits_per_dim(x, cond)
    torch.testing.assert_close(objective, bpd)


def test_bits_per_dim_of_identity_flow_is_that_of_a_standard_normal_on_quantized_pixels():
    config = FlowConfig(**TINY, n_bits=5, conditional=False)
    model = Glow(config).eval()
    x = images(2, seed=4)
    z = model.quantize(x)
    nats = 0.5 * (math.log(2 * math.pi) * config.dimensions + z.flatten(1).pow(2).sum(1))
    expected = nats / (config.dimensions * math.log(2)) + config.n_bits
    with torch.no_grad():
        torch.testing.assert_close(model.bits_per_dim(x), expected, atol=1e-5, rtol=0)


def test_quantize_keeps_n_bits_levels_centred_on_zero():
    model = Glow(FlowConfig(**TINY, n_bits=5))
    levels = model.quantize(torch.linspace(0, 1, 1000).view(1, 1, 1, 1000)).unique()
    assert len(levels) == 32
    torch.testing.assert_close(levels, (torch.arange(32) + 0.5) / 32 - 0.5)


def test_condition_log_likelihoods_equal_prior_log_prob_under_each_condition(conditional_glow):
    model = conditional_glow
    x = model.quantize(images(3, seed=5))
    grid = conditions(model.config, 4, seed=1)
    with torch.no_grad():
        latents, contexts, _ = model.flow_forward(x)
        table = model.condition_log_likelihoods(latents, contexts, grid)
        for j in range(len(grid)):
            prior = model.prior_log_prob(latents, contexts, grid[j].expand(3, -1))
            torch.testing.assert_close(table[:, j], prior, atol=1e-3, rtol=1e-6)
    assert table.shape == (3, 4)


def test_condition_grid_log_likelihoods_equal_each_age_gender_and_ethnicity_combination(conditional_glow):
    model = conditional_glow
    x = model.quantize(images(2, seed=9))
    ages = [3.0, 30.0, 71.5]
    combos = [("male", "white"), ("female", "asian"), (None, "black")]
    age_rows, other_rows = condition_parts(model.config, ages, combos)
    with torch.no_grad():
        latents, contexts, _ = model.flow_forward(x)
        table = model.condition_grid_log_likelihoods(latents, contexts, age_rows, other_rows)
        for j, (gender, race) in enumerate(combos):
            for m, age in enumerate(ages):
                cond = condition_vector(model.config, [age] * 2, [gender] * 2, [race] * 2)
                torch.testing.assert_close(
                    table[:, j, m], model.prior_log_prob(latents, contexts, cond), atol=1e-3, rtol=1e-6
                )
    assert table.shape == (2, len(combos), len(ages))


def test_log_prob_under_a_condition_adds_the_prior_to_the_flow_terms(conditional_glow):
    model = conditional_glow
    x01 = images(3, seed=6)
    cond = conditions(model.config, 3, seed=2)
    with torch.no_grad():
        latents, contexts, logdet = model.flow_forward(model.quantize(x01))
        prior = model.condition_log_likelihoods(latents, contexts, cond)
        log_prob = model.log_prob(x01, cond)
    discretization = -model.config.dimensions * model.config.n_bits * math.log(2)
    torch.testing.assert_close(log_prob, prior.diagonal() + logdet + discretization, atol=1e-2, rtol=1e-6)


def test_log_prob_without_condition_averages_the_likelihood_over_the_condition_grid(conditional_glow):
    model = conditional_glow
    x01 = images(2, seed=7)
    grid, _ = condition_grid(model.config, range(1, 91, 3))
    with torch.no_grad():
        per_condition = model.log_prob(x01.repeat_interleave(len(grid), 0), grid.repeat(2, 1)).view(2, len(grid))
        marginal = model.log_prob(x01)
    torch.testing.assert_close(marginal, torch.logsumexp(per_condition, 1) - math.log(len(grid)), atol=1e-2, rtol=1e-6)


def test_likelihood_outside_training_follows_every_change_of_the_parameters(conditional_glow):
    """Outside training the 1x1 mixing weights and the marginal's condition features are kept between calls;
    an optimizer step or a load of other weights must still change the answer, as a fresh model computes it."""
    model = copy.deepcopy(conditional_glow).eval()
    x01 = images(3, seed=11)
    with torch.no_grad():
        before = model.bits_per_dim(x01)
        assert torch.equal(model.bits_per_dim(x01), before)  # the kept values give the same answer
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = model(model.quantize(x01), conditions(model.config, 3)).mean()
    loss.backward()
    optimizer.step()
    model.eval()
    fresh = Glow(model.config)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        after = model.bits_per_dim(x01)
        assert not torch.allclose(after, before)
        torch.testing.assert_close(after, fresh.bits_per_dim(x01), atol=0, rtol=0)
        model.load_state_dict(conditional_glow.state_dict())  # a load changes them back
        torch.testing.assert_close(model.bits_per_dim(x01), before, atol=0, rtol=0)


def test_exact_bits_of_a_decoding_come_from_its_own_pass(conditional_glow):
    """decode and generate with `with_bits` rate the image they make as a forward pass of it would, at its
    own values, which differ from the bin-centre bits/dim."""
    model = conditional_glow
    x = images(4, seed=3)
    with torch.no_grad():
        decoded, bits = model.decode(model.encode(x), with_bits=True)
        torch.testing.assert_close(bits, model.exact_bits_per_dim(decoded), atol=1e-4, rtol=0)
        torch.testing.assert_close(bits, model.exact_bits_per_dim(x), atol=1e-4, rtol=0)
        cond = conditions(model.config, 4, seed=4)
        eps = [torch.randn(4, *shape, generator=torch.Generator().manual_seed(5)) for shape in model.latent_shapes()]
        made, made_bits = model.generate(eps, cond, 0.7, with_bits=True)
        assert torch.equal(made, model.generate(eps, cond, 0.7))
        torch.testing.assert_close(made_bits, model.exact_bits_per_dim(made), atol=1e-4, rtol=0)
        assert not torch.allclose(model.exact_bits_per_dim(x), model.bits_per_dim(x), atol=1e-3)


def test_standardize_then_generate_under_the_same_condition_reconstructs_input(conditional_glow):
    x = images(4, seed=8)
    cond = conditions(conditional_glow.config, 4, seed=3)
    with torch.no_grad():
        x_back = conditional_glow.generate(conditional_glow.standardize(x, cond), cond)
    assert (x_back - x).abs().max().item() < 1e-4


def test_standardized_latents_depend_on_the_condition(conditional_glow):
    x = images(1, seed=9)
    young = condition_vector(conditional_glow.config, [5], ["female"], ["asian"])
    old = condition_vector(conditional_glow.config, [80], ["female"], ["asian"])
    with torch.no_grad():
        difference = sum(
            (a - b).abs().sum()
            for a, b in zip(conditional_glow.standardize(x, young), conditional_glow.standardize(x, old))
        )
    assert difference > 1e-2


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0])
def test_generate_scales_the_standardized_latents_by_the_temperature(conditional_glow, temperature):
    model = conditional_glow
    cond = conditions(model.config, 3, seed=4)
    generator = torch.Generator().manual_seed(0)
    eps = [torch.randn((3, *shape), generator=generator) for shape in model.latent_shapes()]
    with torch.no_grad():
        recovered = model.standardize(model.generate(eps, cond, temperature), cond)
    for e, r in zip(eps, recovered):
        torch.testing.assert_close(r, e * temperature, atol=1e-3, rtol=0)


def test_sample_is_deterministic_for_a_seed(conditional_glow):
    with torch.no_grad():
        assert torch.equal(conditional_glow.sample(3, seed=11), conditional_glow.sample(3, seed=11))


def test_sample_differs_between_seeds(conditional_glow):
    with torch.no_grad():
        first, second = conditional_glow.sample(3, seed=11), conditional_glow.sample(3, seed=12)
    assert (first - second).abs().mean() > 1e-3


def test_save_then_load_gives_bit_identical_outputs(conditional_glow, tmp_path):
    save_flow(conditional_glow, tmp_path)
    loaded = load_flow(tmp_path)
    x = images(2, seed=10)
    cond = conditions(conditional_glow.config, 2)
    with torch.no_grad():
        for a, b in zip(conditional_glow.encode(x), loaded.encode(x)):
            assert torch.equal(a, b)
        assert torch.equal(conditional_glow.log_prob(x, cond), loaded.log_prob(x, cond))
        assert torch.equal(conditional_glow.sample(2, seed=3), loaded.sample(2, seed=3))
    assert loaded.config == conditional_glow.config


def test_load_flow_does_not_unpickle(conditional_glow, tmp_path, monkeypatch):
    save_flow(conditional_glow, tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling on the load path")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_flow(tmp_path)
    header_length = int.from_bytes((tmp_path / WEIGHTS).read_bytes()[:8], "little")
    assert (tmp_path / WEIGHTS).read_bytes()[8 : 8 + header_length].startswith(b"{")
    assert loaded.config == conditional_glow.config


def test_the_flow_reads_nothing_of_the_model_but_its_config():
    """model/flow takes conditions as opaque tensors: the label lists and grids stay outside it."""
    imported = set()
    for path in (Path(__file__).resolve().parents[3] / "model" / "flow").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    outside = {name for name in imported if name.split(".")[0] == "model" and not name.startswith("model.flow")}
    assert outside <= {"model.config"}, outside
