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
- ``L_reg`` (with ``concurrent`` and ``w_reg > 0``), the behavioural regulariser: the mean over
  the minibatch of ½·(KL(p_start ‖ p_θ) on x + KL(p_start ‖ p_θ) on x'), where p is the choice
  distribution (renormalised over the pair's choices) and p_start that of the model the run
  started from (M0, or whatever model it was given), measured once before the first step. It
  keeps the model's behaviour, with and without the feature, close to where it started.

How a step is computed (``packed_step``, on by default): every sequence the step reads for a
pair (x with its choices, x' with its choices, the verbal conversation with its label sentence)
is one token trie, and the minibatch's tries run as one forward and one backward with the
extraction engine's 4D mask and position ids, the LM head only at the read positions
(:mod:`introspect.training.packed`); the starting pass over the training pairs uses the engine's
packed forward, and gives the verbal explainer M0's answers too. The loss and every gradient
equal those of separate forwards (``packed_step=False``, ``--no-packed-step``) up to float32
rounding. A model that cannot take the packed mask is found on the first pair at setup and runs
separate forwards (``train.json`` records ``packed_step`` and why it is off).

Without ``concurrent`` the model is frozen and only the probe trains: the control. The model is
kept in eval mode (no dropout), so a step is a deterministic function of the weights, the
optimizer state and the step number: minibatches come from a seeded permutation per epoch, and a
run resumed from a checkpoint follows the same trajectory as an uninterrupted one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from introspect.training.config import TrainConfig
from introspect.training.setup import VERBAL_JSON, verbal_explainer
from introspect.training.trainer import FORMAT_VERSION, Trainer, batch_rows

__all__ = [
    "FORMAT_VERSION",
    "VERBAL_JSON",
    "TrainConfig",
    "Trainer",
    "batch_rows",
    "train",
    "verbal_explainer",
]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train(
    config: TrainConfig,
    *,
    model: Any = None,
    tokenizer: Any = None,
    chat_template: str = "model",
    resume: bool = False,
    say: Callable[[str], None] = _say,
) -> dict[str, Any]:
    """Runs (or, with ``resume``, continues) training into ``config.out``; returns the contents
    of ``train.json``.

    ``model``: a model object to start from instead of loading ``config.model`` (a transformers
    causal LM with its ``tokenizer``, or a :class:`~introspect.models.LoadedModel`);
    ``config.model`` is then only the name ``train.json`` records, with ``model.in_memory`` and
    the weights hash of the object's tensors. The caller's model and tokenizer are never
    changed: a concurrent run trains a ``copy.deepcopy`` of the model (in float32, on the
    run's device), so it needs the memory of a second copy; a frozen run reads the object
    itself, which must already be on the run's device, and leaves its train/eval modes and
    ``requires_grad`` flags as they were. On resume, a concurrent run continues from the model
    of its last checkpoint (the object is not read); a frozen run needs the object it started
    from (the same weights hash).

    ``chat_template``: how chat-message prompts are rendered (see
    :func:`introspect.models.with_chat_template`): ``"model"`` (the tokenizer's own template),
    ``"plain"`` (a plain transcript) or ``"auto"`` (the transcript where the tokenizer has no
    template); it applies to every prompt of the run, and the checkpoints' tokenizers carry
    it. ``train.json`` records a mode other than ``"model"`` as ``chat_template``, and a run
    resumes only with the mode it started with.

    Example, the model trained on anti-sycophancy while a probe learns M0's Δ::

        run = introspect.extract(model, tok, "train.jsonl", "build/m0", layers=[15])
        cfg = introspect.TrainConfig(model="my-model", pairs="train.jsonl", labels="build/m0",
                                     out="build/train", concurrent=True, layer=15, steps=16)
        doc = introspect.train(cfg, model=model, tokenizer=tok)
        doc["log"][-1]["loss"], doc["checkpoints"]

    Raises :class:`TrainError`, :class:`~introspect.labels.LabelError`,
    :class:`~introspect.data.PairError` or :class:`~introspect.run.RunError` for bad inputs."""
    trainer = Trainer(
        config,
        model=model,
        tokenizer=tokenizer,
        chat_template=chat_template,
        resume=resume,
        say=say,
    )
    return trainer.run()
