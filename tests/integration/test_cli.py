"""The `batch-embedder` console script as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batch_embedder.openai.pricing import cost_usd, price_for
from tests.utils import SAMPLES

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
    # Uploaded one by one; the pipe groups them into one execution and one batch (half
    # price: only urgent documents use the synchronous API).
    proc = cli("local", "ingest", str(docs), "--json", "--vectors", "hashed",
               home=tmp_path / "home")  # fmt: skip
    # A file that is not supported is left out and reported; it fails nothing.
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    [group] = out["executions"]
    assert group["status"] == "SUCCEEDED", group["cause"]
    assert group["keys"] == ["appetite.rst.txt", "notes.pdf", "venv.rst.txt"]
    assert group["documents"] == 2 and group["batches"] == 1 and group["api"] == "batch"
    assert group["rejected_count"] == 1 and len(group["rejected"]) == 1
    assert group["rejected"][0].startswith("notes.pdf: ")
    assert group["vectors_written"] == group["chunks"] > 0
    # OpenAI at the batch price, exactly; AWS counted; the total is their sum.
    price = price_for("text-embedding-3-small")
    assert group["cost_usd"] == float(cost_usd(group["tokens"], price.batch))
    assert group["standard_cost_usd"] == float(cost_usd(group["tokens"], price.standard))
    assert group["aws_cost_usd"] > 0
    assert group["total_cost_usd"] == pytest.approx(group["cost_usd"] + group["aws_cost_usd"])
    totals = out["totals"]
    assert (totals["executions"], totals["files"], totals["batches"]) == (1, 3, 1)
    assert (totals["succeeded"], totals["failed"]) == (1, 0)
    assert (totals["documents"], totals["rejected"]) == (2, 1)
    assert totals["chunks"] == group["chunks"] and totals["tokens"] == group["tokens"]
    assert totals["cost_usd"] == group["cost_usd"]
    assert totals["aws_cost_usd"] == group["aws_cost_usd"]
    assert totals["total_cost_usd"] == group["total_cost_usd"]
    assert totals["standard_cost_usd"] == pytest.approx(2 * totals["cost_usd"], abs=1e-9)
    assert out["seconds"] > 0
    assert "finished" in proc.stderr  # live progress went to stderr, JSON alone to stdout

    # The ledger outlives the run: `local costs` reads what the ingest recorded.
    report = cli("local", "costs", "--json", home=tmp_path / "home")
    assert report.returncode == 0, report.stderr
    total = json.loads(report.stdout)["total"]
    assert int(total["jobs"]) == 1 and int(total["failed_jobs"]) == 0  # one group
    assert int(total["documents"]) == 2 and int(total["batches"]) == 1
    assert int(total["tokens"]) == totals["tokens"]
    assert float(total["openai_usd"]) == pytest.approx(totals["cost_usd"], abs=1e-9)
    assert float(total["aws_usd"]) == pytest.approx(totals["aws_cost_usd"], abs=1e-9)
    assert float(total["total_usd"]) == pytest.approx(totals["total_cost_usd"], abs=1e-9)
    assert float(total["naive_usd"]) == pytest.approx(totals["naive_cost_usd"], abs=1e-9)

    found = cli("local", "search", "Python virtual environments created with venv", "--json",
                "-k", "2", home=tmp_path / "home")  # fmt: skip
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert hits[0]["key"] == "venv.rst.txt"
    assert set(hits[0]) == {"key", "chunk_index", "score", "model", "text"}
    assert hits[0]["model"] == "text-embedding-3-small"  # the rows' model embedded the query


def test_a_group_of_only_unsupported_files_fails_with_exit_code_1(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.pdf").write_bytes(b"%PDF-1.4")
    (docs / "empty.txt").write_bytes(b"")
    proc = cli("local", "ingest", str(docs), "--json", "--quiet", home=tmp_path / "home")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    [group] = out["executions"]
    assert group["status"] == "FAILED" and group["failed_state"] == "InvalidDocument"
    assert "notes.pdf" in group["cause"] and "empty.txt" in group["cause"]
    assert out["totals"]["failed"] == 1 and out["totals"]["files"] == 2


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    proc = cli("local", "ingest", str(tmp_path / "nope"), home=tmp_path)
    assert proc.returncode != 0
    assert "no such file or folder" in proc.stderr


def test_emulator_switches_reproduce_a_lost_webhook_from_the_command_line(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "errors.rst.txt").write_bytes((SAMPLES / "errors.rst.txt").read_bytes())
    # Every webhook lost: the local reconciler (every few seconds) ends the wait instead.
    proc = cli("local", "ingest", str(docs), "--json", "--vectors", "hashed",
               "--emulator", "webhook_drop=true", home=tmp_path / "home")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    [group] = json.loads(proc.stdout)["executions"]
    assert group["status"] == "SUCCEEDED" and group["batches"] == 1
    bad = cli("local", "ingest", str(docs), "--emulator", "no_such_switch=1",
              home=tmp_path / "home")  # fmt: skip
    assert bad.returncode != 0 and "no_such_switch: no such switch" in bad.stderr


def test_default_ingest_and_search_are_semantic_with_the_local_model(tmp_path: Path) -> None:
    """`make demo`'s path: local-minilm vectors, found by a question in other words."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("errors.rst.txt", "venv.rst.txt", "inputoutput.rst.txt"):
        (docs / name).write_bytes((SAMPLES / name).read_bytes())
    home = tmp_path / "home"
    proc = cli("local", "ingest", str(docs), "--json", "--quiet", home=home)
    assert proc.returncode == 0, proc.stderr
    [group] = json.loads(proc.stdout)["executions"]
    assert group["status"] == "SUCCEEDED" and group["documents"] == 3
    assert group["cost_usd"] == 0  # a local model: no provider bill
    # No word of the question is in the venv page's title; hashed vectors miss it.
    question = "How can I keep the packages of each project separate from each other?"
    found = cli("local", "search", question, "--json", "-k", "3", home=home)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["key"] == "venv.rst.txt"


def test_reingesting_an_unchanged_folder_uploads_nothing_and_an_edit_is_reembedded(
    tmp_path: Path,
) -> None:
    """Like `aws s3 sync`: a file already embedded with the same bytes and settings is not
    uploaded again; an edited one is, and only it is paid for."""
    docs, home = tmp_path / "docs", tmp_path / "home"
    docs.mkdir()
    for name in ("appetite.rst.txt", "venv.rst.txt", "errors.rst.txt"):
        (docs / name).write_bytes((SAMPLES / name).read_bytes())
    first = cli("local", "ingest", str(docs), "--json", "--quiet", "--vectors", "hashed",
                home=home)  # fmt: skip
    assert first.returncode == 0, first.stderr
    totals = json.loads(first.stdout)["totals"]
    assert (totals["files"], totals["unchanged"], totals["documents"]) == (3, 0, 3)
    assert totals["tokens"] > 0

    again = cli("local", "ingest", str(docs), "--json", "--quiet", "--vectors", "hashed",
                home=home)  # fmt: skip
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert out["executions"] == []
    assert (out["totals"]["files"], out["totals"]["unchanged"]) == (0, 3)
    assert (out["totals"]["tokens"], out["totals"]["total_cost_usd"]) == (0, 0)
    assert "the pipe groups" not in again.stderr and "3 file(s) unchanged" in again.stderr
    report = json.loads(cli("local", "costs", "--json", home=home).stdout)["total"]
    assert int(report["jobs"]) == 1  # the re-run recorded no job and billed nothing

    # Other settings (chunk size) make every file new again: nothing is skipped.
    other = cli("local", "ingest", str(docs), "--json", "--quiet", "--vectors", "hashed",
                "--param", "ChunkTokens=256", "--param", "ChunkOverlapTokens=32",
                home=home)  # fmt: skip
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout)["totals"]["unchanged"] == 0

    edited = docs / "venv.rst.txt"
    edited.write_text(edited.read_text() + "\nA sentence about zebra-striped virtualenvs.\n")
    third = cli("local", "ingest", str(docs), "--json", "--quiet", "--vectors", "hashed",
                "--param", "ChunkTokens=256", "--param", "ChunkOverlapTokens=32",
                home=home)  # fmt: skip
    assert third.returncode == 0, third.stderr
    out = json.loads(third.stdout)
    [group] = out["executions"]
    assert group["keys"] == ["venv.rst.txt"] and group["status"] == "SUCCEEDED"
    assert (out["totals"]["files"], out["totals"]["unchanged"]) == (1, 2)
    assert 0 < out["totals"]["tokens"] < totals["tokens"]  # only the edited chunks are paid
    found = cli("local", "search", "zebra-striped virtualenvs", "--json", "-k", "1",
                home=home)  # fmt: skip
    assert found.returncode == 0, found.stderr
    [hit] = json.loads(found.stdout)
    assert hit["key"] == "venv.rst.txt" and "zebra-striped" in hit["text"]


def test_a_file_whose_last_ingest_failed_is_uploaded_again(tmp_path: Path) -> None:
    """Only what was written counts as embedded: after a failed run nothing is skipped."""
    docs, home = tmp_path / "docs", tmp_path / "home"
    docs.mkdir()
    (docs / "errors.rst.txt").write_bytes((SAMPLES / "errors.rst.txt").read_bytes())
    revoked = cli("local", "ingest", str(docs), "--json", "--quiet", "--vectors", "hashed",
                  "--emulator", "api_key=revoked", home=home)  # fmt: skip
    assert revoked.returncode == 1, revoked.stderr
    assert json.loads(revoked.stdout)["totals"]["failed"] == 1
    again = cli("local", "ingest", str(docs), "--json", "--quiet", "--vectors", "hashed",
                home=home)  # fmt: skip
    assert again.returncode == 0, again.stderr
    totals = json.loads(again.stdout)["totals"]
    assert (totals["files"], totals["unchanged"], totals["succeeded"]) == (1, 0, 1)
    assert totals["vectors_written"] == totals["chunks"] > 0
