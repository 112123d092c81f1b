"""The functional API: validation (all of it before any launch), then one launch plan run by either backend."""

from __future__ import annotations

import numbers
import weakref

from . import _cupy_backend, _torch_backend
from .plan import ENGINES, DeviceInfo, make_plan

BACKENDS = ("torch", "cupy")
_BACKEND_MODULES = {"torch": _torch_backend, "cupy": _cupy_backend}


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says why and what to install."""


def available_backends() -> dict:
    """Each backend's name mapped to None where it works here, else to the reason it does not."""
    return {name: _unavailable(name) for name in BACKENDS}


_REASONS: dict = {}


def _unavailable(backend):
    """A backend's reason not to run, looked up once per process (the torch check starts ``ninja --version``)."""
    if backend not in _REASONS:
        _REASONS[backend] = _BACKEND_MODULES[backend].unavailable_reason()
    return _REASONS[backend]


_KIND_OF_TYPE: dict = {}


def _kind(a):
    """'torch', 'cupy', or None for anything else, looked up once per type (CuPy is not imported unless the
    object comes from it)."""
    t = type(a)
    kind = _KIND_OF_TYPE.get(t, False)
    if kind is False:
        kind = None
        if t.__module__.startswith("torch"):
            import torch

            kind = "torch" if issubclass(t, torch.Tensor) else None
        elif t.__module__.startswith("cupy"):
            import cupy

            kind = "cupy" if issubclass(t, cupy.ndarray) else None
        _KIND_OF_TYPE[t] = kind
    return kind


def _device_of(a, kind):
    """('cuda', index) or (device type, None) for a tensor off the GPU."""
    if kind == "cupy":
        return ("cuda", a.device.id)
    return (a.device.type, a.device.index if a.device.type == "cuda" else None)


def _cuda_index(a, kind) -> int:
    """The CUDA device index of ``a``, -1 off the GPU (the cheap form of _device_of, for the checks)."""
    if kind == "cupy":
        return a.device.id
    return a.get_device() if a.is_cuda else -1


def _dtype_name(a) -> str:
    return str(a.dtype).replace("torch.", "")


_FLOAT32: dict = {}


def _is_float32(a, kind) -> bool:
    if kind == "cupy":
        return a.dtype.char == "f"
    f32 = _FLOAT32.get(kind)
    if f32 is None:
        import torch

        f32 = _FLOAT32[kind] = torch.float32
    return a.dtype is f32


_ENGINE_CHOICES = ("auto",) + ENGINES


def _validate(x, params, num_groups, eps, backend, engine, out):
    """All the checks, before any launch: kinds and dtypes (TypeError), then shapes and values, then devices
    (ValueError). Returns (kind, device index, x's shape, C_out, K). A call's host time at small batches is mostly
    this and the launch, so each tensor's attributes are read once (bench/host_profile.py times it)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if engine not in _ENGINE_CHOICES:
        raise ValueError(f"engine must be one of {_ENGINE_CHOICES}; got {engine!r}")
    kind = _kind(x)
    if kind is None:
        raise TypeError(f"x must be a torch.Tensor or a cupy.ndarray; got {type(x).__name__}")
    named = [("x", x, kind)]
    for name, a in params.items():
        k = _kind(a)
        if k is None:
            raise TypeError(f"{name} must be a torch.Tensor or a cupy.ndarray; got {type(a).__name__}")
        named.append((name, a, k))
    for name, a, k in named:
        if not _is_float32(a, k):
            raise TypeError(f"cupyfused computes in float32: {name} has dtype {_dtype_name(a)}")
    x_shape = tuple(x.shape)
    if len(x_shape) != 4:
        raise ValueError(
            f"expected 4-D input x of shape (N, C_in, H, W); got {len(x_shape)}-D input of shape {x_shape}"
        )
    w_shape = tuple(params["conv_weight"].shape)
    if len(w_shape) != 4 or w_shape[2] != w_shape[3]:
        raise ValueError(f"conv_weight must have shape (C_out, C_in, K, K); got {w_shape}")
    N, C_in, H, W = x_shape
    C_out, K = w_shape[0], w_shape[2]
    if C_out < 1 or K < 1:
        raise ValueError(f"conv_weight must have C_out >= 1 and K >= 1; got {w_shape}")
    if w_shape[1] != C_in:
        raise ValueError(
            f"Given groups=1, weight of size {list(w_shape)}, expected input{list(x_shape)} to have "
            f"{w_shape[1]} channels, but got {C_in} channels instead"
        )
    if H < K or W < K:
        raise ValueError(
            f"Calculated input size per channel: ({H} x {W}). Kernel size: ({K} x {K}). "
            "Kernel size can't be greater than actual input size"
        )
    vector = (C_out,)
    for name in ("conv_bias", "gn_weight", "gn_bias"):
        shape = tuple(params[name].shape)
        if shape != vector:
            raise ValueError(f"{name} must have shape ({C_out},); got {shape}")
    for name in ("bias", "scale"):
        shape = tuple(params[name].shape)
        trimmed = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape
        if not (trimmed == (C_out, 1, 1) or all(s == 1 for s in shape)):
            raise ValueError(f"{name} must have shape ({C_out}, 1, 1) (one value per output channel); got {shape}")
    if type(num_groups) is not int and (isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral)):
        raise ValueError(f"num_groups must be a positive integer; got {num_groups!r}")
    if num_groups < 1:
        raise ValueError(f"num_groups must be a positive integer; got {num_groups!r}")
    if C_out % num_groups:
        raise ValueError(f"num_channels must be divisible by num_groups (C_out={C_out}, num_groups={num_groups})")
    if not (type(eps) is float or isinstance(eps, numbers.Real)) or not eps > 0:
        raise ValueError(f"eps must be a positive number; got {eps!r}")
    if out is not None:
        OH, OW = H - K + 1, W - K + 1
        if _kind(out) != kind:
            raise TypeError(f"out must be the same kind of array as x ({kind}); got {type(out).__name__}")
        if not _is_float32(out, kind):
            raise TypeError(f"out must be float32; got {_dtype_name(out)}")
        if tuple(out.shape) != (N, C_out, OH, OW):
            raise ValueError(f"out must have shape {(N, C_out, OH, OW)}; got {tuple(out.shape)}")
        contiguous = out.is_contiguous() if kind == "torch" else out.flags.c_contiguous
        if not contiguous:
            raise ValueError("out must be C-contiguous")
        named.append(("out", out, kind))
    dev = _cuda_index(x, kind)
    if dev < 0:
        raise ValueError(f"x must be a CUDA tensor (on a CUDA device); got a tensor on {_device_of(x, kind)[0]}")
    for name, a, k in named:
        if _cuda_index(a, k) != dev:
            d = _device_of(a, k)
            raise ValueError(
                f"Expected all tensors to be on the same device: x is on cuda:{dev}, {name} is on "
                f"{d[0]}{'' if d[1] is None else f':{d[1]}'}"
            )
    reason = _unavailable(backend)
    if reason is not None:
        raise BackendUnavailableError(f"cupyfused backend {backend!r} is not available: {reason}")
    return kind, dev, x_shape, C_out, K


def fused_forward(x, conv_weight, conv_bias, bias, scale, gn_weight, gn_bias, num_groups, eps=1e-5, *,
                  backend="torch", engine="auto", out=None):  # fmt: skip
    """Conv2d (stride 1, no padding) -> + bias -> * scale -> sigmoid -> GroupNorm(num_groups, eps), float32.

    ``x`` (N, C_in, H, W) and the parameters may be torch CUDA tensors or CuPy arrays (any strides for ``x``);
    the result is the same kind as ``x``: a new contiguous (N, C_out, H-K+1, W-K+1) array, or ``out`` if given.
    Parameter shapes are those of the reference ``Model``: conv_weight (C_out, C_in, K, K), conv_bias (C_out,),
    bias and scale (C_out, 1, 1), gn_weight and gn_bias (C_out,).

    backend: "torch" (nvcc build through load_inline) or "cupy" (NVRTC through cupy.RawModule); both run the
    same kernels from ``cuda_src/`` and give bitwise identical results. The work runs on the current stream of
    x's framework (torch's for tensors, CuPy's for arrays) on x's device.
    engine: "auto" (the plan's choice: the first of the three below that can run the shape), "fused" (one pass
    over DRAM: a persistent kernel with a 3xTF32 tensor-core conv that keeps its tiles on chip while the blocks
    of a sample exchange the GroupNorm statistics), "mma" (two passes with the same conv: statistics, then conv
    again + normalize) or "direct" (two passes with an FP32 FMA conv, any shape). Forcing "fused" or "mma" where
    the shape does not fit them raises ValueError; "auto" falls back with a PerformanceWarning, and
    ``cupyfused.make_plan(...).describe()`` names the kernels a shape gets. All engines agree with the float64
    reference to FP32 accuracy (they may differ from each other in the last bits: their statistics are
    merged in different orders).

    Forward only: the result carries no autograd history. Errors are raised before anything is launched.
    """
    params = dict(conv_weight=conv_weight, conv_bias=conv_bias, bias=bias, scale=scale, gn_weight=gn_weight,
                  gn_bias=gn_bias)  # fmt: skip
    kind, dev, x_shape, C_out, K = _validate(x, params, num_groups, eps, backend, engine, out)
    N, C_in, H, W = x_shape
    out_shape = (N, C_out, H - K + 1, W - K + 1)
    # Parameters of the other framework join x's through DLPack (zero-copy).
    given, params = params, {k: _to_kind(v, kind) for k, v in params.items()}
    if kind == "torch":
        return _run_torch_input(x, params, given, num_groups, eps, backend, engine, out, dev, out_shape, K)
    return _run_cupy_input(x, params, num_groups, eps, backend, engine, out, dev, out_shape, K)


def _to_kind(a, kind):
    if _kind(a) == kind:
        return a
    if kind == "torch":
        import torch

        return torch.from_dlpack(a)
    import cupy

    return cupy.from_dlpack(a.detach())


def _buffers(x, params, C_out, ws, out, lib):
    """The kernels' pointer arguments: the weight contiguous, the other parameters as C_out contiguous values
    (each passed as it is where it already is: no copy, no new array; a single value is broadcast). ``lib``:
    None for torch tensors, else the cupy module."""

    def vector(a):
        if lib is None:
            if a.numel() == C_out and a.is_contiguous():
                return a
            a = a.detach().reshape(-1)
            return (a.expand(C_out) if a.shape[0] == 1 else a).contiguous()
        if a.size == C_out and a.flags.c_contiguous:
            return a
        a = a.reshape(-1)
        return lib.ascontiguousarray(lib.broadcast_to(a, (C_out,)) if a.shape[0] == 1 else a)

    w = params["conv_weight"]
    if lib is None:
        w = w if w.is_contiguous() else w.detach().contiguous()
    else:
        w = lib.ascontiguousarray(w)
    return dict(x=x, w=w, conv_b=vector(params["conv_bias"]), bias=vector(params["bias"]),
                scale=vector(params["scale"]), gamma=vector(params["gn_weight"]), beta=vector(params["gn_bias"]),
                partials=ws, out=out)  # fmt: skip


def _run_torch_input(x, params, given, G, eps, backend, engine, out, dev, out_shape, K):
    """torch x on either backend. ``params``: the parameters as torch tensors; ``given``: as passed in."""
    import torch

    if out is None:
        out = torch.empty(out_shape, dtype=torch.float32, device=x.device)
    if out.numel() == 0:
        return out
    plan = _plan(x.shape, out_shape[1], K, G, _device_info("torch", dev), engine, eps)
    if backend == "torch":  # the extension launches under its own device guard on torch's current stream
        ws = torch.empty(plan.workspace_shape, dtype=torch.float64, device=x.device)
        bufs = _buffers(x, params, out_shape[1], ws, out, None)
        _torch_backend.launch(plan, bufs, x.stride(), dev)
        return out
    import cupy

    # torch tensors reach CuPy through DLPack (zero-copy) on torch's current stream, so no extra sync.
    stream = _cupy_backend.torch_stream(dev)
    with cupy.cuda.Device(dev), stream:
        xc, outc = _cupy_backend.view(x), _cupy_backend.view(out)
        pc = {k: given[k] if _kind(given[k]) == "cupy" else _param_view(given[k], params[k]) for k in params}
        if _cupy_backend.capturing(stream, dev):
            # CuPy's pool cannot allocate while torch captures the stream; torch's allocator can.
            ws = _cupy_backend.view(torch.empty(plan.workspace_shape, dtype=torch.float64, device=x.device))
        else:
            ws = cupy.empty(plan.workspace_shape, dtype=cupy.float64)  # less host time than the above
        bufs = _buffers(xc, pc, out_shape[1], ws, outc, cupy)
        _cupy_backend.launch(plan, bufs, x.stride(), dev, stream)
    return out


# CuPy views (DLPack) of torch parameter tensors, reused while the tensor object lives and still points at the
# same memory: converting costs more host time than a small launch. Keyed by id() with a weak reference to the
# tensor (a WeakKeyDictionary would compare tensors with ==); a view holds the tensor's storage, not the Python
# object, so an entry goes when the tensor does.
_PARAM_VIEWS: dict = {}


def _forget(k, ref):
    if _PARAM_VIEWS.get(k, (None,))[0] is ref:
        del _PARAM_VIEWS[k]


def _param_view(given, tensor):
    """The CuPy view of ``tensor`` (the torch form of ``given``), cached under the object the caller passed. The
    address names the device too (one address space for all GPUs)."""
    key = (tensor.data_ptr(), tensor.shape, tensor.stride())
    hit = _PARAM_VIEWS.get(id(given))
    if hit is not None and hit[0]() is given and hit[1] == key:
        return hit[2]
    view = _cupy_backend.view(tensor)
    k = id(given)
    _PARAM_VIEWS[k] = (weakref.ref(given, lambda r, k=k: _forget(k, r)), key, view)
    return view


def _run_cupy_input(x, params, G, eps, backend, engine, out, dev, out_shape, K):
    import cupy

    with cupy.cuda.Device(dev):
        if out is None:
            out = cupy.empty(out_shape, dtype=cupy.float32)
        if out.size == 0:
            return out
        itemsize = x.dtype.itemsize
        if any(s % itemsize for s in x.strides):
            x = cupy.ascontiguousarray(x)  # a byte stride of no whole element: no kernel can index it
        strides = tuple(s // itemsize for s in x.strides)
        plan = _plan(x.shape, out_shape[1], K, G, _device_info("cupy", dev), engine, eps)
        stream = cupy.cuda.get_current_stream()
        if backend == "cupy":
            ws = cupy.empty(plan.workspace_shape, dtype=cupy.float64)
            bufs = _buffers(x, params, out_shape[1], ws, out, cupy)
            _cupy_backend.launch(plan, bufs, strides, dev, stream)
            return out
    # The torch backend on CuPy arrays runs on CuPy's current stream, through torch's view of it.
    import torch

    device = torch.device("cuda", dev)
    with torch.cuda.device(dev), torch.cuda.stream(torch.cuda.ExternalStream(stream.ptr, device=device)):
        xt = torch.from_dlpack(x)
        pt = {k: torch.from_dlpack(v) for k, v in params.items()}
        ws = torch.empty(plan.workspace_shape, dtype=torch.float64, device=device)
        bufs = _buffers(xt, pt, out_shape[1], ws, torch.from_dlpack(out), None)
        _torch_backend.launch(plan, bufs, strides, dev)
    return out


_PLANS: dict = {}


def _plan(x_shape, C_out, K, G, info, engine, eps):
    """make_plan, memoized per process (a plan is a pure function of its arguments; planning costs more host
    time than a small launch)."""
    key = (make_plan, tuple(x_shape), C_out, K, G, info, engine, eps)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= 1024:
            _PLANS.clear()
        plan = _PLANS[key] = make_plan(x_shape, C_out, K, G, info, engine, eps)
    return plan


_DEVICE_INFO: dict = {}


def _device_info(source: str, dev: int) -> DeviceInfo:
    """Device facts, cached per (device, who read them): torch's for torch inputs, CuPy's for CuPy inputs, so a
    given input gets the same plan on both backends."""
    key = (source, dev)
    if key not in _DEVICE_INFO:
        _DEVICE_INFO[key] = DeviceInfo.from_torch(dev) if source == "torch" else DeviceInfo.from_cupy(dev)
    return _DEVICE_INFO[key]
