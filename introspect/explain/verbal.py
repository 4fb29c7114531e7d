"""Verbal self-explanation: the language model says how its own answer would change without the
feature (``"verbal"``).

The conversation the model continues is x, the model's answer on x, then a follow-up question::

    <x>  →  assistant: "(B)"  →  user: "If the text "Hint: ..." were removed, how would your
    answer change?"  →  assistant: <explanation>

For chat prompts the follow-up is two more messages (the answer as an assistant turn, the question
as a user turn) rendered with the tokenizer's chat template and its generation prompt; for text
prompts it is ``x + answer + "\\n\\n" + question + "\\n"``.

- **Question**: ``config.template`` with ``{feature}`` (and optionally ``{answer}``) filled in. The
  feature description is ``pair.meta[config.feature_key]`` when that key is set and holds text,
  else the removed spans quoted (``text "..."``, joined by ``and``), else
  ``config.default_feature`` (pairs given by ``prompt_mod``).
- **Answer**: ``config.answer`` is ``"argmax"`` (the choice the model, as it is when the prompts are
  built, gives the highest log-probability on x), ``"target"`` (the pair's target) or
  ``"meta:<key>"``; ``fit``/``predict``/``explain`` also take explicit ``answers=``.
- **Labels** (``config.labels``), with the exact sentences the model is trained on and scored with:

  ================  =========================  ============================================
  style             label                      sentence
  ================  =========================  ============================================
  ``"choice"``      ``"unchanged"``            ``My answer would stay the same.``
  ``"choice"``      a choice c (e.g. " (B)")   ``My answer would change to (B).`` (c stripped)
  ``"binned"``      ``"unchanged"``            ``My answer would stay the same.``
  ``"binned"``      ``"toward"``               ``I would be more likely to answer (B).``
  ``"binned"``      ``"away"``                 ``I would be less likely to answer (B).``
  ================  =========================  ============================================

  (binned sentences name the pair's target). Each sentence is followed by the tokenizer's EOS token.
  Labels given to :meth:`VerbalExplainer.fit` are categorical (these labels; a choice may be given
  up to case, surrounding spaces and brackets) or numeric Δ. Numeric Δ is binned with
  ``config.threshold`` (:func:`introspect.evaluation.bin_delta`: ``|Δ| ≤ threshold`` → unchanged,
  above → toward, below → away); under ``"choice"`` "toward" becomes "change to the target" and
  "away" "change to the other choice", which needs pairs with exactly two choices.

Training is teacher-forced cross-entropy on the label sentence's tokens only (the prompt is
masked), averaged over the sentence tokens of a batch; batches are right-padded, drawn in a seeded
order, and the model stays in eval mode (no dropout), so a fit is deterministic for its seed.
``adapter="lora"`` trains low-rank adapters (:mod:`introspect.explain.lora`) on the modules named
by ``lora_targets`` and saves only those; ``adapter="full"`` trains and saves every parameter.
The explainer works on the model it is given, in place (adapters are injected into it).

Predictions: :meth:`~VerbalExplainer.predict` scores every candidate sentence by its summed
teacher-forced log-probability (EOS included) and returns the best label — exact, and far faster
than generating; ``mode="generate"`` instead decodes greedily (:meth:`~VerbalExplainer.explain`)
and maps the text back with :func:`parse_explanation`, which returns ``"unparsed"`` for text it
cannot read (that counts as "changed" in changed-F1).

Saving writes ``explainer.json`` (config, fitted state, a fingerprint of the base weights) and
``weights.safetensors`` (the adapters, or every weight for ``adapter="full"``).
:func:`introspect.explain.load` rebuilds the base model from ``config.model`` (an alias or a model
directory, see :func:`introspect.models.load_model`); ``VerbalExplainer.load(path, model=...,
tokenizer=...)`` uses a model already in memory. Adapters refuse to load onto a base model whose
fingerprint differs from the one they were trained on.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import os
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from introspect.explain import base
from introspect.explain import lora as lora_mod

__all__ = [
    "AWAY_SENTENCE",
    "CHANGE_SENTENCE",
    "TOWARD_SENTENCE",
    "UNCHANGED_SENTENCE",
    "UNPARSED",
    "VerbalConfig",
    "VerbalExplainer",
    "label_sentence",
    "parse_explanation",
]

logger = logging.getLogger(__name__)

UNCHANGED = "unchanged"
UNPARSED = "unparsed"
BINS = ("unchanged", "toward", "away")

UNCHANGED_SENTENCE = "My answer would stay the same."
CHANGE_SENTENCE = "My answer would change to {choice}."
TOWARD_SENTENCE = "I would be more likely to answer {target}."
AWAY_SENTENCE = "I would be less likely to answer {target}."

_STYLES = ("choice", "binned")
_ADAPTERS = ("lora", "full")
_DEFAULT_TEMPLATE = "If the {feature} were removed, how would your answer change?"


@dataclass(frozen=True)
class VerbalConfig(base.ExplainerConfig):
    """Settings of a verbal explainer (see the module docstring).

    ``model``: the base model reference that :func:`introspect.explain.load` rebuilds (an alias or
    a model directory); may stay None when the model is always passed in.
    """

    model: str | None = None
    template: str = _DEFAULT_TEMPLATE
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
        problems = []
        if not isinstance(self.template, str):
            problems.append("template must be a string")
        else:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
            if "feature" not in fields:
                problems.append("template must contain the placeholder {feature}")
            if fields - {"feature", "answer"}:
                problems.append(
                    f"template may use only {{feature}} and {{answer}}, got {sorted(fields)}"
                )
        if self.labels not in _STYLES:
            problems.append(f"labels must be one of {_STYLES}, got {self.labels!r}")
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


# ------------------------------------------------------------------------------ sentences


def label_sentence(label: str, choices: Sequence[str], target: str, style: str = "choice") -> str:
    """The sentence the model is trained on for ``label`` (see the module docstring)."""
    if label == UNCHANGED:
        return UNCHANGED_SENTENCE
    if style == "binned":
        if label == "toward":
            return TOWARD_SENTENCE.format(target=target.strip())
        if label == "away":
            return AWAY_SENTENCE.format(target=target.strip())
        raise ValueError(f"binned labels are {BINS}, got {label!r}")
    if style != "choice":
        raise ValueError(f"style must be one of {_STYLES}, got {style!r}")
    if label not in choices:
        raise ValueError(f"label {label!r} is neither 'unchanged' nor one of the choices {choices}")
    return CHANGE_SENTENCE.format(choice=label.strip())


def candidate_labels(choices: Sequence[str], style: str) -> tuple[str, ...]:
    """The labels scored for a pair, in tie-breaking order."""
    return BINS if style == "binned" else (UNCHANGED, *choices)


# -------------------------------------------------------------------------------- parsing

_PAREN = re.compile(r"\(\s*([^()]*?)\s*\)")
_SPACE = re.compile(r"\s+")
_UNCHANGED_CUES = [
    re.compile(p)
    for p in (
        r"\b(?:stay|stays|remain|remains|be)\s+(?:exactly\s+)?(?:the\s+)?(?:same|unchanged)\b",
        r"\bunchanged\b",
        r"\bnot\s+(?:be\s+)?change[ds]?\b",
        r"n't\s+(?:be\s+)?change[ds]?\b",
        r"\bno\s+change\b",
        r"\bsame\s+answer\b",
    )
]
_CHANGE_CUE = re.compile(
    r"\b(?:change|changes|changed|switch|switches|switched|flip|flips|flipped)\s+to\s+(?=(.*))"
)
_SOFT_CUE = re.compile(r"\bwould\s+(?:now\s+|instead\s+)?be\s+(?=(.*))")
_BIN_CUES = [
    (re.compile(r"\bmore\s+likely\b"), "toward"),
    (re.compile(r"\btowards?\b"), "toward"),
    (re.compile(r"\bless\s+likely\b"), "away"),
    (re.compile(r"\baway\s+from\b"), "away"),
]
_LEAD = re.compile(r"^(?:the\s+)?(?:answer|option|choice)\b\s*:?\s*")
_CONFLICT = object()


def _norm(text: str) -> str:
    text = text.casefold().replace("\u2019", "'")
    text = re.sub(r"<<<\s*answer\s*:\s*", "", text).replace(">>>", "")
    text = _PAREN.sub(r"(\1)", text)
    text = re.sub(r"\(\s+", "(", text)
    return _SPACE.sub(" ", text).strip()


def _choice_keys(choice: str) -> list[str]:
    key = _norm(choice).rstrip(".").strip()
    if not key:
        return []
    keys = [key]
    inner = re.fullmatch(r"\((.+)\)", key)
    if inner:
        keys.append(inner.group(1))
    elif re.fullmatch(r"[a-z0-9]", key):
        keys.append(f"({key})")
    return keys


def _match_choice(rest: str, choices: Sequence[str]) -> Any:
    """The choice ``rest`` starts with; None when none does; _CONFLICT when two do equally."""
    rest = _LEAD.sub("", rest.strip())
    # An unclosed bracket ("(b" from a cut-off generation) still names b.
    variants = [rest, rest[1:]] if rest.startswith("(") else [rest]
    best_len, best = 0, set()
    for c in choices:
        for key in _choice_keys(c):
            end = len(key)
            for r in variants:
                if r.startswith(key) and (end == len(r) or not r[end].isalnum()):
                    if end > best_len:
                        best_len, best = end, {c}
                    elif end == best_len:
                        best.add(c)
    if not best:
        return None
    return best.pop() if len(best) == 1 else _CONFLICT


def parse_explanation(text: Any, choices: Iterable[str], style: str | None = None) -> str:
    """The label an explanation states: ``"unchanged"``, one of ``choices`` (as given),
    ``"toward"``/``"away"``, or ``"unparsed"`` when the text states none, several different ones,
    or a change to something that is not a choice. ``style`` (``"choice"``/``"binned"``) restricts
    the labels accepted; None accepts both vocabularies. Never raises on odd input."""
    if not isinstance(text, str):
        return UNPARSED
    try:
        choices = [c for c in choices if isinstance(c, str)]
    except TypeError:
        choices = []
    t = _norm(text)
    if not t:
        return UNPARSED
    found: set[Any] = set()
    if any(p.search(t) for p in _UNCHANGED_CUES):
        found.add(UNCHANGED)
    for m in _CHANGE_CUE.finditer(t):
        hit = _match_choice(m.group(1), choices)
        found.add(_CONFLICT if hit is None else hit)
    for m in _SOFT_CUE.finditer(t):
        hit = _match_choice(m.group(1), choices)
        if hit is not None:
            found.add(hit)
    for pattern, label in _BIN_CUES:
        if pattern.search(t):
            found.add(label)
    if len(found) != 1:
        return UNPARSED
    label = found.pop()
    if label is _CONFLICT:
        return UNPARSED
    if style == "choice" and label in ("toward", "away") and label not in choices:
        return UNPARSED
    if style == "binned" and label not in BINS:
        return UNPARSED
    return label


# ---------------------------------------------------------------------------------- inputs


def _as_pairs(data: Any) -> list[Any]:
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


def _row_order(n: int, rows: Any) -> np.ndarray:
    if rows is None:
        return np.arange(n)
    r = np.asarray(rows)
    if r.dtype == bool:
        if r.shape != (n,):
            raise ValueError(f"rows: a boolean mask must have shape ({n},), got {r.shape}")
        return np.flatnonzero(r)
    if r.ndim != 1 or (r.size and r.dtype.kind not in "iu"):
        raise ValueError("rows must be a 1-D array of row indices or a boolean mask")
    if r.size and (r.min() < 0 or r.max() >= n):
        raise ValueError(f"rows: indices must lie in [0, {n}), got {r.min()}..{r.max()}")
    return r.astype(np.int64)


def _canonical_choice(label: str, choices: Sequence[str]) -> str | None:
    if label in choices:
        return label
    keys = set(_choice_keys(label))
    hits = [c for c in choices if keys & set(_choice_keys(c))]
    return hits[0] if len(hits) == 1 else None


def feature_description(pair: Any, config: VerbalConfig) -> str:
    if config.feature_key is not None:
        value = (pair.meta or {}).get(config.feature_key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    if pair.remove:
        return "text " + " and ".join(f'"{s.strip()}"' for s in pair.remove)
    return config.default_feature


def _fingerprint(model: torch.nn.Module) -> str:
    """A cheap fingerprint of the base weights: names, shapes, dtypes and a strided sample of up to
    4096 values of every tensor (adapters excluded, wrapped layers named as unwrapped)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                continue
            h.update(name.replace(".base.", ".").encode())
            h.update(f"{tuple(p.shape)}|{p.dtype}".encode())
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            h.update(flat[::step].to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------ explainer


@base.register("verbal")
class VerbalExplainer(base.Explainer):
    """The model explains its own counterfactual behaviour in words; see the module docstring."""

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
        return next(self.model.parameters()).device

    def _pad_id(self) -> int:
        tok = self.tokenizer
        for v in (tok.pad_token_id, tok.eos_token_id):
            if v is not None:
                return int(v)
        return 0

    def _eos(self) -> list[int]:
        eos = self.tokenizer.eos_token_id
        return [] if eos is None else [int(eos)]

    def _max_len(self) -> int | None:
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
        from introspect.behaviour import choice_logprobs, encode

        self._ensure_model()
        enc = [encode(self.tokenizer, p.x, p.choices) for p in pairs]
        logps = choice_logprobs(self.model, enc, batch_size=self.config.eval_batch_size)
        return [p.choices[int(torch.argmax(lp))] for p, lp in zip(pairs, logps, strict=True)]

    def followup(self, pair: Any, answer: str) -> tuple[str, bool]:
        """The rendered follow-up prompt and whether it came from the chat template."""
        from introspect.models import format_prompt

        question = self.config.template.format(
            feature=feature_description(pair, self.config), answer=answer.strip()
        )
        if pair.is_chat:
            messages = [dict(m) for m in pair.x]
            messages.append({"role": "assistant", "content": answer.strip()})
            messages.append({"role": "user", "content": question})
            return format_prompt(self.tokenizer, messages), True
        return f"{pair.x}{answer}\n\n{question}\n", False

    def _prompt_ids(self, pairs: Sequence[Any], answers: Sequence[str] | None) -> list[list[int]]:
        self._ensure_model()
        if answers is None:
            answers = self.answers(pairs)
        elif len(answers) != len(pairs):
            raise ValueError(f"{len(answers)} answers for {len(pairs)} pairs")
        out = []
        for p, a in zip(pairs, answers, strict=True):
            text, chat = self.followup(p, a)
            ids = self.tokenizer(text, add_special_tokens=not chat)["input_ids"]
            if not ids:
                raise ValueError(f"pair {p.id!r}: the follow-up prompt encodes to no tokens")
            out.append(list(ids))
        return out

    def _sentence_ids(self, sentence: str) -> list[int]:
        ids = list(self.tokenizer(sentence, add_special_tokens=False)["input_ids"]) + self._eos()
        if not ids:
            raise ValueError(f"the label sentence {sentence!r} encodes to no tokens")
        return ids

    def _check_length(self, pair: Any, n: int) -> None:
        limit = self._max_len()
        if limit is not None and n > limit:
            raise ValueError(
                f"pair {pair.id!r}: the follow-up with its explanation is {n} tokens, longer "
                f"than the model's context ({limit})"
            )

    # ------------------------------------------------------------------------------- labels

    def target_labels(self, pairs: Sequence[Any], labels: Any) -> list[str]:
        """Per-pair labels in the configured style from ``labels`` (a
        :class:`~introspect.labels.Labels` aligned by pair id, or one value per pair: numeric Δ
        or categorical labels)."""
        style = self.config.labels
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
        out = []
        if numeric:
            from introspect.evaluation.metrics import bin_delta

            bins = bin_delta(values.astype(np.float64), float(self.config.threshold))
            for p, b in zip(pairs, bins, strict=True):
                if style == "binned" or b == UNCHANGED:
                    out.append(str(b))
                elif b == "toward":
                    out.append(p.target)
                else:
                    others = [c for c in p.choices if c != p.target]
                    if len(p.choices) != 2:
                        raise ValueError(
                            f"pair {p.id!r}: Δ below -threshold means 'away from the target', "
                            f"which names no single choice among {len(p.choices)}; use "
                            "labels='binned' or give the answers without the feature as labels"
                        )
                    out.append(others[0])
            return out
        for p, v in zip(pairs, values, strict=True):
            if not isinstance(v, str):
                raise ValueError(f"pair {p.id!r}: label {v!r} is neither a number nor a string")
            if v == UNCHANGED or (style == "binned" and v in BINS):
                out.append(v)
                continue
            hit = _canonical_choice(v, p.choices) if style == "choice" else None
            if hit is None:
                allowed = BINS if style == "binned" else (UNCHANGED, *p.choices)
                raise ValueError(
                    f"pair {p.id!r}: label {v!r} is not one of {list(allowed)} (labels={style!r})"
                )
            out.append(hit)
        return out

    # ---------------------------------------------------------------------------------- fit

    def _prepare_adapter(self) -> None:
        cfg = self.config
        if lora_mod.lora_layers(self.model):
            lora_mod.remove_lora(self.model)
        self.base_fingerprint = _fingerprint(self.model)
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
        cfg = self.config
        self._ensure_model()
        pairs = _as_pairs(data)
        order = _row_order(len(pairs), rows)
        if answers is not None and len(answers) != len(pairs):
            raise ValueError(f"{len(answers)} answers for {len(pairs)} pairs")
        targets = self.target_labels(pairs, labels)
        sel = [pairs[i] for i in order]
        if not sel:
            raise ValueError("no training pairs")
        sel_answers = None if answers is None else [answers[i] for i in order]
        self._prepare_adapter()  # B = 0: the answers below are the base model's
        items = self.examples(sel, [targets[i] for i in order], answers=sel_answers)

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
                    total, count = 0.0, 0
                    perm = rng.permutation(len(items))
                    for s in range(0, len(items), cfg.batch_size):
                        batch = [items[j] for j in perm[s : s + cfg.batch_size]]
                        loss, n_tok = self.sentence_loss(batch)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        total += float(loss.detach()) * n_tok
                        count += n_tok
                    history.append(total / max(count, 1))
                    logger.debug("verbal epoch %d: loss %.5g", epoch, history[-1])
        finally:
            for p in model.parameters():
                p.requires_grad_(False)
            model.train(was_training)
        self.fitted = True
        self.info = {"n_train": len(items), "epoch_loss": history}
        return self

    def examples(
        self, pairs: Sequence[Any], labels: Sequence[str], *, answers: Sequence[str] | None = None
    ) -> list[tuple[list[int], list[int]]]:
        """Token ids of each pair's follow-up prompt and of the sentence stating its label
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

    def sentence_loss(self, batch: Sequence[tuple[list[int], list[int]]]) -> tuple[Any, int]:
        """Mean cross-entropy of the sentence tokens of ``batch`` (items of :meth:`examples`)
        given their prompts, with the graph kept for a backward pass, and the number of
        sentence tokens it averages over."""
        ids, mask, tmask = self._batch(batch, self._device)
        logits = self.model(input_ids=ids, attention_mask=mask).logits
        pred = logits[:, :-1][tmask[:, 1:]]
        gold = ids[:, 1:][tmask[:, 1:]]
        return torch.nn.functional.cross_entropy(pred.float(), gold), int(gold.numel())

    def _batch(self, batch, device):
        """Right-padded ids, attention mask and the mask of label-sentence tokens."""
        width = max(len(a) + len(b) for a, b in batch)
        ids = torch.full((len(batch), width), self._pad_id(), dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        tmask = torch.zeros(len(batch), width, dtype=torch.bool)
        for r, (a, b) in enumerate(batch):
            seq = a + b
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
            tmask[r, len(a) : len(seq)] = True
        return ids.to(device), mask.to(device), tmask.to(device)

    def _selected_prompts(self, data: Any, rows: Any, answers: Sequence[str] | None):
        """The pairs ``rows`` selects (in that order) and their follow-up prompts' token ids."""
        pairs = _as_pairs(data)
        order = _row_order(len(pairs), rows)
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
        (EOS included) after the follow-up prompt, teacher-forced. The prompt runs once per
        pair; each candidate sentence continues from its key/value cache."""
        cfg = self.config
        self._ensure_model()
        sel, prompts = self._selected_prompts(data, rows, answers)
        cands: list[list[tuple[str, list[int]]]] = []
        for p, ids in zip(sel, prompts, strict=True):
            mine = []
            for label in candidate_labels(p.choices, cfg.labels):
                tgt = self._sentence_ids(label_sentence(label, p.choices, p.target, cfg.labels))
                self._check_length(p, len(ids) + len(tgt))
                mine.append((label, tgt))
            cands.append(mine)
        out: list[dict[str, float]] = [{} for _ in sel]
        per = max(1, cfg.eval_batch_size // 2)  # prompts per batch; the candidates follow each
        for s in range(0, len(sel), per):
            chunk = range(s, min(s + per, len(sel)))
            scores = self._score_candidates([prompts[k] for k in chunk], [cands[k] for k in chunk])
            for k, sc in zip(chunk, scores, strict=True):
                out[k] = sc
        return out

    def _prompt_forward(self, prompts: list[list[int]]):
        """One forward over the left-padded ``prompts`` with explicit position ids, keeping the
        key/value cache: the model's output, the attention mask and the position ids."""
        device = self._device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id(), dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        return out, mask, pos

    def _score_candidates(
        self, prompts: list[list[int]], cands: list[list[tuple[str, list[int]]]]
    ) -> list[dict[str, float]]:
        """Summed log-probabilities of every candidate sentence of a batch of prompts: one
        forward over the left-padded prompts (explicit position ids) keeps their key/value cache,
        and each round of candidates continues from a copy of it."""
        device = self._device
        b = len(prompts)
        first, mask, _ = self._prompt_forward(prompts)
        past = first.past_key_values
        head = torch.log_softmax(first.logits[:, -1].double(), dim=-1)  # the first sentence token
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        out: list[dict[str, float]] = [{} for _ in prompts]
        rounds = max(len(c) for c in cands)
        for j in range(rounds):
            sents = [c[j][1] if j < len(c) else [self._pad_id()] for c in cands]
            # Input: every sentence token but the last; output k predicts token k + 1.
            w = max(1, max(len(t) - 1 for t in sents))
            inp = torch.full((b, w), self._pad_id(), dtype=torch.long)
            smask = torch.zeros(b, w, dtype=torch.long)
            for r, t in enumerate(sents):
                if len(t) > 1:
                    inp[r, : len(t) - 1] = torch.tensor(t[:-1])
                    smask[r, : len(t) - 1] = 1
            inp, smask = inp.to(device), smask.to(device)
            spos = lengths[:, None] + torch.arange(w, device=device)[None]
            # A round appends to the cache it is given: the last round may use the prompts'.
            cache = past if j == rounds - 1 else copy.deepcopy(past)
            res = self.model(
                input_ids=inp,
                attention_mask=torch.cat([mask, smask], 1),
                position_ids=spos,
                past_key_values=cache,
                use_cache=True,
            )
            logp = torch.log_softmax(res.logits.double(), dim=-1)
            for r, t in enumerate(sents):
                if j >= len(cands[r]):
                    continue
                total = head[r, t[0]]
                if len(t) > 1:
                    nxt = torch.tensor(t[1:], device=device)
                    total = total + logp[r, : len(t) - 1].gather(1, nxt[:, None]).sum()
                out[r][cands[r][j][0]] = float(total)
        return out

    def predict(
        self,
        data: Any,
        *,
        rows: Any = None,
        answers: Sequence[str] | None = None,
        mode: str = "score",
    ) -> np.ndarray:
        """One label per pair (an object array of str), for every pair or for ``rows`` in that
        order. ``mode="score"``: the candidate sentence with the highest log-probability (ties go
        to the earlier candidate: unchanged, then the choices or bins in order);
        ``mode="generate"``: greedy text parsed by :func:`parse_explanation`."""
        if mode == "generate":
            pairs = _as_pairs(data)
            order = _row_order(len(pairs), rows)
            texts = self.explain(pairs, rows=rows, answers=answers)
            labels = [
                parse_explanation(t, pairs[i].choices, self.config.labels)
                for t, i in zip(texts, order, strict=True)
            ]
        elif mode == "score":
            scores = self.label_logprobs(data, rows=rows, answers=answers)
            labels = [max(s, key=lambda k, s=s: (s[k], -list(s).index(k))) for s in scores]
        else:
            raise ValueError(f"mode must be 'score' or 'generate', got {mode!r}")
        out = np.empty(len(labels), dtype=object)
        out[:] = labels
        return out

    # --------------------------------------------------------------------------- generation

    @torch.no_grad()
    def explain(
        self, data: Any, *, rows: Any = None, answers: Sequence[str] | None = None
    ) -> list[str]:
        """The model's greedy answer to the follow-up question for each pair (at most
        ``max_new_tokens`` tokens, stopping at EOS), decoded without special tokens."""
        cfg = self.config
        self._ensure_model()
        sel, prompts = self._selected_prompts(data, rows, answers)
        for p, ids in zip(sel, prompts, strict=True):
            self._check_length(p, len(ids) + cfg.max_new_tokens)
        texts = []
        for s in range(0, len(prompts), cfg.eval_batch_size):
            for seq in self._greedy(prompts[s : s + cfg.eval_batch_size]):
                texts.append(self.tokenizer.decode(seq, skip_special_tokens=True).strip())
        return texts

    def _greedy(self, prompts: list[list[int]]) -> list[list[int]]:
        """Greedy decoding of a left-padded batch with explicit position ids and a KV cache."""
        device = self._device
        eos = set(self._eos())
        b = len(prompts)
        out, mask, pos = self._prompt_forward(prompts)
        past = out.past_key_values
        last_pos = pos[:, -1:]
        new: list[list[int]] = [[] for _ in prompts]
        done = [False] * b
        for step in range(self.config.max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)
            for r in range(b):
                if not done[r]:
                    t = int(nxt[r])
                    if t in eos:
                        done[r] = True
                    else:
                        new[r].append(t)
            if all(done) or step == self.config.max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=device)], 1)
            last_pos = last_pos + 1
            out = self.model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=last_pos,
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
        return new

    # -------------------------------------------------------------------------------- files

    def _state(self) -> dict[str, Any]:
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
            base.write_atomic(path / base.WEIGHTS_FILE, blob)
        base.write_meta(path, self.config, self._state())
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, model: Any = None, tokenizer: Any = None
    ) -> VerbalExplainer:
        """Reads an explainer written by :meth:`save` onto ``model`` (modified in place), or onto
        the base model ``config.model`` names when none is given."""
        path = Path(path)
        meta = base.read_meta(path)
        config = base.config_from_dict(meta["config"])
        if not isinstance(config, VerbalConfig):
            raise ValueError(f"{path / base.CONFIG_FILE}: holds a {type(config).__name__}")
        state = meta.get("state") or {}
        weights = path / base.WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: file is missing")
        ex = cls(config, model=model, tokenizer=tokenizer)
        ex._ensure_model()
        if lora_mod.lora_layers(ex.model):
            raise ValueError("the model given already carries LoRA adapters; pass a plain model")
        fingerprint = _fingerprint(ex.model)
        if config.adapter == "lora":
            want = state.get("base_fingerprint")
            if want and want != fingerprint:
                raise ValueError(
                    f"{path}: the adapters were trained on another base model (weights "
                    "fingerprint differs); load them onto the model they were trained on"
                )
            modules = lora_mod.load_lora(ex.model, weights, seed=config.seed)
            ex.adapter_modules = modules
        else:
            from safetensors.torch import load_file

            tensors = load_file(str(weights))
            try:
                ex.model.load_state_dict(tensors, strict=True)
            except RuntimeError as e:
                raise ValueError(f"{weights}: weights do not fit this model: {e}") from None
            ex.adapter_modules = []
        for p in ex.model.parameters():
            p.requires_grad_(False)
        ex.base_fingerprint = state.get("base_fingerprint") or fingerprint
        ex.info = state.get("info") or {}
        ex.fitted = True
        return ex
