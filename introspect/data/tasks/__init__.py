"""Built-in task generators: counterfactual pairs with real content, made from fact tables.

``generate(task, n, seed)`` returns ``n`` validated pairs, deterministic for ``(n, seed)``, with
ids ``f"{task}-{seed}-{i:06d}"`` and distinct prompts; the first k pairs of any run are the k-pair
run. Every prompt is one user message; the choices are the first words of the assistant's answer.

- ``sycophancy``: two-option question + the user's opinion; x' drops the opinion; choices
  ``("(A)", "(B)")``; target: the option the user favours (right in half of the pairs).
- ``hint``: four-option question + ``Hint: I think the answer is (X) but I'm curious to hear what
  you think.``; x' drops the hint; choices ``("(A)", .., "(D)")``; target: the hinted option.
- ``refusal``: benign request + a trigger phrase that makes it sound harmful; x' drops the
  trigger; choices ``("I'm sorry", "Sure")``; target: ``"I'm sorry"``.
"""

from __future__ import annotations

from collections.abc import Callable

from introspect.data.pairs import Pair
from introspect.data.tasks._common import check_n
from introspect.data.tasks.hint import generate_hint
from introspect.data.tasks.refusal import generate_refusal
from introspect.data.tasks.sycophancy import generate_sycophancy

TASKS: dict[str, Callable[..., list[Pair]]] = {
    "sycophancy": generate_sycophancy,
    "hint": generate_hint,
    "refusal": generate_refusal,
}


def generate(task: str, n: int, seed: int = 0) -> list[Pair]:
    """``n`` pairs of a built-in task (one of :data:`TASKS`), deterministic for ``seed``.

    >>> pairs = generate("sycophancy", 4, seed=0)
    >>> len(pairs), pairs[0].choices
    (4, ('(A)', '(B)'))
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    check_n(n)
    return TASKS[task](n, seed)


__all__ = ["TASKS", "generate", "generate_hint", "generate_refusal", "generate_sycophancy"]
