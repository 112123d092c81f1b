"""Backend ``torch``: the sources of ``cuda_src/`` built by nvcc through ``torch.utils.cpp_extension.load_inline``
and launched from the extension on PyTorch's current stream of the tensors' device, under a device guard.

The extension holds one generic launcher: it takes the plan's launches (kernel name, blocks, threads, shared memory,
cooperative or not) and the argument list packed in 8-byte slots (see ``plan.SIGNATURE``), so every launch decision
stays in the plan, and one forward costs one call into the extension.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

from . import _sources
from .plan import ALL_KERNELS, ARG_SLOTS, build_key

_GLUE = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace {
struct CfKernel { const char* name; const void* fn; };
const CfKernel kCfKernels[] = { @TABLE@ };
}  // namespace

const void* cf_kernel(const std::string& name) {
  for (const auto& k : kCfKernels) if (name == k.name) return k.fn;
  TORCH_INTERNAL_ASSERT(false, "cupyfused: no kernel named ", name);
  return nullptr;
}

// The kernel `name`, allowed `smem` bytes of dynamic shared memory on the current device (above 48 KiB that takes
// an opt-in, a driver call made only when the allowance must grow). Call under the device guard.
const void* cf_kernel_with_smem(const std::string& name, int64_t device, int64_t smem) {
  const void* fn = cf_kernel(name);
  if (smem > 48 * 1024) {
    static std::mutex mu;
    static std::map<std::pair<const void*, int64_t>, int64_t> allowed;  // (kernel, device) -> bytes
    const std::lock_guard<std::mutex> lock(mu);
    int64_t& now = allowed[{fn, device}];
    if (now < smem) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
      now = smem;
    }
  }
  return fn;
}

// Blocks of `name` one SM holds at once with `threads` threads and `smem` bytes of dynamic shared memory.
int64_t cf_blocks_per_sm(const std::string& name, int64_t device, int64_t threads, int64_t smem) {
  const c10::cuda::CUDAGuard guard((c10::DeviceIndex)device);
  const void* fn = cf_kernel_with_smem(name, device, smem);
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, fn, (int)threads, (size_t)smem));
  return blocks;
}

// Runs a plan's launches, each (kernel name, blocks, threads, smem bytes, cooperative; 1-D grids and blocks, as
// every plan's are), in order on torch's current stream of `device`. `args`: the kernels' shared argument list,
// each argument in an 8-byte little-endian slot (plan.SIGNATURE order; pointers, int64, and int32 / float32 in
// the slot's first 4 bytes).
void cf_run(int64_t device, py::tuple launches, const std::string& args) {
  TORCH_INTERNAL_ASSERT(args.size() % 8 == 0, "cupyfused: the packed arguments are not 8-byte slots");
  const c10::cuda::CUDAGuard guard((c10::DeviceIndex)device);
  std::vector<void*> ptrs(args.size() / 8);
  for (size_t i = 0; i < ptrs.size(); ++i) ptrs[i] = const_cast<char*>(args.data()) + 8 * i;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream((c10::DeviceIndex)device).stream();
  for (const auto& item : launches) {
    const py::tuple ln = item.cast<py::tuple>();
    const int64_t smem = ln[3].cast<int64_t>();
    const void* fn = cf_kernel_with_smem(ln[0].cast<std::string>(), device, smem);
    const dim3 g(ln[1].cast<unsigned>()), b(ln[2].cast<unsigned>());
    if (ln[4].cast<bool>())
      C10_CUDA_CHECK(cudaLaunchCooperativeKernel(fn, g, b, ptrs.data(), (size_t)smem, stream));
    else
      C10_CUDA_CHECK(cudaLaunchKernel(fn, g, b, ptrs.data(), (size_t)smem, stream));
  }
}
"""

_DECL = (
    "void cf_run(int64_t device, py::tuple launches, const std::string& args);\n"
    "int64_t cf_blocks_per_sm(const std::string& name, int64_t device, int64_t threads, int64_t smem);"
)

_modules: dict = {}


def extension_root() -> pathlib.Path:
    """Where torch keeps extension builds (``TORCH_EXTENSIONS_DIR``, else torch's default)."""
    from torch.utils import cpp_extension

    return pathlib.Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())


def extension_dir() -> pathlib.Path:
    """The folder holding this package's builds, one sub-folder per (sources, flags, architecture)."""
    return extension_root() / "cupyfused"


def unavailable_reason():
    """None if this backend can run here, else why not."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as e:  # pragma: no cover - torch is a dependency
        return f"torch is not importable ({e})"
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU build; install a CUDA build of torch"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False (no CUDA GPU or driver)"
    if cpp_extension.CUDA_HOME is None:
        return "no CUDA toolkit (nvcc) found for load_inline: set CUDA_HOME"
    if not cpp_extension.is_ninja_available():
        return "load_inline needs ninja: pip install ninja"
    return None


# Architecture list for the build (TORCH_CUDA_ARCH_LIST syntax), None for the GPU's own. The benchmark sets
# "8.0+PTX" for its sm_80 row: the A100 build, whose compute_80 PTX the driver compiles for a newer GPU.
ARCH = None


def _build(device_index: int, defines: dict, arch=None):
    import torch
    from torch.utils import cpp_extension

    cc = torch.cuda.get_device_capability(device_index)
    arch_list = arch or f"{cc[0]}.{cc[1]}"
    text = _sources.source_text(defines)
    table = ", ".join(f'{{"{k}", (const void*)&{k}}}' for k in ALL_KERNELS)
    import hashlib

    key = hashlib.sha256((text + _GLUE + " ".join(_sources.NVCC_FLAGS)).encode()).hexdigest()[:16]
    name = f"cupyfused_{key}_sm{cc[0]}{cc[1]}" + (
        "" if arch is None else "_arch" + arch.replace(".", "").replace("+", "")
    )
    build_dir = extension_dir() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    lock = build_dir / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > 600:
        raise RuntimeError(
            f"cupyfused: a build lock older than 10 minutes blocks the torch extension build: {lock}. "
            "An earlier build was interrupted; if no other build is running, delete that file and retry."
        )
    first = not any(build_dir.glob(f"{name}*.so")) and not any(build_dir.glob(f"{name}*.pyd"))
    gpu = torch.cuda.get_device_name(device_index)
    if first:
        print(f"cupyfused: building the torch extension for {gpu} (sm_{cc[0]}{cc[1]}, arch {arch_list}) in "
              f"{build_dir} (first build, about a minute)...", file=sys.stderr, flush=True)  # fmt: skip
    t0 = time.perf_counter()
    old_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list  # build for this GPU only, unless told otherwise
    try:
        module = cpp_extension.load_inline(
            name=name,
            cpp_sources=[_DECL],
            cuda_sources=[text + _GLUE.replace("@TABLE@", table)],
            functions=["cf_run", "cf_blocks_per_sm"],
            extra_cuda_cflags=list(_sources.NVCC_FLAGS),
            build_directory=str(build_dir),
            verbose=False,
        )
    finally:
        if old_arch is None:
            del os.environ["TORCH_CUDA_ARCH_LIST"]
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old_arch
    build_s = time.perf_counter() - t0
    if first:
        print(f"cupyfused: torch extension built in {build_s:.1f} s", file=sys.stderr, flush=True)
    return module


def module(device_index: int, defines: dict, arch=None):
    key = (device_index, build_key(defines), arch)
    if key not in _modules:
        _modules[key] = _build(device_index, defines, arch)
    return _modules[key]


def launch(plan, buffers: dict, x_strides, device_index: int) -> None:
    """Run the plan's kernels in order on torch's current stream of ``device_index``. ``buffers``: the pointer
    arguments (plan.BUFFERS) as torch tensors on that device (the caller checked the devices); ``x_strides``: x's
    element strides."""
    key = ("torch", device_index, ARCH)  # ARCH: the benchmark's sm_80 row switches it
    mod, launches = plan.launcher_state(key, lambda: _extension_launches(plan, device_index, ARCH))
    packed = ARG_SLOTS.pack(*plan.arg_values({k: v.data_ptr() for k, v in buffers.items()}, x_strides))
    mod.cf_run(device_index, launches, packed)


def _extension_launches(plan, device_index: int, arch) -> tuple:
    """Once per plan, GPU and arch: the build and the cooperative launches' residency check; then the extension
    module and the launches as cf_run takes them (kernel, grid, block, shared memory, cooperative)."""
    mod = module(device_index, plan.defines, arch)

    def occupancy(ln):
        return mod.cf_blocks_per_sm(ln.kernel, device_index, ln.block[0], ln.smem_bytes)

    for ln in plan.launches:
        if ln.cooperative:
            plan.check_residency(ln, occupancy, build=("torch", device_index, arch))
    return mod, tuple((ln.kernel, ln.grid[0], ln.block[0], ln.smem_bytes, ln.cooperative) for ln in plan.launches)
