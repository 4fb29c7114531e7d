"""`introspect extract` and `introspect experiment coupling` write, on a tiny model, the same
arrays (bitwise) and the same manifests and logs (times, versions and paths aside) as the release
whose digests are committed in golden/before.json (see golden/digest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from golden.digest import run_all

BEFORE = Path(__file__).parent / "golden" / "before.json"


def test_extract_and_coupling_write_what_the_release_wrote(tmp_path):
    want = json.loads(BEFORE.read_text())
    got = json.loads(json.dumps(run_all(tmp_path)))
    for job in ("extract", "coupling"):
        assert sorted(got[job]) == sorted(want[job]), job
        for name in want[job]:
            assert got[job][name] == want[job][name], f"{job}: {name}"
