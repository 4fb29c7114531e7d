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


@pytest.mark.parametrize("preset", sorted(bench_whole.PRESET_ARGS))
def test_preset_runs_this_tree_on_the_releases_conditions(preset, tmp_path, monkeypatch):
    from introspect.cli import build_parser
    from introspect.experiment.commands import _config
    from introspect.experiment.config import conditions_for

    seen = {}

    def fake_rounds(variants, rounds, tag):
        for name, (cmd, env, out) in variants.items():
            seen[name] = (cmd, env, out)
            out.mkdir(parents=True)
            stages = {"t/pairs": {"seconds": 0.5}, "t/train": {"seconds": 10.0, "n": 3}}
            (out / "state.json").write_text(json.dumps({"stages": stages}))
        return {name: [20.0 if "release" in name else 10.0] for name in variants}

    monkeypatch.setattr(bench_whole, "WORK", tmp_path)
    monkeypatch.setattr(bench_whole, "build_release", lambda commit: tmp_path / "site")
    monkeypatch.setattr(bench_whole, "_rounds", fake_rounds)
    args = bench_whole.argparse.Namespace(
        model="smollm2-135m", preset=preset, release="62984b7", rounds=1, sizes="--steps 2"
    )
    doc = bench_whole.bench_preset(args)
    release, tree = seen["release 62984b7"][0], seen["this tree"][0]
    extra = bench_whole.RELEASE_CONDITIONS[preset]
    assert tree[: len(release) - 2] == release[:-2] and release[-2] == "--out"
    assert tree[len(release) - 2 : -2] == extra and "--w-reg" not in release
    assert "--steps" in release and seen["release 62984b7"][1]["PYTHONPATH"].endswith("site")
    assert doc["ratio_of_medians"] == 2.0 and doc["preset"] == preset == args.preset
    assert doc["stage_s"]["this tree"] == {"t/pairs": 0.5, "t/train": 10.0}
    # This tree's parser takes the command, and its conditions are the release's: no
    # regulariser, no no-explanation control, and the quick preset's 50% label noise.
    assert tree[3:5] == ["introspect", "experiment"]
    assert doc["measured_command"].startswith("introspect experiment coupling --model")
    ns = build_parser().parse_args(tree[4:])
    assert ns.w_reg == 0 and ns.preset == preset
    cfg = _config(ns)
    assert cfg.w_reg == 0
    names = {t: [c.name for c in conditions_for(cfg, t)] for t in cfg.tasks}
    release_conditions = {  # the release's conditions_for on its presets
        "full": {
            t: ["concurrent", "frozen", "shuffled", "noise-0.2", "noise-0.5", "label-gemma3-270m"]
            for t in ("sycophancy", "refusal")
        },
        "quick": {"sycophancy": ["concurrent", "frozen", "shuffled", "noise-0.5"]},
    }
    assert names == release_conditions[preset]


def test_release_stages_stop_the_run_after_its_first_stages(tmp_path):
    script = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "out = Path(sys.argv[1]); out.mkdir()\n"
        "for i in range(1, 100):\n"
        "    doc = {'completed': [f's{j}' for j in range(i)]}\n"
        "    (out / 'state.json').write_text(json.dumps(doc))\n"
        "    time.sleep(0.2)\n"
    )
    out = tmp_path / "exp"
    seconds = bench_whole._timed_stages(
        [sys.executable, "-c", script, str(out)], None, tmp_path / "log", out, 3
    )
    done = json.loads((out / "state.json").read_text())["completed"]
    assert 3 <= len(done) <= 5 and 0 < seconds < 15  # stopped, not run to its 99 stages
    with pytest.raises(SystemExit, match="exit 3"):
        bench_whole._timed_stages(
            [sys.executable, "-c", "raise SystemExit(3)"], None, tmp_path / "l2", out, 50
        )
