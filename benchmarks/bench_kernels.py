"""Benchmark: the ops' kernels against their PyTorch equivalents, same run.

choice_logprobs on the CPU: the chunked reference (online log-sum-exp over vocabulary tiles,
never the [M, V] logits) against the naive full-logits path (``h @ Wᵀ``, ``log_softmax``,
``gather``) at SmolLM2's head size, M=4096 scored positions, V=49152, D=576, float32: median time
of each, peak extra memory of each (resident-set high-water mark above the level before the
call, each measured in a fresh process: Linux ``/proc/self/clear_refs``), their ratios, and
GFLOP/s against the measured fp32 GEMM rate. The naive path under ``torch.compile`` is added
when it compiles within the time limit (otherwise the row says why it was skipped).

The fused elementwise ops of a Llama-family forward (rms_norm with and without the residual add,
silu_mul, rope), reference (the PyTorch formulas) against cpp at SmolLM2's shapes (T=2048
tokens, hidden 576, intermediate 1536, 9 query / 3 key-value heads of 64), float32 and
bfloat16: median time, speed-up and the fraction of read bandwidth their bytes moved reach.

paired_attention on the CPU over packed pair tries at SmolLM2's heads (rows of pair tries: a
shared prefix, x's suffix, an x' suffix; float32): the dense-mask reference (SDPA over whole
rows), SDPA per trie group (``blocks``) and the C++ kernel, with the fraction of the fp32 GEMM
rate that the exact products (each query over the keys it sees) reach.

On a GPU (when present): each native backend (cuda, triton) against the PyTorch equivalent
(full logits in float32 + log_softmax), float32 and bfloat16, with TFLOP/s and peak memory.

    python benchmarks/bench_kernels.py            # full size (M=4096, V=49152, D=576)
    python benchmarks/bench_kernels.py --quick    # M=512, V=8192, D=576
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

from introspect.ops import (
    available_backends,
    choice_logprobs,
    paired_attention,
    rms_norm,
    rope,
    segment_meta,
    silu_mul,
)
from introspect.ops.paired_attention import paired_attention_blocks

FULL = {"M": 4096, "V": 49152, "D": 576, "C": 4}
QUICK = {"M": 512, "V": 8192, "D": 576, "C": 4}
COMPILE_TIMEOUT_S = 600
# SmolLM2-135M: tokens per forward, hidden, intermediate, query / key-value heads, head dim.
FUSED = {"T": 2048, "H": 576, "I": 1536, "Hq": 9, "Hk": 3, "D": 64}
FUSED_QUICK = {**FUSED, "T": 256}
# Attention rows: pair tries (prefix, x suffix, x' suffix tokens) per row, rows.
ATTENTION = {"prefix": 40, "x": 80, "mod": 60, "tries": 11, "rows": 4}
ATTENTION_QUICK = {**ATTENTION, "tries": 3, "rows": 2}


def _inputs(M: int, V: int, D: int, C: int, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(M, D, generator=g).to(device, dtype)
    weight = (torch.randn(V, D, generator=g) * 3 / D**0.5).to(device, dtype)
    choices = torch.randint(0, V, (M, C), generator=g).to(device)
    return hidden, weight, choices


def naive_logp(hidden, weight, choices):
    """The full-logits path: [M, V] float32 logits, their log-softmax, then the gather."""
    return torch.log_softmax(hidden.float() @ weight.float().T, -1).gather(1, choices)


def reference(hidden, weight, choices):
    return choice_logprobs(hidden, weight, choices, backend="reference").logp


# ------------------------------------------------------------------------ memory (subprocess)


def _status(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(key + r":\s+(\d+)", text).group(1)) * 1024


def _peak_extra(fn) -> int:
    """Peak resident memory above the current level while ``fn`` runs."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _status("VmRSS")
    fn()
    return _status("VmHWM") - base


def _probe(spec: dict) -> dict:
    """Runs in a fresh process: peak extra memory of one variant (and compile time)."""
    hidden, weight, choices = _inputs(spec["M"], spec["V"], spec["D"], spec["C"])
    fn = {"naive": naive_logp, "reference": reference}.get(spec["variant"])
    out: dict = {}
    if spec["variant"] == "naive_compiled":
        compiled = torch.compile(naive_logp, dynamic=False)
        t0 = time.perf_counter()
        compiled(hidden, weight, choices)  # compiles for these shapes
        out["compile_s"] = time.perf_counter() - t0
        fn = compiled
        out["note"] = "peak measured on the call after compilation"
    else:
        # One-time set-up (BLAS, thread pools) on tiny inputs so that it is not counted.
        fn(hidden[:2], weight[:100], choices[:2] % 100)
    out["peak_extra_bytes"] = _peak_extra(lambda: fn(hidden, weight, choices))
    return out


def _run_probe(spec: dict, timeout: float) -> dict:
    try:
        res = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(spec)],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"failed: {last[:200]}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _can_measure_memory() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------ CPU section


def _interleaved(fns: dict, rounds: int) -> dict:
    """Times every function once per round, rounds interleaved (machine noise hits all alike)."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(harness.measure(fn, warmup=0, repeats=1)["median_s"])
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10) if len(ts) > 1 else [ts[0]] * 9
        out[name] = {"median_s": statistics.median(ts), "p10_s": q[0], "p90_s": q[-1],
                     "repeats": len(ts)}  # fmt: skip
    return out


def cpu_rows(size: dict, rounds: int, gemm_gflops: float, read_gbps: float) -> list[dict]:
    M, V, D, C = size["M"], size["V"], size["D"], size["C"]
    flops = 2 * M * V * D
    # The least any path must read: the hidden states and the head's weight, once (fp32).
    min_bytes = 4 * (M * D + V * D)
    hidden, weight, choices = _inputs(M, V, D, C)
    fns = {"naive": lambda: naive_logp(hidden, weight, choices),
           "reference": lambda: reference(hidden, weight, choices)}  # fmt: skip

    # The two paths agree (the benchmark measures the right thing).
    err = float((fns["naive"]() - fns["reference"]()).abs().max())

    skipped = {}
    mem = {}
    can_mem = _can_measure_memory()
    for variant in ("naive", "reference", "naive_compiled"):
        if variant == "naive_compiled":
            probe = _run_probe({"variant": variant, **size}, COMPILE_TIMEOUT_S)
            if "error" in probe:
                skipped[variant] = f"torch.compile of the naive path {probe['error']}"
                continue
            compiled = torch.compile(naive_logp, dynamic=False)
            compiled(hidden, weight, choices)  # compiled again here (inductor's cache is warm)
            fns[variant] = lambda compiled=compiled: compiled(hidden, weight, choices)
        else:
            probe = _run_probe({"variant": variant, **size}, 600) if can_mem else {}
        mem[variant] = probe

    timing = _interleaved(fns, rounds)
    base_t = timing["naive"]["median_s"]
    base_m = mem.get("naive", {}).get("peak_extra_bytes")
    rows = []
    for variant in ("naive", "reference", "naive_compiled"):
        row = {"device": "cpu", "op": "choice_logprobs", "variant": variant, "M": M, "V": V,
               "D": D, "C": C, "dtype": "float32"}  # fmt: skip
        if variant in skipped:
            row["skipped"] = skipped[variant]
            rows.append(row)
            continue
        t = timing[variant]
        peak = mem.get(variant, {}).get("peak_extra_bytes")
        row.update({
            "median_ms": t["median_s"] * 1e3, "p10_ms": t["p10_s"] * 1e3,
            "p90_ms": t["p90_s"] * 1e3, "repeats": t["repeats"],
            "speedup_vs_naive": base_t / t["median_s"],
            "peak_extra_MiB": peak / 2**20 if peak is not None else None,
            "memory_vs_naive": peak / base_m if peak is not None and base_m else None,
            "GFLOPs": flops / t["median_s"] / 1e9,
            "fraction_of_gemm_peak": flops / t["median_s"] / 1e9 / gemm_gflops,
            "fraction_of_read_bw": min_bytes / t["median_s"] / 1e9 / read_gbps,
            "max_abs_diff_vs_naive": err if variant == "reference" else None,
            "compile_s": mem.get(variant, {}).get("compile_s"),
        })  # fmt: skip
        if variant == "reference":
            mod = sys.modules["introspect.ops.choice_logprobs"]
            chunk = max(mod.DEFAULT_CHUNK, mod.TILE_ELEMENTS // M)
            row["chunk"] = min(V, chunk)
            row["row_chunk"] = min(M, max(1, mod.TILE_ELEMENTS // row["chunk"]))
        rows.append(row)
    return rows


# ------------------------------------------------------------------------ fused elementwise ops


def _fused_cases(size: dict, dtype: torch.dtype) -> dict:
    """op -> (call with a backend name, bytes it must read and write), on the layouts a Llama
    forward hands them (q and k as ``view(1, T, heads, D).transpose(1, 2)``)."""
    T, H, F, Hq, Hk, D = (size[k] for k in ("T", "H", "I", "Hq", "Hk", "D"))
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    x, res, w, gate, up = r(T, H), r(T, H), r(H) + 1, r(T, F) * 4, r(T, F)
    q, k = r(1, T, Hq, D).transpose(1, 2), r(1, T, Hk, D).transpose(1, 2)
    cos, sin = r(1, T, D), r(1, T, D)
    e = x.element_size()
    return {
        "rms_norm": (lambda b: rms_norm(x, w, 1e-5, backend=b), e * (2 * T * H + H)),
        "rms_norm+residual": (
            lambda b: rms_norm(x, w, 1e-5, res, backend=b)[0],
            e * (4 * T * H + H),
        ),
        "silu_mul": (lambda b: silu_mul(gate, up, backend=b), e * 3 * T * F),
        "rope": (lambda b: rope(q, k, cos, sin, backend=b)[0], e * 2 * T * ((Hq + Hk) * D + D)),
    }


def fused_rows(size: dict, rounds: int, read_gbps: float) -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for op, (call, nbytes) in _fused_cases(size, dtype).items():
            err = float((call("cpp").float() - call("reference").float()).abs().max())
            fns = {b: lambda b=b, call=call: call(b) for b in ("reference", "cpp")}
            timing = _interleaved(fns, rounds)
            base = timing["reference"]["median_s"]
            for variant, t in timing.items():
                rows.append({
                    "device": "cpu", "op": op, "variant": variant, **size,
                    "dtype": str(dtype).removeprefix("torch."),
                    "median_ms": t["median_s"] * 1e3, "p10_ms": t["p10_s"] * 1e3,
                    "p90_ms": t["p90_s"] * 1e3, "repeats": t["repeats"],
                    "speedup_vs_reference": base / t["median_s"],
                    "fraction_of_read_bw": nbytes / t["median_s"] / 1e9 / read_gbps,
                    "max_abs_diff_vs_reference": err if variant == "cpp" else None,
                })  # fmt: skip
    return rows


def _section(probe_op: str, row_op: str, title: str, make_rows, line) -> list[dict]:
    """One CPU section, where ``probe_op`` has a cpp backend: ``title``, then ``line(row)`` for
    each row ``make_rows()`` gives (else one skipped row for ``row_op``)."""
    if "cpp" not in available_backends(probe_op):
        print(f"{row_op}: skipped: no cpp backend")
        return [{"device": "cpu", "op": row_op, "skipped": "no cpp backend"}]
    print(title, flush=True)
    rows = make_rows()
    for r in rows:
        diff = r["max_abs_diff_vs_reference"]
        print(line(r) + (f"  max|diff| {diff:.1e}" if diff is not None else ""), flush=True)
    return rows


def _fused_section(quick: bool, rounds: int, read_gbps: float) -> list[dict]:
    size = FUSED_QUICK if quick else FUSED
    shape = " ".join(f"{k}={v}" for k, v in size.items())
    return _section(
        "rms_norm", "fused", f"fused elementwise ops, CPU, {shape} ({rounds} rounds)",
        lambda: fused_rows(size, rounds, read_gbps),
        lambda r: f"  {r['op']:<18} {r['dtype']:<9} {r['variant']:<10} {r['median_ms']:8.2f} ms"
                  f"  x{r['speedup_vs_reference']:.2f}  {r['fraction_of_read_bw']:.3f} of read bw",
    )  # fmt: skip


# ------------------------------------------------------------------------ paired_attention


def _pair_row(size: dict) -> list[int]:
    """Parents of one packed row of ``tries`` pair tries."""
    row: list[int] = []
    for _ in range(size["tries"]):
        off, n = len(row), size["prefix"] + size["x"]
        row += [-1] + [off + i for i in range(n - 1)]
        branch = len(row)
        row += [off + size["prefix"] - 1] + [branch + i for i in range(size["mod"] - 1)]
    return row


def attention_rows(size: dict, heads: dict, rounds: int, gemm_gflops: float) -> list[dict]:
    meta = segment_meta([_pair_row(size)] * size["rows"])
    B, T, Hq, Hk, D = meta.rows, meta.width, heads["Hq"], heads["Hk"], heads["D"]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, T, Hq, D, generator=g).transpose(1, 2)  # as a Llama forward hands them
    k, v = (torch.randn(B, T, Hk, D, generator=g).transpose(1, 2) for _ in range(2))
    scale = D**-0.5
    fns = {
        "reference": lambda: paired_attention(q, k, v, meta, backend="reference"),
        "blocks": lambda: paired_attention_blocks(q, k, v, meta, scale),
        "cpp": lambda: paired_attention(q, k, v, meta, backend="cpp"),
    }
    with torch.no_grad():
        ref = fns["reference"]()
        errs = {name: float((fn() - ref).abs().max()) for name, fn in fns.items()}
        timing = _interleaved(fns, rounds)
    seen = int(meta.dense_mask("cpu").sum())  # (query, key) pairs attended
    flops = 4.0 * seen * Hq * D  # scores and values, 2 flops per multiply-add
    base = timing["reference"]["median_s"]
    return [
        {"device": "cpu", "op": "paired_attention", "variant": name, "dtype": "float32",
         **size, **heads, "T": T, "median_ms": t["median_s"] * 1e3, "p10_ms": t["p10_s"] * 1e3,
         "p90_ms": t["p90_s"] * 1e3, "repeats": t["repeats"],
         "speedup_vs_reference": base / t["median_s"],
         "fraction_of_gemm_peak": flops / t["median_s"] / 1e9 / gemm_gflops,
         "max_abs_diff_vs_reference": errs[name] if name != "reference" else None}
        for name, t in timing.items()
    ]  # fmt: skip


def _attention_section(quick: bool, rounds: int, gemm_gflops: float) -> list[dict]:
    size = ATTENTION_QUICK if quick else ATTENTION
    heads = {k: FUSED[k] for k in ("Hq", "Hk", "D")}
    shape = " ".join(f"{k}={v}" for k, v in {**size, **heads}.items())
    return _section(
        "paired_attention", "paired_attention",
        f"paired_attention, CPU, float32, {shape} ({rounds} rounds)",
        lambda: attention_rows(size, heads, rounds, gemm_gflops),
        lambda r: f"  {r['variant']:<10} {r['median_ms']:8.2f} ms  "
                  f"x{r['speedup_vs_reference']:.2f}  "
                  f"{r['fraction_of_gemm_peak']:.2f} of fp32 GEMM",
    )  # fmt: skip


# ------------------------------------------------------------------------ GPU section


def _cuda_time(fn, warmup: int = 3, repeats: int = 20) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return {"median_s": times[len(times) // 2], "p10_s": times[len(times) // 10],
            "p90_s": times[(9 * len(times)) // 10], "repeats": repeats}  # fmt: skip


def _cuda_peak(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def gpu_rows(size: dict) -> list[dict]:
    M, V, D, C = size["M"], size["V"], size["D"], size["C"]
    flops = 2 * M * V * D
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        hidden, weight, choices = _inputs(M, V, D, C, dtype=dtype, device="cuda")
        fns = {"torch": lambda h=hidden, w=weight, c=choices: naive_logp(h, w, c)}
        for backend in ("cuda", "triton"):
            if backend in available_backends("choice_logprobs"):
                fns[backend] = lambda b=backend, h=hidden, w=weight, c=choices: (
                    choice_logprobs(h, w, c, backend=b).logp
                )
        want = fns["torch"]()
        base = None
        for name, fn in fns.items():
            t = _cuda_time(fn)
            base = base or t["median_s"]
            rows.append({
                "device": "cuda", "op": "choice_logprobs", "variant": name, "M": M, "V": V,
                "D": D, "C": C, "dtype": str(dtype).removeprefix("torch."),
                "median_ms": t["median_s"] * 1e3, "p10_ms": t["p10_s"] * 1e3,
                "p90_ms": t["p90_s"] * 1e3, "repeats": t["repeats"],
                "speedup_vs_naive": base / t["median_s"],
                "peak_extra_MiB": _cuda_peak(fn) / 2**20,
                "TFLOPs": flops / t["median_s"] / 1e12,
                "max_abs_diff_vs_naive": float((fn() - want).abs().max()),
            })  # fmt: skip
        del hidden, weight, choices
        torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small size (M=512, V=8192)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5/3)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    harness.add_out_dir(parser)
    args = parser.parse_args(argv)
    harness.use_out_dir(args.out_dir)
    if args.probe:
        print(json.dumps(_probe(json.loads(args.probe))))
        return 0

    size = QUICK if args.quick else FULL
    rounds = args.rounds or (3 if args.quick else 5)
    stamp = harness.machine_stamp()
    roof = harness.roofline(("float32",))
    gemm = roof["gemm_GFLOPs"]["float32"]
    print(f"machine: {stamp['cpu']}, {stamp['cores']} cores, torch {stamp['torch']}, "
          f"{stamp['torch_threads']} threads; {harness.describe_roofline(roof)}")  # fmt: skip
    print(f"choice_logprobs, CPU, M={size['M']} V={size['V']} D={size['D']} C={size['C']} "
          f"float32 ({rounds} rounds)", flush=True)  # fmt: skip

    rows = cpu_rows(size, rounds, gemm, roof["memory_bandwidth"]["read_GBps"])
    for r in rows:
        if "skipped" in r:
            print(f"  {r['variant']:<15} skipped: {r['skipped']}")
            continue
        peak = "n/a" if r["peak_extra_MiB"] is None else f"{r['peak_extra_MiB']:8.1f} MiB"
        print(f"  {r['variant']:<15} {r['median_ms']:9.1f} ms  (p10 {r['p10_ms']:.1f}, "
              f"p90 {r['p90_ms']:.1f})  peak extra {peak}  x{r['speedup_vs_naive']:.2f} speed "
              f"{r['GFLOPs']:.0f} GFLOP/s ({r['fraction_of_gemm_peak']:.2f} of fp32 GEMM, "
              f"{r['fraction_of_read_bw']:.3f} of read bandwidth)", flush=True)  # fmt: skip
    ref = next(r for r in rows if r["variant"] == "reference")
    if ref.get("memory_vs_naive") is not None:
        ok_mem = ref["memory_vs_naive"] <= 0.1
        ok_time = ref["speedup_vs_naive"] >= 1.0
        print(f"  reference / naive: time {1 / ref['speedup_vs_naive']:.2f}x, peak memory "
              f"{ref['memory_vs_naive']:.3f}x -> memory <= 1/10: {'yes' if ok_mem else 'NO'}; "
              f"not slower: {'yes' if ok_time else 'NO'}"
              + (" (the target is for the full size; at this size one tile holds every logit)"
                 if args.quick else ""))  # fmt: skip

    fused = _fused_section(args.quick, rounds, roof["memory_bandwidth"]["read_GBps"])
    fused += _attention_section(args.quick, rounds, gemm)

    if torch.cuda.is_available():
        print(f"GPU: {stamp['cuda_device']}")
        gpu = gpu_rows(size)
        for r in gpu:
            print(f"  {r['dtype']:<9} {r['variant']:<7} {r['median_ms']:8.3f} ms  "
                  f"{r['TFLOPs']:6.1f} TFLOP/s  x{r['speedup_vs_naive']:.2f}  "
                  f"peak extra {r['peak_extra_MiB']:.1f} MiB")  # fmt: skip
        rows += gpu
    else:
        print("GPU: skipped: no GPU")
        rows.append({"device": "cuda", "op": "choice_logprobs", "skipped": "no GPU"})

    name = "kernels_quick" if args.quick else "kernels"
    command = "python benchmarks/bench_kernels.py" + (" --quick" if args.quick else "")
    meta = {**stamp, "gemm_fp32_GFLOPs": gemm, "roofline": roof, "command": command,
            "size": size,
            "memory_method": "VmHWM - VmRSS around one call in a fresh process "
                             "(/proc/self/clear_refs reset)"}  # fmt: skip
    json_path, csv_path = harness.write_rows(name, rows + fused, meta)
    cpu = [r for r in rows if r["device"] == "cpu" and "skipped" not in r]
    labels = [r["variant"] for r in cpu]
    png = harness.bar_chart(
        harness.RESULTS / f"{name}.png", labels,
        {"time / naive": [1 / r["speedup_vs_naive"] for r in cpu],
         "peak extra memory / naive": [r["memory_vs_naive"] or 0.0 for r in cpu]},
        ylabel="ratio to the naive full-logits path", hline=1.0, hline_label="naive",
        title=f"choice_logprobs on CPU, M={size['M']} V={size['V']} D={size['D']} fp32\n"
              f"{stamp['cpu']}, {stamp['torch_threads']} threads",
    )  # fmt: skip
    print()
    print(harness.table([r for r in rows if "skipped" not in r], [
        ("device", "device", "s"), ("variant", "variant", "s"), ("dtype", "dtype", "s"),
        ("median_ms", "median ms", ".1f"), ("speedup_vs_naive", "speed-up", ".2f"),
        ("peak_extra_MiB", "peak extra MiB", ".1f"), ("memory_vs_naive", "memory ratio", ".3f"),
        ("GFLOPs", "GFLOP/s", ".0f"), ("fraction_of_gemm_peak", "of fp32 GEMM", ".2f"),
        ("fraction_of_read_bw", "of read bw", ".3f"),
    ]))  # fmt: skip
    print(f"\nrows: {json_path} and {csv_path}" + (f"\nchart: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
