"""Every input error of fused_forward, raised before any launch with a message that says what is wrong.

Shape checks come before the device check, so CPU tensors reach every one of them: these tests run in CPU
CI. The GPU tests at the bottom cover what needs a CUDA tensor (mixed devices)."""

import re

import numpy as np
import pytest
import torch
from utils import PARAM_NAMES

import cupyfused
from cupyfused import fused_forward

N, C_IN, C_OUT, H, W, K, G = 2, 4, 8, 10, 9, 3, 2
OUT_SHAPE = (N, C_OUT, H - K + 1, W - K + 1)


def valid_inputs(device="cpu"):
    x = torch.rand(N, C_IN, H, W, device=device)
    params = dict(
        conv_weight=torch.rand(C_OUT, C_IN, K, K, device=device),
        conv_bias=torch.rand(C_OUT, device=device),
        bias=torch.rand(C_OUT, 1, 1, device=device),
        scale=torch.rand(C_OUT, 1, 1, device=device),
        gn_weight=torch.rand(C_OUT, device=device),
        gn_bias=torch.rand(C_OUT, device=device),
    )
    return x, params


def call(x=None, num_groups=G, device="cpu", **kw):
    x0, params = valid_inputs(device)
    for k in PARAM_NAMES:
        if k in kw:
            params[k] = kw.pop(k)
    return fused_forward(x0 if x is None else x, *(params[k] for k in PARAM_NAMES), num_groups, **kw)


@pytest.mark.parametrize("backend", ["torch", "cupy"])
def test_cpu_tensor(backend):
    """The valid inputs every case below changes one thing of: on the CPU they fail for that alone (before
    the backend's availability is looked at)."""
    with pytest.raises(ValueError, match=r"CUDA"):
        call(backend=backend)


# (id, overrides, exception, key phrase of the message)
CASES = [
    (
        "x-float64",
        dict(x=torch.rand(N, C_IN, H, W, dtype=torch.float64)),
        TypeError,
        r"float32.*float64|float64.*float32",
    ),
    ("x-float16", dict(x=torch.rand(N, C_IN, H, W).half()), TypeError, r"float16"),
    ("x-int", dict(x=torch.ones(N, C_IN, H, W, dtype=torch.int32)), TypeError, r"int32"),
    ("x-numpy", dict(x=np.random.rand(N, C_IN, H, W).astype(np.float32)), TypeError, r"x must be.*(Tensor|ndarray)"),
    ("x-list", dict(x=[[1.0]]), TypeError, r"x must be.*(Tensor|ndarray)"),
    ("x-rank3", dict(x=torch.rand(C_IN, H, W)), ValueError, r"4-D"),
    ("x-rank5", dict(x=torch.rand(1, N, C_IN, H, W)), ValueError, r"4-D"),
    ("C_in-mismatch", dict(x=torch.rand(N, C_IN + 1, H, W)), ValueError, r"channels"),
    ("H-less-than-K", dict(x=torch.rand(N, C_IN, K - 1, W)), ValueError, r"[Kk]ernel size"),
    ("W-less-than-K", dict(x=torch.rand(N, C_IN, H, K - 1)), ValueError, r"[Kk]ernel size"),
    ("G-not-dividing-C_out", dict(num_groups=3), ValueError, r"divisible"),
    ("G-zero", dict(num_groups=0), ValueError, r"num_groups"),
    ("G-float", dict(num_groups=2.0), ValueError, r"num_groups"),
    ("weight-float64", dict(conv_weight=torch.rand(C_OUT, C_IN, K, K, dtype=torch.float64)), TypeError, r"conv_weight"),
    ("weight-rank3", dict(conv_weight=torch.rand(C_OUT, C_IN, K)), ValueError, r"conv_weight"),
    ("weight-not-square", dict(conv_weight=torch.rand(C_OUT, C_IN, K, K + 1)), ValueError, r"conv_weight"),
    ("conv_bias-shape", dict(conv_bias=torch.rand(C_OUT + 1)), ValueError, r"conv_bias"),
    ("bias-shape", dict(bias=torch.rand(C_OUT + 1, 1, 1)), ValueError, r"\bbias\b"),
    ("scale-shape", dict(scale=torch.rand(C_OUT, 2, 1)), ValueError, r"scale"),
    ("gn_weight-shape", dict(gn_weight=torch.rand(C_OUT - 1)), ValueError, r"gn_weight"),
    ("gn_bias-shape", dict(gn_bias=torch.rand(2 * C_OUT)), ValueError, r"gn_bias"),
    ("gn_bias-not-tensor", dict(gn_bias=[0.0] * C_OUT), TypeError, r"gn_bias"),
    ("unknown-backend", dict(backend="triton"), ValueError, r"backend"),
    ("unknown-engine", dict(engine="winograd"), ValueError, r"engine"),
    ("out-wrong-shape", dict(out=torch.empty(N, C_OUT, H, W)), ValueError, r"out"),
    ("out-float64", dict(out=torch.empty(OUT_SHAPE, dtype=torch.float64)), (TypeError, ValueError), r"out"),
    ("out-not-contiguous", dict(out=torch.empty(OUT_SHAPE[::-1]).permute(3, 2, 1, 0)), ValueError, r"contiguous"),
    ("out-numpy", dict(out=np.empty(OUT_SHAPE, dtype=np.float32)), (TypeError, ValueError), r"out"),
]


@pytest.mark.parametrize("overrides, exc, phrase", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_validation_error(overrides, exc, phrase):
    with pytest.raises(exc, match=phrase) as info:
        call(**overrides)
    # the shape/type error wins over the device check: the message is not the CPU-tensor one
    assert not re.search(r"must be a CUDA tensor", str(info.value)), str(info.value)


def test_scalar_bias_and_scale_accepted_up_to_the_device_check():
    """Model broadcasts bias and scale: a (1, C_out, 1, 1) shape passes the shape checks."""
    with pytest.raises(ValueError, match="CUDA"):
        call(bias=torch.rand(1, C_OUT, 1, 1), scale=torch.rand(1, C_OUT, 1, 1))


def test_backend_unavailable_error_is_a_runtime_error():
    assert issubclass(cupyfused.BackendUnavailableError, RuntimeError)


def test_available_backends_reasons():
    reasons = cupyfused.available_backends()
    assert set(reasons) == {"torch", "cupy"}
    for name, reason in reasons.items():
        assert reason is None or (isinstance(reason, str) and reason.strip()), (name, reason)
    if not torch.cuda.is_available():
        assert all(r is not None for r in reasons.values()), f"nothing can run without a GPU: {reasons}"
    try:
        import cupy  # noqa: F401

        has_cupy = True
    except ImportError:
        has_cupy = False
    if not has_cupy:
        assert re.search(r"pip install cupy-cuda1\dx", reasons["cupy"]), reasons["cupy"]


# ---------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("where", ["conv_weight", "gn_bias", "out"])
def test_mixed_devices(backend, cuda_device, where):
    """A parameter (or out) on the CPU while x is on the GPU: ValueError naming the device, before launch."""
    x, params = valid_inputs(cuda_device)
    kw = dict(backend=backend)
    if where == "out":
        kw["out"] = torch.empty(OUT_SHAPE)
    else:
        params[where] = params[where].cpu()
    with pytest.raises(ValueError, match="device") as info:
        fused_forward(x, *(params[k] for k in PARAM_NAMES), G, **kw)
    assert where in str(info.value)


@pytest.mark.gpu
def test_backend_unavailable_names_pip_package(cuda_device, tmp_path):
    """Where CuPy cannot be imported, backend="cupy" raises BackendUnavailableError naming the wheel."""
    import subprocess

    from utils import PYTHON, subprocess_env

    script = (
        "import sys; sys.modules['cupy'] = None\n"  # makes `import cupy` raise ImportError
        "import torch, cupyfused\n"
        "x = torch.rand(1, 2, 5, 5, device='cuda')\n"
        "shapes = [(4, 2, 3, 3), (4,), (4, 1, 1), (4, 1, 1), (4,), (4,)]\n"
        "p = [torch.rand(s, device='cuda') for s in shapes]\n"
        "print('available:', cupyfused.available_backends()['cupy'])\n"
        "try:\n"
        "    cupyfused.fused_forward(x, *p, 2, backend='cupy')\n"
        "except cupyfused.BackendUnavailableError as e:\n"
        "    print('raised:', e)\n"
    )
    r = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"available: .*pip install cupy-cuda1\dx", r.stdout), r.stdout
    assert re.search(r"raised: .*cupy-cuda1\dx", r.stdout), r.stdout
