"""Benchmark: how extraction scales with the number of pairs, the prompt length and the fraction
of each prompt that x and x' share.

Each curve times ``introspect.engine.extract_pairs`` (fp32, Δ and two captured layers) in this
process, with the peak resident-memory rise during the call (``bench_extract.PeakRSS``) and the
arithmetic rate on unique tokens as a fraction of the measured fp32 GEMM rate. Models: a tiny
random Llama (2 layers, width 64) with SmolLM2's tokenizer, where per-token overheads dominate,
and SmolLM2-135M-Instruct, where the forward does.

- **N**: sycophancy pairs, 10²…10⁵ (tiny; 10²…10⁴ with ``--quick``) and 10²…10³ (SmolLM2);
- **prompt length**: contexts of k fact sentences (k = 2…20), one sentence removed per pair;
- **shared-prefix fraction**: contexts of 20 sentences, the removed one at a growing position,
  so the prefix x and x' share (in tokens, measured) grows from ~0 to ~0.9 of x.

    python benchmarks/bench_scaling.py           # full sizes
    python benchmarks/bench_scaling.py --quick   # fewer, smaller points (make bench)
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from bench_extract import FACTS, PeakRSS, engine

from introspect.behaviour import encode
from introspect.data import ablate_each
from introspect.data.tasks import generate
from introspect.models import load_model

QUESTION = ("Based on the notes, is the statement above true?", [" Yes", " No"], " Yes")


def tiny_llama(config):
    from transformers import AutoModelForCausalLM

    cfg = type(config).from_dict(config.to_dict())
    cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 64, 128, 2
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 4, 2, 16
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def fact_pairs(n: int, k: int, position: int | None = None, seed: int = 0):
    """n pairs over distinct contexts of k fact sentences; each removes one sentence (at
    ``position`` when given, else a random one)."""
    rng = random.Random(seed)
    question, choices, target = QUESTION
    pairs = []
    for i in range(n):
        facts = rng.sample(FACTS, k)
        content = "Notes: " + " ".join(facts) + f"\n\n{question} Answer Yes or No."
        j = rng.randrange(k) if position is None else position
        prompt = [{"role": "user", "content": content}]
        pairs += ablate_each(f"c{i}", prompt, {"s": [facts[j]]}, choices, target)
    return pairs


def shared_fraction(tokenizer, pairs) -> float:
    fr = []
    for p in pairs:
        a = encode(tokenizer, p.x, p.choices).prompt_ids
        b = encode(tokenizer, p.x_mod, p.choices).prompt_ids
        m = 0
        while m < min(len(a), len(b)) and a[m] == b[m]:
            m += 1
        fr.append(m / len(a))
    return float(np.mean(fr))


def point(net, tok, pairs, layers, n_params, gemm, **extra) -> dict:
    engine(net, tok, pairs[:8], layers)
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        _, _, tokens, _ = engine(net, tok, pairs, layers)
        seconds = time.perf_counter() - t0
    gflops = 2 * n_params * tokens / seconds / 1e9
    n = len(pairs)
    return {
        **extra, "pairs": n, "seconds": seconds, "pairs_per_s": n / seconds,
        "unique_tokens": tokens, "tokens_per_pair": tokens / n, "tokens_per_s": tokens / seconds,
        "peak_mb": peak.extra_mb, "GFLOPs": gflops, "of_gemm_fp32": gflops / gemm,
    }  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--name", default=None, help="results name (scaling / scaling_quick)")
    harness.add_out_dir(ap)
    args = ap.parse_args(argv)
    harness.use_out_dir(args.out_dir)
    name = args.name or ("scaling_quick" if args.quick else "scaling")
    q = args.quick
    sizes = {
        "n": {"tiny": [100, 1000, 10000] if q else [100, 1000, 10000, 100000],
              "smollm2": [30, 100] if q else [100, 300, 1000]},
        "k": [2, 8, 20] if q else [2, 4, 8, 12, 16, 20],
        "pos": [0, 10, 19] if q else [0, 3, 6, 9, 12, 15, 19],
        "n_shape": {"tiny": 200 if q else 500, "smollm2": 24 if q else 120},
    }  # fmt: skip

    stamp = harness.machine_stamp()
    gemm = harness.gemm_flops(torch.float32)
    lm = load_model("smollm2-135m")
    tok = lm.tokenizer
    models = {"tiny": (tiny_llama(lm.model.config), [0, 1]),
              "smollm2": (lm.model, sorted({lm.n_layers // 2, lm.n_layers - 1}))}  # fmt: skip
    n_params = {
        k: sum(p.numel() for p in m.parameters()) - m.get_input_embeddings().weight.numel()
        for k, (m, _) in models.items()
    }
    print(f"machine: {stamp['cpu']}, {stamp['cores']} cores; fp32 GEMM {gemm:.0f} GFLOP/s",
          flush=True)  # fmt: skip
    rows = []

    def add(row):
        rows.append(row)
        print(f"  {row['curve']:<6} {row['model']:<8} x={row['x']:<8.3g} {row['pairs']:>6} pairs "
              f"{row['seconds']:7.1f} s  {row['pairs_per_s']:7.1f} pairs/s  "
              f"{row['tokens_per_s']:8.0f} tok/s  peak {row['peak_mb']:.0f} MB  "
              f"{row['of_gemm_fp32']:.3f} of GEMM", flush=True)  # fmt: skip

    for key, (model, layers) in models.items():
        for n in sizes["n"][key]:
            pairs = generate("sycophancy", n, seed=0)
            add(point(model, tok, pairs, layers, n_params[key], gemm,
                      curve="N", model=key, x=n))  # fmt: skip
        n = sizes["n_shape"][key]
        for k in sizes["k"]:
            pairs = fact_pairs(n, k, seed=k)
            r = point(model, tok, pairs, layers, n_params[key], gemm, curve="length", model=key,
                      x=0.0, sentences=k)  # fmt: skip
            r["x"] = len(encode(tok, pairs[0].x, pairs[0].choices).prompt_ids)
            r["prompt_tokens"] = r["x"]
            add(r)
        for pos in sizes["pos"]:
            pairs = fact_pairs(n, 20, position=pos, seed=100 + pos)
            frac = shared_fraction(tok, pairs)
            add(point(model, tok, pairs, layers, n_params[key], gemm, curve="prefix", model=key,
                      x=frac, removed_index=pos, shared_fraction=frac))  # fmt: skip

    command = "python benchmarks/bench_scaling.py" + (" --quick" if q else "")
    meta = {**stamp, "gemm_fp32_GFLOPs": gemm, "sizes": sizes, "command": command}
    path, _ = harness.write_rows(name, rows, meta)

    def series(curve, key):
        out = {}
        for m in models:
            rs = [r for r in rows if r["curve"] == curve and r["model"] == m]
            if rs:
                out[m] = ([r["x"] for r in rs], [r[key] for r in rs])
        return out

    charts = []
    for curve, xlabel, logx in [
        ("N", "pairs (N)", True),
        ("length", "prompt tokens (x)", False),
        ("prefix", "fraction of x's tokens shared with x'", False),
    ]:
        png = harness.line_panels(
            harness.RESULTS / f"{name}_{curve.lower()}.png",
            [("pairs/s", series(curve, "pairs_per_s")),
             ("peak memory rise (MB)", series(curve, "peak_mb")),
             ("fraction of fp32 GEMM rate", series(curve, "of_gemm_fp32"))],
            xlabel=xlabel, logx=logx,
            title=f"extraction scaling ({curve}) — {stamp['cpu']}, {stamp['torch_threads']} "
                  "threads; tiny = 2-layer width-64 random Llama",
        )  # fmt: skip
        charts.append(png)
    print()
    print(harness.table(rows, [
        ("curve", "curve", "s"), ("model", "model", "s"), ("x", "x", ".3g"),
        ("pairs", "pairs", "d"), ("tokens_per_pair", "tokens/pair", ".0f"),
        ("pairs_per_s", "pairs/s", ".1f"), ("tokens_per_s", "tokens/s", ".0f"),
        ("peak_mb", "peak MB", ".0f"), ("of_gemm_fp32", "of GEMM", ".3f"),
    ]))  # fmt: skip
    print(f"\nrows: {path}")
    for c in charts:
        if c:
            print(f"chart: {c}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
