"""The library as a researcher meets it: a model that exists only in memory goes through
``introspect.extract``, ``train`` and ``evaluate``; the caller's objects are left as they were."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from tiny import tiny_llama, tiny_tokenizer  # noqa: E402

import introspect  # noqa: E402


def _dicts(n: int = 10) -> list[dict]:
    words = ["paris", "london", "rome", "berlin", "bread", "world"]
    rows = []
    for i in range(n):
        a, b = words[i % 6], words[(i + 2) % 6]
        rows.append(
            {
                "id": f"q{i}",
                "prompt": [
                    {
                        "role": "user",
                        "content": f"what is the capital of {a} ? "
                        f"my friend says {b} . ( A ) {a} ( B ) {b}",
                    }
                ],
                "remove": [f"my friend says {b} ."],
                "choices": ["( A )", "( B )"] if i % 3 else ["A", "B"],
                "target": ("( A )" if i % 3 else "A") if i % 2 else ("( B )" if i % 3 else "B"),
            }
        )
    return rows


def _reference(model, tok, rows, layer: int):
    """Δ (logodds) and h(x), h(x') at the last prompt token from separate plain forwards:
    prompt rendered by the tokenizer's chat template, each choice tokenized on its own and
    scored teacher-forced with full logits."""
    deltas, hx, hm = [], [], []
    for row in rows:
        prompt_x = row["prompt"]
        text_x = prompt_x[0]["content"]
        for span in row["remove"]:
            text_x = text_x.replace(span, "")
        prompt_mod = [{"role": "user", "content": " ".join(text_x.split())}]
        f, h = [], []
        for prompt in (prompt_x, prompt_mod):
            text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            logps = []
            for choice in row["choices"]:
                c = tok(choice, add_special_tokens=False)["input_ids"]
                seq = torch.tensor([ids + c])
                with torch.no_grad():
                    out = model(input_ids=seq, output_hidden_states=True)
                lp = torch.log_softmax(out.logits[0].double(), -1)
                logps.append(sum(lp[len(ids) - 1 + k, t] for k, t in enumerate(c)))
            h.append(out.hidden_states[layer + 1][0, len(ids) - 1].numpy())
            t = row["choices"].index(row["target"])
            others = torch.stack([lp for k, lp in enumerate(logps) if k != t])
            f.append(float(logps[t] - torch.logsumexp(others, 0)))
        deltas.append(f[1] - f[0])
        hx.append(h[0])
        hm.append(h[1])
    return np.array(deltas), np.stack(hx), np.stack(hm)


@pytest.fixture(scope="module")
def in_memory():
    return tiny_llama(layers=3), tiny_tokenizer()


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("given", ["dicts", "path"])
def test_extract_a_model_held_in_memory(in_memory, tmp_path, given):
    model, tok = in_memory
    rows = _dicts()
    template = tok.chat_template
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    if given == "path":
        pairs = tmp_path / "pairs.jsonl"
        pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pairs = copy.deepcopy(rows)
    run = introspect.extract(model, tok, pairs, tmp_path / "run", layers=[1, -1])
    assert run.ids == [r["id"] for r in rows]
    # Layer 1 of 3: HF's last hidden state is after the final norm, the others are not.
    delta, hx, hm = _reference(model, tok, rows, layer=1)
    np.testing.assert_allclose(run.delta, delta, atol=1e-4)
    assert _rel(np.asarray(run.hidden(1, "x")), hx) < 1e-5
    assert _rel(np.asarray(run.hidden(1, "mod")), hm) < 1e-5
    # The caller's objects are as they were.
    assert tok.chat_template == template
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    if given == "dicts":
        assert pairs == rows


def test_pairs_as_dicts_and_as_a_file_write_the_same_run(in_memory, tmp_path):
    model, tok = in_memory
    rows = _dicts()
    path = tmp_path / "pairs.jsonl"
    introspect.write_pairs(path, introspect.coerce_pairs(rows))
    a = introspect.extract(model, tok, rows, tmp_path / "a", layers=[0])
    b = introspect.extract(model, tok, path, tmp_path / "b", layers=[0])
    assert a.input_hash == b.input_hash
    np.testing.assert_array_equal(a.delta, b.delta)
    np.testing.assert_array_equal(np.asarray(a.hidden(0, "x")), np.asarray(b.hidden(0, "x")))


def test_train_and_evaluate_a_model_held_in_memory(in_memory, tmp_path):
    model, tok = in_memory
    template = tok.chat_template
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rows = _dicts(12)
    introspect.write_pairs(tmp_path / "train.jsonl", introspect.coerce_pairs(rows[:8]))
    introspect.write_pairs(tmp_path / "held.jsonl", introspect.coerce_pairs(rows[8:]))
    introspect.extract(model, tok, rows, tmp_path / "m0", layers=[1])
    cfg = introspect.TrainConfig(
        model="in-memory-tiny",
        pairs=str(tmp_path / "train.jsonl"),
        labels=str(tmp_path / "m0"),
        out=str(tmp_path / "train"),
        concurrent=True,
        layer=1,
        steps=2,
        batch_size=4,
        lr=1e-3,
        checkpoint_every=1,
    )
    doc = introspect.train(cfg, model=model, tokenizer=tok)
    assert doc["step"] == 2 and doc["model"]["in_memory"]
    summary = introspect.evaluate(
        tmp_path / "train",
        tmp_path / "held.jsonl",
        tmp_path / "m0",
        tmp_path / "eval",
        model=model,
        tokenizer=tok,
        n_boot=20,
        plots=False,
    )
    assert summary["checkpoints"] == [0, 1, 2]
    assert {r["explainer"] for r in summary["metrics"]} >= {"probe", "ridge-m0"}
    assert tok.chat_template == template
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_the_public_names_are_there_and_documented():
    for name in introspect.__all__:
        if name == "__version__":
            continue
        value = getattr(introspect, name)
        assert (getattr(value, "__doc__", None) or "").strip(), name
    for verb in (
        "extract",
        "train",
        "evaluate",
        "run_coupling",
        "load_model",
        "read_pairs",
        "write_pairs",
        "generate",
        "open_run",
    ):
        assert (
            ">>>" in getattr(introspect, verb).__doc__ or "::" in getattr(introspect, verb).__doc__
        ), verb


def test_a_wrong_model_is_one_clear_error(tmp_path, capsys):
    from introspect.cli import main

    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in _dicts(2)))
    code = main(
        [
            "extract",
            "--model",
            "no-such-model",
            "--pairs",
            str(pairs),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("introspect: error: "), err
    with pytest.raises(introspect.IntrospectError):
        introspect.extract("no-such-model", None, pairs, tmp_path / "run2")


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's example, run as written on a tiny model saved to a directory: only its
    sizes are made small (each substitution must apply, so a changed example fails here)."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    code = next(b for b in blocks if "introspect.extract(" in b)
    model_dir = tmp_path / "model"
    tiny_llama(layers=3).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    for old, new in [
        ('"path/to/model"', repr(str(model_dir))),
        ("layers=[15]", "layers=[1]"),
        ("hidden(15,", "hidden(1,"),
        ("layer=15", "layer=1, steps=2, checkpoint_every=1, lr=1e-3"),
        ('"sycophancy", 300', '"sycophancy", 30'),
        ("pairs[:200]", "pairs[:20]"),
        ("pairs[200:]", "pairs[20:]"),
        ("model=model, tokenizer=tok\n)", "model=model, tokenizer=tok, n_boot=20\n)"),
    ]:
        assert code.count(old) >= 1, f"the README example no longer contains {old!r}"
        code = code.replace(old, new)
    (tmp_path / "build").mkdir()
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["run"].delta.shape == (30,)
    assert scope["scores"]["checkpoints"] == [0, 1, 2]
    assert {r["explainer"] for r in scope["scores"]["metrics"]} >= {"probe", "ridge-m0"}
