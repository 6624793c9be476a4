"""The `batch-embedder` console script as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLES

pytestmark = pytest.mark.integration


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BATCH_EMBEDDER_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "batch_embedder_local.cli", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


def test_ingest_json_then_search(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("appetite.rst.txt", "venv.rst.txt"):
        (docs / name).write_bytes((SAMPLES / name).read_bytes())
    (docs / "notes.pdf").write_bytes(b"%PDF-1.4")
    # SyncMaxTokens=0: even these small files go through the Batch API (half price).
    proc = cli("local", "ingest", str(docs), "--json", "--param", "SyncMaxTokens=0",
               home=tmp_path / "home")  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # one file is not supported
    out = json.loads(proc.stdout)
    by_key = {e["key"]: e for e in out["executions"]}
    assert set(by_key) == {"appetite.rst.txt", "venv.rst.txt", "notes.pdf"}
    assert by_key["notes.pdf"]["failed_state"] == "InvalidDocument"
    assert "notes.pdf" in by_key["notes.pdf"]["cause"]
    ok = [e for e in out["executions"] if e["status"] == "SUCCEEDED"]
    assert all(e["vectors_written"] == e["chunks"] > 0 for e in ok)
    totals = out["totals"]
    assert totals["files"] == 3 and totals["chunks"] == sum(e["chunks"] for e in ok)
    assert totals["tokens"] == sum(e["tokens"] for e in ok)
    assert totals["standard_cost_usd"] == pytest.approx(2 * totals["cost_usd"])
    assert out["seconds"] > 0
    assert "finished" in proc.stderr  # live progress went to stderr, JSON alone to stdout

    # The ledger outlives the run: `local costs` reads what the ingest recorded.
    report = cli("local", "costs", "--json", home=tmp_path / "home")
    assert report.returncode == 0, report.stderr
    total = json.loads(report.stdout)["total"]
    assert int(total["tokens"]) == totals["tokens"]
    assert int(total["jobs"]) == 2  # the pdf billed nothing, so it has no ledger record
    assert float(total["cost_usd"]) == pytest.approx(totals["cost_usd"])
    assert float(total["saved_pct"]) == pytest.approx(50.0)

    found = cli("local", "search", "Python virtual environments created with venv", "--json",
                "-k", "2", home=tmp_path / "home")  # fmt: skip
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert hits[0]["key"] == "venv.rst.txt"
    assert set(hits[0]) == {"key", "chunk_index", "score", "text"}


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    proc = cli("local", "ingest", str(tmp_path / "nope"), home=tmp_path)
    assert proc.returncode != 0
    assert "no such file or folder" in proc.stderr
