"""Verbal self-explanation: the language model says how its own answer would change without the
feature (``"verbal"``).

**The conversation** (``config.prompt``). ``"followup"`` (the default) is x, the model's answer on
x, then a follow-up question::

    <x>  →  assistant: "(B)"  →  user: "If the text "Hint: ..." were removed, how would your
    answer change?"  →  assistant: <explanation>

For chat prompts the follow-up is two more messages (the answer as an assistant turn, the question
as a user turn) rendered with the tokenizer's chat template and its generation prompt; for text
prompts it is ``x + answer + "\\n\\n" + question + "\\n"``.

``"same-turn"`` (the precursor work's format) shows no answer: the question is appended to x's own
turn, so the model explains before it has answered::

    user: "<x's last user message>\\n\\nIf the text "Hint: ..." were removed, how would your
    answer change?"  →  assistant: <explanation>

For chat prompts the question goes at the end of x's last user message after a blank line (earlier
and later messages are kept as they are), rendered with the chat template and its generation
prompt; for text prompts it is ``x + "\\n\\n" + question + "\\n"``.

- **Question**: ``config.template`` with ``{feature}`` (and, under ``"followup"`` only,
  optionally ``{answer}``) filled in. The feature description is ``pair.meta[config.feature_key]``
  when that key is set and holds text, else the removed spans quoted (``text "..."``, joined by
  ``and``), else ``config.default_feature`` (pairs given by ``prompt_mod``).
- **Answer** (``"followup"`` only): ``config.answer`` is ``"argmax"`` (the choice the model, as
  it is when the prompts are built, gives the highest log-probability on x), ``"target"`` (the
  pair's target) or ``"meta:<key>"``; ``fit``/``predict``/``explain`` also take explicit
  ``answers=`` (ignored, and never computed, under ``"same-turn"``).
- **Labels** (``config.labels``), with the exact sentences the model is trained on and scored with:

  ================  =========================  ============================================
  style             label                      sentence
  ================  =========================  ============================================
  ``"choice"``      ``"unchanged"``            ``My answer would stay the same.``
  ``"choice"``      a choice c (e.g. " (B)")   ``My answer would change to (B).`` (c stripped)
  ``"binned"``      ``"unchanged"``            ``My answer would stay the same.``
  ``"binned"``      ``"toward"``               ``I would be more likely to answer (B).``
  ``"binned"``      ``"away"``                 ``I would be less likely to answer (B).``
  ``"precursor"``   ``"remain:(A)"``           ``My answer would remain (A).``
  ``"precursor"``   ``"change:(B)"``           ``My answer would change to (B).``
  ================  =========================  ============================================

  (binned sentences name the pair's target; precursor labels name a choice stripped of spaces).
  Each sentence is followed by the tokenizer's EOS token. The candidates scored for a pair, in
  tie-breaking order, are ``"unchanged"`` then the choices (``"choice"``), the three bins
  (``"binned"``), or ``remain:c`` for every choice c in order then ``change:c`` for every choice
  in order (``"precursor"``).

  Labels given to :meth:`VerbalExplainer.fit` are categorical (these labels; a choice may be given
  up to case, surrounding spaces and brackets, also after ``remain:``/``change:``) or, for
  ``"choice"`` and ``"binned"``, numeric Δ. Numeric Δ is binned with ``config.threshold``
  (:func:`introspect.evaluation.bin_delta`: ``|Δ| ≤ threshold`` → unchanged, above → toward, below
  → away); under ``"choice"`` "toward" becomes "change to the target" and "away" "change to the
  other choice", which needs pairs with exactly two choices.

  Precursor labels are the model's answer change by greedy argmax: ``remain:X`` where its answers
  on x and on x′ agree (X its answer on x), ``change:Y`` where they differ (Y its answer on x′).
  :meth:`VerbalExplainer.greedy_answers` gives the answers (the choice with the highest
  teacher-forced log-probability after x, or after x′ = ``pair.x_mod``) and
  :func:`precursor_labels` the labels::

      ex = VerbalExplainer(VerbalConfig.precursor(), model=model, tokenizer=tok)
      y = precursor_labels(ex.greedy_answers(pairs, "x"), ex.greedy_answers(pairs, "mod"))
      ex.fit(pairs, y)

  :meth:`VerbalConfig.precursor` is ``prompt="same-turn", labels="precursor"`` (other settings as
  keywords); the two settings may also be combined with the other formats.

Training is teacher-forced cross-entropy on the label sentence's tokens only (the prompt is
masked), averaged over the sentence tokens of a batch; batches are right-padded, drawn in a seeded
order, and the model stays in eval mode (no dropout), so a fit is deterministic for its seed.
``adapter="lora"`` trains low-rank adapters (:mod:`introspect.explain.lora`) on the modules named
by ``lora_targets`` and saves only those; ``adapter="full"`` trains and saves every parameter.
The explainer works on the model it is given, in place (adapters are injected into it).

Predictions: :meth:`~VerbalExplainer.predict` scores every candidate sentence by its summed
teacher-forced log-probability (EOS included; :meth:`~VerbalExplainer.label_logprobs`) and returns
the best label — exact, and far faster than generating; ``mode="generate"`` instead decodes
greedily (:meth:`~VerbalExplainer.explain`) and maps the text back with
:func:`parse_explanation`, which returns ``"unparsed"`` for text it cannot read (that counts as
"changed" in changed-F1).

**The scalar score**: :meth:`~VerbalExplainer.scores` gives one float64 per pair from the same
candidate log-probabilities (:func:`verbal_score`; pass ``logprobs=`` to ``predict`` and
``scores`` to share one pass), the log-odds of "changed" over "unchanged":

================  ==================================================
style             score
================  ==================================================
``"binned"``      log p(toward) − log p(away)
``"precursor"``   log Σ_c p(change:c) − log Σ_c p(remain:c)
``"choice"``      log Σ_c p(change to c) − log p(unchanged)
================  ==================================================

Saving writes ``explainer.json`` (config, fitted state, a fingerprint of the base weights) and
``weights.safetensors`` (the adapters, or every weight for ``adapter="full"``).
:func:`introspect.explain.load` rebuilds the base model from ``config.model`` (an alias or a model
directory, see :func:`introspect.models.load_model`); ``VerbalExplainer.load(path, model=...,
tokenizer=...)`` uses a model already in memory. Adapters refuse to load onto a base model whose
fingerprint differs from the one they were trained on.

Modules: ``sentences`` (what is said and asked, and the precursor labels), ``parsing`` (reading
labels out of text),
``decoding`` (the batched forward passes over token ids) and ``explainer`` (the config and the
explainer).
"""

from __future__ import annotations

from introspect.explain.verbal.explainer import (
    VerbalConfig,
    VerbalExplainer,
    best_label,
    verbal_score,
)
from introspect.explain.verbal.parsing import (
    canonical_choice,
    labels_from_delta,
    labels_from_names,
    parse_explanation,
)
from introspect.explain.verbal.sentences import (
    AWAY_SENTENCE,
    BINS,
    CHANGE_SENTENCE,
    PRECURSOR_CHANGE_SENTENCE,
    PRECURSOR_REMAIN_SENTENCE,
    PROMPTS,
    STYLES,
    TOWARD_SENTENCE,
    UNCHANGED,
    UNCHANGED_SENTENCE,
    UNPARSED,
    candidate_labels,
    feature_description,
    label_sentence,
    precursor_label,
    precursor_labels,
    split_precursor,
)

__all__ = [
    "AWAY_SENTENCE",
    "BINS",
    "CHANGE_SENTENCE",
    "PRECURSOR_CHANGE_SENTENCE",
    "PRECURSOR_REMAIN_SENTENCE",
    "PROMPTS",
    "STYLES",
    "TOWARD_SENTENCE",
    "UNCHANGED",
    "UNCHANGED_SENTENCE",
    "UNPARSED",
    "VerbalConfig",
    "VerbalExplainer",
    "best_label",
    "candidate_labels",
    "canonical_choice",
    "feature_description",
    "label_sentence",
    "labels_from_delta",
    "labels_from_names",
    "parse_explanation",
    "precursor_label",
    "precursor_labels",
    "split_precursor",
    "verbal_score",
]
