"""Backend ``cupy``: the sources of ``cuda_src/`` compiled by NVRTC through ``cupy.RawModule`` and launched through
CuPy's driver API (``cuLaunchKernel`` / ``cuLaunchCooperativeKernel`` with the arguments packed as the torch
backend packs them). Torch tensors are shared with CuPy zero-copy through DLPack; CuPy arrays need no torch at all.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import sys
import threading
import time
import warnings

from . import _sources
from .plan import ALL_KERNELS, ARG_SLOTS

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


def view(tensor):
    """CuPy's zero-copy view of a torch CUDA tensor, through a DLPack capsule: the caller works on the stream
    the tensor's producer used (torch's current stream), so the ``__dlpack__`` stream handshake would have nothing
    to order and is skipped (bench/host_profile.py: 7.8 us a view this way)."""
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


# id of a build's kernel (kept for the process in _modules, one per device and define set) -> the dynamic shared
# memory it was allowed above 48 KiB
_OPTED_IN: dict = {}
_LOCAL = threading.local()


def _parameter_block():
    """This thread's kernel-parameter block: the argument slots (ARG_SLOTS) and the array of pointers to them that
    the launch reads. The driver copies the values during the launch call, so one block per thread serves every
    launch."""
    block = getattr(_LOCAL, "block", None)
    if block is None:
        slots = ctypes.create_string_buffer(ARG_SLOTS.size)
        base = ctypes.addressof(slots)
        pointers = (ctypes.c_void_p * (ARG_SLOTS.size // 8))(*(base + 8 * i for i in range(ARG_SLOTS.size // 8)))
        block = _LOCAL.block = (slots, pointers, ctypes.addressof(pointers))
    return block


def launch(plan, buffers: dict, x_strides, device_id: int, stream) -> None:
    """Run the plan's kernels in order on ``stream``. ``buffers``: the pointer arguments (plan.BUFFERS) as CuPy
    arrays on ``device_id``; ``x_strides``: x's element strides. The launches go straight to the driver with the
    packed argument slots: CuPy's generic kernel call converts each argument on every launch, which cost more host
    time than the rest of a small forward (bench/host_profile.py: 68 us of a 209 us call at N = 1 on one
    machine)."""
    import cupy
    from cupy.cuda import driver

    kernels = module(device_id, plan.defines)
    slots, _, parameters = _parameter_block()
    ARG_SLOTS.pack_into(slots, 0, *plan.arg_values({k: v.data.ptr for k, v in buffers.items()}, x_strides))

    def occupancy(ln):
        return driver.occupancyMaxActiveBlocksPerMultiprocessor(kernels[ln.kernel].kernel.ptr, ln.block[0],
                                                               ln.smem_bytes)  # fmt: skip

    with cupy.cuda.Device(device_id):
        for ln in plan.launches:
            fn = kernels[ln.kernel]
            if ln.smem_bytes > _OPTED_IN.get(id(fn), 48 * 1024):
                fn.max_dynamic_shared_size_bytes = ln.smem_bytes  # a driver call: only when it must grow
                _OPTED_IN[id(fn)] = ln.smem_bytes
            f, (gx, gy, gz), (bx, by, bz) = fn.kernel.ptr, ln.grid, ln.block
            if ln.cooperative:
                plan.check_residency(ln, occupancy, build=("cupy", device_id))
                driver.launchCooperativeKernel(f, gx, gy, gz, bx, by, bz, ln.smem_bytes, stream.ptr, parameters)
            else:
                driver.launchKernel(f, gx, gy, gz, bx, by, bz, ln.smem_bytes, stream.ptr, parameters, 0)
