"""The naive baseline of the whole-process extraction benchmark, as a user would write it with
torch and transformers alone: per batch of pairs, one right-padded forward over the x prompts and
one over the x' prompts, with full logits and every hidden state; f = log-odds of the target
choice (single-token choices) read at each prompt's last token, and the hidden states of the
chosen layers there. Writes ``OUT.npz`` (``f_x``, ``f_mod``, ``h_x``, ``h_mod``).

    python benchmarks/naive_extract.py --model DIR --pairs pairs.jsonl --out naive.npz
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def remove(text: str, spans: list[str]) -> str:
    for s in spans:
        text = text.replace(s, "", 1)
    return text


@torch.inference_mode()
def side(model, tok, prompts, choice_ids, targets, layers):
    enc = [tok(p)["input_ids"] for p in prompts]
    n = max(len(e) for e in enc)
    ids = torch.full((len(enc), n), tok.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros((len(enc), n), dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    last = torch.tensor([len(e) - 1 for e in enc])
    rows = torch.arange(len(enc))
    logp = torch.log_softmax(out.logits[rows, last].double(), -1)
    f = []
    for i, (c, t) in enumerate(zip(choice_ids, targets, strict=True)):
        lp = logp[i, c]
        others = torch.cat([lp[:t], lp[t + 1 :]])
        f.append(float(lp[t] - torch.logsumexp(others, 0)))
    hidden = torch.stack([out.hidden_states[layer + 1][rows, last] for layer in layers], 1)
    return f, hidden.float().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a transformers model directory")
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-pairs", type=int, default=16)
    ap.add_argument("--layers", default="middle,last")
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    n_layers = model.config.num_hidden_layers
    layers = [n_layers // 2, n_layers - 1]
    pairs = [json.loads(line) for line in open(args.pairs, encoding="utf-8") if line.strip()]
    res = {"f_x": [], "f_mod": [], "h_x": [], "h_mod": []}
    for s in range(0, len(pairs), args.batch_pairs):
        chunk = pairs[s : s + args.batch_pairs]
        choice_ids = []
        for p in chunk:
            ids = [tok(c, add_special_tokens=False)["input_ids"] for c in p["choices"]]
            assert all(len(i) == 1 for i in ids), "the naive baseline takes one-token choices"
            choice_ids.append([i[0] for i in ids])
        targets = [p["choices"].index(p["target"]) for p in chunk]
        for name, prompts in (
            ("x", [p["prompt"] for p in chunk]),
            ("mod", [remove(p["prompt"], p["remove"]) for p in chunk]),
        ):
            f, h = side(model, tok, prompts, choice_ids, targets, layers)
            res[f"f_{name}"] += f
            res[f"h_{name}"].append(h)
    np.savez(
        args.out,
        f_x=np.array(res["f_x"]),
        f_mod=np.array(res["f_mod"]),
        h_x=np.concatenate(res["h_x"]),
        h_mod=np.concatenate(res["h_mod"]),
    )


if __name__ == "__main__":
    main()
