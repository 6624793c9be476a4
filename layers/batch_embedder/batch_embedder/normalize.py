"""The canonical form of a document's text (``normalize_text``): the same content, the same
chunks. ``documents.extract_document`` applies it to every format."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize_text"]

_LINE_BREAKS = re.compile(r"\r\n?|[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_BLANK_LINES = re.compile(r"\n\n\n+")
_SPACE_RUNS = re.compile(r"  +")
#: Line separators other than "\r" (and "\r\n"), which become "\n": the characters of
#: ``_LINE_BREAKS``, split by whether they are ASCII.
_LINE_SEPARATORS = ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e")
_UNICODE_SEPARATORS = ("\x85", "\u2028", "\u2029")
#: Whitespace (``str.isspace``, what a regex ``\s`` matches) that is neither a line break
#: nor a space; each becomes a space. All such characters are below U+3001 (a unit test
#: checks every code point).
_OTHER_SPACES = tuple(c for c in map(chr, range(128)) if c.isspace() and not _LINE_BREAKS.match(c)
                      and c not in "\n ")  # fmt: skip
_UNICODE_SPACES = tuple(c for c in map(chr, range(128, 0x3001)) if c.isspace()
                        and not _LINE_BREAKS.match(c))  # fmt: skip

#: NUL and lone surrogates: PostgreSQL rejects both in ``text`` (and UTF-8 has no encoding
#: for a surrogate), https://www.postgresql.org/docs/current/datatype-character.html
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


#: Characters per block that ``_nfc`` checks (and normalises) on its own.
_NFC_BLOCK = 1 << 16


def _has_surrogates(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate: the strict UTF-8 encoder refuses only those
    (one C pass, several times faster than a regex scan)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _nfc(text: str) -> str:
    """``unicodedata.normalize("NFC", text)``, normalising only the blocks that need it.

    A line feed is a stable code point (a starter that composes with nothing, NFC_QC=Yes;
    https://unicode.org/reports/tr15/#Stable_Code_Points), so NFC never acts across one and
    blocks cut just before a ``\n`` normalise independently. A document with one
    decomposed accent costs one block's normalisation, not the whole text's.
    """
    if unicodedata.is_normalized("NFC", text):
        return text
    parts: list[str] = []
    start, size = 0, len(text)
    while start < size:
        end = text.find("\n", start + _NFC_BLOCK)
        end = size if end < 0 else end
        part = text[start:end]
        if not unicodedata.is_normalized("NFC", part):
            part = unicodedata.normalize("NFC", part)
        parts.append(part)
        start = end
    return "".join(parts)


def normalize_text(text: str) -> str:
    """``text`` in a canonical form: the same content always gives the same chunks.

    Unicode NFC; ``\\r\\n``, ``\\r`` and the other line separators (VT, FF, U+0085, U+2028,
    U+2029, ...) become ``\\n``; every other run of whitespace (tabs, no-break spaces, ...)
    becomes one space; spaces at the end of a line go; three or more line breaks become two
    (a paragraph break); the whole is stripped. Single line breaks and paragraph breaks
    (``"\\n\\n"``) stay. Lengths are characters; the result is never longer than ``text``
    except through NFC.

    Characters PostgreSQL cannot store in ``text`` are removed: NUL (``\\u0000``, e.g. from
    a JSON string) and lone surrogates (``\\ud800``-``\\udfff``, which are not Unicode).
    """
    ascii_only = text.isascii()  # ASCII: no surrogate, already NFC, few separators
    if "\x00" in text or (not ascii_only and _has_surrogates(text)):
        text = _UNSTORABLE.sub("", text)
    if not ascii_only:
        text = _nfc(text)
    # The steps of the docstring, as plain replaces of the characters present (str.replace
    # and ``in`` scan in C, several times faster than a regex over a class).
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    for separator in _LINE_SEPARATORS if ascii_only else _LINE_SEPARATORS + _UNICODE_SEPARATORS:
        if separator in text:
            text = text.replace(separator, "\n")
    for space in _OTHER_SPACES if ascii_only else _OTHER_SPACES + _UNICODE_SPACES:
        if space in text:
            text = text.replace(space, " ")
    if "  " in text:  # now every horizontal run is spaces: one space each
        text = _SPACE_RUNS.sub(" ", text)
    text = text.replace(" \n", "\n")  # a space that ends a line (runs are single now)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()
