"""The launch plan: the one place that decides kernels, grid, block, shared memory, workspace and the
compile-time constants. Both launchers (``_torch_backend``, ``_cupy_backend``) only consume it, so the two
backends run the same kernels with the same arguments and give the same bits.

Limitations of the fast path (engine ``"mma"``): its input tile (8 channels x (8 + K - 1) x (64 + K - 1)) and one
weight chunk (32 x 8 x K x K), both split into two TF32 halves, must fit in one block's shared memory. That holds
up to K = 7 on an A100, K = 8 on an H100 and K = 4 on GPUs with 99 KiB per block (sm_86, sm_89); larger kernels
run the ``"direct"`` engine (FP32 FMA from global memory, any shape), and the plan says so in
:meth:`Plan.describe`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

# Compile-time constants of cuda_src/cupyfused.cu (documented at its top).
WARPS = 4  # warps per block = output rows per tile (bench/tile_sweep.py: 4 beat 8 by 4% on an H100)
MT = 4  # m16 mma tiles per warp = 64 output columns per tile
DEFAULT_DEFINES = {"CF_WARPS": WARPS, "CF_MT": MT}
TILE_H, TILE_W = WARPS, 16 * MT
THREADS = 32 * WARPS

ENGINES = ("mma", "direct")
KERNELS = {e: (f"cf_stats_{e}", f"cf_norm_{e}") for e in ENGINES}
ALL_KERNELS = tuple(k for pair in KERNELS.values() for k in pair)

# The kernels' shared argument list, in order: (name, type code). p = device pointer, q = int64, i = int32,
# f = float32. Both launchers pack arguments from this table.
SIGNATURE = (
    ("x", "p"), ("sxn", "q"), ("sxc", "q"), ("sxh", "q"), ("sxw", "q"),
    ("w", "p"), ("conv_b", "p"), ("bias", "p"), ("scale", "p"), ("gamma", "p"), ("beta", "p"),
    ("partials", "p"), ("out", "p"),
    ("N", "i"), ("Cin", "i"), ("H", "i"), ("W", "i"), ("Cout", "i"), ("K", "i"), ("G", "i"),
    ("OH", "i"), ("OW", "i"), ("tiles_w", "i"), ("tiles_h", "i"), ("slots", "i"),
    ("in_rs", "i"), ("in_ps", "i"), ("wres", "i"),
    ("off_ch", "i"), ("off_red", "i"), ("off_xs", "i"), ("off_ws", "i"),
    ("eps", "f"),
)  # fmt: skip
BUFFERS = tuple(name for name, t in SIGNATURE if t == "p")

# Shared memory per block by compute capability, where the framework does not report it.
_SMEM_OPTIN_BY_CC = {(8, 0): 166912, (9, 0): 232448, (10, 0): 232448}
_SMEM_OPTIN_OTHER = 101376  # sm_86, sm_89, sm_120: 99 KiB

WORKSPACE_TARGET_BYTES = 1 << 20  # keep the statistics workspace under 1 MiB where the batch allows


class PerformanceWarning(UserWarning):
    """The plan falls back to a slower kernel for this shape."""


_WARNED: set = set()


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What the plan needs to know about a GPU."""

    name: str
    cc: tuple
    sm_count: int
    smem_optin: int  # dynamic shared memory one block may opt in to, bytes

    @classmethod
    def from_torch(cls, device) -> "DeviceInfo":
        import torch

        p = torch.cuda.get_device_properties(device)
        cc = (p.major, p.minor)
        smem = getattr(p, "shared_memory_per_block_optin", None)  # torch >= 2.3
        return cls(p.name, cc, p.multi_processor_count, int(smem or _smem_for(cc)))

    @classmethod
    def from_cupy(cls, device_id: int) -> "DeviceInfo":
        import cupy

        p = cupy.cuda.runtime.getDeviceProperties(device_id)
        name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
        cc = (int(p["major"]), int(p["minor"]))
        smem = int(p.get("sharedMemPerBlockOptin", 0)) or _smem_for(cc)
        return cls(name, cc, int(p["multiProcessorCount"]), smem)


def _smem_for(cc) -> int:
    return _SMEM_OPTIN_BY_CC.get(tuple(cc), _SMEM_OPTIN_OTHER)


def _align4(words: int) -> int:
    return (words + 3) & ~3


@dataclasses.dataclass(frozen=True)
class Plan:
    """One forward's launches. ``scalars`` maps the non-pointer arguments of :data:`SIGNATURE` to values."""

    engine: str
    kernels: tuple  # (stats kernel, norm kernel), launched in this order on one stream
    grid: tuple
    block: tuple
    smem_bytes: int
    slots: int
    workspace_shape: tuple  # float64 (N, G, slots, 3)
    out_shape: tuple
    scalars: dict
    defines: dict
    device: DeviceInfo

    @property
    def workspace_bytes(self) -> int:
        return 8 * math.prod(self.workspace_shape)

    def args(self, buffers: dict, x_strides) -> list:
        """The argument list as (type code, value) pairs; ``buffers`` maps pointer names to arrays/tensors."""
        values = dict(self.scalars, **buffers)
        values.update(zip(("sxn", "sxc", "sxh", "sxw"), x_strides))
        return [(t, values[name]) for name, t in SIGNATURE]

    def describe(self) -> str:
        conv = "3xTF32 tensor-core conv" if self.engine == "mma" else "FP32 FMA conv (fallback)"
        return (
            f"engine={self.engine} ({conv}); kernels {self.kernels[0]} -> {self.kernels[1]}; "
            f"grid {self.grid[0]} x {self.block[0]} threads, {self.smem_bytes / 1024:.1f} KiB shared, "
            f"{self.slots} block(s) per sample, workspace {self.workspace_bytes / 1024:.1f} KiB"
        )


def make_plan(x_shape, C_out: int, K: int, G: int, device: DeviceInfo, engine: str = "auto",
              eps: float = 1e-5) -> Plan:  # fmt: skip
    """Plan the two launches for input shape ``x_shape`` = (N, C_in, H, W). Shapes are validated by the caller."""
    if engine not in ("auto",) + ENGINES:
        raise ValueError(f"engine must be one of 'auto', 'mma', 'direct'; got {engine!r}")
    N, C_in, H, W = (int(v) for v in x_shape)
    OH, OW = H - K + 1, W - K + 1
    tiles_w, tiles_h = -(-OW // TILE_W), -(-OH // TILE_H)
    tiles = tiles_w * tiles_h

    # Shared memory, in 4-byte words. The input plane stride is 8 mod 32 so that an A fragment's four
    # channels x eight pixels fall in 32 different banks.
    in_rs = TILE_W + K - 1
    in_ps = (TILE_H + K - 1) * in_rs
    in_ps += (8 - in_ps) % 32
    off_ch = 6 * G * WARPS  # float64 (count, mean, M2) per warp and group
    off_red = off_ch + 5 * C_out
    off_xs = _align4(off_red + 2 * WARPS * 32)
    off_ws = _align4(off_xs + 16 * in_ps)
    mma_words = off_ws + 512 * K * K
    # The staging loop copies rows of at most 96 columns (cuda_src: CF_STAGE_ROWS).
    mma_fits = 4 * mma_words <= device.smem_optin and in_rs <= 96
    if engine == "mma" and not mma_fits:
        raise ValueError(
            f"engine='mma' needs {4 * mma_words} bytes of shared memory per block for K={K}, more than "
            f"{device.name} allows ({device.smem_optin}); use engine='direct' or 'auto'"
        )
    if engine == "auto":
        engine = "mma" if mma_fits else "direct"
        if engine == "direct" and (K, device.name) not in _WARNED:
            _WARNED.add((K, device.name))
            warnings.warn(
                f"cupyfused: K={K} does not fit the tensor-core engine's tile on {device.name}; using the slower "
                "FP32 'direct' engine (pass engine='direct' to silence this)",
                PerformanceWarning,
                stacklevel=3,
            )
    if engine == "direct":
        off_ws = off_xs  # no staged tiles
        words, per_sm = off_xs, 1
    else:
        words, per_sm = mma_words, max(1, 16 // WARPS)  # cuda_src: CF_MIN_BLOCKS

    # Blocks per sample: fill one wave of resident blocks, with the sample's tiles split evenly, and keep the
    # float64 statistics workspace (N x G x slots x 3) under 1 MiB where the batch allows.
    resident = device.sm_count * per_sm
    slots = max(1, min(tiles, resident // max(N, 1)))
    slots = max(1, min(slots, WORKSPACE_TARGET_BYTES // (24 * max(N, 1) * G)))
    slots = -(-tiles // -(-tiles // slots))  # same tile count per block

    wres = int(engine == "mma" and C_out <= 32 and C_in <= 8)
    scalars = dict(
        N=N, Cin=C_in, H=H, W=W, Cout=C_out, K=K, G=G, OH=OH, OW=OW, tiles_w=tiles_w, tiles_h=tiles_h,
        slots=slots, in_rs=in_rs, in_ps=in_ps, wres=wres, off_ch=off_ch, off_red=off_red, off_xs=off_xs,
        off_ws=off_ws, eps=float(eps),
    )  # fmt: skip
    return Plan(
        engine=engine,
        kernels=KERNELS[engine],
        grid=(N * slots, 1, 1),
        block=(THREADS, 1, 1),
        smem_bytes=4 * words,
        slots=slots,
        workspace_shape=(N, G, slots, 3),
        out_shape=(N, C_out, OH, OW),
        scalars=scalars,
        defines=dict(DEFAULT_DEFINES),
        device=device,
    )
