"""Benchmark: the engine and the ops against peer tools doing the same job, same run.

On the multi-feature workload (``bench_extract.multi_feature_pairs``: contexts of six fact
sentences and a question, one x' per deleted sentence) with SmolLM2-135M-Instruct:

- **engine**: ``introspect.engine.extract_pairs`` (per-feature Δ and hidden states), fp32, and
  under bf16 autocast;
- **Captum**: ``LLMAttribution(FeatureAblation)`` over a ``TextTemplateInput`` whose features are
  the six sentences (baseline: the empty string), target the answer token. Its attribution of
  feature j is f(x) − f(x without sentence j) with f = log p(target), i.e. −Δ under the
  ``logprob`` behaviour; the script checks that the ablated texts are exactly our x' and reports
  Pearson and the largest |attr + Δ_logprob| (and, for reference, against the default
  ``logodds`` Δ);
- **TransformerLens**: ``TransformerBridge.boot_transformers(name, hf_model=..., tokenizer=...)``
  (TransformerLens 4 replaced ``HookedTransformer`` with the bridge) and ``run_with_cache`` with a
  ``names_filter`` for the captured layers, once per distinct prompt, reading the last token;
  compared with the engine's hidden states.

The ops, PyTorch eager against ``torch.compile``: the ``delta_probe`` training step (reference
composition and fused backend) and ``choice_logprobs`` (the full-logits path and the chunked
reference).

Every throughput is also given as a fraction of this machine's measured GEMM rate (fp32 or bf16,
matching the run's arithmetic) and, for the memory-bound ops, of its measured read bandwidth.
A peer that is not installed (``pip install -e '.[bench]'``) is reported as skipped.

    python benchmarks/bench_peers.py                  # 42 contexts (252 pairs)
    python benchmarks/bench_peers.py --contexts 12    # quicker
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness
from bench_extract import PeakRSS, engine, multi_feature_pairs

from introspect.behaviour import encode, render_prompt
from introspect.models import load_model
from introspect.ops import available_backends, choice_logprobs, delta_probe

TL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _timed(fn, warmup=None):
    if warmup is not None:
        warmup()
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return seconds, out, peak.extra_mb


def _pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.corrcoef(a, b)[0, 1])


# ------------------------------------------------------------------------ Captum


def captum_inputs(tokenizer, pairs):
    """One TextTemplateInput per context. Each feature is a sentence with the space before it,
    the template holds the text around them, so an ablated text equals our x' exactly."""
    from captum.attr import TextTemplateInput

    groups: dict[str, list] = {}
    for p in pairs:
        groups.setdefault(p.meta["x_id"], []).append(p)
    out = []
    for x_id, group in groups.items():
        text = render_prompt(tokenizer, group[0].x)
        template = text.replace("{", "{{").replace("}", "}}")
        values = []
        for p in group:
            (span,) = p.remove
            piece = " " + span
            if template.count(piece) != 1:
                raise ValueError(f"{x_id}: sentence {span!r} is not unique in the prompt")
            template = template.replace(piece, "{}")
            values.append(piece)
        inp = TextTemplateInput(template, values, baselines=[""] * len(values))
        for j, p in enumerate(group):
            ablated = template.format(*(v if k != j else "" for k, v in enumerate(values)))
            if ablated != render_prompt(tokenizer, p.x_mod):
                raise AssertionError(f"{p.id}: Captum's ablated text differs from x'")
        out.append((inp, group))
    return out


def run_captum(model, tokenizer, inputs):
    from captum.attr import FeatureAblation, LLMAttribution

    llm = LLMAttribution(FeatureAblation(model), tokenizer, attr_target="log_prob")
    attrs = []
    with torch.no_grad():
        for inp, group in inputs:
            res = llm.attribute(inp, target=group[0].target)
            attrs.append(res.seq_attr.detach().double().numpy())
    return np.concatenate(attrs)


# ------------------------------------------------------------------------ TransformerLens


def tl_boot(model, tokenizer):
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES

    known = TL_NAME in OFFICIAL_MODEL_NAMES
    # The bridge switches the model's attention to eager: it gets a copy of its own.
    bridge = TransformerBridge.boot_transformers(
        TL_NAME, hf_model=copy.deepcopy(model), tokenizer=tokenizer, device="cpu"
    )
    return bridge, known


def run_tl(bridge, tokenizer, pairs, layers):
    names = [f"blocks.{layer}.hook_out" for layer in layers]
    texts: dict[str, list[int]] = {}
    for p in pairs:
        for side in (p.x, p.x_mod):
            text = render_prompt(tokenizer, side)
            if text not in texts:
                texts[text] = list(encode(tokenizer, side, p.choices).prompt_ids)
    states = {}
    with torch.no_grad():
        for text, ids in texts.items():
            _, cache = bridge.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n in names)
            states[text] = {layer: cache[n][0, -1].float().clone() for layer, n in zip(
                layers, names, strict=True)}  # fmt: skip
    hidden = {}
    for layer in layers:
        for side in ("x", "mod"):
            rows = [
                states[render_prompt(tokenizer, p.x if side == "x" else p.x_mod)][layer]
                for p in pairs
            ]
            hidden[(layer, side)] = torch.stack(rows).numpy()
    return hidden, sum(len(v) for v in texts.values())


# ------------------------------------------------------------------------ ops


def op_rows(gemm: dict, bw: dict, quick: bool) -> list[dict]:
    rows = []
    N, D, P = (16384, 576, 4) if quick else (65536, 576, 4)
    g = torch.Generator().manual_seed(0)
    hx, hm = torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)
    w = (torch.randn(P, D, generator=g) / D**0.5).requires_grad_()
    b = torch.zeros(P, requires_grad=True)
    t = torch.randn(N, P, generator=g)

    def loss_fn(backend):
        return lambda: delta_probe(hx, w, b, t, h_mod=hm, backend=backend).loss

    fused = "cpp" if "cpp" in available_backends("delta_probe") else None
    variants = [("reference", "eager", loss_fn("reference"))]
    variants.append(("reference", "torch.compile", torch.compile(loss_fn("reference"))))
    if fused:
        variants.append((fused, "eager", loss_fn(fused)))
        variants.append((fused, "torch.compile", torch.compile(loss_fn(fused))))
    nbytes, flops = 2 * N * D * 4, 4 * N * D * P
    base = None
    for backend, mode, fn in variants:

        def step(fn=fn):
            w.grad = b.grad = None
            fn().backward()

        t0 = time.perf_counter()
        step()  # compiles where compiled
        first = time.perf_counter() - t0
        m = harness.measure(step, warmup=1, repeats=5)
        base = base or m["median_s"]
        rows.append({
            "section": "op", "what": f"delta_probe step ({backend})", "mode": mode,
            "size": f"N={N} D={D} P={P}", "dtype": "float32", "seconds": m["median_s"],
            "first_call_s": first, "speedup_vs_first": base / m["median_s"],
            "GFLOPs": flops / m["median_s"] / 1e9, "GBps": nbytes / m["median_s"] / 1e9,
        })  # fmt: skip
    M, V, C = (256, 49152, 4) if quick else (1024, 49152, 4)
    h = torch.randn(M, D, generator=g)
    W = torch.randn(V, D, generator=g) * 3 / D**0.5
    ch = torch.randint(0, V, (M, C), generator=g)

    def naive(h, W, ch):
        return torch.log_softmax(h @ W.T, -1).gather(1, ch)

    def chunked(h, W, ch):
        return choice_logprobs(h, W, ch, backend="reference").logp

    flops, nbytes = 2 * M * V * D, V * D * 4
    base = None
    want = naive(h, W, ch)
    for what, mode, fn in [
        ("full logits", "eager", naive),
        ("full logits", "torch.compile", torch.compile(naive, dynamic=False)),
        ("chunked reference", "eager", chunked),
        ("chunked reference", "torch.compile", torch.compile(chunked, dynamic=False)),
    ]:
        t0 = time.perf_counter()
        err = float((fn(h, W, ch) - want).abs().max())
        first = time.perf_counter() - t0
        m = harness.measure(lambda fn=fn: fn(h, W, ch), warmup=1, repeats=5)
        base = base or m["median_s"]
        rows.append({
            "section": "op", "what": f"choice_logprobs {what}", "mode": mode,
            "size": f"M={M} V={V} D={D} C={C}", "dtype": "float32", "seconds": m["median_s"],
            "first_call_s": first, "speedup_vs_first": base / m["median_s"],
            "GFLOPs": flops / m["median_s"] / 1e9, "GBps": nbytes / m["median_s"] / 1e9,
            "max_abs_diff": err,
        })  # fmt: skip
    return rows


# ------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--contexts", type=int, default=42, help="contexts (six pairs each)")
    ap.add_argument("--quick", action="store_true", help="smaller op sizes")
    ap.add_argument("--skip", nargs="*", default=[], choices=["captum", "transformer_lens", "ops"])
    ap.add_argument("--name", default="peers", help="results file name")
    harness.add_out_dir(ap)
    args = ap.parse_args(argv)
    harness.use_out_dir(args.out_dir)

    stamp = harness.machine_stamp()
    bw = harness.memory_bandwidth()
    gemm = {
        "float32": harness.gemm_flops(torch.float32),
        "bfloat16": harness.gemm_flops(torch.bfloat16),
    }
    print(f"machine: {stamp['cpu']}, {stamp['cores']} cores, {stamp['torch_threads']} threads; "
          f"GEMM fp32 {gemm['float32']:.0f} / bf16 {gemm['bfloat16']:.0f} GFLOP/s; read "
          f"{bw['read_GBps']:.1f} GB/s", flush=True)  # fmt: skip

    lm = load_model(args.model)
    model, tok = lm.model, lm.tokenizer
    n_params = (
        sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    )
    layers = sorted({lm.n_layers // 2, lm.n_layers - 1})
    pairs = multi_feature_pairs(args.contexts)
    n = len(pairs)
    rows: list[dict] = []
    agreement: dict = {}

    def model_row(what, seconds, tokens, dtype="float32", **extra):
        gflops = 2 * n_params * tokens / seconds / 1e9 if tokens else None
        row = {
            "section": "extraction", "what": what, "mode": "eager", "size": f"{n} pairs",
            "dtype": dtype, "seconds": seconds, "pairs_per_s": n / seconds, "tokens": tokens,
            "GFLOPs": gflops, **extra,
        }  # fmt: skip
        rows.append(row)
        rate = "" if gflops is None else f"{gflops:.0f} GFLOP/s"
        print(f"  {what:<44} {seconds:7.2f} s  {n / seconds:7.2f} pairs/s  {rate}", flush=True)
        return row

    print(f"multi-feature workload: {n} pairs ({args.contexts} contexts), {args.model}")
    warm = pairs[:6]
    te, (fx, fm, tokens, hidden), mem = _timed(
        lambda: engine(model, tok, pairs, layers), lambda: engine(model, tok, warm, layers)
    )
    delta = fm - fx
    model_row("introspect engine (Δ logodds + hidden)", te, tokens, peak_mb=mem)
    tl_, (lx, lm_, tokens_lp, _), mem = _timed(
        lambda: engine(model, tok, pairs, layers, behaviour="logprob")
    )
    delta_lp = lm_ - lx
    model_row("introspect engine (Δ logprob + hidden)", tl_, tokens_lp, peak_mb=mem)
    th, (_, _, tokens_h, _), mem = _timed(
        lambda: engine(model, tok, pairs, layers, behaviour="none")
    )
    model_row("introspect engine (hidden only)", th, tokens_h, peak_mb=mem)
    tb, (bx, bm, tokens_b, _), mem = _timed(
        lambda: engine(model, tok, pairs, layers, autocast=torch.bfloat16),
        lambda: engine(model, tok, warm, layers, autocast=torch.bfloat16),
    )
    model_row("introspect engine (Δ logodds, autocast-bf16)", tb, tokens_b, "bfloat16",
              peak_mb=mem, pearson_vs_fp32=_pearson(bm - bx, delta),
              max_abs_diff=float(np.abs((bm - bx) - delta).max()))  # fmt: skip

    skipped = {}
    if "captum" in args.skip:
        skipped["captum"] = "--skip"
    else:
        try:
            import captum

            inputs = captum_inputs(tok, pairs)
            same_ids = all(
                tok.encode(render_prompt(tok, g[0].x)) == list(encode(tok, g[0].x, g[0].choices)
                                                              .prompt_ids)
                for _, g in inputs
            )  # fmt: skip
            tc, attr, mem = _timed(
                lambda: run_captum(model, tok, inputs), lambda: run_captum(model, tok, inputs[:1])
            )
            forwards = sum(1 + len(g) for _, g in inputs)
            model_row(f"Captum {captum.__version__} FeatureAblation", tc, None, peak_mb=mem,
                      forwards=forwards, engine_speedup=tc / te)  # fmt: skip
            agreement = {
                "captum": captum.__version__,
                "same_prompt_token_ids": same_ids,
                "pearson_attr_vs_minus_delta_logprob": _pearson(attr, -delta_lp),
                "max_abs_attr_plus_delta_logprob": float(np.abs(attr + delta_lp).max()),
                "mean_abs_delta_logprob": float(np.abs(delta_lp).mean()),
                "pearson_attr_vs_minus_delta_logodds": _pearson(attr, -delta),
                "max_abs_attr_plus_delta_logodds": float(np.abs(attr + delta).max()),
            }
            print("  Captum agreement: " + ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in agreement.items()))  # fmt: skip
        except ImportError as exc:
            skipped["captum"] = f"not installed ({exc})"

    if "transformer_lens" in args.skip:
        skipped["transformer_lens"] = "--skip"
    else:
        try:
            from importlib.metadata import version

            import transformer_lens  # noqa: F401

            bridge, known = tl_boot(model, tok)
            tt, (tl_hidden, tl_tokens), mem = _timed(
                lambda: run_tl(bridge, tok, pairs, layers),
                lambda: run_tl(bridge, tok, warm, layers),
            )
            rel = 0.0
            for key, ref in tl_hidden.items():
                if key[0] == lm.n_layers - 1:
                    continue
                num = np.linalg.norm(hidden[key] - ref, axis=1)
                rel = max(rel, float((num / np.linalg.norm(ref, axis=1)).max()))
            model_row(f"TransformerLens {version('transformer_lens')} run_with_cache", tt,
                      tl_tokens, peak_mb=mem, engine_speedup=tt / th,
                      max_hidden_rel_err=rel, name_in_tl_registry=known)  # fmt: skip
            agreement["transformer_lens_hidden_rel_err"] = rel
            agreement["transformer_lens_name_in_registry"] = known
            del bridge
        except ImportError as exc:
            skipped["transformer_lens"] = f"not installed ({exc})"

    if "ops" not in args.skip:
        print("ops, eager vs torch.compile:", flush=True)
        for r in op_rows(gemm, bw, args.quick):
            rows.append(r)
            print(f"  {r['what']:<34} {r['mode']:<14} {r['seconds'] * 1e3:8.2f} ms  "
                  f"(first call {r['first_call_s']:.1f} s)  x{r['speedup_vs_first']:.2f}  "
                  f"{r['GFLOPs']:.0f} GFLOP/s  {r['GBps']:.1f} GB/s",
                  flush=True)  # fmt: skip
    # The machine's limits, measured again at the end; the higher of the two is the ceiling
    # (on a shared machine a single measurement can be depressed by other work).
    bw_end = harness.memory_bandwidth()
    gemm_end = {"float32": harness.gemm_flops(torch.float32),
                "bfloat16": harness.gemm_flops(torch.bfloat16)}  # fmt: skip
    limits = {
        "gemm_GFLOPs_start": gemm, "gemm_GFLOPs_end": gemm_end,
        "memory_bandwidth_start": bw, "memory_bandwidth_end": bw_end,
    }  # fmt: skip
    gemm = {k: max(v, gemm_end[k]) for k, v in gemm.items()}
    bw = {k: max(v, bw_end[k]) for k, v in bw.items()}
    print(f"ceilings (max of start/end): GEMM fp32 {gemm['float32']:.0f} / bf16 "
          f"{gemm['bfloat16']:.0f} GFLOP/s; read {bw['read_GBps']:.1f} GB/s")  # fmt: skip
    for r in rows:
        if r.get("GFLOPs"):
            r["of_gemm"] = r["GFLOPs"] / gemm[r["dtype"]]
            r["of_gemm_bf16"] = r["GFLOPs"] / gemm["bfloat16"]
        if r.get("GBps"):
            r["of_read_bw"] = r["GBps"] / bw["read_GBps"]
    for name, why in skipped.items():
        rows.append({"section": "peer", "what": name, "skipped": why})
        print(f"  {name}: skipped: {why}")

    meta = {
        **stamp, "memory_bandwidth": bw, "gemm_GFLOPs": gemm, **limits, "model": args.model,
        "pairs": n, "layers": layers, "agreement": agreement,
        "command": "python benchmarks/bench_peers.py " + " ".join(argv or sys.argv[1:]),
    }  # fmt: skip
    path, _ = harness.write_rows(args.name, rows, meta)
    print()
    print(harness.table([r for r in rows if "skipped" not in r], [
        ("section", "section", "s"), ("what", "what", "s"), ("mode", "mode", "s"),
        ("dtype", "dtype", "s"), ("seconds", "s", ".3f"), ("pairs_per_s", "pairs/s", ".2f"),
        ("engine_speedup", "engine ×", ".2f"), ("speedup_vs_first", "vs first ×", ".2f"),
        ("GFLOPs", "GFLOP/s", ".0f"), ("of_gemm", "of GEMM", ".2f"),
        ("of_gemm_bf16", "of bf16 GEMM", ".2f"),
        ("of_read_bw", "of read bw", ".2f"),
    ]))  # fmt: skip
    print(f"\nrows: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
