"""The verbal explainer: its settings (:class:`VerbalConfig`) and :class:`VerbalExplainer`, which
builds the prompts (follow-up or same-turn) and training examples, trains the model (LoRA adapters
or every weight) on the label sentences, scores or generates its answers, gives a scalar score per
pair, and saves and loads the result. See :mod:`introspect.explain.verbal` for the conversation,
the labels, the score and the files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from introspect._io import write_atomic
from introspect.explain import base
from introspect.explain import lora as lora_mod
from introspect.explain.features import row_indices
from introspect.explain.verbal import decoding
from introspect.explain.verbal.decoding import Example
from introspect.explain.verbal.parsing import (
    labels_from_delta,
    labels_from_names,
    parse_explanation,
)
from introspect.explain.verbal.sentences import (
    BINS,
    DEFAULT_TEMPLATE,
    PROMPTS,
    STYLES,
    UNCHANGED,
    candidate_labels,
    feature_description,
    label_sentence,
    split_precursor,
    template_problems,
)

__all__ = ["VerbalConfig", "VerbalExplainer", "best_label", "verbal_score"]

logger = logging.getLogger(__package__)

_ADAPTERS = ("lora", "full")

EVAL_BATCH_TOKENS = 2048
"""Positions per packed forward when scoring sentences and reading answers."""


@dataclass(frozen=True)
class VerbalConfig(base.ExplainerConfig):
    """Settings of a verbal explainer (see :mod:`introspect.explain.verbal`).

    ``model``: the base model reference that :func:`introspect.explain.load` rebuilds (an alias or
    a model directory); may stay None when the model is always passed in. ``prompt``: the
    conversation, ``"followup"`` or ``"same-turn"``; ``labels``: ``"choice"``, ``"binned"`` or
    ``"precursor"``. :meth:`precursor` gives the precursor work's settings.
    """

    model: str | None = None
    prompt: str = "followup"
    template: str = DEFAULT_TEMPLATE
    feature_key: str | None = None
    default_feature: str = "feature"
    answer: str = "argmax"
    labels: str = "choice"
    threshold: float = 0.0
    adapter: str = "lora"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lr: float = 1e-4
    weight_decay: float = 0.0
    epochs: int = 3
    batch_size: int = 8
    eval_batch_size: int = 16
    max_new_tokens: int = 24
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora_targets", tuple(str(t) for t in self.lora_targets))
        if self.prompt not in PROMPTS:
            problems = [f"prompt must be one of {PROMPTS}, got {self.prompt!r}"]
            problems += template_problems(self.template)
        else:
            problems = template_problems(self.template, self.prompt)
        if self.labels not in STYLES:
            problems.append(f"labels must be one of {STYLES}, got {self.labels!r}")
        if self.adapter not in _ADAPTERS:
            problems.append(f"adapter must be one of {_ADAPTERS}, got {self.adapter!r}")
        if not (self.answer in ("argmax", "target") or str(self.answer).startswith("meta:")):
            problems.append(
                f"answer must be 'argmax', 'target' or 'meta:<key>', got {self.answer!r}"
            )
        if not (isinstance(self.threshold, int | float) and math.isfinite(self.threshold)):
            problems.append(f"threshold must be a finite number, got {self.threshold!r}")
        elif self.threshold < 0:
            problems.append(f"threshold must be >= 0, got {self.threshold}")
        for name in ("lora_rank", "epochs", "batch_size", "eval_batch_size", "max_new_tokens"):
            if not int(getattr(self, name)) >= 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lora_alpha > 0:
            problems.append(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if self.adapter == "lora" and not self.lora_targets:
            problems.append("lora_targets must name at least one module")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if problems:
            raise ValueError("VerbalConfig: " + "; ".join(problems))

    @classmethod
    def precursor(cls, **overrides: Any) -> VerbalConfig:
        """The precursor work's format: ``prompt="same-turn"`` (the question in x's own turn, no
        answer shown) and ``labels="precursor"`` (``My answer would remain (X).`` / ``My answer
        would change to (Y).``), with any other settings given as keywords."""
        return cls(**{"prompt": "same-turn", "labels": "precursor", **overrides})


def best_label(logprobs: dict[str, float]) -> str:
    """The candidate with the highest log-probability (ties go to the earlier candidate)."""
    if not logprobs:
        raise ValueError("no candidate labels to choose from")
    keys = list(logprobs)
    return max(keys, key=lambda k: (logprobs[k], -keys.index(k)))


def _logsumexp(values: Sequence[float]) -> float:
    """log Σ exp(values) in float64 (−inf for no values or all −inf)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return -math.inf
    m = float(v.max())
    if not math.isfinite(m):
        return m
    return m + math.log(float(np.exp(v - m).sum()))


def verbal_score(logprobs: dict[str, float], style: str) -> float:
    """The scalar verbal score of one pair from its candidates' log-probabilities (as
    :meth:`VerbalExplainer.label_logprobs` gives them): how much more the model says "changed"
    than "unchanged". ``"binned"``: log p(toward) − log p(away); ``"precursor"``:
    log Σ_c p(change:c) − log Σ_c p(remain:c); ``"choice"``: log Σ_c p(c) − log p(unchanged)."""
    if style == "binned":
        return float(logprobs[BINS[1]] - logprobs[BINS[2]])
    if style == "precursor":
        kinds = {k: split_precursor(k) for k in logprobs}
        if any(v is None for v in kinds.values()):
            raise ValueError(f"not precursor candidates: {list(logprobs)}")
        change = [v for k, v in logprobs.items() if kinds[k][0] == "change"]
        remain = [v for k, v in logprobs.items() if kinds[k][0] == "remain"]
        return _logsumexp(change) - _logsumexp(remain)
    if style == "choice":
        changes = [v for k, v in logprobs.items() if k != UNCHANGED]
        return _logsumexp(changes) - float(logprobs[UNCHANGED])
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def _as_pairs(data: Any) -> list[Any]:
    """The pairs of ``data``: a pair file, or an iterable of
    :class:`~introspect.data.pairs.Pair`."""
    from introspect.data.pairs import Pair

    if isinstance(data, str | os.PathLike):
        from introspect.data.io import read_pairs

        pairs, _ = read_pairs(data)
        return pairs
    pairs = list(data)
    for i, p in enumerate(pairs):
        if not isinstance(p, Pair):
            raise TypeError(f"item {i} is a {type(p).__name__}, not a Pair")
    return pairs


@base.register("verbal")
class VerbalExplainer(base.Explainer):
    """The model explains its own counterfactual behaviour in words; see
    :mod:`introspect.explain.verbal`."""

    config_class = VerbalConfig
    output = "categorical"

    def __init__(
        self,
        config: VerbalConfig | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        **overrides: Any,
    ):
        if config is None:
            config = VerbalConfig(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        super().__init__(config)
        if model is not None and hasattr(model, "tokenizer") and hasattr(model, "model"):
            tokenizer = tokenizer if tokenizer is not None else model.tokenizer
            model = model.model
        if (model is None) != (tokenizer is None):
            raise ValueError("give both model and tokenizer, or neither (config.model is loaded)")
        self.model = model
        self.tokenizer = tokenizer
        self.fitted = False
        self.base_fingerprint: str | None = None
        self.adapter_modules: list[str] = []
        self.info: dict[str, Any] = {}

    # ---------------------------------------------------------------------------- the model

    def _ensure_model(self) -> None:
        """Loads the model ``config.model`` names when none was given."""
        if self.model is not None:
            return
        if not self.config.model:
            raise ValueError(
                "this verbal explainer has no model: pass model= and tokenizer=, or set "
                "VerbalConfig.model to an alias or a model directory"
            )
        from introspect.models import load_model

        lm = load_model(self.config.model)
        self.model, self.tokenizer = lm.model, lm.tokenizer

    @property
    def _device(self) -> torch.device:
        """Where the model's parameters are."""
        return next(self.model.parameters()).device

    def _pad_id(self) -> int:
        """The id padding is written with: the pad token, else EOS, else 0."""
        tok = self.tokenizer
        for v in (tok.pad_token_id, tok.eos_token_id):
            if v is not None:
                return int(v)
        return 0

    def _eos(self) -> list[int]:
        """The tokenizer's EOS id (none when it has no EOS token)."""
        eos = self.tokenizer.eos_token_id
        return [] if eos is None else [int(eos)]

    def _max_len(self) -> int | None:
        """The model's context length, where its config states one."""
        return getattr(getattr(self.model, "config", None), "max_position_embeddings", None)

    # ------------------------------------------------------------------------------ prompts

    def answers(self, pairs: Sequence[Any]) -> list[str]:
        """The model's answer to each pair's x, as ``config.answer`` defines it."""
        how = self.config.answer
        if how == "target":
            return [p.target for p in pairs]
        if how.startswith("meta:"):
            key = how[5:]
            out = []
            for p in pairs:
                value = (p.meta or {}).get(key)
                if not isinstance(value, str):
                    raise ValueError(f"pair {p.id!r}: meta[{key!r}] holds no answer text")
                out.append(value)
            return out
        return self._argmax_choices(pairs, [p.x for p in pairs])

    def _argmax_choices(self, pairs: Sequence[Any], prompts: Sequence[Any]) -> list[str]:
        """For each pair, the choice with the highest teacher-forced log-probability after the
        matching prompt (ties go to the earlier choice), from the model as it is now; the
        prompt and its choices run as one packed trie, as the extraction engine runs them."""
        from introspect.behaviour import encode
        from introspect.engine.continuations import continuation_logprobs

        self._ensure_model()
        enc = [encode(self.tokenizer, x, p.choices) for p, x in zip(pairs, prompts, strict=True)]
        with torch.no_grad():
            logps = continuation_logprobs(
                self.model, [e.prompt_ids for e in enc], [e.choice_ids for e in enc],
                batch_tokens=EVAL_BATCH_TOKENS,
            )  # fmt: skip
        return [p.choices[int(torch.argmax(lp))] for p, lp in zip(pairs, logps, strict=True)]

    def greedy_answers(self, data: Any, side: str = "x") -> list[str]:
        """The model's greedy answer to each pair's x (``side="x"``) or x′ (``side="mod"``, the
        pair's :attr:`~introspect.data.pairs.Pair.x_mod`): the choice, as the pair spells it, with
        the highest teacher-forced log-probability after that prompt (ties: the earlier choice).
        The model is used as it is now, adapters included; :func:`precursor_labels` turns the two
        sides into the precursor's labels."""
        if side not in ("x", "mod"):
            raise ValueError(f"side must be 'x' or 'mod', got {side!r}")
        pairs = _as_pairs(data)
        return self._argmax_choices(pairs, [p.x if side == "x" else p.x_mod for p in pairs])

    def followup(self, pair: Any, answer: str | None = None) -> tuple[str, bool]:
        """The rendered prompt the explanation continues, in the configured format, and whether
        it came from the chat template. ``"followup"`` shows ``answer`` (required) before the
        question; ``"same-turn"`` appends the question to x's last user message (or to a text
        x) and ignores ``answer``."""
        from introspect.models import format_prompt

        feature = feature_description(pair, self.config)
        if self.config.prompt == "same-turn":
            question = self.config.template.format(feature=feature)
            if not pair.is_chat:
                return f"{pair.x}\n\n{question}\n", False
            messages = [dict(m) for m in pair.x]
            users = [i for i, m in enumerate(messages) if m["role"] == "user"]
            if not users:
                raise ValueError(f"pair {pair.id!r}: x has no user message to ask the question in")
            last = messages[users[-1]]
            last["content"] = f"{last['content']}\n\n{question}"
            return format_prompt(self.tokenizer, messages), True
        if not isinstance(answer, str):
            raise ValueError("prompt='followup' shows the answer on x: give it")
        question = self.config.template.format(feature=feature, answer=answer.strip())
        if pair.is_chat:
            messages = [dict(m) for m in pair.x]
            messages.append({"role": "assistant", "content": answer.strip()})
            messages.append({"role": "user", "content": question})
            return format_prompt(self.tokenizer, messages), True
        return f"{pair.x}{answer}\n\n{question}\n", False

    def _prompt_ids(self, pairs: Sequence[Any], answers: Sequence[str] | None) -> list[list[int]]:
        """Token ids of each pair's prompt: after ``answers`` (the configured answers when None)
        for ``"followup"``; ``"same-turn"`` shows no answer and computes none."""
        self._ensure_model()
        if answers is not None and len(answers) != len(pairs):
            raise ValueError(f"{len(answers)} answers for {len(pairs)} pairs")
        if self.config.prompt == "same-turn":
            answers = [None] * len(pairs)
        elif answers is None:
            answers = self.answers(pairs)
        out = []
        for p, a in zip(pairs, answers, strict=True):
            text, chat = self.followup(p, a)
            ids = self.tokenizer(text, add_special_tokens=not chat)["input_ids"]
            if not ids:
                raise ValueError(f"pair {p.id!r}: the prompt encodes to no tokens")
            out.append(list(ids))
        return out

    def _sentence_ids(self, sentence: str) -> list[int]:
        """Token ids of a label sentence followed by EOS."""
        ids = list(self.tokenizer(sentence, add_special_tokens=False)["input_ids"]) + self._eos()
        if not ids:
            raise ValueError(f"the label sentence {sentence!r} encodes to no tokens")
        return ids

    def _check_length(self, pair: Any, n: int) -> None:
        """Refuses a prompt and sentence of ``n`` tokens that does not fit the model's context."""
        limit = self._max_len()
        if limit is not None and n > limit:
            raise ValueError(
                f"pair {pair.id!r}: the prompt with its explanation is {n} tokens, longer "
                f"than the model's context ({limit})"
            )

    # ------------------------------------------------------------------------------- labels

    def target_labels(self, pairs: Sequence[Any], labels: Any) -> list[str]:
        """Per-pair labels in the configured style from ``labels`` (a
        :class:`~introspect.labels.Labels` aligned by pair id, or one value per pair: numeric Δ
        or categorical labels; under ``"precursor"`` only ``"remain:<choice>"`` /
        ``"change:<choice>"``, e.g. from :func:`precursor_labels`)."""
        if hasattr(labels, "align") and hasattr(labels, "ids"):
            values = labels.align([p.id for p in pairs])
        else:
            if hasattr(labels, "detach"):
                labels = labels.detach().cpu().numpy()
            values = np.asarray(labels, dtype=object if isinstance(labels, list) else None)
        values = np.asarray(values)
        if values.ndim != 1 or values.shape[0] != len(pairs):
            raise ValueError(f"{values.reshape(-1).shape[0]} labels for {len(pairs)} pairs")
        numeric = values.dtype.kind in "fiu" or all(
            isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values
        )
        if numeric:
            return labels_from_delta(pairs, values, self.config.labels, self.config.threshold)
        return labels_from_names(pairs, values, self.config.labels)

    # ---------------------------------------------------------------------------------- fit

    def _prepare_adapter(self) -> None:
        """Fresh adapters from the seed (earlier ones removed) or every weight trainable, with
        the fingerprint of the base weights taken first."""
        cfg = self.config
        if lora_mod.lora_layers(self.model):
            lora_mod.remove_lora(self.model)
        self.base_fingerprint = lora_mod.base_fingerprint(self.model)
        if cfg.adapter == "lora":
            self.adapter_modules = lora_mod.inject_lora(
                self.model, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed
            )
        else:
            self.adapter_modules = []
            for p in self.model.parameters():
                p.requires_grad_(True)

    def fit(
        self,
        data: Any,
        labels: Any,
        *,
        rows: Any = None,
        answers: Sequence[str] | None = None,
    ) -> VerbalExplainer:
        """Trains on the pairs ``data`` (a list of :class:`~introspect.data.pairs.Pair` or a pair
        file) against ``labels`` (one per pair; see :meth:`target_labels`), using only ``rows``
        when given. LoRA adapters are (re)initialised from the seed; ``adapter="full"``
        continues from the model's current weights."""
        items = self._training_examples(data, labels, rows, answers)
        history = self._train(items)
        self.fitted = True
        self.info = {"n_train": len(items), "epoch_loss": history}
        return self

    def _training_examples(
        self, data: Any, labels: Any, rows: Any, answers: Sequence[str] | None
    ) -> list[Example]:
        """The examples of the selected pairs, with fresh adapters on the model (prompts built
        from the base model's answers when none are given)."""
        self._ensure_model()
        pairs = _as_pairs(data)
        order = row_indices(len(pairs), rows)
        if answers is not None and len(answers) != len(pairs):
            raise ValueError(f"{len(answers)} answers for {len(pairs)} pairs")
        targets = self.target_labels(pairs, labels)
        sel = [pairs[i] for i in order]
        if not sel:
            raise ValueError("no training pairs")
        sel_answers = None if answers is None else [answers[i] for i in order]
        self._prepare_adapter()  # B = 0: the answers below are the base model's
        return self.examples(sel, [targets[i] for i in order], answers=sel_answers)

    def _train(self, items: list[Example]) -> list[float]:
        """AdamW over seeded shuffles of ``items`` with the model in eval mode; the mean loss per
        sentence token of each epoch. The trainable parameters are frozen again afterwards."""
        cfg = self.config
        model = self.model
        was_training = model.training
        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        rng = np.random.default_rng(cfg.seed)
        history = []
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                for epoch in range(cfg.epochs):
                    history.append(self._epoch(items, opt, rng))
                    logger.debug("verbal epoch %d: loss %.5g", epoch, history[-1])
        finally:
            for p in model.parameters():
                p.requires_grad_(False)
            model.train(was_training)
        return history

    def _epoch(self, items: list[Example], opt: Any, rng: np.random.Generator) -> float:
        """One pass over ``items`` in a permutation drawn from ``rng``: its mean token loss."""
        total, count = 0.0, 0
        perm = rng.permutation(len(items))
        for s in range(0, len(items), self.config.batch_size):
            batch = [items[j] for j in perm[s : s + self.config.batch_size]]
            loss, n_tok = self.sentence_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * n_tok
            count += n_tok
        return total / max(count, 1)

    def examples(
        self, pairs: Sequence[Any], labels: Sequence[str], *, answers: Sequence[str] | None = None
    ) -> list[Example]:
        """Token ids of each pair's prompt and of the sentence stating its label
        (labels in the configured style, one per pair, as :meth:`target_labels` gives them):
        the teacher-forced training examples."""
        if len(labels) != len(pairs):
            raise ValueError(f"{len(labels)} labels for {len(pairs)} pairs")
        prompts = self._prompt_ids(pairs, answers)
        items = []
        for p, ids, label in zip(pairs, prompts, labels, strict=True):
            sentence = label_sentence(label, p.choices, p.target, self.config.labels)
            tgt = self._sentence_ids(sentence)
            self._check_length(p, len(ids) + len(tgt))
            items.append((ids, tgt))
        return items

    def sentence_loss(self, batch: Sequence[Example]) -> tuple[Any, int]:
        """Mean cross-entropy of the sentence tokens of ``batch`` (items of :meth:`examples`)
        given their prompts, with the graph kept for a backward pass, and the number of
        sentence tokens it averages over."""
        ids, mask, tmask = decoding.right_padded(batch, self._pad_id(), self._device)
        logits = self.model(input_ids=ids, attention_mask=mask).logits
        pred = logits[:, :-1][tmask[:, 1:]]
        gold = ids[:, 1:][tmask[:, 1:]]
        return torch.nn.functional.cross_entropy(pred.float(), gold), int(gold.numel())

    def _selected_prompts(self, data: Any, rows: Any, answers: Sequence[str] | None):
        """The pairs ``rows`` selects (in that order) and their prompts' token ids."""
        pairs = _as_pairs(data)
        order = row_indices(len(pairs), rows)
        sel = [pairs[i] for i in order]
        if answers is not None:
            if len(answers) != len(pairs):
                raise ValueError(f"{len(answers)} answers for {len(pairs)} pairs")
            answers = [answers[i] for i in order]
        return sel, self._prompt_ids(sel, answers)

    # ------------------------------------------------------------------------------ scoring

    @torch.no_grad()
    def label_logprobs(
        self, data: Any, *, rows: Any = None, answers: Sequence[str] | None = None
    ) -> list[dict[str, float]]:
        """Per pair, every candidate label with the summed log-probability of its sentence
        (EOS included) after the prompt, teacher-forced. Each prompt and its candidate
        sentences run as one packed trie (the prompt once, each sentence a branch of it;
        :func:`~introspect.engine.continuations.continuation_logprobs`)."""
        from introspect.engine.continuations import continuation_logprobs

        self._ensure_model()
        sel, prompts = self._selected_prompts(data, rows, answers)
        cands = [self._candidates(p, len(ids)) for p, ids in zip(sel, prompts, strict=True)]
        logps = continuation_logprobs(
            self.model, prompts, [[ids for _, ids in c] for c in cands],
            batch_tokens=EVAL_BATCH_TOKENS,
        )  # fmt: skip
        return [
            {label: float(v) for (label, _), v in zip(c, lp.tolist(), strict=True)}
            for c, lp in zip(cands, logps, strict=True)
        ]

    def _candidates(self, pair: Any, prompt_len: int) -> list[tuple[str, list[int]]]:
        """Each candidate label of ``pair`` with the token ids of its sentence."""
        style = self.config.labels
        mine = []
        for label in candidate_labels(pair.choices, style):
            tgt = self._sentence_ids(label_sentence(label, pair.choices, pair.target, style))
            self._check_length(pair, prompt_len + len(tgt))
            mine.append((label, tgt))
        return mine

    def _logprobs_for(
        self, data: Any, rows: Any, answers: Sequence[str] | None, logprobs: Any
    ) -> list[dict[str, float]]:
        """``logprobs`` (from :meth:`label_logprobs` on the same selection) when given, checked
        against the number of pairs selected, else computed."""
        if logprobs is None:
            return self.label_logprobs(data, rows=rows, answers=answers)
        logprobs = list(logprobs)
        n = len(row_indices(len(_as_pairs(data)), rows))
        if len(logprobs) != n:
            raise ValueError(f"{len(logprobs)} candidate log-probabilities for {n} pairs")
        return logprobs

    def predict(
        self,
        data: Any,
        *,
        rows: Any = None,
        answers: Sequence[str] | None = None,
        mode: str = "score",
        logprobs: Sequence[dict[str, float]] | None = None,
    ) -> np.ndarray:
        """One label per pair (an object array of str), for every pair or for ``rows`` in that
        order. ``mode="score"``: the candidate sentence with the highest log-probability (ties go
        to the earlier candidate, in :func:`candidate_labels` order: unchanged then the choices,
        the bins in order, or every remain:c then every change:c); ``logprobs`` from
        :meth:`label_logprobs` on the same selection skips the model pass (so one pass serves
        :meth:`scores` too). ``mode="generate"``: greedy text parsed by
        :func:`parse_explanation`."""
        if mode == "generate":
            pairs = _as_pairs(data)
            order = row_indices(len(pairs), rows)
            texts = self.explain(pairs, rows=rows, answers=answers)
            labels = [
                parse_explanation(t, pairs[i].choices, self.config.labels)
                for t, i in zip(texts, order, strict=True)
            ]
        elif mode == "score":
            labels = [best_label(s) for s in self._logprobs_for(data, rows, answers, logprobs)]
        else:
            raise ValueError(f"mode must be 'score' or 'generate', got {mode!r}")
        out = np.empty(len(labels), dtype=object)
        out[:] = labels
        return out

    def scores(
        self,
        data: Any,
        answers: Sequence[str] | None = None,
        *,
        rows: Any = None,
        logprobs: Sequence[dict[str, float]] | None = None,
    ) -> np.ndarray:
        """The scalar verbal score of each pair (float64, for every pair or for ``rows`` in that
        order; :func:`verbal_score`): log-odds of "changed" over "unchanged" from the same
        candidate log-probabilities :meth:`predict` chooses among (``logprobs`` from
        :meth:`label_logprobs` on the same selection skips the model pass)."""
        lps = self._logprobs_for(data, rows, answers, logprobs)
        return np.array([verbal_score(s, self.config.labels) for s in lps], dtype=np.float64)

    # --------------------------------------------------------------------------- generation

    @torch.no_grad()
    def explain(
        self, data: Any, *, rows: Any = None, answers: Sequence[str] | None = None
    ) -> list[str]:
        """The model's greedy answer to the question for each pair (at most
        ``max_new_tokens`` tokens, stopping at EOS), decoded without special tokens."""
        cfg = self.config
        self._ensure_model()
        sel, prompts = self._selected_prompts(data, rows, answers)
        for p, ids in zip(sel, prompts, strict=True):
            self._check_length(p, len(ids) + cfg.max_new_tokens)
        texts = []
        for s in range(0, len(prompts), cfg.eval_batch_size):
            new = decoding.greedy(
                self.model,
                prompts[s : s + cfg.eval_batch_size],
                self._pad_id(),
                self._eos(),
                cfg.max_new_tokens,
            )
            for seq in new:
                texts.append(self.tokenizer.decode(seq, skip_special_tokens=True).strip())
        return texts

    # -------------------------------------------------------------------------------- files

    def _state(self) -> dict[str, Any]:
        """The fitted state written to ``explainer.json``."""
        return {
            "adapter_modules": self.adapter_modules,
            "base_fingerprint": self.base_fingerprint,
            "info": self.info,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Writes ``explainer.json`` and ``weights.safetensors`` (adapters only for LoRA)."""
        from safetensors.torch import save

        if not self.fitted:
            raise RuntimeError("this verbal explainer is not fitted; nothing to save")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.config.adapter == "lora":
            lora_mod.save_lora(self.model, path / base.WEIGHTS_FILE, {"explainer": self.name})
        else:
            tensors = {
                k: v.detach().to("cpu").clone().contiguous()
                for k, v in self.model.state_dict().items()
            }
            blob = save(tensors, {"explainer": self.name, "format": "introspect-full"})
            write_atomic(path / base.WEIGHTS_FILE, blob)
        base.write_meta(path, self.config, self._state())
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, model: Any = None, tokenizer: Any = None
    ) -> VerbalExplainer:
        """Reads an explainer written by :meth:`save` onto ``model`` (modified in place), or onto
        the base model ``config.model`` names when none is given."""
        path = Path(path)
        config, state = base.read_saved(path, VerbalConfig)
        weights = path / base.WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: file is missing")
        ex = cls(config, model=model, tokenizer=tokenizer)
        ex._ensure_model()
        if lora_mod.lora_layers(ex.model):
            raise ValueError("the model given already carries LoRA adapters; pass a plain model")
        fingerprint = lora_mod.base_fingerprint(ex.model)
        ex._load_weights(path, state.get("base_fingerprint"), fingerprint)
        for p in ex.model.parameters():
            p.requires_grad_(False)
        ex.base_fingerprint = state.get("base_fingerprint") or fingerprint
        ex.info = state.get("info") or {}
        ex.fitted = True
        return ex

    def _load_weights(self, path: Path, want: str | None, fingerprint: str) -> None:
        """Puts the saved adapters (refused on a base model other than the one they were trained
        on, fingerprint ``want``) or the saved full weights into the model."""
        weights = path / base.WEIGHTS_FILE
        if self.config.adapter == "lora":
            if want and want != fingerprint:
                raise ValueError(
                    f"{path}: the adapters were trained on another base model (weights "
                    "fingerprint differs); load them onto the model they were trained on"
                )
            self.adapter_modules = lora_mod.load_lora(self.model, weights, seed=self.config.seed)
            return
        from safetensors.torch import load_file

        tensors = load_file(str(weights))
        try:
            self.model.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{weights}: weights do not fit this model: {e}") from None
        self.adapter_modules = []
