"""ModelNew: the drop-in module. CPU: same parameters and state_dict as Model, built without a GPU.
GPU: with Model's state_dict loaded it returns what Model returns."""

import copy

import pytest
import torch
from utils import TOLERANCES, assert_close_to_ref, report, spec_forward

from cupyfused import Model, ModelNew
from cupyfused.reference import reference_forward

ARGS = (8, 32, 3, 8, (32, 1, 1), (32, 1, 1))  # in, out, K, G, bias_shape, scale_shape (the default problem)


def test_state_dict_keys_match_model():
    new, ref = ModelNew(*ARGS), Model(*ARGS)  # constructing needs no GPU (this runs in CPU CI)
    assert set(new.state_dict()) == set(ref.state_dict()) == {
        "conv.weight", "conv.bias", "bias", "scale", "group_norm.weight", "group_norm.bias",
    }  # fmt: skip
    for k, v in ref.state_dict().items():
        assert new.state_dict()[k].shape == v.shape, k
        assert new.state_dict()[k].dtype == v.dtype, k


def test_load_state_dict_from_model():
    ref = Model(*ARGS)
    new = ModelNew(*ARGS)
    new.load_state_dict(ref.state_dict())  # strict: no missing or unexpected keys
    for k, v in ref.state_dict().items():
        assert torch.equal(new.state_dict()[k], v), k
    # and back: a state_dict saved from ModelNew loads into Model
    Model(*ARGS).load_state_dict(new.state_dict())


def test_parameters_require_grad_like_model():
    new, ref = ModelNew(*ARGS), Model(*ARGS)
    assert {n: p.requires_grad for n, p in new.named_parameters()} == {
        n: p.requires_grad for n, p in ref.named_parameters()
    }


def test_forward_rejects_cpu_input():
    with pytest.raises(ValueError, match="CUDA"):
        ModelNew(*ARGS)(torch.rand(2, 8, 10, 10))


# ---------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("no_grad", [False, True], ids=["grad-enabled", "no_grad"])
def test_modelnew_matches_model(backend, cuda_device, no_grad, seed):
    torch.manual_seed(seed)
    N, C_in, C_out, H, W, K, G = 2, 8, 32, 40, 37, 3, 8
    model = Model(C_in, C_out, K, G, (C_out, 1, 1), (C_out, 1, 1))
    with torch.no_grad():
        model.group_norm.weight.copy_(1 + 0.5 * torch.randn(C_out))
        model.group_norm.bias.copy_(0.5 * torch.randn(C_out))
    model = model.to(cuda_device)
    new = ModelNew(C_in, C_out, K, G, (C_out, 1, 1), (C_out, 1, 1), backend=backend).to(cuda_device)
    new.load_state_dict(model.state_dict())
    assert all(p.requires_grad for p in new.parameters())  # inference with parameters that require grad
    x = torch.rand(N, C_in, H, W, device=cuda_device)

    with torch.no_grad() if no_grad else torch.enable_grad():
        out = new(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.device == x.device
    assert out.grad_fn is None and not out.requires_grad  # inference only

    with torch.no_grad():
        ref64 = copy.deepcopy(model).double()(x.double())
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # Model's own float32, no TF32
            ref32 = model(x)
    params = dict(
        conv_weight=model.conv.weight, conv_bias=model.conv.bias, bias=model.bias, scale=model.scale,
        gn_weight=model.group_norm.weight, gn_bias=model.group_norm.bias,
    )  # fmt: skip
    _, err_scale = spec_forward(x, params, G)
    tol64, tol32 = TOLERANCES["shape_table"].bound(err_scale), TOLERANCES["model_fp32"].bound(err_scale)
    c = assert_close_to_ref(
        out, ref64, atol=tol64, context=f"ModelNew vs Model in float64 (error scale {err_scale:.1f})"
    )
    assert_close_to_ref(out, ref32, atol=tol32, context=f"ModelNew vs Model in float32 (error scale {err_scale:.1f})")
    report("accuracy", f"ModelNew[{backend}] no_grad={no_grad}: max abs {c.max_abs:.2e} (bound {tol64:.1e})")


@pytest.mark.gpu
def test_parameter_updates_are_seen(backend, cuda_device, seed):
    """Parameters changed between calls, in place or by swapping .data, change the result (the cupy backend
    reuses its DLPack views of parameter tensors while they point at the same memory)."""
    torch.manual_seed(seed)
    N, C_in, C_out, H, W, K, G = 2, 8, 32, 20, 23, 3, 8
    model = Model(C_in, C_out, K, G, (C_out, 1, 1), (C_out, 1, 1)).to(cuda_device)
    new = ModelNew(C_in, C_out, K, G, (C_out, 1, 1), (C_out, 1, 1), backend=backend).to(cuda_device)
    new.load_state_dict(model.state_dict())
    x = torch.rand(N, C_in, H, W, device=cuda_device)
    for step in ("first call", "in place", ".data swapped"):
        if step == "in place":
            with torch.no_grad():
                for m in (model, new):
                    m.conv.weight.mul_(0.5)
                    m.scale.add_(1.0)
        elif step == ".data swapped":
            w = torch.randn_like(model.conv.weight)
            model.conv.weight.data, new.conv.weight.data = w, w.clone()
        with torch.no_grad():
            got = new(x)
        ref = reference_forward(x, **_params_of(model), num_groups=G)
        bound = TOLERANCES["shape_table"].bound(spec_forward(x, _params_of(model), G)[1])
        assert_close_to_ref(got, ref, bound, context=f"{backend}: after {step}")


def _params_of(model):
    return dict(
        conv_weight=model.conv.weight.detach(), conv_bias=model.conv.bias.detach(), bias=model.bias.detach(),
        scale=model.scale.detach(), gn_weight=model.group_norm.weight.detach(),
        gn_bias=model.group_norm.bias.detach(),
    )  # fmt: skip
