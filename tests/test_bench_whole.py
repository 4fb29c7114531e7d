"""The whole-process benchmark's pieces: its pair writer, its naive baseline (against the
engine), and the model-shaped GEMM bound's recorder (correctness only; no timing asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")
BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if not (BENCH / "bench_whole.py").is_file():  # pragma: no cover - an installed copy
    pytest.skip("benchmarks/ is not beside tests/", allow_module_level=True)
sys.path.insert(0, str(BENCH))

import bench_whole  # noqa: E402
import harness  # noqa: E402
import naive_extract  # noqa: E402
from tiny import tiny_llama, tiny_tokenizer  # noqa: E402

from introspect.data.pairs import Pair  # noqa: E402


def test_pairs_are_valid_and_x_prime_drops_only_the_opinion(tmp_path):
    path = tmp_path / "p.jsonl"
    bench_whole.write_pairs(path, 40, seed=1)
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(docs) == 40 and len({d["id"] for d in docs}) == 40
    for d in docs:
        p = Pair.from_json(d)
        assert p.target in p.choices and p.x_mod != p.x
        assert p.x_mod == naive_extract.remove(d["prompt"], d["remove"])
        assert "Answer:" in p.x_mod and "A)" in p.x_mod and "B)" in p.x_mod
    assert bench_whole.write_pairs(tmp_path / "q.jsonl", 40, seed=1) is None
    assert (tmp_path / "q.jsonl").read_text() == path.read_text()  # deterministic


def test_naive_baseline_finds_the_engines_delta(tmp_path, monkeypatch):
    from introspect import extract

    model, tok = tiny_llama(layers=4), tiny_tokenizer()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    pairs = tmp_path / "p.jsonl"
    bench_whole.write_pairs(pairs, 12)
    out = tmp_path / "naive.npz"
    argv = ["naive_extract.py", "--model", str(tmp_path / "m"), "--pairs", str(pairs),
            "--out", str(out), "--batch-pairs", "5"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    naive_extract.main()
    ref = np.load(out)
    run = extract(model, tok, str(pairs), tmp_path / "run", layers=[2])
    np.testing.assert_allclose(run.delta, ref["f_mod"] - ref["f_x"], atol=1e-5)
    # The middle layer (the last one is read after the final norm by HF, before it here).
    np.testing.assert_allclose(run.hidden(2, "x"), ref["h_x"][:, 0], rtol=1e-5, atol=1e-6)


def test_gemm_recorder_sees_every_product_of_the_forward():
    import torch

    from introspect.data.tasks import generate
    from introspect.engine import ExtractConfig, extract_pairs

    model, tok = tiny_llama(layers=3, hidden=48), tiny_tokenizer()  # no two shapes alike
    pairs = generate("sycophancy", 6, seed=0)
    # Once before recording: the engine's one-time checks (the fused kernels' plan probes the
    # model's modules) are not the forward's products.
    list(extract_pairs(model, tok, pairs[:1], ExtractConfig(layers=(1,))))
    with harness.GemmRecorder(model) as rec:
        list(extract_pairs(model, tok, pairs, ExtractConfig(layers=(1,), attention="mask")))
    assert not any(isinstance(h, torch.utils.hooks.RemovableHandle) for h in rec.handles)
    per_layer = {}
    for (_rows, k, n, _dtype), calls in rec.linear.items():
        per_layer[(k, n)] = per_layer.get((k, n), 0) + calls
    cfg = model.config
    kv = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    forwards = per_layer[(cfg.hidden_size, kv)] // (2 * 3)  # k and v, three layers
    assert forwards >= 1
    assert per_layer[(cfg.hidden_size, cfg.hidden_size)] == forwards * 3 * 2  # q and o
    assert per_layer[(cfg.hidden_size, cfg.intermediate_size)] == forwards * 3 * 2  # gate, up
    # The head on the read rows, once per batch (the shared prefix's forward reads nothing).
    assert 1 <= per_layer[(cfg.hidden_size, cfg.vocab_size)] <= forwards
    assert sum(rec.attention.values()) == forwards * 3
    assert all(lq == lk for _b, lq, lk, _d, _dt in rec.attention)  # whole rows
    bound = rec.bound_s(repeats=1)
    assert 0 < bound["linear"] < bound["total"]
    # Attention per trie (the CPU default): each trie's queries over its keys and the prefix's.
    with harness.GemmRecorder(model) as per_trie:
        list(extract_pairs(model, tok, pairs, ExtractConfig(layers=(1,), attention="blocks")))

    # ... in one row per batch, so no padding positions go through the linear layers.
    def positions(linear):
        return sum(m * c for (m, k, n, _dt), c in linear.items() if k == n == cfg.hidden_size)

    assert 0 < positions(per_trie.linear) <= positions(rec.linear)
    tries = [
        k for k in per_trie.attention if k[1] < k[2] or k[1] < max(x[1] for x in rec.attention)
    ]
    assert tries and sum(per_trie.attention.values()) > forwards * 3

    def flops(attention):
        return sum(c * b * lq * lk * d for (b, lq, lk, d, _dt), c in attention.items())

    assert flops(per_trie.attention) < flops(rec.attention)  # the other tries' keys skipped
