"""Copies the curated results of benchmark and experiment runs into the tracked places.

    python benchmarks/publish.py [--bench build/bench] [--coupling build/full/coupling] [--dry-run]

Benchmarks write under build/bench/ and ``make experiment-full`` under build/full/coupling/, both
untracked. This copies what the docs cite: each benchmark's result JSON (not its CSV copy) and at
most one figure per benchmark into benchmarks/results/; ``introspect eval`` outputs (metrics,
behaviour, the evaluation's settings, and the predictions gzip-compressed, so that the metrics
can be recomputed from them); and from a finished coupling run its state, results, report, one
summary figure, each training's loss log and verbal settings, and each evaluation's metrics,
behaviour and compressed predictions into docs/results/coupling-full/ (the report's links to
figures left behind are removed). Model weights, checkpoints, label runs and per-evaluation
figures stay behind. A missing source is skipped.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "benchmarks" / "results"
COUPLING_DEST = ROOT / "docs" / "results" / "coupling-full"

# Result name -> the figures kept beside its JSON (one at most).
BENCH = {
    "delta_probe": ["delta_probe.png"],
    "delta_probe_quick": [],
    "kernels": ["kernels.png"],
    "kernels_quick": [],
    "extract": [],
    "extract_bench": [],
    # bench_extract.py on sycophancy with its ablations and the model-shaped GEMM bound
    "extract_bound": [],
    "extract_profile": [],  # bench_extract.py --profile
    # bench_whole.py: whole processes against their baselines
    "whole_extract": [],
    "whole_train": [],
    "whole_preset_full": [],
    "whole_preset_quick": [],
    "extract_memory": [],
    "peers_bench": [],
    "scaling": ["scaling_n.png"],
    "scaling_quick": [],
    # `introspect measure --json build/bench/smollm2_sycophancy_delta.json`
    "smollm2_sycophancy_delta": [],
}
# Other files of build/bench/ kept as they are: the suite summary `make bench` writes.
BENCH_FILES = ["bench_summary.md"]
# `introspect eval --out build/bench/<dir>` outputs.
EVAL_DIRS = ["probe_control/real", "probe_control/shuffled", "probe_control/concurrent"]
EVAL_FILES = ["eval.json", "metrics.jsonl", "behaviour.jsonl"]
PREDICTIONS = "predictions.jsonl"
TRAIN_FILES = ["train.json", "verbal.json"]
RUN_FILES = ["state.json", "results.json", "report.md", "figures/summary.png"]


def gzip_copy(src: Path, dst: Path) -> None:
    """Writes ``src`` gzip-compressed to ``dst``, byte-identical for identical input (no name
    or time in the header), atomically."""
    tmp = dst.with_name(dst.name + ".tmp")
    with src.open("rb") as fin, tmp.open("wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
            shutil.copyfileobj(fin, f)
    os.replace(tmp, dst)


def _copy(src: Path, dst: Path, done: list[str], dry_run: bool) -> None:
    if not src.is_file():
        return
    if not dry_run:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.name == PREDICTIONS:
            gzip_copy(src, dst)
        else:
            tmp = dst.with_name(dst.name + ".tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
    done.append(f"{src} -> {dst}")


def _eval_dir(src: Path, dst: Path, done: list[str], dry_run: bool) -> None:
    for name in EVAL_FILES:
        _copy(src / name, dst / name, done, dry_run)
    _copy(src / PREDICTIONS, dst / f"{PREDICTIONS}.gz", done, dry_run)


def publish_bench(bench: Path, dest: Path = PUBLISHED, *, dry_run: bool = False) -> list[str]:
    """Copies the curated benchmark results found in ``bench`` into ``dest``; returns what it
    copied (``src -> dst`` lines)."""
    done: list[str] = []
    for name, figures in BENCH.items():
        if (bench / f"{name}.json").is_file():
            for file in [f"{name}.json", *figures]:
                _copy(bench / file, dest / file, done, dry_run)
    for file in BENCH_FILES:
        _copy(bench / file, dest / file, done, dry_run)
    for d in EVAL_DIRS:
        if (bench / d / "metrics.jsonl").is_file():
            _eval_dir(bench / d, dest / d, done, dry_run)
    return done


IMAGE_LINE = re.compile(r"^!\[[^\]]*\]\((?P<target>[^)\s]+)\)\n(?:\n)?", re.M)


def drop_missing_images(report: Path) -> None:
    """Removes from ``report`` the image lines whose figure is not beside it (the figures that
    were not published), with the blank line after each."""
    text = report.read_text(encoding="utf-8")
    kept = IMAGE_LINE.sub(lambda m: m[0] if (report.parent / m["target"]).is_file() else "", text)
    if kept != text:
        report.write_text(kept, encoding="utf-8")


def publish_coupling(run: Path, dest: Path = COUPLING_DEST, *, dry_run: bool = False) -> list[str]:
    """Replaces ``dest`` with the curated files of the finished coupling run ``run``."""
    state = json.loads((run / "state.json").read_text(encoding="utf-8"))
    if not state.get("complete"):
        raise SystemExit(f"{run}: the run has not finished (state.json is not complete)")
    stage = dest.with_name(dest.name + ".tmp")
    if not dry_run:
        shutil.rmtree(stage, ignore_errors=True)
    done: list[str] = []
    for file in RUN_FILES:
        _copy(run / file, stage / file, done, dry_run)
    for name in state["completed"]:
        kind = name.rpartition("/")[2]
        if kind.startswith("train-"):
            for file in TRAIN_FILES:
                _copy(run / name / file, stage / name / file, done, dry_run)
        elif kind.startswith("eval-"):
            _eval_dir(run / name, stage / name, done, dry_run)
    if not dry_run:
        if (stage / "report.md").is_file():
            drop_missing_images(stage / "report.md")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(stage, dest)
    return [line.replace(str(stage), str(dest)) for line in done]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--bench",
        type=Path,
        default=ROOT / "build" / "bench",
        help="where the benchmarks wrote (default: build/bench/)",
    )
    ap.add_argument(
        "--coupling",
        type=Path,
        default=ROOT / "build" / "full" / "coupling",
        help="a finished `introspect experiment coupling` run (default: build/full/coupling/, "
        "what `make experiment-full` writes)",
    )
    ap.add_argument("--dry-run", action="store_true", help="only list what would be copied")
    args = ap.parse_args(argv)
    done = publish_bench(args.bench, dry_run=args.dry_run)
    if (args.coupling / "state.json").is_file():
        done += publish_coupling(args.coupling, dry_run=args.dry_run)
    else:
        print(f"{args.coupling}: no coupling run here; docs/results/coupling-full/ is unchanged")
    for line in done:
        print(("would copy " if args.dry_run else "") + line)
    print(f"{len(done)} file(s) {'to publish' if args.dry_run else 'published'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
