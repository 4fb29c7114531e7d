"""Pairs built in code: the checks and the error policy of pair files, for an iterable of items.

A library user who assembles pairs in Python (from a data frame, a generator, another data set)
gets from :func:`coerce_pairs` exactly what writing the items to a pair file and reading it back
would give: each dict is checked as :func:`~introspect.data.io.iter_pairs` checks a line (same
checks, same messages), ids must be unique across the whole iterable, and with
``on_error="skip"`` every good item is kept while the bad ones are recorded in a
:class:`~introspect.data.io.ReadReport`. Errors name the item by its 1-based position::

    item 3: id 'syc-7': 'target' '(C)' is not one of the choices ['(A)', '(B)']

:func:`iter_coerced` streams: it holds only the set of ids seen, so a large iterable (a
generator reading a data set) is never held in memory twice. :func:`coerce_pairs` is its list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from introspect.data.io import ReadReport, Skipped, admit, check_on_error
from introspect.data.pairs import Pair, PairError

#: ``Skipped.source`` of an item of an iterable (there is no file).
ITEMS = "<items>"


def coerce_pairs(
    items: Iterable[Pair | dict[str, Any]],
    *,
    on_error: str = "fail",
    report: ReadReport | None = None,
) -> list[Pair]:
    """The valid pairs of ``items`` (:class:`Pair` objects or dicts in the pair-file schema), in
    order.

    A dict becomes a :class:`Pair` after the checks a pair-file line gets; a :class:`Pair` is
    checked the same way and kept as it is. A bad item or a repeated id raises
    :class:`~introspect.data.io.PairFileError` naming ``item K`` and the id (``on_error="fail"``)
    or is recorded in ``report.skipped`` (``"skip"``); ``report.rows`` counts the items.
    """
    return list(iter_coerced(items, on_error=on_error, report=report))


def iter_coerced(
    items: Iterable[Pair | dict[str, Any]],
    *,
    on_error: str = "fail",
    report: ReadReport | None = None,
) -> Iterator[Pair]:
    """:func:`coerce_pairs` as a stream: each valid pair as soon as its item is read.

    ``on_error`` is checked at once; the items are read only as the stream is consumed.
    """
    check_on_error(on_error)
    return _coerce(items, on_error, report if report is not None else ReadReport())


def _coerce(items: Iterable[Any], on_error: str, report: ReadReport) -> Iterator[Pair]:
    """The stream behind :func:`iter_coerced`."""
    seen: set[str] = set()
    for k, item in enumerate(items, start=1):
        report.rows += 1
        try:
            pair = admit(item, seen, unit="item")
        except PairError as exc:
            skipped = Skipped(ITEMS, k, exc.pair_id, exc.reason, _text(item), where=f"item {k}")
            report.handle(skipped, on_error)
            continue
        yield pair


def _text(item: Any) -> str:
    """The item as one line of text, for the skipped-row report."""
    try:
        obj = item.to_json() if isinstance(item, Pair) else item
        return json.dumps(obj, ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # keys that are not strings, a circular structure
        return repr(item)
