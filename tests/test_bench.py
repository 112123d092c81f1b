"""CPU: the benchmark's pure parts. The sweep covers every value the issue names at least twice with shapes
Model accepts; the summary tables show every shape and implementation; the per-shape tolerance is 1e-5 on
the default problem and follows strict-FP32 PyTorch elsewhere."""

import pytest

from cupyfused import bench


def test_sweep_covers_the_named_values():
    assert [s[0] for s in bench.SWEEP_N] == [1, 8, 32, 128]
    assert all(s[1:] == bench.DEFAULT_SHAPE[1:] for s in bench.SWEEP_N)
    for field, values in (("C_in", (3, 16, 64)), ("C_out", (16, 64)), ("K", (1, 5)), ("G", (1, 4, 16))):
        i = bench.SHAPE_FIELDS.index(field)
        for v in values:
            assert sum(s[i] == v for s in bench.SWEEP_SET) >= 2, (field, v)
    for shape in bench.SWEEP_SET:
        assert bench.parse_shape(",".join(map(str, shape))) == shape  # valid: G divides C_out, H, W >= K


def _fake_result():
    shapes, rows = [], []
    for key, plan in (
        ("128,8,32,256,256,3,8", "engine=fused (single pass); kernels ..."),
        ("2,8,32,2048,2048,3,8", "engine=mma (two passes); ...; two passes because too large"),
    ):
        shapes.append(
            dict(
                key=key,
                floor_ms=0.44,
                input_mib=256.0,
                output_mib=1008.0,
                first_call_s={},
                engine="x",
                plan=plan,
                backends_bitwise_equal=True,
                tolerance=1e-5,
                strict_fp32_err=2e-6,
            )
        )
        for impl, ms in zip(bench.IMPLS, (6.0, 3.0, 1.8, 1.9, 2.0)):
            row = dict.fromkeys(bench.ROW_FIELDS)
            row.update(
                impl=impl,
                shape=key,
                ms=ms,
                p20=ms,
                p80=ms,
                speedup_vs_eager=6.0 / ms,
                peak_extra_mib=1.0,
                max_abs_err=1e-6,
                pct_floor=44 / ms,
                correct=True,
            )
            rows.append(row)
    return dict(gpu="GPU", torch="t", cuda="c", cupy="p", source_sha256="0" * 64, copy_tb_s=3.0,
                flags=dict(compile_mode="default", iters=20), shapes=shapes, rows=rows)  # fmt: skip


def test_summary_tables():
    result = _fake_result()
    table = bench.format_table(result)
    md = bench.format_markdown(result).splitlines()
    assert len(md) == 2 + len(result["shapes"])
    for impl in bench.IMPLS:
        assert impl in table and f"{impl} ms" in md[0]
    assert "3.33x" in md[2]  # eager 6.0 ms over the faster cupyfused backend, 1.8 ms
    assert "two passes because" in md[3]  # a fallback says why
    assert "tolerance 1e-05" in table


def test_tolerance_rule():
    """1e-5 on the default problem whatever strict FP32 errs; elsewhere 4x strict FP32 where that is larger."""
    assert bench.shape_tolerance(bench.DEFAULT_SHAPE, 3.8e-5) == 1e-5
    assert bench.shape_tolerance((32, 64, 16, 256, 256, 5, 16), 3.8e-5) == pytest.approx(1.52e-4)
    assert bench.shape_tolerance((32, 3, 16, 256, 256, 1, 1), 1e-6) == 1e-5
    assert bench.shape_tolerance((32, 3, 16, 256, 256, 1, 1), float("nan")) == 1e-5  # a broken yardstick: strict
