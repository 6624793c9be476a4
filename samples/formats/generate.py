"""Write the format samples of this folder (run once; the files are committed).

    .venv/bin/python samples/formats/generate.py

The PDF is written by hand (PDF 1.4, one standard Type 1 font, WinAnsiEncoding: ISO 32000-1
section 7 and annex D,
https://opensource.adobe.com/dc-acrobat-sdk-docs/pdfstandards/PDF32000_2008.pdf); the DOCX
with python-docx. Text written for this project, CC0 (LICENSE.md).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

PDF_PAGES = [
    [
        "Batch embeddings, explained",
        "",
        "The pipeline reads each uploaded document, splits it into chunks of at",
        "most a few hundred tokens, and sends the chunks to the Batch API.",
        "A batch costs half the price of the synchronous endpoint: the results",
        "arrive within a day, usually within minutes.",
    ],
    [
        "Page two: caching and cost",
        "",
        "A chunk whose content hash is already in the index is not embedded again.",
        "The caf\u00e9 on the corner charges 2,50 \u20ac for a cr\u00e8me br\u00fbl\u00e9e.",
    ],
]

DOCX_PARAGRAPHS = [
    ("Budget rules for the embedding pipeline", "Title"),
    ("Every prefix has a daily token budget. A group that would pass it waits.", None),
    ("How a group is priced", "Heading 1"),
    ("Tokens are counted exactly with cl100k_base before anything is sent.", None),
]
DOCX_TABLE = [["Model", "Price per million tokens"], ["small", "0.01 USD"], ["large", "0.065 USD"]]
DOCX_AFTER = "Prices are list prices; the batch discount is already applied."

CP1252_TEXT = (
    "Notes de r\u00e9union \u2013 \u00e9quipe donn\u00e9es\r\n\r\n"
    "L\u2019index est reconstruit chaque nuit ; le co\u00fbt reste sous 5 \u20ac par mois.\r\n"
    "\u00ab Pas de r\u00e9gression \u00bb, a dit Zo\u00eb, "
    "na\u00efve mais d\u00e9termin\u00e9e.\r\n"
)
UTF16_TEXT = (
    "Gr\u00fc\u00dfe aus K\u00f6ln!\r\n\r\n"
    "Diese Datei ist UTF-16 mit Byte-Order-Mark, wie Notepad sie fr\u00fcher schrieb.\r\n"
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3082\u5165\u3063\u3066\u3044\u307e\u3059\u3002\r\n"
)
MARKDOWN_TEXT = """---
title: "Front matter: what is kept"
description: Only the title is text a reader sees.
tags: [markdown, yaml]
---

# Kept body

The YAML block above is dropped; its title becomes the first paragraph.
"""


def _pdf_string(line: str) -> bytes:
    raw = line.encode("cp1252")  # WinAnsiEncoding is Windows-1252 for these characters
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def pdf_bytes() -> bytes:
    objects: list[bytes] = []
    page_ids = [3 + 2 * i for i in range(len(PDF_PAGES))]
    font_id = 3 + 2 * len(PDF_PAGES)
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = b" ".join(b"%d 0 R" % i for i in page_ids)
    objects.append(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids)))
    for page_id, lines in zip(page_ids, PDF_PAGES, strict=True):
        ops = [b"BT", b"/F1 12 Tf", b"16 TL", b"72 720 Td"]
        for line in lines:
            ops.append(_pdf_string(line) + b" Tj T*" if line else b"T*")
        ops.append(b"ET")
        stream = b"\n".join(ops)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>" % (font_id, page_id + 1)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    objects.append(
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    )
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def write_docx(path: Path) -> None:
    import docx

    document = docx.Document()
    for text, style in DOCX_PARAGRAPHS:
        document.add_paragraph(text, style=style)
    table = document.add_table(rows=len(DOCX_TABLE), cols=2)
    for row, values in zip(table.rows, DOCX_TABLE, strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    document.add_paragraph(DOCX_AFTER)
    document.core_properties.author = "batch-embedder"
    document.save(str(path))


def main() -> None:
    (HERE / "report.pdf").write_bytes(pdf_bytes())
    write_docx(HERE / "budget.docx")
    (HERE / "notes-cp1252.txt").write_bytes(CP1252_TEXT.encode("cp1252"))
    (HERE / "greeting-utf16.txt").write_bytes(UTF16_TEXT.encode("utf-16"))  # BOM + LE
    (HERE / "front-matter.md").write_bytes(MARKDOWN_TEXT.encode())


if __name__ == "__main__":
    main()
