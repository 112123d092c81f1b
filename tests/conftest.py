"""Fixtures for the cupyfused tests.

- marker ``gpu``: the test needs a CUDA GPU. Every gpu test takes the ``cuda_device`` fixture (directly or
  through ``backend``), which skips with the reason where there is none; collection refuses a test that
  does one without the other, so ``-m "not gpu"`` selects exactly the CPU tests.
- ``backend``: parametrized over "torch" and "cupy"; skips with the reason ``available_backends()`` gives.
- ``seed``: a fresh random seed per test (no fixed seed), printed so that a failure shows it;
  ``CUPYFUSED_TEST_SEED=<n>`` replays a draw.
- ``CUPYFUSED_REQUIRE_GPU=1`` turns the skips for a missing GPU, backend or compute-sanitizer into failures:
  set it on the GPU machine, so that a run there cannot pass by skipping.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import sys

import pytest

_HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = _HERE.parent

# Build caches inside the checkout unless the user chose others (both backends read these at build time).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("CUPY_CACHE_DIR", str(REPO_ROOT / ".cache" / "cupy"))

# `import utils` under any --import-mode, and the checkout's cupyfused even where pytest is not started from
# the repository root (an installed copy is tested by test_sources' wheel test, in a child process).
for _p in (str(REPO_ROOT), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import utils  # noqa: E402

BACKENDS = ("torch", "cupy")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skips with a reason where there is none, or no CuPy)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still runs in CI)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        marked = item.get_closest_marker("gpu") is not None
        uses_gpu = "cuda_device" in getattr(item, "fixturenames", ())
        if marked != uses_gpu:
            raise pytest.UsageError(
                f"{item.nodeid}: a test marked gpu must take the cuda_device fixture (directly or through "
                f"backend), and a test taking it must be marked gpu (marked={marked}, uses={uses_gpu})"
            )


def pytest_report_header(config):
    lines = []
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        lines.append(f"torch {torch.__version__} (CUDA {torch.version.cuda}); GPU: {gpu}")
    except Exception as e:  # noqa: BLE001 - a header must not break the run
        lines.append(f"torch not importable: {e}")
    try:
        import cupyfused

        lines.append(f"cupyfused {cupyfused.__version__} backends: {cupyfused.available_backends()}")
    except Exception as e:  # noqa: BLE001
        lines.append(f"cupyfused not importable: {type(e).__name__}: {e}")
    lines.append(
        f"TORCH_EXTENSIONS_DIR={os.environ['TORCH_EXTENSIONS_DIR']} CUPY_CACHE_DIR={os.environ['CUPY_CACHE_DIR']}"
    )
    return lines


def pytest_terminal_summary(terminalreporter):
    for section, lines in utils.REPORT.items():
        terminalreporter.section(section, sep="-")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def cuda_device():
    """The current CUDA device; skips where there is none."""
    import torch

    if not torch.cuda.is_available():
        utils.skip_or_fail("no CUDA GPU: torch.cuda.is_available() is False")
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture(scope="session")
def backend_reasons(cuda_device):
    import cupyfused

    return cupyfused.available_backends()


@pytest.fixture(params=BACKENDS)
def backend(request, backend_reasons):
    """A backend name that works here; skips with available_backends()' reason for one that does not."""
    name = request.param
    if name not in backend_reasons:
        pytest.fail(f"available_backends() does not list {name!r}: {backend_reasons}")
    if backend_reasons[name] is not None:
        utils.skip_or_fail(f"backend {name!r} unavailable: {backend_reasons[name]}")
    return name


@pytest.fixture
def both_backends(backend_reasons):
    """For tests that compare the two backends: skips unless both work here."""
    missing = {k: v for k, v in backend_reasons.items() if k in BACKENDS and v is not None}
    if missing:
        utils.skip_or_fail(f"needs both backends; unavailable: {missing}")
    return BACKENDS


@pytest.fixture
def seed():
    """A fresh seed for make_inputs, shown with the output of a failed test."""
    s = int(os.environ.get("CUPYFUSED_TEST_SEED") or secrets.randbelow(2**31))
    print(f"input seed {s} (CUPYFUSED_TEST_SEED={s} replays this draw)")
    return s
