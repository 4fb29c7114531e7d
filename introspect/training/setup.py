"""What a training run reads and prepares before its first step: the output directory's state,
the pairs and labels, the model (loaded by name, or an object the caller holds), M0's pass over
the training pairs, the probes as explainers and the verbal explainer's fixed questions.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from introspect.training import checkpoint as ck
from introspect.training.config import TrainConfig
from introspect.training.objectives import TrainError, choice_logps, target_forward

__all__ = [
    "VERBAL_JSON",
    "check_out",
    "fit_ridge_m0",
    "initial_pass",
    "kept_state",
    "probe_explainer",
    "read_inputs",
    "resolve_model",
    "standardiser",
    "verbal_explainer",
    "verbal_setup",
]

VERBAL_JSON = "verbal.json"
BINNED = ("unchanged", "toward", "away")


def check_out(
    cfg: TrainConfig, out: Path, resume: bool, chat_template: str
) -> tuple[list[tuple[int, Path]], dict[str, Any] | None]:
    """The checkpoints already under ``out`` and, with ``resume``, the saved ``train.json``,
    after checking that a fresh run starts in an unused directory and a resumed one continues
    a run of the same settings."""
    existing = ck.list_checkpoints(out)
    if not resume:
        if existing or (out / ck.TRAIN_JSON).exists():
            raise TrainError(f"{out}: already holds a training run; pass --resume to continue it")
        return existing, None
    if not existing:
        stopped = " (the run stopped before its first checkpoint)" if out.is_dir() else ""
        raise TrainError(
            f"{out}: no checkpoint to resume from{stopped}; run the same command without "
            "--resume to start it over"
        )
    saved = ck.read_json(out / ck.TRAIN_JSON)
    if saved.get("identity") != cfg.identity():
        diff = sorted(
            k
            for k in set(saved.get("identity", {})) | set(cfg.identity())
            if saved.get("identity", {}).get(k) != cfg.identity().get(k)
        )
        raise TrainError(f"{out}: cannot resume with different settings ({', '.join(diff)})")
    if saved.get("chat_template", "model") != chat_template:
        raise TrainError(f"{out}: cannot resume with different settings (chat_template)")
    return existing, saved


def read_inputs(cfg: TrainConfig) -> tuple[list[Any], Any]:
    """The training pairs and their labels (the source run's Δ, with any noise or shuffling
    applied)."""
    from introspect.data import read_pairs
    from introspect.labels import apply_noise, labels_from_run, shuffle_labels

    if not os.path.exists(cfg.pairs):
        raise TrainError(f"pair file {cfg.pairs} does not exist")
    pairs, _ = read_pairs(cfg.pairs)
    if len(pairs) < 2:
        raise TrainError(f"{cfg.pairs}: training needs at least 2 pairs, got {len(pairs)}")
    ids = [p.id for p in pairs]
    if not os.path.isdir(cfg.labels):
        raise TrainError(f"labels run {cfg.labels} is not a directory (give an extract run)")
    labels = labels_from_run(cfg.labels, ids=ids)
    if not np.isfinite(labels.values).all():
        bad = [i for i, v in zip(ids, labels.values, strict=True) if not np.isfinite(v)]
        raise TrainError(f"{cfg.labels}: labels of {len(bad)} pair(s) are not finite: {bad[:5]}")
    if cfg.noise > 0:
        labels = apply_noise(labels, cfg.noise, cfg.seed).labels
    if cfg.shuffle_labels:
        labels = shuffle_labels(labels, cfg.seed)
    return pairs, labels


def _on_device(model: Any, device: str) -> bool:
    want = torch.device(device)
    have = next(model.parameters()).device
    if have.type != want.type:
        return False
    if want.index is None and have.type == "cuda":
        return have.index == torch.cuda.current_device()
    return want.index is None or have.index == want.index


def resolve_model(
    cfg: TrainConfig,
    device: str,
    model: Any,
    tokenizer: Any,
    last: Path | None,
    saved: dict[str, Any] | None,
) -> Any:
    """The :class:`~introspect.models.LoadedModel` a run trains or reads.

    By name (``model`` None): ``cfg.model`` in float32 on ``device``, or on resume of a
    concurrent run the model of the last checkpoint ``last``. With a model object: a
    concurrent run trains a float32 copy of it on ``device`` (on resume, the checkpoint's model
    as by name); a frozen run reads the object itself, which must already be on ``device`` and,
    on resume, have the weights hash the run recorded (in ``saved``)."""
    from introspect.models import load_model

    if last is not None and cfg.concurrent:
        return load_model(str(last / "model"), dtype="float32", device=device)
    if model is None:
        if saved is not None and saved["model"].get("in_memory"):
            raise TrainError(
                f"{cfg.out}: this run read a model object in memory (model.in_memory); "
                "pass the same model to resume it"
            )
        return load_model(cfg.model, dtype="float32", device=device)
    lm = load_model(model, tokenizer=tokenizer)
    if cfg.concurrent:
        trained = copy.deepcopy(lm.model).to(device=device, dtype=torch.float32)
        return dataclasses.replace(lm, model=trained)
    if not _on_device(lm.model, device):
        raise TrainError(
            f"the model passed is on {next(lm.model.parameters()).device}, but the run is on "
            f"{device}: move the model there, or give device= in the TrainConfig"
        )
    if saved is not None and saved["model"]["weights_hash"] != lm.weights_hash:
        how = "" if saved["model"].get("in_memory") else ", and it started from a model by name"
        raise TrainError(
            f"{cfg.out}: the model passed is not the one this run started from (weights hash "
            f"{lm.weights_hash[:12]}, recorded {saved['model']['weights_hash'][:12]}{how})"
        )
    return lm


@contextlib.contextmanager
def kept_state(model: Any) -> Iterator[None]:
    """Restores, on leaving, the train/eval mode of every module and the ``requires_grad`` of
    every parameter of ``model`` (a model object, a :class:`~introspect.models.LoadedModel` or
    None), so that a run that reads the caller's model leaves it as it was."""
    if model is not None and not hasattr(model, "parameters"):
        model = getattr(model, "model", None)  # a LoadedModel
    if model is None:
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, wanted in grads:
            p.requires_grad_(wanted)


@torch.no_grad()
def initial_pass(model, enc_x, enc_mod, layer: int, want_ref: bool, want_mod: bool, batch: int):
    """M0's hidden states of x at ``layer`` [N, D] (float64), of x' when ``want_mod`` (else
    None) and, when ``want_ref``, its choice log-probabilities on x' and on x, the behavioural
    regulariser's reference: ``{"mod": (flat, counts), "x": (flat, counts)}`` (float64 flat
    arrays and the per-pair choice counts; empty without ``want_ref``)."""
    hs, hms = [], []
    refs: dict[str, list[torch.Tensor]] = {"mod": [], "x": []}
    for lo in range(0, len(enc_x), batch):
        chunk = enc_x[lo : lo + batch]
        _, h = target_forward(model, chunk, [0] * len(chunk), layer=layer)
        hs.append(h.double().cpu())
        if want_mod:
            chunk_mod = enc_mod[lo : lo + batch]
            _, hm = target_forward(model, chunk_mod, [0] * len(chunk_mod), layer=layer)
            hms.append(hm.double().cpu())
        if want_ref:
            refs["mod"].extend(choice_logps(model, enc_mod[lo : lo + batch]))
            refs["x"].extend(choice_logps(model, chunk))
    h0 = torch.cat(hs).numpy()
    h0_mod = torch.cat(hms).numpy() if want_mod else None
    return h0, h0_mod, {side: flat_logps(got) for side, got in refs.items()}


def flat_logps(got: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt choice log-probabilities as one float64 array and the per-prompt counts."""
    counts = np.array([len(r) for r in got], dtype=np.int64)
    values = torch.cat(got).double().cpu().numpy() if got else np.zeros(0)
    return values, counts


def standardiser(h: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature mean and scale (a near-constant feature keeps scale 1)."""
    mu = h.mean(0)
    sdv = h.std(0)
    sdv = np.where(sdv > 1e-8 * max(sdv.max(), 1e-30), sdv, 1.0)
    return torch.from_numpy(mu), torch.from_numpy(sdv)


def fit_ridge_m0(
    cfg: TrainConfig, layer: int, h0: np.ndarray, ids: list[str], labels: Any, out: Path
) -> None:
    """The ridge probe fitted once on M0's hidden states, saved as ``ridge-m0`` (a frozen
    explainer evaluation compares the trained probes with)."""
    from introspect.explain import ArraySource, ProbeConfig, ProbeExplainer

    bad = [i for i, row in zip(ids, np.isfinite(h0).all(axis=1), strict=True) if not row]
    if bad:
        raise TrainError(
            f"the starting model's hidden states at layer {layer} are not finite (NaN or inf) "
            f"on {len(bad)} training pair(s): {bad[:5]}"
        )
    folds = min(5, len(ids))
    ridge = ProbeExplainer(
        ProbeConfig(
            mode="direct",
            layers=(layer,),
            position="last",
            solver="ridge",
            cv_folds=max(2, folds),
            seed=cfg.seed,
        )
    )
    ridge.fit(ArraySource(h0, ids=ids), labels)
    ridge.save(out / "ridge-m0")


def probe_explainer(
    cfg: TrainConfig, layer: int, w, b, mu, sd, ybar, ysd, step: int, mode: str = "direct"
):
    """The probe as a :class:`~introspect.explain.ProbeExplainer` on raw hidden states (of x for
    ``mode="direct"``, h(x') − h(x) for ``"difference"``)."""
    from introspect.explain import ProbeConfig, ProbeExplainer

    pc = ProbeConfig(
        mode=mode,
        layers=(layer,),
        position="last",
        solver="gradient",
        lr=cfg.probe_lr,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
    probe = ProbeExplainer(pc)
    w64 = w.detach().cpu().double() / sd
    weight = w64 * ysd
    bias = (b.detach().cpu().double() - w64 @ mu) * ysd + ybar
    probe.params = {"weight": weight.float().contiguous(), "bias": bias.float().contiguous()}
    probe.dim = int(w.shape[1])
    probe.layers = [layer]
    probe.position = "last"
    probe.info = {"solver": "concurrent", "step": int(step)}
    return probe


def verbal_explainer(model, tokenizer, doc: dict[str, Any]):
    """The verbal explainer of ``verbal.json`` (``doc``) on ``model``: the model answers in the
    binned sentences, scored as :meth:`~introspect.explain.VerbalExplainer.predict` does."""
    from introspect.explain import VerbalExplainer, base

    config = base.config_from_dict(doc["config"])
    ex = VerbalExplainer(config, model=model, tokenizer=tokenizer)
    ex.fitted = True
    return ex


def verbal_setup(
    cfg: TrainConfig, model, tok, pairs, y: np.ndarray, out: Path, resume: bool, m0_answers=None
):
    """``verbal.json`` (written on a fresh start, read on resume), the explainer on the model and
    its training examples (one per pair). ``m0_answers``: the model's greedy answers on x and x'
    (``{id: [on x, on x']}``) where the starting pass already measured them."""
    path = out / VERBAL_JSON
    if resume:
        doc = ck.read_json(path)
    elif cfg.verbal_format == "precursor":
        doc = _precursor_doc(cfg, model, tok, pairs, m0_answers)
    else:
        doc = _binned_doc(cfg, model, tok, pairs, y, m0_answers)
    ex = verbal_explainer(model, tok, doc)
    if doc.get("format") == "precursor":
        targets = [doc["labels"][p.id] for p in pairs]
        examples = ex.examples(pairs, targets)
    else:
        answers = [doc["answers"][p.id] for p in pairs]
        targets = ex.target_labels(pairs, y)
        examples = ex.examples(pairs, targets, answers=answers)
    if not resume:
        kinds = sorted(set(targets)) if doc.get("format") == "precursor" else BINNED
        doc["label_counts"] = {k: targets.count(k) for k in kinds}
        ck.write_json(path, doc)
    return ex, examples, doc


def _binned_doc(cfg: TrainConfig, model, tok, pairs, y: np.ndarray, m0_answers) -> dict[str, Any]:
    """The binned format's settings: the threshold and M0's answers on x (shown before the
    question, fixed from here on; from ``m0_answers`` where given)."""
    from introspect.explain import VerbalConfig, base

    if cfg.verbal_threshold is not None:
        threshold = float(cfg.verbal_threshold)
    else:
        threshold = float(np.quantile(np.abs(y), 1.0 / 3.0))
    vc = VerbalConfig(
        model=cfg.model,
        labels="binned",
        threshold=threshold,
        adapter="full",
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )
    if m0_answers is not None:
        answers = [m0_answers[p.id][0] for p in pairs]
    else:
        ex = verbal_explainer(model, tok, {"config": base.config_to_dict(vc)})
        with torch.no_grad():
            answers = ex.answers(pairs)
    return {
        "config": base.config_to_dict(vc),
        "threshold": threshold,
        "answers": {p.id: a for p, a in zip(pairs, answers, strict=True)},
    }


def read_answers(path: str | os.PathLike) -> dict[str, list[str]]:
    """A label source's greedy answers ``{pair id: [answer on x, answer on x']}``."""
    doc = ck.read_json(Path(path))
    if not isinstance(doc, dict) or not all(
        isinstance(v, list) and len(v) == 2 for v in doc.values()
    ):
        raise TrainError(f"{path}: not an answers file ({{id: [answer on x, answer on x']}})")
    return doc


def source_answers(model, tok, pairs) -> dict[str, list[str]]:
    """The model's greedy answers on x and on x' of every pair (the precursor's labels)."""
    from introspect.explain import VerbalConfig, base

    vc = VerbalConfig.precursor(adapter="full")
    ex = verbal_explainer(model, tok, {"config": base.config_to_dict(vc)})
    with torch.no_grad():
        ax, am = ex.greedy_answers(pairs, "x"), ex.greedy_answers(pairs, "mod")
    return {p.id: [a, b] for p, a, b in zip(pairs, ax, am, strict=True)}


def _precursor_doc(cfg: TrainConfig, model, tok, pairs, m0_answers) -> dict[str, Any]:
    """The precursor format's labels: the label source's answer change by greedy argmax (from
    ``cfg.verbal_answers``, else the starting model's own answers), with the run's label noise
    (a seeded fraction resampled from the labels' own distribution) or shuffling applied."""
    from introspect.explain import VerbalConfig, base
    from introspect.explain.verbal import precursor_labels

    if cfg.verbal_answers is not None:
        answers = read_answers(cfg.verbal_answers)
        missing = [p.id for p in pairs if p.id not in answers]
        if missing:
            raise TrainError(f"{cfg.verbal_answers}: no answers for pairs {missing[:5]}")
    elif m0_answers is not None:
        answers = m0_answers
    else:
        answers = source_answers(model, tok, pairs)
    labels = precursor_labels([answers[p.id][0] for p in pairs], [answers[p.id][1] for p in pairs])
    rng = np.random.default_rng([cfg.seed, 7])
    if cfg.noise > 0:
        pick = rng.random(len(labels)) < cfg.noise
        drawn = rng.integers(0, len(labels), len(labels))
        labels = [labels[int(d)] if k else v for v, k, d in zip(labels, pick, drawn, strict=True)]
    if cfg.shuffle_labels:
        labels = [labels[int(i)] for i in rng.permutation(len(labels))]
    vc = VerbalConfig.precursor(
        model=cfg.model, adapter="full", batch_size=cfg.batch_size, seed=cfg.seed
    )
    return {
        "config": base.config_to_dict(vc),
        "format": "precursor",
        "answers_file": cfg.verbal_answers,
        "source_answers": answers,
        "labels": {p.id: lab for p, lab in zip(pairs, labels, strict=True)},
    }
