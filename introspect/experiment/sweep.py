"""A sweep: a grid of coupling runs from a spec (:mod:`introspect.experiment.spec`), each in its
own directory, each resumable on its own.

The sweep directory holds:

- ``sweep.json``: the spec as read, the runs in order, when the sweep started;
- ``endpoints.json``: the endpoints to be tested, written before the first run; a sweep resumed
  with another list of endpoints is refused (they are fixed before any result is seen);
- ``runs/<name>/``: one coupling experiment per grid point (``state.json``, ``report.md``, the
  evaluations), with ``config.json``: its name, the values that vary across the grid, the
  summary fields (task, setting, lr, w_reg, seed, model, label source, steps, pair counts) and
  the full configuration.

A run whose ``state.json`` says it is complete is skipped without loading anything; any other
run is continued with the experiment's own resume (completed stages kept, the interrupted stage
redone from scratch), so a sweep killed and started again loses at most the stage in progress.

The null runs: every run of a single task trains, beside its main condition, the shuffled-label
control of its setting (``shuffled``, or ``m1-rho<τ>-shuffled`` for the first ρ target of the
earlier-checkpoint setting), with the same learning rate, regulariser and seed. These are the
shuffled-label runs the map pools into its null band: a grid with k seeds gives k of them per
cell.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from introspect._io import write_json_atomic
from introspect._progress import format_seconds, say_stderr
from introspect.experiment.spec import RunSpec, SpecError, SweepSpec, config_kwargs, load_spec

__all__ = ["SweepError", "prune_run", "run_config", "run_sweep", "sweep_runs"]

SWEEP_JSON = "sweep.json"
ENDPOINTS_JSON = "endpoints.json"
CONFIG_JSON = "config.json"
RUNS_DIR = "runs"
FORMAT_VERSION = 1


class SweepError(SpecError):
    """A sweep directory that does not fit the spec (changed endpoints, another run in the way)."""


def run_config(spec: SweepSpec, run: RunSpec, out: Path, device: str | None = None):
    """The :class:`~introspect.experiment.config.ExperimentConfig` of one run of the sweep."""
    from introspect.experiment.config import ExperimentConfig

    kw = config_kwargs(run.config)
    if device is not None:
        kw["device"] = device
    return ExperimentConfig.from_preset(spec.preset, out=str(out / RUNS_DIR / run.name), **kw)


def _config_doc(run: RunSpec, cfg) -> dict[str, Any]:
    return {
        "name": run.name,
        "values": run.values,
        "task": cfg.tasks[0],
        "setting": cfg.setting,
        "lr": cfg.lr,
        "w_reg": cfg.w_reg,
        "seed": cfg.seed,
        "model": cfg.model,
        "label_source": cfg.labels,
        "objective": cfg.objective_of(cfg.tasks[0]),
        "steps": cfg.train_steps,
        "n_train": cfg.n_train,
        "n_held": cfg.n_held,
        "config": cfg.to_json(),
    }


PRUNE_BYTES = 16 << 20


def prune_run(rdir: Path) -> int:
    """Deletes the weights a complete run no longer needs (model and optimizer checkpoints, the
    starting weights, hidden-state shards: every ``.safetensors`` file of at least 16 MiB; the
    probes' weights are far smaller and stay) and returns the bytes freed. The map reads only
    the runs' JSON."""
    freed = 0
    for f in rdir.rglob("*.safetensors"):
        size = f.stat().st_size
        if size >= PRUNE_BYTES:
            f.unlink()
            freed += size
    return freed


def _is_complete(rdir: Path) -> bool:
    try:
        return bool(json.loads((rdir / "state.json").read_text(encoding="utf-8")).get("complete"))
    except (OSError, ValueError):
        return False


def _start(spec: SweepSpec, out: Path, resume: bool) -> None:
    """Writes (or checks, on resume) ``sweep.json`` and the declared endpoints."""
    from introspect.experiment.coupling import _utc_now

    ends = [e.to_json() for e in spec.endpoints]
    path = out / ENDPOINTS_JSON
    if (out / SWEEP_JSON).is_file():
        if not resume:
            raise SweepError(f"{out} already holds a sweep; pass --resume to continue it")
        old = json.loads(path.read_text(encoding="utf-8"))["endpoints"]
        if old != ends:
            raise SweepError(
                f"{path}: the spec's endpoints differ from those declared when the sweep "
                f"started ({len(old)} declared, {len(ends)} now); endpoints are fixed before "
                "any run: start a new sweep to test others"
            )
        return
    # (endpoints.json alone: a start interrupted before sweep.json was written)
    if out.exists() and any(p.name != ENDPOINTS_JSON for p in out.iterdir()):
        raise SweepError(f"{out} exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    now = _utc_now()
    write_json_atomic(path, {"declared_utc": now, "endpoints": ends})
    doc = {
        "format_version": FORMAT_VERSION,
        "started_utc": now,
        "spec_file": spec.source,
        "spec": spec.to_json(),
        "runs": [r.name for r in spec.runs()],
    }
    write_json_atomic(out / SWEEP_JSON, doc)


def _write_config(rdir: Path, doc: dict[str, Any]) -> None:
    path = rdir / CONFIG_JSON
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        a, b = dict(old["config"]), dict(doc["config"])
        a.pop("device", None), b.pop("device", None)
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise SweepError(
                f"{path}: this run was started with other settings ({', '.join(diff)})"
            )
    rdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, doc)


class _Progress:
    """Prefixes the experiment's lines with the run (k/N) and adds the sweep's ETA to each
    stage's start line: the run's own ETA (the experiment's, from its stage times) plus, for
    each run still to do, the mean time of the runs finished here (or, before any, this run's
    elapsed time plus its ETA)."""

    _STAGE = re.compile(r"^\[\d+/\d+\] \S+: start \(.*ETA (?:(\d+(?:\.\d+)?) (s|min)|unknown)\)")

    def __init__(self, n_todo: int, say: Callable[[str], None]):
        self.say, self.n_todo = say, n_todo
        self.run_times: list[float] = []
        self.label, self.t_run, self.run_left = "", time.perf_counter(), None

    def begin(self, label: str) -> None:
        self.label, self.t_run, self.run_left = label, time.perf_counter(), None

    def end(self) -> None:
        self.run_times.append(time.perf_counter() - self.t_run)

    def eta(self) -> str:
        left = self.n_todo - len(self.run_times) - 1  # runs after this one
        elapsed = time.perf_counter() - self.t_run
        if self.run_times:
            per = sum(self.run_times) / len(self.run_times)
            here = self.run_left if self.run_left is not None else max(per - elapsed, 0.0)
        elif self.run_left is not None:
            per, here = elapsed + self.run_left, self.run_left
        else:
            return "unknown"
        return format_seconds(here + per * max(left, 0))

    def __call__(self, msg: str) -> None:
        m = self._STAGE.match(msg)
        if m:
            if m.group(1) is not None:
                self.run_left = float(m.group(1)) * (60.0 if m.group(2) == "min" else 1.0)
            msg = f"{msg}; sweep ETA {self.eta()}"
        self.say(f"[{self.label}] {msg}")


def sweep_runs(spec: SweepSpec, out: str | Path) -> list[tuple[RunSpec, Path, bool]]:
    """``(run, its directory, complete?)`` of every run of the spec under ``out``."""
    out = Path(out)
    dirs = [(r, out / RUNS_DIR / r.name) for r in spec.runs()]
    return [(r, d, _is_complete(d)) for r, d in dirs]


def run_sweep(
    spec: SweepSpec | str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    device: str | None = None,
    model: Any = None,
    tokenizer: Any = None,
    keep_checkpoints: bool = False,
    say: Callable[[str], None] = say_stderr,
) -> dict[str, Any]:
    """Runs (or continues, with ``resume``) every run of the sweep ``spec`` (a
    :class:`SweepSpec` or the path of its file) into ``out``; returns ``{"runs": [{name,
    path, status, seconds}], "complete": bool}``. Complete runs are skipped; the others continue
    from their last completed stage. ``model``/``tokenizer``: the model as an object in memory
    (every run of the grid then studies it; the spec's ``model`` is the name recorded).
    Unless ``keep_checkpoints``, a run's model and optimizer checkpoints are deleted once it is
    complete (:func:`prune_run`; a run of the quick preset holds several GB of them).

    Example::

        from introspect.experiment.sweep import run_sweep
        run_sweep("docs/results/coupling-map/spec.toml", "runs/map", resume=True)
    """
    from introspect.experiment.coupling import run_coupling

    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    out = Path(out)
    _start(spec, out, resume)
    plan = sweep_runs(spec, out)
    n = len(plan)
    todo = sum(1 for *_, done in plan if not done)
    progress = _Progress(todo, say)
    say(f"sweep {spec.name}: {n} runs, {n - todo} complete, {todo} to run; out {out}")
    results = []
    for k, (run, rdir, done) in enumerate(plan, 1):
        if done:
            if not keep_checkpoints:
                prune_run(rdir)  # (a sweep killed between a run's end and its pruning)
            say(f"[sweep {k}/{n}] {run.name}: complete, skipped")
            results.append({"name": run.name, "path": str(rdir), "status": "complete"})
            continue
        cfg = run_config(spec, run, out, device)
        _write_config(rdir, _config_doc(run, cfg))
        progress.begin(f"sweep {k}/{n} {run.name}")
        say(f"[sweep {k}/{n}] {run.name}: start (sweep ETA {progress.eta()})")
        t0 = time.perf_counter()
        run_coupling(cfg, resume=True, model=model, tokenizer=tokenizer, say=progress)
        progress.end()
        seconds = time.perf_counter() - t0
        freed = 0 if keep_checkpoints else prune_run(rdir)
        pruned = f"; checkpoints deleted ({freed / 2**30:.1f} GiB)" if freed else ""
        say(f"[sweep {k}/{n}] {run.name}: done in {format_seconds(seconds)}{pruned}")
        results.append({"name": run.name, "path": str(rdir), "status": "ran", "seconds": seconds})
    return {"runs": results, "complete": True}
