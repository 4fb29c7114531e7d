"""Benchmark: the packed extraction engine against the naive two-pass baseline, same run.

Naive baseline: per batch of pairs, one padded HF forward over the x prompts and one
over the x' prompts (each followed by the first tokens of multi-token choices, one sequence per
choice), ``output_hidden_states=True`` and full logits; f and the hidden states are read from
those. The engine: ``introspect.engine.extract_pairs`` (shared-prefix packing, 4D mask, logits
only where needed, hooked layers). Both run on the same pairs in the same process; the script
reports pairs/s, tokens/s, the speed ratio, the FLOP rate on unique tokens as a fraction of the
measured GEMM rate, and the largest |Δ_engine − Δ_naive| (the engine's correctness on this
workload).

    python benchmarks/bench_extract.py                       # sycophancy, 256 pairs, smollm2-135m
    python benchmarks/bench_extract.py --tasks sycophancy hint refusal multi-feature --n 256

``multi-feature``: contexts of six fact sentences and a question, one x' per deleted sentence
(six pairs per context sharing x).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

from introspect.behaviour import behaviour_value, encode
from introspect.data.tasks import generate
from introspect.engine import ExtractConfig, extract_pairs
from introspect.models import load_model


@torch.inference_mode()
def naive(model, tokenizer, pairs, layers, batch_pairs: int):
    """Two padded forwards per batch (x side, x' side), full logits and all hidden states."""
    f_x, f_mod, hidden, tokens = [], [], [], 0
    device = next(model.parameters()).device
    for start in range(0, len(pairs), batch_pairs):
        chunk = pairs[start : start + batch_pairs]
        per_side = []
        for side in ("x", "mod"):
            seqs, reads, ends = [], [], []
            for p in chunk:
                enc = encode(tokenizer, p.x if side == "x" else p.x_mod, p.choices)
                n = len(enc.prompt_ids)
                ends.append((len(seqs), n - 1))  # the pair's last prompt token
                if all(len(c) == 1 for c in enc.choice_ids):
                    reads.append([[(len(seqs), n - 1, c[0])] for c in enc.choice_ids])
                    seqs.append(list(enc.prompt_ids))
                else:
                    item = []
                    for c in enc.choice_ids:
                        item.append([(len(seqs), n - 1 + j, t) for j, t in enumerate(c)])
                        seqs.append(list(enc.prompt_ids) + list(c[:-1]))
                    reads.append(item)
            width = max(len(s) for s in seqs)
            ids = torch.zeros(len(seqs), width, dtype=torch.long)
            mask = torch.zeros(len(seqs), width, dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            tokens += ids.numel()
            out = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True
            )
            logp = torch.log_softmax(out.logits.float(), -1).double()
            # Every read in one gather (one copy from the device), summed in the same order.
            flat = [read for item in reads for rd in item for read in rd]
            rows, cols, toks = (torch.tensor(ix) for ix in zip(*flat, strict=True))
            picked = iter(logp[rows, cols, toks].tolist())
            vals = []
            for p, item in zip(chunk, reads, strict=True):
                lp = torch.tensor([sum(next(picked) for _ in rd) for rd in item])
                vals.append(behaviour_value(lp, p.choices.index(p.target)))
            at_r = torch.tensor([r for r, _ in ends])
            at_c = torch.tensor([c for _, c in ends])
            hs = {layer: out.hidden_states[layer + 1][at_r, at_c].cpu() for layer in layers}
            per_side.append((vals, hs))
        f_x += per_side[0][0]
        f_mod += per_side[1][0]
        hidden.append({(layer, side): per_side[i][1][layer] for layer in layers
                       for i, side in enumerate(("x", "mod"))})  # fmt: skip
    hidden = {k: torch.cat([h[k] for h in hidden]).float().numpy() for k in hidden[0]}
    return np.array(f_x), np.array(f_mod), tokens, hidden


FACTS = [
    "Water boils at 100 degrees Celsius at sea level.",
    "Paris is the capital of France.",
    "A week has seven days.",
    "The Moon orbits the Earth.",
    "Spiders have eight legs.",
    "Gold is a metal.",
    "The Pacific is the largest ocean.",
    "Bees make honey.",
    "Ice is frozen water.",
    "A triangle has three sides.",
    "Mars is called the red planet.",
    "Penguins cannot fly.",
    "The Sun rises in the east.",
    "Copper conducts electricity.",
    "A year has twelve months.",
    "Whales are mammals.",
    "Rome is in Italy.",
    "Sound travels slower than light.",
    "Plants need sunlight to grow.",
    "Salt dissolves in water.",
]
QUESTIONS = [
    ("Based on the notes, is the statement above true?", [" Yes", " No"], " Yes"),
    ("Do the notes mention a planet?", [" Yes", " No"], " Yes"),
    ("Do the notes mention an animal?", [" Yes", " No"], " Yes"),
]


def multi_feature_pairs(n_contexts: int, seed: int = 0):
    """Contexts of 6 fact sentences and a question; one x' per deleted sentence."""
    import random

    from introspect.data import ablate_each

    rng = random.Random(seed)
    pairs = []
    for i in range(n_contexts):
        facts = rng.sample(FACTS, 6)
        question, choices, target = QUESTIONS[i % len(QUESTIONS)]
        content = "Notes: " + " ".join(facts) + f"\n\n{question} Answer Yes or No."
        prompt = [{"role": "user", "content": content}]
        features = {f"s{j}": [fact] for j, fact in enumerate(facts)}
        pairs += ablate_each(f"ctx{i}", prompt, features, choices, target)
    return pairs


class PeakRSS:
    """Peak resident memory while a block runs, above the level at its start (MB; None where
    /proc is missing). Freed heap memory is handed back to the system first (glibc
    ``malloc_trim``), so that a block does not look small by reusing what an earlier one freed.

    On Linux the kernel keeps the peak itself (``VmHWM``), reset at the start through
    ``/proc/self/clear_refs``, so nothing runs beside the block: a thread sampling /proc every
    few milliseconds would take a core from the block's own threads (on a 2-core machine it
    slowed the engine by about 10%). Where the reset is refused, a thread samples every 50 ms."""

    def __enter__(self):
        import gc

        gc.collect()
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self._thread = None
        self.start = _rss_mb()
        self.peak = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident size
            self._hwm = _status_mb("VmHWM") is not None
        except OSError:
            self._hwm = False
        if not self._hwm:
            import threading

            self.peak = self.start
            self._stop = threading.Event()

            def sample():
                while not self._stop.wait(0.05):
                    v = _rss_mb()
                    if v is not None and (self.peak is None or v > self.peak):
                        self.peak = v

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            self.peak = _status_mb("VmHWM")

    @property
    def extra_mb(self) -> float | None:
        if self.start is None or self.peak is None:
            return None
        return max(0.0, self.peak - self.start)


def _status_mb(field: str) -> float | None:
    """A ``kB`` field of /proc/self/status (``VmHWM``, ``VmRSS``) in MB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return None


# Each speed-up of the engine switched off on its own: its share is the slowdown that causes.
ABLATIONS = {
    "engine": {},
    "no prefix cache": {"prefix_cache": False},
    "no prefix trie": {"layout": "paths"},
    "one pair per row": {"share_rows": False},
    "full-vocab head": {"head": "full"},
    "no fused kernels": {"fused": False},  # neither the elementwise kernels nor packed GEMMs
    "no packed linear": {"packed_linear": False},
}
PRECISION_MODES = ("autocast-fp16", "autocast-bf16", "bfloat16")
# The GEMM ceiling each precision mode is measured against (its matrix products' dtype).
ROOFLINE_DTYPE = {
    "float32": "float32",
    "autocast-fp16": "float16",
    "autocast-bf16": "bfloat16",
    "bfloat16": "bfloat16",
}


def engine(model, tokenizer, pairs, layers, autocast=None, packed_linear=True, **switches):
    from introspect.engine import fused

    config = ExtractConfig(layers=tuple(layers), **switches)
    before, fused.PACK_LINEARS = fused.PACK_LINEARS, packed_linear
    try:
        res = list(extract_pairs(model, tokenizer, pairs, config, autocast=autocast))
    finally:
        fused.PACK_LINEARS = before
    f_x = np.concatenate([r.f_x for r in res])
    f_mod = np.concatenate([r.f_mod for r in res])
    hidden = {
        (layer, side): np.concatenate([r.hidden[(layer, "last", side)] for r in res])
        for layer in layers
        for side in ("x", "mod")
    }
    return f_x, f_mod, sum(r.tokens_unique for r in res), hidden


def op_profile(fn, top: int = 12) -> dict:
    """Where one call of ``fn`` spends its time: its wall seconds and, from PyTorch's profiler,
    the ``top`` operators by self CPU time (seconds, calls), the rest summed, and the time
    outside any operator (Python, the tokenizer, packing)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    in_ops = sum(e.self_cpu_time_total for e in ops) / 1e6
    rows = [
        {"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in ops[:top]
    ]
    rest = in_ops - sum(r["self_s"] for r in rows)
    return {"wall_s": wall, "ops": rows, "other_ops_s": rest, "outside_ops_s": wall - in_ops}


def max_rel_err(a: dict, b: dict, n_layers: int) -> float:
    """Largest per-row relative error ||a - b|| / ||b|| over the captured states (HF reports
    the last layer after the final norm, the engine before it: that layer is not compared)."""
    worst = 0.0
    for key in b:
        if key[0] == n_layers - 1:
            continue
        num = np.linalg.norm(a[key] - b[key], axis=1)
        den = np.maximum(np.linalg.norm(b[key], axis=1), 1e-30)
        worst = max(worst, float((num / den).max()))
    return worst


def _timed(fn, rounds, warmup=None):
    if warmup is not None:
        warmup()
    times, out, mem = [], None, []
    for _ in range(rounds):
        with PeakRSS() as peak:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        mem.append(peak.extra_mb)
    return float(np.median(times)), out, (max(mem) if None not in mem else None)


def _print_profile(task: str, prof: dict) -> None:
    wall = prof["wall_s"]
    print(f"{task}: one profiled engine run, {wall:.2f} s")
    for r in prof["ops"]:
        print(f"  {r['self_s']:7.3f} s {r['self_s'] / wall:6.1%} {r['calls']:7d}  {r['op']}")
    print(f"  {prof['other_ops_s']:7.3f} s  other operators")
    print(f"  {prof['outside_ops_s']:7.3f} s  outside any operator")


def memory_scaling(args) -> int:
    """Peak memory of whole `introspect extract` runs as N grows (each run its own process).

    The model is SmolLM2-135M's architecture and tokenizer cut to two decoder layers (random
    weights: memory and token counts are those of the real model, the run is 15x shorter).
    """
    import json
    import subprocess
    import tempfile

    from transformers import AutoModelForCausalLM

    from introspect.data.io import write_pairs

    lm = load_model(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = lm.model.config
        cfg.num_hidden_layers = 2
        torch.manual_seed(0)
        small = AutoModelForCausalLM.from_config(cfg)
        small.save_pretrained(tmp / "model")
        lm.tokenizer.save_pretrained(tmp / "model")
        del lm, small
        for n in args.memory_n:
            pairs = tmp / f"pairs-{n}.jsonl"
            write_pairs(pairs, generate("sycophancy", n, seed=0))
            out = tmp / f"run-{n}"
            cmd = [
                sys.executable, "-m", "introspect", "extract", "--model", str(tmp / "model"),
                "--pairs", str(pairs), "--out", str(out), "--layers", "all",
            ]  # fmt: skip
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            err = proc.stderr.read().decode()
            if os.waitstatus_to_exitcode(status) != 0:
                print(err, file=sys.stderr)
                raise SystemExit(f"introspect extract failed for N={n}")
            manifest = json.loads((out / "manifest.json").read_text())
            row = {
                "pairs": n,
                "peak_rss_mb": usage.ru_maxrss / 1024,
                "seconds": wall,
                "pairs_per_s": n / wall,
                "rows_written": manifest["rows_total"],
                "shards": len(manifest["shards"]),
            }
            rows.append(row)
            print(
                f"N={n:>6}: peak RSS {row['peak_rss_mb']:.0f} MB, {wall:.0f} s "
                f"({row['pairs_per_s']:.0f} pairs/s), {row['shards']} shards",
                flush=True,
            )
    base = rows[0]["peak_rss_mb"]
    for row in rows:
        row["peak_vs_smallest"] = row["peak_rss_mb"] / base
    meta = {
        **harness.machine_stamp(),
        "model": f"{args.model} architecture, 2 layers, random weights",
        "command": "python benchmarks/bench_extract.py --memory "
        + " ".join(str(n) for n in args.memory_n),
    }
    path, _ = harness.write_rows("extract_memory", rows, meta)
    print(
        harness.table(
            rows,
            [
                ("pairs", "pairs", "d"),
                ("peak_rss_mb", "peak RSS (MB)", ".0f"),
                ("peak_vs_smallest", "vs smallest", ".3f"),
                ("pairs_per_s", "pairs/s", ".0f"),
            ],
        )
    )
    print(f"\nrows: {path}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Results go to build/bench/extract.{json,csv} (extract_memory.* for --memory), "
        "or under --out-dir.",
    )
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", nargs="+", default=["sycophancy"])
    ap.add_argument("--n", type=int, default=256, help="pairs per task")
    ap.add_argument("--batch-pairs", type=int, default=16, help="naive baseline batch size")
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds (median)")
    ap.add_argument(
        "--ablations",
        nargs="*",
        metavar="TASK",
        default=None,
        help="for these tasks (all given tasks if none named), also time the engine with each "
        "speed-up switched off and in each reduced precision",
    )
    ap.add_argument(
        "--no-precisions",
        action="store_true",
        help="with --ablations, leave out the reduced-precision runs (the exact ones only)",
    )
    ap.add_argument(
        "--memory",
        nargs="+",
        type=int,
        metavar="N",
        dest="memory_n",
        help="instead: peak memory of `introspect extract` runs of N pairs each",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also profile one exact engine run per task (PyTorch's profiler: the operators by "
        "self CPU time) into the results' meta",
    )
    ap.add_argument("--name", default="extract", help="results file name")
    harness.add_out_dir(ap)
    args = ap.parse_args(argv)
    harness.use_out_dir(args.out_dir)
    if args.memory_n:
        return memory_scaling(args)
    ablate = set(args.tasks if args.ablations == [] else (args.ablations or []))

    stamp = harness.machine_stamp()
    roof = harness.roofline()
    peak = roof["gemm_GFLOPs"]["float32"]
    lm = load_model(args.model)
    model, tok = lm.model, lm.tokenizer
    n_params = (
        sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    )
    layers = sorted({lm.n_layers // 2, lm.n_layers - 1})
    print(
        f"machine: {stamp['cpu']}, {stamp['cores']} cores; {harness.describe_roofline(roof)}; "
        f"{args.model}: {n_params / 1e6:.0f}M non-embedding parameters"
    )
    rows, profiles = [], {}
    for task in args.tasks:
        if task == "multi-feature":
            pairs = multi_feature_pairs(max(1, args.n // 6))
        else:
            pairs = generate(task, args.n, seed=0)
        tn, (nx, nm, naive_tokens, naive_hidden), naive_mem = _timed(
            lambda pairs=pairs: naive(model, tok, pairs, layers, args.batch_pairs),
            args.rounds,
            warmup=lambda pairs=pairs: naive(model, tok, pairs[:8], layers, args.batch_pairs),
        )
        d_naive = nm - nx
        variants = [("engine", "float32", {})]
        if task in ablate:
            variants += [(name, "float32", sw) for name, sw in ABLATIONS.items() if sw]
            if not args.no_precisions:
                variants += [("engine", mode, {}) for mode in PRECISION_MODES]
        d_exact, t_exact = None, None
        for name, mode, switches in variants:
            from introspect.engine import precision

            run_model = model
            if mode == "bfloat16":
                import copy

                run_model = copy.deepcopy(model).to(torch.bfloat16)
            autocast = precision.autocast_dtype(mode)
            te, (ex, em, unique_tokens, hidden), mem = _timed(
                lambda m=run_model, a=autocast, sw=switches, pairs=pairs: engine(
                    m, tok, pairs, layers, a, **sw
                ),
                args.rounds,
                warmup=lambda m=run_model, a=autocast, sw=switches, pairs=pairs: engine(
                    m, tok, pairs[:8], layers, a, **sw
                ),
            )
            bound = None
            if name == "engine" and mode == "float32":
                with harness.GemmRecorder(run_model) as rec:
                    engine(run_model, tok, pairs, layers, autocast)
                bound = rec.bound_s()
                if args.profile:
                    profiles[task] = op_profile(
                        lambda m=run_model, pairs=pairs: engine(m, tok, pairs, layers)
                    )
                    _print_profile(task, profiles[task])
            del run_model
            d = em - ex
            if name == "engine" and mode == "float32":
                d_exact, t_exact = d, te
            gflops = 2 * n_params * unique_tokens / te / 1e9
            roof_dtype = ROOFLINE_DTYPE[mode]
            fid = precision.compare(d_exact, d) if mode != "float32" else None
            row = {
                "task": task,
                "variant": name,
                "dtype": mode,
                "pairs": len(pairs),
                "model": args.model,
                "naive_pairs_per_s": len(pairs) / tn,
                "engine_pairs_per_s": len(pairs) / te,
                "speedup": tn / te,
                "slowdown_vs_engine": te / t_exact,
                "naive_tokens": naive_tokens,
                "unique_tokens": unique_tokens,
                "engine_tokens_per_s": unique_tokens / te,
                "engine_GFLOPs": gflops,
                "roofline_dtype": roof_dtype,
                "fraction_of_gemm_peak": gflops / roof["gemm_GFLOPs"][roof_dtype],
                "model_bound_s": bound["total"] if bound else None,
                "model_bound_linear_s": bound["linear"] if bound else None,
                "fraction_of_model_bound": bound["total"] / te if bound else None,
                "max_abs_delta_diff": float(np.abs(d - d_naive).max()),
                "max_hidden_rel_err": max_rel_err(hidden, naive_hidden, lm.n_layers),
                "pearson_vs_fp32": fid["pearson"] if fid else 1.0,
                "max_abs_err_vs_fp32": fid["max_abs_error"] if fid else 0.0,
                "naive_peak_mb": naive_mem,
                "engine_peak_mb": mem,
            }
            rows.append(row)
            print(
                f"{task:<13} {name:<17} {mode:<13} naive {row['naive_pairs_per_s']:6.2f} "
                f"pairs/s  engine {row['engine_pairs_per_s']:6.2f} pairs/s  "
                f"x{row['speedup']:.2f}  tokens {unique_tokens}/{naive_tokens}  "
                f"{gflops:.0f} GFLOP/s ({row['fraction_of_gemm_peak']:.2f} of {roof_dtype} GEMM"
                + (
                    f", {row['fraction_of_model_bound']:.2f} of the model-shaped bound"
                    if bound
                    else ""
                )
                + ")  "
                f"max|dDelta| {row['max_abs_delta_diff']:.1e}  "
                f"hidden rel {row['max_hidden_rel_err']:.1e}  r={row['pearson_vs_fp32']:.4f}  "
                f"peak {mem if mem is None else round(mem)} MB (naive "
                f"{naive_mem if naive_mem is None else round(naive_mem)} MB)",
                flush=True,
            )
    meta = {
        **stamp,
        "gemm_fp32_GFLOPs": peak,
        "roofline": roof,
        "command": "python benchmarks/bench_extract.py " + " ".join(argv or sys.argv[1:]),
        **({"op_profile": profiles} if profiles else {}),
    }
    path, _ = harness.write_rows(args.name, rows, meta)
    print()
    print(
        harness.table(
            rows,
            [
                ("task", "task", "s"),
                ("variant", "variant", "s"),
                ("dtype", "dtype", "s"),
                ("pairs", "pairs", "d"),
                ("naive_pairs_per_s", "naive pairs/s", ".2f"),
                ("engine_pairs_per_s", "engine pairs/s", ".2f"),
                ("speedup", "speed-up", ".2f"),
                ("slowdown_vs_engine", "time vs engine", ".2f"),
                ("engine_tokens_per_s", "tokens/s", ".0f"),
                ("fraction_of_gemm_peak", "of its dtype's GEMM", ".2f"),
                ("fraction_of_model_bound", "of the model-shaped bound", ".2f"),
                ("max_abs_delta_diff", "max abs ΔΔ vs naive", ".1e"),
                ("max_hidden_rel_err", "max hidden rel err", ".1e"),
                ("pearson_vs_fp32", "r vs fp32", ".4f"),
                ("engine_peak_mb", "peak MB", ".0f"),
                ("naive_peak_mb", "naive peak MB", ".0f"),
            ],
        )
    )
    print(f"\nrows: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
