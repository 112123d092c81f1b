"""``python -m cupyfused bench``: eager PyTorch, torch.compile and both cupyfused backends, timed in one run.

For every shape the inputs are built once (``reference.make_inputs``) and every implementation is called
through an ``nn.Module`` holding the same state: ``Model`` (eager and torch.compile) and ``ModelNew`` with
``Model``'s state_dict loaded (the two cupyfused backends). Per implementation, in this order:

1. correctness: the first call on the full batch (its wall time is the first-build time for cupyfused and
   the compile time for torch.compile), max |out - ref| on the first min(N, 8) samples against the float64
   ``reference_forward``;
2. time: warm-up, then CUDA events recorded on torch's current stream around each call (the stream both
   cupyfused backends launch on when given torch tensors); median and 20th/80th percentiles;
3. memory: one more call after ``reset_peak_memory_stats``: torch's peak over what was allocated before it
   plus what CuPy's default pool had to grow by (emptied of free blocks first).

The DRAM floor comes from a 1 GiB device copy measured in the same run: floor_ms = (input + output bytes) /
copy bandwidth (bytes read + written per second).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import sys
import time
import traceback
from pathlib import Path

from .reference import DEFAULT_PROBLEM

IMPLS = ("eager", "torch.compile", "cupyfused-torch", "cupyfused-cupy", "cupyfused-sm80")
BACKEND_OF = {"cupyfused-torch": "torch", "cupyfused-cupy": "cupy", "cupyfused-sm80": "torch"}
# cupyfused-sm80: the torch backend built for sm_80 (TORCH_CUDA_ARCH_LIST "8.0+PTX"), the A100 build; on a newer
# GPU the driver compiles its compute_80 PTX, so the same kernels an A100 runs are timed here.
SM80_ARCH = "8.0+PTX"
SHAPE_FIELDS = ("N", "C_in", "C_out", "H", "W", "K", "G")
DEFAULT_SHAPE = tuple(DEFAULT_PROBLEM[k] for k in SHAPE_FIELDS)  # KernelBench level 2, problem 21
# --sweep: the batch at the default channels and 256 x 256, then a second set in which every value of C_in
# (3, 16, 64), C_out (16, 64), K (1, 5) and G (1, 4, 16) appears at least twice.
SWEEP_N = tuple((n,) + DEFAULT_SHAPE[1:] for n in (1, 8, 32, 128))
SWEEP_SET = (
    (32, 3, 16, 256, 256, 1, 1),
    (32, 16, 64, 256, 256, 5, 4),
    (32, 64, 16, 256, 256, 5, 16),
    (32, 3, 64, 256, 256, 5, 16),
    (32, 16, 16, 256, 256, 1, 4),
    (32, 64, 64, 256, 256, 1, 1),
)
REF_SAMPLES = 8  # the float64 reference runs on the first min(N, 8) samples
TOL = 1e-5  # "FP32-class" on the default problem (SPEC.md)
FP32_FACTOR = 4  # elsewhere: within this factor of a strict-FP32 PyTorch forward's own error, if that is larger
MIN_ITERS = 20
MiB = 1 << 20
ROW_FIELDS = ("ms", "p20", "p80", "speedup_vs_eager", "peak_extra_mib", "max_abs_err", "pct_floor", "correct",
              "first_call_s", "error")  # fmt: skip


# ----------------------------------------------------------------------------------------------- arguments
def parse_shape(text: str) -> tuple:
    try:
        vals = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        vals = ()
    if len(vals) != 7:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected 7 integers N,C_in,C_out,H,W,K,G")
    n, c_in, c_out, h, w, k, g = vals
    if n < 0 or min(c_in, c_out, h, w, k, g) < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r}: N must be >= 0 and the rest >= 1")
    if c_out % g:
        raise argparse.ArgumentTypeError(f"shape {text!r}: G={g} does not divide C_out={c_out}")
    if h < k or w < k:
        raise argparse.ArgumentTypeError(f"shape {text!r}: H and W must be >= K")
    return vals


def parse_impls(values) -> list:
    if not values:
        return list(IMPLS)
    out = []
    for v in values:
        for name in v.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in IMPLS:
                raise SystemExit(f"cupyfused bench: unknown --impl {name!r}; choose from {', '.join(IMPLS)}")
            if name not in out:
                out.append(name)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shape",
        action="append",
        type=parse_shape,
        metavar="N,C_in,C_out,H,W,K,G",
        help="problem shape (repeatable); default: the default problem 128,8,32,256,256,3,8",
    )
    p.add_argument(
        "--impl",
        action="append",
        metavar="NAME[,NAME]",
        help=f"implementations to run (repeatable or comma-separated; default all): {', '.join(IMPLS)}",
    )
    p.add_argument(
        "--compile-mode",
        default="max-autotune-no-cudagraphs",
        help="torch.compile mode (default: %(default)s)",
    )
    p.add_argument("--iters", type=int, default=50, help=f"timed runs per implementation (>= {MIN_ITERS})")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before timing (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for make_inputs (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    p.add_argument(
        "--sweep",
        action="store_true",
        help="after the --shape list (default: the default problem), the batch sweep N = 1, 8, 32, 128 and a "
        "second shape set (C_in 3/16/64, C_out 16/64, K 1/5, G 1/4/16); ends with a markdown summary table",
    )


# ----------------------------------------------------------------------------------------------- measuring
def _percentiles(times_ms):
    import numpy as np

    p20, p50, p80 = np.percentile(np.asarray(times_ms, dtype=np.float64), [20, 50, 80])
    return float(p50), float(p20), float(p80)


def time_cuda(fn, iters: int, warmup: int) -> dict:
    """Median, p20, p80 in ms of ``fn()`` with CUDA events on torch's current stream."""
    import torch

    stream = torch.cuda.current_stream()
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    t0 = time.perf_counter()
    for s, e in zip(starts, ends):
        s.record(stream)
        fn()
        e.record(stream)
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 1e3 / iters
    ms, p20, p80 = _percentiles([s.elapsed_time(e) for s, e in zip(starts, ends)])
    return {"ms": ms, "p20": p20, "p80": p80, "wall_ms_per_iter": wall_ms}


def _cupy_pool():
    try:
        import cupy

        return cupy.get_default_memory_pool()
    except Exception:
        return None


def peak_extra_bytes(fn) -> dict:
    """Extra device memory at the peak of one ``fn()`` call, output included, both allocators counted."""
    import torch

    torch.cuda.synchronize()
    pool = _cupy_pool()
    if pool is not None:
        pool.free_all_blocks()  # the pool only grows from here, so its growth bounds the call's peak
        cp_base = pool.total_bytes()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    torch_extra = torch.cuda.max_memory_allocated() - base
    cupy_extra = pool.total_bytes() - cp_base if pool is not None else 0
    del out
    return {"torch": int(torch_extra), "cupy": int(cupy_extra), "total": int(torch_extra + cupy_extra)}


def copy_bandwidth(nbytes: int = 1 << 30, iters: int = 20) -> dict:
    """Device copy bandwidth (bytes read + written per second) from a ``copy_`` of ``nbytes``."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    src.fill_(1.0)
    t = time_cuda(functools.partial(dst.copy_, src), iters=iters, warmup=3)
    return {"bytes": nbytes, "ms": t["ms"], "tb_s": 2 * nbytes / (t["ms"] * 1e-3) / 1e12}


def max_abs_err(out, ref) -> float:
    """max |out[:s] - ref| in float64; NaN if any element of the slice is not finite."""
    import torch

    if ref.numel() == 0:
        return 0.0
    sl = out[: ref.shape[0]].double()
    if not bool(torch.isfinite(sl).all()):
        return float("nan")
    return float((sl - ref).abs().max())


# ----------------------------------------------------------------------------------------------- building
def _shape_key(shape) -> str:
    return ",".join(str(v) for v in shape)


def _state_dict(params: dict) -> dict:
    return {
        "conv.weight": params["conv_weight"],
        "conv.bias": params["conv_bias"],
        "bias": params["bias"],
        "scale": params["scale"],
        "group_norm.weight": params["gn_weight"],
        "group_norm.bias": params["gn_bias"],
    }


def reference_model(shape, params, device):
    """The reference ``Model`` of ``shape`` holding ``params``, in eval mode."""
    import cupyfused

    _, c_in, c_out, _, _, k, g = shape
    model = cupyfused.Model(c_in, c_out, k, g, (c_out, 1, 1), (c_out, 1, 1)).to(device)
    model.load_state_dict(_state_dict(params))
    return model.eval()


def build_callables(shape, model, impls, compile_mode, device) -> tuple:
    """name -> callable f(x), from the reference ``model`` (eager) and its parameters; errors for the ones that
    cannot be built."""
    import torch

    import cupyfused

    _, c_in, c_out, _, _, k, g = shape
    ctor = (c_in, c_out, k, g, (c_out, 1, 1), (c_out, 1, 1))
    fns, errors = {}, {}
    for name in impls:
        try:
            if name == "eager":
                fns[name] = model
            elif name == "torch.compile":
                if not hasattr(torch, "compile"):
                    raise RuntimeError(f"torch {torch.__version__} has no torch.compile")
                fns[name] = torch.compile(model, mode=compile_mode)
            else:
                m = cupyfused.ModelNew(*ctor, backend=BACKEND_OF[name]).to(device)
                m.load_state_dict(model.state_dict())
                m.eval()
                fns[name] = _with_arch(m, SM80_ARCH) if name == "cupyfused-sm80" else m
        except Exception as e:  # noqa: BLE001 - reported as a row, not a crash
            errors[name] = f"{type(e).__name__}: {e}"
    return fns, errors


def shape_tolerance(shape, strict_fp32_err: float) -> float:
    """The max abs error an implementation may have on ``shape``: 1e-5 on the default problem (SPEC.md),
    elsewhere max(1e-5, FP32_FACTOR x the error strict-FP32 PyTorch makes on the same inputs)."""
    if tuple(shape) == DEFAULT_SHAPE or not math.isfinite(strict_fp32_err):
        return TOL
    return max(TOL, FP32_FACTOR * strict_fp32_err)


def strict_fp32_error(model, x, ref) -> float:
    """max |out - ref| of the reference Model in float32 with TF32 off (cuDNN and matmul): what a genuine FP32
    implementation errs by on these inputs. Where GroupNorm divides by a small group spread (e.g. one channel
    per group) every FP32 implementation errs above 1e-5, so the bench's tolerance for a shape is
    max(1e-5, FP32_FACTOR x this); on the default problem it is 1e-5 (SPEC.md)."""
    import torch

    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            return max_abs_err(model(x), ref)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def _with_arch(module, arch):
    """``module`` run through the torch backend built for ``arch`` (TORCH_CUDA_ARCH_LIST syntax)."""
    from cupyfused import _torch_backend

    def call(x):
        old, _torch_backend.ARCH = _torch_backend.ARCH, arch
        try:
            return module(x)
        finally:
            _torch_backend.ARCH = old

    return call


def describe_plan(x, shape) -> tuple:
    """(engine, describe()) of the launch plan cupyfused picks for this shape, or (None, error)."""
    try:
        from cupyfused.plan import DeviceInfo, make_plan

        _, _, c_out, _, _, k, g = shape
        plan = make_plan(tuple(x.shape), c_out, k, g, DeviceInfo.from_torch(x.device))
        return plan.engine, plan.describe()
    except Exception as e:  # noqa: BLE001
        return None, f"make_plan failed: {type(e).__name__}: {e}"


# ----------------------------------------------------------------------------------------------- one shape
def bench_shape(shape, impls, args, bw_tb_s, log) -> tuple:
    import torch

    import cupyfused
    from cupyfused.reference import make_inputs, reference_forward

    n, c_in, c_out, h, w, k, g = shape
    oh, ow = h - k + 1, w - k + 1
    device = torch.device("cuda", torch.cuda.current_device())
    x, params = make_inputs(n, c_in, c_out, h, w, k, g, device, seed=args.seed)
    in_bytes = x.numel() * x.element_size()
    out_bytes = n * c_out * oh * ow * 4
    floor_ms = (in_bytes + out_bytes) / (bw_tb_s * 1e12) * 1e3
    s = min(n, REF_SAMPLES)
    ref = reference_forward(x[:s], **params, num_groups=g)
    model = reference_model(shape, params, device)  # the eager row and the strict-FP32 yardstick
    fp32_err = strict_fp32_error(model, x[:s], ref)
    tol = shape_tolerance(shape, fp32_err)
    engine, plan_text = describe_plan(x, shape)
    backends = cupyfused.available_backends()
    info = {
        **dict(zip(SHAPE_FIELDS, shape)),
        "key": _shape_key(shape),
        "input_mib": in_bytes / MiB,
        "output_mib": out_bytes / MiB,
        "floor_ms": floor_ms,
        "ref_samples": s,
        "strict_fp32_err": fp32_err,
        "tolerance": tol,
        "engine": engine,
        "plan": plan_text,
        "first_call_s": {},
        "backends_bitwise_equal": None,
    }
    log(
        f"[bench] shape {info['key']}: input {in_bytes / MiB:.1f} MiB, output {out_bytes / MiB:.1f} MiB, "
        f"floor {floor_ms:.3f} ms; plan: {plan_text}"
    )

    with torch.no_grad():
        fns, errors = build_callables(shape, model, impls, args.compile_mode, device)
        for name, b in BACKEND_OF.items():
            if name in fns and backends.get(b) is not None:
                errors[name] = f"backend {b!r} unavailable: {backends[b]}"
                del fns[name]

        rows, outputs = [], {}
        for name in impls:
            row = {"impl": name, "shape": info["key"], **dict(zip(SHAPE_FIELDS, shape))}
            row.update(dict.fromkeys(ROW_FIELDS))
            if name in BACKEND_OF:
                row["engine"] = engine
            if name in errors:
                row["error"] = errors[name]
                log(f"[bench]   {name}: {row['error']}")
                rows.append(row)
                continue
            fn = fns[name]
            try:
                log(f"[bench]   {name}: first call (correctness) ...")
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = fn(x)
                torch.cuda.synchronize()
                row["first_call_s"] = time.perf_counter() - t0
                info["first_call_s"][name] = row["first_call_s"]
                err = max_abs_err(out, ref)
                row["max_abs_err"] = err
                row["correct"] = bool(err <= tol)  # NaN compares False
                if name in ("cupyfused-torch", "cupyfused-cupy"):
                    other = "cupyfused-cupy" if name == "cupyfused-torch" else "cupyfused-torch"
                    if other in outputs:
                        info["backends_bitwise_equal"] = bool(torch.equal(outputs.pop(other), out))
                    else:
                        outputs[name] = out
                del out
                log(
                    f"[bench]   {name}: first call {row['first_call_s']:.2f} s, max abs err {err:.3g}"
                    f"{'' if row['correct'] else f' (FAILS tol {tol:.2g})'}; timing {args.iters} runs ..."
                )
                call = functools.partial(fn, x)
                row.update(time_cuda(call, iters=args.iters, warmup=args.warmup))
                if row["wall_ms_per_iter"] > 2 * row["ms"] and row["wall_ms_per_iter"] > 0.2:
                    log(
                        f"[bench]   {name}: note: {row['wall_ms_per_iter']:.3f} ms wall per call vs "
                        f"{row['ms']:.3f} ms on the stream: launch-bound, or work outside the timed stream"
                    )
                mem = peak_extra_bytes(call)
                row["peak_extra_mib"] = mem["total"] / MiB
                row["peak_extra_mib_torch"] = mem["torch"] / MiB
                row["peak_extra_mib_cupy"] = mem["cupy"] / MiB
                row["pct_floor"] = floor_ms / row["ms"] * 100 if row["ms"] > 0 else None
            except Exception as e:  # noqa: BLE001 - a failing implementation is a row, not a crash
                row["error"] = f"{type(e).__name__}: {e}".strip()
                log(f"[bench]   {name}: ERROR {row['error']}")
                log(traceback.format_exc(limit=-3))
            rows.append(row)
        outputs.clear()

    eager = next((r for r in rows if r["impl"] == "eager" and r["ms"]), None)
    for r in rows:
        if eager and r["ms"]:
            r["speedup_vs_eager"] = eager["ms"] / r["ms"]
    return info, rows


# ----------------------------------------------------------------------------------------------- reporting
def _fmt(v, spec, width):
    if v is None:
        return "-".rjust(width)
    if isinstance(v, float) and math.isnan(v):
        return "nan".rjust(width)
    return format(v, spec).rjust(width)


def format_table(result: dict) -> str:
    lines = [
        f"== cupyfused bench: {result['gpu']} | torch {result['torch']} (CUDA {result['cuda']}) | "
        f"cupy {result['cupy']} | source_sha256 {str(result['source_sha256'])[:12]}",
        f"copy bandwidth {result['copy_tb_s']:.3f} TB/s (1 GiB copy_, read+write); "
        f"torch.compile mode {result['flags']['compile_mode']}; {result['flags']['iters']} timed runs",
    ]
    head = f"{'impl':<16}{'ms':>9}{'p20':>9}{'p80':>9}{'speedup':>9}{'peak MiB':>10}{'max abs err':>13}{'% floor':>9}"
    for sh in result["shapes"]:
        lines.append("")
        lines.append(
            f"shape N,C_in,C_out,H,W,K,G = {sh['key']}: floor {sh['floor_ms']:.4g} ms "
            f"(input {sh['input_mib']:.1f} MiB + output {sh['output_mib']:.1f} MiB)"
        )
        lines.append(head)
        for r in (r for r in result["rows"] if r["shape"] == sh["key"]):
            if r["error"] and r["ms"] is None:
                lines.append(f"{r['impl']:<16}ERROR {r['error'][:200]}")
                continue
            cells = [
                _fmt(r["ms"], ".3f", 9),
                _fmt(r["p20"], ".3f", 9),
                _fmt(r["p80"], ".3f", 9),
                f"{r['speedup_vs_eager']:>8.2f}x" if r["speedup_vs_eager"] else "-".rjust(9),
                _fmt(r["peak_extra_mib"], ".1f", 10),
                _fmt(r["max_abs_err"], ".2e", 13),
                _fmt(r["pct_floor"], ".1f", 8) + "%",
            ]
            note = "" if r["correct"] or r["correct"] is None else "  FAILS tol"
            note += f"  ({r['error'][:80]})" if r["error"] else ""
            lines.append(f"{r['impl']:<16}" + "".join(cells) + note)
        if sh["first_call_s"]:
            lines.append(
                "first call (build/compile + run): "
                + ", ".join(f"{k} {v:.2f} s" for k, v in sh["first_call_s"].items())
            )
        lines.append(
            f"tolerance {sh['tolerance']:.2g} (strict-FP32 PyTorch errs {sh['strict_fp32_err']:.2g} on these inputs); "
            f"cupyfused engine: {sh['engine']} | plan: {sh['plan']}"
        )
        eq = sh["backends_bitwise_equal"]
        lines.append(f"backends bitwise equal: {'n/a' if eq is None else ('yes' if eq else 'NO')}")
    return "\n".join(lines)


def format_markdown(result: dict) -> str:
    """One row per shape: the plan's engine, each implementation's ms, cupyfused's speedups, % of the floor."""
    impls = [i for i in IMPLS if any(r["impl"] == i for r in result["rows"])]
    head = ["N,C_in,C_out,H,W,K,G", "floor ms"] + [f"{i} ms" for i in impls]
    head += ["cupyfused vs eager", "vs torch.compile", "% of floor", "cupyfused kernels"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sh in result["shapes"]:
        rows = {r["impl"]: r for r in result["rows"] if r["shape"] == sh["key"]}
        ms = {i: rows[i]["ms"] if i in rows else None for i in impls}
        ours = [ms[i] for i in ("cupyfused-torch", "cupyfused-cupy") if ms.get(i)]
        best = min(ours) if ours else None

        ratio = {p: f"{ms[p] / best:.2f}x" if best and ms.get(p) else "-" for p in ("eager", "torch.compile")}
        cells = [sh["key"], f"{sh['floor_ms']:.3f}"] + [f"{ms[i]:.3f}" if ms[i] else "-" for i in impls]
        cells += [ratio["eager"], ratio["torch.compile"], f"{sh['floor_ms'] / best * 100:.0f}%" if best else "-"]
        plan = str(sh["plan"])
        cells.append(
            plan.split(";")[0]
            + (f" ({plan.split('; ')[-1]})" if "; two passes" in plan or "does not fit" in plan else "")
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------- entry
def _release() -> None:
    """Drop compiled graphs and cached blocks between shapes (the copy buffers and each shape's tensors)."""
    import torch

    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001 - torch without dynamo
        pass
    torch.cuda.empty_cache()


def run_benchmark(shapes, impls, args, log=print) -> dict:
    import torch

    from cupyfused.cli import collect_env

    env = collect_env()
    log(f"[bench] {env.get('gpu')} | torch {torch.__version__} | cupy {env.get('cupy')}")
    bw = copy_bandwidth()
    _release()
    log(f"[bench] device copy: {bw['tb_s']:.3f} TB/s (1 GiB in {bw['ms']:.3f} ms, read+write)")

    shape_infos, rows = [], []
    first_build = {}
    for shape in shapes:
        info, shape_rows = bench_shape(shape, impls, args, bw["tb_s"], log)
        _release()
        shape_infos.append(info)
        rows.extend(shape_rows)
        for name in BACKEND_OF:
            if name in info["first_call_s"] and name not in first_build:
                first_build[name] = info["first_call_s"][name]
    eqs = [s["backends_bitwise_equal"] for s in shape_infos if s["backends_bitwise_equal"] is not None]
    return {
        "gpu": env.get("gpu"),
        "gpu_capability": env.get("gpu_capability"),
        "driver": env.get("driver"),
        "torch": torch.__version__,
        "cupy": env.get("cupy"),
        "cuda": torch.version.cuda,
        "cupy_cuda_runtime": env.get("cupy_cuda_runtime"),
        "nvrtc": env.get("nvrtc"),
        "nvcc": env.get("nvcc"),
        "cupyfused": env.get("cupyfused"),
        "source_sha256": env.get("source_sha256"),
        "flags": {
            "argv": sys.argv[1:],
            "impls": impls,
            "compile_mode": args.compile_mode,
            "iters": args.iters,
            "warmup": args.warmup,
            "seed": args.seed,
            "tolerance": f"{TOL:g} on the default problem; elsewhere max({TOL:g}, {FP32_FACTOR} x strict-FP32 error)",
            "nvrtc_flags": env.get("nvrtc_flags"),
            "nvcc_flags": env.get("nvcc_flags"),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        },
        "available_backends": env.get("available_backends"),
        "floor_ms": shape_infos[0]["floor_ms"] if shape_infos else None,
        "copy_tb_s": bw["tb_s"],
        "copy_ms_1gib": bw["ms"],
        "first_build_s": first_build,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shapes": shape_infos,
        "rows": rows,
        "backends_bitwise_equal": all(eqs) if eqs else None,
    }


def run(args: argparse.Namespace) -> int:
    if args.iters < MIN_ITERS:
        print(f"cupyfused bench: --iters must be >= {MIN_ITERS} (got {args.iters})", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print(
            "cupyfused bench: no CUDA GPU (torch.cuda.is_available() is False); the benchmark needs one",
            file=sys.stderr,
        )
        return 2
    shapes = list(args.shape or [DEFAULT_SHAPE])
    if args.sweep:
        shapes += [sh for sh in SWEEP_N + SWEEP_SET if sh not in shapes]
    impls = parse_impls(args.impl)

    def log(msg):
        print(msg, flush=True)

    result = run_benchmark(shapes, impls, args, log=log)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_json_safe(result), indent=2, default=str) + "\n")
        log(f"[bench] wrote {path}")
    print()
    print(format_table(result), flush=True)
    if args.sweep:
        print()
        print(format_markdown(result), flush=True)

    # Exit status: 1 when eager or a cupyfused backend failed to run, a cupyfused result misses the
    # tolerance, or the backends disagree. A torch.compile failure is a reported row, not a failure.
    bad = [
        r
        for r in result["rows"]
        if r["impl"] != "torch.compile" and (r["ms"] is None or (r["impl"] in BACKEND_OF and not r["correct"]))
    ]
    return 1 if bad or result["backends_bitwise_equal"] is False else 0
