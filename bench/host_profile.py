"""Host time of one fused_forward call at small batches, and of its parts (development aid, bench/NOTES.md).

Host wall time per call with no sync between calls (what a host-bound benchmark row measures), for eager
PyTorch and both cupyfused backends (torch tensors in), then each backend's parts timed one by one.

    python bench/host_profile.py [--backends torch,cupy] [N ...]
"""

import sys
import time

import torch

import cupyfused
from cupyfused import _torch_backend, ops
from cupyfused.plan import ARG_SLOTS
from cupyfused.reference import DEFAULT_PROBLEM, Model, make_inputs

d = DEFAULT_PROBLEM
CALLS = 300


def per_call_us(fn, calls=CALLS):
    """Best of three rounds of `calls` calls, host time per call in microseconds."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - t0)
        torch.cuda.synchronize()
    return best / calls * 1e6


def profile(n, backends):
    x, p = make_inputs(n, d["C_in"], d["C_out"], d["H"], d["W"], d["K"], d["G"], "cuda")
    model = Model(d["C_in"], d["C_out"], d["K"], d["G"], (d["C_out"], 1, 1), (d["C_out"], 1, 1)).cuda()
    with torch.no_grad():
        print(f"N={n} eager: {per_call_us(lambda: model(x)):.1f} us/call host")
    for backend in backends:
        fn = lambda b=backend: cupyfused.fused_forward(x, *p.values(), d["G"], backend=b)  # noqa: E731
        print(f"N={n} cupyfused-{backend}: {per_call_us(fn):.1f} us/call host")
    params = dict(p)
    if "cupy" in backends:
        cupy_parts(n, x, params)
    if "torch" not in backends:
        return

    # The torch backend's parts.
    kind, dev, x_shape, C_out, K = ops._validate(x, params, d["G"], 1e-5, "torch", "auto", None)
    out_shape = (n, C_out, d["H"] - K + 1, d["W"] - K + 1)
    plan = ops._plan(x.shape, C_out, K, d["G"], ops._device_info("torch", dev), "auto", 1e-5)
    out = torch.empty(out_shape, device="cuda")
    ws = torch.empty(plan.workspace_shape, dtype=torch.float64, device="cuda")
    bufs = ops._buffers(x, params, C_out, ws, out, None)
    pointers = {k: v.data_ptr() for k, v in bufs.items()}
    values = plan.arg_values(pointers, x.stride())
    mod = _torch_backend.module(dev, plan.defines, None)
    packed = ARG_SLOTS.pack(*values)
    specs = [(ln.kernel, ln.grid[0], ln.block[0], ln.smem_bytes, ln.cooperative) for ln in plan.launches]
    parts = {
        "validate": lambda: ops._validate(x, params, d["G"], 1e-5, "torch", "auto", None),
        "torch.empty(out)": lambda: torch.empty(out_shape, device=x.device),
        "torch.empty(ws)": lambda: torch.empty(plan.workspace_shape, dtype=torch.float64, device=x.device),
        "plan lookup": lambda: ops._plan(x.shape, C_out, K, d["G"], ops._device_info("torch", dev), "auto", 1e-5),
        "buffers": lambda: ops._buffers(x, params, C_out, ws, out, None),
        "pointers": lambda: {k: v.data_ptr() for k, v in bufs.items()},
        "plan.arg_values": lambda: plan.arg_values(pointers, x.stride()),
        "pack": lambda: ARG_SLOTS.pack(*values),
        "cf_run(both)": lambda: mod.cf_run(dev, tuple(specs), packed),
        "cf_run(cf_prep)": lambda: mod.cf_run(dev, (specs[0],), packed),
        "cf_run(fused)": lambda: mod.cf_run(dev, (specs[-1],), packed),
        "backend launch": lambda: _torch_backend.launch(plan, bufs, x.stride(), dev),
    }
    for name, fn in parts.items():
        print(f"N={n}   {name}: {per_call_us(fn):.1f} us")


def enter_exit(ctx):
    ctx.__enter__()
    ctx.__exit__(None, None, None)


def cupy_parts(n, x, params):
    """The cupy backend's parts on torch tensors (ops._run_torch_input)."""
    import cupy

    from cupyfused import _cupy_backend

    kind, dev, x_shape, C_out, K = ops._validate(x, params, d["G"], 1e-5, "cupy", "auto", None)
    out_shape = (n, C_out, d["H"] - K + 1, d["W"] - K + 1)
    plan = ops._plan(x.shape, C_out, K, d["G"], ops._device_info("torch", dev), "auto", 1e-5)
    out = torch.empty(out_shape, device="cuda")
    stream = _cupy_backend.torch_stream(dev)
    with cupy.cuda.Device(dev), stream:
        xc, outc = _cupy_backend.view(x), _cupy_backend.view(out)
        pc = {k: ops._param_view(v, v) for k, v in params.items()}
        ws = cupy.empty(plan.workspace_shape, dtype=cupy.float64)
        bufs = ops._buffers(xc, pc, C_out, ws, outc, cupy)
        pointers = {k: v.data.ptr for k, v in bufs.items()}
        values = plan.arg_values(pointers, x.stride())
        parts = {
            "torch_stream (cached)": lambda: _cupy_backend.torch_stream(dev),
            "cupy Device+stream contexts": lambda: [enter_exit(c) for c in (cupy.cuda.Device(dev), stream)],
            "view(x)": lambda: _cupy_backend.view(x),
            "6 param views (cached)": lambda: [ops._param_view(v, v) for v in params.values()],
            "capturing": lambda: _cupy_backend.capturing(stream, dev),
            "cupy.empty(ws)": lambda: cupy.empty(plan.workspace_shape, dtype=cupy.float64),
            "buffers": lambda: ops._buffers(xc, pc, C_out, ws, outc, cupy),
            "pointers": lambda: {k: v.data.ptr for k, v in bufs.items()},
            "plan.arg_values": lambda: plan.arg_values(pointers, x.stride()),
            "pack args": lambda: ARG_SLOTS.pack(*values),
            "backend launch": lambda: _cupy_backend.launch(plan, bufs, x.stride(), dev, stream),
        }
        for name, fn in parts.items():
            print(f"N={n}   cupy {name}: {per_call_us(fn):.1f} us")


if __name__ == "__main__":
    argv = sys.argv[1:]
    chosen = ("torch", "cupy")
    if argv[:1] == ["--backends"]:
        chosen, argv = tuple(argv[1].split(",")), argv[2:]
    for n in [int(v) for v in argv] or [1, 8]:
        profile(n, chosen)
