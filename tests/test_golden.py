"""`introspect extract` and `introspect experiment coupling` write, on a tiny model, what the
releases named in golden/digest.py wrote (their digests are in golden/before.json): the same
files, the same manifests and logs (times, versions and paths aside) and the same arrays —
bitwise on the machine that recorded the digests, within a tight tolerance on another CPU,
whose kernels may round differently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from golden.digest import differences, machine, run_all

BEFORE = Path(__file__).parent / "golden" / "before.json"


def test_extract_and_coupling_write_what_the_release_wrote(tmp_path):
    want = json.loads(BEFORE.read_text())
    got = json.loads(json.dumps(run_all(tmp_path)))
    exact = machine() == want["machine"]
    for job in ("extract", "coupling"):
        assert sorted(got[job]) == sorted(want[job]), job
        problems = differences(got[job], want[job], exact=exact, where=job)
        assert not problems, "\n".join(problems[:20])


def test_the_comparison_catches_what_it_must():
    want = {"a.jsonl": {"sha256": "x", "jsonl": [{"r": 0.5, "k": 3, "s": "u"}]}}
    near = {"a.jsonl": {"sha256": "y", "jsonl": [{"r": 0.5 + 1e-9, "k": 3, "s": "u"}]}}
    assert differences(near, want, exact=False) == []
    assert len(differences(near, want, exact=True)) == 2  # the bytes and the number
    for bad in ({"r": 0.51, "k": 3, "s": "u"}, {"r": 0.5, "k": 4, "s": "u"},
                {"r": 0.5, "k": 3, "s": "v"}, {"r": 0.5, "k": 3}):  # fmt: skip
        got = {"a.jsonl": {"sha256": "x", "jsonl": [bad]}}
        assert differences(got, want, exact=False), bad
    # A default changed on purpose matches the old one; any other value still differs.
    assert differences({"row_tokens": None}, {"row_tokens": 256}, exact=False) == []
    assert differences({"row_tokens": 512}, {"row_tokens": 256}, exact=False)


def test_statistics_and_prose_are_compared_at_their_scale():
    where = "coupling/x/metrics.jsonl"
    want = {"metrics.jsonl": {"jsonl": [{"value": 0.0054, "c": 0.8, "text": "gap -0.017 lies"}]}}

    def got(**kw):
        return {
            "metrics.jsonl": {
                "jsonl": [{"value": 0.0054, "c": 0.8, "text": "gap -0.017 lies", **kw}]
            }
        }

    assert differences(got(value=0.00541), want, exact=False, where=where) == []
    assert differences(got(value=0.0074), want, exact=False, where=where)  # a real change
    assert differences(got(text="gap -0.018 lies"), want, exact=False, where=where) == []
    assert differences(got(text="gap -0.017 holds"), want, exact=False, where=where)
    assert differences(got(c=0.81), want, exact=False, where=where)  # a determined c
    ill = {"metrics.jsonl": {"jsonl": [{"c": -2417.5}]}}
    assert differences({"metrics.jsonl": {"jsonl": [{"c": -1000.0}]}}, ill, exact=False) == []
    assert differences({"metrics.jsonl": {"jsonl": [{"c": 0.5}]}}, ill, exact=False)
