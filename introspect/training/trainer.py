"""The training run as an object: :class:`Trainer` prepares a run (``setup``), trains one
minibatch (``step``), writes checkpoints (``checkpoint``) and runs the whole loop (``run``).
What a step optimises is described in :mod:`introspect.training.loop`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from introspect.training import checkpoint as ck
from introspect.training import setup as su
from introspect.training.config import TrainConfig
from introspect.training.objectives import (
    TrainError,
    choice_logps,
    encode_pairs,
    kl_to_reference,
    sft_targets,
    target_forward,
)
from introspect.training.packed import (
    StepItem,
    initial_pass_packed,
    packed_problem,
    step_forward,
    step_item,
)

__all__ = ["FORMAT_VERSION", "Trainer", "batch_rows"]

FORMAT_VERSION = 1
_OPT_FILE = "optimizer.safetensors"
_INIT_FILE = "init.safetensors"

logger = logging.getLogger(__name__)


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


@dataclass
class _Outputs:
    """What a step reads from the model on its minibatch (see :meth:`Trainer._losses`)."""

    logp_t: torch.Tensor  # [B] log p(objective's choice | x)
    h: torch.Tensor  # [B, D] the probe layer at x's last token
    h_mod: torch.Tensor | None = None  # [B, D] the same on x' (the difference probe)
    cur_x: list[torch.Tensor] | None = None  # every choice's log p after x (the regulariser)
    cur_mod: list[torch.Tensor] | None = None  # and after x'
    verbal: torch.Tensor | None = None  # mean cross-entropy of the label sentences' tokens


def _split(flat: torch.Tensor | None, counts: torch.Tensor | None) -> list[torch.Tensor]:
    """Per-pair tensors of a flat tensor and its per-pair counts (none when empty)."""
    if flat is None or counts is None or not len(counts):
        return []
    return list(torch.split(flat, [int(c) for c in counts]))


class Trainer:
    """One run into ``config.out`` (see :func:`introspect.training.train` for the arguments).

    ``setup()`` reads the inputs and labels, gets the model, makes (or, on resume, reads) M0's
    pass, the probes, the verbal explainer and the optimizer, and on resume restores the last
    checkpoint; ``step(k)`` trains the minibatch of step ``k``; ``checkpoint(k)`` writes the
    checkpoint of step ``k``; ``run()`` does all of it and returns ``train.json``."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: Any = None,
        tokenizer: Any = None,
        chat_template: str = "model",
        resume: bool = False,
        say: Callable[[str], None],
    ) -> None:
        from introspect.models import CHAT_TEMPLATE_CHOICES, resolve_device

        if model is None and tokenizer is not None:
            raise TrainError("a tokenizer was given without its model: pass model= as well")
        if chat_template not in CHAT_TEMPLATE_CHOICES:
            raise TrainError(
                f"chat_template must be one of {', '.join(CHAT_TEMPLATE_CHOICES)}, "
                f"not {chat_template!r}"
            )
        self.cfg = config
        self.given = (model, tokenizer)
        self.chat_template = chat_template
        self.resume = resume
        self.say = say
        self.device = resolve_device(config.device)
        self.out = Path(config.out)
        self.t_start = time.perf_counter()
        self.start_step = 0
        self.last: Path | None = None
        self.log: list[dict[str, Any]] = []

    # ---------------------------------------------------------------------------------------
    # Setup

    def setup(self) -> None:
        """Everything a step needs, in the order a run has always made it (the RNG is seeded
        after the model is loaded)."""
        cfg = self.cfg
        self.existing, self.saved = su.check_out(cfg, self.out, self.resume, self.chat_template)
        self.pairs, self.labels = su.read_inputs(cfg)
        self.active = cfg.concurrent and cfg.objective != "none"
        self.targets = sft_targets(self.pairs, cfg.objective if self.active else "none")
        self.out.mkdir(parents=True, exist_ok=True)
        self._model()
        self._initial()
        self._verbal()
        self._probes()
        self._optimizer()
        self.info = self._info()

    def _model(self) -> None:
        """The model and its tokenizer (under the chat template asked for), the probe layer and,
        on resume, the log of the last checkpoint."""
        from introspect.models import with_chat_template

        cfg = self.cfg
        if self.resume:
            self.start_step, self.last = self.existing[-1]
            if not (self.last / _OPT_FILE).is_file():
                raise TrainError(f"{self.last}: has no optimizer state; cannot resume from it")
            state_json = ck.read_json(self.last / "state.json")
            self.log = list(state_json["log"])
        lm = su.resolve_model(cfg, self.device, *self.given, self.last, self.saved)
        if self.resume:
            self.base_info = self.saved["model"]
        else:
            self.base_info = {
                "spec": cfg.model,
                "weights_hash": lm.weights_hash,
                "n_layers": lm.n_layers,
                "hidden_size": lm.hidden_size,
            }
            if self.given[0] is not None:
                self.base_info["in_memory"] = True
        self.lm = lm
        self.model = lm.model
        self.tok, _ = with_chat_template(lm.tokenizer, self.chat_template)
        layer = cfg.layer if cfg.layer is not None else lm.n_layers // 2
        if layer < 0:
            layer += lm.n_layers
        if not 0 <= layer < lm.n_layers:
            raise TrainError(
                f"layer {cfg.layer} out of range: the model has layers 0..{lm.n_layers - 1}"
            )
        self.layer = layer
        self.model.eval()
        torch.manual_seed(cfg.seed)

    def _initial(self) -> None:
        """The encoded pairs, the standardised labels, how a step runs (packed or not) and what
        M0 gives on the training pairs (measured on a fresh start and saved, read back on
        resume)."""
        from safetensors.torch import load_file

        cfg = self.cfg
        self.enc_x = encode_pairs(self.tok, self.pairs, "x")
        self.enc_mod = encode_pairs(self.tok, self.pairs, "mod")
        want_ref = cfg.concurrent and cfg.w_reg > 0
        self.y = self.labels.values.astype(np.float64)
        self.ybar, self.ysd = float(self.y.mean()), float(self.y.std()) or 1.0
        self._choose_step()
        self.m0_answers = None
        if self.resume:
            init = load_file(str(self.out / _INIT_FILE))
            self.mu64, self.sd64 = init["feat_mean"], init["feat_scale"]
            self.mu_d64, self.sd_d64 = init.get("diff_mean"), init.get("diff_scale")
            if want_ref and "ref_logps_x" not in init:
                raise TrainError(
                    f"{self.out}: its starting pass has no reference on x for the regulariser "
                    "(an older run); start afresh"
                )
        else:
            init = self._measure_m0(want_ref)
        # The regulariser's reference: the starting model's choice log-probabilities on x' and
        # on x, per pair (none without the regulariser).
        self.refs = _split(init["ref_logps"], init["ref_counts"])
        self.refs_x = _split(init.get("ref_logps_x"), init.get("ref_counts_x"))

    def _choose_step(self) -> None:
        """The packed step where it is switched on and the model gives the separate forwards'
        values with it on the first pair; otherwise separate forwards, with the reason said."""
        self.step_items: dict[int, StepItem] = {}
        self.packed, self.packed_off = False, None
        if not self.cfg.packed_step:
            return
        why = packed_problem(self.model, self.enc_x[0], self.enc_mod[0], self.layer)
        if why is None:
            self.packed = True
            return
        self.packed_off = why
        msg = f"packed training step off for this model: {why}; running separate forwards"
        logger.warning(msg)
        self.say(msg)

    def _m0_pass(self, want_ref: bool, want_mod: bool):
        """M0's hidden states of x (and x'), and the regulariser's reference as
        :func:`~introspect.training.setup.initial_pass` gives them; the packed pass also keeps
        M0's greedy answers on x and x' for the verbal explainer."""
        cfg = self.cfg
        batch = max(cfg.batch_size, 8)
        if not self.packed:
            return su.initial_pass(
                self.model, self.enc_x, self.enc_mod, self.layer, want_ref, want_mod, batch
            )
        h0, h0_mod, lx, lm = initial_pass_packed(
            self.model, self.enc_x, self.enc_mod, self.layer, batch
        )
        self.m0_answers = {
            p.id: [p.choices[int(torch.argmax(a))], p.choices[int(torch.argmax(b))]]
            for p, a, b in zip(self.pairs, lx, lm, strict=True)
        }
        refs = {"mod": su.flat_logps(lm if want_ref else []), "x": su.flat_logps(lx)}
        return h0, h0_mod if want_mod else None, refs

    def _measure_m0(self, want_ref: bool) -> dict[str, torch.Tensor]:
        """M0's pass on a fresh start: the feature standardisers and the regulariser's reference
        (saved in ``init.safetensors``, whose tensors it returns), the labels as used and the
        ridge probe on M0."""
        from safetensors.torch import save_file

        from introspect.labels import save_labels

        cfg = self.cfg
        t0 = time.perf_counter()
        h0, h0_mod, refs = self._m0_pass(want_ref, cfg.difference_probe)
        self.mu64, self.sd64 = su.standardiser(h0)
        init_tensors = {
            "feat_mean": self.mu64,
            "feat_scale": self.sd64,
            "ref_logps": torch.from_numpy(refs["mod"][0]),
            "ref_counts": torch.from_numpy(refs["mod"][1]),
        }
        if want_ref:
            init_tensors["ref_logps_x"] = torch.from_numpy(refs["x"][0])
            init_tensors["ref_counts_x"] = torch.from_numpy(refs["x"][1])
        self.mu_d64 = self.sd_d64 = None
        if cfg.difference_probe:
            self.mu_d64, self.sd_d64 = su.standardiser(h0_mod - h0)
            init_tensors.update(diff_mean=self.mu_d64, diff_scale=self.sd_d64)
        save_file(init_tensors, str(self.out / _INIT_FILE))
        save_labels(self.labels, self.out / "labels.json")
        su.fit_ridge_m0(cfg, self.layer, h0, [p.id for p in self.pairs], self.labels, self.out)
        self.say(f"M0 pass over {len(self.pairs)} training pairs: {time.perf_counter() - t0:.1f} s")
        return init_tensors

    def _verbal(self) -> None:
        """The verbal explainer on the model and its training examples (with ``verbal``)."""
        self.verbal = self.verbal_items = self.verbal_doc = None
        if not self.cfg.verbal:
            return
        self.verbal, self.verbal_items, self.verbal_doc = su.verbal_setup(
            self.cfg,
            self.model,
            self.tok,
            self.pairs,
            self.y,
            self.out,
            self.resume,
            m0_answers=self.m0_answers,
        )
        if not self.resume:
            counts = self.verbal_doc["label_counts"]
            how = (
                "from greedy answers on x and x'"
                if self.verbal_doc.get("format") == "precursor"
                else f"at threshold {self.verbal_doc['threshold']:.4g}"
            )
            self.say(f"verbal labels {how}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

    def _probes(self) -> None:
        """The probes (zero at the start), their standardisers on the device, and the model's
        parameters marked as trained or frozen."""
        cfg, device = self.cfg, self.device
        self.mu32, self.sd32 = self.mu64.float().to(device), self.sd64.float().to(device)
        self.y_std = torch.from_numpy((self.y - self.ybar) / self.ysd).float().to(device)
        for p in self.model.parameters():
            p.requires_grad_(cfg.concurrent)
        d = self.lm.hidden_size
        self.w = torch.zeros(1, d, device=device, requires_grad=True)
        self.b = torch.zeros(1, device=device, requires_grad=True)
        # The difference probe reads h(x') − h(x) (same layer and position).
        self.w_d = torch.zeros(1, d, device=device, requires_grad=True)
        self.b_d = torch.zeros(1, device=device, requires_grad=True)
        self.probe_params = [self.w, self.b] + (
            [self.w_d, self.b_d] if cfg.difference_probe else []
        )
        if cfg.difference_probe and self.mu_d64 is None:
            raise TrainError(
                f"{self.out}: the starting pass has no difference features; start afresh"
            )
        self.mu_d32 = self.mu_d64.float().to(device) if cfg.difference_probe else None
        self.sd_d32 = self.sd_d64.float().to(device) if cfg.difference_probe else None

    def _optimizer(self) -> None:
        """AdamW over the probes (and the model when it trains); on resume, the probes, the RNG
        and the optimizer state of the last checkpoint."""
        from safetensors.torch import load_file

        cfg = self.cfg
        groups = [{"params": self.probe_params, "lr": cfg.probe_lr, "weight_decay": 0.0}]
        if cfg.concurrent:
            model_params = [p for p in self.model.parameters() if p.requires_grad]
            groups.insert(
                0, {"params": model_params, "lr": cfg.lr, "weight_decay": cfg.weight_decay}
            )
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr)
        if not self.resume:
            return
        st = load_file(str(self.last / "state.safetensors"))
        with torch.no_grad():
            self.w.copy_(st["probe.weight"])
            self.b.copy_(st["probe.bias"])
            if cfg.difference_probe:
                self.w_d.copy_(st["probe_diff.weight"])
                self.b_d.copy_(st["probe_diff.bias"])
        torch.set_rng_state(st["rng.torch"])
        ck.load_optimizer(self.opt, self.last / _OPT_FILE)
        self.say(f"resumed from {self.last} (step {self.start_step})")

    def _info(self) -> dict[str, Any]:
        """What ``train.json`` records besides the step, the log and the checkpoints."""
        cfg = self.cfg
        info = {
            "format_version": FORMAT_VERSION,
            "identity": cfg.identity(),
            "config": dataclasses.asdict(cfg),
            "model": self.base_info,
            "layer": self.layer,
            "n_pairs": len(self.pairs),
            "labels_source": self.labels.source,
            "label_mean": self.ybar,
            "label_sd": self.ysd,
            "model_trains": bool(cfg.concurrent),
            "device": self.device,
            "behaviour_objective": cfg.objective if self.active else "none",
            "verbal": None if self.verbal_doc is None else su.VERBAL_JSON,
            "packed_step": self.packed,
        }
        if self.packed_off is not None:
            info["packed_step_off"] = self.packed_off
        if self.chat_template != "model":
            info["chat_template"] = self.chat_template
        return info

    # ---------------------------------------------------------------------------------------
    # Training

    def _losses(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The loss terms on the minibatch ``rows`` and their weighted sum (``loss``), from one
        prefix-shared forward (``packed``) or from separate forwards."""
        with torch.set_grad_enabled(self.cfg.concurrent):
            outs = self._packed_outputs(rows) if self.packed else self._separate_outputs(rows)
        return self._assemble(rows, outs)

    def _wants(self) -> tuple[bool, bool]:
        """Whether a step reads x' (the difference probe or the regulariser) and the verbal
        sentence."""
        cfg = self.cfg
        want_reg = cfg.concurrent and cfg.w_reg > 0
        want_verbal = self.verbal is not None and cfg.w_verbal > 0  # 0: the untrained control
        return cfg.difference_probe or want_reg, want_verbal

    def _separate_outputs(self, rows: np.ndarray) -> _Outputs:
        """The step's model outputs from separate forwards: x with the objective's choice, x'
        (no gradient unless the explainer's reaches the model), every choice after x' and
        after x for the regulariser, and the verbal conversation with its full logits."""
        cfg, model, layer = self.cfg, self.model, self.layer
        bx = [self.enc_x[i] for i in rows]
        logp_t, h = target_forward(model, bx, [self.targets[i] for i in rows], layer=layer)
        outs = _Outputs(logp_t, h)
        if cfg.difference_probe:
            bm = [self.enc_mod[i] for i in rows]
            with torch.set_grad_enabled(cfg.concurrent and cfg.explainer_grad_to_model):
                _, outs.h_mod = target_forward(model, bm, [0] * len(bm), layer=layer)
        if cfg.concurrent and cfg.w_reg > 0:
            outs.cur_mod = choice_logps(model, [self.enc_mod[i] for i in rows])
            outs.cur_x = choice_logps(model, bx)
        if self._wants()[1]:
            outs.verbal, _ = self.verbal.sentence_loss([self.verbal_items[i] for i in rows])
        return outs

    def _packed_outputs(self, rows: np.ndarray) -> _Outputs:
        """The same outputs as :meth:`_separate_outputs` from one forward of the minibatch's
        tries (see :mod:`introspect.training.packed`)."""
        cfg = self.cfg
        fwd = step_forward(self.model, [self._step_item(int(i)) for i in rows], self.layer)
        logp_t = torch.stack(
            [lp[0][self.targets[i]] for lp, i in zip(fwd.logps, rows, strict=True)]
        )
        outs = _Outputs(logp_t, fwd.hidden[:, 0])
        if cfg.difference_probe:
            h_mod = fwd.hidden[:, 1]
            outs.h_mod = h_mod if cfg.concurrent and cfg.explainer_grad_to_model else h_mod.detach()
        if cfg.concurrent and cfg.w_reg > 0:
            outs.cur_x = [lp[0] for lp in fwd.logps]
            outs.cur_mod = [lp[1] for lp in fwd.logps]
        if self._wants()[1]:
            outs.verbal = -fwd.sentence.mean()
        return outs

    def _step_item(self, i: int) -> StepItem:
        """Pair ``i``'s trie (built once per run)."""
        item = self.step_items.get(i)
        if item is None:
            want_mod, want_verbal = self._wants()
            item = step_item(
                i,
                self.enc_x[i],
                self.enc_mod[i] if want_mod else None,
                self.verbal_items[i] if want_verbal else None,
            )
            self.step_items[i] = item
        return item

    def _assemble(self, rows: np.ndarray, outs: _Outputs) -> dict[str, torch.Tensor]:
        """The loss terms from the step's model outputs."""
        cfg = self.cfg
        y_batch = self.y_std[torch.from_numpy(rows).to(self.device)]
        h_in = outs.h if cfg.explainer_grad_to_model else outs.h.detach()
        pred = ((h_in - self.mu32) / self.sd32) @ self.w.t() + self.b
        l_exp = torch.mean((pred[:, 0] - y_batch) ** 2)
        zero = torch.zeros((), dtype=l_exp.dtype)
        l_diff = zero
        if cfg.difference_probe:
            d_in = outs.h_mod - h_in
            pred_d = ((d_in - self.mu_d32) / self.sd_d32) @ self.w_d.t() + self.b_d
            l_diff = torch.mean((pred_d[:, 0] - y_batch) ** 2)
        l_beh = -outs.logp_t.mean() if self.active else zero
        l_reg = zero
        if outs.cur_x is not None:
            l_reg = 0.5 * (
                kl_to_reference(outs.cur_x, [self.refs_x[i] for i in rows])
                + kl_to_reference(outs.cur_mod, [self.refs[i] for i in rows])
            )
        l_verbal = zero if outs.verbal is None else outs.verbal
        loss = (
            cfg.w_behaviour * l_beh
            + cfg.w_explain * (l_exp + l_diff)
            + cfg.w_verbal * l_verbal
            + cfg.w_reg * l_reg
        )
        return {
            "loss": loss,
            "behaviour": l_beh,
            "explain": l_exp,
            "explain_diff": l_diff,
            "verbal": l_verbal,
            "reg": l_reg,
            "target_logprob": outs.logp_t.mean(),
        }

    def _check_finite(self, k: int, rows: np.ndarray, terms: dict[str, torch.Tensor]) -> None:
        """A loss that is NaN or infinite stops training before the update (the model and the
        last checkpoint stay as they were), naming the step, the terms and the pairs."""
        bad = [name for name, t in terms.items() if not bool(torch.isfinite(t.detach()).all())]
        if bad:
            ids = [self.pairs[int(i)].id for i in rows]
            raise TrainError(
                f"step {k}: the loss is not finite ({', '.join(bad)}) on the minibatch of pairs "
                f"{ids[:8]}{' ...' if len(ids) > 8 else ''}; nothing was updated (the last "
                "checkpoint is kept): lower the learning rate or check these pairs"
            )

    def step(self, k: int) -> dict[str, Any]:
        """Training step ``k`` (1-based): the losses on its minibatch, one optimizer update, and
        the log record (appended to the log and returned)."""
        t0 = time.perf_counter()
        rows = batch_rows(len(self.pairs), self.cfg.batch_size, k, self.cfg.seed)
        terms = self._losses(rows)
        self._check_finite(k, rows, terms)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.opt.step()
        rec: dict[str, Any] = {"step": k}
        rec.update({name: float(t.detach()) for name, t in terms.items()})
        rec["seconds"] = time.perf_counter() - t0
        self.log.append(rec)
        self.say(
            f"step {k}/{self.cfg.steps}: loss {rec['loss']:.4f} (behaviour {rec['behaviour']:.4f}, "
            f"explain {rec['explain']:.4f}, diff {rec['explain_diff']:.4f}, "
            f"verbal {rec['verbal']:.4f}, reg {rec['reg']:.4f}) "
            f"{rec['seconds']:.1f} s"
        )
        return rec

    def checkpoint(self, k: int) -> None:
        """Writes ``ckpt-{k}`` (through a hidden directory renamed into place), drops older
        optimizer states unless all are kept, and rewrites ``train.json``."""
        from safetensors.torch import save_file

        cfg, out = self.cfg, self.out
        final = out / ck.checkpoint_name(k)
        tmp = out / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if cfg.concurrent:
            self.model.save_pretrained(tmp / "model")
            self.tok.save_pretrained(tmp / "model")
        self._probe(k, "direct").save(tmp / "probe")
        tensors = {
            "probe.weight": self.w.detach().cpu().clone(),
            "probe.bias": self.b.detach().cpu().clone(),
            "rng.torch": torch.get_rng_state(),
        }
        if cfg.difference_probe:
            self._probe(k, "difference").save(tmp / "probe-diff")
            tensors["probe_diff.weight"] = self.w_d.detach().cpu().clone()
            tensors["probe_diff.bias"] = self.b_d.detach().cpu().clone()
        save_file(tensors, str(tmp / "state.safetensors"))
        ck.save_optimizer(self.opt, tmp / _OPT_FILE)
        ck.write_json(
            tmp / "state.json",
            {"step": k, "log": self.log, "layer": self.layer, "identity": cfg.identity()},
        )
        ck.replace_dir(tmp, final)
        if cfg.optimizer_state == "last":
            for s, p in ck.list_checkpoints(out):
                if s != k and (p / _OPT_FILE).exists():
                    (p / _OPT_FILE).unlink()
        self.write_train_json(k, False)

    def _probe(self, k: int, mode: str) -> Any:
        """The direct (``mode="direct"``) or difference probe at step ``k`` as an explainer."""
        if mode == "direct":
            w, b, mu, sd = self.w, self.b, self.mu64, self.sd64
        else:
            w, b, mu, sd = self.w_d, self.b_d, self.mu_d64, self.sd_d64
        return su.probe_explainer(self.cfg, self.layer, w, b, mu, sd, self.ybar, self.ysd, k, mode)

    def write_train_json(self, step: int, complete: bool) -> dict[str, Any]:
        """Rewrites ``train.json`` at ``step``; returns what it wrote."""
        doc = {
            **self.info,
            "step": step,
            "complete": complete,
            "log": self.log,
            "checkpoints": [{"step": s, "path": p.name} for s, p in ck.list_checkpoints(self.out)],
        }
        ck.write_json(self.out / ck.TRAIN_JSON, doc)
        return doc

    def run(self) -> dict[str, Any]:
        """Setup, the steps from the one after the last checkpoint to ``config.steps`` with a
        checkpoint every ``checkpoint_every`` steps and at the end, and the final
        ``train.json`` (returned, with ``wall_s``). A model object passed in leaves with the
        train/eval modes and ``requires_grad`` flags it came with."""
        cfg = self.cfg
        with su.kept_state(self.given[0]):
            self.setup()
            for k in range(self.start_step + 1, cfg.steps + 1):
                self.step(k)
                if k % cfg.checkpoint_every == 0 or k == cfg.steps:
                    self.checkpoint(k)
        if self.start_step >= cfg.steps:
            self.say(
                f"{self.out}: already at step {self.start_step} >= --steps {cfg.steps}; "
                "nothing to do"
            )
        doc = self.write_train_json(max(self.start_step, cfg.steps), True)
        doc["wall_s"] = time.perf_counter() - self.t_start
        return doc
