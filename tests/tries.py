"""Parent arrays of packed token tries for the paired_attention tests: plain sequences, pair
tries (a shared prefix, x's suffix, each x' suffix) and rows holding several of them."""

from __future__ import annotations


def chain(n: int, off: int = 0, first: int = -1) -> list[int]:
    """Parents of a plain sequence of n tokens starting at position ``off``."""
    return [first if i == 0 else off + i - 1 for i in range(n)]


def pair(prefix: int, x: int, mods: list[int], off: int = 0) -> list[int]:
    """Parents of a pair trie: a shared prefix, x's suffix, then each x' suffix under the
    prefix's last token."""
    par = chain(prefix + x, off)
    for m in mods:
        start = off + len(par)
        par += [off + prefix - 1 if i == 0 else start + i - 1 for i in range(m)]
    return par


def concat(*tries: list[int]) -> list[int]:
    """Several tries in one row (each built at offset 0, shifted here)."""
    row: list[int] = []
    for t in tries:
        off = len(row)
        row += [p + off if p >= 0 else p for p in t]
    return row


# Row sets of width 1, 7, 97 and 129: single sequences, one pair, several x' per x, several
# pairs per row, and padded rows.
STRUCTURES = {
    "T1": [chain(1)],
    "T7": [pair(3, 2, [2]), chain(4)],
    "T97": [
        concat(pair(20, 15, [10, 8]), pair(30, 10, [4])),
        chain(60),
        concat(pair(1, 0, [1]), pair(5, 3, [2, 2, 2]), chain(1)),
    ],
    "T129": [pair(64, 33, [16, 15, 1]), concat(pair(40, 20, [9]), pair(2, 1, [1, 1]))],
}
