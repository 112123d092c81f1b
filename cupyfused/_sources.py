"""Where the CUDA sources live, the exact text both compilers get, and the one compiler flag set.

A source checkout keeps the kernels in the top-level ``cuda_src/``; a built wheel ships the same files as
package data in ``cupyfused/cuda_src/``. Both backends compile the text returned by :func:`source_text`:
a generated ``#define`` prefix (the plan's compile-time constants) followed by every ``cuda_src/*.cu`` file
in name order. The whole text is handed to the compilers (no ``-I``), so CuPy's cache, which is keyed by the
source string, rebuilds on every edit.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib

# One flag set for both compilers. CuPy appends -ftz=true to every NVRTC build and it cannot be turned off,
# so nvcc gets it too; the other three restate the defaults so that neither side can drift.
COMMON_FLAGS = ("-ftz=true", "-prec-div=true", "-prec-sqrt=true", "-fmad=true")
NVRTC_FLAGS = COMMON_FLAGS
NVCC_FLAGS = COMMON_FLAGS + ("-O3",)

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def source_dir() -> pathlib.Path:
    """The folder holding the kernel sources: the wheel's copy if installed, else the checkout's."""
    for candidate in (_PACKAGE_DIR / "cuda_src", _PACKAGE_DIR.parent / "cuda_src"):
        if candidate.is_dir() and any(candidate.glob("*.cu")):
            return candidate
    raise FileNotFoundError(
        f"cupyfused: no CUDA sources found in {_PACKAGE_DIR / 'cuda_src'} or {_PACKAGE_DIR.parent / 'cuda_src'}; "
        "the installation is incomplete (reinstall the wheel)"
    )


@functools.lru_cache(maxsize=None)
def _raw_sources() -> str:
    files = sorted(source_dir().glob("*.cu"))
    return "".join(f"// ---- {f.name}\n{f.read_text()}\n" for f in files)


def source_sha256() -> str:
    """SHA-256 of the kernel sources as installed (recorded in benchmark output and ``info``)."""
    return hashlib.sha256(_raw_sources().encode()).hexdigest()


def source_text(defines: dict) -> str:
    """The exact translation unit both compilers build: the ``#define`` prefix, then the sources."""
    prefix = "".join(f"#define {k} {v}\n" for k, v in sorted(defines.items()))
    return prefix + _raw_sources()


def compile_check_text() -> str:
    """The text built for the default launch plan's compile-time constants (for the nvcc compile check)."""
    from .plan import DEFAULT_DEFINES

    return source_text(DEFAULT_DEFINES)
