"""Evaluation of a training run, checkpoint by checkpoint: Self, Orig and the coupling gap.

For each checkpoint of a training directory (and for the starting model, as step 0), the
*current* model's f(x), f(x'), Δ and hidden states are re-extracted on held-out pairs with the
extraction driver (:func:`introspect.extract`); each explainer predicts Δ from those hidden
states, and :func:`introspect.evaluation.recompute_metrics` scores the predictions against the
current Δ (Self) and against the fixed labels (Orig). Explainers:

- ``probe``: the probe trained alongside the model, as saved in the checkpoint;
- ``probe-diff``: the difference probe (on h(x') − h(x)) trained alongside it, where the
  checkpoint has one;
- ``ridge-m0``: a ridge probe fitted once on the starting model's hidden states (frozen), applied
  to each checkpoint's hidden states;
- ``verbal`` (where the run has a verbal explainer: trained, or untrained with weight 0): the
  checkpoint's model itself, asked how its answer would change without the feature (where the
  format shows an answer first, it is this checkpoint's own answer on x); its answer is the
  candidate sentence with the highest log-probability. Categorical: scored against the labels
  binned at the training run's threshold (Orig) and against the checkpoint's own Δ binned at the
  labels' share of "unchanged" (Self, rank-matched: the scale of Δ moves as the model trains);
  ``verbal@m0-threshold`` is the same answers with the current Δ binned at the training
  threshold instead;
- ``verbal-score``: the same model's scalar score, log p(more likely) − log p(less likely),
  scored by Pearson and Spearman like the probes.

Output files in ``out``: ``predictions.jsonl`` (one record per checkpoint × explainer × pair:
``pred``, ``current``, ``label``), ``metrics.jsonl`` (one row per checkpoint × explainer ×
metric, recomputable from the predictions), ``behaviour.jsonl`` (the behaviour shift),
``eval.json`` (settings and timings) and the PNGs ``self_vs_orig.png`` and ``behaviour.png``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from introspect._progress import say_stderr
from introspect.errors import IntrospectError
from introspect.evaluation.metrics import (
    DEFAULT_N_BOOT,
    bin_delta,
    pearson_r,
    prediction_records,
    recompute_metrics,
    write_jsonl,
)

__all__ = ["EvalError", "evaluate_training"]


class EvalError(IntrospectError, ValueError):
    """Evaluation inputs that do not fit together."""


@dataclass
class Measured:
    """What one model gives on the held-out pairs (pair order)."""

    f_x: np.ndarray
    f_mod: np.ndarray
    h: np.ndarray
    h_mod: np.ndarray
    objective_logprob: float | None = None
    verbal: list[str] | None = None
    verbal_score: np.ndarray | None = None
    answers: tuple[list[str], list[str]] | None = None

    @property
    def delta(self) -> np.ndarray:
        return self.f_mod - self.f_x


def extract_arrays(
    lm, pairs, layer: int, batch_tokens: int, say: Callable[[str], None], chat_template="model"
):
    """f(x), f(x') and the layer's hidden states of x and of x' on ``pairs``, in pair order,
    through the extraction driver (into a temporary run directory)."""
    from introspect.engine.driver import extract

    with tempfile.TemporaryDirectory(prefix="introspect-eval-") as tmp:
        run = extract(
            lm,
            None,
            pairs,
            Path(tmp) / "run",
            layers=[layer],
            batch_tokens=batch_tokens,
            chat_template=chat_template,
            say=say,
        )
        if run.ids != [p.id for p in pairs]:
            raise RuntimeError("the extraction returned the pairs in another order")
        return (
            np.array(run.f_x),
            np.array(run.f_mod),
            np.array(run.hidden(layer, "x")),
            np.array(run.hidden(layer, "mod")),
        )


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def _propensity(pairs, answers: list[str], delta: np.ndarray) -> np.ndarray:
    """How far removing the feature moves the model away from its answer on x: −Δ where that
    answer is the target (Δ is the target's log-odds shift), +Δ where it is not."""
    sign = np.array(
        [
            1.0 if a.strip() == p.target.strip() else -1.0
            for p, a in zip(pairs, answers, strict=True)
        ]
    )
    return -sign * np.asarray(delta, dtype=np.float64)


def _same_model(a: Any, b: Any) -> bool:
    """Whether two evaluation points run the same model (one object, or one path)."""
    return a is b or (isinstance(a, str) and a == b)


class _Evaluation:
    """One evaluation (see :func:`evaluate_training`), step by step."""

    def __init__(
        self,
        train_dir,
        pairs_path,
        labels_run,
        out,
        *,
        model,
        tokenizer,
        n_boot,
        seed,
        include_start,
        batch_tokens,
        plots,
        device,
        say,
    ) -> None:
        from introspect.models import resolve_device
        from introspect.training import checkpoint as ck

        self.t_start = time.perf_counter()
        self.device = resolve_device(device)
        self.train_dir, self.out = Path(train_dir), Path(out)
        self.pairs_path, self.labels_run = pairs_path, labels_run
        self.n_boot, self.seed, self.plots, self.say = n_boot, seed, plots, say
        self.include_start, self.batch_tokens = include_start, batch_tokens
        if not (self.train_dir / ck.TRAIN_JSON).is_file():
            raise EvalError(f"{train_dir}: no {ck.TRAIN_JSON} here (not a training directory)")
        self.doc = ck.read_json(self.train_dir / ck.TRAIN_JSON)
        self.layer = int(self.doc["layer"])
        # How the run rendered chat prompts (a checkpoint's saved tokenizer already carries it).
        self.chat_template = self.doc.get("chat_template", "model")
        self.checkpoints = ck.list_checkpoints(self.train_dir)
        if not self.checkpoints:
            raise EvalError(f"{train_dir}: no checkpoints to evaluate")
        self.base = self._base_model(model, tokenizer)
        self._read_inputs()

    def _base_model(self, model, tokenizer):
        """The starting model: the caller's object (checked against the weights the run
        recorded) or the name the run recorded."""
        spec = self.doc["model"]["spec"]
        if model is None:
            return spec
        from introspect.models import load_model

        lm = load_model(model, tokenizer=tokenizer)
        recorded = self.doc["model"].get("weights_hash")
        if recorded and lm.weights_hash != recorded:
            raise EvalError(
                f"{self.train_dir}: the model given is not the one it was trained "
                f"from (weights hash {lm.weights_hash[:12]}, recorded "
                f"{recorded[:12]})"
            )
        return lm

    def _read_inputs(self) -> None:
        from introspect.data import read_pairs
        from introspect.labels import labels_from_run, load_labels

        if not os.path.exists(self.pairs_path):
            raise EvalError(f"pair file {self.pairs_path} does not exist")
        self.pairs, _ = read_pairs(self.pairs_path)
        if not self.pairs:
            raise EvalError(f"{self.pairs_path}: no pairs")
        self.ids = [p.id for p in self.pairs]
        if not os.path.isdir(self.labels_run):
            raise EvalError(
                f"labels run {self.labels_run} is not a directory (give an extract run)"
            )
        self.y = labels_from_run(self.labels_run, ids=self.ids).align(self.ids)
        if not np.isfinite(self.y).all():
            raise EvalError(f"{self.labels_run}: some held-out labels are not finite")
        if (self.train_dir / "labels.json").is_file():
            seen = set(load_labels(self.train_dir / "labels.json").ids)
            overlap = sum(i in seen for i in self.ids)
            if overlap:
                self.say(
                    f"warning: {overlap} of the {len(self.ids)} held-out pairs were training pairs"
                )

    def _verbal_setup(self) -> None:
        """The verbal explainer's settings, the labels binned at the training run's threshold,
        and the fraction of them that is "unchanged", at which each checkpoint's own Δ is
        binned (rank-matched bins)."""
        from introspect.training import checkpoint as ck

        self.verbal_doc = None
        if not self.doc.get("verbal"):
            return
        self.verbal_doc = ck.read_json(self.train_dir / self.doc["verbal"])
        if self.verbal_doc.get("format") == "precursor":
            self._precursor_setup()
            return
        self.threshold = float(self.verbal_doc["threshold"])
        self.y_bins = bin_delta(self.y, self.threshold)
        self.unchanged_share = float(np.mean(np.abs(self.y) <= self.threshold))

    def _precursor_setup(self) -> None:
        """The label source's answer change on the held-out pairs (its answers recorded by the
        training run; pairs it has none for are answered by the starting model)."""
        from introspect.explain.verbal import precursor_labels
        from introspect.models import load_model
        from introspect.training.setup import source_answers

        known = self.verbal_doc.get("source_answers", {})
        missing = [p for p in self.pairs if p.id not in known]
        if missing:
            lm = load_model(self.base, dtype="float32", device=self.device)
            known = {**known, **source_answers(lm.model, self._tokenizer(lm), missing)}
        self.source = [known[p.id] for p in self.pairs]
        self.y_bins = np.array(
            precursor_labels([a for a, _ in self.source], [b for _, b in self.source]),
            dtype=object,
        )
        self.y_change = _propensity(self.pairs, [a for a, _ in self.source], self.y)

    def _tokenizer(self, lm):
        """``lm``'s tokenizer rendering chat prompts as the training run did (not changed)."""
        from introspect.models import with_chat_template

        return with_chat_template(lm.tokenizer, self.chat_template)[0]

    def plan(self) -> list[tuple[int, Any, list[tuple[str, Any]]]]:
        """``(step, model, explainers)`` of every evaluation point, step 0 first."""
        from introspect import explain

        ridge = explain.load(self.train_dir / "ridge-m0")
        plan: list[tuple[int, Any, list[tuple[str, Any]]]] = []
        if self.include_start:
            plan.append((0, self.base, [("ridge-m0", ridge)]))
        for step, path in self.checkpoints:
            model = str(path / "model") if self.doc["model_trains"] else self.base
            trained = [("probe", explain.load(path / "probe"))]
            if (path / "probe-diff").is_dir():
                trained.append(("probe-diff", explain.load(path / "probe-diff")))
            plan.append((step, model, [*trained, ("ridge-m0", ridge)]))
        return plan

    def measure(self, model, with_verbal: bool) -> Measured:
        """Re-extracts ``model`` on the held-out pairs; its objective log-probability and, with
        ``with_verbal``, its verbal answers."""
        from introspect.models import load_model

        lm = load_model(model, dtype="float32", device=self.device)
        got = Measured(
            *extract_arrays(
                lm,
                self.pairs,
                self.layer,
                self.batch_tokens,
                self.say,
                chat_template=self.chat_template,
            )
        )
        objective = self.doc.get("behaviour_objective", "none")
        if objective != "none":
            from introspect.training.objectives import TrainError, objective_logprob

            try:
                got.objective_logprob = objective_logprob(
                    lm.model, self._tokenizer(lm), self.pairs, objective
                )
            except TrainError as exc:
                self.say(f"note: no objective log-probability on the held-out pairs ({exc})")
        if with_verbal:
            from introspect.training.loop import verbal_explainer

            # Where the question follows an answer, it is this model's own answer on x.
            ex = verbal_explainer(lm.model, self._tokenizer(lm), self.verbal_doc)
            logprobs = ex.label_logprobs(self.pairs)
            got.verbal = list(ex.predict(self.pairs, logprobs=logprobs))
            got.verbal_score = ex.scores(self.pairs, logprobs=logprobs)
            if self.verbal_doc.get("format") == "precursor":
                got.answers = (
                    ex.greedy_answers(self.pairs, "x"),
                    ex.greedy_answers(self.pairs, "mod"),
                )
        return got

    def score(self, step: int, got: Measured, explainers, verbal: bool) -> list[dict]:
        """Prediction records of every explainer at ``step``."""
        from introspect.explain import ArraySource

        records = []
        for name, expl in explainers:
            diff = getattr(getattr(expl, "config", None), "mode", "direct") == "difference"
            pred = expl.predict(ArraySource(got.h, got.h_mod if diff else None, ids=self.ids))
            records.extend(
                prediction_records(
                    self.ids, pred, got.delta, self.y, checkpoint=step, explainer=name
                )
            )
        if verbal and got.verbal is not None:
            records.extend(self._verbal_records(step, got))
        return records

    def _verbal_records(self, step: int, got: Measured) -> list[dict]:
        """The verbal explainer's records: its answers against the checkpoint's own Δ binned at
        the labels' share of "unchanged" (``verbal``: rank-matched, since the scale of Δ moves
        as the model trains) and at the training run's threshold (``verbal@m0-threshold``), and
        its scalar score log p(more likely) − log p(less likely) against Δ (``verbal-score``)."""
        if got.answers is not None:
            return self._precursor_records(step, got)
        delta = got.delta
        own = float(np.quantile(np.abs(delta), self.unchanged_share)) if len(delta) else 0.0
        sides = [
            ("verbal", got.verbal, bin_delta(delta, own), self.y_bins),
            ("verbal@m0-threshold", got.verbal, bin_delta(delta, self.threshold), self.y_bins),
            ("verbal-score", got.verbal_score, delta, self.y),
        ]
        records = []
        for name, pred, current, labels in sides:
            records.extend(
                prediction_records(self.ids, pred, current, labels, checkpoint=step, explainer=name)
            )
        return records

    def _precursor_records(self, step: int, got: Measured) -> list[dict]:
        """The precursor format's records: the answers against the checkpoint's own answer
        change by argmax (Self) and the label source's (Orig); its scalar score against the
        answer-change propensity of Δ, oriented by whose answer it is (``verbal-score``)."""
        from introspect.explain.verbal import precursor_labels

        ax, am = got.answers
        current = np.array(precursor_labels(ax, am), dtype=object)
        change = _propensity(self.pairs, ax, got.delta)
        out = prediction_records(
            self.ids, got.verbal, current, self.y_bins, checkpoint=step, explainer="verbal"
        )
        out += prediction_records(
            self.ids, got.verbal_score, change, self.y_change, checkpoint=step,
            explainer="verbal-score",
        )  # fmt: skip
        return out

    def behaviour_row(self, step: int, model, got: Measured) -> dict[str, Any]:
        delta = got.delta
        return {
            "checkpoint": step,
            "model": model if isinstance(model, str) else model.model_id,
            "n": len(self.ids),
            "mean_f_x": float(got.f_x.mean()),
            "mean_f_mod": float(got.f_mod.mean()),
            "mean_delta": float(delta.mean()),
            "sd_delta": float(delta.std()),
            "frac_target_x": float((got.f_x > 0).mean()),
            "objective": self.doc.get("behaviour_objective", "none"),
            "objective_logprob": got.objective_logprob,
            "delta_vs_labels": _finite(pearson_r(delta, self.y)),
        }

    def run(self) -> dict[str, Any]:
        self._verbal_setup()
        plan = self.plan()
        verbal_steps = {s for s, _ in self.checkpoints} if self.verbal_doc is not None else set()
        records, behaviour, timings = [], [], []
        cached: tuple[Any, Measured] | None = None
        for i, (step, model, explainers) in enumerate(plan):
            t0 = time.perf_counter()
            wants_verbal = step in verbal_steps
            if cached is None or not _same_model(cached[0], model):
                # A model that does not train is measured once, with the verbal answers when any
                # of its points asks for them (a frozen run's step 0 does not; its checkpoints do).
                later = any(s in verbal_steps and _same_model(m, model) for s, m, _ in plan[i:])
                cached = (model, self.measure(model, wants_verbal or later))
            got = cached[1]
            records.extend(self.score(step, got, explainers, step in verbal_steps))
            behaviour.append(self.behaviour_row(step, model, got))
            dt = time.perf_counter() - t0
            timings.append({"checkpoint": step, "seconds": dt})
            self.say(
                f"checkpoint {step}: mean Δ {got.delta.mean():+.3f}, mean f(x) "
                f"{got.f_x.mean():+.3f}, r(Δ, labels) "
                f"{_fmt(behaviour[-1]['delta_vs_labels'])} ({dt:.1f} s)"
            )
        return self.write(plan, records, behaviour, timings)

    def write(self, plan, records, behaviour, timings) -> dict[str, Any]:
        from introspect.training import checkpoint as ck

        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "predictions.jsonl", records)
        rows = recompute_metrics(records, n_boot=self.n_boot, seed=self.seed)
        write_jsonl(out / "metrics.jsonl", rows)
        write_jsonl(out / "behaviour.jsonl", behaviour)
        files = ["predictions.jsonl", "metrics.jsonl", "behaviour.jsonl"]
        if self.plots:
            try:
                from introspect.evaluation.plots import plot_behaviour, plot_coupling

                plot_coupling(rows, out / "self_vs_orig.png")
                plot_behaviour(behaviour, out / "behaviour.png")
                files += ["self_vs_orig.png", "behaviour.png"]
            except ImportError as exc:
                self.say(f"warning: no plots ({exc}); pip install matplotlib")
        summary = {
            "train_dir": str(self.train_dir),
            "pairs": str(self.pairs_path),
            "labels": str(self.labels_run),
            "n": len(self.ids),
            "layer": self.layer,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "checkpoints": [s for s, _, _ in plan],
            "timings": timings,
            "wall_s": time.perf_counter() - self.t_start,
            "files": files,
        }
        ck.write_json(out / "eval.json", summary)
        return {**summary, "metrics": rows, "behaviour": behaviour}


def evaluate_training(
    train_dir: str | os.PathLike,
    pairs_path: str | os.PathLike,
    labels_run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: Any = None,
    tokenizer: Any = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    include_start: bool = True,
    batch_tokens: int = 4096,
    plots: bool = True,
    device: str = "auto",
    say: Callable[[str], None] = say_stderr,
) -> dict[str, Any]:
    """Evaluates every checkpoint of ``train_dir`` on the held-out pairs of ``pairs_path``
    against the fixed labels of ``labels_run`` (an extract run holding every held-out pair);
    writes the files listed in the module docstring into ``out`` and returns the summary (with
    its ``metrics`` rows and ``behaviour`` rows).

    ``model`` (with ``tokenizer``): the starting model as an object in memory, when the run was
    trained from one (:func:`introspect.train` with ``model=``); it must have the weights the
    run recorded. Without it the starting model is loaded by the name the run recorded. The
    checkpoints of a run whose model trained are loaded from their directories. ``device``:
    where models loaded by name run (``"auto"``: a GPU if one is visible).

    Example::

        summary = introspect.evaluate("build/train", "held.jsonl", "build/m0", "build/eval",
                                      model=model, tokenizer=tok)
        [r for r in summary["metrics"] if r["metric"] == "gap.pearson"]
    """
    job = _Evaluation(
        train_dir,
        pairs_path,
        labels_run,
        out,
        model=model,
        tokenizer=tokenizer,
        n_boot=n_boot,
        seed=seed,
        include_start=include_start,
        batch_tokens=batch_tokens,
        plots=plots,
        device=device,
        say=say,
    )
    return job.run()
