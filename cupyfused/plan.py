"""The launch plan: the one place that decides kernels, grid, block, shared memory, workspace and the
compile-time constants. Both launchers (``_torch_backend``, ``_cupy_backend``) only consume it, so the two
backends run the same kernels with the same arguments and give the same bits.

Engines (``engine="auto"`` picks the first that applies):

- ``"fused"``: one pass over DRAM. A persistent, cooperatively launched kernel (``cf_fused_mma``, 3xTF32
  tensor-core conv) whose blocks keep their tiles on chip while the blocks of a sample exchange the GroupNorm
  statistics, then normalize and write (cuda_src/cupyfused.cu). Needs the mma tile to fit (below) and a sample
  whose output, apart from the tiles held in registers, fits in half the L2 cache across the samples in flight.
- ``"mma"``: two passes with the same 3xTF32 conv (statistics, then conv again + normalize); the fallback for
  very large images.
- ``"direct"``: the same two passes with an FP32 FMA conv from global memory, any shape.

The output channels are computed in chunks of 32 (``CF_NT`` = 4 n8 mma tiles), or of 16 where C_out <= 16
(``CF_NT`` = 2); where C_in <= 4 and K > 1 one 8-channel k-step carries two taps of a row (``CF_PAIR`` = 1).
:func:`make_plan` puts both choices in :attr:`Plan.defines` (four builds in all: :func:`build_variants`) and
sizes shared memory to match. The mma tile (8 channels x (4 + K - 1) x (64 + K - 1) input pixels and one
CW x 8 x K x K weight chunk, CW the chunk width, both split into two TF32 halves; with paired taps K x (K + 1) / 2
k-steps of weights instead of K x K) must fit in one block's shared memory: with 32-channel chunks and C_in > 4
up to K = 7 on an A100, K = 9 on an H100 and K = 5 on GPUs with 99 KiB per block (sm_86, sm_89); with 16-channel
chunks up to K = 10, 12 and 7. The mma engines' first launch, ``cf_prep``, writes every chunk's split weights to
the workspace once per forward. A fallback is announced once per shape class with a
:class:`PerformanceWarning` and always named by :meth:`Plan.describe`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct
import warnings

# Compile-time constants of cuda_src/cupyfused.cu (documented at its top).
WARPS = 4  # warps per block = output rows per tile (4 beat 8 by 4% on an H100: bench/NOTES.md step f)
MT = 4  # m16 mma tiles per warp = 64 output columns per tile
NT = 4  # n8 mma tiles per output-channel chunk = 32 channels per chunk
NT_NARROW = 2  # make_plan's choice where C_out <= 8 * NT_NARROW: 16-channel chunks, no work on padding channels
DEFAULT_DEFINES = {"CF_WARPS": WARPS, "CF_MT": MT, "CF_NT": NT, "CF_PAIR": 0}
TILE_H, TILE_W = WARPS, 16 * MT
THREADS = 32 * WARPS
MMA_BLOCKS_PER_SM = 3  # cuda_src: CF_MIN_BLOCKS, the register budget of the mma kernels (168 a thread)

ENGINES = ("fused", "mma", "direct")
KERNELS = {  # in launch order; cf_prep: the split weights of every chunk, the fused kernel's arrival counts cleared
    "fused": ("cf_prep", "cf_fused_mma"),
    "mma": ("cf_prep", "cf_stats_mma", "cf_norm_mma"),
    "direct": ("cf_stats_direct", "cf_norm_direct"),
}
ALL_KERNELS = tuple(dict.fromkeys(k for e in ENGINES for k in KERNELS[e]))

# The kernels' shared argument list, in order: (name, type code). p = device pointer, q = int64, i = int32,
# f = float32. Both launchers pack arguments from this table.
SIGNATURE = (
    ("x", "p"), ("sxn", "q"), ("sxc", "q"), ("sxh", "q"), ("sxw", "q"),
    ("w", "p"), ("conv_b", "p"), ("bias", "p"), ("scale", "p"), ("gamma", "p"), ("beta", "p"),
    ("partials", "p"), ("out", "p"),
    ("N", "i"), ("Cin", "i"), ("H", "i"), ("W", "i"), ("Cout", "i"), ("K", "i"), ("G", "i"),
    ("OH", "i"), ("OW", "i"), ("tiles_w", "i"), ("tiles_h", "i"), ("slots", "i"), ("teams", "i"),
    ("in_rs", "i"), ("in_ps", "i"), ("wres", "i"),
    ("off_ch", "i"), ("off_red", "i"), ("off_xs", "i"), ("off_ws", "i"), ("off_wp", "q"),
    ("eps", "f"),
)  # fmt: skip
BUFFERS = tuple(name for name, t in SIGNATURE if t == "p")
_X_STRIDES = ("sxn", "sxc", "sxh", "sxw")
# How both launchers hand the arguments to the driver: each in an 8-byte little-endian slot (pointer, int64, or an
# int32 / float32 in the slot's first 4 bytes), one pointer per slot in the launch's parameter array.
ARG_SLOTS = struct.Struct("<" + "".join({"p": "Q", "q": "q", "i": "i4x", "f": "f4x"}[t] for _, t in SIGNATURE))

# Shared memory by compute capability, where the framework does not report it: per block (opt-in), per SM.
_SMEM_OPTIN_BY_CC = {(8, 0): 166912, (9, 0): 232448, (10, 0): 232448}
_SMEM_OPTIN_OTHER = 101376  # sm_86, sm_89, sm_120: 99 KiB
_SMEM_SM_BY_CC = {(8, 0): 167936, (9, 0): 233472, (10, 0): 233472}
_SMEM_SM_OTHER = 102400
_SMEM_RESERVED = 1024  # the driver's shared memory per block
_L2_BY_CC = {(8, 0): 40 << 20, (9, 0): 50 << 20, (10, 0): 126 << 20}
_L2_OTHER = 4 << 20

WORKSPACE_TARGET_BYTES = 1 << 20  # keep the statistics workspace under 1 MiB where the batch allows
# fused: the unnormalized tiles parked in `out` while their sample's statistics are exchanged stay in L2 when
# all samples in flight park at most this share of it.
PARK_L2_SHARE = 0.5
MAX_TILES_PER_BLOCK = 8  # fused: tiles one block computes per sample (all but the last are parked)


class PerformanceWarning(UserWarning):
    """The plan falls back to a slower kernel for this shape."""


_WARNED: set = set()
_RESIDENT: set = set()  # (build, Launch) pairs whose occupancy has been checked


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What the plan needs to know about a GPU."""

    name: str
    cc: tuple
    sm_count: int
    smem_optin: int  # dynamic shared memory one block may opt in to, bytes
    smem_per_sm: int = 0  # shared memory of one SM, bytes (0: by compute capability)
    l2_bytes: int = 0  # L2 cache, bytes (0: by compute capability)

    def __post_init__(self):
        cc = tuple(self.cc)
        if not self.smem_per_sm:
            object.__setattr__(self, "smem_per_sm", _SMEM_SM_BY_CC.get(cc, _SMEM_SM_OTHER))
        if not self.l2_bytes:
            object.__setattr__(self, "l2_bytes", _L2_BY_CC.get(cc, _L2_OTHER))

    @classmethod
    def from_torch(cls, device) -> "DeviceInfo":
        import torch

        p = torch.cuda.get_device_properties(device)
        cc = (p.major, p.minor)
        smem = getattr(p, "shared_memory_per_block_optin", None)  # torch >= 2.3
        smem_sm = getattr(p, "shared_memory_per_multiprocessor", None)
        l2 = getattr(p, "L2_cache_size", None)
        return cls(p.name, cc, p.multi_processor_count, int(smem or _smem_for(cc)), int(smem_sm or 0), int(l2 or 0))

    @classmethod
    def from_cupy(cls, device_id: int) -> "DeviceInfo":
        import cupy

        p = cupy.cuda.runtime.getDeviceProperties(device_id)
        name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
        cc = (int(p["major"]), int(p["minor"]))
        smem = int(p.get("sharedMemPerBlockOptin", 0)) or _smem_for(cc)
        smem_sm = int(p.get("sharedMemPerMultiprocessor", 0))
        return cls(name, cc, int(p["multiProcessorCount"]), smem, smem_sm, int(p.get("l2CacheSize", 0)))


def _smem_for(cc) -> int:
    return _SMEM_OPTIN_BY_CC.get(tuple(cc), _SMEM_OPTIN_OTHER)


def _align4(words: int) -> int:
    return (words + 3) & ~3


def build_key(defines: dict) -> tuple:
    """A set of compile-time constants as a hashable key (one kernel build per key and device)."""
    return tuple(sorted(defines.items()))


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch of a plan."""

    kernel: str
    grid: tuple
    block: tuple
    smem_bytes: int
    cooperative: bool  # all blocks must be resident at once (cudaLaunchCooperativeKernel)


@dataclasses.dataclass(frozen=True)
class Plan:
    """One forward's launches. ``scalars`` maps the non-pointer arguments of :data:`SIGNATURE` to values."""

    engine: str
    launches: tuple  # of Launch, run in this order on one stream
    slots: int  # blocks per sample (fused: per team)
    teams: int  # fused: samples in flight (teams of `slots` blocks); two-pass: 1
    tiles_per_block: int  # tiles one block computes per sample
    workspace_shape: tuple  # float64
    out_shape: tuple
    scalars: dict
    defines: dict
    device: DeviceInfo
    note: str = ""  # why this engine, where it is not the first choice

    @property
    def kernels(self) -> tuple:
        return tuple(launch.kernel for launch in self.launches)

    @property
    def main(self) -> Launch:
        """The launch that does the work (the last one)."""
        return self.launches[-1]

    @property
    def grid(self) -> tuple:
        return self.main.grid

    @property
    def block(self) -> tuple:
        return self.main.block

    @property
    def smem_bytes(self) -> int:
        return self.main.smem_bytes

    @functools.cached_property
    def _launcher_state(self) -> dict:
        return {}

    def launcher_state(self, key, make):
        """What a launcher works out from this plan once per build (``key``) instead of on every call: ``make()``'s
        result (the module, the occupancy checks and each launch's driver arguments; nothing is kept if it
        raises). Plans are memoized (ops._plan), so a repeated call finds it here."""
        state = self._launcher_state.get(key)
        if state is None:
            state = self._launcher_state[key] = make()
        return state

    @property
    def chunk_width(self) -> int:
        """Output channels per chunk in the kernels' build (8 * CF_NT)."""
        return 8 * self.defines["CF_NT"]

    @property
    def workspace_bytes(self) -> int:
        return 8 * math.prod(self.workspace_shape)

    @functools.cached_property
    def _arg_template(self) -> tuple:
        """The argument values in SIGNATURE order with the plan's scalars filled in, and the positions of the
        pointers and of x's strides (built once per plan; a forward only fills in the 12 that vary)."""
        names = [name for name, _ in SIGNATURE]
        values = [self.scalars.get(name) for name in names]
        return values, tuple((names.index(b), b) for b in BUFFERS), tuple(names.index(s) for s in _X_STRIDES)

    def arg_values(self, pointers: dict, x_strides) -> list:
        """The kernels' argument values in SIGNATURE order, what ``ARG_SLOTS`` packs for both launchers:
        ``pointers`` maps each name in BUFFERS to a device address, ``x_strides`` are x's element strides."""
        template, buffers, strides = self._arg_template
        values = template.copy()
        for i, name in buffers:
            values[i] = pointers[name]
        for i, s in zip(strides, x_strides):
            values[i] = s
        return values

    def check_residency(self, launch: Launch, blocks_per_sm, build=()) -> None:
        """A cooperative launch needs all its blocks resident at once, and the plan sized the grid for the
        occupancy the kernel is built for. ``blocks_per_sm(launch)`` asks the compiled kernel (of the build named
        by ``build``) what it reaches; it is asked once per process for each build and launch. Raises before the
        launch where it falls short."""
        key = (build, launch)
        if key in _RESIDENT:
            return
        per_sm = blocks_per_sm(launch)
        capacity = per_sm * self.device.sm_count
        if launch.grid[0] > capacity:
            raise RuntimeError(
                f"cupyfused: {launch.kernel} needs {launch.grid[0]} resident blocks but {self.device.name} holds "
                f"{capacity} ({per_sm} per SM with {launch.smem_bytes} bytes of shared memory each); "
                "engine='mma' runs the two-pass kernels instead. Please report this."
            )
        _RESIDENT.add(key)

    def describe(self) -> str:
        conv = {
            "fused": "single pass, 3xTF32 tensor-core conv",
            "mma": "two passes, 3xTF32 tensor-core conv",
            "direct": "two passes, FP32 FMA conv (fallback)",
        }[self.engine]
        if self.chunk_width != 8 * NT:  # which kernel build runs
            conv += f", {self.chunk_width}-channel chunks"
        if self.defines.get("CF_PAIR"):
            conv += ", paired taps"
        if self.engine == "fused":
            layout = (f"{self.teams} team(s) x {self.slots} blocks resident, {self.tiles_per_block} tile(s) per "
                      "block and sample")  # fmt: skip
        else:
            layout = f"{self.slots} block(s) per sample"
        text = (
            f"engine={self.engine} ({conv}); kernels {' -> '.join(self.kernels)}; grid {self.grid[0]} x "
            f"{self.block[0]} threads, {self.smem_bytes / 1024:.1f} KiB shared, {layout}, workspace "
            f"{self.workspace_bytes / 1024:.1f} KiB"
        )
        return text + (f"; {self.note}" if self.note else "")


def _fused_layout(N, tiles, capacity, sample_bytes, l2_bytes, tiles_per_block=None):
    """(teams, slots, tiles per block) for the fused kernel, or None where no layout keeps the parked tiles in
    L2. Fewest rounds of samples first (a round = every team doing one sample), then fewest parked tiles."""
    best = None
    choices = [tiles_per_block] if tiles_per_block else range(1, MAX_TILES_PER_BLOCK + 1)
    for k in choices:
        slots = -(-tiles // k)
        k = -(-tiles // slots)
        if slots > capacity:
            continue
        teams = min(N, capacity // slots)
        parked = teams * sample_bytes * (k - 1) / k
        if k > 1 and parked > PARK_L2_SHARE * l2_bytes:
            continue
        key = (-(-N // teams) * k, k)
        if best is None or key < best[0]:
            best = (key, (teams, slots, k))
    return None if best is None else best[1]


def _warn_once(key, message):
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, PerformanceWarning, stacklevel=4)


def build_variants() -> tuple:
    """Every set of compile-time constants :func:`make_plan` can put in :attr:`Plan.defines`, default first (the
    compile checks build each)."""
    return tuple(dict(DEFAULT_DEFINES, CF_NT=nt, CF_PAIR=pair) for pair in (0, 1) for nt in (NT, NT_NARROW))


def make_plan(x_shape, C_out: int, K: int, G: int, device: DeviceInfo, engine: str = "auto",
              eps: float = 1e-5, tiles_per_block=None) -> Plan:  # fmt: skip
    """Plan the launches for input shape ``x_shape`` = (N, C_in, H, W). Shapes are validated by the caller.
    ``tiles_per_block`` forces the fused kernel's tiles per block and sample (a tuning aid)."""
    if engine not in ("auto",) + ENGINES:
        raise ValueError(f"engine must be one of 'auto', {', '.join(repr(e) for e in ENGINES)}; got {engine!r}")
    N, C_in, H, W = (int(v) for v in x_shape)
    OH, OW = H - K + 1, W - K + 1
    tiles_w, tiles_h = -(-OW // TILE_W), -(-OH // TILE_H)
    tiles = tiles_w * tiles_h

    # Output channels per chunk: 16 (CF_NT = 2) where they cover C_out, so that no mma, sigmoid or statistics work
    # is spent on padding channels; else 32. Chosen here because the weights' shared memory is sized by it.
    nt = NT_NARROW if C_out <= 8 * NT_NARROW else NT
    cw = 8 * nt

    # Shared memory, in 4-byte words (layout: cuda_src/cupyfused.cu, CfArgs).
    in_rs = TILE_W + K - 1
    in_ps = (TILE_H + K - 1) * in_rs  # pixels of the input tile
    off_ch = 4 * G * WARPS  # float64 (S1, S2) per warp and group
    off_red = off_ch + 6 * C_out
    off_xs = _align4(off_red + 2 * WARPS * 32)
    off_ws = _align4(off_xs + 32 * (-(-in_ps // 2)))  # even and odd pixels in separate halves
    # One cw x 8 x K x K weight chunk, big and small parts, 8 * cw words each per mma k-step: K * K k-steps, or
    # K * (K + 1) / 2 where C_in <= 4 pairs the taps of a row (cuda_src: cf_pair_taps).
    pair = int(C_in <= 4 and K > 1)  # the CF_PAIR build
    steps = K * ((K + 1) // 2) if pair else K * K
    mma_words = off_ws + 16 * cw * steps
    mma_fits = 4 * mma_words <= device.smem_optin
    if engine in ("fused", "mma") and not mma_fits:
        raise ValueError(
            f"engine={engine!r} needs {4 * mma_words} bytes of shared memory per block for K={K}, more than "
            f"{device.name} allows ({device.smem_optin}); use engine='direct' or 'auto'"
        )

    fused = None
    note = ""
    if mma_fits and engine in ("auto", "fused"):
        per_sm = max(1, min(MMA_BLOCKS_PER_SM, device.smem_per_sm // (4 * mma_words + _SMEM_RESERVED)))
        sample_bytes = 4 * C_out * OH * OW
        fused = _fused_layout(N, tiles, device.sm_count * per_sm, sample_bytes, device.l2_bytes, tiles_per_block)
        if fused is None:
            why = (f"a sample's output ({sample_bytes / 2**20:.0f} MiB) is too large to keep on chip and in L2 on "
                   f"{device.name}")  # fmt: skip
            if engine == "fused":
                raise ValueError(f"engine='fused' cannot run this shape: {why}; use engine='mma' or 'auto'")
            note = f"two passes because {why}"
            _warn_once(("fused", device.name), f"cupyfused: {why}; using the two-pass kernels (about 2x slower)")
    if engine == "auto":
        if fused is not None:
            engine = "fused"
        elif mma_fits:
            engine = "mma"
        else:
            engine = "direct"
            note = f"K={K} does not fit the tensor-core tile on {device.name}"
            _warn_once(
                (K, device.name),
                f"cupyfused: {note}; using the slower FP32 'direct' engine (pass engine='direct' to silence this)",
            )

    block = (THREADS, 1, 1)
    # The mma engines' weights, split and in fragment order once per forward by cf_prep (one thread per (big,
    # small) pair), after the statistics in the workspace: 16 * cw * steps words per (output, input) chunk pair.
    prep_pairs = -(-C_out // cw) * -(-C_in // 8) * 8 * cw * steps
    if engine == "fused":
        teams, slots, k = fused
        words = mma_words
        # uint32 arrival counts padded to 16 bytes (cuda_src: cf_arrival_words), two buffers of (S1, S2) records
        stats = 2 * -(-teams // 4) + 2 * teams * G * slots * 2
        launches = (
            Launch("cf_prep", (-(-max(prep_pairs, teams) // THREADS), 1, 1), block, 0, False),
            Launch("cf_fused_mma", (teams * slots, 1, 1), block, 4 * words, True),
        )
    else:
        if engine == "direct":
            off_ws = off_xs  # no staged tiles
            words, per_sm = off_xs, 1
        else:
            words, per_sm = mma_words, MMA_BLOCKS_PER_SM
        # Blocks per sample: fill one wave of resident blocks, with the sample's tiles split evenly, and keep the
        # float64 statistics workspace (N x G x slots x 2) under 1 MiB where the batch allows.
        resident = device.sm_count * per_sm
        slots = max(1, min(tiles, resident // max(N, 1)))
        slots = max(1, min(slots, WORKSPACE_TARGET_BYTES // (16 * max(N, 1) * G)))
        slots = -(-tiles // -(-tiles // slots))  # same tile count per block
        teams, k = 1, -(-tiles // slots)
        stats = N * G * slots * 2  # (S1, S2) records (N, G, slots)
        if engine == "direct":
            prep_pairs = 0
        launches = tuple(
            Launch(name, (-(-prep_pairs // THREADS), 1, 1), block, 0, False)
            if name == "cf_prep"
            else Launch(name, (N * slots, 1, 1), block, 4 * words, False)
            for name in KERNELS[engine]
        )
    workspace = (stats + prep_pairs,)  # float64 words; a prepared (big, small) pair of TF32 words is one

    wres = int(engine != "direct" and C_out <= cw and C_in <= 8)  # one weight chunk: staged once per block
    scalars = dict(
        N=N, Cin=C_in, H=H, W=W, Cout=C_out, K=K, G=G, OH=OH, OW=OW, tiles_w=tiles_w, tiles_h=tiles_h,
        slots=slots, teams=teams if engine == "fused" else 0, in_rs=in_rs, in_ps=in_ps, wres=wres, off_ch=off_ch,
        off_red=off_red, off_xs=off_xs, off_ws=off_ws, off_wp=stats, eps=float(eps),
    )  # fmt: skip
    return Plan(
        engine=engine,
        launches=launches,
        slots=slots,
        teams=teams,
        tiles_per_block=k,
        workspace_shape=workspace,
        out_shape=(N, C_out, OH, OW),
        scalars=scalars,
        defines=dict(DEFAULT_DEFINES, CF_NT=nt, CF_PAIR=pair),
        device=device,
        note=note,
    )
