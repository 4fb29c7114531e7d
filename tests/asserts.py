"""A diagnostic comparison: on failure it says how many elements differ, where the worst one is,
and whether NaN/inf positions disagree."""

from __future__ import annotations

import torch


def assert_close(actual, expected, *, atol: float, rtol: float, name: str = "value") -> None:
    assert actual is not None and expected is not None, f"{name}: missing tensor"
    assert actual.shape == expected.shape, (
        f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    )
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    if not torch.equal(nan_a, nan_e):
        extra = (nan_a & ~nan_e).nonzero().tolist()[:5]
        missing = (nan_e & ~nan_a).nonzero().tolist()[:5]
        raise AssertionError(
            f"{name}: NaN positions differ; unexpected NaN at {extra}, missing NaN at {missing}"
        )
    inf_a = torch.isinf(a) & ~nan_a
    inf_e = torch.isinf(e) & ~nan_e
    if not torch.equal(inf_a, inf_e) or not torch.equal(a[inf_a], e[inf_e]):
        raise AssertionError(f"{name}: inf positions or signs differ")
    finite = ~(nan_a | inf_a)
    diff = (a - e).abs()
    bound = atol + rtol * e.abs()
    bad = finite & (diff > bound)
    if bad.any():
        count = int(bad.sum())
        worst = torch.where(finite, diff - bound, torch.zeros_like(diff)).argmax()
        idx = list(torch.unravel_index(worst, a.shape)) if a.dim() else []
        idx = [int(i) for i in idx]
        raise AssertionError(
            f"{name}: {count}/{a.numel()} elements differ beyond atol={atol:g}, rtol={rtol:g}; "
            f"worst at {idx}: got {a.flatten()[worst].item():.8g}, expected "
            f"{e.flatten()[worst].item():.8g} (|diff| {diff.flatten()[worst].item():.3g})"
        )


def max_error(actual, truth) -> float:
    """Largest finite |actual - truth| (in float64)."""
    d = (actual.detach().to(torch.float64) - truth.detach().to(torch.float64)).abs()
    d = d[torch.isfinite(d)]
    return float(d.max()) if d.numel() else 0.0


def plain_logprob(model, prompt: list[int], continuation: list[int]) -> float:
    """log p(continuation | prompt), summed over its tokens, from one plain unpadded forward of
    their concatenation (float64 log-softmax): the reference for every packed or cached
    scoring."""
    ids = torch.tensor([prompt + continuation])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    n = len(prompt)
    return float(logp[n - 1 : -1].gather(1, ids[0, n:, None]).sum())
