"""`introspect train` and `introspect eval` on a tiny random model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from safetensors.torch import load_file
from tiny import CHAT_TEMPLATE, tiny_llama, tiny_tokenizer

from introspect.cli import main
from introspect.data import read_pairs, write_pairs
from introspect.data.tasks import generate
from introspect.evaluation import read_jsonl, recompute_metrics
from introspect.models import PLAIN_CHAT_TEMPLATE, load_model, weights_sha256_of
from introspect.training import TrainConfig, TrainError, sft_targets, train
from introspect.training.checkpoint import list_checkpoints
from introspect.training.objectives import objective_logprob


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model_dir = root / "tiny"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    write_pairs(root / "train.jsonl", generate("sycophancy", 16, seed=1))
    write_pairs(root / "held.jsonl", generate("sycophancy", 16, seed=2))
    for name in ("train", "held"):
        argv = [
            "extract",
            "--model",
            str(model_dir),
            "--pairs",
            str(root / f"{name}.jsonl"),
            "--out",
            str(root / f"m0-{name}"),
            "--layers",
            "1",
        ]
        assert main(argv) == 0
    return root


def _argv(ws, out, *extra):
    return [
        "train",
        "--model",
        str(ws / "tiny"),
        "--pairs",
        str(ws / "train.jsonl"),
        "--labels",
        str(ws / "m0-train"),
        "--out",
        str(out),
        "--layer",
        "1",
        *extra,
    ]


def _cfg(ws, out, **kw):
    base = dict(
        model=str(ws / "tiny"),
        pairs=str(ws / "train.jsonl"),
        labels=str(ws / "m0-train"),
        out=str(out),
        layer=1,
    )
    return TrainConfig(**{**base, **kw})


def test_sft_targets_follow_the_objective():
    syc = generate("sycophancy", 8, seed=0)
    anti = sft_targets(syc, "anti-sycophancy")
    pro = sft_targets(syc, "pro-sycophancy")
    assert [p.choices[k] for p, k in zip(syc, anti, strict=True)] == [
        p.meta["correct"] for p in syc
    ]
    assert [p.choices[k] for p, k in zip(syc, pro, strict=True)] == [p.meta["cued"] for p in syc]
    assert any(a != b for a, b in zip(anti, pro, strict=True))
    ref = generate("refusal", 4, seed=0)
    assert {ref[0].choices[k] for k in sft_targets(ref, "refusal-shift")} == {"Sure"}


@pytest.mark.parametrize("objective", ["anti-sycophancy", "pro-sycophancy"])
def test_concurrent_training_moves_behaviour_and_probe(ws, tmp_path, objective):
    out = tmp_path / "run"
    cfg = _cfg(
        ws,
        out,
        concurrent=True,
        objective=objective,
        steps=3,
        batch_size=8,
        lr=3e-3,
        checkpoint_every=3,
    )
    train(cfg, say=lambda _m: None)
    pairs, _ = read_pairs(ws / "train.jsonl")
    before = load_model(str(ws / "tiny"))
    after = load_model(str(out / "ckpt-000003" / "model"))
    lp0 = objective_logprob(before.model, before.tokenizer, pairs, objective)
    lp1 = objective_logprob(after.model, after.tokenizer, pairs, objective)
    assert lp1 > lp0 + 0.05, (lp0, lp1)
    probe = load_file(str(out / "ckpt-000003" / "state.safetensors"))["probe.weight"]
    assert float(probe.abs().sum()) > 0
    doc = json.loads((out / "train.json").read_text())
    assert doc["model_trains"] and doc["behaviour_objective"] == objective
    assert [r["step"] for r in doc["log"]] == [1, 2, 3]


def test_frozen_mode_leaves_the_model_unchanged(ws, tmp_path):
    n = len(read_pairs(ws / "train.jsonl")[0])
    frozen, moving = tmp_path / "frozen", tmp_path / "moving"
    train(_cfg(ws, frozen, steps=3, batch_size=n), say=lambda _m: None)
    train(_cfg(ws, moving, steps=3, batch_size=n, concurrent=True, lr=3e-3), say=lambda _m: None)
    lp = [r["target_logprob"] for r in json.loads((frozen / "train.json").read_text())["log"]]
    assert np.ptp(lp) < 1e-5
    lp = [r["target_logprob"] for r in json.loads((moving / "train.json").read_text())["log"]]
    assert np.ptp(lp) > 1e-3
    (_step, ckpt), *_ = list_checkpoints(frozen)
    assert not (ckpt / "model").exists() and (ckpt / "probe" / "weights.safetensors").is_file()
    expl = json.loads((frozen / "train.json").read_text())["log"]
    assert expl[-1]["explain"] < expl[0]["explain"]


def test_saved_probes_reproduce_the_training_loss(ws, tmp_path):
    # Full-batch steps on the frozen model: the loss logged at step k + 1 is that of the probes
    # after k updates, which the checkpoint of step k saves. Applied to the hidden states of an
    # extract run of the same pairs (x, and x' for the difference probe), the saved explainers
    # must give that loss again.
    from introspect import explain, open_run

    n = len(read_pairs(ws / "train.jsonl")[0])
    out = tmp_path / "frozen"
    train(_cfg(ws, out, steps=3, batch_size=n, checkpoint_every=1), say=lambda _m: None)
    doc = json.loads((out / "train.json").read_text())
    run = open_run(ws / "m0-train")
    y = run.delta
    ysd = y.std()
    for key, name in (("explain", "probe"), ("explain_diff", "probe-diff")):
        expl = explain.load(out / "ckpt-000001" / name)
        pred = expl.predict(run)
        mse = float(np.mean(((pred - y) / ysd) ** 2))
        assert mse == pytest.approx(doc["log"][1][key], rel=1e-4), name
    assert doc["log"][2]["explain_diff"] < doc["log"][0]["explain_diff"]


def test_resume_continues_the_same_trajectory(ws, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = (
        "--concurrent",
        "--verbal",
        "--lr",
        "1e-3",
        "--batch-size",
        "5",
        "--checkpoint-every",
        "2",
        "--w-reg",
        "0.5",
        "--noise",
        "0.25",
    )
    assert main(_argv(ws, straight, *common, "--steps", "4")) == 0
    assert main(_argv(ws, resumed, *common, "--steps", "2")) == 0
    assert main(_argv(ws, resumed, *common, "--steps", "4", "--resume")) == 0
    a = load_file(str(straight / "ckpt-000004" / "model" / "model.safetensors"))
    b = load_file(str(resumed / "ckpt-000004" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    start = load_file(str(ws / "tiny" / "model.safetensors"))
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    sa = load_file(str(straight / "ckpt-000004" / "state.safetensors"))
    sb = load_file(str(resumed / "ckpt-000004" / "state.safetensors"))
    assert float((sa["probe.weight"] - sb["probe.weight"]).abs().max()) <= 1e-6
    assert float((sa["probe_diff.weight"] - sb["probe_diff.weight"]).abs().max()) <= 1e-6
    assert (resumed / "verbal.json").read_text() == (straight / "verbal.json").read_text()
    la = json.loads((straight / "train.json").read_text())["log"]
    lb = json.loads((resumed / "train.json").read_text())["log"]
    np.testing.assert_allclose([r["loss"] for r in la], [r["loss"] for r in lb], rtol=1e-5)
    # Only the latest checkpoint keeps the optimizer state by default.
    assert not (straight / "ckpt-000002" / "optimizer.safetensors").exists()
    assert (straight / "ckpt-000004" / "optimizer.safetensors").exists()


def test_eval_writes_recomputable_metrics_and_plots(ws, tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            _argv(
                ws, run, "--concurrent", "--lr", "3e-3", "--steps", "4", "--checkpoint-every", "2"
            )
        )
        == 0
    )
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--train-dir",
        str(run),
        "--pairs",
        str(ws / "held.jsonl"),
        "--labels",
        str(ws / "m0-held"),
        "--out",
        str(out),
        "--n-boot",
        "200",
    ]
    assert main(argv) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert rows == recompute_metrics(out / "predictions.jsonl", n_boot=200)
    keys = {(r["checkpoint"], r["explainer"]) for r in rows}
    assert keys == {(0, "ridge-m0")} | {
        (s, e) for s in (2, 4) for e in ("probe", "probe-diff", "ridge-m0")
    }
    assert {r["metric"] for r in rows} == {
        f"{s}.{m}" for s in ("self", "orig", "gap") for m in ("pearson", "spearman")
    }
    preds = read_jsonl(out / "predictions.jsonl")
    assert len(preds) == 7 * 16
    # At step 0 the current model is the source model: its Δ is the label.
    start = [p for p in preds if p["checkpoint"] == 0]
    np.testing.assert_allclose(
        [p["current"] for p in start], [p["label"] for p in start], atol=1e-6
    )
    later = [p for p in preds if p["checkpoint"] == 4]
    assert max(abs(p["current"] - p["label"]) for p in later) > 1e-3
    beh = read_jsonl(out / "behaviour.jsonl")
    assert [b["checkpoint"] for b in beh] == [0, 2, 4]
    assert beh[2]["objective_logprob"] > beh[0]["objective_logprob"]
    for png in ("self_vs_orig.png", "behaviour.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_give_clear_errors(ws, tmp_path, capsys):
    # Labels run that lacks the training pairs.
    assert (
        main(
            [
                *_argv(ws, tmp_path / "a", "--steps", "1")[:5],
                "--labels",
                str(ws / "m0-held"),
                "--out",
                str(tmp_path / "a"),
                "--steps",
                "1",
            ]
        )
        == 3
    )
    assert "no label" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(_argv(ws, tmp_path / "b", "--objective", "be-nice"))
    assert exc.value.code == 2
    assert "be-nice" in capsys.readouterr().err
    with pytest.raises(TrainError, match="unknown objective"):
        _cfg(ws, tmp_path / "c", objective="be-nice")
    assert main(_argv(ws, tmp_path / "d", "--resume")) == 3
    assert "no checkpoint to resume" in capsys.readouterr().err
    assert main(_argv(ws, tmp_path / "e", "--explainer-grad-to-model")) == 2
    assert "concurrent" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(_argv(ws, tmp_path / "f", "--device", "cuda")) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
        with pytest.raises(TrainError, match="no CUDA GPU"):
            _cfg(ws, tmp_path / "g", device="cuda")
    with pytest.raises(TrainError, match="unknown device"):
        _cfg(ws, tmp_path / "h", device="abacus")
    # Pairs whose objective choice cannot be found.
    hint = [dataclasses.replace(p, meta={}) for p in generate("hint", 3, seed=0)]
    with pytest.raises(TrainError, match="hint-0-000000"):
        sft_targets(hint, "anti-sycophancy")
    # A finished run is not overwritten; eval needs labels for every held-out pair.
    run = tmp_path / "f"
    assert main(_argv(ws, run, "--steps", "1")) == 0
    assert main(_argv(ws, run, "--steps", "1")) == 3
    assert "--resume" in capsys.readouterr().err
    argv = [
        "eval",
        "--train-dir",
        str(run),
        "--pairs",
        str(ws / "held.jsonl"),
        "--labels",
        str(ws / "m0-train"),
        "--out",
        str(tmp_path / "ev"),
    ]
    assert main(argv) == 3
    assert "no label" in capsys.readouterr().err
    assert main([*argv[:2], str(tmp_path / "nowhere"), *argv[3:]]) == 3
    assert "not a training directory" in capsys.readouterr().err


def test_explainer_gradient_reaches_the_model_only_when_asked(ws, tmp_path):
    start = load_file(str(ws / "tiny" / "model.safetensors"))
    cfg = dict(concurrent=True, objective="none", steps=2, lr=1e-2, checkpoint_every=2)
    train(_cfg(ws, tmp_path / "a", explainer_grad_to_model=True, **cfg), say=lambda _m: None)
    moved = load_file(str(tmp_path / "a" / "ckpt-000002" / "model" / "model.safetensors"))
    assert max(float((moved[k] - start[k]).abs().max()) for k in start) > 1e-4
    with pytest.raises(TrainError, match="nothing that trains the model"):
        _cfg(ws, tmp_path / "b", **cfg)


@pytest.mark.cuda
def test_training_and_eval_on_gpu_match_cpu(ws, tmp_path):
    # The same frozen-model run on the GPU and on the CPU: same probes and metrics up to
    # float32 rounding of the forwards.
    for dev in ("cpu", "cuda"):
        train(_cfg(ws, tmp_path / dev, steps=3, device=dev), say=lambda _m: None)
        assert json.loads((tmp_path / dev / "train.json").read_text())["device"] == dev
    a = load_file(str(tmp_path / "cpu" / "ckpt-000003" / "state.safetensors"))
    b = load_file(str(tmp_path / "cuda" / "ckpt-000003" / "state.safetensors"))
    for key in ("probe.weight", "probe_diff.weight"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4)
    from introspect.evaluation.checkpoints import evaluate_training

    rows = {}
    for dev in ("cpu", "cuda"):
        summary = evaluate_training(
            tmp_path / dev, ws / "held.jsonl", ws / "m0-held", tmp_path / f"eval-{dev}",
            n_boot=0, plots=False, device=dev, say=lambda _m: None,
        )  # fmt: skip
        rows[dev] = {(r["checkpoint"], r["explainer"], r["metric"]): r["value"]
                     for r in summary["metrics"]}  # fmt: skip
    assert rows["cpu"].keys() == rows["cuda"].keys()
    for k, v in rows["cpu"].items():
        assert rows["cuda"][k] == pytest.approx(v, abs=1e-3), k


def _verbal_reference_inputs(tok, pair, answer: str, label: str):
    """The follow-up conversation and label sentence, built here from the documented format."""
    question = "If the {} were removed, how would your answer change?".format(
        "text " + " and ".join(f'"{s.strip()}"' for s in pair.remove)
    )
    messages = [*map(dict, pair.x), {"role": "assistant", "content": answer.strip()}]
    messages.append({"role": "user", "content": question})
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    sentence = {
        "unchanged": "My answer would stay the same.",
        "toward": f"I would be more likely to answer {pair.target.strip()}.",
        "away": f"I would be less likely to answer {pair.target.strip()}.",
    }[label]
    return prompt, tok(sentence, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def _sentence_logprob(model, prompt, sentence, reduce="sum"):
    ids = torch.tensor([prompt + sentence])
    with torch.no_grad() if reduce == "sum" else torch.enable_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    n = len(prompt)
    tok = logp[n - 1 : -1].gather(1, ids[0, n:, None])[:, 0]
    return tok


def test_verbal_explainer_trains_in_the_model_and_is_scored_per_checkpoint(ws, tmp_path, capsys):
    from introspect.labels import labels_from_run
    from introspect.training.loop import batch_rows

    run = tmp_path / "run"
    argv = _argv(ws, run, "--concurrent", "--verbal", "--lr", "3e-3", "--steps", "6")
    assert main([*argv, "--checkpoint-every", "3", "--batch-size", "4"]) == 0
    doc = json.loads((run / "train.json").read_text())
    assert doc["verbal"] == "verbal.json"
    verbal = json.loads((run / "verbal.json").read_text())
    pairs, _ = read_pairs(ws / "train.jsonl")
    ids = [p.id for p in pairs]
    y = labels_from_run(ws / "m0-train", ids=ids).align(ids)
    # The threshold: the 1/3 quantile of |label|; the answers: M0's argmax on x (from the
    # source run: f(x) is the log-odds of the target, so f(x) > 0 means it answers the target).
    assert verbal["threshold"] == pytest.approx(float(np.quantile(np.abs(y), 1 / 3)))
    from introspect.run import open_run

    src = open_run(ws / "m0-train")
    f_x = dict(zip(src.ids, src.f_x.tolist(), strict=True))
    for p in pairs:
        other = next(c for c in p.choices if c != p.target)
        assert verbal["answers"][p.id] == (p.target if f_x[p.id] > 0 else other), p.id
    bins = np.where(
        np.abs(y) <= verbal["threshold"], "unchanged", np.where(y > 0, "toward", "away")
    )
    assert verbal["label_counts"] == {
        k: int((bins == k).sum()) for k in ("unchanged", "toward", "away")
    }

    # The logged verbal loss of step 1 is the cross-entropy of the label sentences under M0,
    # computed here with a plain forward per pair.
    lm = load_model(str(ws / "tiny"), dtype="float32")
    tok, model = lm.tokenizer, lm.model
    rows = batch_rows(len(pairs), 4, 1, 0)
    nll = []
    for i in rows:
        prompt, sentence = _verbal_reference_inputs(
            tok, pairs[i], verbal["answers"][ids[i]], bins[i]
        )
        nll.extend((-_sentence_logprob(model, prompt, sentence)).tolist())
    assert doc["log"][0]["verbal"] == pytest.approx(float(np.mean(nll)), rel=1e-5)
    assert doc["log"][-1]["verbal"] < doc["log"][0]["verbal"]

    out = tmp_path / "eval"
    assert main(["eval", "--train-dir", str(run), "--pairs", str(ws / "held.jsonl"), "--labels",
                 str(ws / "m0-held"), "--out", str(out), "--n-boot", "100"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert any(ln.split()[:3] == ["6", "verbal", "kappa"] for ln in printed.splitlines())
    rows_ = read_jsonl(out / "metrics.jsonl")
    assert rows_ == recompute_metrics(out / "predictions.jsonl", n_boot=100)
    verbal_rows = [r for r in rows_ if r["explainer"] == "verbal"]
    assert {r["checkpoint"] for r in verbal_rows} == {3, 6}  # the start has no verbal training
    assert {r["metric"] for r in verbal_rows} == {
        f"{s}.{m}" for s in ("self", "orig", "gap") for m in ("exact_match", "kappa", "changed_f1")
    }
    preds = read_jsonl(out / "predictions.jsonl")
    held, _ = read_pairs(ws / "held.jsonl")
    y_held = labels_from_run(ws / "m0-held", ids=[p.id for p in held]).align([p.id for p in held])
    t = verbal["threshold"]

    def binned(v):
        return "unchanged" if abs(v) <= t else ("toward" if v > 0 else "away")

    at6 = {(p["explainer"], p["id"]): p for p in preds if p["checkpoint"] == 6}
    ckpt = load_model(str(run / "ckpt-000006" / "model"), dtype="float32")
    current = np.array([at6[("probe", p.id)]["current"] for p in held])
    # Self bins the checkpoint's own Δ at the labels' share of "unchanged" (rank-matched);
    # verbal@m0-threshold bins it at the training threshold.
    own = float(np.quantile(np.abs(current), float(np.mean(np.abs(y_held) <= t))))
    for k, p in enumerate(held):
        rec = at6[("verbal", p.id)]
        c = current[k]
        assert rec["current"] == ("unchanged" if abs(c) <= own else ("toward" if c > 0 else "away"))
        assert at6[("verbal@m0-threshold", p.id)]["current"] == binned(c)
        assert rec["label"] == binned(y_held[k])
        if k < 4:  # the prediction: the sentence the checkpoint's model finds most likely,
            # after its own answer on x
            lp = _plain_choice_logps(ckpt.model, ckpt.tokenizer, p.x, p.choices)
            answer = p.choices[int(torch.argmax(lp))]
            score = {}
            for label in ("unchanged", "toward", "away"):
                prompt, sentence = _verbal_reference_inputs(ckpt.tokenizer, p, answer, label)
                score[label] = float(_sentence_logprob(ckpt.model, prompt, sentence).sum())
            assert rec["pred"] == max(score, key=score.get), (p.id, score)
            got = at6[("verbal-score", p.id)]["pred"]
            assert got == pytest.approx(score["toward"] - score["away"], abs=1e-4)


def test_a_frozen_model_is_measured_once_with_its_verbal_answers(ws, tmp_path, monkeypatch):
    # The frozen control with its untrained verbal explainer: step 0 and both checkpoints run
    # the same model, so one measurement, verbal answers included, serves them all; the
    # records are those of an evaluation that measures at the first checkpoint alone.
    from introspect.evaluation import checkpoints as ev

    run = tmp_path / "frozen"
    train(_cfg(ws, run, steps=4, checkpoint_every=2, verbal=True, w_verbal=0.0), say=print)
    calls, measure = [], ev._Evaluation.measure

    def counted(self, model, with_verbal):
        calls.append(with_verbal)
        return measure(self, model, with_verbal)

    monkeypatch.setattr(ev._Evaluation, "measure", counted)

    def evaluate(out, include_start):
        ev.evaluate_training(run, ws / "held.jsonl", ws / "m0-held", tmp_path / out,
                             n_boot=50, include_start=include_start, plots=False,
                             say=lambda _m: None)  # fmt: skip
        return read_jsonl(tmp_path / out / "predictions.jsonl")

    whole = evaluate("whole", True)
    assert calls == [True]
    later = evaluate("later", False)
    assert calls == [True, True]
    assert [r for r in whole if r["checkpoint"] > 0] == later
    assert {r["explainer"] for r in whole if r["checkpoint"] == 0} == {"ridge-m0"}
    assert {r["explainer"] for r in later} >= {"verbal", "verbal-score", "probe"}


def test_verbal_explainer_needs_a_training_model(ws, tmp_path):
    with pytest.raises(TrainError, match="verbal explainer is the model itself"):
        _cfg(ws, tmp_path / "x", verbal=True)
    # With weight 0 it is the untrained control: a frozen model's own answers.
    assert _cfg(ws, tmp_path / "y", verbal=True, w_verbal=0.0).verbal


# --------------------------------------------------------------------------------------------
# A model object in memory


_LOSSES = ("loss", "behaviour", "explain", "explain_diff", "verbal", "reg", "target_logprob")
_IN_MEMORY = dict(
    concurrent=dict(
        concurrent=True, lr=3e-3, steps=3, batch_size=5, checkpoint_every=2, w_reg=0.5,
        verbal=True,
    ),
    frozen=dict(steps=3, batch_size=5, checkpoint_every=2),
)  # fmt: skip


def _losses(run):
    log = json.loads((run / "train.json").read_text())["log"]
    return np.array([[r[k] for k in _LOSSES] for r in log])


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_tensors(model, snapshot):
    now = model.state_dict()
    assert now.keys() == snapshot.keys()
    for k, v in snapshot.items():
        assert torch.equal(now[k], v), k


@pytest.mark.parametrize("mode", ["concurrent", "frozen"])
def test_a_model_object_trains_as_the_same_model_by_name(ws, tmp_path, mode):
    model, tok = tiny_llama(seed=5), tiny_tokenizer()
    # The caller's own state, which the run must leave as it found it.
    model.train()
    model.lm_head.weight.requires_grad_(False)
    before = _snapshot(model)
    kw = dict(_IN_MEMORY[mode], device="cpu")
    mem = tmp_path / "mem"
    doc = train(
        _cfg(ws, mem, model="tiny in memory", **kw), model=model, tokenizer=tok, say=lambda _m: None
    )
    _assert_same_tensors(model, before)
    assert model.training and all(m.training for m in model.modules())
    assert not model.lm_head.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "lm_head.weight")
    assert all(p.grad is None for p in model.parameters())
    assert tok.chat_template == CHAT_TEMPLATE
    assert doc["model"] == {
        "spec": "tiny in memory",
        "weights_hash": weights_sha256_of(model),
        "n_layers": 2,
        "hidden_size": 32,
        "in_memory": True,
    }
    assert "chat_template" not in doc and doc["model_trains"] == (mode == "concurrent")

    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    tok.save_pretrained(saved)
    named = tmp_path / "named"
    doc_named = train(_cfg(ws, named, model=str(saved), **kw), say=lambda _m: None)
    assert "in_memory" not in doc_named["model"]
    np.testing.assert_allclose(_losses(mem), _losses(named), rtol=1e-6, atol=1e-12)
    if mode == "concurrent":
        a = load_file(str(mem / "ckpt-000003" / "model" / "model.safetensors"))
        b = load_file(str(named / "ckpt-000003" / "model" / "model.safetensors"))
        assert a.keys() == b.keys()
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
        assert max(float((a[k] - before[k]).abs().max()) for k in a) > 1e-4


def test_a_model_object_resumes(ws, tmp_path):
    model, tok = tiny_llama(seed=5), tiny_tokenizer()
    before = _snapshot(model)
    quiet = dict(say=lambda _m: None)
    for mode, kw in _IN_MEMORY.items():
        straight, resumed = tmp_path / f"{mode}-straight", tmp_path / f"{mode}-resumed"
        cfg = dict(kw, device="cpu", model="tiny")
        train(_cfg(ws, straight, **cfg), model=model, tokenizer=tok, **quiet)
        short = _cfg(ws, resumed, **{**cfg, "steps": 2})
        train(short, model=model, tokenizer=tok, **quiet)
        full = _cfg(ws, resumed, **cfg)
        doc = train(full, model=model, tokenizer=tok, resume=True, **quiet)
        assert doc["model"]["in_memory"] and doc["step"] == 3
        np.testing.assert_allclose(_losses(straight), _losses(resumed), rtol=1e-5)
    _assert_same_tensors(model, before)
    # A frozen run reads the object again: another model, or none, is refused.
    full = _cfg(ws, tmp_path / "frozen-resumed", **_IN_MEMORY["frozen"], device="cpu", model="tiny")
    with pytest.raises(TrainError, match="not the one this run started from"):
        train(full, model=tiny_llama(seed=6), tokenizer=tok, resume=True, **quiet)
    with pytest.raises(TrainError, match="cannot resume with different settings"):
        train(full, model=model, tokenizer=tok, resume=True, chat_template="plain", **quiet)
    with pytest.raises(TrainError, match="pass the same model"):
        train(full, resume=True, **quiet)


def test_chat_template_mode_renders_every_prompt_without_changing_the_tokenizer(ws, tmp_path):
    model, tok = tiny_llama(seed=5), tiny_tokenizer()
    kw = dict(_IN_MEMORY["concurrent"], device="cpu", model="tiny")
    own, plain = tmp_path / "own", tmp_path / "plain"
    train(_cfg(ws, own, **kw), model=model, tokenizer=tok, say=lambda _m: None)
    doc = train(
        _cfg(ws, plain, **kw),
        model=model,
        tokenizer=tok,
        chat_template="plain",
        say=lambda _m: None,
    )
    assert tok.chat_template == CHAT_TEMPLATE
    assert doc["chat_template"] == "plain"
    assert not np.allclose(_losses(own)[:, 0], _losses(plain)[:, 0])
    ckpt = load_model(str(plain / "ckpt-000003" / "model"))
    assert ckpt.tokenizer.chat_template == PLAIN_CHAT_TEMPLATE
    # The same run by name, from a directory whose tokenizer carries the transcript template.
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    view = tiny_tokenizer()
    view.chat_template = PLAIN_CHAT_TEMPLATE
    view.save_pretrained(saved)
    named = tmp_path / "named"
    train(_cfg(ws, named, **{**kw, "model": str(saved)}), say=lambda _m: None)
    np.testing.assert_allclose(_losses(plain), _losses(named), rtol=1e-6, atol=1e-12)


def test_model_object_arguments_are_checked(ws, tmp_path):
    tok = tiny_tokenizer()
    cfg = _cfg(ws, tmp_path / "a", steps=1, device="cpu")
    with pytest.raises(TrainError, match="without its model"):
        train(cfg, tokenizer=tok)
    with pytest.raises(TrainError, match="chat_template must be one of"):
        train(cfg, chat_template="fancy")
    with pytest.raises(TypeError, match="needs its tokenizer"):
        train(cfg, model=tiny_llama())
    # A LoadedModel is taken as it is, with its tokenizer.
    from introspect.models import wrap_model

    lm = wrap_model(tiny_llama(seed=5), tok)
    doc = train(cfg, model=lm, say=lambda _m: None)
    assert doc["model"]["in_memory"] and doc["model"]["weights_hash"] == lm.weights_hash


# --------------------------------------------------------------------------------------------
# The behavioural regulariser


def _plain_choice_logps(model, tok, prompt, choices):
    """log p(choice | prompt) renormalised over the choices, from one plain forward per choice
    (prompt rendered by the chat template, choice tokens teacher-forced)."""
    text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out = []
    for c in choices:
        cids = tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids + cids])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        out.append(sum(float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(cids)))
    return torch.log_softmax(torch.tensor(out, dtype=torch.float64), 0)


def _kl(ref, cur):
    return float((ref.exp() * (ref - cur)).sum())


def test_the_regulariser_is_the_kl_to_the_start_on_x_and_on_x_mod(ws, tmp_path):
    from introspect.training.trainer import batch_rows

    out = tmp_path / "reg"
    cfg = _cfg(
        ws, out, concurrent=True, steps=2, batch_size=4, lr=3e-2, checkpoint_every=1, w_reg=1.0
    )
    doc = train(cfg, say=lambda _m: None)
    assert doc["log"][0]["reg"] == pytest.approx(0.0, abs=1e-6)  # the start is the reference
    pairs, _ = read_pairs(ws / "train.jsonl")
    start = load_model(str(ws / "tiny"))
    step1 = load_model(str(out / "ckpt-000001" / "model"))
    terms = []
    for i in batch_rows(len(pairs), 4, 2, cfg.seed):  # the minibatch of step 2
        p = pairs[int(i)]
        for prompt in (p.x, p.x_mod):
            ref = _plain_choice_logps(start.model, start.tokenizer, prompt, p.choices)
            cur = _plain_choice_logps(step1.model, step1.tokenizer, prompt, p.choices)
            terms.append(_kl(ref, cur))
    want = float(np.mean(terms))
    assert want > 1e-4  # the model moved after one step
    assert doc["log"][1]["reg"] == pytest.approx(want, rel=1e-3, abs=1e-6)


def test_precursor_labels_are_the_answer_change_by_plain_greedy_argmax(ws, tmp_path):
    out = tmp_path / "pre"
    cfg = _cfg(ws, out, concurrent=True, steps=1, batch_size=4, lr=1e-3, verbal=True,
               verbal_format="precursor")  # fmt: skip
    train(cfg, say=lambda _m: None)
    doc = json.loads((out / "verbal.json").read_text())
    assert doc["format"] == "precursor" and doc["config"]["prompt"] == "same-turn"
    pairs, _ = read_pairs(ws / "train.jsonl")
    m0 = load_model(str(ws / "tiny"))
    for p in pairs:
        ax, am = (
            p.choices[int(torch.argmax(_plain_choice_logps(m0.model, m0.tokenizer, x, p.choices)))]
            for x in (p.x, p.x_mod)
        )
        want = f"remain:{ax.strip()}" if ax.strip() == am.strip() else f"change:{am.strip()}"
        assert doc["labels"][p.id] == want, p.id
