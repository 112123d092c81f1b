"""One warm-up forward and one profiled forward of the default problem (run under ncu; see bench/NOTES.md)."""

import sys

import torch

import cupyfused
from cupyfused.reference import DEFAULT_PROBLEM, make_inputs

backend = sys.argv[1] if len(sys.argv) > 1 else "torch"
d = DEFAULT_PROBLEM
x, p = make_inputs(d["N"], d["C_in"], d["C_out"], d["H"], d["W"], d["K"], d["G"], "cuda")
for _ in range(2):
    out = cupyfused.fused_forward(x, *p.values(), d["G"], backend=backend)
torch.cuda.synchronize()
print("done", out.shape)
