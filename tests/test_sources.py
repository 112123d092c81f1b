"""The kernel sources (CPU): what both compilers get, that an installed wheel finds its own copy, and that
every kernel of every build a plan can ask for (plan.build_variants()) compiles for sm_80 and sm_90 with nvcc
and the project's flags without spilling registers."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
from utils import PYTHON, REPO_ROOT, report, skip_or_fail

import cupyfused
from cupyfused import _sources
from cupyfused import plan as plan_module

KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')
SOURCE_SUFFIXES = (".cu", ".cuh", ".h")
ARCHS = ("sm_80", "sm_90")
VARIANTS = plan_module.build_variants()  # the default build first
VARIANT_IDS = [f"nt{d['CF_NT']}-pair{d['CF_PAIR']}" for d in VARIANTS]


def source_files(folder):
    return sorted(p for p in folder.iterdir() if p.suffix in SOURCE_SUFFIXES)


def test_checkout_sources():
    """In a checkout the sources are the top-level cuda_src/, and the compiled text holds all of them."""
    d = _sources.source_dir()
    if pathlib.Path(cupyfused.__file__).resolve().parent == (REPO_ROOT / "cupyfused").resolve():
        assert d.resolve() == (REPO_ROOT / "cuda_src").resolve()  # this checkout's package: its own sources
    files = source_files(d)
    assert files, f"no kernel sources in {d}"
    text = _sources.compile_check_text()
    for f in files:
        assert f.read_text() in text, f"{f.name} is not in the text the compilers get"
    assert KERNEL_RE.findall(text), 'no extern "C" __global__ kernels in the sources'
    assert re.fullmatch(r"[0-9a-f]{64}", _sources.source_sha256())


def test_source_text_carries_defines():
    text = _sources.source_text({"CF_TEST_DEFINE": 7})
    assert "#define CF_TEST_DEFINE 7" in text
    assert text.endswith(_sources.source_text({}))  # a prefix, then the same sources


def test_same_flags_for_both_compilers():
    """CuPy always adds -ftz=true to NVRTC builds; nvcc must get it too, or the backends differ in bits."""
    nvrtc, nvcc = tuple(_sources.NVRTC_FLAGS), tuple(_sources.NVCC_FLAGS)
    assert any(re.fullmatch(r"--?ftz=true", f) for f in nvcc), nvcc
    numeric = lambda flags: {f for f in flags if re.match(r"--?(ftz|prec-div|prec-sqrt|fmad|use_fast_math)", f)}  # noqa: E731
    assert numeric(nvrtc) == numeric(nvcc), (nvrtc, nvcc)
    assert not any("use_fast_math" in f for f in nvrtc + nvcc)
    assert not any(f.startswith("-std") for f in nvrtc + nvcc), "never hard-code -std= (INTEROP.md)"


# ------------------------------------------------------------------------------------------- the wheel
@pytest.mark.slow
def test_installed_wheel_finds_its_sources(tmp_path):
    """Build a wheel from the checkout, install it (non-editable) into a folder, and import it from there in
    a child whose path has no checkout on it: source_dir() is the installed copy, with the same hash."""
    src = tmp_path / "src"
    shutil.copytree(
        REPO_ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".cache", "build", "dist", "*.egg-info", "__pycache__", "out", ".*_cache"
        ),
    )  # fmt: skip  (built from a copy: setuptools writes build/ and *.egg-info next to the sources)
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [PYTHON, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    r = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, f"pip wheel failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    (wheel,) = wheels.glob("cupyfused-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for f in source_files(REPO_ROOT / "cuda_src"):
        assert f"cupyfused/cuda_src/{f.name}" in names, f"{f.name} missing from the wheel: {names}"
    r = subprocess.run(pip + ["install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, f"pip install failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"

    script = (
        "import json, cupyfused\n"
        "from cupyfused import _sources\n"
        "print(json.dumps(dict(package=cupyfused.__file__, source_dir=str(_sources.source_dir()),\n"
        "                      sha=_sources.source_sha256(), text=_sources.compile_check_text())))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    r = subprocess.run([PYTHON, "-c", script], cwd=wheels, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    site = target.resolve()
    assert site in pathlib.Path(got["package"]).resolve().parents, got["package"]
    assert site in pathlib.Path(got["source_dir"]).resolve().parents, got["source_dir"]
    assert got["sha"] == _sources.source_sha256()
    assert got["text"] == _sources.compile_check_text()


# -------------------------------------------------------------------------------------- nvcc + ptxas
def parse_ptxas(log: str) -> dict:
    """{function: {"entry": bool, "registers": int, "spill_stores": int, "spill_loads": int, "stack": int,
    "smem": int}} from an ``-Xptxas -v`` report."""
    funcs: dict = {}
    current = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            funcs.setdefault(m.group(1), {})["entry"] = True
            continue
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            current = funcs.setdefault(m.group(1), {})
            current.setdefault("entry", False)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current is not None:
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and current is not None:
            current["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(s.group(1)) if s else 0
    return funcs


# Spills a kernel may have, as {(kernel, arch): bytes}. None today: cf_fused_mma fits its 168-register budget on
# both archs (it has spilled a few words of per-sample state before; test_fused_spills_stay_out_of_the_mma_loop
# checks on the GPU machine that any spill stays out of the conv loop).
SPILL_ALLOWANCE: dict = {}


def compile_cubin(arch, tmp_path, extra=(), defines=None):
    """(cubin path, ptxas log) of the text built for ``defines`` (default: the compile-check text, the default
    build's) with the project's nvcc flags."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH: the compile check needs the CUDA toolkit")
    tmp_path.mkdir(parents=True, exist_ok=True)
    cu = tmp_path / "cupyfused_check.cu"
    cu.write_text(_sources.compile_check_text() if defines is None else _sources.source_text(defines))
    cubin = tmp_path / f"k_{arch}.cubin"
    cmd = [nvcc, "-cubin", f"-arch={arch}", *_sources.NVCC_FLAGS, *extra, "-o", str(cubin), str(cu)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{(r.stdout + r.stderr)[-6000:]}"
    return cubin, r.stdout + r.stderr


@pytest.mark.gpu  # runs where the GPU and the full toolkit are (cuobjdump); the device itself is not used
@pytest.mark.parametrize("defines", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_fused_spills_stay_out_of_the_mma_loop(arch, defines, cuda_device, tmp_path):
    """Disassemble cf_fused_mma: no local-memory load or store and few other instructions between its first and
    last tensor-core instruction (the conv loop's unrolled mma), so neither spills nor register moves cost
    anything per mma."""
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump is None:
        skip_or_fail("cuobjdump is not on PATH (it ships with the CUDA toolkit)")
    cubin, _ = compile_cubin(arch, tmp_path, defines=defines)
    r = subprocess.run([cuobjdump, "-sass", "-fun", "cf_fused_mma", str(cubin)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sass = [ln for ln in r.stdout.splitlines() if re.search(r"/\*[0-9a-f]{4,}\*/", ln)]
    mma = [i for i, ln in enumerate(sass) if "HMMA" in ln]
    assert mma, "no HMMA in cf_fused_mma"
    span = sass[mma[0] : mma[-1] + 1]
    local = [ln.strip() for ln in span if re.search(r"\b(LDL|STL)\b", ln)]
    others = len(span) - len(mma)
    nt = defines["CF_NT"]
    variant = VARIANT_IDS[VARIANTS.index(defines)]
    report(f"sass {arch}", f"cf_fused_mma, {variant}: {len(mma)} HMMA; among them {len(local)} LDL/STL, {others} "
           "others in all")  # fmt: skip
    assert not local, "local-memory traffic inside the mma loop:\n" + "\n".join(local[:20])
    # Register moves between the mma: ptxas inserts them when accumulators must also sit in adjacent pairs
    # elsewhere (measured once: 2.6 moves per HMMA, 25% more instructions, from 8-byte loads into acc). A (p, q)
    # step is 12 * CF_NT HMMA and needs about the same loads and address arithmetic whatever CF_NT, so the bound
    # is 24 others per step: half the HMMA count at CF_NT = 4, all of it at CF_NT = 2 (measured with nvcc 13.0:
    # 1-3 among 48 at CF_NT = 4; 52-54 among 72 at CF_NT = 2, where ptxas unrolls the q loop by two and the
    # span also holds its remainder step's loads).
    assert others <= 2 * len(mma) // nt, f"{others} non-mma instructions among {len(mma)} HMMA:\n" + "\n".join(
        ln.strip() for ln in span[:120]
    )


@pytest.fixture(scope="module")
def ptxas_builds(tmp_path_factory):
    """Every (arch, build variant) compile of the check below, all started at once (nvcc is single-threaded, so
    the variants cost little wall time on a multi-core machine): {(arch, variant id): future of (cubin, ptxas
    log)}."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH: the compile check needs the CUDA toolkit")
    root = tmp_path_factory.mktemp("ptxas")
    with ThreadPoolExecutor(max_workers=len(ARCHS) * len(VARIANTS)) as pool:
        yield {
            (arch, v): pool.submit(compile_cubin, arch, root / f"{arch}_{v}", ("-Xptxas", "-v"), d)
            for arch in ARCHS
            for d, v in zip(VARIANTS, VARIANT_IDS)
        }


@pytest.mark.slow
@pytest.mark.parametrize("defines", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_nvcc_compiles_every_kernel_without_spills(arch, defines, ptxas_builds):
    kernels = set(KERNEL_RE.findall(_sources.source_text(defines)))
    variant = VARIANT_IDS[VARIANTS.index(defines)]
    _, log = ptxas_builds[arch, variant].result()
    funcs = parse_ptxas(log)
    entries = {name for name, f in funcs.items() if f.get("entry")}
    assert entries == kernels, f"ptxas compiled {sorted(entries)}, the sources define {sorted(kernels)}\n{log}"
    # The mma kernels' register budget: MMA_BLOCKS_PER_SM blocks of THREADS threads in the 64K registers of an SM
    # (allocated in units of 8), as __launch_bounds__(CF_THREADS, CF_MIN_BLOCKS) asks of ptxas.
    budget = 65536 // (plan_module.THREADS * plan_module.MMA_BLOCKS_PER_SM) // 8 * 8
    for name, f in sorted(funcs.items()):
        assert "registers" in f and "spill_stores" in f, f"no ptxas report for {name}:\n{log}"
        if f["entry"]:
            report(f"ptxas {arch} {variant}", f"{name}: {f['registers']} registers, {f['smem']} B static smem, "
                   f"{f['stack']} B stack, spills {f['spill_stores']}/{f['spill_loads']} B")  # fmt: skip
            if name.endswith("_mma"):
                assert f["registers"] <= budget, f"{arch}: {name} uses {f['registers']} registers (budget {budget})"
    spilling = {
        n: (f["spill_stores"], f["spill_loads"])
        for n, f in funcs.items()
        if (f["spill_stores"] or f["spill_loads"]) and (n, arch) not in SPILL_ALLOWANCE
    }
    assert not spilling, f"{arch}: register spills (stores, loads) in {spilling}\n{log}"
    for (name, a), limit in SPILL_ALLOWANCE.items():
        if a == arch and name in funcs:
            got = max(funcs[name]["spill_stores"], funcs[name]["spill_loads"])
            assert got <= limit, f"{arch}: {name} spills {got} B, more than the {limit} B allowed\n{log}"
    warnings = [ln for ln in log.splitlines() if "cupyfused_check.cu" in ln and "warning" in ln.lower()]
    assert not warnings, "compiler warnings in the kernel sources:\n" + "\n".join(warnings)
