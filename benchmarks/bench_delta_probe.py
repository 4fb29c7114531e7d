"""Benchmark: the fused delta_probe training step against the PyTorch reference, same run.

A training step is forward + backward of the MSE loss with respect to the probe weights and
bias, the hidden states frozen (the explainer-training case). The reference is the plain
PyTorch composition (z = h_mod - h_x; z @ wᵀ + b; MSE; autograd). For each size it reports the
median time of both, their ratio, and the fused step's effective bandwidth (bytes of hidden
states read once) as a fraction of the measured memory bandwidth of this machine.

    python benchmarks/bench_delta_probe.py           # the grid: N 1e3..1e6, D 576/4096, P 1..32

Small P is bound by memory (reported as a fraction of measured read bandwidth); large P by
arithmetic (reported as a fraction of the measured fp32 GEMM rate).
    python benchmarks/bench_delta_probe.py --quick   # the headline size only (N=65536, D=576, P=4)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

from introspect.ops import available_backends, delta_probe

HEADLINE = (65536, 576, 4)
INPUT_BUDGET_BYTES = 6 * 2**30  # skip sizes whose two hidden-state arrays exceed this


def _sizes(quick: bool) -> list[tuple[int, int, int, torch.dtype]]:
    if quick:
        return [(*HEADLINE, torch.float32)]
    out = []
    for D in (576, 4096):
        for N in (1_000, 10_000, 65_536, 262_144, 1_000_000):
            for P in (1, 4, 32):
                if 2 * N * D * 4 <= INPUT_BUDGET_BYTES:
                    out.append((N, D, P, torch.float32))
    out.append((*HEADLINE, torch.bfloat16))
    return out


def _step(hx, hm, w, b, t, backend):
    def run():
        w.grad = b.grad = None
        out = delta_probe(hx, w, b, t, h_mod=hm, backend=backend)
        out.loss.backward()

    return run


def _repeats(nbytes: int, quick: bool) -> int:
    if nbytes > 2**30:
        return 3
    return 5 if quick else 7


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the headline size")
    parser.add_argument("--backend", default="cpp", help="backend to compare with the reference")
    harness.add_out_dir(parser)
    args = parser.parse_args(argv)
    harness.use_out_dir(args.out_dir)

    if args.backend not in available_backends("delta_probe"):
        print(
            f"backend {args.backend!r} is not available here; nothing to compare", file=sys.stderr
        )
        return 1
    stamp = harness.machine_stamp()
    roof = harness.roofline()
    bw = roof["memory_bandwidth"]
    peak = roof["gemm_GFLOPs"]["float32"]
    print(f"machine: {stamp['cpu']}, {stamp['cores']} cores, torch {stamp['torch']}, "
          f"{stamp['torch_threads']} threads")  # fmt: skip
    print(f"measured memory bandwidth: read {bw['read_GBps']:.1f} GB/s, "
          f"copy {bw['copy_GBps']:.1f} GB/s; {harness.describe_roofline(roof)}")  # fmt: skip

    rows = []
    for N, D, P, dtype in _sizes(args.quick):
        g = torch.Generator().manual_seed(0)
        hx = torch.randn(N, D, generator=g).to(dtype)
        hm = torch.randn(N, D, generator=g).to(dtype)
        w = (torch.randn(P, D, generator=g) / D**0.5).requires_grad_()
        b = torch.zeros(P, requires_grad=True)
        t = torch.randn(N, P, generator=g)
        nbytes = 2 * N * D * hx.element_size()
        reps = _repeats(nbytes, args.quick)
        ref = harness.measure(_step(hx, hm, w, b, t, "reference"), warmup=1, repeats=reps)
        fused = harness.measure(_step(hx, hm, w, b, t, args.backend), warmup=1, repeats=reps)
        gbps = nbytes / fused["median_s"] / 1e9
        # Useful work of a step: the N x D x P products of the prediction and of the gradient.
        gflops = 2 * 2 * N * D * P / fused["median_s"] / 1e9
        dname = str(dtype).removeprefix("torch.")
        row = {
            "N": N, "D": D, "P": P, "dtype": str(dtype).removeprefix("torch."),
            "mode": "difference", "backend": args.backend,
            "reference_ms": ref["median_s"] * 1e3, "reference_p10_ms": ref["p10_s"] * 1e3,
            "reference_p90_ms": ref["p90_s"] * 1e3,
            "fused_ms": fused["median_s"] * 1e3, "fused_p10_ms": fused["p10_s"] * 1e3,
            "fused_p90_ms": fused["p90_s"] * 1e3,
            "speedup": ref["median_s"] / fused["median_s"],
            "fused_GBps": gbps, "fraction_of_read_bw": gbps / bw["read_GBps"],
            "fused_GFLOPs": gflops,
            # Against the GEMM ceiling of the hidden states' dtype.
            "fraction_of_gemm_peak": gflops / roof["gemm_GFLOPs"][dname],
        }  # fmt: skip
        rows.append(row)
        print(f"N={N:>8} D={D:>5} P={P:>3} {row['dtype']:<8} "
              f"reference {row['reference_ms']:9.2f} ms  {args.backend} {row['fused_ms']:8.2f} ms"
              f"  x{row['speedup']:5.2f}  {gbps:5.1f} GB/s "
              f"({row['fraction_of_read_bw']:.2f} of read bw)", flush=True)  # fmt: skip
        del hx, hm, t

    name = "delta_probe_quick" if args.quick else "delta_probe"
    command = "python benchmarks/bench_delta_probe.py" + (" --quick" if args.quick else "")
    meta = {**stamp, "memory_bandwidth": bw, "gemm_fp32_GFLOPs": peak, "roofline": roof,
            "command": command}  # fmt: skip
    json_path, _ = harness.write_rows(name, rows, meta)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"D={r['D']} P={r['P']} {r['dtype']}", []).append(r)

    def series(key):
        return {g: ([r["N"] for r in rs], [r[key] for r in rs]) for g, rs in groups.items()}

    png = harness.line_panels(
        harness.RESULTS / f"{name}.png",
        [(f"speed-up of {args.backend} over reference (x)", series("speedup")),
         ("fraction of measured read bandwidth", series("fraction_of_read_bw")),
         ("fraction of measured fp32 GEMM rate", series("fraction_of_gemm_peak"))],
        xlabel="N (rows)", hlines={0: 1.0},
        title=f"delta_probe training step (difference mode, fwd+bwd) — {stamp['cpu']}, "
              f"{stamp['torch_threads']} threads",
    )  # fmt: skip
    print()
    print(harness.table(rows, [
        ("N", "N", "d"), ("D", "D", "d"), ("P", "P", "d"), ("dtype", "dtype", "s"),
        ("reference_ms", "reference ms", ".2f"), ("fused_ms", f"{args.backend} ms", ".2f"),
        ("speedup", "speed-up", ".2f"), ("fused_GBps", "GB/s", ".1f"),
        ("fraction_of_read_bw", "of read bw", ".2f"), ("fused_GFLOPs", "GFLOP/s", ".0f"),
        ("fraction_of_gemm_peak", "of GEMM peak", ".2f"),
    ]))  # fmt: skip
    print(f"\nrows: {json_path}" + (f"\nchart: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
