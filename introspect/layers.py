"""Which decoder layers: one rule for every layer index a user gives (negative counts from the
end) and for the layer specs of the command line."""

from __future__ import annotations

from collections.abc import Iterable

from introspect.errors import UsageError

LAYER_SPECS = ("default", "all", "none")


def resolve_layer(index: int, n_layers: int, *, model: str = "the model") -> int:
    """``index`` as a layer number in ``0..n_layers-1`` (``-1`` is the last layer); a
    :class:`~introspect.errors.UsageError` names the valid range otherwise."""
    value = int(index)
    resolved = value + n_layers if value < 0 else value
    if not 0 <= resolved < n_layers:
        raise UsageError(f"layer {value} out of range: {model} has layers 0..{n_layers - 1}")
    return resolved


def default_layers(n_layers: int) -> list[int]:
    """The middle and the last layer."""
    return sorted({n_layers // 2, n_layers - 1})


def parse_layers(
    spec: str | int | Iterable[int] | None, n_layers: int, *, model: str = "the model"
) -> list[int]:
    """Sorted distinct layer numbers from ``spec``: ``"default"`` (the middle and the last),
    ``"all"``, ``"none"`` or ``""`` (no layer), ``"3,-1"``, an int, or a sequence of ints."""
    if spec is None:
        return []
    if isinstance(spec, str):
        text = spec.strip()
        if text in ("none", ""):
            return []
        if text == "all":
            return list(range(n_layers))
        if text == "default":
            return default_layers(n_layers)
        try:
            values = [int(part) for part in text.split(",")]
        except ValueError:
            raise UsageError(
                f"layers {spec!r}: give comma-separated layer numbers or one of "
                f"{', '.join(LAYER_SPECS)}"
            ) from None
    elif isinstance(spec, int):
        values = [spec]
    else:
        values = [int(v) for v in spec]
    return sorted({resolve_layer(v, n_layers, model=model) for v in values})
