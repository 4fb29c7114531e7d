"""Copies the small files of a sweep's complete runs into a results folder that can be committed
and mapped again (``introspect experiment map DEST``) without the runs' weights.

Kept per run: ``config.json``, ``state.json``, ``report.md``, ``verdicts.json`` and, per
evaluation, ``metrics.jsonl``, ``behaviour.jsonl`` and the predictions, gzip-compressed
(``predictions.jsonl.gz``; :func:`introspect.evaluation.read_jsonl` reads either). Also the
sweep's ``sweep.json`` and ``endpoints.json``. Runs that are not complete are left out and
listed; a published run is replaced, so publishing again after more runs finished adds them.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from introspect._progress import say_stderr
from introspect.errors import UsageError

__all__ = ["publish_sweep"]

RUN_FILES = ("config.json", "state.json", "report.md", "verdicts.json")
EVAL_FILES = ("metrics.jsonl", "behaviour.jsonl")


def _copy_run(rdir: Path, dest: Path) -> int:
    """The run's small files into ``dest`` (replaced); returns the bytes written."""
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in RUN_FILES:
        if (rdir / name).is_file():
            shutil.copy2(rdir / name, tmp / name)
    for edir in sorted(rdir.glob("*/eval-*")):
        out = tmp / edir.relative_to(rdir)
        out.mkdir(parents=True)
        for name in EVAL_FILES:
            if (edir / name).is_file():
                shutil.copy2(edir / name, out / name)
        preds = edir / "predictions.jsonl"
        if preds.is_file():
            with open(preds, "rb") as src, gzip.GzipFile(out / "predictions.jsonl.gz", "wb",
                                                         mtime=0) as dst:  # fmt: skip
                shutil.copyfileobj(src, dst)
        elif (edir / "predictions.jsonl.gz").is_file():
            shutil.copy2(edir / "predictions.jsonl.gz", out / "predictions.jsonl.gz")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())


def publish_sweep(
    sweep: str | Path, dest: str | Path, *, say: Callable[[str], None] = say_stderr
) -> dict[str, Any]:
    """Copies the complete runs of ``sweep`` (a sweep directory) into ``dest``; returns
    ``{"published": [names], "left_out": [names], "bytes": total}``."""
    from introspect.experiment.sweep import ENDPOINTS_JSON, RUNS_DIR, SWEEP_JSON, _is_complete

    sweep, dest = Path(sweep), Path(dest)
    if not (sweep / SWEEP_JSON).is_file():
        raise UsageError(f"{sweep}: not a sweep directory (no {SWEEP_JSON})")
    dest.mkdir(parents=True, exist_ok=True)
    for name in (SWEEP_JSON, ENDPOINTS_JSON):
        shutil.copy2(sweep / name, dest / name)
    published, left_out, total = [], [], 0
    for rdir in sorted((sweep / RUNS_DIR).iterdir()) if (sweep / RUNS_DIR).is_dir() else []:
        if not _is_complete(rdir):
            left_out.append(rdir.name)
            continue
        total += _copy_run(rdir, dest / RUNS_DIR / rdir.name)
        published.append(rdir.name)
    say(f"published {len(published)} complete runs of {sweep} into {dest} "
        f"({total / 1e6:.2f} MB); not complete: {len(left_out)}")  # fmt: skip
    return {"published": published, "left_out": left_out, "bytes": total}
