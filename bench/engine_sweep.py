"""Development aid: times the engines (and the fused kernel's tiles per block) on the default problem through
both backends with CUDA-graph replay (no host overhead), after checking each against float64 on a slice.

    python bench/engine_sweep.py [--backend cupy|torch] [--reps 20] [--variants fused,fused:1,mma+CF_MIN_BLOCKS=4]
                                 [--sm-count 108]

A variant is engine[:tiles per block][+NAME=VALUE...]; NAME=VALUE sets a compile-time constant (CF_WARPS and CF_MT
also set the plan's tile shape, CF_NT its chunk width where C_out > 16, CF_MIN_BLOCKS its blocks per SM).
--sm-count plans as if the GPU had that many SMs (108: the layouts an A100 gets, run on this GPU).
"""

import argparse
import dataclasses
import functools

import torch

import cupyfused
from cupyfused import ops, plan
from cupyfused.reference import DEFAULT_PROBLEM, make_inputs, reference_forward

ap = argparse.ArgumentParser()
ap.add_argument("--backend", default="cupy")
ap.add_argument("--reps", type=int, default=20)
ap.add_argument("--variants", default="fused:1,fused:2,fused:4,mma")
ap.add_argument("--sm-count", type=int, default=0)
args = ap.parse_args()


def planner(x_shape, C_out, K, G, device, engine="auto", eps=1e-5, tiles_per_block=None):
    if args.sm_count:
        device = dataclasses.replace(device, sm_count=args.sm_count)
    return plan.make_plan(x_shape, C_out, K, G, device, engine, eps, tiles_per_block)


d = DEFAULT_PROBLEM
x, p = make_inputs(d["N"], d["C_in"], d["C_out"], d["H"], d["W"], d["K"], d["G"], "cuda")
ref = reference_forward(x[:4], *p.values(), d["G"])
OH, OW = d["H"] - d["K"] + 1, d["W"] - d["K"] + 1
out = torch.empty(d["N"], d["C_out"], OH, OW, device="cuda")
results = {}
BLOCKS_PER_SM, WARPS, MT, NT, DEFINES = plan.MMA_BLOCKS_PER_SM, plan.WARPS, plan.MT, plan.NT, plan.DEFAULT_DEFINES
for variant in args.variants.split(","):
    variant, *dev = variant.split("+")  # engine[:tiles per block][+NAME=VALUE...]: compile-time constants
    engine, _, k = variant.partition(":")
    extra = {}
    for m in dev:
        name, _, value = m.partition("=")
        extra[name] = value or 1
    # The plan's tile geometry follows CF_WARPS and CF_MT, so that other tile shapes can be timed too.
    plan.WARPS, plan.MT = int(extra.get("CF_WARPS", WARPS)), int(extra.get("CF_MT", MT))
    plan.TILE_H, plan.TILE_W, plan.THREADS = plan.WARPS, 16 * plan.MT, 32 * plan.WARPS
    plan.DEFAULT_DEFINES = dict(DEFINES, **dict(extra, CF_WARPS=plan.WARPS, CF_MT=plan.MT))
    plan.MMA_BLOCKS_PER_SM = int(extra.get("CF_MIN_BLOCKS", BLOCKS_PER_SM))
    plan.NT = int(extra.get("CF_NT", NT))
    variant = "+".join([variant] + dev)
    ops.make_plan = functools.partial(planner, tiles_per_block=int(k) if k else None)
    shape = (d["N"], d["C_in"], d["H"], d["W"])
    info = plan.DeviceInfo.from_torch(0)
    print(variant, ops.make_plan(shape, d["C_out"], d["K"], d["G"], info, engine).describe())
    f = functools.partial(cupyfused.fused_forward, x, *p.values(), d["G"], backend=args.backend, engine=engine, out=out)
    out.fill_(float("nan"))
    f()
    torch.cuda.synchronize()
    err = (out[:4].double() - ref).abs().max().item()
    first = out.clone()
    f()
    same = torch.equal(first, out)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        f()
    ts = []
    for _ in range(args.reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1))
    ms = sorted(ts)[len(ts) // 2]
    results[variant] = first
    print(
        f"{variant:10s} {args.backend}: {ms:.3f} ms (graph replay), max_abs {err:.2e}, rerun bitwise {same}", flush=True
    )
    ops.make_plan = plan.make_plan
keys = list(results)
for k in keys[1:]:
    print(
        f"{keys[0]} vs {k}: bitwise {torch.equal(results[keys[0]], results[k])}, "
        f"max diff {(results[keys[0]] - results[k]).abs().max().item():.2e}"
    )
