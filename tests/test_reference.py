"""The reference itself (CPU): reference_forward is the Model, the Model is SPEC.md's formula, statistics
belong to one (sample, group), and make_inputs draws what the contract says."""

import copy

import pytest
import torch
from utils import PARAM_NAMES, assert_close_to_ref, spec_forward

from cupyfused.reference import Model, make_inputs, reference_forward

# (N, C_in, C_out, H, W, K, G): small shapes, odd sizes, several groups per sample.
SHAPES = [
    pytest.param((3, 5, 12, 11, 10, 3, 4), id="odd-sizes"),
    pytest.param((2, 3, 8, 9, 7, 2, 1), id="even-K-one-group"),
    pytest.param((2, 4, 6, 5, 6, 1, 6), id="K1-one-channel-per-group"),
]


def model_params(model):
    return dict(
        conv_weight=model.conv.weight,
        conv_bias=model.conv.bias,
        bias=model.bias,
        scale=model.scale,
        gn_weight=model.group_norm.weight,
        gn_bias=model.group_norm.bias,
    )


def random_model(N, C_in, C_out, H, W, K, G):
    model = Model(C_in, C_out, K, G, (C_out, 1, 1), (C_out, 1, 1))
    with torch.no_grad():  # move the GroupNorm affine off its (1, 0) start so that it is exercised
        model.group_norm.weight.copy_(1 + 0.5 * torch.randn(C_out))
        model.group_norm.bias.copy_(0.5 * torch.randn(C_out))
    return model


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_forward_is_model_in_float64(shape):
    N, C_in, C_out, H, W, K, G = shape
    model = random_model(*shape)
    x = torch.rand(N, C_in, H, W)
    expected = copy.deepcopy(model).double()(x.double())
    got = reference_forward(x, *model_params(model).values(), G)  # float32 in: upcast inside
    assert got.dtype == torch.float64
    assert_close_to_ref(got, expected, atol=1e-12, context="reference_forward vs Model.double()")


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_forward_is_spec_formula(shape):
    """cupyfused.reference against SPEC.md written out with explicit group mean and biased variance."""
    N, C_in, C_out, H, W, K, G = shape
    x, params = make_inputs(*shape, device="cpu")
    expected, _ = spec_forward(x, params, G)
    got = reference_forward(x, *(params[k] for k in PARAM_NAMES), G)
    assert_close_to_ref(got, expected, atol=1e-12, context="reference_forward vs SPEC formula")


def test_statistics_per_sample():
    """Changing sample 1 leaves sample 0's output alone (statistics are not shared across the batch)."""
    N, C_in, C_out, H, W, K, G = 3, 4, 8, 10, 9, 3, 2
    x, params = make_inputs(N, C_in, C_out, H, W, K, G, device="cpu")
    args = [params[k] for k in PARAM_NAMES]
    before = reference_forward(x, *args, G)
    x2 = x.clone()
    x2[1] = torch.rand(C_in, H, W) * 3  # another sample, on another scale
    after = reference_forward(x2, *args, G)
    for n in (0, 2):
        torch.testing.assert_close(after[n], before[n], atol=1e-12, rtol=0)
    assert (after[1] - before[1]).abs().max() > 1e-3  # the changed sample did change


def test_statistics_per_group():
    """With gamma = 1 and beta = 0, every (sample, group) slice of the output has mean 0 and mean square
    var / (var + eps), var taken over that slice alone; slices of one channel would not."""
    N, C_in, C_out, H, W, K, G = 2, 3, 12, 9, 8, 3, 3
    x, params = make_inputs(N, C_in, C_out, H, W, K, G, device="cpu")
    params["gn_weight"] = torch.ones(C_out)
    params["gn_bias"] = torch.zeros(C_out)
    out = reference_forward(x, *(params[k] for k in PARAM_NAMES), G).reshape(N, G, -1)
    y2 = torch.sigmoid(
        (torch.nn.functional.conv2d(x.double(), params["conv_weight"].double(), params["conv_bias"].double())
         + params["bias"].double()) * params["scale"].double()
    ).reshape(N, G, -1)  # fmt: skip
    var = y2.var(dim=2, unbiased=False)
    torch.testing.assert_close(out.mean(dim=2), torch.zeros(N, G, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close((out**2).mean(dim=2), var / (var + 1e-5), atol=1e-12, rtol=0)
    # per channel the slices are not normalized: the statistics are over the group, not each channel
    per_channel_mean = out.reshape(N, C_out, -1).mean(dim=2)
    assert per_channel_mean.abs().max() > 1e-3


def test_make_inputs_contract():
    N, C_in, C_out, H, W, K, G = 2, 3, 8, 7, 6, 3, 4
    x, params = make_inputs(N, C_in, C_out, H, W, K, G, device="cpu")
    assert x.shape == (N, C_in, H, W) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) < 1
    shapes = dict(
        conv_weight=(C_out, C_in, K, K), conv_bias=(C_out,), bias=(C_out, 1, 1), scale=(C_out, 1, 1),
        gn_weight=(C_out,), gn_bias=(C_out,),
    )  # fmt: skip
    assert set(params) == set(PARAM_NAMES)
    for k, shape in shapes.items():
        assert tuple(params[k].shape) == shape, k
        assert params[k].dtype == torch.float32, k
    bound = 1 / (C_in * K * K) ** 0.5
    assert float(params["conv_weight"].abs().max()) <= bound
    assert not torch.equal(params["gn_weight"], torch.ones(C_out))  # the affine is exercised


def test_make_inputs_seed():
    a = make_inputs(2, 3, 8, 7, 6, 3, 4, device="cpu", seed=123)
    b = make_inputs(2, 3, 8, 7, 6, 3, 4, device="cpu", seed=123)
    c = make_inputs(2, 3, 8, 7, 6, 3, 4, device="cpu")
    d = make_inputs(2, 3, 8, 7, 6, 3, 4, device="cpu")
    assert torch.equal(a[0], b[0]) and all(torch.equal(a[1][k], b[1][k]) for k in PARAM_NAMES)
    assert not torch.equal(c[0], d[0])  # seed=None: fresh draws
