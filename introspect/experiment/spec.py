"""The spec of a coupling sweep: a small TOML or JSON file naming a grid of coupling runs and
the endpoints to be tested on them, declared before any run (pure data; no torch).

::

    [sweep]
    model = "smollm2-135m"
    preset = "quick"            # sizes of every run, then [fixed] overrides them

    [fixed]                     # ExperimentConfig fields shared by every run
    n_held = 64
    noise_levels = []

    [grid]                      # one run per combination of these lists
    task = ["sycophancy"]
    setting = ["explain-only", "concurrent"]
    lr = [3e-5, 1e-4]
    w_reg = [0.0, 1.0]
    seed = [0, 1, 2]
    # A linked axis (a name that is no setting, its values tables): the settings of each table
    # vary together, e.g. shift strengths that are not a product of lr and w_reg:
    # shift = [{lr = 3e-6, w_reg = 0.0}, {lr = 3e-5, w_reg = 10.0}]

    [[endpoints]]
    name = "explain-only probe, high rho"
    task = "sycophancy"
    setting = "explain-only"
    explainer = "probe"
    rho = [0.7, 1.0]            # region of rho_t the endpoint pools
    direction = "greater"       # Self > Orig (gap above 0); "less": gap below 0

    [map]                       # defaults of `introspect experiment map`
    rho_bins = [-1.0, 0.3, 0.5, 0.7, 0.9, 1.0]

``[grid]`` and ``[fixed]`` take any :class:`~introspect.experiment.config.ExperimentConfig`
field (``task`` stands for a one-task ``tasks``; ``out`` and ``tasks`` are not taken: every run
has one task and its own directory). Every error names the file and the key.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from introspect.errors import UsageError

__all__ = [
    "DEFAULT_RHO_BINS",
    "Endpoint",
    "RunSpec",
    "SpecError",
    "SweepSpec",
    "load_spec",
    "parse_spec",
]

DEFAULT_RHO_BINS = (-1.0, 0.0, 0.3, 0.5, 0.7, 0.9, 1.0)
DIRECTIONS = ("greater", "less")
STATISTICS = {"gap": 0.0, "c": 0.5}  # the statistic an endpoint tests, and its null value
_TABLES = ("sweep", "fixed", "grid", "endpoints", "map")
_SWEEP_KEYS = ("model", "preset", "name")
_MAP_KEYS = ("rho_bins", "n_boot", "seed", "alpha", "null_min_runs", "explainers")
_ENDPOINT_KEYS = ("name", "task", "setting", "explainer", "rho", "direction", "statistic")
_NOT_TAKEN = {
    "out": "every run gets its own directory under the sweep's",
    "tasks": "use task (one per run)",
    "preset": "set it in [sweep]",
    "model": "set it in [sweep] (or vary it in [grid] as model)",
}


class SpecError(UsageError):
    """A sweep spec that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Endpoint:
    """One pre-declared test: over the main runs of ``task`` and ``setting``, the mean
    ``statistic`` (the gap Self − Orig, or the coupling index c) of ``explainer`` over the
    checkpoints whose ρ_t lies in ``rho`` is above (``greater``) or below (``less``) its null
    value (0 for the gap, 0.5 for c)."""

    name: str
    task: str
    setting: str
    explainer: str
    rho: tuple[float, float]
    direction: str
    statistic: str = "gap"

    @property
    def null_value(self) -> float:
        return STATISTICS[self.statistic]

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rho"] = list(self.rho)
        return d


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: its directory name, the values that vary across the grid, and the
    keyword arguments of its :class:`~introspect.experiment.config.ExperimentConfig`."""

    name: str
    values: dict[str, Any]
    config: dict[str, Any]


@dataclass(frozen=True)
class SweepSpec:
    source: str
    model: str
    preset: str
    fixed: dict[str, Any]
    grid: dict[str, list[Any]]
    endpoints: tuple[Endpoint, ...]
    map: dict[str, Any] = field(default_factory=dict)
    name: str = "sweep"

    def runs(self) -> list[RunSpec]:
        """Every combination of the grid, in the grid's key order (the last key varies
        fastest), named by its varying values."""
        keys = list(self.grid)
        varying = [k for k in keys if len(self.grid[k]) > 1]
        out, seen = [], set()
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            picked = dict(zip(keys, combo, strict=True))
            values: dict[str, Any] = {}  # linked axes spread into their settings
            parts = []
            for k in keys:
                v = picked[k]
                items = v.items() if isinstance(v, dict) else [(k, v)]
                values.update(items)
                if k in varying:
                    parts += [f"{name}-{_slug(x)}" for name, x in items]
            name = "_".join(parts) or "run"
            if name in seen:
                name = f"{name}_{len(out)}"
            seen.add(name)
            cfg = {"model": self.model, **self.fixed, **values}
            cfg["tasks"] = (cfg.pop("task"),)
            varied = {n: x for k in varying for n, x in _items(k, picked[k])}
            out.append(RunSpec(name, varied, cfg))
        return out

    def to_json(self) -> dict[str, Any]:
        """The spec in its file's shape (:func:`parse_spec` reads it back)."""
        sweep = {"name": self.name, "preset": self.preset}
        if self.model:
            sweep["model"] = self.model
        return {
            "sweep": sweep,
            "fixed": self.fixed,
            "grid": self.grid,
            "endpoints": [e.to_json() for e in self.endpoints],
            "map": self.map,
        }


def _items(key: str, value: Any) -> list[tuple[str, Any]]:
    """The settings one grid value gives: itself, or a linked axis's table of them."""
    return list(value.items()) if isinstance(value, dict) else [(key, value)]


def _grid_values(grid: dict[str, list[Any]], key: str) -> list[Any] | None:
    """Every value ``key`` takes across the grid, from its own axis or from linked axes."""
    if key in grid:
        return grid[key]
    found = [v[key] for values in grid.values() for v in values if isinstance(v, dict) and key in v]
    return list(dict.fromkeys(found)) if found else None


def _slug(v: Any) -> str:
    text = f"{v:g}" if isinstance(v, float) else str(v)
    return re.sub(r"[^A-Za-z0-9.+=-]+", "-", text).strip("-") or "x"


# ------------------------------------------------------------------------------------ reading


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the sweep spec ({exc.strerror})") from None
    if path.suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    else:
        toml = _toml_module(path)
        try:
            doc = toml.loads(text)
        except toml.TOMLDecodeError as exc:
            raise SpecError(f"{path}: not valid TOML ({exc})") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: the spec must be a table (a JSON object)")
    return doc


def _toml_module(path: Path):
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise SpecError(
                f"{path}: reading TOML needs Python >= 3.11 or the tomli package; "
                "give the spec as JSON instead"
            ) from None
    return tomllib


def load_spec(path: str | Path) -> SweepSpec:
    """Reads and checks a sweep spec (``.json``: JSON, anything else: TOML)."""
    path = Path(path)
    return parse_spec(_read(path), source=str(path))


def parse_spec(doc: dict[str, Any], *, source: str = "<spec>") -> SweepSpec:
    """Checks a spec given as a dict (the parsed file) and returns it; errors name ``source``
    and the key."""
    from introspect.experiment.config import PRESETS

    def fail(key: str, msg: str) -> SpecError:
        return SpecError(f"{source}: {key}: {msg}")

    for k in doc:
        if k not in _TABLES:
            raise fail(k, f"unknown table; known: {', '.join(_TABLES)}")
    sweep = _table(doc, "sweep", fail)
    for k in sweep:
        if k not in _SWEEP_KEYS:
            raise fail(f"[sweep] {k}", f"unknown key; known: {', '.join(_SWEEP_KEYS)}")
    model = sweep.get("model")
    grid_table, fixed_table = dict(_table(doc, "grid", fail)), dict(_table(doc, "fixed", fail))
    if "task" in fixed_table and "task" not in grid_table:  # one task for every run
        grid_table["task"] = [fixed_table.pop("task")]
    grid = _grid(grid_table, fail)
    if not (isinstance(model, str) and model) and "model" not in grid:
        raise fail("[sweep] model", "required (the model to study, a name or a path)")
    preset = sweep.get("preset", "quick")
    if preset not in PRESETS:
        raise fail("[sweep] preset", f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    fixed = _fixed(fixed_table, grid, fail)
    spec = SweepSpec(
        source=source,
        model=model or "",
        preset=preset,
        fixed=fixed,
        grid=grid,
        endpoints=_endpoints(doc.get("endpoints", []), grid, fixed, fail),
        map=_map(_table(doc, "map", fail), fail),
        name=str(sweep.get("name", Path(source).stem)),
    )
    _check_runs(spec, fail)
    return spec


def _table(doc: dict[str, Any], key: str, fail) -> dict[str, Any]:
    t = doc.get(key, {})
    if not isinstance(t, dict):
        raise fail(f"[{key}]", f"must be a table, got {type(t).__name__}")
    return t


def _fields() -> dict[str, Any]:
    from introspect.experiment.config import ExperimentConfig

    return {f.name: f for f in dataclasses.fields(ExperimentConfig)}


def _check_key(table: str, key: str, fail) -> str:
    name = "tasks" if key == "task" else key
    if key in _NOT_TAKEN and not (key == "model" and table == "grid"):
        raise fail(f"[{table}] {key}", f"not taken here: {_NOT_TAKEN[key]}")
    if name not in _fields():
        known = sorted({"task", *_fields()} - set(_NOT_TAKEN))
        raise fail(f"[{table}] {key}", f"unknown setting; known: {', '.join(known)}")
    return key


def _grid(grid: dict[str, Any], fail) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    linked_keys: dict[str, str] = {}  # setting -> the linked axis that gives it
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise fail(f"[grid] {key}", f"expected a non-empty list of values, got {values!r}")
        if all(isinstance(v, dict) for v in values) and key not in {"task", *_fields()}:
            names = list(values[0])
            for n, v in enumerate(values):
                where = f"[grid] {key} #{n + 1}"
                if not v or list(v) != names:
                    raise fail(where, f"every table of a linked axis sets {names}, got {list(v)}")
                for k, x in v.items():
                    _check_key("grid", k, fail)
                    _check_value(f"{where} {k}", k, x, fail)
            for k in names:
                if k in linked_keys or k in grid:
                    other = linked_keys.get(k, k)
                    raise fail(f"[grid] {key}", f"{k} is also set by [grid] {other}")
                linked_keys[k] = key
        else:
            _check_key("grid", key, fail)
            for v in values:
                _check_value(f"[grid] {key}", key, v, fail)
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise fail(f"[grid] {key}", f"a value is listed twice: {values}")
        out[key] = list(values)
    if "task" not in out and "task" not in linked_keys:
        out = {"task": ["sycophancy"], **out}
    return out


def _fixed(fixed: dict[str, Any], grid: dict[str, list[Any]], fail) -> dict[str, Any]:
    out = {}
    for key, value in fixed.items():
        _check_key("fixed", key, fail)
        if _grid_values(grid, key) is not None:
            raise fail(f"[fixed] {key}", "also in [grid]: give it in one of them")
        _check_value(f"[fixed] {key}", key, value, fail)
        out[key] = value
    return out


def _check_value(where: str, key: str, value: Any, fail) -> None:
    f = _fields()["tasks" if key == "task" else key]
    kind = str(f.type)
    if isinstance(value, dict) and key != "pair_files":
        raise fail(where, f"expected a value, got a table {value!r}")
    if kind.startswith("tuple"):
        if key != "task" and not isinstance(value, list):
            raise fail(where, f"expected a list, got {value!r}")
        return
    numeric = kind.replace(" ", "") in ("int", "float", "int|None", "float|None")
    if numeric and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise fail(where, f"expected a number, got {value!r}")
    if kind.startswith("int") and isinstance(value, float):
        raise fail(where, f"expected a whole number, got {value!r}")
    if kind in ("str", "str | None") and not isinstance(value, str):
        raise fail(where, f"expected a string, got {value!r}")
    if kind == "bool" and not isinstance(value, bool):
        raise fail(where, f"expected true or false, got {value!r}")


def _endpoints(items: Any, grid, fixed, fail) -> tuple[Endpoint, ...]:
    from introspect.experiment.verdicts import SCALAR_EXPLAINERS

    if not isinstance(items, list):
        raise fail("[[endpoints]]", "must be a list of tables")
    out: list[Endpoint] = []
    tasks = _grid_values(grid, "task")
    settings = _grid_values(grid, "setting") or [fixed.get("setting", "concurrent")]
    for k, e in enumerate(items):
        where = f"[[endpoints]] #{k + 1}"
        if not isinstance(e, dict):
            raise fail(where, f"must be a table, got {e!r}")
        unknown = sorted(set(e) - set(_ENDPOINT_KEYS))
        if unknown:
            raise fail(f"{where} {unknown[0]}", f"unknown key; known: {', '.join(_ENDPOINT_KEYS)}")
        missing = [m for m in _ENDPOINT_KEYS[:-1] if m not in e]
        if missing:
            raise fail(f"{where} {missing[0]}", "required")
        checks = [
            ("task", e["task"] in tasks, f"not among the grid's tasks {tasks}"),
            ("setting", e["setting"] in settings, f"not among the settings run {settings}"),
            ("explainer", e["explainer"] in SCALAR_EXPLAINERS, f"one of {SCALAR_EXPLAINERS}"),
            ("direction", e["direction"] in DIRECTIONS, f"one of {DIRECTIONS}"),
            ("statistic", e.get("statistic", "gap") in STATISTICS, f"one of {list(STATISTICS)}"),
        ]
        for key, ok, want in checks:
            if not ok:
                raise fail(f"{where} {key}", f"{e.get(key)!r}: {want}")
        out.append(
            Endpoint(
                name=str(e["name"]),
                task=e["task"],
                setting=e["setting"],
                explainer=e["explainer"],
                rho=_region(e["rho"], f"{where} rho", fail),
                direction=e["direction"],
                statistic=e.get("statistic", "gap"),
            )
        )
    names = [e.name for e in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise fail("[[endpoints]] name", f"names repeat: {dup}")
    return tuple(out)


def _region(v: Any, where: str, fail) -> tuple[float, float]:
    ok = (
        isinstance(v, list)
        and len(v) == 2
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
        and -1.0 <= v[0] < v[1] <= 1.0
    )
    if not ok:
        raise fail(where, f"expected [lo, hi] with -1 <= lo < hi <= 1, got {v!r}")
    return float(v[0]), float(v[1])


def _map(m: dict[str, Any], fail) -> dict[str, Any]:
    for k, v in m.items():
        if k not in _MAP_KEYS:
            raise fail(f"[map] {k}", f"unknown key; known: {', '.join(_MAP_KEYS)}")
        if k == "rho_bins":
            ok = (
                isinstance(v, list)
                and len(v) >= 2
                and all(isinstance(x, int | float) and math.isfinite(x) for x in v)
                and all(a < b for a, b in itertools.pairwise(v))
            )
            if not ok:
                raise fail("[map] rho_bins", f"expected increasing numbers, got {v!r}")
        elif k == "alpha" and not (isinstance(v, int | float) and 0 < v < 1):
            raise fail("[map] alpha", f"expected a number in (0, 1), got {v!r}")
        elif k in ("n_boot", "seed", "null_min_runs") and not (
            isinstance(v, int) and not isinstance(v, bool) and v >= 0
        ):
            raise fail(f"[map] {k}", f"expected a whole number >= 0, got {v!r}")
        elif k == "explainers" and not (isinstance(v, list) and v):
            raise fail("[map] explainers", f"expected a list of explainers, got {v!r}")
    return dict(m)


def _check_runs(spec: SweepSpec, fail) -> None:
    """Builds every run's configuration once, so that a combination that does not fit is
    refused before anything runs."""
    from introspect.experiment.config import ExperimentConfig, ExperimentError

    for run in spec.runs():
        try:
            ExperimentConfig.from_preset(spec.preset, out="-", **config_kwargs(run.config))
        except ExperimentError as exc:
            raise fail(f"run {run.name}", str(exc)) from None
        except TypeError as exc:
            raise fail(f"run {run.name}", str(exc)) from None


def config_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """A run's values as ExperimentConfig keyword arguments (lists as tuples)."""
    out = dict(config)
    for k in ("tasks", "noise_levels", "rho_targets"):
        if k in out:
            out[k] = tuple(out[k])
    if "pair_files" in out:
        out["pair_files"] = {t: tuple(v) for t, v in out["pair_files"].items()}
    return out
