"""Every invertible layer: exact inverse, cancelling log-determinants, and log-determinants equal to the
log|det J| of the numerical Jacobian, all checked after training has moved the layer off its identity init."""

import copy

import pytest
import torch

from model.flow.contract import ConditionalInvertibleLayer, InvertibleLayer
from model.flow.detail import ConditionalCoupling, ConditionalFlowStep, DetailConfig, DetailFlow, HaarSplit
from model.flow.layers import ActNorm, ChannelReverse, Coupling, FlowStep, InvertibleConv1x1, squeeze, unsqueeze
from model.flow.nets import ZeroConv2d

CHANNELS = 4
CONDITION_CHANNELS = 3


def fixed_condition(shape: tuple[int, ...], channels: int, dtype: torch.dtype, grow: int = 0) -> torch.Tensor:
    """A condition that depends only on the input's shape (and differs between samples): N x channels x
    (H + 2 grow) x (W + 2 grow)."""
    n, _, h, w = shape
    generator = torch.Generator().manual_seed(1000 * n + 10 * h + w)
    return torch.randn(n, channels, h + 2 * grow, w + 2 * grow, generator=generator).to(dtype)


class WithCondition(torch.nn.Module):
    """A conditional layer under a fixed condition per input shape: an InvertibleLayer, so that every
    check below applies to it unchanged."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x, fixed_condition(x.shape, CONDITION_CHANNELS, x.dtype))

    def inverse(self, y):
        return self.layer.inverse(y, fixed_condition(y.shape, CONDITION_CHANNELS, y.dtype))


class DetailBijection(torch.nn.Module):
    """The whole detail flow (encoder, two levels with a squeeze) under a fixed context image and vector."""

    def __init__(self, condition_in: str = "encoder", scale_bound: float = 0.0) -> None:
        super().__init__()
        self.flow = DetailFlow(
            DetailConfig(
                channels=CHANNELS,
                context_channels=2,
                condition_dim=2,
                steps=(1, 2),
                width=8,
                encoder_width=8,
                features=3,
                condition_in=condition_in,
                scale_bound=scale_bound,
            )
        )

    def _features(self, x_shape, dtype):
        context = fixed_condition(x_shape, 2, dtype, grow=self.flow.config.margin)
        return self.flow.features(context, context[:, 0, 0, :2])

    def forward(self, x):
        return self.flow.transform(x, self._features(x.shape, x.dtype))

    def inverse(self, y):
        n, c, h, w = y.shape
        return self.flow.untransform(y, self._features((n, c // 4, 2 * h, 2 * w), y.dtype))


LAYERS = {
    "actnorm": lambda: ActNorm(CHANNELS),
    "conv1x1": lambda: InvertibleConv1x1(CHANNELS, seed=3),
    "reverse": lambda: ChannelReverse(),
    "affine-channel-even": lambda: Coupling(CHANNELS, 8, affine=True, mask="channel", parity=0),
    "affine-channel-odd": lambda: Coupling(CHANNELS, 8, affine=True, mask="channel", parity=1),
    "additive-channel": lambda: Coupling(CHANNELS, 8, affine=False, mask="channel", parity=0),
    "affine-checkerboard-even": lambda: Coupling(CHANNELS, 8, affine=True, mask="checkerboard", parity=0),
    "affine-checkerboard-odd": lambda: Coupling(CHANNELS, 8, affine=True, mask="checkerboard", parity=1),
    "additive-checkerboard": lambda: Coupling(CHANNELS, 8, affine=False, mask="checkerboard", parity=1),
    "step-glow": lambda: FlowStep(CHANNELS, 8, affine=False, mixing="conv1x1", mask="channel", parity=0, seed=1),
    "step-realnvp": lambda: FlowStep(CHANNELS, 8, affine=True, mixing="reverse", mask="checkerboard", parity=1, seed=0),
    "haar-split": lambda: HaarSplit(),
    "conditional-coupling-even": lambda: WithCondition(ConditionalCoupling(CHANNELS, CONDITION_CHANNELS, 8, parity=0)),
    "conditional-coupling-odd": lambda: WithCondition(ConditionalCoupling(CHANNELS, CONDITION_CHANNELS, 8, parity=1)),
    "conditional-coupling-bounded": lambda: WithCondition(
        ConditionalCoupling(CHANNELS, CONDITION_CHANNELS, 8, parity=0, scale_bound=0.5)
    ),
    "conditional-step": lambda: WithCondition(ConditionalFlowStep(CHANNELS, CONDITION_CHANNELS, 8, parity=1, seed=2)),
    "detail-flow": lambda: DetailBijection(),
    "detail-flow-prior-condition": lambda: DetailBijection(condition_in="prior", scale_bound=1.0),
}
CONDITIONAL = (
    "conditional-coupling-even",
    "conditional-coupling-odd",
    "conditional-coupling-bounded",
    "conditional-step",
)


def trained(name: str) -> torch.nn.Module:
    """The layer after a few maximum-likelihood steps on random data (standard normal target)."""
    torch.manual_seed(0)
    layer = LAYERS[name]()
    data = torch.randn(16, CHANNELS, 4, 4) * 1.5 + 0.3
    parameters = list(layer.parameters())
    if parameters:
        optimizer = torch.optim.Adam(parameters, lr=0.05)
        for _ in range(5):
            y, logdet = layer(data)
            loss = (0.5 * y.pow(2).flatten(1).sum(1) - logdet).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for module in layer.modules():
        if isinstance(module, ZeroConv2d):
            assert module.conv.weight.abs().max() > 0.01, "a zero-initialized convolution is still at zero"
    return layer.eval()


def log_abs_det_jacobian(layer: torch.nn.Module, x: torch.Tensor) -> float:
    jacobian = torch.autograd.functional.jacobian(lambda v: layer(v.view_as(x))[0].flatten(), x.flatten())
    return torch.linalg.slogdet(jacobian).logabsdet.item()


def round_trip(name: str):
    """x, inverse(forward(x)), and the forward and inverse logdets, for a batch of 8 through the trained layer."""
    layer = trained(name)
    x = torch.randn(8, CHANNELS, 6, 6)
    with torch.no_grad():
        y, forward_logdet = layer(x)
        x_back, inverse_logdet = layer.inverse(y)
    return x, x_back, forward_logdet, inverse_logdet


@pytest.mark.parametrize("name", LAYERS)
def test_every_layer_keeps_the_invertible_layer_contract(name):
    assert isinstance(LAYERS[name](), InvertibleLayer)
    assert not isinstance(ZeroConv2d(2, 2), InvertibleLayer)  # a network inside a coupling is not one


@pytest.mark.parametrize("name", LAYERS)
def test_inverse_of_forward_reconstructs_input(name):
    x, x_back, _, _ = round_trip(name)
    assert (x_back - x).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", LAYERS)
def test_forward_and_inverse_logdets_cancel(name):
    _, _, forward_logdet, inverse_logdet = round_trip(name)
    assert forward_logdet.shape == (8,)
    torch.testing.assert_close(forward_logdet + inverse_logdet, torch.zeros(8), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", LAYERS)
def test_logdet_equals_log_abs_det_of_numerical_jacobian(name):
    layer = copy.deepcopy(trained(name)).double()
    x = torch.randn(1, CHANNELS, 2, 2, dtype=torch.float64)
    _, logdet = layer(x)
    assert logdet.item() == pytest.approx(log_abs_det_jacobian(layer, x), abs=1e-8)


def test_scaling_layers_change_volume_after_training():
    for name in (
        "actnorm",
        "conv1x1",
        "affine-channel-even",
        "affine-checkerboard-odd",
        "step-realnvp",
        "haar-split",
        "conditional-coupling-even",
        "conditional-coupling-bounded",
        "conditional-step",
        "detail-flow",
        "detail-flow-prior-condition",
    ):
        _, logdet = trained(name)(torch.randn(1, CHANNELS, 2, 2))
        assert abs(logdet.item()) > 1e-3, name


@pytest.mark.parametrize("name", CONDITIONAL)
def test_conditional_layers_keep_the_contract_under_any_condition(name):
    layer = trained(name).layer
    assert isinstance(layer, ConditionalInvertibleLayer)
    x = torch.randn(2, CHANNELS, 4, 4)
    first, second = torch.randn(2, CONDITION_CHANNELS, 4, 4), torch.randn(2, CONDITION_CHANNELS, 4, 4)
    with torch.no_grad():
        y_first, logdet_first = layer(x, first)
        y_second, _ = layer(x, second)
        x_back, logdet_back = layer.inverse(y_first, first)
    assert (y_first - y_second).abs().max() > 1e-3  # the condition changes the map
    assert (x_back - x).abs().max().item() < 1e-4
    torch.testing.assert_close(logdet_first + logdet_back, torch.zeros(2), atol=1e-4, rtol=0)


def test_bounded_coupling_scales_stay_within_their_bound_however_large_the_network_output():
    torch.manual_seed(0)
    coupling = ConditionalCoupling(CHANNELS, CONDITION_CHANNELS, 8, parity=0, scale_bound=0.5)
    kept = CHANNELS // 2
    # a network whose outputs reach far beyond the bound (log-scales of +-10 unbounded)
    coupling.net = torch.nn.Conv2d(kept + CONDITION_CHANNELS, 2 * (CHANNELS - kept), 1)
    with torch.no_grad():
        coupling.net.weight.normal_(0.0, 4.0)
        x, condition = torch.randn(2, CHANNELS, 4, 4), torch.randn(2, CONDITION_CHANNELS, 4, 4)
        raw = coupling.net(torch.cat([x[:, :kept], condition], 1))[:, 1::2]
        _, log_scale = coupling._shift_log_scale(x[:, :kept], condition)
        y, logdet = coupling(x, condition)
        back, logdet_back = coupling.inverse(y, condition)
    assert raw.abs().max() > 5.0
    assert log_scale.abs().max() <= 0.5 and log_scale.abs().max() > 0.45
    assert (back - x).abs().max() < 1e-4
    torch.testing.assert_close(logdet + logdet_back, torch.zeros(2), atol=1e-4, rtol=0)


@pytest.mark.parametrize("parity", [0, 1])
def test_conditional_coupling_handles_an_odd_channel_count(parity):
    coupling = ConditionalCoupling(9, 2, 8, parity=parity)
    with torch.no_grad():
        for p in coupling.parameters():
            p.add_(0.1 * torch.randn_like(p))
        x, condition = torch.randn(2, 9, 4, 4), torch.randn(2, 2, 4, 4)
        y, _ = coupling(x, condition)
        kept = slice(0, 4) if parity == 0 else slice(4, 9)
        assert torch.equal(y[:, kept], x[:, kept])
        assert (coupling.inverse(y, condition)[0] - x).abs().max() < 1e-5


def test_actnorm_initialization_gives_zero_mean_unit_variance():
    x = torch.randn(64, CHANNELS, 5, 5) * torch.tensor([0.1, 1.0, 3.0, 10.0])[None, :, None, None] + 7.0
    y, _ = ActNorm(CHANNELS).train()(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(CHANNELS), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(CHANNELS), atol=1e-4, rtol=0)


def test_actnorm_keeps_the_statistics_of_its_first_batch():
    actnorm = ActNorm(CHANNELS).train()
    actnorm(torch.randn(32, CHANNELS, 4, 4) * 2.0)
    bias, logs = actnorm.bias.clone(), actnorm.logs.clone()
    actnorm(torch.randn(32, CHANNELS, 4, 4) * 5.0 + 1.0)
    assert torch.equal(actnorm.bias, bias) and torch.equal(actnorm.logs, logs)


def test_conv1x1_inverse_follows_weights_loaded_in_eval_mode():
    conv = InvertibleConv1x1(CHANNELS, seed=3).eval()
    weights = trained("conv1x1").state_dict()
    x = torch.randn(2, CHANNELS, 3, 3)
    with torch.no_grad():
        conv.inverse(conv(x)[0])
        conv.load_state_dict(weights)
        x_back, _ = conv.inverse(conv(x)[0])
    assert (x_back - x).abs().max().item() < 1e-4


@pytest.mark.parametrize("mask", ["channel", "checkerboard"])
def test_coupling_passes_its_conditioning_half_through_unchanged(mask):
    coupling = Coupling(CHANNELS, 8, affine=True, mask=mask, parity=1)
    with torch.no_grad():
        for p in coupling.parameters():
            p.add_(torch.randn_like(p))
        x = torch.randn(2, CHANNELS, 4, 4)
        y, _ = coupling(x)
    if mask == "channel":
        kept = torch.zeros(1, CHANNELS, 1, 1, dtype=torch.bool)
        kept[:, CHANNELS // 2 :] = True
    else:
        kept = ((torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 == 1)[None, None]
    kept = kept.expand_as(x)
    assert torch.equal(y[kept], x[kept])
    assert (y[~kept] - x[~kept]).abs().min() > 0


def test_unsqueeze_inverts_squeeze_exactly():
    x = torch.randn(2, 3, 8, 6)
    assert torch.equal(unsqueeze(squeeze(x)), x)


def test_squeeze_moves_each_2x2_block_into_the_channels_of_one_pixel():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    y = squeeze(x)
    assert y.shape == (1, 8, 2, 2)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                block = x[0, c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].flatten()
                assert torch.equal(y[0, 4 * c : 4 * c + 4, i, j], block)
