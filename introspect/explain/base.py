"""Explainers as data: one frozen dataclass config per kind and one registry keyed by name.

A config round-trips through a plain dict (and so through JSON)::

    d = config_to_dict(ProbeConfig(mode="direct", layers=(6,)))   # {"explainer": "probe", ...}
    assert config_from_dict(d) == ProbeConfig(mode="direct", layers=(6,))
    explainer = build(d)                                          # or build(config)

A fitted explainer is saved as a directory holding ``explainer.json`` (name, config, fitted
state) and ``weights.safetensors``; :func:`load` reads any registered kind back.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from introspect._io import write_atomic

__all__ = [
    "CONFIG_FILE",
    "EXPLAINERS",
    "WEIGHTS_FILE",
    "Explainer",
    "ExplainerConfig",
    "build",
    "config_from_dict",
    "config_to_dict",
    "load",
    "register",
]

CONFIG_FILE = "explainer.json"
WEIGHTS_FILE = "weights.safetensors"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ExplainerConfig:
    """Base class of explainer configs: frozen dataclasses whose fields are JSON values
    (tuples are written as lists and turned back into tuples by the config's ``__post_init__``)."""


class Explainer(abc.ABC):
    """An explainer maps pairs (through their hidden states, or through the model itself) to a
    prediction of the counterfactual effect of removing the feature.

    ``output`` is ``"scalar"`` for explainers that predict Δ and ``"categorical"`` for explainers
    whose answers are labels (compared by exact match and changed-F1).
    """

    name: ClassVar[str]
    config_class: ClassVar[type[ExplainerConfig]]
    output: ClassVar[str] = "scalar"

    def __init__(self, config: ExplainerConfig):
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config = config

    @abc.abstractmethod
    def fit(self, data: Any, labels: Any, *, rows: Any = None) -> Explainer:
        """Trains on ``data`` against ``labels`` (restricted to ``rows`` when given)."""

    @abc.abstractmethod
    def predict(self, data: Any, *, rows: Any = None) -> Any:
        """Predictions for every row of ``data`` (or for ``rows``, in that order)."""

    @abc.abstractmethod
    def save(self, path: str | os.PathLike) -> Path:
        """Writes the fitted explainer into the directory ``path``."""

    @classmethod
    @abc.abstractmethod
    def load(cls, path: str | os.PathLike) -> Explainer:
        """Reads an explainer written by :meth:`save`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


EXPLAINERS: dict[str, type[Explainer]] = {}
"""Registered explainer classes by name; each has ``config_class``."""


def register(name: str):
    """Class decorator: registers an :class:`Explainer` subclass under ``name``."""

    def deco(cls: type[Explainer]) -> type[Explainer]:
        if not (isinstance(cls, type) and issubclass(cls, Explainer)):
            raise TypeError(f"register({name!r}): {cls!r} is not an Explainer subclass")
        if not (
            isinstance(getattr(cls, "config_class", None), type)
            and issubclass(cls.config_class, ExplainerConfig)
        ):
            raise TypeError(f"register({name!r}): {cls.__name__}.config_class must be set")
        other = EXPLAINERS.get(name)
        if other is not None and other is not cls:
            raise ValueError(f"an explainer named {name!r} is already registered ({other!r})")
        cls.name = name
        EXPLAINERS[name] = cls
        return cls

    return deco


def _name_of(config: ExplainerConfig) -> str:
    for name, cls in EXPLAINERS.items():
        if type(config) is cls.config_class:
            return name
    raise TypeError(f"{type(config).__name__} is not the config of a registered explainer")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def config_to_dict(config: ExplainerConfig) -> dict[str, Any]:
    """``{"explainer": name, <field>: <value>, ...}`` with JSON values only."""
    out: dict[str, Any] = {"explainer": _name_of(config)}
    for f in dataclasses.fields(config):
        out[f.name] = _jsonable(getattr(config, f.name))
    return out


def config_from_dict(data: Mapping[str, Any]) -> ExplainerConfig:
    """The config described by a dict from :func:`config_to_dict` (missing fields take their
    defaults; unknown names and fields are errors that list what is accepted)."""
    if not isinstance(data, Mapping):
        raise TypeError(f"an explainer config must be a dict, got {type(data).__name__}")
    fields = dict(data)
    name = fields.pop("explainer", None)
    if name is None:
        raise ValueError("an explainer config needs an 'explainer' field naming its kind")
    cls = EXPLAINERS.get(name)
    if cls is None:
        raise ValueError(f"unknown explainer {name!r}; registered: {sorted(EXPLAINERS)}")
    known = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"explainer {name!r}: unknown config field(s) {unknown}; accepted: {sorted(known)}"
        )
    try:
        return cls.config_class(**fields)
    except TypeError as e:
        raise ValueError(f"explainer {name!r}: {e}") from None


def build(config: ExplainerConfig | Mapping[str, Any]) -> Explainer:
    """A new, unfitted explainer for ``config`` (a config object or its dict form)."""
    if isinstance(config, Mapping):
        config = config_from_dict(config)
    return EXPLAINERS[_name_of(config)](config)


def load(path: str | os.PathLike) -> Explainer:
    """Loads a saved explainer of any registered kind from its directory."""
    meta = read_meta(Path(path))
    name = meta.get("config", {}).get("explainer")
    cls = EXPLAINERS.get(name)
    if cls is None:
        raise ValueError(
            f"{Path(path) / CONFIG_FILE}: unknown explainer {name!r}; "
            f"registered: {sorted(EXPLAINERS)}"
        )
    return cls.load(path)


# ------------------------------------------------------------------------------------ files


def write_meta(path: Path, config: ExplainerConfig, state: Mapping[str, Any]) -> None:
    meta = {
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(config),
        "state": _jsonable(state),
    }
    text = json.dumps(meta, indent=1, allow_nan=False) + "\n"
    write_atomic(path / CONFIG_FILE, text.encode("utf-8"))


def read_meta(path: Path) -> dict[str, Any]:
    file = path / CONFIG_FILE
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: no saved explainer here") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{file}: not an explainer file")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{file}: format version {meta['format_version']} is newer than this introspect"
        )
    return meta


def read_saved(path: Path, config_class: type[ExplainerConfig]) -> tuple[Any, dict[str, Any]]:
    """The config (checked to be a ``config_class``) and the fitted state of the explainer saved
    in the directory ``path``."""
    meta = read_meta(path)
    config = config_from_dict(meta["config"])
    if not isinstance(config, config_class):
        raise ValueError(f"{path / CONFIG_FILE}: holds a {type(config).__name__}")
    return config, meta.get("state") or {}
