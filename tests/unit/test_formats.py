"""PDF, DOCX, Markdown front matter and character sets (batch_embedder.formats).

The sample hashes pin the extracted text: a content hash changes when the extraction does
(a new pypdf / python-docx / charset-normalizer release), and that re-embeds every document.
Update a hash only on purpose, with a note in the changelog.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from batch_embedder.documents import decode_document, extract_document
from batch_embedder.errors import InvalidDocumentError
from batch_embedder.formats import decode_charset, strip_front_matter

FORMATS = Path(__file__).resolve().parents[2] / "samples" / "formats"


def _error(key: str, data: bytes) -> str:
    with pytest.raises(InvalidDocumentError) as caught:
        decode_document(key, data)
    assert caught.value.key == key
    return caught.value.reason


# -- the samples: text pinned by hash -----------------------------------------------------

SAMPLES = [
    # (file, encoding, sha256 of the normalised text (UTF-8), an excerpt)
    ("report.pdf", "pdf", "3b0ca5c0333eb6258ab169f395185c1b4362118fc58228ed2cc997ba3129adbf",
     "Page two: caching and cost\nA chunk whose content hash"),
    ("budget.docx", "docx", "c2527ddd6fc41361c9b3169025989a8c2354c13cb6467aa2612fe45a54053427",
     "Model\nPrice per million tokens\n\nsmall\n0.01 USD"),
    ("notes-cp1252.txt", "cp1252",
     "bb6d338d79208332a11cba0d919572406e91be006a0b4d678de9ffcb56f79995",
     "L\u2019index est reconstruit chaque nuit ; le co\u00fbt reste sous 5 \u20ac"),
    ("greeting-utf16.txt", "utf-16",
     "74e06155162e4f319f0e1283b27d1641766a4a5520be100f64fa3fef594e6d13",
     "Gr\u00fc\u00dfe aus K\u00f6ln!\n\nDiese Datei"),
    ("front-matter.md", "utf-8", "361d333a9c1d57dd3f57044f3e8f5955a4f623ed50a1dd79d12d6aca99e30c25",
     "Front matter: what is kept\n\n# Kept body"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "encoding", "sha256", "excerpt"), SAMPLES)
def test_sample_text_is_stable(name: str, encoding: str, sha256: str, excerpt: str) -> None:
    data = (FORMATS / name).read_bytes()
    assert len(data) < 50_000
    decoded = extract_document(f"formats/{name}", data)
    assert decoded.encoding == encoding
    assert excerpt in decoded.text
    assert hashlib.sha256(decoded.text.encode()).hexdigest() == sha256


def test_pdf_pages_are_paragraphs_and_winansi_is_decoded() -> None:
    text = decode_document("r.pdf", (FORMATS / "report.pdf").read_bytes())
    assert text.startswith("Batch embeddings, explained\nThe pipeline reads")
    assert "within minutes.\n\nPage two" in text
    assert text.endswith("2,50 \u20ac for a cr\u00e8me br\u00fbl\u00e9e.")


def test_docx_keeps_document_order_and_drops_the_metadata() -> None:
    text = decode_document("b.docx", (FORMATS / "budget.docx").read_bytes())
    paragraphs = text.split("\n\n")
    assert paragraphs[0] == "Budget rules for the embedding pipeline"
    assert paragraphs[-1] == "Prices are list prices; the batch discount is already applied."
    assert "batch-embedder" not in text  # the author (core properties) is not body text


def test_sample_files_are_cc0() -> None:
    assert "CC0" in (FORMATS / "LICENSE.md").read_text(encoding="utf-8")


# -- PDF ------------------------------------------------------------------------------------


def _pdf(password: str | None = None, owner: str = "owner", algorithm: str = "RC4-128") -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    if password is not None:
        writer.encrypt(password, owner_password=owner, algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize(
    "data", [b"%PDF-1.4 some text", b"not a pdf at all", b"%PDF-1.7\n1 0 obj\n<< /Type"]
)
def test_a_damaged_pdf_is_not_readable(data: bytes) -> None:
    assert _error("bad/report.pdf", data).startswith("is not a readable PDF (")


def test_a_pdf_without_text_is_probably_scanned() -> None:
    reason = _error("scan.pdf", _pdf())
    assert reason.startswith("no text layer (scanned PDF?)")
    assert "1 pages" in reason


def test_a_password_protected_pdf_is_refused() -> None:
    reason = _error("secret.pdf", _pdf("s3cret"))
    assert "encrypted PDF" in reason and "password" in reason


def test_a_pdf_encrypted_without_a_user_password_opens() -> None:
    # Restrictions only (print, copy): every viewer opens it, so do we (then: no text).
    assert _error("locked.pdf", _pdf("")).startswith("no text layer")


def test_an_aes_pdf_needs_cryptography_or_is_refused_by_name() -> None:
    data = _pdf("s3cret", algorithm="AES-128")
    assert "encrypted PDF" in _error("aes.pdf", data)


# -- DOCX -----------------------------------------------------------------------------------


def test_a_docx_that_is_not_a_zip() -> None:
    assert _error("a.docx", b"PK\x03\x04 not really").startswith("is not a readable DOCX (")
    assert _error("b.docx", b"plain text").startswith("is not a readable DOCX (")


def test_a_zip_that_is_not_a_word_document() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("hello.txt", "hello")
    assert _error("c.docx", out.getvalue()).startswith("is not a readable DOCX (")


def test_a_docx_that_inflates_too_much_is_refused_before_parsing() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", " " * 5_000_000)
    reason = _error("bomb.docx", out.getvalue())
    assert "inflate to 5,000,000 bytes" in reason


def test_a_merged_docx_cell_is_read_once() -> None:
    import docx

    document = docx.Document()
    table = document.add_table(rows=3, cols=3)
    for i, row in enumerate(table.rows):
        for j, cell in enumerate(row.cells):
            cell.text = f"r{i}c{j}"
    table.cell(0, 0).merge(table.cell(0, 1))  # across: one cell holding both paragraphs
    table.cell(1, 2).merge(table.cell(2, 2))  # down: listed in row 1 only
    document.add_paragraph("after")
    out = io.BytesIO()
    document.save(out)
    assert decode_document("t.docx", out.getvalue()).split("\n\n") == [
        "r0c0\nr0c1\nr0c2",
        "r1c0\nr1c1\nr1c2\nr2c2",
        "r2c0\nr2c1",
        "after",
    ]


def test_an_empty_docx_has_no_text() -> None:
    import docx

    out = io.BytesIO()
    docx.Document().save(out)
    assert "contains no text to embed" in _error("empty.docx", out.getvalue())


# -- Markdown front matter ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "text"),
    [
        ("---\ntitle: Hello\ndescription: meta\n---\nBody.", "Hello\n\nBody."),
        ("---\ntitle: 'It''s here'\n---\n\nBody.", "It's here\n\nBody."),
        ('---\ntitle: "Caf\\u00e9 \\"quoted\\""\n...\nBody.', 'Caf\u00e9 "quoted"\n\nBody.'),
        ("---\ntitle: Plain # a comment\n---\nBody.", "Plain\n\nBody."),
        ("---\ndescription: no title\ntags: [a]\n---\nBody.", "Body."),
        ("---\nmeta:\n  title: nested\n---\nBody.", "Body."),  # not a top-level title
        ("---\ntitle: >\n  folded\n---\nBody.", "Body."),  # block scalars are not read
        ("---\r\ntitle: Windows\r\n---\r\nBody.", "Windows\n\nBody."),
    ],
)
def test_front_matter_is_dropped_and_the_title_kept(markdown: str, text: str) -> None:
    assert decode_document("post.md", markdown.encode()) == text


@pytest.mark.parametrize(
    "markdown",
    [
        "Intro\n---\ntitle: x\n---\n",  # not on the first line: a setext heading and a rule
        "---\ntitle: never closed\n\nBody.",
        "---",
    ],
)
def test_text_without_a_front_matter_block_is_unchanged(markdown: str) -> None:
    assert strip_front_matter(markdown) == markdown


def test_front_matter_only_in_markdown() -> None:
    assert decode_document("a.txt", b"---\ntitle: T\n---\nBody.") == "---\ntitle: T\n---\nBody."


def test_front_matter_without_a_title_or_body_is_empty() -> None:
    assert "contains no text to embed" in _error("a.md", b"---\ndate: 2026-01-01\n---\n")


# -- character sets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "codec", "encoding"),
    [
        ("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e", "latin-1", "cp1252"),
        ("Price 10\u20ac \u2014 \u201cquoted\u201d na\u00efve r\u00e9sum\u00e9",
         "cp1252", "cp1252"),
        ("Gr\u00fc\u00dfe aus K\u00f6ln, sch\u00f6ne Gr\u00fc\u00dfe.", "cp1252", "cp1252"),
        ("Za\u017c\u00f3\u0142\u0107 g\u0119\u015bl\u0105 ja\u017a\u0144. "
         "P\u00f3jd\u017a\u017ce, ki\u0144 t\u0119 chmurno\u015b\u0107 w g\u0142\u0105b "
         "flaszy!", "cp1250", "cp1250"),
        ("\u0421\u044a\u0435\u0448\u044c \u0436\u0435 \u0435\u0449\u0451 \u044d\u0442\u0438\u0445 "
         "\u043c\u044f\u0433\u043a\u0438\u0445 \u0444\u0440\u0430\u043d\u0446\u0443\u0437\u0441"
         "\u043a\u0438\u0445 \u0431\u0443\u043b\u043e\u043a.", "cp1251", "cp1251"),
        ("plain ascii", "ascii", "utf-8"),
        ("\u65e5\u672c\u8a9e", "utf-8", "utf-8"),
        ("\ufeffwith a BOM", "utf-8", "utf-8"),
        ("hello \u00e9", "utf-16", "utf-16"),
        ("hello \u00e9", "utf-32", "utf-32"),
    ],
)  # fmt: skip
def test_charsets(text: str, codec: str, encoding: str) -> None:
    decoded = decode_charset("a.txt", text.encode(codec))
    assert decoded.encoding == encoding
    assert decoded.text == text.lstrip("\ufeff")


def test_utf16_big_endian_with_a_bom() -> None:
    data = b"\xfe\xff" + "Gr\u00fc\u00dfe".encode("utf-16-be")
    assert decode_charset("a.txt", data).text == "Gr\u00fc\u00dfe"


def test_utf16_with_a_bom_but_odd_length_names_the_offset() -> None:
    reason = _error("a.txt", "hi".encode("utf-16") + b"\x00")
    assert reason == (
        "starts with a UTF-16 byte order mark but is not valid UTF-16: truncated data at "
        "byte offset 6"
    )


@pytest.mark.parametrize("key", ["data.json", "rows.csv", "page.html", "lines.jsonl"])
def test_every_text_format_reads_other_charsets(key: str) -> None:
    bodies = {
        ".json": '{"text": "r\u00e9sum\u00e9 na\u00efve"}',
        ".csv": "id,text\n1,r\u00e9sum\u00e9 na\u00efve\n",
        ".html": "<p>r\u00e9sum\u00e9 na\u00efve</p>",
        ".jsonl": '{"text": "r\u00e9sum\u00e9 na\u00efve"}\n',
    }
    body = bodies["." + key.rsplit(".", 1)[1]]
    for codec in ("cp1252", "utf-16"):
        assert decode_document(key, body.encode(codec)) == "r\u00e9sum\u00e9 na\u00efve"


def test_binary_stays_binary() -> None:
    assert _error("a.txt", b"\x00\x01\x02PNG\x00" * 50).startswith("looks binary")
    assert _error("b.txt", bytes(range(1, 9)) * 20 + b"text").startswith("looks binary")


@pytest.mark.parametrize("guess", [None, "utf-8"])
def test_bytes_no_encoding_explains_name_the_first_bad_byte(
    monkeypatch: pytest.MonkeyPatch, guess: str | None
) -> None:
    from batch_embedder import formats

    monkeypatch.setattr(formats, "_detect", lambda data: guess)
    reason = _error("a.txt", b"abc\xffdef")
    assert reason == (
        "is not valid UTF-8 (invalid start byte at byte offset 3, bytes ff 64 65 66) and no "
        "other text encoding fits it"
    )


def test_a_longer_cp1252_text_is_not_taken_for_a_mac_code_page() -> None:
    # charset-normalizer alone ranks mac_latin2 first here (a slightly higher coherence).
    data = ("Notes de r\u00e9union \u2013 \u00e9quipe donn\u00e9es. " * 3000).encode("cp1252")
    assert decode_charset("a.txt", data).encoding == "cp1252"


def test_binary_behind_a_bom_stays_binary() -> None:
    reason = _error("a.txt", b"\xef\xbb\xbftext\x00more")
    assert reason == "looks binary: it contains NUL bytes (the first at byte offset 7)"
    assert _error("b.txt", "text\x00more".encode("utf-16")).startswith("looks binary: it contains")
    assert _error("c.txt", "\x01\x02\x03\x04ab".encode("utf-32")).startswith("looks binary: 4")
