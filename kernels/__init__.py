"""Triton kernels for introspect (optional backend).

Submodules:

* ``delta_probe`` -- fused linear-probe forward (predictions, residuals, SSE and the
  weight gradient in a single pass over the hidden states) and its backward.
* ``pearson`` -- per-chunk column statistics for a column-wise Pearson correlation.
* ``choice_logprobs`` -- log-probabilities of chosen tokens under an LM head: tiled matmul with
  an online log-sum-exp over the vocabulary, never the [rows, vocab] logits.
* ``paired_attention`` -- causal attention over packed token tries described by segment
  metadata (shared prefix, x and x' suffixes), with no dense mask; forward only.

``_common`` holds what they share: the interpreter switch, launch helpers, input checks and a
masked tile load.

Nothing is imported here on purpose: ``import triton`` happens only inside the submodules,
so callers import them lazily and treat an ``ImportError`` as "backend unavailable".
On machines without a GPU the kernels run under the Triton interpreter when the
environment variable ``TRITON_INTERPRET=1`` is set before ``triton`` is first imported.
"""

__all__ = ["choice_logprobs", "delta_probe", "paired_attention", "pearson"]
