"""``introspect bench``: the benchmark suite of a source checkout (``benchmarks/``), the same
runs as ``make bench``, each script in its own process so that every figure is a whole-process
measurement, with the results under ``--out-dir`` (``build/bench`` by default; nothing tracked
is written)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from introspect._args import EXIT_CODES

# (name of its result, script, arguments): sized so that the suite finishes in about 20
# minutes on a 2-core CPU.
SUITE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("delta_probe_quick", "bench_delta_probe.py", ("--quick",)),
    ("kernels_quick", "bench_kernels.py", ("--quick",)),
    (
        "extract_bench",
        "bench_extract.py",
        ("--tasks", "multi-feature", "--n", "252", "--name", "extract_bench"),
    ),
    ("peers_bench", "bench_peers.py", ("--contexts", "42", "--name", "peers_bench")),
    ("scaling_quick", "bench_scaling.py", ("--quick",)),
)


def find_suite(given: str | None) -> Path:
    """The folder of the benchmark scripts: ``given``, else ``./benchmarks``, else the
    ``benchmarks/`` of the source checkout this package runs from."""
    from introspect.errors import UsageError

    candidates = (
        [Path(given)]
        if given
        else [Path("benchmarks"), Path(__file__).resolve().parents[1] / "benchmarks"]
    )
    for folder in candidates:
        if (folder / "harness.py").is_file():
            return folder
    where = given or "./benchmarks"
    raise UsageError(
        f"no benchmark suite at {where}: the scripts ship with the source, not the wheel; run "
        "from a checkout of the repository or pass --suite-dir"
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from introspect.errors import IntrospectError, UsageError

    suite = find_suite(args.suite_dir)
    chosen = [s for s in SUITE if not args.only or s[0] in args.only]
    unknown = set(args.only or ()) - {s[0] for s in SUITE}
    if unknown:
        raise UsageError(
            f"unknown benchmark {sorted(unknown)}; choose from {', '.join(s[0] for s in SUITE)}"
        )
    if args.list:
        for name, script, extra in SUITE:
            print(f"{name:<18} {script} {' '.join(extra)}")
        return 0
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for k, (name, script, extra) in enumerate(chosen, start=1):
        cmd = [sys.executable, str(suite / script), *extra, "--out-dir", str(out)]
        print(f"[{k}/{len(chosen)}] {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        if subprocess.run(cmd, env=os.environ.copy()).returncode != 0:
            raise IntrospectError(
                f"benchmark {name} failed ({script}); the results so far are in {out}"
            )
    elapsed = int(time.perf_counter() - t0)
    summary = [
        sys.executable,
        str(suite / "summary.py"),
        *(s[0] for s in chosen),
        "--results",
        str(out),
        "--elapsed",
        str(elapsed),
        "--out",
        str(out / "bench_summary.md"),
    ]
    subprocess.run(summary, check=True)
    print(f"benchmarks done in {elapsed} s; summary: {out / 'bench_summary.md'}")
    return 0


def add_bench_parser(sub) -> None:
    b = sub.add_parser(
        "bench",
        help="run the benchmark suite (a source checkout's benchmarks/), results in build/bench",
        description=(
            "Run the benchmark suite: the fused explainer step, the kernels, the extraction "
            "engine against the naive two-pass baseline, the peer tools and the scaling "
            "curves, each script in its own process, every speed-up reported as a same-run "
            "ratio against its baseline. Results (JSON, figures and bench_summary.md) go to "
            "--out-dir; `make publish-results` copies the curated ones into the repository. "
            "The peer tools need `pip install .[bench]`."
        ),
        epilog=EXIT_CODES,
    )
    b.add_argument("--out-dir", default="build/bench", help="where results go (build/bench)")
    b.add_argument("--suite-dir", help="the benchmark scripts (default: ./benchmarks)")
    b.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this benchmark (repeatable; see --list)",
    )
    b.add_argument("--list", action="store_true", help="list the benchmarks and their arguments")
    b.set_defaults(func=_cmd_bench)
