"""Extracting normalised text from uploaded objects, and refusing what cannot be embedded."""

from __future__ import annotations

import json
import random
import re
import sysconfig
import unicodedata
from pathlib import Path

import pytest

from batch_embedder import normalize
from batch_embedder.documents import (
    SUPPORTED_EXTENSIONS,
    decode_document,
    html_to_text,
    normalize_text,
)
from batch_embedder.errors import BatchEmbedderError, InvalidDocumentError

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def _error(key: str, data: bytes, **kwargs: object) -> InvalidDocumentError:
    with pytest.raises(InvalidDocumentError) as caught:
        decode_document(key, data, **kwargs)  # type: ignore[arg-type]
    error = caught.value
    assert error.key == key
    assert str(error) == f"{key}: {error.reason}"
    assert isinstance(error, BatchEmbedderError)
    return error


# -- plain text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["a.txt", "docs/b.md", "c.rst", "tutorial/classes.rst.txt", "UPPER.TXT", "x.Md"]
)
def test_plain_text_formats(key: str) -> None:
    assert decode_document(key, b"Hello,\n\nworld.\n") == "Hello,\n\nworld."


def test_utf8_bom_is_removed_and_non_ascii_kept() -> None:
    data = "\ufeffCaf\u00e9 \u65e5\u672c \U0001f600".encode()
    assert decode_document("a.txt", data) == "Caf\u00e9 \u65e5\u672c \U0001f600"


def test_escape_bytes_and_form_feeds_are_text() -> None:
    data = b"\x1b[31mred\x1b[0m line\n\x0cnext page"
    assert decode_document("log.txt", data) == "\x1b[31mred\x1b[0m line\n\nnext page"


def test_real_sample_files_decode() -> None:
    files = sorted((SAMPLES / "python-tutorial").glob("*.rst.txt"))
    if not files:
        pytest.skip("samples/python-tutorial is not present")
    for path in files:
        text = decode_document(path.name, path.read_bytes())
        assert text == normalize_text(text)
        assert "\r" not in text and "\t" not in text and "\n\n\n" not in text


# -- normalisation ------------------------------------------------------------------------


def test_normalize_nfc() -> None:
    decomposed = "Cafe\u0301 n\u0303"  # e + combining acute, n + combining tilde
    assert normalize_text(decomposed) == "Caf\u00e9 \u00f1"
    assert unicodedata.is_normalized("NFC", normalize_text(decomposed))


def test_normalize_line_breaks_and_spaces() -> None:
    raw = "  one\r\ntwo\rthree \t\t four  \n\n\n\n five\u00a0\u00a0six\u2028seven\x0beight  \n\n  "
    assert normalize_text(raw) == "one\ntwo\nthree four\n\n five six\nseven\neight"


def test_normalize_keeps_single_and_double_newlines() -> None:
    assert normalize_text("a\nb\n\nc") == "a\nb\n\nc"


def test_normalize_lines_of_spaces_count_as_blank() -> None:
    assert normalize_text("a\n   \n \t \n\nb") == "a\n\nb"


def test_normalize_is_idempotent() -> None:
    raw = "x\r\n\r\n\r\n  y\t z \u3000 w\u2029\u2029\u2029v"
    once = normalize_text(raw)
    assert normalize_text(once) == once


def test_normalize_empty() -> None:
    assert normalize_text(" \n\t\r\n ") == ""


def _normalize_by_regex(text: str) -> str:
    """The definition in ``normalize_text``'s docstring, one regex per rule (slow)."""
    text = re.sub("[\x00\ud800-\udfff]", "", text)
    text = unicodedata.normalize("NFC", text)
    text = re.sub(r"\r\n?|[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]", "\n", text)
    text = re.sub(r"[^\S\n]+", " ", text)  # every other whitespace run: one space
    text = re.sub(r" +\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


#: Every whitespace character, a few others, and the sequences the rules look for.
_PIECES = [chr(c) for c in range(0x110000) if chr(c).isspace()] + [
    "a", "bc", "\u00e9", "e\u0301", "\x00", "\ud800", "\u4e2d", ".", "\r\n", "\n\n\n",
    "  ", "\t\t", " \n",
]  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_normalize_matches_its_definition_on_random_text(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 80)))
        assert normalize_text(text) == _normalize_by_regex(text), repr(text)
        ascii_text = "".join(c for c in text if c.isascii())
        assert normalize_text(ascii_text) == _normalize_by_regex(ascii_text), repr(ascii_text)


def test_normalize_matches_its_definition_on_real_files() -> None:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:60]
    files += sorted(SAMPLES.rglob("*.txt"))[:20]
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        assert normalize_text(text) == _normalize_by_regex(text), path


def test_every_whitespace_character_is_known_to_normalize() -> None:
    # normalize_text replaces the whitespace characters it knows by name (str.isspace is
    # what a regex \s matches): they must be every one there is.
    known = {"\n", " ", "\r", *normalize._LINE_SEPARATORS, *normalize._UNICODE_SEPARATORS,
             *normalize._OTHER_SPACES, *normalize._UNICODE_SPACES}  # fmt: skip
    assert known == {chr(c) for c in range(0x110000) if chr(c).isspace()}


# -- HTML ---------------------------------------------------------------------------------

PAGE = b"""<!DOCTYPE html>
<html><head><title>Head title</title><meta charset="utf-8">
<style>body { color: red }</style><script>var hidden = 1;</script></head>
<body>
  <!-- a comment -->
  <script type="module">alert("no")</script>
  <noscript>Enable JavaScript</noscript>
  <template><p>template text</p></template>
  <h1>The   title</h1>
  <p>First &amp; only
     paragraph, <b>bold</b> and <a href="#">a link</a>.</p>
  <div>Line one<br>Line two</div>
  <ul><li>apple</li><li>pear</li></ul>
  <pre>  keep
  lines</pre>
  <table><tr><th>k</th><th>v</th></tr><tr><td>1</td><td>2</td></tr></table>
  <style>.late { }</style>
</body></html>
"""


def test_html_visible_text_only() -> None:
    text = decode_document("page.html", PAGE)
    for hidden in (
        "Head title",
        "color",
        "hidden",
        "alert",
        "Enable JavaScript",
        "template",
        "comment",
        "late",
    ):
        assert hidden not in text
    assert text == (
        "The title\n\n"
        "First & only paragraph, bold and a link.\n\n"
        "Line one\nLine two\n\n"
        "apple\npear\n\n"
        "keep\nlines\n\n"
        "k\nv\n\n1\n2"
    )


def test_html_blocks_are_paragraph_breaks() -> None:
    text = decode_document("a.htm", b"<div><p>one</p><p>two</p></div><section>three</section>")
    assert text.split("\n\n") == ["one", "two", "three"]


def test_html_inline_elements_do_not_split_words() -> None:
    assert decode_document("a.html", b"<p>un<b>break</b>able <i>words</i></p>") == (
        "unbreakable words"
    )


def test_html_deeply_nested_does_not_recurse() -> None:
    markup = "<div>" * 3000 + "deep" + "</div>" * 3000
    assert html_to_text(markup).strip() == "deep"


def test_html_without_visible_text() -> None:
    error = _error("empty.html", b"<html><head><title>t</title></head><script>x</script></html>")
    assert "no text to embed" in error.reason


# -- JSON ---------------------------------------------------------------------------------


def test_json_object_fields_in_configured_order() -> None:
    data = json.dumps({"body": "B", "title": "T", "text": "A", "n": 3}).encode()
    assert decode_document("a.json", data) == "A\nB"
    assert decode_document("a.json", data, json_fields=["body", "text"]) == "B\nA"
    assert decode_document("a.json", data, json_fields=["title"]) == "T"


def test_json_array_records_become_paragraphs() -> None:
    data = json.dumps(
        [
            {"text": "first record"},
            {"content": "second record", "text": 5, "extra": "ignored"},
            {"nested": {"text": "not read"}},
            "a plain string",
            {"text": "   "},
        ]
    ).encode()
    assert decode_document("a.json", data) == "first record\n\nsecond record\n\na plain string"


def test_json_top_level_string() -> None:
    assert decode_document("a.json", b'"just text"') == "just text"


def test_json_invalid_names_position() -> None:
    error = _error("bad.json", b'{"text": "a",\n "body": }')
    assert "not valid JSON" in error.reason
    assert "line 2, column 10" in error.reason


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"42", "is a number"), (b"null", "is a null"), (b'[{"text": "a"}, [1]]', "item 2")],
)
def test_json_wrong_shape(data: bytes, expected: str) -> None:
    assert expected in _error("a.json", data).reason


def test_json_without_configured_fields() -> None:
    error = _error("a.json", b'[{"title": "t"}]', json_fields=("text", "body"))
    assert "no text to embed" in error.reason
    assert "text, body" in error.reason


# -- JSONL --------------------------------------------------------------------------------


def test_jsonl_records_and_blank_lines() -> None:
    data = b'{"text": "one"}\r\n\r\n{"content": "two"}\n   \n"three"\n{"other": 1}\n'
    assert decode_document("a.jsonl", data) == "one\n\ntwo\n\nthree"


def test_jsonl_raw_line_separator_inside_a_string() -> None:
    data = '{"text": "a\u2028b"}\n'.encode()
    assert decode_document("a.jsonl", data) == "a\nb"


def test_jsonl_bad_line_is_named() -> None:
    error = _error("a.jsonl", b'{"text": "ok"}\n\n{"text": oops}\n')
    assert error.reason.startswith("line 3 is not valid JSON")
    assert "column 10" in error.reason


def test_jsonl_line_that_is_not_an_object() -> None:
    assert "line 2 is a JSON array" in _error("a.jsonl", b'{"text": "a"}\n[1, 2]\n').reason


# -- CSV ----------------------------------------------------------------------------------


def test_csv_configured_columns() -> None:
    data = b'id,Text,body,other\n1,"hello, world","more",x\n2,,"only body",y\n3,,,z\n'
    assert decode_document("a.csv", data) == "hello, world\nmore\n\nonly body"
    assert decode_document("a.csv", data, csv_columns=["other"]) == "x\n\ny\n\nz"


def test_csv_quoted_newlines_and_crlf() -> None:
    data = b'text\r\n"line one\r\nline two"\r\n"second"\r\n'
    assert decode_document("a.csv", data) == "line one\nline two\n\nsecond"


def test_csv_bom_does_not_break_the_header() -> None:
    assert decode_document("a.csv", b"\xef\xbb\xbftext\nvalue\n") == "value"


def test_csv_cell_larger_than_the_default_field_limit() -> None:
    cell = "word " * 60_000  # 300,000 characters, over csv's default 131,072
    data = f'text\n"{cell}"\n'.encode()
    assert decode_document("big.csv", data) == cell.strip()


def test_csv_without_text_columns_lists_the_columns_found() -> None:
    error = _error("a.csv", b"id,title,url\n1,t,u\n")
    assert "none of the text columns text, content, body" in error.reason
    assert "id, title, url" in error.reason


def test_csv_with_empty_text_columns() -> None:
    assert "no text to embed" in _error("a.csv", b"id,text\n1,\n2,  \n").reason


def test_csv_without_header() -> None:
    assert "no header" in _error("a.csv", b"\n").reason


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b'text\n"unterminated\n', "line 2"),
        (b'text\nok\n"closed" then junk\n', "line 3"),
        (b'"bad" header,text\nx,y\n', "line 1"),
    ],
)
def test_csv_invalid_names_the_line(data: bytes, line: str) -> None:
    error = _error("a.csv", data)
    assert error.reason.startswith("is not valid CSV")
    assert line in error.reason


# -- refusals -----------------------------------------------------------------------------


def test_supported_extensions() -> None:
    assert set(SUPPORTED_EXTENSIONS) == {
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
    }


@pytest.mark.parametrize(
    "key", ["report.doc", "image.png", "archive.tar.gz", "README", "x.txt.bak"]
)
def test_unsupported_extension(key: str) -> None:
    error = _error(key, b"some text")
    assert "unsupported file type" in error.reason
    assert ".txt, .md, .rst, .html, .htm, .json, .jsonl, .csv, .pdf, .docx" in error.reason
    if "." in key:
        assert key.rsplit(".", 1)[1] in error.reason
    else:
        assert "no extension" in error.reason


def test_empty_file() -> None:
    assert _error("a.txt", b"").reason == "the file is empty (0 bytes)"


def test_over_max_bytes() -> None:
    error = _error("a.txt", b"x" * 2001, max_bytes=2000)
    assert error.reason == "the file is 2,001 bytes, over the 2,000-byte limit (MAX_DOCUMENT_BYTES)"
    assert decode_document("a.txt", b"x" * 2000, max_bytes=2000) == "x" * 2000


def test_nul_bytes_look_binary() -> None:
    error = _error("a.txt", b"text\x00more")
    assert error.reason.startswith("looks binary")
    assert "NUL" in error.reason and "offset 4" in error.reason


def test_control_characters_look_binary() -> None:
    data = bytes(range(1, 9)) * 20 + b"some text"
    error = _error("a.md", data)
    assert error.reason.startswith("looks binary")
    assert "control characters" in error.reason


def test_png_header_looks_binary() -> None:
    data = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    assert _error("image.txt", data).reason.startswith("looks binary")


def test_utf16_with_a_bom_is_text() -> None:
    assert decode_document("a.txt", "hello".encode("utf-16")) == "hello"


def test_utf16_without_a_bom_looks_binary() -> None:
    error = _error("a.txt", "hello".encode("utf-16-le"))
    assert error.reason.startswith("looks binary")
    assert "NUL" in error.reason


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"abc\xffdef", "abc\u00ffdef"),
        (b"caf\xc3", "caf\u00c3"),  # a truncated UTF-8 sequence: read as cp1252
        ("\u00e9t\u00e9 ".encode("latin-1"), "\u00e9t\u00e9"),
    ],
)
def test_text_that_is_not_utf8_is_read_in_its_code_page(data: bytes, text: str) -> None:
    assert decode_document("a.txt", data) == text


def test_a_utf8_bom_then_invalid_utf8_names_the_byte_offset() -> None:
    error = _error("a.txt", b"\xef\xbb\xbfabc\xc3(")
    assert "not valid UTF-8" in error.reason
    assert "byte offset 6" in error.reason  # a file offset: it counts the BOM


@pytest.mark.parametrize("data", [b"   \n\n\t  ", b"\r\n\r\n"])
def test_whitespace_only(data: bytes) -> None:
    assert "contains no text to embed" in _error("a.txt", data).reason


def test_nfc_by_blocks_equals_nfc_of_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """normalize._nfc cuts before line feeds and normalises only the blocks that need it:
    the result is NFC of the whole text, whatever falls at a block's edge."""
    monkeypatch.setattr(normalize, "_NFC_BLOCK", 7)  # many edges in short texts
    pieces = [
        "e\u0301",
        "\u0301",
        "\n",
        "\n\u0301",
        "a",
        "\u1100\u1161",
        "\u212b",
        " ",
        "o\u0308\u0304",
    ]
    rng = random.Random(10)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        assert normalize._nfc(text) == unicodedata.normalize("NFC", text), repr(text)
    assert normalize._has_surrogates("a\ud800b") and not normalize._has_surrogates("é")
    assert normalize_text("a\ud800\x00b e\u0301") == "ab \u00e9"
