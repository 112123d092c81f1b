"""compute-sanitizer memcheck and racecheck on small shapes, both backends, every engine (the persistent
single-pass kernel included: on these shapes it runs several teams and parks tiles), in a child process
with the caching allocators off (INTEROP.md: a pool hides out-of-bounds accesses). The child launches no
torch kernel of its own (inputs are copied in from the host), so every report is about cupyfused; the
parent checks that the sanitized run's outputs are right, so a run that computed nothing cannot pass."""

import re
import shutil
import subprocess

import pytest
import torch
from utils import PYTHON, TOLERANCES, assert_close_to_ref, fused, skip_or_fail, spec_forward, subprocess_env

from cupyfused.reference import make_inputs, reference_forward

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

# (N, C_in, C_out, H, W, K, G): partial tiles both ways, C_in not a multiple of 4, groups of 10 straddling
# the 32-channel chunk; an even K with a narrow image and C_in = 3 (paired taps); the 16-channel-chunk build with
# two input k-steps.
SHAPES = [(2, 5, 40, 19, 70, 3, 4), (1, 3, 32, 11, 9, 4, 8), (2, 11, 16, 19, 70, 3, 4)]
ENGINES = ("fused", "mma", "direct")

CHILD = r"""
import sys
import torch
backend, out_dir, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    import cupy
    cupy.cuda.set_allocator(None)  # no pool: the sanitizer sees each allocation's real bounds
except ImportError:
    pass
import cupyfused
from cupyfused.reference import make_inputs
SHAPES = {shapes!r}
NAMES = ("conv_weight", "conv_bias", "bias", "scale", "gn_weight", "gn_bias")
for i, (N, C_in, C_out, H, W, K, G) in enumerate(SHAPES):
    x, p = make_inputs(N, C_in, C_out, H, W, K, G, device="cpu", seed=seed + i)
    x, p = x.cuda(), {{k: v.cuda() for k, v in p.items()}}  # host-to-device copies, no kernels
    for engine in {engines!r}:
        out = torch.full((N, C_out, H - K + 1, W - K + 1), float("nan")).cuda()
        cupyfused.fused_forward(x, *(p[k] for k in NAMES), G, backend=backend, engine=engine, out=out)
        torch.cuda.synchronize()
        torch.save(out.cpu(), f"{{out_dir}}/{{i}}_{{engine}}.pt")
print("SANITIZED CHILD DONE", flush=True)
""".format(shapes=SHAPES, engines=ENGINES)


def summary_errors(tool: str, log: str):
    """The error/hazard counts compute-sanitizer printed, or None if it printed no summary."""
    if tool == "racecheck":
        m = re.search(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", log)
        if m:
            return int(m.group(1)) + int(m.group(2)) + int(m.group(3))
    m = re.search(r"ERROR SUMMARY: (\d+) errors?", log)
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer(tool, backend, cuda_device, seed, tmp_path):
    sanitizer = shutil.which("compute-sanitizer")
    if sanitizer is None:
        skip_or_fail("compute-sanitizer is not on PATH (it ships with the CUDA toolkit)")
    # build or load the kernels here first, so the sanitized child only loads them
    x, p = make_inputs(*SHAPES[0], device=cuda_device)
    for engine in ENGINES:
        fused(x, p, SHAPES[0][-1], backend=backend, engine=engine)
    torch.cuda.synchronize()

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    cmd = [sanitizer, "--tool", tool, "--error-exitcode", "1", PYTHON, str(script), backend, str(tmp_path), str(seed)]
    env = subprocess_env(PYTORCH_NO_CUDA_MEMORY_CACHING=1)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    log = r.stdout + r.stderr
    count = summary_errors(tool, log)
    assert r.returncode == 0 and count == 0, f"{' '.join(cmd)} -> exit {r.returncode}, errors {count}\n{log[-8000:]}"
    assert "SANITIZED CHILD DONE" in r.stdout, log[-8000:]

    for i, shape in enumerate(SHAPES):
        x, p = make_inputs(*shape, device="cpu", seed=seed + i)
        ref = reference_forward(x, **p, num_groups=shape[-1])
        bound = TOLERANCES["shape_table"].bound(spec_forward(x, p, shape[-1])[1])
        for engine in ENGINES:
            out = torch.load(tmp_path / f"{i}_{engine}.pt")
            assert_close_to_ref(out, ref, bound, context=f"{tool} run, {backend} engine={engine} {shape}")
