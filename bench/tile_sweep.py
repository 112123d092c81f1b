"""Times the cupy backend on the default problem for a few tile shapes (CF_WARPS, CF_MT); a development aid
for choosing plan.WARPS / plan.MT (NVRTC builds each variant in seconds)."""

import torch

import cupyfused
from cupyfused import plan
from cupyfused.reference import DEFAULT_PROBLEM, make_inputs, reference_forward

d = DEFAULT_PROBLEM
x, p = make_inputs(d["N"], d["C_in"], d["C_out"], d["H"], d["W"], d["K"], d["G"], "cuda")
ref = reference_forward(x[:4], *p.values(), d["G"])
out = torch.empty(d["N"], d["C_out"], 254, 254, device="cuda")
for warps, mt in ((8, 4), (4, 4), (8, 2), (4, 2)):
    plan.WARPS, plan.MT = warps, mt
    plan.DEFAULT_DEFINES = {"CF_WARPS": warps, "CF_MT": mt}
    plan.TILE_H, plan.TILE_W, plan.THREADS = warps, 16 * mt, 32 * warps
    f = lambda: cupyfused.fused_forward(x, *p.values(), d["G"], backend="cupy", out=out)  # noqa: E731
    f()
    err = (out[:4].double() - ref).abs().max().item()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        f()
    ts = []
    for _ in range(15):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1))
    ms = sorted(ts)[7]
    print(f"WARPS={warps} MT={mt}: {ms:.3f} ms (graph replay, no host overhead), max_abs {err:.2e}", flush=True)
