"""``python -m cupyfused {info,check,bench}``.

- ``info``: GPU, driver, CUDA, torch, CuPy, nvcc and NVRTC versions, the compiler flag sets, the build cache
  paths, the source hash and which backends work here. Works without a GPU (it says "no CUDA GPU").
- ``check``: both backends against the float64 reference on a few shapes, output NaN-poisoned before the
  launch; PASS/FAIL per shape and backend. Exit 0 all passed, 1 any failure, 2 nothing could run (no GPU).
- ``bench``: see ``cupyfused.bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

# (N, C_in, C_out, H, W, K, G) and why each is in the list. Every shape keeps at least 4 channels and a few
# hundred values per group: with fewer, GroupNorm's 1 / std amplifies float32 rounding past 1e-5 on some
# random draws for any float32 implementation, eager PyTorch included (tests/utils.py: TOLERANCES).
CHECK_SHAPES = (
    ((2, 3, 16, 17, 19, 3, 4), "odd C_in, prime H and W: no dimension a multiple of a tile"),
    ((1, 1, 16, 29, 23, 1, 4), "K=1, C_in=1"),
    ((3, 4, 24, 22, 20, 5, 3), "K=5, non-square image, C_out not a power of two"),
    ((2, 16, 16, 20, 20, 4, 1), "even K, a single group"),
    ((0, 8, 32, 16, 16, 3, 8), "N=0: empty result"),
    ((8, 8, 32, 256, 256, 3, 8), "the default problem on an 8-sample batch"),
)


def _run(cmd, timeout=20):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _try(fn, default=None):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - info reports what it can
        return default if default is not None else f"n/a ({type(e).__name__}: {e})"


def _nvcc():
    """(path, version line) of the nvcc that torch's cpp_extension would use."""
    path = None
    try:
        from torch.utils.cpp_extension import CUDA_HOME

        if CUDA_HOME and Path(CUDA_HOME, "bin", "nvcc").exists():
            path = str(Path(CUDA_HOME, "bin", "nvcc"))
    except Exception:  # noqa: BLE001
        pass
    path = path or shutil.which("nvcc")
    if not path:
        return None, "not found"
    out = _run([path, "--version"])
    line = next((ln for ln in (out or "").splitlines() if "release" in ln), None)
    return path, line or "unknown"


def collect_env() -> dict:
    """Everything ``info`` prints, as a dict; each entry degrades to a reason instead of raising."""
    env = {}
    env["cupyfused"] = _try(lambda: __import__("cupyfused").__version__)
    env["python"] = sys.version.split()[0]
    env["platform"] = platform.platform()
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        env["torch"] = f"not importable ({e})"
        torch = None
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cudnn"] = _try(lambda: torch.backends.cudnn.version())
        if torch.cuda.is_available():
            dev = torch.cuda.current_device()
            prop = torch.cuda.get_device_properties(dev)
            env["gpu"] = prop.name
            env["gpu_capability"] = f"{prop.major}.{prop.minor}"
            env["gpu_sms"] = prop.multi_processor_count
            env["gpu_memory_gib"] = round(prop.total_memory / (1 << 30), 1)
            env["gpu_count"] = torch.cuda.device_count()
        else:
            env["gpu"] = "no CUDA GPU"
    drv = (
        _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        if shutil.which("nvidia-smi")
        else None
    )
    env["driver"] = drv.splitlines()[0] if drv else None
    try:
        import cupy

        env["cupy"] = cupy.__version__
        env["cupy_cuda_runtime"] = _try(lambda: _cuda_ver(cupy.cuda.runtime.runtimeGetVersion()))
        env["cupy_cuda_driver"] = _try(lambda: _cuda_ver(cupy.cuda.runtime.driverGetVersion()))
        env["nvrtc"] = _try(lambda: ".".join(str(v) for v in cupy.cuda.nvrtc.getVersion()))
    except Exception as e:  # noqa: BLE001
        env["cupy"] = None
        env["cupy_error"] = f"{type(e).__name__}: {e}"
    env["nvcc_path"], env["nvcc"] = _nvcc()
    env["torch_cuda_arch_list"] = os.environ.get("TORCH_CUDA_ARCH_LIST")
    env.update(_cupyfused_env())
    return env


def _cuda_ver(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def _cupyfused_env() -> dict:
    env = {}
    try:
        from cupyfused import _sources

        env["source_dir"] = _try(lambda: str(_sources.source_dir()))
        env["source_sha256"] = _try(_sources.source_sha256)
        env["nvrtc_flags"] = _try(lambda: list(_sources.NVRTC_FLAGS))
        env["nvcc_flags"] = _try(lambda: list(_sources.NVCC_FLAGS))
    except Exception as e:  # noqa: BLE001
        env["source_dir"] = f"n/a (cupyfused._sources: {type(e).__name__}: {e})"
    from cupyfused import _cupy_backend, _torch_backend

    env["torch_extensions_dir"] = _try(lambda: str(_torch_backend.extension_root()))
    env["torch_build_dir"] = _try(lambda: str(_torch_backend.extension_dir()))
    env["cupy_cache_dir"] = _try(lambda: str(_cupy_backend.cache_dir()))
    try:
        from cupyfused import available_backends

        env["available_backends"] = available_backends()
    except Exception as e:  # noqa: BLE001
        env["available_backends"] = f"n/a ({type(e).__name__}: {e})"
    return env


INFO_LABELS = (
    ("cupyfused", "cupyfused"),
    ("python", "Python"),
    ("platform", "platform"),
    ("gpu", "GPU"),
    ("gpu_capability", "compute capability"),
    ("gpu_sms", "SMs"),
    ("gpu_memory_gib", "GPU memory (GiB)"),
    ("gpu_count", "GPUs visible"),
    ("driver", "driver"),
    ("torch", "torch"),
    ("torch_cuda", "torch CUDA"),
    ("cudnn", "cuDNN"),
    ("cupy", "CuPy"),
    ("cupy_error", "CuPy import"),
    ("cupy_cuda_runtime", "CuPy CUDA runtime"),
    ("cupy_cuda_driver", "CUDA driver API"),
    ("nvrtc", "NVRTC"),
    ("nvcc", "nvcc"),
    ("nvcc_path", "nvcc path"),
    ("nvrtc_flags", "NVRTC_FLAGS"),
    ("nvcc_flags", "NVCC_FLAGS"),
    ("torch_cuda_arch_list", "TORCH_CUDA_ARCH_LIST"),
    ("torch_extensions_dir", "TORCH_EXTENSIONS_DIR"),
    ("torch_build_dir", "load_inline builds"),
    ("cupy_cache_dir", "CUPY_CACHE_DIR"),
    ("source_dir", "source dir"),
    ("source_sha256", "source_sha256"),
)


def cmd_info(args) -> int:
    env = collect_env()
    if args.json:
        print(json.dumps(env, indent=2, default=str))
        return 0
    width = max(len(label) for _, label in INFO_LABELS) + 1
    for key, label in INFO_LABELS:
        if key not in env:
            continue
        v = env[key]
        if isinstance(v, (list, tuple)):
            v = " ".join(str(x) for x in v)
        print(f"{label + ':':<{width}} {'n/a' if v is None else v}")
    backends = env.get("available_backends")
    if isinstance(backends, dict):
        for name, reason in backends.items():
            print(f"{'backend ' + name + ':':<{width}} {'available' if reason is None else reason}")
    else:
        print(f"{'backends:':<{width}} {backends}")
    return 0


def cmd_check(args) -> int:
    import torch

    if not torch.cuda.is_available():
        print(
            "cupyfused check: no CUDA GPU (torch.cuda.is_available() is False); nothing to check",
            file=sys.stderr,
        )
        return 2
    import cupyfused
    from cupyfused.bench import describe_plan, max_abs_err, reference_model, shape_tolerance, strict_fp32_error
    from cupyfused.reference import make_inputs, reference_forward

    shapes = [(s, "from --shape") for s in args.shape] if args.shape else list(CHECK_SHAPES)
    backends = args.backend or ["torch", "cupy"]
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    print(
        f"cupyfused check: {torch.cuda.get_device_name()} | backends {', '.join(backends)} | "
        f"engine {args.engine} | seed {seed} | tolerance: the bench's (max abs 1e-5 on the default problem, "
        "elsewhere the larger of 1e-5 and 4x strict-FP32 PyTorch's error on the same inputs)",
        flush=True,
    )
    available = cupyfused.available_backends()
    device = torch.device("cuda", torch.cuda.current_device())
    passed = failed = 0
    for i, (shape, why) in enumerate(shapes):
        n, c_in, c_out, h, w, k, g = shape
        key = ",".join(map(str, shape))
        x, p = make_inputs(n, c_in, c_out, h, w, k, g, device, seed=seed + i)
        ref = reference_forward(x, **p, num_groups=g)
        strict = strict_fp32_error(reference_model(shape, p, device), x, ref) if n else float("nan")
        tol = shape_tolerance(shape, strict)
        engine, _ = describe_plan(x, shape)
        outs = {}
        for b in backends:
            status, detail = "FAIL", ""
            if available.get(b) is not None:
                detail = f"backend unavailable: {available[b]}"
            else:
                try:
                    out = torch.full((n, c_out, h - k + 1, w - k + 1), float("nan"), device=device)
                    res = cupyfused.fused_forward(x, **p, num_groups=g, backend=b, engine=args.engine, out=out)
                    torch.cuda.synchronize()
                    err = max_abs_err(out, ref)
                    if res is not out and res.data_ptr() != out.data_ptr():
                        detail = f"returned a new tensor instead of writing out=; max abs err {err:.2e}"
                    else:
                        status = "PASS" if err <= tol else "FAIL"
                        detail = f"max abs err {err:.2e} (tolerance {tol:.1e})"
                        outs[b] = out
                except Exception as e:  # noqa: BLE001 - a failure to report, not to crash on
                    detail = f"{type(e).__name__}: {e}"
            passed += status == "PASS"
            failed += status != "PASS"
            eng = args.engine if args.engine != "auto" else f"auto->{engine}"
            print(f"{status}  {b:<6} {key:<24} engine {eng:<12} {detail}   [{why}]", flush=True)
        if len(outs) == 2:
            eq = torch.equal(*outs.values())
            passed += eq
            failed += not eq
            print(
                f"{'PASS' if eq else 'FAIL'}  bitwise {key:<24} torch and cupy outputs "
                f"{'identical' if eq else 'DIFFER'}",
                flush=True,
            )
        del x, p, ref, outs
        torch.cuda.empty_cache()
    print(f"check: {passed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_bench(args) -> int:
    from cupyfused import bench

    return bench.run(args)


def build_parser() -> argparse.ArgumentParser:
    from cupyfused import bench

    parser = argparse.ArgumentParser(
        prog="python -m cupyfused",
        description="cupyfused: versions (info), correctness (check), timings (bench)",
    )
    sub = parser.add_subparsers(dest="command", metavar="{info,check,bench}")
    sub.required = True

    p = sub.add_parser("info", help="versions, flags, cache paths, source hash, available backends")
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("check", help="both backends vs the float64 reference on a few shapes")
    p.add_argument(
        "--shape",
        action="append",
        type=bench.parse_shape,
        metavar="N,C_in,C_out,H,W,K,G",
        help="check this shape instead of the built-in list (repeatable)",
    )
    p.add_argument(
        "--backend",
        action="append",
        choices=("torch", "cupy"),
        help="backend to check (repeatable; default both)",
    )
    p.add_argument("--engine", default="auto", choices=("auto", "mma", "direct"))
    p.add_argument("--seed", type=int, default=None, help="input seed (default: fresh, printed)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("bench", help="time eager, torch.compile and both backends (CUDA events)")
    bench.add_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
