"""Run directories: the on-disk result of an extraction, written crash-safely and read back lazily.

A run directory holds, for every pair in pair-file order, f(x), f(x') and the hidden states
captured at chosen layers and positions for x and x'.

>>> w = RunWriter("run", model_id="smollm2-135m", weights_hash="ab12...",
...               config={"behaviour": "logodds"}, input_hash="cd34...", layers=[6, 12],
...               positions=["last"], hidden_size=576)
>>> w.add(ids, f_x, f_mod, hidden={(6, "last", "x"): hx6, (6, "last", "mod"): hm6, ...})
>>> w.close()
>>> run = open_run("run")
>>> run.ids[:2], run.delta[:2], run.hidden(6, "x").shape      # [N, D], memory-mapped

Layout (``K`` ranks; a single-process run is rank 0 of 1)::

    manifest.json                      the run: identity, settings, shard list, completion state
    manifest.r{rank}.json              one part per rank (multi-rank runs only; see merge_ranks)
    shard-r{rank}-{index:05d}.safetensors   f_x, f_mod (float64, [rows]) and one tensor per
                                       captured state, h.L{layer}.{position}.{side} ([rows, D])
    ids-r{rank}-{index:05d}.json       the pair ids of the shard's rows, a JSON list of strings

Shard ``index`` of a rank holds that rank's local rows ``[index * shard_rows, ...)``: shards are cut
every ``shard_rows`` rows counted from the start of the rank's stream, only the last one is short,
so a resumed writer cuts exactly where an uninterrupted one would and produces identical files.

Crash safety: every file is written to a temporary file in the same directory, fsynced and renamed
into place; the shard's files come first and the manifest (listing the shard with its row range,
byte sizes and sha256 of each file) is rewritten last, the same way. A crash at any moment leaves
either the old manifest (the new shard is not counted; its files are strays that a resumed writer
removes) or the new one. ``RunWriter(..., resume=True)`` re-checks every listed shard's sha256,
drops a damaged shard and all later ones of that rank, and reports in :attr:`RunWriter.rows_done`
how many rows of its stream the caller should skip.

Multi-rank runs: rank ``r`` of ``K`` is given the rows whose global index ``g`` has
``g % K == r``, in order, and writes only its own files and its manifest part
``manifest.r{r}.json``. Global row ``g`` is local row ``g // K`` of rank ``g % K``;
:func:`merge_ranks` (called once after every rank has closed, or by :func:`open_run` when all parts
are complete) writes ``manifest.json`` listing every shard. The strided assignment applies to the
rows that are actually added: pairs that are skipped must be removed before the rows are dealt
out, so that every rank holds ``len(range(r, N, K))`` rows.

Shards are standard safetensors files (readable by ``safetensors.safe_open``); this package writes
and reads the format directly so that a shard is streamed to disk without a second in-memory copy
and tensors can be memory-mapped with ``numpy.memmap``.

Modules: :mod:`~introspect.run.format` (names, constants, manifest fields, the safetensors
encoding), :mod:`~introspect.run.writer` (:class:`RunWriter`), :mod:`~introspect.run.merge`
(:func:`merge_ranks`) and :mod:`~introspect.run.reader` (:class:`Run`, :func:`open_run`).
"""

from introspect.run.format import FORMAT_VERSION, SIDES, RunError, RunWriteError, hidden_name
from introspect.run.merge import merge_ranks
from introspect.run.reader import Run, open_run
from introspect.run.writer import RunWriter

__all__ = [
    "FORMAT_VERSION",
    "SIDES",
    "Run",
    "RunError",
    "RunWriteError",
    "RunWriter",
    "hidden_name",
    "merge_ranks",
    "open_run",
]
