"""Concurrent post-training: the model trains on a behaviour objective while a probe explainer
trains on fixed labels, with checkpoints along the way.

Per step, on a minibatch of training pairs::

    loss = w_behaviour · L_behaviour + w_explain · L_explain + w_verbal · L_verbal + w_reg · L_reg

- ``L_behaviour`` (with ``concurrent``): mean −log p(objective's choice | x), teacher-forced over
  the choice's tokens (see :mod:`introspect.training.objectives`);
- ``L_explain``: MSE between a linear probe on the *current* model's hidden state of x (decoder
  ``layer`` at the last prompt token, standardised by M0's feature mean and scale) and the fixed
  labels (Δ of the source run, standardised by their mean and deviation), plus the same for a
  *difference* probe on h(x') − h(x) (with ``difference_probe``, the default; x' is run
  without gradient). Its gradient reaches the probes, and the model too only with
  ``explainer_grad_to_model``;
- ``L_verbal`` (with ``verbal``, which needs ``concurrent``): the model itself as the verbal
  explainer (:class:`~introspect.explain.VerbalExplainer`, binned labels, full fine-tuning). After
  x and the answer M0 gave on it, the model is asked how its answer would change without the
  feature, and trained (teacher-forced cross-entropy, gradient into the model) on the sentence of
  the fixed label binned at ``verbal_threshold`` (None: the 1/3 quantile of |label| over the
  training labels as trained on, after any noise, so about a third are "unchanged"). The
  threshold and M0's answers are kept in ``verbal.json`` so evaluation asks the same questions;
- ``L_reg`` (with ``concurrent`` and ``w_reg > 0``): mean KL(p_M0 ‖ p_θ) of the choice
  distribution on x' (the input without the cue), which keeps behaviour on non-cue inputs close
  to the start.

Without ``concurrent`` the model is frozen and only the probe trains: the control. The model is
kept in eval mode (no dropout), so a step is a deterministic function of the weights, the
optimizer state and the step number: minibatches come from a seeded permutation per epoch, and a
run resumed from a checkpoint follows the same trajectory as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from introspect.training import checkpoint as ck
from introspect.training.objectives import (
    OBJECTIVES,
    TrainError,
    choice_logps,
    encode_pairs,
    kl_to_reference,
    sft_targets,
    target_forward,
)

__all__ = ["TrainConfig", "batch_rows", "train"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_OPT_FILE = "optimizer.safetensors"
_INIT_FILE = "init.safetensors"
VERBAL_JSON = "verbal.json"
# Settings that may differ between a run and its resumption.
_MUTABLE = ("steps", "out", "optimizer_state", "device")


@dataclass(frozen=True)
class TrainConfig:
    model: str
    pairs: str
    labels: str
    out: str
    objective: str = "anti-sycophancy"
    concurrent: bool = False
    layer: int | None = None
    steps: int = 10
    batch_size: int = 8
    lr: float = 1e-5
    probe_lr: float = 1e-3
    weight_decay: float = 0.0
    w_behaviour: float = 1.0
    w_explain: float = 1.0
    w_reg: float = 0.0
    explainer_grad_to_model: bool = False
    difference_probe: bool = True
    verbal: bool = False
    w_verbal: float = 1.0
    verbal_threshold: float | None = None
    noise: float = 0.0
    shuffle_labels: bool = False
    checkpoint_every: int = 5
    optimizer_state: str = "last"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        problems = []
        if self.objective not in OBJECTIVES:
            problems.append(
                f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}"
            )
        for name in ("steps", "batch_size", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "probe_lr"):
            if not float(getattr(self, name)) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "w_behaviour", "w_explain", "w_reg", "w_verbal"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                problems.append(f"{name} must be a finite number >= 0, got {v}")
        if not 0.0 <= float(self.noise) <= 1.0:
            problems.append(f"noise must lie in [0, 1], got {self.noise}")
        try:
            from introspect.models import resolve_device

            resolve_device(self.device)
        except ValueError as exc:
            problems.append(str(exc))
        if self.optimizer_state not in ("last", "all"):
            problems.append(
                f"optimizer_state must be 'last' or 'all', got {self.optimizer_state!r}"
            )
        if self.verbal and not self.concurrent:
            problems.append(
                "the verbal explainer is the model itself: it needs concurrent training "
                "(the model is frozen)"
            )
        if self.verbal_threshold is not None and not (
            math.isfinite(float(self.verbal_threshold)) and float(self.verbal_threshold) >= 0
        ):
            problems.append(f"verbal_threshold must be >= 0, got {self.verbal_threshold}")
        if self.explainer_grad_to_model and not self.concurrent:
            problems.append(
                "explainer_grad_to_model needs concurrent training (the model is frozen)"
            )
        if self.concurrent and not (
            (self.objective != "none" and self.w_behaviour > 0)
            or self.w_reg > 0
            or (self.explainer_grad_to_model and self.w_explain > 0)
            or (self.verbal and self.w_verbal > 0)
        ):
            problems.append(
                "concurrent training with nothing that trains the model: give an objective with "
                "w_behaviour > 0, or w_reg > 0, or explainer_grad_to_model, or verbal"
            )
        if problems:
            raise TrainError("; ".join(problems))

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        d = dataclasses.asdict(self)
        for k in _MUTABLE:
            d.pop(k)
        return d


def batch_rows(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Rows of training step ``step`` (1-based): consecutive slices of a stream of per-epoch
    permutations seeded by ``(seed, epoch)``."""
    start = (step - 1) * batch_size
    rows, perms = [], {}
    for p in range(start, start + batch_size):
        epoch, k = divmod(p, n)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        rows.append(int(perms[epoch][k]))
    return np.array(rows, dtype=np.int64)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@torch.no_grad()
def _initial_pass(model, enc_x, enc_mod, layer: int, want_ref: bool, want_mod: bool, batch: int):
    """M0's hidden states of x at ``layer`` [N, D] (float64), of x' when ``want_mod`` (else
    None) and, when ``want_ref``, its choice log-probabilities on x' (a flat float64 array and
    the per-pair choice counts)."""
    hs, hms, refs = [], [], []
    for lo in range(0, len(enc_x), batch):
        chunk = enc_x[lo : lo + batch]
        _, h = target_forward(model, chunk, [0] * len(chunk), layer=layer)
        hs.append(h.double().cpu())
        if want_mod:
            chunk_mod = enc_mod[lo : lo + batch]
            _, hm = target_forward(model, chunk_mod, [0] * len(chunk_mod), layer=layer)
            hms.append(hm.double().cpu())
        if want_ref:
            refs.extend(choice_logps(model, enc_mod[lo : lo + batch]))
    h0 = torch.cat(hs).numpy()
    h0_mod = torch.cat(hms).numpy() if want_mod else None
    if not want_ref:
        return h0, h0_mod, np.zeros(0), np.zeros(0, dtype=np.int64)
    counts = np.array([len(r) for r in refs], dtype=np.int64)
    return h0, h0_mod, torch.cat(refs).double().cpu().numpy(), counts


def _standardiser(h: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature mean and scale (a near-constant feature keeps scale 1)."""
    mu = h.mean(0)
    sdv = h.std(0)
    sdv = np.where(sdv > 1e-8 * max(sdv.max(), 1e-30), sdv, 1.0)
    return torch.from_numpy(mu), torch.from_numpy(sdv)


def _probe_explainer(
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


def _verbal_setup(cfg: TrainConfig, model, tok, pairs, y: np.ndarray, out: Path, resume: bool):
    """``verbal.json`` (written on a fresh start, read on resume), the explainer on the model and
    its training examples (one per pair)."""
    from introspect.explain import VerbalConfig, base

    path = out / VERBAL_JSON
    if resume:
        doc = ck.read_json(path)
    else:
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
        ex = verbal_explainer(model, tok, {"config": base.config_to_dict(vc)})
        with torch.no_grad():
            answers = ex.answers(pairs)  # M0's answers on x, fixed from here on
        doc = {
            "config": base.config_to_dict(vc),
            "threshold": threshold,
            "answers": {p.id: a for p, a in zip(pairs, answers, strict=True)},
        }
    ex = verbal_explainer(model, tok, doc)
    answers = [doc["answers"][p.id] for p in pairs]
    targets = ex.target_labels(pairs, y)
    if not resume:
        doc["label_counts"] = {k: targets.count(k) for k in ("unchanged", "toward", "away")}
        ck.write_json(path, doc)
    return ex, ex.examples(pairs, targets, answers=answers), doc


def train(
    config: TrainConfig, *, resume: bool = False, say: Callable[[str], None] = _say
) -> dict[str, Any]:
    """Runs (or, with ``resume``, continues) training into ``config.out``; returns the contents
    of ``train.json``. Raises :class:`TrainError`, :class:`~introspect.labels.LabelError`,
    :class:`~introspect.data.PairError` or :class:`~introspect.run.RunError` for bad inputs."""
    from safetensors.torch import load_file, save_file

    from introspect.data import read_pairs
    from introspect.explain import ArraySource, ProbeConfig, ProbeExplainer
    from introspect.labels import apply_noise, labels_from_run, save_labels, shuffle_labels
    from introspect.models import load_model, resolve_device

    cfg = config
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    t_start = time.perf_counter()
    existing = ck.list_checkpoints(out)
    if resume:
        if not existing:
            raise TrainError(f"{out}: no checkpoint to resume from")
        saved = ck.read_json(out / ck.TRAIN_JSON)
        if saved.get("identity") != cfg.identity():
            diff = sorted(
                k
                for k in set(saved.get("identity", {})) | set(cfg.identity())
                if saved.get("identity", {}).get(k) != cfg.identity().get(k)
            )
            raise TrainError(f"{out}: cannot resume with different settings ({', '.join(diff)})")
    elif existing or (out / ck.TRAIN_JSON).exists():
        raise TrainError(f"{out}: already holds a training run; pass --resume to continue it")

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
    active = cfg.concurrent and cfg.objective != "none"
    targets = sft_targets(pairs, cfg.objective if active else "none")

    out.mkdir(parents=True, exist_ok=True)
    start_step, log = 0, []
    if resume:
        start_step, last = existing[-1]
        if not (last / _OPT_FILE).is_file():
            raise TrainError(f"{last}: has no optimizer state; cannot resume from it")
        state_json = ck.read_json(last / "state.json")
        log = list(state_json["log"])
        src = str(last / "model") if cfg.concurrent else cfg.model
        lm = load_model(src, dtype="float32", device=device)
        base_info = saved["model"]
    else:
        lm = load_model(cfg.model, dtype="float32", device=device)
        base_info = {
            "spec": cfg.model,
            "weights_hash": lm.weights_hash,
            "n_layers": lm.n_layers,
            "hidden_size": lm.hidden_size,
        }
    model, tok = lm.model, lm.tokenizer
    layer = cfg.layer if cfg.layer is not None else lm.n_layers // 2
    if layer < 0:
        layer += lm.n_layers
    if not 0 <= layer < lm.n_layers:
        raise TrainError(
            f"layer {cfg.layer} out of range: the model has layers 0..{lm.n_layers - 1}"
        )
    model.eval()
    torch.manual_seed(cfg.seed)

    enc_x = encode_pairs(tok, pairs, "x")
    want_ref = cfg.concurrent and cfg.w_reg > 0
    enc_mod = encode_pairs(tok, pairs, "mod") if want_ref or cfg.difference_probe else None
    y = labels.values.astype(np.float64)
    ybar, ysd = float(y.mean()), float(y.std()) or 1.0
    if resume:
        init = load_file(str(out / _INIT_FILE))
        mu64, sd64 = init["feat_mean"], init["feat_scale"]
        mu_d64, sd_d64 = init.get("diff_mean"), init.get("diff_scale")
        ref_flat, ref_counts = init["ref_logps"], init["ref_counts"]
    else:
        t0 = time.perf_counter()
        h0, h0_mod, ref_flat_np, counts_np = _initial_pass(
            model,
            enc_x,
            enc_mod,
            layer,
            want_ref,
            cfg.difference_probe,
            max(cfg.batch_size, 8),
        )
        mu64, sd64 = _standardiser(h0)
        ref_flat, ref_counts = torch.from_numpy(ref_flat_np), torch.from_numpy(counts_np)
        init_tensors = {
            "feat_mean": mu64,
            "feat_scale": sd64,
            "ref_logps": ref_flat,
            "ref_counts": ref_counts,
        }
        mu_d64 = sd_d64 = None
        if cfg.difference_probe:
            mu_d64, sd_d64 = _standardiser(h0_mod - h0)
            init_tensors.update(diff_mean=mu_d64, diff_scale=sd_d64)
        save_file(init_tensors, str(out / _INIT_FILE))
        save_labels(labels, out / "labels.json")
        folds = min(5, len(pairs))
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
        say(f"M0 pass over {len(pairs)} training pairs: {time.perf_counter() - t0:.1f} s")
    refs = list(torch.split(ref_flat, [int(c) for c in ref_counts])) if len(ref_counts) else []
    verbal = verbal_items = verbal_doc = None
    if cfg.verbal:
        verbal, verbal_items, verbal_doc = _verbal_setup(cfg, model, tok, pairs, y, out, resume)
        if not resume:
            counts = verbal_doc["label_counts"]
            say(
                f"verbal labels at threshold {verbal_doc['threshold']:.4g}: "
                + ", ".join(f"{k} {v}" for k, v in counts.items())
            )
    mu32, sd32 = mu64.float().to(device), sd64.float().to(device)
    y_std = torch.from_numpy((y - ybar) / ysd).float().to(device)

    for p in model.parameters():
        p.requires_grad_(cfg.concurrent)
    d = lm.hidden_size
    w = torch.zeros(1, d, device=device, requires_grad=True)
    b = torch.zeros(1, device=device, requires_grad=True)
    # The difference probe reads h(x') − h(x) (same layer and position).
    w_d = torch.zeros(1, d, device=device, requires_grad=True)
    b_d = torch.zeros(1, device=device, requires_grad=True)
    probe_params = [w, b] + ([w_d, b_d] if cfg.difference_probe else [])
    if cfg.difference_probe and mu_d64 is None:
        raise TrainError(f"{out}: the starting pass has no difference features; start afresh")
    mu_d32 = mu_d64.float().to(device) if cfg.difference_probe else None
    sd_d32 = sd_d64.float().to(device) if cfg.difference_probe else None
    groups = [{"params": probe_params, "lr": cfg.probe_lr, "weight_decay": 0.0}]
    if cfg.concurrent:
        model_params = [p for p in model.parameters() if p.requires_grad]
        groups.insert(0, {"params": model_params, "lr": cfg.lr, "weight_decay": cfg.weight_decay})
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    if resume:
        st = load_file(str(last / "state.safetensors"))
        with torch.no_grad():
            w.copy_(st["probe.weight"])
            b.copy_(st["probe.bias"])
            if cfg.difference_probe:
                w_d.copy_(st["probe_diff.weight"])
                b_d.copy_(st["probe_diff.bias"])
        torch.set_rng_state(st["rng.torch"])
        ck.load_optimizer(opt, last / _OPT_FILE)
        say(f"resumed from {last} (step {start_step})")

    info = {
        "format_version": FORMAT_VERSION,
        "identity": cfg.identity(),
        "config": dataclasses.asdict(cfg),
        "model": base_info,
        "layer": layer,
        "n_pairs": len(pairs),
        "labels_source": labels.source,
        "label_mean": ybar,
        "label_sd": ysd,
        "model_trains": bool(cfg.concurrent),
        "device": device,
        "behaviour_objective": cfg.objective if active else "none",
        "verbal": None if verbal_doc is None else VERBAL_JSON,
    }

    def write_train_json(step: int, complete: bool) -> dict[str, Any]:
        doc = {
            **info,
            "step": step,
            "complete": complete,
            "log": log,
            "checkpoints": [{"step": s, "path": p.name} for s, p in ck.list_checkpoints(out)],
        }
        ck.write_json(out / ck.TRAIN_JSON, doc)
        return doc

    def save_checkpoint(step: int) -> None:
        final = out / ck.checkpoint_name(step)
        tmp = out / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if cfg.concurrent:
            model.save_pretrained(tmp / "model")
            tok.save_pretrained(tmp / "model")
        _probe_explainer(cfg, layer, w, b, mu64, sd64, ybar, ysd, step).save(tmp / "probe")
        tensors = {
            "probe.weight": w.detach().cpu().clone(),
            "probe.bias": b.detach().cpu().clone(),
            "rng.torch": torch.get_rng_state(),
        }
        if cfg.difference_probe:
            diff = _probe_explainer(
                cfg, layer, w_d, b_d, mu_d64, sd_d64, ybar, ysd, step, mode="difference"
            )
            diff.save(tmp / "probe-diff")
            tensors.update({"probe_diff.weight": w_d.detach().cpu().clone()})
            tensors.update({"probe_diff.bias": b_d.detach().cpu().clone()})
        save_file(tensors, str(tmp / "state.safetensors"))
        ck.save_optimizer(opt, tmp / _OPT_FILE)
        ck.write_json(
            tmp / "state.json",
            {"step": step, "log": log, "layer": layer, "identity": cfg.identity()},
        )
        ck.replace_dir(tmp, final)
        if cfg.optimizer_state == "last":
            for s, p in ck.list_checkpoints(out):
                if s != step and (p / _OPT_FILE).exists():
                    (p / _OPT_FILE).unlink()
        write_train_json(step, False)

    n = len(pairs)
    for step in range(start_step + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        rows = batch_rows(n, cfg.batch_size, step, cfg.seed)
        y_batch = y_std[torch.from_numpy(rows).to(device)]
        bx = [enc_x[i] for i in rows]
        bt = [targets[i] for i in rows]
        if cfg.concurrent:
            logp_t, h = target_forward(model, bx, bt, layer=layer)
        else:
            with torch.no_grad():
                logp_t, h = target_forward(model, bx, bt, layer=layer)
        h_in = h if cfg.explainer_grad_to_model else h.detach()
        pred = ((h_in - mu32) / sd32) @ w.t() + b
        l_exp = torch.mean((pred[:, 0] - y_batch) ** 2)
        zero = torch.zeros((), dtype=l_exp.dtype)
        l_diff = zero
        if cfg.difference_probe:
            bm = [enc_mod[i] for i in rows]
            with torch.set_grad_enabled(cfg.concurrent and cfg.explainer_grad_to_model):
                _, h_mod = target_forward(model, bm, [0] * len(bm), layer=layer)
            d_in = h_mod - h_in
            pred_d = ((d_in - mu_d32) / sd_d32) @ w_d.t() + b_d
            l_diff = torch.mean((pred_d[:, 0] - y_batch) ** 2)
        l_beh = -logp_t.mean() if active else zero
        l_reg = zero
        if cfg.concurrent and cfg.w_reg > 0:
            cur = choice_logps(model, [enc_mod[i] for i in rows])
            l_reg = kl_to_reference(cur, [refs[i] for i in rows])
        l_verbal = zero
        if verbal is not None:
            l_verbal, _ = verbal.sentence_loss([verbal_items[i] for i in rows])
        loss = (
            cfg.w_behaviour * l_beh
            + cfg.w_explain * (l_exp + l_diff)
            + cfg.w_verbal * l_verbal
            + cfg.w_reg * l_reg
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rec = {
            "step": step,
            "loss": float(loss.detach()),
            "behaviour": float(l_beh.detach()),
            "explain": float(l_exp.detach()),
            "explain_diff": float(l_diff.detach()),
            "verbal": float(l_verbal.detach()),
            "reg": float(l_reg.detach()),
            "target_logprob": float(logp_t.detach().mean()),
            "seconds": time.perf_counter() - t0,
        }
        log.append(rec)
        say(
            f"step {step}/{cfg.steps}: loss {rec['loss']:.4f} (behaviour {rec['behaviour']:.4f}, "
            f"explain {rec['explain']:.4f}, diff {rec['explain_diff']:.4f}, "
            f"verbal {rec['verbal']:.4f}, reg {rec['reg']:.4f}) "
            f"{rec['seconds']:.1f} s"
        )
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(step)
    if start_step >= cfg.steps:
        say(f"{out}: already at step {start_step} >= --steps {cfg.steps}; nothing to do")
    doc = write_train_json(max(start_step, cfg.steps), True)
    doc["wall_s"] = time.perf_counter() - t_start
    return doc
