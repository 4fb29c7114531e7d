"""From pairs to a run directory: the one pipeline that ``introspect extract``, the coupling
experiment and checkpoint evaluation all run.

>>> import introspect
>>> run = introspect.extract(model, tokenizer, "pairs.jsonl", "build/run", layers=[15])
>>> run.delta[:3], run.hidden(15, "x").shape

Steps, in order: resolve the model (a name, a path or an object already in memory) and the
chat-template mode (on a view of the tokenizer: the caller's is never changed); read the head
of the pairs, which decides the shared prefix, checks that the model honours the packed layout
(``layout="auto"``) and calibrates a reduced precision; open the :class:`~introspect.run.RunWriter`
(checking a resumed run against its manifest); stream this rank's pairs through
:func:`~introspect.engine.stream.extract_pairs` into shards; merge the ranks of a ``torchrun``
job; return :func:`~introspect.run.open_run` of the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from introspect._io import sha256_file
from introspect._progress import Progress, say_stderr
from introspect.data.io import ReadReport, iter_pairs
from introspect.data.pairs import Pair, dumps
from introspect.engine import precision
from introspect.engine.stream import (
    PREFIX_WINDOW,
    ExtractConfig,
    check_tree_layout,
    extract_pairs,
    shared_prefix,
)
from introspect.errors import IntrospectError, UsageError

__all__ = ["ExtractStats", "Extraction", "NonFiniteError", "extract"]

PairSource = str | os.PathLike | Iterable[Pair | Mapping[str, Any]]


@dataclass
class ExtractStats:
    """What one extraction did: pairs written by this process, positions computed and what
    separate forwards would have computed, seconds, and the rows skipped as bad input."""

    pairs: int = 0
    tokens: int = 0
    naive_tokens: int = 0
    seconds: float = 0.0
    skipped: list = field(default_factory=list)

    @property
    def token_share(self) -> float:
        return self.tokens / max(1, self.naive_tokens)


class NonFiniteError(IntrospectError, ValueError):
    """A pair whose f(x), f(x') or hidden state came out NaN or infinite (the message names it)."""


SIDE_NAMES = {"x": "x", "mod": "x'"}


def refuse_non_finite(res, behaviour: str) -> None:
    """Raises :class:`NonFiniteError` naming the first pair of the batch result ``res`` whose
    f(x), f(x') (unless ``behaviour`` is ``"none"``, where they are NaN by design) or captured
    hidden state is not finite: such a value is never written to a run."""
    import numpy as np

    checks = [] if behaviour == "none" else [("f(x)", res.f_x), ("f(x')", res.f_mod)]
    checks += [
        (f"its hidden state at layer {layer} ({pos}, {SIDE_NAMES[side]})", h)
        for (layer, pos, side), h in res.hidden.items()
    ]
    for what, values in checks:
        finite = np.isfinite(values)
        bad = np.flatnonzero(~(finite if finite.ndim == 1 else finite.all(axis=1)))
        if bad.size:
            others = f" (and {bad.size - 1} more of its batch)" if bad.size > 1 else ""
            raise NonFiniteError(
                f"pair {res.ids[bad[0]]!r}{others}: {what} is not finite (NaN or inf), so it "
                "is not written: the model overflowed on it (with a reduced --dtype, try "
                "float32) or its weights hold NaN/inf"
            )


class _Pairs:
    """The pairs to extract, from a file (streamed) or from the caller's objects (validated
    as the file reader validates each line); ``report`` collects skipped rows."""

    def __init__(self, pairs: PairSource, on_error: str):
        self.on_error = on_error
        self.report = ReadReport()
        if isinstance(pairs, (str, os.PathLike)):
            self.path: Path | None = Path(pairs)
            if not self.path.is_file():
                from introspect.data import PairFileError

                raise PairFileError(f"pair file {self.path} does not exist")
            self.items: list[Pair] | None = None
        else:
            from introspect.data import coerce_pairs

            self.path = None
            self.items = coerce_pairs(pairs, on_error=on_error, report=self.report)

    def stream(self, *, on_error: str | None = None, report: ReadReport | None = None):
        if self.items is not None:
            return iter(self.items)
        return iter_pairs(
            self.path,
            on_error=on_error or self.on_error,
            report=report if report is not None else self.report,
        )

    def head(self, n: int) -> list[Pair]:
        """The first ``n`` valid pairs (the same for every rank and after a resume)."""
        return list(itertools.islice(self.stream(on_error="skip", report=ReadReport()), n))

    def count(self) -> int:
        """Rows to expect (non-blank lines of a file): for progress only."""
        if self.items is not None:
            return len(self.items)
        with open(self.path, "rb") as f:
            return sum(1 for line in f if line.strip())

    def input_hash(self) -> str:
        """sha256 of the pair file; for objects, of the pair file they would be written as."""
        if self.path is not None:
            return sha256_file(self.path)
        digest = hashlib.sha256()
        for pair in self.items:
            digest.update((dumps(pair) + "\n").encode("utf-8"))
        return digest.hexdigest()


def _launched() -> bool:
    """Whether this process was started by ``torchrun`` (which sets these, even for 1 process)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def process_group_backend(device: Any) -> str:
    """``nccl`` for a model on a CUDA device (where torch has NCCL), else ``gloo``."""
    import torch
    import torch.distributed as dist

    if torch.device(device).type == "cuda" and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def _process_group(device: Any, world: int, say: Callable[[str], None]) -> Any:
    """Under ``torchrun``: the process group (NCCL with this process's GPU made the current
    device, gloo on the CPU), or None in a plain process."""
    if not (_launched() or world > 1):
        return None
    import torch
    import torch.distributed as dist

    backend = process_group_backend(device)
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group(backend)
    if dist.get_rank() == 0:
        say(f"torchrun: {world} process(es), {dist.get_backend()} on {torch.device(device).type}")
    return dist


class Extraction:
    """One extraction into a run directory, step by step (see the module docstring); built by
    :func:`extract`, whose arguments it takes, and run by :meth:`run`."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        pairs: PairSource,
        out: str | os.PathLike,
        *,
        layers: Any,
        positions: Sequence[str] | str,
        behaviour: str,
        dtype: str,
        calibrate: int,
        layout: str,
        attention: str,
        prefix_cache: bool,
        resume: bool,
        on_error: str,
        row_tokens: int | None,
        batch_tokens: int,
        shard_rows: int,
        chat_template: str,
        device: Any,
        model_id: str | None,
        progress: bool | Callable[[str], None],
        say: Callable[[str], None],
        fused: bool = True,
    ) -> None:
        from introspect.layers import parse_layers
        from introspect.models import load_model, resolve_device, with_chat_template

        if dtype not in precision.PRECISIONS:
            raise UsageError(
                f"dtype must be one of {', '.join(precision.PRECISIONS)}, not {dtype!r}"
            )
        if layout not in ("auto", "tree", "paths"):
            raise UsageError(f"layout must be auto, tree or paths, not {layout!r}")
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.out, self.say, self.progress = Path(out), say, progress
        self.dtype, self.calibrate, self.resume = dtype, int(calibrate), resume
        self.shard_rows, self.auto_layout = int(shard_rows), layout == "auto"
        self.pairs = _Pairs(pairs, on_error)
        if isinstance(model, (str, os.PathLike)):
            dev = resolve_device(device or "auto")
            if dev == "cuda" and _launched():  # one GPU per process under torchrun
                dev = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            self.lm = load_model(model, tokenizer=tokenizer, dtype="float32", device=dev)
        else:
            self.lm = load_model(model, tokenizer=tokenizer)
        self.dist = _process_group(next(self.lm.model.parameters()).device, self.world, say)
        self.model_id = model_id or self.lm.model_id
        self.tokenizer, self.chat_template = with_chat_template(self.lm.tokenizer, chat_template)
        self.layers = parse_layers(layers, self.lm.n_layers, model=self.model_id)
        if isinstance(positions, str):
            positions = [p.strip() for p in positions.split(",") if p.strip()]
        try:
            self.config = ExtractConfig(
                layers=tuple(self.layers),
                behaviour=behaviour,
                positions=tuple(positions),
                row_tokens=row_tokens,
                batch_tokens=batch_tokens,
                layout="tree" if layout == "auto" else layout,
                prefix_cache=prefix_cache,
                attention=attention,
                fused=fused,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def _check_layout(self, head: list[Pair]) -> None:
        """``layout="auto"``: the packed tree unless the model fails the check on the first
        pair, then every sequence on its own (still exact, slower)."""
        if not (self.auto_layout and head):
            return
        from introspect.engine.layout import tree_layout_problem

        model, tok, fused = self.lm.model, self.tokenizer, self.config.fused

        def check() -> str | None:
            return check_tree_layout(model, tok, head[0], fused=fused)

        why = tree_layout_problem(model, check)
        if why is not None:
            self.say(
                f"warning: {self.model_id}: {why}; running every sequence on its own "
                "(--layout paths: still exact, slower)"
            )
            self.config = replace(self.config, layout="paths")

    def _writer(self, prefix: list[int]):
        from introspect.run import RunWriter

        return RunWriter(
            self.out,
            model_id=self.model_id,
            weights_hash=self.lm.weights_hash,
            config={
                **self.config.to_json(),
                "dtype": self.dtype,
                "prefix_tokens": len(prefix),
                "chat_template": self.chat_template,
            },
            input_hash=self.pairs.input_hash(),
            layers=self.layers,
            positions=list(self.config.positions),
            hidden_size=self.lm.hidden_size,
            shard_rows=self.shard_rows,
            rank=self.rank,
            world_size=self.world,
            resume=self.resume,
        )

    def _fidelity(self, writer, head: list[Pair], prefix: list[int]) -> None:
        """A reduced precision: its fidelity against float32 on the first pairs, measured once
        (kept in the manifest across a resume) and said."""
        if self.dtype == precision.EXACT:
            return
        fid = writer.info.get("fidelity")
        if fid is None and self.calibrate > 0 and head:
            fid = precision.measure_fidelity(
                self.lm.model,
                self.tokenizer,
                head[: self.calibrate],
                self.config,
                self.dtype,
                prefix=prefix,
            )
            writer.set_info("fidelity", fid)
        if fid is None:
            self.say(
                f"warning: --dtype {self.dtype} is approximate and its fidelity was not "
                "measured (--calibrate 0)"
            )
        elif self.rank == 0:
            what = (
                f"Δ correlates {fid['pearson']:.4f} with float32 (max |error| "
                f"{fid['max_abs_error']:.3g}, Δ sd {fid['delta_sd']:.3g})"
                if "pearson" in fid
                else f"hidden states differ by {fid.get('hidden_max_rel_error', 0):.2e} relative"
            )
            self.say(
                f"warning: --dtype {self.dtype} is approximate: on the first {fid['pairs']} "
                f"pairs {what}; recorded in manifest.json (info.fidelity)"
            )

    def _my_pairs(self, skip: int) -> Iterator[Pair]:
        """Rank r takes valid pairs r, r + K, ...; a resumed rank skips what it wrote."""
        for k, pair in enumerate(self.pairs.stream()):
            if k % self.world == self.rank and k // self.world >= skip:
                yield pair

    def _reporter(self, skip: int) -> Progress | None:
        if not self.progress:
            return None
        total = max(0, self.pairs.count() // self.world - skip)
        desc = f"extracting (rank {self.rank})" if self.world > 1 else "extracting"
        say = self.progress if callable(self.progress) else None
        return Progress(total, desc, say=say, every=0.1 if say is None else 0.25)

    def _stream(self, writer, prefix: list[int], stats: ExtractStats) -> None:
        skip = writer.rows_done
        progress = self._reporter(skip)
        batches = extract_pairs(
            self.lm.model,
            self.tokenizer,
            self._my_pairs(skip),
            self.config,
            boundary_every=self.shard_rows,
            first_index=skip,
            progress=progress.update if progress else None,
            prefix=prefix,
            autocast=precision.apply(self.lm.model, self.dtype),
        )
        # Closed on any exit, so the model leaves the stream's attention setting at once.
        with contextlib.closing(batches):
            for res in batches:
                refuse_non_finite(res, self.config.behaviour)
                writer.add(res.ids, res.f_x, res.f_mod, res.hidden)
                stats.tokens += res.tokens_unique
                stats.naive_tokens += res.tokens_naive
                stats.pairs += len(res.ids)
        if progress:
            progress.close()

    def _record_skipped(self, writer) -> None:
        skipped = self.pairs.report.skipped
        if not skipped:
            return
        import numpy as np

        empty = {
            (layer, pos, side): np.zeros((0, self.lm.hidden_size), np.float32)
            for layer in self.layers
            for pos in self.config.positions
            for side in ("x", "mod")
        }
        writer.add([], np.zeros(0), np.zeros(0), empty, skipped=skipped)

    def _merge(self) -> None:
        if self.dist is None:
            return
        from introspect.run import merge_ranks

        self.dist.barrier()
        if self.rank == 0 and self.world > 1:
            merge_ranks(self.out)
        self.dist.barrier()
        self.dist.destroy_process_group()

    def run(self) -> ExtractStats:
        """Extracts into the run directory; returns what was done. Bad pair rows raise
        :class:`~introspect.data.PairError` (``on_error="fail"``) with the run so far kept, to
        be continued with ``resume=True``."""
        t0 = time.perf_counter()
        head = self.pairs.head(max(PREFIX_WINDOW, self.calibrate))
        self._check_layout(head)
        tok = self.tokenizer
        prefix = shared_prefix(tok, head[:PREFIX_WINDOW]) if self.config.prefix_cache else []
        writer = self._writer(prefix)
        self._fidelity(writer, head, prefix)
        stats = ExtractStats()
        self._stream(writer, prefix, stats)
        self._record_skipped(writer)
        writer.close()
        self._merge()
        stats.seconds = time.perf_counter() - t0
        stats.skipped = list(self.pairs.report.skipped)
        return stats


def extract(
    model: Any,
    tokenizer: Any = None,
    pairs: PairSource = (),
    out: str | os.PathLike = "",
    *,
    layers: Any = (),
    positions: Sequence[str] | str = ("last",),
    behaviour: str = "logodds",
    dtype: str = "float32",
    calibrate: int = 32,
    layout: str = "auto",
    attention: str = "auto",
    prefix_cache: bool = True,
    fused: bool = True,
    resume: bool = False,
    on_error: str = "fail",
    row_tokens: int | None = None,
    batch_tokens: int = 2048,
    shard_rows: int = 4096,
    chat_template: str = "model",
    device: Any = None,
    model_id: str | None = None,
    progress: bool | Callable[[str], None] = False,
    say: Callable[[str], None] = say_stderr,
):
    """f(x), f(x'), Δ and the hidden states of ``layers`` for every pair, into the run directory
    ``out``; returns it opened (:func:`introspect.open_run`).

    ``model``: a model object you hold (a transformers causal LM, used as it is: not copied,
    moved or cast), a :class:`~introspect.models.LoadedModel`, or a name or path that
    :func:`introspect.load_model` resolves (then loaded in float32 on ``device``, default
    ``"auto"``). ``tokenizer``: the model's tokenizer (needed with a model object); it is never
    changed. ``pairs``: a pair file, or an iterable of :class:`~introspect.data.Pair` or of
    dicts in the pair-file schema, validated as the file reader validates a line.

    The keywords are the options of ``introspect extract``: ``layers`` (ints, negative from the
    end, or ``"default"``/``"all"``/``"none"``), ``positions`` (``"last"``, ``"span"``),
    ``behaviour`` (``"logodds"``, ``"logprob"``, ``"prob"``, ``"none"``), ``dtype``
    (``"float32"`` is exact; a reduced precision has its fidelity measured on the first
    ``calibrate`` pairs and recorded), ``layout`` (``"auto"`` checks the packed tree on the
    first pair), ``attention`` (``"auto"``, ``"mask"``, ``"paired"``, ``"blocks"``),
    ``prefix_cache``, ``fused`` (the fused CPU kernels and prepacked GEMMs in a Llama-family
    forward; off: the model's own modules),
    ``resume`` (continue a killed run), ``on_error`` (``"fail"`` or ``"skip"``: skipped rows are
    listed in the manifest), ``row_tokens``, ``batch_tokens``, ``shard_rows``,
    ``chat_template`` (``"model"``, ``"plain"``, ``"auto"``). Under ``torchrun`` each process
    takes every K-th pair and rank 0 merges the shards. ``model_id``: the name the manifest
    records (default: the name given, or the model's ``name_or_path``). ``progress``: True for a
    progress bar or line on stderr, or a function given each progress line. ``say``: where
    warnings go.

    Example, with a model that exists only in memory::

        import introspect
        from transformers import LlamaConfig, LlamaForCausalLM
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=64))
        run = introspect.extract(model, tok, [{"id": "a", "prompt": "...", "remove": ["..."],
                                               "choices": [" yes", " no"], "target": " yes"}],
                                 "build/run", layers=[-1])
        run.delta, run.hidden(1, "x")
    """
    from introspect.run import open_run

    if not os.fspath(out):
        raise UsageError("extract needs out, the run directory to write")
    job = Extraction(
        model,
        tokenizer,
        pairs,
        out,
        layers=layers,
        positions=positions,
        behaviour=behaviour,
        dtype=dtype,
        calibrate=calibrate,
        layout=layout,
        attention=attention,
        prefix_cache=prefix_cache,
        resume=resume,
        on_error=on_error,
        row_tokens=row_tokens,
        batch_tokens=batch_tokens,
        shard_rows=shard_rows,
        chat_template=chat_template,
        device=device,
        model_id=model_id,
        progress=progress,
        say=say,
        fused=fused,
    )
    job.run()
    return open_run(out)
