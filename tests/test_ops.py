"""fused_forward on the GPU: accuracy against the float64 reference on the default problem (batch slice) and
a table of shapes, on both backends and every engine ("auto" is the single-pass "fused" kernel wherever it
applies, "mma" the two-pass tensor-core kernels, "direct" the FP32 fallback); the fused kernel's layouts
(several teams, parked tiles, a batch that does not divide into the teams); empty batch, strided inputs,
determinism, bitwise equal backends, CuPy arrays, streams and devices.

Every check draws fresh inputs (the ``seed`` fixture prints its seed) and poisons the output with NaN before
the launch, so an element the kernels never write fails."""

import contextlib
from typing import NamedTuple

import pytest
import torch
from utils import (
    TOLERANCES,
    assert_bitwise_equal,
    assert_close_to_ref,
    fused,
    out_shape,
    poisoned,
    report,
    skip_or_fail,
    spec_forward,
    to_torch,
)

from cupyfused import make_plan
from cupyfused.plan import DeviceInfo
from cupyfused.reference import Model, make_inputs, reference_forward

pytestmark = pytest.mark.gpu


class Shape(NamedTuple):
    N: int
    C_in: int
    C_out: int
    H: int
    W: int
    K: int
    G: int


DEFAULT_SLICE = Shape(8, 8, 32, 256, 256, 3, 8)  # the default problem (N=128) on an 8-sample batch slice

# id, shape, why it is here
TABLE = [
    ("N1", Shape(1, 8, 32, 33, 35, 3, 8), "a single sample"),
    ("prime-HW", Shape(2, 8, 32, 37, 41, 3, 8), "prime H and W: OH x OW = 35 x 39 fills no tile evenly"),
    ("K1", Shape(2, 8, 32, 20, 21, 1, 8), "K=1: a pointwise conv, no halo"),
    ("K5", Shape(2, 8, 32, 21, 23, 5, 8), "K=5: a wider halo"),
    ("K2", Shape(2, 8, 32, 19, 22, 2, 8), "even K=2: no centre tap"),
    ("K4", Shape(2, 8, 32, 19, 22, 4, 8), "even K=4"),
    ("Cin1", Shape(2, 1, 32, 24, 26, 3, 8), "C_in=1: one input channel of an 8-channel k-step"),
    ("Cin3", Shape(2, 3, 32, 24, 26, 3, 8), "C_in=3 (RGB): not a multiple of 4 channels"),
    ("Cin13", Shape(2, 13, 32, 24, 26, 3, 8), "C_in=13: a full and a partial 8-channel k-step"),
    ("Cin3-K5", Shape(2, 3, 64, 21, 70, 5, 16), "C_in=3, K=5: paired taps (3 k-steps a row), two chunks"),
    ("Cout-eq-G", Shape(2, 8, 8, 24, 26, 3, 8), "C_out=G: one channel per group, half a 16-channel chunk"),
    ("Cout12-Cin13", Shape(2, 13, 12, 24, 26, 3, 4), "16-channel chunks, weights restaged per 8-input k-step"),
    ("Cout16-K5", Shape(2, 16, 16, 21, 23, 5, 4), "16-channel chunks, K=5, two full k-steps"),
    ("G1", Shape(2, 8, 32, 24, 26, 3, 1), "G=1: the whole sample is one group"),
    ("Cout48", Shape(2, 8, 48, 24, 26, 3, 4), "C_out=48: a partial second 32-chunk; groups of 12 straddle it"),
    ("Cout72", Shape(2, 8, 72, 24, 26, 3, 6), "C_out=72: three chunks, groups of 12 straddle two boundaries"),
    ("HW-eq-K", Shape(4, 8, 32, 3, 3, 3, 2), "H=W=K: a 1x1 output, each group 16 values"),
    ("tall-narrow", Shape(2, 8, 32, 70, 5, 3, 8), "H=70, W=5: several tile rows, a 3-pixel-wide output"),
    ("N3", Shape(3, 8, 32, 20, 22, 3, 8), "an odd batch N=3"),
    ("wide", Shape(1, 4, 16, 9, 200, 3, 4), "W=200: several tiles along a row, the last partial"),
    ("K11", Shape(2, 8, 32, 30, 31, 11, 8), "K=11: too large for the mma tile on every GPU, the direct fallback"),
]
ENGINES = ["auto", "mma", "direct"]
# every (shape, engine) of the table the engine can run: forcing "mma" where its tile does not fit raises
# (test_plan.py::test_large_kernel_falls_back_to_direct)
TABLE_ENGINE_PARAMS = [
    pytest.param(s, e, id=f"{i}-{e}") for i, s, _ in TABLE for e in ENGINES if not (i == "K11" and e == "mma")
]


def inputs(shape, device, seed):
    return make_inputs(*shape, device=device, seed=seed)


def ref_of(x, p, G):
    return reference_forward(x, **p, num_groups=G)


def planned_engine(x, shape, engine):
    if engine != "auto":
        return engine
    return make_plan(tuple(x.shape), shape.C_out, shape.K, shape.G, DeviceInfo.from_torch(x.device.index)).engine


def check_accuracy(shape, engine, backend, device, seed, tol):
    x, p = inputs(shape, device, seed)
    out = poisoned(out_shape(*shape), x)
    res = fused(x, p, shape.G, backend=backend, engine=engine, out=out)
    assert isinstance(res, torch.Tensor), f"torch in must give torch out; got {type(res)}"
    assert res.data_ptr() == out.data_ptr(), "the result must be written into out="
    torch.cuda.synchronize()
    ref = ref_of(x, p, shape.G)
    _, err_scale = spec_forward(x, p, shape.G)
    bound = tol.bound(err_scale)
    what = f"{backend} engine={engine}->{planned_engine(x, shape, engine)} {tuple(shape)}"
    c = assert_close_to_ref(
        out, ref, bound, context=f"{what}: error scale {err_scale:.1f}, bound {bound:.2e} ({tol.reason})"
    )
    report(
        "accuracy (max abs err vs float64)",
        f"{what}: {c.max_abs:.2e} (bound {bound:.1e}, error scale {err_scale:.0f}), rel L2 {c.rel_l2:.1e}",
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_default_problem_slice(backend, engine, cuda_device, seed):
    check_accuracy(DEFAULT_SLICE, engine, backend, cuda_device, seed, TOLERANCES["default_problem"])


@pytest.mark.parametrize("shape, engine", TABLE_ENGINE_PARAMS)
def test_shape_table(shape, engine, backend, cuda_device, seed):
    check_accuracy(shape, engine, backend, cuda_device, seed, TOLERANCES["shape_table"])


@pytest.mark.parametrize(
    "shape, engine", TABLE_ENGINE_PARAMS + [pytest.param(DEFAULT_SLICE, e, id=f"default-slice-{e}") for e in ENGINES]
)
def test_backends_bitwise_equal(shape, engine, both_backends, cuda_device, seed):
    x, p = inputs(shape, cuda_device, seed)
    a = fused(x, p, shape.G, backend="torch", engine=engine, out=poisoned(out_shape(*shape), x))
    b = fused(x, p, shape.G, backend="cupy", engine=engine, out=poisoned(out_shape(*shape), x))
    torch.cuda.synchronize()
    assert bool(torch.isfinite(a).all()), "torch backend left NaN/inf in the output"
    assert_bitwise_equal(a, b, f"torch vs cupy backend, engine={engine}, {tuple(shape)}")


@pytest.mark.parametrize("engine", ENGINES)
def test_deterministic(backend, engine, cuda_device, seed):
    """The same input gives the same bits every run (no floating-point atomics), with or without out=."""
    shape = DEFAULT_SLICE
    x, p = inputs(shape, cuda_device, seed)
    first = fused(x, p, shape.G, backend=backend, engine=engine, out=poisoned(out_shape(*shape), x))
    assert bool(torch.isfinite(first).all())
    for run in range(2):
        again = fused(x, p, shape.G, backend=backend, engine=engine)
        assert_bitwise_equal(first, again, f"{backend} engine={engine}: run {run + 2} differs from run 1")


# (shape, tiles per block and sample, SMs the plan assumes): one tile held in registers, 7 samples over 5-6 teams (a
# second round in which most teams have no sample); two tiles, the first parked in the output until the statistics
# are known; C_out = 72: three 32-channel units per tile, all but the last parked; C_out = 16: 16-channel units,
# C_in = 11 in two k-steps, the first tile parked. With few SMs assumed, one team runs every sample, so a block parks
# and reads back units in round after round (the records' buffers alternating by round), with several tiles and
# chunks, and in the paired-taps build.
FUSED_LAYOUTS = [
    pytest.param(Shape(7, 8, 32, 130, 130, 3, 8), 1, None, id="held-only-2-rounds"),
    pytest.param(Shape(5, 8, 32, 30, 130, 3, 8), 2, None, id="park-1-of-2"),
    pytest.param(Shape(3, 5, 72, 23, 70, 3, 6), 3, None, id="Cout72-park"),
    pytest.param(Shape(3, 11, 16, 30, 130, 3, 4), 2, None, id="Cout16-park"),
    pytest.param(Shape(5, 8, 32, 30, 130, 3, 8), 2, 4, id="park-1-of-2-one-team"),
    pytest.param(Shape(3, 5, 72, 23, 70, 3, 6), 3, 2, id="Cout72-park-one-team"),
    pytest.param(Shape(3, 3, 64, 21, 70, 5, 16), 2, 2, id="Cin3-K5-park-one-team"),
]


@pytest.mark.parametrize("shape, tiles_per_block, sm_count", FUSED_LAYOUTS)
def test_fused_layouts(shape, tiles_per_block, sm_count, both_backends, cuda_device, seed, monkeypatch):
    """The single-pass kernel with a forced number of tiles per block (and, where given, planned for fewer SMs
    than the GPU has, so that fewer teams run more samples each): accurate, and bitwise equal on both backends."""
    import dataclasses

    import cupyfused.ops
    from cupyfused import plan as plan_module

    def forced(x_shape, C_out, K, G, device, *args, **kwargs):
        if sm_count:
            device = dataclasses.replace(device, sm_count=sm_count)
        return plan_module.make_plan(x_shape, C_out, K, G, device, *args, tiles_per_block=tiles_per_block, **kwargs)

    monkeypatch.setattr(cupyfused.ops, "make_plan", forced)
    x, p = inputs(shape, cuda_device, seed)
    plan = forced(tuple(x.shape), shape.C_out, shape.K, shape.G, DeviceInfo.from_torch(x.device.index), "fused")
    assert plan.engine == "fused" and plan.tiles_per_block == tiles_per_block, plan.describe()
    if sm_count:
        assert plan.teams == 1, plan.describe()
    outs = []
    for backend in ("torch", "cupy"):
        out = poisoned(out_shape(*shape), x)
        fused(x, p, shape.G, backend=backend, engine="fused", out=out)
        outs.append(out)
    torch.cuda.synchronize()
    ref = ref_of(x, p, shape.G)
    bound = TOLERANCES["shape_table"].bound(spec_forward(x, p, shape.G)[1])
    assert_close_to_ref(outs[0], ref, bound, context=plan.describe())
    assert_bitwise_equal(outs[0], outs[1], f"torch vs cupy backend, {plan.describe()}")


@pytest.mark.parametrize("engine", ENGINES)
def test_nan_input_poisons_its_sample_only(backend, engine, cuda_device, seed):
    """A NaN in one input pixel makes NaN exactly where the float64 reference does: the whole sample (the conv
    spreads it over every output channel near the pixel, so every group's statistics are NaN), and nothing in the
    other samples (whose statistics the fused kernel exchanges through the same workspace)."""
    shape = Shape(3, 8, 32, 40, 40, 3, 8)
    x, p = inputs(shape, cuda_device, seed)
    x[1, 3, 17, 22] = float("nan")
    out = poisoned(out_shape(*shape), x)
    fused(x, p, shape.G, backend=backend, engine=engine, out=out)
    torch.cuda.synchronize()
    ref = ref_of(x, p, shape.G)
    assert bool(torch.isnan(ref[1]).all()) and not bool(torch.isnan(ref[0::2]).any()), "reference changed"
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), f"{backend} engine={engine}: NaN pattern differs"


@pytest.mark.parametrize("with_out", [False, True], ids=["alloc", "out"])
def test_empty_batch(backend, cuda_device, with_out):
    shape = Shape(0, 8, 32, 16, 16, 3, 8)
    x, p = inputs(shape, cuda_device, None)
    expected = Model(shape.C_in, shape.C_out, shape.K, shape.G, (shape.C_out, 1, 1), (shape.C_out, 1, 1))(x.cpu())
    kw = dict(out=torch.empty(out_shape(*shape), device=cuda_device)) if with_out else {}
    res = fused(x, p, shape.G, backend=backend, **kw)
    assert isinstance(res, torch.Tensor)
    assert res.shape == expected.shape and res.dtype == torch.float32 and res.device == x.device


# Views with the values of a contiguous x but other strides.
def _transposed(x):
    return x.transpose(2, 3).contiguous().transpose(2, 3)


def _sliced(x):
    N, C, H, W = x.shape
    big = torch.rand(2 * N, C + 3, H + 5, W + 7, device=x.device)
    view = big[::2, 1 : C + 1, 2 : H + 2, 3 : W + 3]
    view.copy_(x)
    return view


def _batch_broadcast(x):
    return x[:1].expand(x.shape)  # stride 0 along N: every sample is sample 0


STRIDED = {
    "transposed-HW": _transposed,
    "channels-last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "sliced-with-offset": _sliced,
    "batch-stride-0": _batch_broadcast,
}


@pytest.mark.parametrize("make_view", list(STRIDED.values()), ids=list(STRIDED))
def test_strided_input_same_bits_as_contiguous(make_view, backend, cuda_device, seed):
    shape = Shape(2, 8, 32, 21, 70, 3, 8)
    x, p = inputs(shape, cuda_device, seed)
    view = make_view(x)
    assert not view.is_contiguous()
    dense = view.contiguous()
    a = fused(view, p, shape.G, backend=backend, out=poisoned(out_shape(*shape), x))
    b = fused(dense, p, shape.G, backend=backend, out=poisoned(out_shape(*shape), x))
    torch.cuda.synchronize()
    assert_close_to_ref(
        b, ref_of(dense, p, shape.G), TOLERANCES["shape_table"].bound(spec_forward(dense, p, shape.G)[1])
    )
    assert_bitwise_equal(a, b, f"{backend}: strided x {tuple(view.stride())} vs its contiguous copy")


@pytest.mark.parametrize("grad_mode", ["enabled", "no_grad"])
def test_inputs_requiring_grad(backend, cuda_device, seed, grad_mode):
    """Parameters (and x) that require grad are fine in inference; the result has no autograd history."""
    shape = Shape(2, 8, 32, 20, 22, 3, 8)
    x, p = inputs(shape, cuda_device, seed)
    plain = fused(x, p, shape.G, backend=backend)
    pg = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    xg = x.clone().requires_grad_(True)
    with torch.no_grad() if grad_mode == "no_grad" else contextlib.nullcontext():
        res = fused(xg, pg, shape.G, backend=backend)
    assert res.grad_fn is None and not res.requires_grad
    assert_bitwise_equal(res, plain, f"{backend}: parameters requiring grad change the result")


def _cupy():
    try:
        import cupy
    except ImportError as e:
        skip_or_fail(f"CuPy is not importable: {e}")
    return cupy


def test_cupy_arrays_in_cupy_array_out(backend, cuda_device, seed):
    cp = _cupy()
    shape = Shape(2, 8, 32, 23, 40, 3, 8)
    x, p = inputs(shape, cuda_device, seed)
    xc, pc = cp.from_dlpack(x), {k: cp.from_dlpack(v) for k, v in p.items()}
    res = fused(xc, pc, shape.G, backend=backend)
    assert isinstance(res, cp.ndarray), f"CuPy in must give CuPy out; got {type(res)}"
    assert res.dtype == cp.float32 and res.shape == out_shape(*shape) and res.device.id == x.device.index
    out = poisoned(out_shape(*shape), xc)
    res_out = fused(xc, pc, shape.G, backend=backend, out=out)
    assert isinstance(res_out, cp.ndarray) and res_out.data.ptr == out.data.ptr
    transposed = cp.ascontiguousarray(xc.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    res_t = fused(transposed, pc, shape.G, backend=backend)
    cp.cuda.get_current_stream().synchronize()
    ref = ref_of(x, p, shape.G)
    bound = TOLERANCES["shape_table"].bound(spec_forward(x, p, shape.G)[1])
    assert_close_to_ref(res, ref, bound, context=f"{backend}: CuPy arrays")
    assert_bitwise_equal(res_out, res, f"{backend}: CuPy with out= vs without")
    assert_bitwise_equal(res_t, res, f"{backend}: transposed CuPy array vs contiguous")
    assert_bitwise_equal(res, fused(x, p, shape.G, backend=backend), f"{backend}: CuPy arrays vs torch tensors")
    empty = fused(xc[:0], pc, shape.G, backend=backend)
    assert isinstance(empty, cp.ndarray) and empty.shape == (0,) + out_shape(*shape)[1:]


LONG_OP_N = 4096  # a 4096^3 float32 matmul: a few ms on an H100, so a launch on the wrong stream runs too early


def test_torch_current_stream(backend, cuda_device, seed):
    """Under torch.cuda.stream(side), right after a long torch op and a write of x on side, the kernels run
    after the write and before a read of the output on side."""
    shape = Shape(4, 8, 32, 64, 64, 3, 8)
    x_src, p = inputs(shape, cuda_device, seed)
    x = torch.full_like(x_src, float("nan"))
    out = poisoned(out_shape(*shape), x)
    a = torch.full((LONG_OP_N, LONG_OP_N), 1e-4, device=cuda_device)
    torch.cuda.synchronize()
    side = torch.cuda.Stream(cuda_device)
    with torch.cuda.stream(side):
        acc = a
        for _ in range(6):
            acc = acc @ a
        x.copy_(x_src)
        res = fused(x, p, shape.G, backend=backend, out=out)
        seen = out.clone()  # read on side right after the launch
    torch.cuda.synchronize()
    assert res.data_ptr() == out.data_ptr()
    bound = TOLERANCES["shape_table"].bound(spec_forward(x_src, p, shape.G)[1])
    ref = ref_of(x_src, p, shape.G)
    assert_close_to_ref(seen, ref, bound, context=f"{backend}: output as read on the side stream")
    assert_bitwise_equal(seen, out, f"{backend}: output changed after the side stream read it")


@pytest.mark.parametrize("engine", ["auto", "mma"])
def test_cuda_graph_capture(backend, engine, cuda_device, seed):
    """A forward captured by torch.cuda.graph and replayed on new input data gives the bits of a direct call:
    the workspace and every launch of the plan are captured on torch's stream (the fused kernel's flags are
    cleared by a captured cf_prep, so replays do not see the previous run's)."""
    shape = Shape(4, 8, 32, 64, 64, 3, 8)
    x, p = inputs(shape, cuda_device, seed)
    x_new, _ = inputs(shape, cuda_device, seed + 1)
    out = poisoned(out_shape(*shape), x)
    fused(x, p, shape.G, backend=backend, engine=engine, out=out)  # builds and plans outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fused(x, p, shape.G, backend=backend, engine=engine, out=out)
    for src in (x_new, x):
        x.copy_(src)
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        want = fused(src.clone(), p, shape.G, backend=backend, engine=engine)
        assert_bitwise_equal(out, want, f"{backend} engine={engine}: graph replay vs a direct call")


def test_cupy_current_stream(backend, cuda_device, seed):
    """CuPy arrays: the kernels run on CuPy's current stream (the same check with a CuPy non-blocking stream)."""
    cp = _cupy()
    shape = Shape(4, 8, 32, 64, 64, 3, 8)
    x_src, p = inputs(shape, cuda_device, seed)
    xs, pc = cp.from_dlpack(x_src), {k: cp.from_dlpack(v) for k, v in p.items()}
    with cp.cuda.Device(cuda_device.index):
        x = cp.full(xs.shape, cp.nan, dtype=cp.float32)
        out = poisoned(out_shape(*shape), x)
        a = cp.full((LONG_OP_N, LONG_OP_N), 1e-4, dtype=cp.float32)
        torch.cuda.synchronize()
        cp.cuda.Device().synchronize()
        side = cp.cuda.Stream(non_blocking=True)
        with side:
            acc = a
            for _ in range(6):
                acc = acc @ a
            x[...] = xs
            fused(x, pc, shape.G, backend=backend, out=out)
            seen = out.copy()
        side.synchronize()
    bound = TOLERANCES["shape_table"].bound(spec_forward(x_src, p, shape.G)[1])
    assert_close_to_ref(to_torch(seen), ref_of(x_src, p, shape.G), bound, context=f"{backend}: CuPy side stream")


def test_second_device(backend, cuda_device, seed):
    """x on cuda:1 while cuda:0 is current: the result is computed on x's device, correctly."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA GPUs; this machine has {torch.cuda.device_count()}")
    dev1 = torch.device("cuda", 1)
    shape = Shape(2, 8, 32, 37, 41, 3, 8)
    with torch.cuda.device(0):
        x, p = inputs(shape, dev1, seed)
        out = poisoned(out_shape(*shape), x)
        res = fused(x, p, shape.G, backend=backend, out=out)
        fresh = fused(x, p, shape.G, backend=backend)
        assert fresh.device == dev1
        torch.cuda.synchronize(dev1)
        bound = TOLERANCES["shape_table"].bound(spec_forward(x, p, shape.G)[1])
        assert_close_to_ref(res, ref_of(x, p, shape.G), bound, context=f"{backend} on cuda:1")
        assert_bitwise_equal(fresh, res, f"{backend} on cuda:1, allocated vs out=")
        p0 = dict(p, conv_weight=p["conv_weight"].to("cuda:0"))
        with pytest.raises(ValueError, match="device"):
            fused(x, p0, shape.G, backend=backend)
