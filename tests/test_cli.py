"""``python -m cupyfused``: the commands are code too. ``info`` runs anywhere (it is what a user sends with a
bug report, GPU or not); ``check`` must pass on the GPU and must not claim a pass where it cannot run."""

import json
import re
import subprocess

import pytest
import torch
from utils import PYTHON, subprocess_env

from cupyfused import _sources


def run_cli(*args, timeout=300, cwd=None):
    return subprocess.run(
        [PYTHON, "-m", "cupyfused", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
        cwd=cwd,
    )


def test_info_prints_source_sha256(tmp_path):
    r = run_cli("info", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"source_sha256\W+([0-9a-f]{64})", r.stdout)
    assert m, r.stdout
    assert m.group(1) == _sources.source_sha256()
    for word in ("torch", "nvcc"):
        assert word in r.stdout.lower(), f"info does not mention {word}:\n{r.stdout}"


def test_info_json(tmp_path):
    r = run_cli("info", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(r.stdout)
    assert info["source_sha256"] == _sources.source_sha256()
    assert info["torch"] == torch.__version__


@pytest.mark.parametrize("args", [["--help"], ["bench", "--help"], ["check", "--help"]], ids=" ".join)
def test_help(args, tmp_path):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0 and "usage" in r.stdout.lower(), r.stdout + r.stderr


def test_check_without_gpu_does_not_pass(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU path of check is covered on CPU machines (CI)")
    r = run_cli("check", cwd=tmp_path)
    assert r.returncode != 0, "check exited 0 with nothing checked"
    assert "no CUDA GPU" in r.stdout + r.stderr


@pytest.mark.gpu
@pytest.mark.slow
def test_check_passes(cuda_device, both_backends, tmp_path):
    r = run_cli("check", timeout=900, cwd=tmp_path)  # the first load_inline build takes about a minute
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-4000:]
    assert "FAIL" not in r.stdout, r.stdout
    assert re.search(r"\b[1-9]\d* passed", r.stdout), r.stdout


@pytest.mark.gpu
def test_check_uses_the_bench_tolerance(cuda_device, both_backends, tmp_path):
    """One channel per group: GroupNorm divides by small spreads, and strict-FP32 PyTorch itself may err above
    1e-5. check must judge such a shape as bench does (the larger of 1e-5 and 4x strict FP32's error) and say
    which tolerance it applied."""
    r = run_cli("check", "--shape", "2,16,8,24,24,3,8", "--seed", "3", timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-4000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("PASS", "FAIL")) and "max abs err" in ln]
    assert len(lines) == 2, r.stdout
    for ln in lines:
        err, tol = (float(v) for v in re.search(r"max abs err (\S+) \(tolerance (\S+)\)", ln).groups())
        assert tol >= 1e-5 and err <= tol, ln
