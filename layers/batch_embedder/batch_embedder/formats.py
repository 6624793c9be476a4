"""Bytes to text for the formats ``documents.decode_document`` reads: character sets, PDF,
DOCX and Markdown front matter.

Every function returns text that still wants ``documents.normalize_text``; sizes are bytes,
lengths characters. The ``encoding`` recorded for a document is one of the
:class:`Decoded` values: a Python codec name (``"utf-8"``, ``"cp1252"``, ``"utf-16"``, ...)
for text files, ``"pdf"`` or ``"docx"`` for those formats.
"""

from __future__ import annotations

import codecs
import io
import json
import re
import zipfile
from dataclasses import dataclass
from typing import Any

from batch_embedder.errors import InvalidDocumentError

#: A document with more than this fraction of control bytes (not tab, LF, FF, CR, ESC) is
#: treated as binary.
CONTROL_BYTE_RATIO = 0.10
#: Largest uncompressed size of a DOCX's parts, in bytes, as a multiple of its own size
#: (a zip bomb is refused before python-docx inflates it). Text XML compresses about 10:1.
DOCX_MAX_EXPANSION = 100
#: The encoding chosen when the detection has no language evidence: windows-1252, the
#: default of the WHATWG Encoding Standard for Western text, and a superset of the printable
#: part of ISO-8859-1 (https://encoding.spec.whatwg.org/#names-and-labels).
FALLBACK_ENCODING = "cp1252"

#: Code pages chosen over a close match of another (MacRoman, DOS, ...), in this order:
#: the Windows ones, which is what a non-UTF-8 text file is in practice.
_PREFERRED = (FALLBACK_ENCODING, "cp1250", "cp1251", "cp1253", "cp1254", "cp1255", "cp1256",
              "cp1257", "cp1258")  # fmt: skip
#: How much worse than the best match (charset-normalizer's ratios, 0 to 1) is still close.
_CHAOS_MARGIN = 0.01
_COHERENCE_MARGIN = 0.1
#: Byte order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one),
#: https://www.unicode.org/faq/utf_bom.html#bom4
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
#: Never guessed without a BOM: text in them is full of NUL bytes, refused as binary.
_BOM_ONLY = ["utf_16", "utf_16_le", "utf_16_be", "utf_32", "utf_32_le", "utf_32_be"]
#: C0 controls and DEL, except tab, LF, FF, CR and ESC (ANSI colours in logs).
_CONTROL_BYTES = bytes(b for b in [*range(0x20), 0x7F] if b not in (0x09, 0x0A, 0x0C, 0x0D, 0x1B))
_FRONT_MATTER_END = re.compile(r"^(?:---|\.\.\.)[ \t]*\r?$", re.MULTILINE)
_TITLE = re.compile(r"^title[ \t]*:(.*)$")


@dataclass(frozen=True)
class Decoded:
    """A document's text (not yet normalised) and how it was read.

    ``encoding``: the codec name from ``codecs.lookup`` (``"utf-8"``, ``"cp1252"``,
    ``"utf-16"``, ``"utf-32"``, ``"cp1250"``, ...), or ``"pdf"`` / ``"docx"``.
    """

    text: str
    encoding: str


def decode_charset(key: str, data: bytes) -> Decoded:
    """``data`` (non-empty) as text, in the character set it is written in.

    1. A byte order mark decides (UTF-8, UTF-16, UTF-32); the mark is dropped.
    2. NUL bytes, or more than ``CONTROL_BYTE_RATIO`` control bytes: binary (checked on the
       bytes, or on the decoded text of UTF-16 / UTF-32).
    3. Valid UTF-8 is UTF-8 (the fast path).
    4. Otherwise charset-normalizer ranks the code pages (``from_bytes``: least "chaos",
       then most language "coherence",
       https://charset-normalizer.readthedocs.io/en/latest/api.html); ``FALLBACK_ENCODING``
       wins when it fits as well as the best match or when no language shows (short text).
       So Latin-1 and Windows-1252 files both come out as ``"cp1252"``.

    Raises:
        InvalidDocumentError: binary, a BOM followed by bytes that are not in its encoding,
            or bytes no known text encoding explains.
    """
    offset = 0  # of the bytes checked below, in the file
    for bom, name in _BOMS:
        if not data.startswith(bom):
            continue
        if name == "utf-8":  # then checked and decoded as any UTF-8 text
            data, offset = data[len(bom) :], len(bom)
            break
        try:  # the codec reads (and drops) the mark, and its byte order
            text = data.decode(name)
        except UnicodeDecodeError as exc:
            raise InvalidDocumentError(
                key,
                f"starts with a {name.upper()} byte order mark but is not valid "
                f"{name.upper()}: {exc.reason} at byte offset {exc.start}",
            ) from None
        _refuse_binary(key, text.encode("utf-8", "surrogatepass"), offset=None)
        return Decoded(text, name)
    _refuse_binary(key, data, offset=offset)
    try:
        return Decoded(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError as exc:
        not_utf8 = exc
    if offset:
        raise InvalidDocumentError(
            key,
            "starts with a UTF-8 byte order mark but is not valid UTF-8: "
            f"{not_utf8.reason} at byte offset {not_utf8.start + offset}",
        )
    detected = _detect(data)
    if detected is not None:
        try:  # the detection samples the file: the whole of it must decode
            return Decoded(data.decode(detected), detected)
        except UnicodeDecodeError:
            pass
    bad = data[not_utf8.start : not_utf8.start + 4].hex(" ")
    raise InvalidDocumentError(
        key,
        f"is not valid UTF-8 ({not_utf8.reason} at byte offset {not_utf8.start}, bytes "
        f"{bad}) and no other text encoding fits it",
    )


def _refuse_binary(key: str, data: bytes, *, offset: int | None) -> None:
    """Refuse NUL bytes and too many control bytes (``offset``: of ``data`` in the file;
    ``None`` when ``data`` is the UTF-8 form of decoded UTF-16 / UTF-32 text)."""
    nul = data.find(b"\x00")
    if nul >= 0:
        where = f" (the first at byte offset {nul + offset})" if offset is not None else ""
        raise InvalidDocumentError(key, f"looks binary: it contains NUL bytes{where}")
    controls = len(data) - len(data.translate(None, _CONTROL_BYTES))
    if controls > CONTROL_BYTE_RATIO * len(data):
        raise InvalidDocumentError(
            key,
            f"looks binary: {controls:,} of its {len(data):,} bytes "
            f"({controls / len(data):.0%}) are control characters",
        )


def _detect(data: bytes) -> str | None:
    """The codec name (``codecs.lookup(...).name``) charset-normalizer's ranking suggests."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data, cp_exclusion=_BOM_ONLY))
    if not matches:
        return None
    best = matches[0]
    close = [
        m
        for m in matches
        if m.chaos <= best.chaos + _CHAOS_MARGIN
        and m.coherence >= best.coherence - _COHERENCE_MARGIN
    ]
    if best.coherence == 0.0:  # no language recognised: nothing beats the default
        try:
            data.decode(FALLBACK_ENCODING)
            return FALLBACK_ENCODING
        except UnicodeDecodeError:
            pass
    for preferred in _PREFERRED:
        if any(preferred in m.could_be_from_charset for m in close):
            return preferred
    return codecs.lookup(best.encoding).name


def pdf_text(key: str, data: bytes) -> str:
    """The text layer of a PDF: each page's ``PageObject.extract_text()`` (pypdf, plain
    mode, https://pypdf.readthedocs.io/en/stable/user/extract-text.html), pages separated by
    a blank line.

    An encrypted PDF that opens with the empty password (restrictions only, as viewers open
    it) is read; one that needs a password is refused.

    Raises:
        InvalidDocumentError: not a readable PDF, password-protected, or without any text
            (a scanned PDF has images, not text: it needs OCR first).
    """
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")
            except DependencyError:
                raise InvalidDocumentError(
                    key, "is an encrypted PDF (AES) and cannot be decrypted here"
                ) from None
            if not opened:
                raise InvalidDocumentError(
                    key, "is an encrypted PDF (password-protected); upload it without a password"
                )
        pages = [page.extract_text() for page in reader.pages]
    except InvalidDocumentError:
        raise
    except Exception as exc:  # pypdf raises many kinds on damaged files
        raise InvalidDocumentError(key, f"is not a readable PDF ({_describe(exc)})") from None
    text = "\n\n".join(p.strip() for p in pages if p and p.strip())
    if not text:
        raise InvalidDocumentError(
            key, f"no text layer (scanned PDF?): none of its {len(pages)} pages has text"
        )
    return text


def docx_text(key: str, data: bytes) -> str:
    """The body of a Word document (python-docx, https://python-docx.readthedocs.io/): its
    paragraphs and tables in document order (``Document.iter_inner_content()``); a
    paragraph's ``text`` is one paragraph, a table row one paragraph of its cells' text, one
    line per cell (a merged cell once). Headers, footers, comments and notes are left out.

    Raises:
        InvalidDocumentError: not a DOCX (not a zip, no Word document part), or parts that
            would inflate to more than ``DOCX_MAX_EXPANSION`` times its size.
    """
    import docx

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InvalidDocumentError(key, f"is not a readable DOCX ({_describe(exc)})") from None
    if unpacked > DOCX_MAX_EXPANSION * len(data):
        raise InvalidDocumentError(
            key,
            f"is not a readable DOCX (its parts inflate to {unpacked:,} bytes, over "
            f"{DOCX_MAX_EXPANSION} times its size)",
        )
    try:
        document = docx.Document(io.BytesIO(data))
        parts = [_docx_block(block) for block in document.iter_inner_content()]
    except Exception as exc:  # python-docx / lxml raise many kinds on damaged files
        raise InvalidDocumentError(key, f"is not a readable DOCX ({_describe(exc)})") from None
    return "\n\n".join(p for p in parts if p.strip())


def _docx_block(block: Any) -> str:
    from docx.table import Table

    if not isinstance(block, Table):
        return str(block.text)
    rows: list[str] = []
    seen: set[Any] = set()  # <w:tc> elements (kept alive: lxml proxies are identities)
    for row in block.rows:
        lines: list[str] = []
        for cell in row.cells:  # a merged cell is listed in every grid cell it spans
            if cell._tc not in seen:
                seen.add(cell._tc)
                lines.append(cell.text)
        rows.append("\n".join(line for line in lines if line.strip()))
    return "\n\n".join(r for r in rows if r)


def strip_front_matter(text: str) -> str:
    """Markdown without its YAML front matter, the ``title`` kept as the first paragraph.

    Front matter is a ``---`` first line and the next ``---`` (or ``...``) line, as Jekyll
    and Hugo read it (https://jekyllrb.com/docs/front-matter/,
    https://gohugo.io/content-management/front-matter/). Of its keys only a top-level
    ``title`` is text a reader sees on the rendered page; the other keys (``description``,
    ``tags``, dates, ...) are metadata and are dropped. The title is read without a YAML
    library: a plain, ``'single'`` or ``"double"`` quoted scalar on its line. Text without
    a closed block is returned unchanged (``---`` is also a Markdown rule).
    """
    first, newline, rest = text.partition("\n")
    if first.rstrip() != "---" or not newline:
        return text
    end = _FRONT_MATTER_END.search(rest)
    if end is None:
        return text
    body = rest[end.end() :].lstrip("\r\n")
    title = ""
    for line in rest[: end.start()].splitlines():
        found = _TITLE.match(line)
        if found:
            title = _yaml_scalar(found.group(1).strip())
            break
    return f"{title}\n\n{body}" if title else body


def _yaml_scalar(value: str) -> str:
    """A one-line YAML scalar's text (https://yaml.org/spec/1.2.2/#73-flow-scalar-styles)."""
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:  # the JSON escapes are YAML's common ones (\\, \", \n, \t, \uXXXX)
            return str(json.loads(value))
        except ValueError:
            return value[1:-1].replace('\\"', '"')
    if value[:1] in ("|", ">", "[", "{", "&", "*", "!"):
        return ""  # block, collection, anchor, alias or tag: not a plain title
    return value.split(" #", 1)[0].strip()  # a comment after a plain scalar


def _describe(exc: BaseException) -> str:
    message = str(exc).strip() or type(exc).__name__
    return message if len(message) <= 200 else message[:199] + "…"
