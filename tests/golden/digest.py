"""Digests of what `introspect extract` and `introspect experiment coupling` write on a tiny
model: array files by sha256, manifests and logs with times, versions and paths taken out.

``python digest.py OUT.json`` writes the digests of the current code into OUT.json;
``tests/test_golden.py`` compares the code under test with the digests committed here (made by
the release before the library driver, commit 62984b7).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

TIMES = {"created_at", "updated_at", "completed_at", "introspect", "seconds", "wall_s"}
# Files whose bytes hold times, versions or absolute paths; their content is covered by the
# arrays and logs digested elsewhere.
SKIP = {"state.json", "eval.json", "report.md", "results.json", "config.json",
        "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "chat_template.jinja"}  # fmt: skip


def _scrub(value, root: str):
    if isinstance(value, dict):
        return {k: _scrub(v, root) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [_scrub(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<root>")
    return value


def digest_tree(out: Path, root: Path) -> dict:
    """``{relative path: digest}`` for every file under ``out`` that carries results."""
    doc = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if path.name in SKIP or path.suffix == ".png" or path.name.startswith("."):
            continue
        if path.name in ("manifest.json", "train.json", "labels.json", "verbal.json"):
            obj = json.loads(path.read_text(encoding="utf-8"))
            doc[rel] = _scrub(obj, str(root))
        else:
            doc[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return doc


def make_model(root: Path) -> Path:
    from tiny import tiny_llama, tiny_tokenizer

    model = root / "model"
    tiny_llama().save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    return model


def run_all(root: Path) -> dict:
    """Runs both commands in ``root`` (the working directory) and digests what they wrote."""
    import os

    from introspect.cli import main

    cwd = os.getcwd()
    os.chdir(root)
    try:
        make_model(root)
        pairs = ["pairs", "--task", "sycophancy", "--n", "24", "--seed", "0",
                 "--out", "pairs.jsonl"]  # fmt: skip
        extract = ["extract", "--model", "model", "--pairs", "pairs.jsonl", "--out", "run",
                   "--layers", "0,1", "--positions", "last,span", "--shard-rows", "8"]  # fmt: skip
        coupling = ["experiment", "coupling", "--model", "model", "--tasks", "sycophancy",
                    "--out", "exp", "--n-train", "12", "--n-held", "12", "--steps", "2",
                    "--checkpoint-every", "1", "--n-boot", "50", "--seed", "0"]  # fmt: skip
        for argv in (pairs, extract, coupling):
            assert main(argv) == 0, argv
    finally:
        os.chdir(cwd)
    return {"extract": digest_tree(root / "run", root), "coupling": digest_tree(root / "exp", root)}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        doc = run_all(Path(tmp))
    Path(sys.argv[1]).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
