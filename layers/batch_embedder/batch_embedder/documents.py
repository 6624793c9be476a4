"""Turn the bytes of an uploaded object into normalised plain text, ready to chunk.

Formats, chosen by the key's last suffix (case-insensitive):

- ``.txt``, ``.md``, ``.rst``: the text as is (``notes.rst.txt`` is a ``.txt``); a ``.md``
  file's YAML front matter is dropped, its ``title`` kept as the first paragraph.
- ``.pdf``: the text layer, page by page (pypdf); ``.docx``: paragraphs and tables in
  document order (python-docx). See ``formats``.
- ``.html``, ``.htm``: the visible text (stdlib ``html.parser`` through BeautifulSoup);
  ``script``, ``style``, ``noscript``, ``template``, ``head`` and comments are dropped, block
  elements (``p``, ``div``, ``li``, headings, ...) become paragraphs, ``br`` a line break,
  ``pre`` keeps its lines.
- ``.json``: an object, an array of objects (or of strings), or a string; from each object
  the configured fields whose values are strings, in the configured order.
- ``.jsonl``: one such value per line; blank lines are skipped.
- ``.csv``: a header row, then records; the configured columns that exist (header names are
  matched ignoring case and surrounding spaces).

Text files (every format but PDF and DOCX) are UTF-8, or another character set detected by
``formats.decode_charset`` (a BOM, then charset-normalizer). Records become paragraphs
separated by a blank line; the fields of one record are separate lines of its paragraph.
The result goes through ``normalize_text``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

from batch_embedder.errors import InvalidDocumentError
from batch_embedder.formats import (
    CONTROL_BYTE_RATIO,
    Decoded,
    decode_charset,
    docx_text,
    pdf_text,
    strip_front_matter,
)
from batch_embedder.normalize import normalize_text

__all__ = ["CONTROL_BYTE_RATIO", "SUPPORTED_EXTENSIONS", "Decoded", "decode_document",
           "decode_text", "extract_document", "normalize_text", "read_text"]  # fmt: skip

#: Suffixes ``decode_document`` accepts, lower case.
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".txt",
    ".md",
    ".rst",
    ".html",
    ".htm",
    ".json",
    ".jsonl",
    ".csv",
    ".pdf",
    ".docx",
)

#: Fields (JSON, JSONL) and columns (CSV) read by default, in this order.
DEFAULT_TEXT_FIELDS: tuple[str, ...] = ("text", "content", "body")

_TEXT_EXTENSIONS = frozenset({".txt", ".md", ".rst"})
_HTML_EXTENSIONS = frozenset({".html", ".htm"})

# HTML: dropped subtrees, elements that are paragraphs, elements that keep their whitespace.
_HTML_DROP = frozenset({"script", "style", "noscript", "template", "head", "title", "iframe"})
_HTML_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "center", "dd",
        "details", "dialog", "dir", "div", "dl", "dt", "fieldset", "figcaption", "figure",
        "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hgroup", "hr", "html",
        "legend", "main", "menu", "nav", "ol", "p", "pre", "section", "summary", "table",
        "tbody", "tfoot", "thead", "tr", "ul",
    }
)  # fmt: skip
_HTML_LINES = frozenset({"td", "th", "li", "dt", "dd", "option"})  # one line each, not a paragraph
_HTML_PRE = frozenset({"pre", "textarea", "listing", "plaintext", "xmp"})

# HTML whitespace.
#: Runs of two or more whitespace characters (not line breaks), or one that is not a space.
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]{2,}|[^\S\n ]")
_LEADING_SPACE = re.compile(r"\n +")
_ANY_SPACE = re.compile(r"\s+")


def decode_document(
    key: str,
    data: bytes,
    *,
    json_fields: Sequence[str] = DEFAULT_TEXT_FIELDS,
    csv_columns: Sequence[str] = DEFAULT_TEXT_FIELDS,
    max_bytes: int | None = None,
) -> str:
    """The normalised text of the object ``key``: ``extract_document(...).text``."""
    return extract_document(
        key, data, json_fields=json_fields, csv_columns=csv_columns, max_bytes=max_bytes
    ).text


def extract_document(
    key: str,
    data: bytes,
    *,
    json_fields: Sequence[str] = DEFAULT_TEXT_FIELDS,
    csv_columns: Sequence[str] = DEFAULT_TEXT_FIELDS,
    max_bytes: int | None = None,
) -> Decoded:
    """The normalised text of the object ``key`` whose content is ``data``, and how it was
    read (``Decoded.encoding``: ``"utf-8"``, ``"cp1252"``, ``"utf-16"``, ``"pdf"``, ...).

    Args:
        key: the S3 object key; its suffix picks the format (see the module doc) and it is
            named in every error.
        data: the object's bytes: a PDF, a DOCX, or text in UTF-8 (the fast path), in
            UTF-16 / UTF-32 with a BOM, or in a detected single-byte code page (cp1252, ...).
        json_fields: keys read from each JSON / JSONL object, in this order.
        csv_columns: CSV columns read from each row, in this order.
        max_bytes: largest accepted ``len(data)`` in bytes (``MAX_DOCUMENT_BYTES``); ``None``
            for no limit.

    Returns:
        The text, normalised by ``normalize_text``: never empty, paragraphs separated by
        ``"\\n\\n"``; and the encoding.

    Raises:
        InvalidDocumentError: the suffix is not in ``SUPPORTED_EXTENSIONS``; the object is
            empty, over ``max_bytes``, binary (NUL bytes or more than 10% control bytes), in
            no known text encoding, not valid JSON / JSONL / CSV (the reason gives the line
            and column), a CSV without any of ``csv_columns`` (the reason lists the columns
            it has), not a readable PDF / DOCX, an encrypted PDF, a PDF without a text layer
            ("no text layer (scanned PDF?)"); or no text is left after extraction.
    """
    extension = _extension(key)
    if extension not in SUPPORTED_EXTENSIONS:
        shown = f"extension {extension!r}" if extension else "no extension"
        raise InvalidDocumentError(
            key,
            f"unsupported file type ({shown}); supported extensions are "
            f"{', '.join(SUPPORTED_EXTENSIONS)}",
        )
    if extension in (".pdf", ".docx"):
        _check_size(key, data, max_bytes)
        read = pdf_text if extension == ".pdf" else docx_text
        decoded = Decoded(read(key, data), extension[1:])
    else:
        decoded = read_text(key, data, max_bytes=max_bytes)
    text = decoded.text

    if extension == ".md":
        text = strip_front_matter(text)
    elif extension in _HTML_EXTENSIONS:
        text = html_to_text(text)
    elif extension == ".json":
        text = _join_records(_json_records(key, text, json_fields))
    elif extension == ".jsonl":
        text = _join_records(_jsonl_records(key, text, json_fields))
    elif extension == ".csv":
        text = _join_records(_csv_records(key, text, csv_columns))

    text = normalize_text(text)
    if not text:
        hint = ""
        if extension in (".json", ".jsonl"):
            hint = f" (no non-empty string in the fields {', '.join(json_fields) or '(none set)'})"
        elif extension == ".csv":
            hint = f" (every value of the columns {', '.join(csv_columns)} is empty)"
        elif extension in _HTML_EXTENSIONS:
            hint = " (no visible text outside scripts, styles and the head)"
        raise InvalidDocumentError(key, f"the file contains no text to embed{hint}")
    return Decoded(text, decoded.encoding)


def decode_text(key: str, data: bytes, *, max_bytes: int | None = None) -> str:
    """``read_text(...).text``: ``data`` as text (not normalised)."""
    return read_text(key, data, max_bytes=max_bytes).text


def read_text(key: str, data: bytes, *, max_bytes: int | None = None) -> Decoded:
    """``data`` as text, after the checks every text format shares (not normalised), and
    its encoding (``formats.decode_charset``).

    Raises:
        InvalidDocumentError: empty, over ``max_bytes`` bytes, binary, or in no known text
            encoding.
    """
    _check_size(key, data, max_bytes)
    return decode_charset(key, data)


def _check_size(key: str, data: bytes, max_bytes: int | None) -> None:
    if not data:
        raise InvalidDocumentError(key, "the file is empty (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:
        raise InvalidDocumentError(
            key,
            f"the file is {len(data):,} bytes, over the {max_bytes:,}-byte limit "
            "(MAX_DOCUMENT_BYTES)",
        )


def html_to_text(markup: str) -> str:
    """The visible text of an HTML page (a ``str``), with block elements as paragraphs.

    Whitespace inside text collapses as a browser would, except in ``pre``; the result still
    wants ``normalize_text``.
    """
    from bs4 import BeautifulSoup, Comment, Declaration, Doctype, ProcessingInstruction, Tag

    skipped = (Comment, Declaration, Doctype, ProcessingInstruction)
    soup = BeautifulSoup(markup, "html.parser")
    parts: list[str] = []
    # Depth-first walk without recursion (deeply nested markup must not hit the limit).
    stack: list[tuple[Any, bool]] = [(soup, False)]
    while stack:
        node, in_pre = stack.pop()
        if isinstance(node, str):  # a marker pushed below, or a NavigableString
            if isinstance(node, skipped):
                continue
            if node.__class__ is _Marker:
                parts.append(str(node))
            else:
                parts.append(str(node) if in_pre else _ANY_SPACE.sub(" ", str(node)))
            continue
        if not isinstance(node, Tag):
            continue
        name = (node.name or "").lower()
        if name in _HTML_DROP:
            continue
        if name == "br":
            parts.append("\n")
            continue
        child_pre = in_pre or name in _HTML_PRE
        if name in _HTML_LINES:  # a line of the enclosing paragraph
            parts.append("\n")
        elif name in _HTML_BLOCKS:  # a paragraph: a blank line before and after
            parts.append("\n\n")
            stack.append((_Marker("\n\n"), child_pre))
        stack.extend((child, child_pre) for child in reversed(node.contents))
    text = "".join(parts)
    text = _HORIZONTAL_SPACE.sub(" ", text)
    return _LEADING_SPACE.sub("\n", text)


class _Marker(str):
    """A separator queued after an element's children (not page text)."""

    __slots__ = ()


def _extension(key: str) -> str:
    name = key.rsplit("/", 1)[-1].lower()
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def _join_records(records: Iterator[str]) -> str:
    return "\n\n".join(record for record in records if record.strip())


def _record_text(value: object, fields: Sequence[str]) -> str | None:
    """Text of one JSON value: the string fields of an object, or a string itself."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "\n".join(
            value[f] for f in fields if isinstance(value.get(f), str) and value[f].strip()
        )
    return None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", list: "array"}.get(
        type(value), type(value).__name__
    )


def _json_records(key: str, text: str, fields: Sequence[str]) -> Iterator[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidDocumentError(
            key,
            f"is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} "
            f"(character {exc.pos})",
        ) from None
    if isinstance(value, list):
        for number, item in enumerate(value, start=1):
            record = _record_text(item, fields)
            if record is None:
                raise InvalidDocumentError(
                    key,
                    f"item {number} of the JSON array is a {_json_type(item)}; "
                    "expected an object (or a string)",
                )
            yield record
        return
    record = _record_text(value, fields)
    if record is None:
        raise InvalidDocumentError(
            key,
            f"the JSON document is a {_json_type(value)}; expected an object or an array of "
            "objects",
        )
    yield record


def _jsonl_records(key: str, text: str, fields: Sequence[str]) -> Iterator[str]:
    # Only "\n" ends a JSON Lines record (U+2028 may appear raw inside JSON strings).
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidDocumentError(
                key, f"line {number} is not valid JSON: {exc.msg} at column {exc.colno}"
            ) from None
        record = _record_text(value, fields)
        if record is None:
            raise InvalidDocumentError(
                key, f"line {number} is a JSON {_json_type(value)}; expected an object"
            )
        yield record


def _csv_records(key: str, text: str, columns: Sequence[str]) -> Iterator[str]:
    if csv.field_size_limit() < len(text):
        # The default (131,072 characters) is less than one long text cell; this is a
        # process-wide setting and only ever raised.
        csv.field_size_limit(len(text) + 1)
    # strict: a stray quote or an unterminated quoted field is an error, not mangled text.
    rows = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(rows, None)
        if not header:
            raise InvalidDocumentError(key, "the CSV file has no header row")
        by_name: dict[str, int] = {}
        for position, name in enumerate(header):
            by_name.setdefault(name.strip().lower(), position)
        present = [by_name[c.strip().lower()] for c in columns if c.strip().lower() in by_name]
        if not present:
            raise InvalidDocumentError(
                key,
                f"the CSV file has none of the text columns {', '.join(columns) or '(none set)'}"
                f"; its columns are: {', '.join(header)}",
            )
        for row in rows:
            yield "\n".join(row[i] for i in present if i < len(row) and row[i].strip())
    except csv.Error as exc:
        raise InvalidDocumentError(key, f"is not valid CSV: {exc} (line {rows.line_num})") from None
