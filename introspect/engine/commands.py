"""``introspect measure`` (plain forwards) and ``introspect extract`` (the engine, into a run
directory)."""

from __future__ import annotations

import argparse
import time

from introspect._args import (
    EXIT_CODES,
    MODEL_HELP,
    add_chat_template_argument,
    add_device_argument,
    add_json_argument,
    say,
    write_json_output,
)

PRECISIONS = ("float32", "autocast-fp16", "autocast-bf16", "bfloat16")  # = precision.PRECISIONS
ATTENTIONS = ("auto", "mask", "paired", "blocks")  # = introspect.engine.forward.ATTENTIONS
MAX_LISTED = 20


def _print_summary(label: str, s: dict, indent: str = "  ") -> None:
    print(
        f"{indent}{label:<22} mean {s['mean']:+.3f}  sd {s['std']:.3f}  median "
        f"{s['median']:+.3f}  95% CI of mean [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]"
    )


def _by_group(pairs, delta, key: str) -> dict:
    from introspect.behaviour import summarize

    groups: dict[str, list[float]] = {}
    for p, d in zip(pairs, delta, strict=True):
        groups.setdefault(str(p.meta.get(key)), []).append(d)
    print(f"  delta by meta.{key}:")
    out = {}
    for name in sorted(groups):
        g = out[name] = summarize(groups[name])
        print(
            f"    {name:<20} n {g['n']:>5}  mean {g['mean']:+.3f}  sd {g['std']:.3f}"
            f"  95% CI of mean [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]"
        )
    return {"key": key, "groups": out}


def _cmd_measure(args: argparse.Namespace) -> int:
    from introspect._progress import Progress
    from introspect.behaviour import measure, summarize
    from introspect.data import read_pairs
    from introspect.models import load_model, resolve_device, with_chat_template

    device = resolve_device(args.device)
    pairs, _ = read_pairs(args.pairs)
    pairs = pairs[: args.limit] if args.limit else pairs
    t0 = time.perf_counter()
    loaded = load_model(args.model, device=device)
    tok, _ = with_chat_template(loaded.tokenizer, args.chat_template)
    t_load = time.perf_counter() - t0
    progress = Progress(len(pairs), f"measuring {args.behaviour}")
    t1 = time.perf_counter()
    res = measure(
        loaded.model,
        tok,
        pairs,
        kind=args.behaviour,
        batch_size=args.batch_size,
        progress=progress.update,
    )
    progress.close()
    t_run = time.perf_counter() - t1
    summary = {
        "model": args.model,
        "pairs": args.pairs,
        "n": len(pairs),
        "behaviour": args.behaviour,
        "f_x": summarize(res.f_x),
        "f_mod": summarize(res.f_mod),
        "delta": summarize(res.delta),
        "load_s": t_load,
        "measure_s": t_run,
    }
    print(
        f"{args.model} on {len(pairs)} pairs of {args.pairs} ({args.behaviour}, "
        f"{len(pairs) / t_run:.1f} pairs/s):"
    )
    for key, label in (("f_x", "f(x)"), ("f_mod", "f(x')"), ("delta", "delta = f(x') - f(x)")):
        _print_summary(label, summary[key])
    print(f"  fraction of pairs with delta < 0: {summary['delta']['frac_negative']:.2f}")
    if args.by:
        summary["delta_by"] = _by_group(pairs, res.delta, args.by)
    summary["per_pair"] = [
        {"id": i, "f_x": a, "f_mod": b} for i, a, b in zip(res.ids, res.f_x, res.f_mod, strict=True)
    ]
    if write_json_output(args.json, summary):
        print(f"  per-pair values and summary: {args.json}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from introspect.data import PairError
    from introspect.engine.driver import Extraction

    job = Extraction(
        args.model,
        None,
        args.pairs,
        args.out,
        layers=args.layers,
        positions=args.positions,
        behaviour=args.behaviour,
        dtype=args.dtype,
        calibrate=args.calibrate,
        layout=args.layout,
        attention=args.attention,
        prefix_cache=not args.no_prefix_cache,
        resume=args.resume,
        on_error=args.on_error,
        row_tokens=args.row_tokens,
        batch_tokens=args.batch_tokens,
        shard_rows=args.shard_rows,
        chat_template=args.chat_template,
        device=args.device,
        model_id=args.model,
        progress=True,
        say=say,
        fused=not args.no_fused_kernels,
    )
    try:
        stats = job.run()
    except PairError:
        say("  (the run so far is kept: fix the file and pass --resume)")
        raise
    if job.rank == 0:
        print(
            f"extracted {stats.pairs} pairs into {args.out} ({stats.seconds:.1f} s; packing "
            f"computed {stats.token_share:.2f} of the tokens of separate forwards)"
        )
        for s in stats.skipped[:MAX_LISTED]:
            say(f"  skipped {s.describe()}")
        write_json_output(
            args.json,
            {
                "out": args.out,
                "pairs": stats.pairs,
                "tokens": stats.tokens,
                "naive_tokens": stats.naive_tokens,
                "seconds": stats.seconds,
                "skipped": [s.to_json() for s in stats.skipped],
            },
        )
    return 0


def add_measure_parser(sub) -> None:
    meas = sub.add_parser(
        "measure",
        help="f(x), f(x') and delta of a pair file on a model (plain forwards)",
        description=(
            "Measure the behaviour f (teacher-forced log-probabilities of the choices) on x and "
            "x' for each pair, with ordinary forwards, and summarise delta = f(x') - f(x)."
        ),
        epilog=EXIT_CODES,
    )
    meas.add_argument("--model", required=True, help=MODEL_HELP)
    meas.add_argument("--pairs", required=True, help="pair file (JSONL)")
    meas.add_argument("--limit", type=int, help="only the first N pairs")
    meas.add_argument("--behaviour", default="logodds", choices=("logodds", "logprob", "prob"))
    meas.add_argument("--batch-size", type=int, default=16, help="sequences per forward")
    add_json_argument(meas, "the summary and per-pair values")
    add_chat_template_argument(meas)
    add_device_argument(meas)
    meas.add_argument("--by", metavar="KEY", help="also summarise delta per value of meta.KEY")
    meas.set_defaults(func=_cmd_measure)


def _add_engine_options(ext: argparse.ArgumentParser) -> None:
    ext.add_argument(
        "--dtype",
        default="float32",
        choices=PRECISIONS,
        help=(
            "float32 is exact. autocast-fp16/autocast-bf16 keep float32 weights and residual "
            "stream with reduced-precision matrix products; bfloat16 casts the whole model. A "
            "reduced precision is approximate: its fidelity (Pearson and max error of Δ against "
            "float32 on the first --calibrate pairs) is measured, printed and written to the "
            "manifest"
        ),
    )
    ext.add_argument(
        "--calibrate",
        type=int,
        default=32,
        metavar="N",
        help="pairs used to measure a reduced precision's fidelity (0: do not measure)",
    )
    ext.add_argument(
        "--layout",
        choices=("auto", "tree", "paths"),
        default="auto",
        help=(
            "tree: x and x' share their common prefix in one packed row (needs attention that "
            "accepts a 4D mask); paths: every sequence on its own; auto: tree if a check on the "
            "first pair confirms the model honours the mask, else paths"
        ),
    )
    ext.add_argument(
        "--attention",
        choices=ATTENTIONS,
        default="auto",
        help=(
            "attention of the packed rows: mask (the model's own attention with a 4D mask), "
            "paired (the segment kernel, no dense mask), blocks (each pair's tokens alone, "
            "skipping the other pairs of the row: the C++ kernel in float32, else SDPA per "
            "pair), auto (paired on a GPU and blocks on the CPU where the model supports them, "
            "else mask)"
        ),
    )
    ext.add_argument(
        "--no-prefix-cache",
        action="store_true",
        help=(
            "do not compute the prefix common to the pairs (system prompt, few-shot block) once "
            "and reuse its keys and values"
        ),
    )
    ext.add_argument(
        "--no-fused-kernels",
        action="store_true",
        help=(
            "run a Llama-family model's norms, MLP activation and rotary embedding as its own "
            "modules do, not through the fused CPU kernels"
        ),
    )
    ext.add_argument(
        "--row-tokens",
        type=int,
        default=None,
        help=(
            "positions per packed row (default: the whole batch in one row where attention runs "
            "per pair, blocks or paired; else 256)"
        ),
    )
    ext.add_argument("--batch-tokens", type=int, default=2048, help="positions per forward")
    ext.add_argument("--shard-rows", type=int, default=4096, help="pairs per shard file")


def add_extract_parser(sub) -> None:
    ext = sub.add_parser(
        "extract",
        help="f(x), f(x'), delta and hidden states of a pair file, into a run directory",
        description=(
            "Run each pair's x and x' through the model in one packed forward that shares their "
            "common prefix, compute the behaviour from the choices' log-probabilities, capture "
            "the chosen layers' hidden states at the last prompt token, and write them to a "
            "run directory (manifest.json + checksummed safetensors shards) that "
            "introspect.open_run reads back. A killed run continues with --resume. Under "
            "torchrun each process takes every K-th pair and the shards are merged at the end. "
            "The same as introspect.extract(model, tokenizer, pairs, out, ...) in Python."
        ),
        epilog=EXIT_CODES,
    )
    ext.add_argument("--model", required=True, help=MODEL_HELP)
    ext.add_argument("--pairs", required=True, help="pair file (JSONL)")
    ext.add_argument("--out", required=True, help="run directory to create (or resume)")
    add_chat_template_argument(ext)
    add_device_argument(ext)
    ext.add_argument(
        "--layers",
        default="default",
        help=(
            "comma-separated decoder layers (negative counts from the end), 'all', 'none', or "
            "'default' (the middle and the last layer)"
        ),
    )
    ext.add_argument(
        "--positions",
        default="last",
        help=(
            "hidden-state positions, comma-separated: 'last' (the last prompt token) and 'span' "
            "(in x the mean over the removed tokens, in x' over the tokens replacing them, or the "
            "first token after the deletion)"
        ),
    )
    ext.add_argument(
        "--behaviour",
        default="logodds",
        choices=("logodds", "logprob", "prob", "none"),
        help=(
            "f of the choices' log-probabilities; 'none' skips the head and stops the forward "
            "after the last requested layer"
        ),
    )
    _add_engine_options(ext)
    ext.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    ext.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="bad pair rows: stop (default) or skip and record them in the manifest",
    )
    add_json_argument(ext, "a summary (pairs, tokens, seconds, skipped rows)")
    ext.set_defaults(func=_cmd_extract)
