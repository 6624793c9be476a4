"""Real document formats end to end on the local stack: PDF, DOCX, non-UTF-8 text.

One group holds every sample (the pipe's 1 s window): each is embedded, its chunks are in
pgvector and the execution's output names the encoding its text was read in. A PDF
without a text layer in the same group is left out with its reason; it fails nothing.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.integration

FORMATS = Path(__file__).resolve().parents[2] / "samples" / "formats"
SAMPLES = {
    "formats/report.pdf": "pdf",
    "formats/budget.docx": "docx",
    "formats/notes-cp1252.txt": "cp1252",
    "formats/greeting-utf16.txt": "utf-16",
    "formats/front-matter.md": "utf-8",
}
SCANNED = "formats/scanned.pdf"


def _scanned_pdf() -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=612, height=792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _chunks(db: psycopg.Connection[tuple[Any, ...]], key: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM batch_embedder.chunks WHERE source_key = %s", (key,)
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture(scope="module")
def result(stack: Any) -> Any:
    files = [(key, (FORMATS / key.split("/", 1)[1]).read_bytes()) for key in SAMPLES]
    [ran] = stack.ingest([*files, (SCANNED, _scanned_pdf())], timeout=300)
    return ran


def test_the_group_succeeds(result: Any) -> None:
    assert result.status == "SUCCEEDED", result.cause
    assert result.output["documents"] == len(SAMPLES)


@pytest.mark.parametrize(("key", "encoding"), SAMPLES.items())
def test_each_format_is_embedded_with_its_encoding(
    result: Any, db: psycopg.Connection[tuple[Any, ...]], key: str, encoding: str
) -> None:
    document = result.document(key)
    assert document is not None, result.output.get("results")
    assert document["status"] == "embedded"
    assert document["encoding"] == encoding
    assert document["chunks"] >= 1
    assert _chunks(db, key) == document["chunks"]


def test_the_text_in_pgvector_is_the_extracted_text(
    result: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    texts = {
        key: " ".join(
            row[0]
            for row in db.execute(
                "SELECT text FROM batch_embedder.chunks WHERE source_key = %s ORDER BY chunk_index",
                (key,),
            ).fetchall()
        )
        for key in ("formats/report.pdf", "formats/notes-cp1252.txt", "formats/budget.docx")
    }
    assert "cr\u00e8me br\u00fbl\u00e9e" in texts["formats/report.pdf"]
    assert "co\u00fbt reste sous 5 \u20ac" in texts["formats/notes-cp1252.txt"]
    assert "0.065 USD" in texts["formats/budget.docx"]


def test_a_scanned_pdf_is_left_out_with_its_reason(
    result: Any, db: psycopg.Connection[tuple[Any, ...]]
) -> None:
    document = result.document(SCANNED)
    assert document is not None
    assert document["status"] == "rejected"
    assert "no text layer (scanned PDF?)" in document["reason"]
    assert "encoding" not in document or document["encoding"] is None
    assert _chunks(db, SCANNED) == 0
