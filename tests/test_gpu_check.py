"""`make gpu-check` (benchmarks/gpu_check.py) on a machine without a GPU: it says so, writes its
JSON and exits non-zero; its benchmark baseline and stand-in model work on any device."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if not (BENCH / "gpu_check.py").is_file():  # pragma: no cover - an installed copy
    pytest.skip("benchmarks/ is not beside tests/", allow_module_level=True)
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_without_a_gpu_the_check_says_so_and_exits_non_zero(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "no-gpu" and report["machine"]["cuda_available"] is False
    assert "build" not in report and "bench" not in report  # nothing was run


def test_stand_in_model_and_baseline_agree_with_the_engine():
    """The random stand-in runs through the naive baseline and the engine with the same Δ."""
    from bench_extract import engine, naive

    from introspect.data.tasks import generate

    pairs = generate("sycophancy", 6, seed=0)
    shape = dict(gpu_check.SMALL_SHAPE, num_hidden_layers=2, vocab_size=512)
    model, tok, what = gpu_check.load_bench_model("random", pairs, "cpu", shape)
    word = pairs[0].prompt[0]["content"].split()[0]
    assert "random" in what and tok(word, add_special_tokens=False)["input_ids"] != [
        tok.unk_token_id
    ]
    nx, nm, _, nh = naive(model, tok, pairs, [0, 1], 4)
    fx, fm, _, eh = engine(model, tok, pairs, [0, 1])
    np.testing.assert_allclose(fm - fx, nm - nx, atol=1e-5)
    np.testing.assert_allclose(eh[(0, "x")], nh[(0, "x")], rtol=1e-4, atol=1e-5)
