"""The ``introspect`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time

from introspect._args import add_device_argument

# Kept here so that building the parser imports no torch.
PRECISIONS = ("float32", "autocast-fp16", "autocast-bf16", "bfloat16")
CHAT_TEMPLATE_CHOICES = ("model", "plain", "auto")  # = introspect.models.CHAT_TEMPLATE_CHOICES


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from introspect import __version__, _native
    from introspect.ops import BACKENDS, unavailable_reason

    report = {
        "introspect": __version__,
        "torch": torch.__version__,
        "native_build": _native.build_info() or None,
        "backends": {b: unavailable_reason(b) or "available" for b in BACKENDS},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"introspect {report['introspect']}  (torch {report['torch']})")
    build = report["native_build"]
    if build:
        cuda = f"yes ({build['cuda_archs']}: {build['cuda_kernels']})" if build["cuda"] else "no"
        print(f"native extension: {build['compiler']}; CUDA kernels: {cuda}")
    else:
        print(f"native extension: not loaded ({_native.unavailable_reason()})")
    print("backends:")
    for name, state in report["backends"].items():
        print(f"  {name:<10} {state}")
    return 0


EXIT_BAD_INPUT = 3  # the input data (not the command line) is invalid


def _error(message: str) -> None:
    print(f"introspect: error: {message}", file=sys.stderr)


def _progress(total: int, desc: str):
    """A progress callback ``update(pairs, tokens=0)``: a bar on a terminal (pairs/s, tokens/s,
    ETA), a plain line every tenth of the way otherwise."""
    state = {"done": 0, "tokens": 0, "next": 0.0, "t0": time.perf_counter()}
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=desc, unit="pair", dynamic_ncols=True)

            def update_bar(k: int, tokens: int = 0) -> None:
                state["tokens"] += tokens
                if state["tokens"]:
                    dt = max(1e-9, time.perf_counter() - state["t0"])
                    bar.set_postfix_str(f"{state['tokens'] / dt:,.0f} tok/s", refresh=False)
                bar.update(k)

            return update_bar, bar.close
        except ImportError:
            pass

    def update(k: int, tokens: int = 0) -> None:
        state["done"] += k
        state["tokens"] += tokens
        frac = state["done"] / max(1, total)
        if frac >= state["next"] or state["done"] == total:
            dt = max(1e-9, time.perf_counter() - state["t0"])
            rate = state["done"] / dt
            eta = (total - state["done"]) / max(rate, 1e-9)
            toks = f", {state['tokens'] / dt:,.0f} tokens/s" if state["tokens"] else ""
            print(
                f"{desc}: {state['done']}/{total} ({rate:.1f} pairs/s{toks}, ETA {eta:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            state["next"] = frac + 0.1

    return update, lambda: None


def _parse_mapping(items: list[str]) -> dict[str, str]:
    mapping = {}
    for item in items or []:
        field, sep, column = item.partition("=")
        if not sep or not field or not column:
            raise ValueError(f"--map expects FIELD=COLUMN, got {item!r}")
        mapping[field] = column
    return mapping


def _cmd_pairs(args: argparse.Namespace) -> int:
    from introspect.data import PairError, ReadReport, write_pairs, write_skipped

    t0 = time.perf_counter()
    report = ReadReport()
    try:
        if args.task:
            from introspect.data.tasks import generate

            pairs = generate(args.task, args.n, seed=args.seed)
            source = f"task {args.task} (n={args.n}, seed={args.seed})"
        else:
            from introspect.data.importers import import_pairs

            pairs = import_pairs(
                args.source,
                format=args.format,
                mapping=_parse_mapping(args.map),
                on_error=args.on_error,
                report=report,
            )
            source = args.source
        if args.model:
            pairs = _check_context(pairs, args.model, args.on_error, report)
        n = write_pairs(args.out, pairs)
    except PairError as exc:
        _error(str(exc))
        if args.on_error == "fail":
            print(
                "  (use --on-error skip to keep the good rows and get a report of the bad ones)",
                file=sys.stderr,
            )
        return EXIT_BAD_INPUT
    except (OSError, ValueError) as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    dt = time.perf_counter() - t0
    print(f"wrote {n} pairs from {source} to {args.out} in {dt:.2f} s")
    if report.skipped:
        path = args.skipped_report or f"{args.out}.skipped.jsonl"
        write_skipped(path, report.skipped)
        print(f"skipped {len(report.skipped)} row(s); reasons in {path}:", file=sys.stderr)
        for s in report.skipped[:20]:
            print(f"  {s.describe()}", file=sys.stderr)
        if len(report.skipped) > 20:
            print(f"  ... and {len(report.skipped) - 20} more", file=sys.stderr)
    return 0


def _check_context(pairs, model_name, on_error, report):
    """Drops (or fails on) pairs whose longest sequence exceeds the model's context."""
    from introspect.behaviour import encode
    from introspect.data import Skipped
    from introspect.models import load_model

    loaded = load_model(model_name)
    limit = loaded.max_context
    kept = []
    for k, p in enumerate(pairs, start=1):
        longest = 0
        for prompt in (p.x, p.x_mod):
            enc = encode(loaded.tokenizer, prompt, p.choices)
            longest = max(longest, len(enc.prompt_ids) + max(len(c) for c in enc.choice_ids))
        if limit and longest > limit:
            reason = f"needs {longest} tokens, longer than {model_name}'s context of {limit}"
            report.handle(Skipped("pairs", k, p.id, reason), on_error)
            continue
        kept.append(p)
    return kept


CHAT_TEMPLATE_HELP = (
    "how chat-message prompts are rendered: 'model' uses the model's own chat template (an "
    "error for base models, which have none); 'plain' writes them as a transcript (system text, "
    "'User: ...', 'Assistant:'); 'auto' uses the model's template where it has one, else plain"
)


def _cmd_measure(args: argparse.Namespace) -> int:
    from introspect.behaviour import measure, summarize
    from introspect.data import PairError, read_pairs
    from introspect.models import load_model, resolve_device, use_plain_chat_template

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        _error(str(exc))
        return 2
    try:
        pairs, _ = read_pairs(args.pairs)
    except PairError as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    if args.limit:
        pairs = pairs[: args.limit]
    t0 = time.perf_counter()
    loaded = load_model(args.model, device=device)
    use_plain_chat_template(loaded.tokenizer, args.chat_template)
    t_load = time.perf_counter() - t0
    update, close = _progress(len(pairs), f"measuring {args.behaviour}")
    t1 = time.perf_counter()
    res = measure(
        loaded.model,
        loaded.tokenizer,
        pairs,
        kind=args.behaviour,
        batch_size=args.batch_size,
        progress=update,
    )
    close()
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
    d = summary["delta"]
    print(
        f"{args.model} on {len(pairs)} pairs of {args.pairs} ({args.behaviour}, "
        f"{len(pairs) / t_run:.1f} pairs/s):"
    )
    for key, label in (("f_x", "f(x)"), ("f_mod", "f(x')"), ("delta", "delta = f(x') - f(x)")):
        s = summary[key]
        print(
            f"  {label:<22} mean {s['mean']:+.3f}  sd {s['std']:.3f}  median {s['median']:+.3f}"
            f"  95% CI of mean [{s['ci95'][0]:+.3f}, {s['ci95'][1]:+.3f}]"
        )
    print(f"  fraction of pairs with delta < 0: {d['frac_negative']:.2f}")
    if args.by:
        groups: dict[str, list[float]] = {}
        for p, delta in zip(pairs, res.delta, strict=True):
            groups.setdefault(str(p.meta.get(args.by)), []).append(delta)
        summary["delta_by"] = {"key": args.by, "groups": {}}
        print(f"  delta by meta.{args.by}:")
        for key in sorted(groups):
            g = summarize(groups[key])
            summary["delta_by"]["groups"][key] = g
            print(
                f"    {key:<20} n {g['n']:>5}  mean {g['mean']:+.3f}  sd {g['std']:.3f}"
                f"  95% CI of mean [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]"
            )
    if args.json:
        summary["per_pair"] = [
            {"id": i, "f_x": a, "f_mod": b}
            for i, a, b in zip(res.ids, res.f_x, res.f_mod, strict=True)
        ]
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
        print(f"  per-pair values and summary: {args.json}")
    return 0


def _file_sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _parse_layers(spec: str, n_layers: int) -> list[int]:
    if spec == "none":
        return []
    if spec == "all":
        return list(range(n_layers))
    if spec == "default":
        return sorted({n_layers // 2, n_layers - 1})
    layers = []
    for part in spec.split(","):
        value = int(part)
        layers.append(value + n_layers if value < 0 else value)
    bad = [v for v in layers if not 0 <= v < n_layers]
    if bad:
        raise ValueError(f"--layers {spec}: the model has layers 0..{n_layers - 1}")
    return sorted(set(layers))


def _cmd_extract(args: argparse.Namespace) -> int:
    import os
    from dataclasses import replace

    from introspect.data import PairError, ReadReport, iter_pairs
    from introspect.engine import ExtractConfig, extract_pairs
    from introspect.models import load_model, resolve_device, use_plain_chat_template
    from introspect.run import RunError, RunWriter, merge_ranks

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = None
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
    if not os.path.exists(args.pairs):
        _error(f"pair file {args.pairs} does not exist")
        return EXIT_BAD_INPUT
    from introspect.engine import precision
    from introspect.engine.stream import PREFIX_WINDOW, check_tree_layout, shared_prefix

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        _error(str(exc))
        return 2
    if device == "cuda" and world > 1:  # one GPU per process under torchrun
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    lm = load_model(args.model, dtype="float32", device=device)
    chat_template = use_plain_chat_template(lm.tokenizer, args.chat_template)
    try:
        layers = _parse_layers(args.layers, lm.n_layers)
        positions = tuple(p.strip() for p in args.positions.split(",") if p.strip())
        config = ExtractConfig(
            layers=tuple(layers),
            behaviour=args.behaviour,
            positions=positions,
            row_tokens=args.row_tokens,
            batch_tokens=args.batch_tokens,
            layout="tree" if args.layout == "auto" else args.layout,
            prefix_cache=not args.no_prefix_cache,
        )
    except ValueError as exc:
        _error(str(exc))
        return 2
    # The head of the file (the same for every rank and after a resume) decides the cached
    # prefix, checks the packed layout and calibrates a reduced precision.
    head_n = max(PREFIX_WINDOW, args.calibrate)
    head = []
    for pair in iter_pairs(args.pairs, on_error="skip", report=ReadReport()):
        head.append(pair)
        if len(head) >= head_n:
            break
    if args.layout == "auto" and head:
        why = check_tree_layout(lm.model, lm.tokenizer, head[0])
        if why is not None:
            print(
                f"warning: {lm.model_id}: {why}; running every sequence on its own "
                "(--layout paths: still exact, slower)",
                file=sys.stderr,
            )
            config = replace(config, layout="paths")
    prefix = shared_prefix(lm.tokenizer, head[:PREFIX_WINDOW]) if config.prefix_cache else []
    try:
        writer = RunWriter(
            args.out,
            model_id=args.model,
            weights_hash=lm.weights_hash,
            config={
                **config.to_json(),
                "dtype": args.dtype,
                "prefix_tokens": len(prefix),
                "chat_template": chat_template,
            },
            input_hash=_file_sha256(args.pairs),
            layers=layers,
            positions=list(positions),
            hidden_size=lm.hidden_size,
            shard_rows=args.shard_rows,
            rank=rank,
            world_size=world,
            resume=args.resume,
        )
    except RunError as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    if args.dtype != precision.EXACT:
        fid = writer.info.get("fidelity")
        if fid is None and args.calibrate > 0 and head:
            fid = precision.measure_fidelity(
                lm.model, lm.tokenizer, head[: args.calibrate], config, args.dtype, prefix=prefix
            )
            writer.set_info("fidelity", fid)
        if fid is None:
            print(
                f"warning: --dtype {args.dtype} is approximate and its fidelity was not measured "
                "(--calibrate 0)",
                file=sys.stderr,
            )
        elif rank == 0:
            what = (
                f"Δ correlates {fid['pearson']:.4f} with float32 (max |error| "
                f"{fid['max_abs_error']:.3g}, Δ sd {fid['delta_sd']:.3g})"
                if "pearson" in fid
                else f"hidden states differ by {fid.get('hidden_max_rel_error', 0):.2e} relative"
            )
            print(
                f"warning: --dtype {args.dtype} is approximate: on the first {fid['pairs']} "
                f"pairs {what}; recorded in manifest.json (info.fidelity)",
                file=sys.stderr,
            )
    autocast = precision.apply(lm.model, args.dtype)
    skip = writer.rows_done
    report = ReadReport()

    def my_pairs():
        # Rank r takes valid pairs r, r + K, ...; a resumed rank skips what it already wrote.
        for k, pair in enumerate(iter_pairs(args.pairs, on_error=args.on_error, report=report)):
            if k % world == rank and k // world >= skip:
                yield pair

    state = {"tokens": 0, "naive": 0, "pairs": 0}
    with open(args.pairs, "rb") as f:
        total = max(0, sum(1 for line in f if line.strip()) // world - skip)
    update, close = _progress(total, f"extracting (rank {rank})" if world > 1 else "extracting")
    t0 = time.perf_counter()
    try:
        batches = extract_pairs(
            lm.model,
            lm.tokenizer,
            my_pairs(),
            config,
            boundary_every=args.shard_rows,
            first_index=skip,
            progress=update,
            prefix=prefix,
            autocast=autocast,
        )
        for res in batches:
            writer.add(res.ids, res.f_x, res.f_mod, res.hidden)
            state["tokens"] += res.tokens_unique
            state["naive"] += res.tokens_naive
            state["pairs"] += len(res.ids)
        close()
        if report.skipped:
            import numpy as np

            empty = {
                (layer, pos, side): np.zeros((0, lm.hidden_size), np.float32)
                for layer in layers
                for pos in positions
                for side in ("x", "mod")
            }
            writer.add([], np.zeros(0), np.zeros(0), empty, skipped=report.skipped)
        writer.close()
    except PairError as exc:
        _error(f"{exc} (the run so far is kept: fix the file and pass --resume)")
        return EXIT_BAD_INPUT
    if dist is not None:
        dist.barrier()
        if rank == 0:
            merge_ranks(args.out)
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        share = state["tokens"] / max(1, state["naive"])
        print(
            f"extracted {state['pairs']} pairs into {args.out} "
            f"({time.perf_counter() - t0:.1f} s; packing computed {share:.2f} of the "
            f"tokens of separate forwards)"
        )
        for s in report.skipped[:20]:
            print(f"  skipped {s.describe()}", file=sys.stderr)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from introspect.models import format_models_table, list_models

    rows = list_models()
    print(json.dumps(rows, indent=2, default=str) if args.json else format_models_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="introspect",
        description=(
            "Counterfactual self-explanation research on language models: measure how behaviour "
            "changes when a feature is removed from the input, extract the hidden states that "
            "carry it, train explainers, and test whether they track the current model."
        ),
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser(
        "info",
        help="show the build, the backends this machine can run, and why others cannot",
        description="Show the native build and which op backends are available here.",
    )
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_cmd_info)

    from introspect.data.importers import FORMATS
    from introspect.data.tasks import TASKS

    pairs = sub.add_parser(
        "pairs",
        help="generate built-in counterfactual pairs, or import and validate your own",
        description=(
            "Write a pair file (JSONL: id, prompt, remove or prompt_mod, choices, target, meta). "
            "Either generate a built-in task (--task) or import a file (--from). Every row is "
            "validated; a bad row stops the command naming its file, line and id, or with "
            "--on-error skip is left out and reported (in OUT.skipped.jsonl) while every good "
            "row is kept."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  introspect pairs --task sycophancy --n 2000 --seed 0 --out syc.jsonl\n"
            "  introspect pairs --from xstest_prompts.csv --format xstest --out refusal.jsonl\n"
            "  introspect pairs --from mine.csv --map prompt=question --map remove=cue "
            "--map choices=options --map target=answer --out mine.jsonl\n"
            f"\nexit codes: 0 written, 2 bad command line, {EXIT_BAD_INPUT} invalid input data"
        ),
    )
    src = pairs.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", choices=sorted(TASKS), help="built-in task generator")
    src.add_argument("--from", dest="source", metavar="FILE", help="file to import")
    pairs.add_argument("--n", type=int, default=1000, help="pairs to generate (default 1000)")
    pairs.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    pairs.add_argument(
        "--format", default="auto", choices=FORMATS, help="format of --from (default: detected)"
    )
    pairs.add_argument(
        "--map",
        action="append",
        metavar="FIELD=COLUMN",
        help="for generic JSONL/CSV/Parquet: which column holds a pair field",
    )
    pairs.add_argument("--out", required=True, help="pair file to write (JSONL)")
    pairs.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="stop at the first bad row (default) or skip and report bad rows",
    )
    pairs.add_argument(
        "--skipped-report",
        metavar="PATH",
        help="where to write skipped rows (default OUT.skipped.jsonl)",
    )
    pairs.add_argument("--model", help="also check every pair fits this model's context")
    pairs.set_defaults(func=_cmd_pairs)

    meas = sub.add_parser(
        "measure",
        help="f(x), f(x') and delta of a pair file on a model (plain forwards)",
        description=(
            "Measure the behaviour f (teacher-forced log-probabilities of the choices) on x and "
            "x' for each pair, with ordinary forwards, and summarise delta = f(x') - f(x)."
        ),
    )
    meas.add_argument(
        "--model",
        required=True,
        help="alias (smollm2-135m, gemma3-270m), model directory, .gguf file or hub id",
    )
    meas.add_argument("--pairs", required=True, help="pair file (JSONL)")
    meas.add_argument("--limit", type=int, help="only the first N pairs")
    meas.add_argument("--behaviour", default="logodds", choices=("logodds", "logprob", "prob"))
    meas.add_argument("--batch-size", type=int, default=16, help="sequences per forward")
    meas.add_argument("--json", metavar="PATH", help="write the summary and per-pair values")
    meas.add_argument(
        "--chat-template", choices=CHAT_TEMPLATE_CHOICES, default="model", help=CHAT_TEMPLATE_HELP
    )
    add_device_argument(meas)
    meas.add_argument("--by", metavar="KEY", help="also summarise delta per value of meta.KEY")
    meas.set_defaults(func=_cmd_measure)

    ext = sub.add_parser(
        "extract",
        help="f(x), f(x'), delta and hidden states of a pair file, into a run directory",
        description=(
            "Run each pair's x and x' through the model in one packed forward that shares their "
            "common prefix, compute the behaviour from the choices' log-probabilities, capture "
            "the chosen layers' hidden states at the last prompt token, and write them to a "
            "run directory (manifest.json + checksummed safetensors shards) that "
            "introspect.open_run reads back. A killed run continues with --resume. Under "
            "torchrun each process takes every K-th pair and the shards are merged at the end."
        ),
    )
    ext.add_argument("--model", required=True, help="alias, model directory, .gguf or hub id")
    ext.add_argument("--pairs", required=True, help="pair file (JSONL)")
    ext.add_argument("--out", required=True, help="run directory to create (or resume)")
    ext.add_argument(
        "--chat-template", choices=CHAT_TEMPLATE_CHOICES, default="model", help=CHAT_TEMPLATE_HELP
    )
    add_device_argument(ext)
    ext.add_argument(
        "--layers",
        default="default",
        help="comma-separated decoder layers (negative counts from the end), "
        "'all', 'none', or 'default' (the middle and the last layer)",
    )
    ext.add_argument(
        "--positions",
        default="last",
        help="hidden-state positions, comma-separated: 'last' (the last prompt token) and "
        "'span' (in x the mean over the removed tokens, in x' over the tokens replacing them, "
        "or the first token after the deletion)",
    )
    ext.add_argument(
        "--behaviour",
        default="logodds",
        choices=("logodds", "logprob", "prob", "none"),
        help="f of the choices' log-probabilities; 'none' skips the head and stops the "
        "forward after the last requested layer",
    )
    ext.add_argument(
        "--dtype",
        default="float32",
        choices=PRECISIONS,  # = introspect.engine.precision.PRECISIONS (a test checks)
        help="float32 is exact. autocast-fp16/autocast-bf16 keep float32 weights and residual "
        "stream with reduced-precision matrix products; bfloat16 casts the whole model. A "
        "reduced precision is approximate: its fidelity (Pearson and max error of Δ against "
        "float32 on the first --calibrate pairs) is measured, printed and written to the "
        "manifest",
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
        help="tree: x and x' share their common prefix in one packed row (needs attention that "
        "accepts a 4D mask); paths: every sequence on its own; auto: tree if a check on the "
        "first pair confirms the model honours the mask, else paths",
    )
    ext.add_argument(
        "--no-prefix-cache",
        action="store_true",
        help="do not compute the prefix common to the pairs (system prompt, few-shot block) "
        "once and reuse its keys and values",
    )
    ext.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    ext.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="bad pair rows: stop (default) or skip and record them in the manifest",
    )
    ext.add_argument("--row-tokens", type=int, default=256, help="positions per packed row")
    ext.add_argument("--batch-tokens", type=int, default=2048, help="positions per forward")
    ext.add_argument("--shard-rows", type=int, default=4096, help="pairs per shard file")
    ext.set_defaults(func=_cmd_extract)

    models = sub.add_parser("models", help="the built-in model aliases and the conversion cache")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    mlist = msub.add_parser("list", help="aliases, whether installed and cached, cache sizes")
    mlist.add_argument("--json", action="store_true", help="print machine-readable JSON")
    mlist.set_defaults(func=_cmd_models)

    from introspect.evaluation.commands import add_eval_parser
    from introspect.training.commands import add_train_parser

    add_train_parser(sub)
    add_eval_parser(sub)

    from introspect.experiment.commands import add_experiment_parser

    add_experiment_parser(sub)
    return parser


def _version() -> str:
    from introspect import __version__

    return f"introspect {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
