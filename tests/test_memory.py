"""Extra device memory at the peak of a forward on the full default problem (N=128), both allocators counted:
nothing of the output's size may be allocated beside the output (issue 2: <= output + 1 MiB)."""

import pytest
import torch
from utils import TOLERANCES, assert_close_to_ref, fused, out_shape, report, spec_forward

from cupyfused.reference import make_inputs, reference_forward

pytestmark = pytest.mark.gpu

MIB = 1 << 20
SHAPE = (128, 8, 32, 256, 256, 3, 8)  # SPEC.md's default problem: N, C_in, C_out, H, W, K, G


def _cupy_pool():
    try:
        import cupy
    except ImportError:
        return None
    return cupy.get_default_memory_pool()


def peak_extra_bytes(fn, device):
    """Run fn(); return (result, bytes torch's allocator peaked above its start, bytes CuPy's pool grew).
    CuPy's pool is emptied first, so its total_bytes() growth is all that the call allocated through it."""
    pool = _cupy_pool()
    torch.cuda.synchronize(device)
    if pool is not None:
        pool.free_all_blocks()
        pool_before = pool.total_bytes()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    torch_extra = torch.cuda.max_memory_allocated(device) - before
    cupy_extra = pool.total_bytes() - pool_before if pool is not None else 0
    return result, torch_extra, cupy_extra


@pytest.mark.parametrize("with_out", [False, True], ids=["alloc", "out"])
def test_peak_memory_default_problem(backend, cuda_device, seed, with_out):
    free, _ = torch.cuda.mem_get_info(cuda_device)
    if free < 4 << 30:
        pytest.skip(f"needs 4 GiB of free GPU memory for the default problem; {free / (1 << 30):.1f} GiB free")
    N, C_in, C_out, H, W, K, G = SHAPE
    x, p = make_inputs(*SHAPE, device=cuda_device, seed=seed)
    fused(x[:1], p, G, backend=backend)  # build/load the kernels first: not part of the forward's memory
    out_bytes = 4 * N * C_out * (H - K + 1) * (W - K + 1)
    out = torch.empty(out_shape(*SHAPE), device=cuda_device) if with_out else None

    res, torch_extra, cupy_extra = peak_extra_bytes(lambda: fused(x, p, G, backend=backend, out=out), cuda_device)
    extra = torch_extra + cupy_extra
    allowed = (0 if with_out else out_bytes) + MIB
    report(
        "peak memory, default problem",
        f"{backend} {'out=' if with_out else 'allocating'}: extra {extra / MIB:.2f} MiB "
        f"(torch {torch_extra / MIB:.2f} + CuPy pool {cupy_extra / MIB:.2f}), allowed {allowed / MIB:.2f} MiB",
    )
    assert extra <= allowed, (
        f"{backend}: {extra / MIB:.2f} MiB extra at the peak (torch {torch_extra / MIB:.2f}, CuPy pool "
        f"{cupy_extra / MIB:.2f}); allowed {allowed / MIB:.2f} MiB = {'' if with_out else 'output + '}1 MiB"
    )

    # and the full-batch result is right at both ends of the batch (128 samples, 132 output MiB per 16)
    idx = torch.tensor([0, 1, N - 1], device=cuda_device)
    ref = reference_forward(x[idx], **p, num_groups=G)
    bound = TOLERANCES["default_problem"].bound(spec_forward(x[idx], p, G)[1])
    assert_close_to_ref(res[idx], ref, bound, context=f"{backend}: N=128, samples 0, 1, 127")
