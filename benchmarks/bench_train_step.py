"""Benchmark: the prefix-shared training step against separate forwards, same run.

One concurrent training step (by default the setting of ``introspect train --concurrent
--objective anti-sycophancy --verbal --w-reg 1 --batch-size 8``) on generated sycophancy pairs:
the loss and its backward pass computed from one packed forward of the minibatch's tries
(``packed_step``, the default) and from the separate forwards it replaces
(``--no-packed-step``). Both run on the same trainer, the same minibatches and the same weights
(no optimizer update between repeats), alternating round by round so that the load of a shared
machine falls on both alike; the optimizer's update, the same for both, is timed on its own.
It also times the run's setup both ways (the starting model's pass over the training pairs and
the verbal explainer's answers), reports the positions each variant computes, the achieved
GFLOP/s (6 × parameters × positions per step) against the measured fp32 GEMM rate, and the
machine's load average before and after.

    python benchmarks/bench_train_step.py --model smollm2-135m --steps 5
    python benchmarks/bench_train_step.py --model tiny-dir --pairs 16 --steps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness


def _load(model: str):
    from introspect.models import load_model

    lm = load_model(model, dtype="float32")
    return lm.model, lm.tokenizer


def _inputs(model, tok, n: int, seed: int, layer: int, root: Path) -> tuple[str, str]:
    """A pair file of ``n`` generated sycophancy pairs and an extract run of their labels."""
    import introspect
    from introspect.data import write_pairs
    from introspect.data.tasks import generate

    pairs = root / "train.jsonl"
    write_pairs(pairs, generate("sycophancy", n, seed=seed))
    introspect.extract(model, tok, pairs, root / "m0", layers=[layer], say=lambda _m: None)
    return str(pairs), str(root / "m0")


def _trainer(args, model, tok, pairs: str, labels: str, out: Path, packed: bool):
    from introspect.training import TrainConfig
    from introspect.training.trainer import Trainer

    cfg = TrainConfig(
        model=args.model, pairs=pairs, labels=labels, out=str(out), layer=args.layer,
        concurrent=True, objective="anti-sycophancy", verbal=args.verbal, w_reg=args.w_reg,
        batch_size=args.batch_size, steps=args.steps, packed_step=packed, seed=args.seed,
    )  # fmt: skip
    trainer = Trainer(cfg, model=model, tokenizer=tok, say=lambda _m: None)
    t0 = time.perf_counter()
    trainer.setup()
    return trainer, time.perf_counter() - t0


def _positions(trainer, rows, packed: bool) -> int:
    """Positions one step computes: the packed tries, or the separate forwards' padded rows."""
    if packed:
        return sum(len(trainer._step_item(int(i)).item.trie) for i in rows)
    cfg = trainer.cfg
    ex = [trainer.enc_x[i] for i in rows]
    em = [trainer.enc_mod[i] for i in rows]

    def padded(seqs):
        return len(seqs) * max(seqs)

    targets = [trainer.targets[i] for i in rows]
    n = padded([len(e.prompt_ids) + len(e.choice_ids[t]) for e, t in zip(ex, targets, strict=True)])
    if cfg.difference_probe:
        n += padded([len(e.prompt_ids) + len(e.choice_ids[0]) for e in em])
    if cfg.w_reg > 0:
        for side in (em, ex):
            seqs = []
            for e in side:
                if all(len(c) == 1 for c in e.choice_ids):
                    seqs.append(len(e.prompt_ids))
                else:
                    seqs += [len(e.prompt_ids) + len(c) for c in e.choice_ids]
            n += padded(seqs)
    if trainer.verbal is not None:
        n += padded([len(a) + len(b) for a, b in (trainer.verbal_items[i] for i in rows)])
    return n


def _step_fn(trainer, rows, packed: bool):
    def run():
        trainer.packed = packed
        trainer.opt.zero_grad(set_to_none=True)
        trainer._losses(rows)["loss"].backward()

    return run


def _rounds(fns: dict, rounds: int) -> dict[str, dict]:
    """Each function timed once per round, the variants alternating, after one warm-up each."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(harness.measure(fn, warmup=0, repeats=1)["median_s"])
    out = {}
    for k, ts in times.items():
        q = statistics.quantiles(ts, n=10) if len(ts) > 1 else [ts[0]] * 9
        out[k] = {"median_s": statistics.median(ts), "p10_s": q[0], "p90_s": q[-1]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="alias or model directory")
    parser.add_argument("--pairs", type=int, default=16, help="generated training pairs")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds of each variant")
    parser.add_argument("--layer", type=int, default=15, help="probe layer")
    parser.add_argument("--w-reg", type=float, default=1.0, help="regulariser weight")
    parser.add_argument("--no-verbal", dest="verbal", action="store_false")
    parser.add_argument("--no-setup", dest="setup", action="store_false",
                        help="skip timing the setup (the starting pass) both ways")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    harness.add_out_dir(parser)
    args = parser.parse_args(argv)
    harness.use_out_dir(args.out_dir)
    import torch

    load_before = os.getloadavg()
    stamp = harness.machine_stamp()
    roof = harness.roofline(("float32",))
    peak = roof["gemm_GFLOPs"]["float32"]
    print(f"machine: {stamp['cpu']}, {stamp['cores']} cores, {stamp['torch_threads']} threads; "
          f"load average {load_before[0]:.2f}; {harness.describe_roofline(roof)}")  # fmt: skip
    model, tok = _load(args.model)
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as tmp:
        root = Path(tmp)
        pairs, labels = _inputs(model, tok, args.pairs, args.seed, args.layer, root)
        setup = {}
        trainer, setup["packed"] = _trainer(args, model, tok, pairs, labels, root / "p", True)
        if not trainer.packed:
            print(f"the packed step is off for this model: {trainer.packed_off}")
            return 1
        if args.setup:
            _, setup["separate"] = _trainer(args, model, tok, pairs, labels, root / "s", False)
        from introspect.training.trainer import batch_rows

        rows = batch_rows(len(trainer.pairs), args.batch_size, 1, args.seed)
        steps = _rounds(
            {v: _step_fn(trainer, rows, v == "packed") for v in ("separate", "packed")},
            args.steps,
        )
        opt = harness.measure(trainer.opt.step, warmup=0, repeats=max(1, args.steps // 2))
        positions = {v: _positions(trainer, rows, v == "packed") for v in steps}
    torch.set_grad_enabled(True)
    load_after = os.getloadavg()
    rows_out = []
    for v in ("separate", "packed"):
        m = steps[v]
        gflops = 6 * n_params * positions[v] / m["median_s"] / 1e9
        rows_out.append({
            "variant": v, "model": args.model, "batch_size": args.batch_size,
            "step_ms": m["median_s"] * 1e3, "step_p10_ms": m["p10_s"] * 1e3,
            "step_p90_ms": m["p90_s"] * 1e3, "optimizer_ms": opt["median_s"] * 1e3,
            "positions": positions[v], "GFLOPs": gflops, "fraction_of_gemm_peak": gflops / peak,
            "setup_s": setup.get(v),
            "speedup": steps["separate"]["median_s"] / m["median_s"],
            "speedup_with_optimizer": (steps["separate"]["median_s"] + opt["median_s"])
            / (m["median_s"] + opt["median_s"]),
        })  # fmt: skip
    meta = {
        **stamp, "roofline": roof, "load_average_before": load_before,
        "load_average_after": load_after, "pairs": args.pairs, "rounds": args.steps,
        "verbal": args.verbal, "w_reg": args.w_reg, "layer": args.layer,
        "command": "python benchmarks/bench_train_step.py " + " ".join(argv or sys.argv[1:]),
    }  # fmt: skip
    json_path, _ = harness.write_rows("train_step", rows_out, meta)
    png = harness.bar_chart(
        harness.RESULTS / "train_step.png", ["step (fwd + bwd)"],
        {r["variant"]: [r["step_ms"]] for r in rows_out}, ylabel="ms (median)",
        title=f"training step, {args.model}, {args.batch_size} pairs — {stamp['cpu']}",
    )  # fmt: skip
    print(harness.table(rows_out, [
        ("variant", "variant", "s"), ("step_ms", "step ms", ".0f"),
        ("step_p10_ms", "p10", ".0f"), ("step_p90_ms", "p90", ".0f"),
        ("positions", "positions", "d"), ("fraction_of_gemm_peak", "of GEMM peak", ".2f"),
        ("speedup", "speed-up", ".2f"), ("speedup_with_optimizer", "with optimizer", ".2f"),
        ("setup_s", "setup s", ".1f"),
    ]))  # fmt: skip
    print(
        f"optimizer step {opt['median_s'] * 1e3:.0f} ms; load average {load_before[0]:.2f} "
        f"before, {load_after[0]:.2f} after (shared cores: ratios, not absolute times)"
    )
    print(f"\nrows: {json_path}" + (f"\nchart: {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
