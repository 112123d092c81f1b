"""Backend ``cupy``: the sources of ``cuda_src/`` compiled by NVRTC through ``cupy.RawModule`` and launched by
CuPy. Torch tensors are shared with CuPy zero-copy through DLPack; CuPy arrays need no torch at all.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
import warnings

import numpy as np

from . import _sources
from .plan import ALL_KERNELS

_modules: dict = {}


def _cuda_major():
    try:
        import torch

        return int(torch.version.cuda.split(".")[0]) if torch.version.cuda else None
    except Exception:  # pragma: no cover
        return None


def pip_package() -> str:
    """The CuPy wheel that matches the installed torch's CUDA major version."""
    return f"cupy-cuda{_cuda_major() or 12}x"


def cache_dir() -> pathlib.Path:
    """CuPy's kernel cache (``CUPY_CACHE_DIR``, default ``~/.cupy/kernel_cache``)."""
    return pathlib.Path(os.environ.get("CUPY_CACHE_DIR") or pathlib.Path.home() / ".cupy" / "kernel_cache")


def unavailable_reason():
    """None if this backend can run here, else why not."""
    try:
        import cupy
    except ImportError:
        return f"CuPy is not installed: pip install {pip_package()}"
    except Exception as e:  # a broken install (e.g. CUDA libraries missing)
        return f"CuPy failed to import ({type(e).__name__}: {e}); reinstall with pip install {pip_package()}"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA GPU"
    except Exception as e:
        return f"CuPy sees no CUDA GPU ({type(e).__name__}: {e})"
    return None


def module(device_id: int, defines: dict):
    import cupy

    key = (device_id, tuple(sorted(defines.items())))
    if key not in _modules:
        t0 = time.perf_counter()
        with cupy.cuda.Device(device_id):
            mod = cupy.RawModule(code=_sources.source_text(defines), options=_sources.NVRTC_FLAGS, backend="nvrtc")
            kernels = {name: mod.get_function(name) for name in ALL_KERNELS}  # compiles (or loads from cache)
        seconds = time.perf_counter() - t0
        if seconds > 2.0:
            print(f"cupyfused: NVRTC build for GPU {device_id} took {seconds:.1f} s", file=sys.stderr, flush=True)
        _modules[key] = kernels
    return _modules[key]


_PACK = {"q": np.int64, "i": np.int32, "f": np.float32}


def view(tensor):
    """CuPy's zero-copy view of a torch CUDA tensor, through a DLPack capsule: the caller works on the stream
    the tensor's producer used (torch's current stream), so the ``__dlpack__`` stream handshake, which costs
    more host time than the launch, has nothing to order."""
    import cupy
    from torch.utils import dlpack

    return cupy.from_dlpack(dlpack.to_dlpack(tensor.detach()))


_STREAMS: dict = {}


def external_stream(torch_stream, device_id: int):
    """CuPy's view of a torch stream (cached per stream handle): CuPy 14's ``Stream.from_external`` where the
    stream speaks the ``__cuda_stream__`` protocol, else ``ExternalStream`` (deprecated in CuPy 14, so its
    warning is muted). The view owns nothing, so a reused handle is harmless."""
    import cupy

    key = (device_id, torch_stream.cuda_stream)
    stream = _STREAMS.get(key)
    if stream is not None:
        return stream
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None and hasattr(torch_stream, "__cuda_stream__"):
        try:
            stream = from_external(torch_stream)
        except Exception:  # an older protocol version on either side: the pointer form below still works
            pass
    if stream is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            stream = cupy.cuda.ExternalStream(torch_stream.cuda_stream, device_id)
    if len(_STREAMS) >= 256:
        _STREAMS.clear()
    _STREAMS[key] = stream
    return stream


_SCALARS: dict = {}
# id of a build's kernel (kept for the process in _modules, one per device and define set) -> the dynamic shared
# memory it was allowed above 48 KiB
_OPTED_IN: dict = {}


def _packed(args) -> tuple:
    """The argument tuple for CuPy: arrays as they are, scalars as numpy scalars of their C type (made once per
    distinct scalar list)."""
    key = tuple(v for t, v in args if t != "p")
    scalars = _SCALARS.get(key)
    if scalars is None:
        if len(_SCALARS) >= 256:
            _SCALARS.clear()
        scalars = _SCALARS[key] = [_PACK[t](v) for t, v in args if t != "p"]
    it = iter(scalars)
    return tuple(v if t == "p" else next(it) for t, v in args)


def launch(plan, args, device_id: int, stream) -> None:
    """Run the plan's kernels in order on ``stream``; pointer arguments are CuPy arrays on ``device_id``."""
    import cupy

    kernels = module(device_id, plan.defines)
    packed = _packed(args)

    def occupancy(ln):
        fn = kernels[ln.kernel].kernel
        return cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.ptr, ln.block[0], ln.smem_bytes)

    with cupy.cuda.Device(device_id), stream:
        for ln in plan.launches:
            fn = kernels[ln.kernel]
            if ln.smem_bytes > _OPTED_IN.get(id(fn), 48 * 1024):
                fn.max_dynamic_shared_size_bytes = ln.smem_bytes  # a driver call: only when it must grow
                _OPTED_IN[id(fn)] = ln.smem_bytes
            if not ln.cooperative:
                fn(ln.grid, ln.block, packed, shared_mem=ln.smem_bytes)
                continue
            plan.check_residency(ln, occupancy, build=("cupy", device_id))
            # Through the Function itself: RawModule(enable_cooperative_groups=True) would compile with
            # --device-c, and this build would no longer match the torch backend's.
            fn.kernel(ln.grid, ln.block, packed, shared_mem=ln.smem_bytes, enable_cooperative_groups=True)
