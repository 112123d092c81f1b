"""Host time of one fused_forward call at small batches, and of its parts (development aid, bench/NOTES.md).

Host wall time per call with no sync between calls (what a host-bound benchmark row measures), for eager
PyTorch and both cupyfused backends, then the torch backend's parts timed one by one.

    python bench/host_profile.py [N ...]
"""

import sys
import time

import torch

import cupyfused
from cupyfused import _torch_backend, ops
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


def profile(n):
    x, p = make_inputs(n, d["C_in"], d["C_out"], d["H"], d["W"], d["K"], d["G"], "cuda")
    model = Model(d["C_in"], d["C_out"], d["K"], d["G"], (d["C_out"], 1, 1), (d["C_out"], 1, 1)).cuda()
    with torch.no_grad():
        print(f"N={n} eager: {per_call_us(lambda: model(x)):.1f} us/call host")
    for backend in ("torch", "cupy"):
        fn = lambda b=backend: cupyfused.fused_forward(x, *p.values(), d["G"], backend=b)  # noqa: E731
        print(f"N={n} cupyfused-{backend}: {per_call_us(fn):.1f} us/call host")

    # The torch backend's parts.
    params = dict(p)
    kind, dev, x_shape, C_out, K = ops._validate(x, params, d["G"], 1e-5, "torch", "auto", None)
    out_shape = (n, C_out, d["H"] - K + 1, d["W"] - K + 1)
    plan = ops._plan(x.shape, C_out, K, d["G"], ops._device_info("torch", dev), "auto", 1e-5)
    out = torch.empty(out_shape, device="cuda")
    ws = torch.empty(plan.workspace_shape, dtype=torch.float64, device="cuda")
    bufs = ops._buffers(x, params, C_out, ws, out, None)
    args = plan.args(bufs, x.stride())
    mod = _torch_backend.module(dev, plan.defines, None)
    packed = _torch_backend._PACK.pack(*[v.data_ptr() if t == "p" else v for t, v in args])
    specs = [(ln.kernel, ln.grid[0], ln.block[0], ln.smem_bytes, ln.cooperative) for ln in plan.launches]
    parts = {
        "validate": lambda: ops._validate(x, params, d["G"], 1e-5, "torch", "auto", None),
        "torch.empty(out)": lambda: torch.empty(out_shape, device=x.device),
        "torch.empty(ws)": lambda: torch.empty(plan.workspace_shape, dtype=torch.float64, device=x.device),
        "plan lookup": lambda: ops._plan(x.shape, C_out, K, d["G"], ops._device_info("torch", dev), "auto", 1e-5),
        "buffers": lambda: ops._buffers(x, params, C_out, ws, out, None),
        "plan.args": lambda: plan.args(bufs, x.stride()),
        "pack": lambda: _torch_backend._PACK.pack(*[v.data_ptr() if t == "p" else v for t, v in args]),
        "cf_run(both)": lambda: mod.cf_run(dev, tuple(specs), packed),
        "cf_run(cf_prep)": lambda: mod.cf_run(dev, (specs[0],), packed),
        "cf_run(fused)": lambda: mod.cf_run(dev, (specs[-1],), packed),
        "backend launch": lambda: _torch_backend.launch(plan, args, dev),
    }
    for name, fn in parts.items():
        print(f"N={n}   {name}: {per_call_us(fn):.1f} us")


for n in [int(v) for v in sys.argv[1:]] or [1, 8]:
    profile(n)
