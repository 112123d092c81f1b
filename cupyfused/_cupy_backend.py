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
from .plan import ALL_KERNELS, ARG_SLOTS, build_key

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
    """The kernels of one build (``defines``, a plan's) for GPU ``device_id``, built once per process."""
    key = (device_id, build_key(defines))
    if key not in _modules:
        import cupy

        t0 = time.perf_counter()
        with cupy.cuda.Device(device_id):
            mod = cupy.RawModule(code=_sources.source_text(defines), options=_sources.NVRTC_FLAGS, backend="nvrtc")
            kernels = {name: mod.get_function(name) for name in ALL_KERNELS}  # compiles (or loads from cache)
        seconds = time.perf_counter() - t0
        if seconds > 2.0:
            print(f"cupyfused: NVRTC build for GPU {device_id} took {seconds:.1f} s", file=sys.stderr, flush=True)
        _modules[key] = kernels
    return _modules[key]


_DLPACK: list = []  # (cupy.from_dlpack, torch.utils.dlpack.to_dlpack), looked up once


def view(tensor):
    """CuPy's zero-copy view of a torch CUDA tensor, through a DLPack capsule: the caller works on the stream
    the tensor's producer used (torch's current stream), so the ``__dlpack__`` stream handshake would have nothing
    to order and is skipped (bench/host_profile.py times a view)."""
    if not _DLPACK:
        import cupy
        from torch.utils import dlpack

        _DLPACK[:] = [cupy.from_dlpack, dlpack.to_dlpack]
    from_dlpack, to_dlpack = _DLPACK
    return from_dlpack(to_dlpack(tensor.detach() if tensor.requires_grad else tensor))


def capturing(stream, device_id: int) -> bool:
    """Whether a CUDA graph capture is underway on ``stream`` (torch's current stream of ``device_id``)."""
    import cupy

    try:
        return cupy.cuda.runtime.streamIsCapturing(stream.ptr) != 0
    except Exception:  # no such binding in this CuPy, or the legacy stream during another stream's capture
        import torch

        with torch.cuda.device(device_id):
            return torch.cuda.is_current_stream_capturing()


_STREAMS: dict = {}
_RAW_STREAM: list = []  # torch's C getter of the current stream's handle, or None where this torch has none


def torch_stream(device_id: int):
    """CuPy's view of torch's current stream on ``device_id`` (external_stream), found by its raw handle where this
    torch has the getter (torch.compile's generated code uses it; 0.3 us against 3.5 us for
    ``torch.cuda.current_stream``, which builds a Stream object), else through ``torch.cuda.current_stream``."""
    import torch

    if not _RAW_STREAM:
        _RAW_STREAM.append(getattr(torch._C, "_cuda_getCurrentRawStream", None))
    raw = _RAW_STREAM[0]
    if raw is not None:
        try:
            stream = _STREAMS.get((device_id, raw(device_id)))
        except Exception:  # a torch whose getter differs: the public route from now on
            _RAW_STREAM[0] = stream = None
        if stream is not None:
            return stream
    return external_stream(torch.cuda.current_stream(device_id), device_id)


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
    """Run the plan's kernels in order on ``stream``, from within ``cupy.cuda.Device(device_id)`` (both callers
    are). ``buffers``: the pointer arguments (plan.BUFFERS) as CuPy arrays on ``device_id``; ``x_strides``: x's
    element strides. The launches go straight to the driver with the packed argument slots: CuPy's generic kernel
    call converts each argument on every launch, which cost more host time than the rest of a small forward
    (bench/host_profile.py: 68 us of a 209 us call at N = 1 on one machine)."""
    from cupy.cuda import driver

    launches = plan.launcher_state(("cupy", device_id), lambda: _driver_launches(plan, device_id))
    slots, _, parameters = _parameter_block()
    ARG_SLOTS.pack_into(slots, 0, *plan.arg_values({k: v.data.ptr for k, v in buffers.items()}, x_strides))
    s = stream.ptr
    for f, gx, gy, gz, bx, by, bz, smem, cooperative in launches:
        if cooperative:
            driver.launchCooperativeKernel(f, gx, gy, gz, bx, by, bz, smem, s, parameters)
        else:
            driver.launchKernel(f, gx, gy, gz, bx, by, bz, smem, s, parameters, 0)


def _driver_launches(plan, device_id: int) -> tuple:
    """Once per plan and GPU: the build, the shared-memory opt-ins, the cooperative launches' residency check; then
    each launch's driver arguments (function, grid, block, shared memory, cooperative)."""
    from cupy.cuda import driver

    kernels = module(device_id, plan.defines)

    def occupancy(ln):
        return driver.occupancyMaxActiveBlocksPerMultiprocessor(kernels[ln.kernel].kernel.ptr, ln.block[0],
                                                               ln.smem_bytes)  # fmt: skip

    launches = []
    for ln in plan.launches:
        fn = kernels[ln.kernel]
        if ln.smem_bytes > _OPTED_IN.get(id(fn), 48 * 1024):
            fn.max_dynamic_shared_size_bytes = ln.smem_bytes  # a driver call: only when it must grow
            _OPTED_IN[id(fn)] = ln.smem_bytes
        if ln.cooperative:
            plan.check_residency(ln, occupancy, build=("cupy", device_id))
        launches.append((fn.kernel.ptr, *ln.grid, *ln.block, ln.smem_bytes, ln.cooperative))
    return tuple(launches)
