"""The benchmark harness and the suite summary (correctness only; no timing is asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if not (BENCH / "harness.py").is_file():  # pragma: no cover - an installed copy without the repo
    pytest.skip("benchmarks/ is not beside tests/", allow_module_level=True)
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import summary  # noqa: E402


def test_measure_reports_order_statistics():
    calls = []
    m = harness.measure(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and m["repeats"] == 5
    assert 0 <= m["p10_s"] <= m["median_s"] <= m["p90_s"]


def test_roofline_has_a_ceiling_per_dtype():
    r = harness.gemm_flops(torch.float32, shapes=((64, 32, 48),))
    assert r > 0
    roof = {"gemm_GFLOPs": {"float32": 100.0, "bfloat16": 400.0}, "memory_bandwidth":
            {"read_GBps": 20.0, "copy_GBps": 15.0}}  # fmt: skip
    text = harness.describe_roofline(roof)
    assert "float32 100" in text and "bfloat16 400" in text and "read 20.0 GB/s" in text


def test_summary_names_the_ceiling_of_each_rows_dtype():
    data = {"meta": {}, "rows": [
        {"task": "sycophancy", "pairs": 8, "variant": "engine", "dtype": dtype, "speedup": 2.0,
         "max_abs_delta_diff": 1e-5, "fraction_of_gemm_peak": frac, "roofline_dtype": roof}
        for dtype, frac, roof in (("float32", 0.5, "float32"), ("bfloat16", 0.1, "bfloat16"))
    ]}  # fmt: skip
    out = summary.lines("extract_x", data)
    assert [o["ceiling"] for o in out] == ["0.50 of float32 GEMM", "0.10 of bfloat16 GEMM"]
    assert out[0]["value"].startswith("2.00×")


def test_summary_writes_markdown(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    harness.write_rows("kernels_t", [{"device": "cpu", "variant": "reference", "M": 4, "V": 8,
                                      "speedup_vs_naive": 1.5, "memory_vs_naive": 0.25,
                                      "fraction_of_gemm_peak": 0.3,
                                      "fraction_of_read_bw": 0.01}], {})  # fmt: skip
    out = tmp_path / "summary.md"
    assert summary.main(["kernels_t", "missing_one", "--elapsed", "90", "--out", str(out)]) == 0
    text = out.read_text()
    assert (
        "| kernels_t | choice_logprobs reference M=4 V=8: vs naive | 1.50× time, 0.250× memory"
        in text
    )
    assert "0.30 of fp32 GEMM, 0.010 of read bw" in text
    assert "| missing_one | missing |" in text and "suite wall time: 1.5 min" in text
