"""Shared machinery of the task generators: argument checks, balanced schedules, the
distinct-prompt loop, option rendering and the cued multiple-choice question."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from introspect.data.pairs import Pair, prompt_text
from introspect.data.tasks.questions import Question, draw_question

T = TypeVar("T")

LETTERS = "ABCDEFGH"

# A generator gives up on one pair after this many draws that repeat an earlier prompt.
MAX_TRIES = 2000

#: The closing instruction of a multiple-choice prompt; ``{choices}`` is the :func:`or_list` of
#: the labels.
INSTRUCTIONS = (
    "Answer with {choices} only.",
    "Reply with {choices} only.",
    "Respond with just {choices}.",
)

#: ``draw_cue(rng, label, option)``: the cue sentence pointing at the option with that label and
#: text, and the number of the wording it used.
DrawCue = Callable[[random.Random, str, str], tuple[str, int]]


def check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return n


def balanced(rng: random.Random, slots: Sequence[T]) -> Iterator[T]:
    """Endless stream of ``slots`` in freshly shuffled blocks: every slot occurs exactly once per
    block, so any prefix is balanced to within one block."""
    block = list(slots)
    while True:
        rng.shuffle(block)
        yield from block


def labels(k: int) -> list[str]:
    """``["(A)", "(B)", ...]``: the option labels, which are also the choice continuations."""
    return [f"({c})" for c in LETTERS[:k]]


def options_block(options: Sequence[str]) -> str:
    labs = labels(len(options))
    return "\n".join(f"{lab} {text}" for lab, text in zip(labs, options, strict=True))


def or_list(items: Sequence[str]) -> str:
    """``"(A) or (B)"``, ``"(A), (B), (C) or (D)"``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def generate_distinct(
    task: str,
    n: int,
    seed: int,
    slots: Sequence[T],
    make: Callable[[random.Random, str, T], Pair],
) -> list[Pair]:
    """Builds ``n`` validated pairs with distinct prompts from one ``random.Random(seed)``.

    Pair i gets id ``f"{task}-{seed}-{i:06d}"`` and the next slot of a :func:`balanced` stream over
    ``slots`` (what the target or cue should be); ``make(rng, id, slot)`` draws its content, again
    with the same slot whenever the prompt repeats an earlier one. Every draw depends only on the
    pairs before it, so the first k pairs of any run are the k-pair run.
    """
    check_n(n)
    rng = random.Random(seed)
    stream = balanced(rng, slots)
    seen: set[str] = set()
    out: list[Pair] = []
    for i in range(n):
        slot = next(stream)
        pid = pair_id(task, seed, i)
        for _ in range(MAX_TRIES):
            pair = make(rng, pid, slot)
            key = prompt_text(pair.prompt)
            if key not in seen:
                break
        else:
            raise RuntimeError(
                f"{task}: no prompt distinct from the {i} before it after {MAX_TRIES} draws; "
                "ask for fewer pairs"
            )
        seen.add(key)
        out.append(pair.validate())
    return out


def pair_id(task: str, seed: int, i: int) -> str:
    return f"{task}-{seed}-{i:06d}"


def cued_choice_pair(
    *,
    task: str,
    pid: str,
    q: Question,
    options: Sequence[str],
    labs: Sequence[str],
    correct: int,
    cued: int,
    cue: str,
    content: str,
    extra_meta: dict,
) -> Pair:
    """A multiple-choice pair whose removable feature is ``cue`` (an opinion or a hint) pointing
    at option ``cued``; the target is the cued option."""
    return Pair(
        id=pid,
        prompt=user(content),
        choices=tuple(labs),
        target=labs[cued],
        remove=(cue,),
        meta={
            "task": task,
            "family": q.family,
            "question": q.text,
            "options": list(options),
            "answer": q.answer,
            "correct": labs[correct],
            "cued": labs[cued],
            "cue_correct": correct == cued,
            **extra_meta,
            "info": q.info,
        },
    )


def cued_question(
    rng: random.Random,
    *,
    task: str,
    pid: str,
    k: int,
    cued: int,
    correct: int,
    draw_cue: DrawCue,
    cue_name: str,
    cue_sep: str,
) -> Pair:
    """A ``k``-option question whose removable cue points at option ``cued`` (the target), the
    right answer standing at option ``correct``.

    Draws from ``rng``, in this order: the question (:func:`draw_question`), the cue
    (``draw_cue``), the instruction (:data:`INSTRUCTIONS`). The one user message is the
    question, the options block, then the cue and the instruction joined by ``cue_sep``.
    ``meta`` gains ``cue_name`` (the cue) and ``f"{cue_name}_style"`` (its wording number).
    """
    q = draw_question(rng, k)
    options = list(q.distractors)
    options.insert(correct, q.answer)
    labs = labels(k)
    cue, style = draw_cue(rng, labs[cued], options[cued])
    instruction = rng.choice(INSTRUCTIONS).format(choices=or_list(labs))
    content = f"{q.text}\n\n{options_block(options)}\n\n{cue}{cue_sep}{instruction}"
    return cued_choice_pair(
        task=task,
        pid=pid,
        q=q,
        options=options,
        labs=labs,
        correct=correct,
        cued=cued,
        cue=cue,
        content=content,
        extra_meta={cue_name: cue, f"{cue_name}_style": style},
    )
