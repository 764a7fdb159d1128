"""The compatibility matrix (scripts/compat.py) on real exports of timm, transformers, Ultralytics, yolov5 and
effdet models: every method is equal to its reference in both runtimes, or refused in one line.

The models come from `scripts/compat_env.sh`, which builds the export environment and prints the folder
holding them; the README's test command sets XAI_GRAPH_COMPAT_DIR to it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import compat  # noqa: E402

CACHE = Path(os.environ["XAI_GRAPH_COMPAT_DIR"]) if os.environ.get("XAI_GRAPH_COMPAT_DIR") else None
MANIFEST = json.loads((CACHE / "manifest.json").read_text()) if CACHE else []
RESULTS: dict[str, list] = {}  # model -> its rows, for the size check after the models ran
pytestmark = pytest.mark.skipif(CACHE is None, reason="XAI_GRAPH_COMPAT_DIR is not set "
                                                      "(XAI_GRAPH_COMPAT_DIR=$(bash scripts/compat_env.sh))")


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_model(entry, tmp_path):
    assert "export_error" not in entry, entry.get("export_error")
    rows = compat.check_entry(entry, CACHE, tmp_path)
    RESULTS[entry["name"]] = rows
    bad = [f"{r['method']}: {r['status']} {r['detail']}" for r in rows if r["status"] not in ("equal", "refused")]
    assert not bad, "; ".join(bad)
    assert any(r["status"] == "equal" for r in rows), "no method applies: " + "; ".join(r["detail"] for r in rows)


def test_matrix_size():
    """The matrix the README reports: every source, at least 50 model x method rows equal to their references
    (the table is written beside the models, as compat.md)."""
    if len(RESULTS) < len(MANIFEST):
        pytest.skip("only part of the matrix ran")
    assert {"ultralytics", "yolov5", "effdet", "timm", "transformers"} <= {e["source"] for e in MANIFEST}
    rows = [row for rows in RESULTS.values() for row in rows]
    (CACHE / "compat.md").write_text(compat.markdown(rows))
    assert sum(row["status"] == "equal" for row in rows) >= 50
