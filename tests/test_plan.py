"""The launch plan (CPU, with fake devices): engine choice, sane launch geometry, a small workspace, the
chunk width and the shared memory it needs, and kernel names that exist in the sources. GPU: torch and CuPy
report the same device facts (one plan)."""

import re

import pytest

from cupyfused import _sources, make_plan
from cupyfused import plan as plan_module
from cupyfused.plan import ENGINES, SIGNATURE, DeviceInfo

# The fallbacks these plans take are asserted where they are the point (pytest.warns still records them).
pytestmark = pytest.mark.filterwarnings("ignore::cupyfused.plan.PerformanceWarning")

A100 = DeviceInfo("fake A100", (8, 0), 108, 166912)
H100 = DeviceInfo("fake H100", (9, 0), 132, 232448)
RTX = DeviceInfo("fake sm_86", (8, 6), 84, 101376)  # 99 KiB of shared memory per block
DEVICES = [pytest.param(d, id=d.name.split()[-1]) for d in (A100, H100, RTX)]

DEFAULT = dict(x_shape=(128, 8, 256, 256), C_out=32, K=3, G=8)
MIB = 1 << 20


def kernels_in_source():
    text = _sources.compile_check_text()
    return set(re.findall(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(', text))


def plan_of(device, x_shape, C_out, K, G, engine="auto"):
    return make_plan(x_shape, C_out, K, G, device, engine)


def assert_sane(plan, device, x_shape, C_out, K, G):
    N, C_in, H, W = x_shape
    assert plan.engine in ENGINES
    assert len(plan.grid) == 3 and len(plan.block) == 3
    assert all(isinstance(v, int) and v >= 1 for v in tuple(plan.grid) + tuple(plan.block)), (plan.grid, plan.block)
    assert plan.grid[0] < 2**31 and plan.grid[1] < 65536 and plan.grid[2] < 65536
    threads = plan.block[0] * plan.block[1] * plan.block[2]
    assert 32 <= threads <= 1024 and threads % 32 == 0, plan.block
    tiles = -(-(H - K + 1) // plan_module.TILE_H) * -(-(W - K + 1) // plan_module.TILE_W)
    assert 1 <= plan.slots <= tiles
    assert plan.tiles_per_block == -(-tiles // plan.slots)
    if plan.engine == "fused":
        # persistent: teams of `slots` blocks, all resident at once, at most one team per sample
        assert plan.grid[0] == plan.teams * plan.slots and 1 <= plan.teams <= max(N, 1)
        assert plan.grid[0] <= device.sm_count * plan_module.MMA_BLOCKS_PER_SM
        per_sm = device.smem_per_sm // (plan.smem_bytes + plan_module._SMEM_RESERVED)
        assert plan.grid[0] <= device.sm_count * per_sm, "the teams do not fit in shared memory at once"
        assert plan.workspace_bytes >= 4 * plan.teams + 8 * 2 * plan.teams * 2 * G * plan.slots
        assert plan.launches[-1].cooperative and not plan.launches[0].cooperative
    else:
        assert plan.grid[0] == N * plan.slots  # one sample per group of blocks
        assert plan.workspace_bytes >= 16 * N * G * plan.slots
        assert not any(ln.cooperative for ln in plan.launches)
    assert 0 <= plan.smem_bytes <= device.smem_optin, (plan.smem_bytes, device.smem_optin)
    assert plan.kernels == plan_module.KERNELS[plan.engine] and set(plan.kernels) <= kernels_in_source(), plan.kernels
    assert isinstance(plan.defines, dict) and plan.defines in plan_module.build_variants(), plan.defines
    cw = plan.chunk_width
    assert cw == (16 if C_out <= 16 else 32), (C_out, plan.defines)
    sc = plan.scalars
    if plan.engine == "direct":
        assert plan.smem_bytes == 4 * sc["off_xs"] and sc["wres"] == 0  # nothing staged
    else:  # the weights of one chunk, cw x 8 x K x K, big and small parts, last
        steps = K * ((K + 1) // 2) if C_in <= 4 and K > 1 else K * K  # k-steps: C_in <= 4 pairs a row's taps
        assert sc["off_ws"] % 4 == 0 and plan.smem_bytes == 4 * (sc["off_ws"] + 16 * cw * steps), plan.describe()
        # The workspace: the statistics, then every chunk pair's weights, split (cf_prep), 16-byte aligned.
        pairs = -(-C_out // cw) * -(-C_in // 8) * 8 * cw * steps
        assert sc["off_wp"] % 2 == 0 and plan.workspace_shape == (sc["off_wp"] + pairs,), plan.workspace_shape
        prep = plan.launches[0]
        assert prep.kernel == "cf_prep" and prep.grid[0] * prep.block[0] >= max(pairs, sc["teams"])
        assert sc["wres"] == int(C_out <= cw and C_in <= 8)  # one chunk's weights, staged once per block
    assert sc["teams"] == (plan.teams if plan.engine == "fused" else 0)  # cf_prep clears `teams` arrival counts
    text = plan.describe()
    assert isinstance(text, str) and plan.engine in text


@pytest.mark.parametrize("device", DEVICES)
def test_default_problem_plan(device):
    plan = plan_of(device, **DEFAULT)
    # One pass over DRAM on tensor cores on the A100 and H100 (SPEC.md). A 99 KiB / 6 MiB-L2 GPU cannot keep
    # a sample's 8 MiB on chip and in L2: two passes, still on tensor cores.
    assert plan.engine == ("mma" if device is RTX else "fused"), plan.describe()
    assert plan.workspace_bytes <= MIB, plan.describe()
    assert_sane(plan, device, **DEFAULT)
    if device.smem_optin > 48 * 1024:
        assert plan.smem_bytes > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "x_shape, C_out, K, G",
    [
        ((1, 1, 1, 1), 1, 1, 1),  # the smallest problem
        ((3, 13, 37, 41), 72, 5, 6),  # odd everything, three 32-channel chunks
        ((2, 8, 70, 5), 32, 2, 8),  # narrow, even K
        ((4, 3, 300, 300), 16, 7, 4),  # K=7
        ((2, 8, 40, 40), 32, 9, 8),  # K=9
        ((1, 2, 20, 20), 8, 15, 2),  # K=15
        ((2048, 8, 32, 32), 32, 3, 8),  # a large batch
    ],
)  # fmt: skip
def test_plan_is_sane(device, x_shape, C_out, K, G):
    assert_sane(plan_of(device, x_shape, C_out, K, G), device, x_shape, C_out, K, G)


@pytest.mark.parametrize("device", DEVICES)
def test_large_kernel_falls_back_to_direct(device, monkeypatch):
    from cupyfused import plan as plan_module

    monkeypatch.setattr(plan_module, "_WARNED", set())  # the warning is said once per (K, GPU) and process
    shape = dict(x_shape=(2, 8, 40, 40), C_out=32, K=15, G=8)
    with pytest.warns(plan_module.PerformanceWarning, match="slower FP32 'direct' engine"):
        plan = plan_of(device, **shape)
    assert plan.engine == "direct", plan.describe()
    assert_sane(plan, device, **shape)
    for engine in ("mma", "fused"):
        with pytest.raises(ValueError, match=engine):
            plan_of(device, **shape, engine=engine)


@pytest.mark.parametrize("device", DEVICES)
def test_forced_engines(device):
    direct = plan_of(device, **DEFAULT, engine="direct")
    assert direct.engine == "direct"
    assert_sane(direct, device, **DEFAULT)
    if device is RTX:
        with pytest.raises(ValueError, match="fused"):
            plan_of(device, **DEFAULT, engine="fused")
    else:
        assert plan_of(device, **DEFAULT, engine="fused") == plan_of(device, **DEFAULT)
    mma = plan_of(device, **DEFAULT, engine="mma")
    assert mma.engine == "mma" and mma.kernels == ("cf_prep", "cf_stats_mma", "cf_norm_mma")
    assert_sane(mma, device, **DEFAULT)
    with pytest.raises(ValueError, match="engine"):
        plan_of(device, **DEFAULT, engine="winograd")


def mma_fits_for(device, C_out):
    """For K = 1..15, whether the tensor-core tile fits (engine="mma" can be forced)."""
    fits = []
    for K in range(1, 16):
        try:
            plan_of(device, (2, 8, 64, 64), C_out, K, 8, engine="mma")
            fits.append(True)
        except ValueError:
            fits.append(False)
    return fits


@pytest.mark.parametrize("C_out", [16, 32])
@pytest.mark.parametrize("device", DEVICES)
def test_auto_picks_mma_exactly_where_it_fits(device, C_out):
    """For K = 1..15: "auto" is the single-pass "fused" plan wherever the tensor-core tile can be made (its
    shared memory within the device's limit), else "direct"; and once K is too large for the tile, every
    larger K is too."""
    fits = mma_fits_for(device, C_out)
    for K, fit in enumerate(fits, 1):
        auto = plan_of(device, (2, 8, 64, 64), C_out, K, 8)
        assert auto.engine == ("fused" if fit else "direct"), (K, auto.describe())
        if fit:
            forced = plan_of(device, (2, 8, 64, 64), C_out, K, 8, engine="mma")
            assert forced.smem_bytes == auto.smem_bytes <= device.smem_optin
    assert fits == sorted(fits, reverse=True), f"mma fits for K = {[k + 1 for k, f in enumerate(fits) if f]}"
    assert fits[2], "K=3 (the default problem) must run on tensor cores"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "C_out, G, nt",
    [(1, 1, 2), (8, 2, 2), (16, 4, 2), (16, 16, 2), (17, 1, 4), (24, 4, 4), (32, 8, 4), (64, 8, 4), (72, 6, 4)],
)
def test_chunk_width(device, C_out, G, nt):
    """16-channel chunks (CF_NT = 2) exactly where C_out <= 16, else 32 (CF_NT = 4), for every engine: in the
    defines both backends build from, and said by describe() where it is not the default."""
    for engine in ENGINES:
        plan = plan_of(device, (4, 8, 64, 64), C_out, 3, G, engine=engine)
        assert plan.defines == dict(plan_module.DEFAULT_DEFINES, CF_NT=nt), (engine, plan.defines)  # C_in = 8
        assert plan.chunk_width == 8 * nt
        assert_sane(plan, device, (4, 8, 64, 64), C_out, 3, G)
        head = plan.describe().split(";")[0]  # what the benchmark's table shows
        assert ("16-channel chunks" in head) == (nt == 2), plan.describe()
        assert "32-channel" not in plan.describe()


def test_chunk_width_shared_memory():
    """C_out = 16 stages one 16 x 8 x K x K weight chunk (256 words per (p, q), big and small), C_out = 32 one of
    32 x 8 x K x K (512 words): the offsets, worked out by hand (layout: cuda_src/cupyfused.cu, CfArgs)."""
    # G = 4, K = 3: stats 4 * G * 4 warps = 64 words; then 6 words per channel; 2 * 4 warps * 32 words of scratch;
    # the input tile, (4 + 2) x (64 + 2) = 396 pixels of 16 words (8 channels, big and small).
    for C_out, off_red, off_ws, ws_words in ((16, 160, 6752, 256 * 9), (32, 256, 6848, 512 * 9)):
        plan = plan_of(H100, (2, 8, 64, 64), C_out, 3, 4, engine="mma")
        sc = plan.scalars
        assert (sc["off_ch"], sc["off_red"], sc["off_xs"], sc["off_ws"]) == (64, off_red, off_red + 256, off_ws)
        assert plan.smem_bytes == 4 * (off_ws + ws_words)
        assert sc["wres"] == 1
    # 16-channel chunks halve the weights' share: larger K fit the tensor-core tile (K = 9 on an A100: 32-channel
    # chunks take 4 * (14_352 + 41_472) bytes, more than its 166_912; 16-channel chunks 4 * (14_256 + 20_736)).
    assert plan_of(A100, (2, 8, 64, 64), 16, 9, 4).engine == "fused"
    assert plan_of(A100, (2, 8, 64, 64), 32, 9, 4).engine == "direct"
    for device in (A100, H100, RTX):
        narrow, wide = mma_fits_for(device, 16), mma_fits_for(device, 32)
        assert all(n or not w for n, w in zip(narrow, wide)) and sum(narrow) > sum(wide), device.name


@pytest.mark.parametrize("K, steps", [(1, 1), (2, 2), (3, 6), (4, 8), (5, 15)])
def test_paired_taps_shared_memory(K, steps):
    """C_in <= 4 (K > 1): the weights of a row's taps q and q + 1 share a k-step (cuda_src: cf_pair_taps), so the
    staged chunk holds K * (K + 1) / 2 k-steps of 512 words (big and small) instead of K * K; from C_in = 5 on, all
    K * K."""
    for C_in, n in ((1, steps), (3, steps), (4, steps), (5, K * K), (8, K * K)):
        plan = plan_of(H100, (2, C_in, 64, 64), 64, K, 4, engine="mma")
        assert plan.smem_bytes == 4 * (plan.scalars["off_ws"] + 512 * n), (C_in, K, plan.describe())
        assert plan.defines["CF_PAIR"] == int(n < K * K or (C_in <= 4 and K > 1)), plan.defines  # its own build
    # The sweep's 32,3,64,256,256,5,16: 3 blocks per SM fit on an H100 (2 with all 25 k-steps staged).
    plan = plan_of(H100, (32, 3, 256, 256), 64, 5, 16)
    assert H100.smem_per_sm // (plan.smem_bytes + plan_module._SMEM_RESERVED) == 3, plan.describe()


def test_build_variants_cover_every_plan():
    """plan.build_variants() (what the nvcc compile checks build) holds every define set make_plan returns,
    the default first."""
    variants = plan_module.build_variants()
    assert variants[0] == plan_module.DEFAULT_DEFINES
    assert _sources.compile_check_text() == _sources.source_text(variants[0])
    seen = [
        plan_of(H100, (2, C_in, 32, 32), C_out, 3, 1, engine=e).defines
        for C_in in (1, 4, 5, 8)
        for C_out in range(1, 70)
        for e in ENGINES
    ]
    assert all(d in variants for d in seen), [d for d in seen if d not in variants]
    assert all(v in seen for v in variants), "a build variant that no plan uses"


@pytest.mark.parametrize("device", [d for d in DEVICES if d.values[0] is not RTX])  # RTX: two passes (above)
def test_fused_layout_choice(device):
    """The default problem: one pass with every block resident, the parked tiles of all samples in flight
    within the L2 share, and no more rounds than necessary for the resident blocks."""
    plan = plan_of(device, **DEFAULT)
    N = DEFAULT["x_shape"][0]
    k, teams = plan.tiles_per_block, plan.teams
    parked = teams * 4 * 32 * 254 * 254 * (k - 1) / k
    assert parked <= plan_module.PARK_L2_SHARE * device.l2_bytes
    capacity = plan.grid[0] // plan.teams * plan.teams
    rounds = -(-N // teams) * k
    for k2 in range(1, plan_module.MAX_TILES_PER_BLOCK + 1):  # no allowed layout needs fewer tile-rounds
        try:
            other = make_plan(DEFAULT["x_shape"], 32, 3, 8, device, tiles_per_block=k2)
        except ValueError:
            continue
        assert -(-N // other.teams) * other.tiles_per_block >= rounds, (plan.describe(), other.describe())
    assert capacity <= device.sm_count * plan_module.MMA_BLOCKS_PER_SM


@pytest.mark.parametrize("device", DEVICES)
def test_huge_image_falls_back_to_two_passes(device, monkeypatch):
    """A sample too large to keep on chip and in L2 runs the two-pass kernels, and says so."""
    monkeypatch.setattr(plan_module, "_WARNED", set())
    shape = dict(x_shape=(2, 8, 2048, 2048), C_out=32, K=3, G=8)
    with pytest.warns(plan_module.PerformanceWarning, match="two-pass"):
        plan = plan_of(device, **shape)
    assert plan.engine == "mma" and "two passes because" in plan.describe(), plan.describe()
    assert_sane(plan, device, **shape)
    with pytest.raises(ValueError, match="fused"):
        plan_of(device, **shape, engine="fused")


def test_plan_is_a_pure_function():
    """Both backends call make_plan; the same inputs must give the same plan."""
    assert plan_of(H100, **DEFAULT) == plan_of(H100, **DEFAULT)


def test_every_source_kernel_is_planned():
    """No kernel in cuda_src/ that no plan launches (it would escape every test), and none missing."""
    planned = set()
    for engine in ENGINES:
        planned |= set(plan_of(H100, **DEFAULT, engine=engine).kernels)
    assert planned == kernels_in_source()


@pytest.mark.gpu
def test_device_info_same_from_torch_and_cupy(cuda_device, both_backends):
    """Each backend reads the device through its own framework; the facts (and so the plans) must agree."""
    a = DeviceInfo.from_torch(cuda_device.index)
    b = DeviceInfo.from_cupy(cuda_device.index)
    assert a == b
    assert plan_of(a, **DEFAULT) == plan_of(b, **DEFAULT)


def test_residency_check(monkeypatch):
    """A cooperative launch is refused before it starts when the compiled kernel holds fewer blocks than the
    grid needs; the occupancy query runs once per build and launch."""
    monkeypatch.setattr(plan_module, "_RESIDENT", set())
    plan = plan_of(H100, **DEFAULT)
    launch = plan.launches[-1]
    assert launch.cooperative
    asked = []

    def per_sm(reached):
        def query(ln):
            asked.append(ln)
            return reached

        return query

    needed = -(-launch.grid[0] // H100.sm_count)
    with pytest.raises(RuntimeError, match="resident blocks"):
        plan.check_residency(launch, per_sm(needed - 1), build=("test", 0))
    plan.check_residency(launch, per_sm(needed), build=("test", 0))
    plan.check_residency(launch, per_sm(0), build=("test", 0))  # checked already: not asked again
    assert asked == [launch, launch]
    with pytest.raises(RuntimeError, match="resident blocks"):
        plan.check_residency(launch, per_sm(0), build=("test", 1))  # another build is asked


def test_launcher_state():
    """What a launcher works out from a plan (module, checks, launch arguments) is made once per key, and not kept
    when making it raises (a failed residency check is raised again on the next call)."""
    plan = plan_of(H100, **DEFAULT)
    made = []

    def make():
        made.append(1)
        return ("state", len(made))

    assert plan.launcher_state(("cupy", 0), make) == ("state", 1)
    assert plan.launcher_state(("cupy", 0), make) == ("state", 1)  # not made again
    assert plan.launcher_state(("torch", 0, None), make) == ("state", 2)  # another build

    def fails():
        raise RuntimeError("resident blocks")

    for _ in range(2):
        with pytest.raises(RuntimeError):
            plan.launcher_state(("cupy", 1), fails)
    assert plan == plan_of(H100, **DEFAULT)  # the state is no part of the plan's value


def test_argument_slots():
    """Both launchers pass the kernels' arguments as 8-byte slots, in SIGNATURE order: an int32 or a float32 in
    the first 4 bytes of its slot (little-endian, as the kernel reads its parameter), int64 and pointers whole."""
    import struct

    values = [0x1000 * (i + 1) if t == "p" else (0.25 if t == "f" else -(i + 1)) for i, (_, t) in enumerate(SIGNATURE)]
    packed = plan_module.ARG_SLOTS.pack(*values)
    assert len(packed) == 8 * len(SIGNATURE)  # one slot per argument
    for i, ((name, t), v) in enumerate(zip(SIGNATURE, values)):
        fmt = {"p": "<Q", "q": "<q", "i": "<i", "f": "<f"}[t]
        assert struct.unpack_from(fmt, packed, 8 * i)[0] == v, name


@pytest.mark.parametrize("device", [A100, H100], ids=["A100", "H100"])
def test_argument_values(device):
    """plan.arg_values puts the plan's scalars, the pointers and x's strides at their SIGNATURE positions, and a call
    leaves the plan's template as it was."""
    p = make_plan((3, 5, 40, 33), 24, 3, 4, device)
    names = [name for name, _ in SIGNATURE]
    pointers = {name: 0x1000 * (i + 1) for i, name in enumerate(plan_module.BUFFERS)}
    strides = (6600, 1320, 33, 1)
    for _ in range(2):
        values = p.arg_values(pointers, strides)
        assert len(values) == len(SIGNATURE)
        for name, v in zip(names, values):
            expected = pointers.get(name, dict(zip(("sxn", "sxc", "sxh", "sxw"), strides)).get(name))
            assert v == (p.scalars[name] if expected is None else expected), name
    assert plan_module.ARG_SLOTS.pack(*values)  # every value fits its slot
    other = p.arg_values({k: v + 8 for k, v in pointers.items()}, (1, 2, 3, 4))
    assert other[names.index("x")] == pointers["x"] + 8 and values[names.index("x")] == pointers["x"]
