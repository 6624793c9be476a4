"""Token-exact chunking: every count is what ``encode_ordinary`` (and the API) says."""

from __future__ import annotations

import hashlib
import itertools
import random
import sysconfig
from pathlib import Path

import pytest

from batch_embedder import chunking
from batch_embedder.chunking import Chunk, chunk_text, chunk_texts
from batch_embedder.chunking.planner import Planner
from batch_embedder.chunking.tokens import (
    TokenOffsets,
    encode,
    encode_joined,
    joinable,
    split_joined,
)
from batch_embedder.documents import decode_document
from batch_embedder.settings import MAX_TOKENS_PER_INPUT
from batch_embedder.tokenizer import get_encoding

ENC = get_encoding()
ROOT = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])

WORDS = [
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at",
    "from", "this", "be", "are", "or", "an", "it", "which", "embedding", "vector", "batch",
    "token", "chunk", "document", "paragraph", "sentence", "model", "request", "throughput",
    "latency", "cost", "index", "query", "database", "Lambda", "bucket", "object", "pgvector",
]  # fmt: skip


def _prose(rng: random.Random, paragraphs: int) -> str:
    out = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(rng.randint(1, 8)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 25))]
            sentences.append(" ".join(words).capitalize() + rng.choice(".!?."))
        out.append(" ".join(sentences))
    return "\n\n".join(out)


def _count(text: str) -> int:
    return len(ENC.encode_ordinary(text))


def check(
    text: str, chunks: list[Chunk], max_tokens: int, overlap_tokens: int, *, overlap_bound: bool
) -> None:
    """Every invariant of ``chunk_text``'s contract."""
    content = text.strip()
    if not content:
        assert chunks == []
        return
    assert chunks, "non-blank text gives at least one chunk"
    counts = [len(t) for t in ENC.encode_ordinary_batch([c.text for c in chunks], num_threads=2)]
    for i, (chunk, count) in enumerate(zip(chunks, counts, strict=True)):
        assert chunk.index == i
        assert text[chunk.char_start : chunk.char_end] == chunk.text
        assert chunk.token_count == count, (i, chunk.token_count, count)
        assert 1 <= chunk.token_count <= max_tokens <= MAX_TOKENS_PER_INPUT
        assert chunk.sha256 == hashlib.sha256(chunk.text.encode("utf-8")).hexdigest()
        assert chunk.text.strip() == chunk.text, "chunks neither start nor end with whitespace"
    # Coverage: nothing but whitespace before the first, after the last, or between two.
    assert not text[: chunks[0].char_start].strip()
    assert chunks[-1].char_end == len(text.rstrip())
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.char_start > prev.char_start
        assert nxt.char_end > prev.char_end
        # Each chunk brings new text (never only a repeat of the previous one).
        assert text[prev.char_end : nxt.char_end].strip()
        if nxt.char_start >= prev.char_end:
            assert not text[prev.char_end : nxt.char_start].strip()
        if overlap_tokens == 0:
            assert nxt.char_start >= prev.char_end
        elif overlap_bound and nxt.char_start < prev.char_end:
            shared = _count(text[nxt.char_start : prev.char_end])
            assert shared <= overlap_tokens + overlap_tokens // 4 + 4, (shared, overlap_tokens)


def run(text: str, max_tokens: int = 512, overlap_tokens: int = 64, **kw: bool) -> list[Chunk]:
    chunks = chunk_text(text, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    check(text, chunks, max_tokens, overlap_tokens, overlap_bound=kw.get("overlap_bound", True))
    return chunks


# -- arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_tokens", "overlap_tokens"),
    [(512, -1), (512, 512), (512, 600), (8192, 64), (0, 0), (3, 0), (2, 1)],
)
def test_invalid_arguments(max_tokens: int, overlap_tokens: int) -> None:
    with pytest.raises(ValueError, match="max_tokens") as caught:
        chunk_text("text", max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    if max_tokens > 3:
        assert "overlap_tokens" in str(caught.value)


def test_lone_surrogate_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        chunk_text("abc \ud800 def")
    stream = chunk_texts(["first text", "abc \ud800 def"])
    assert [c.text for c in next(stream)] == ["first text"]
    with pytest.raises(ValueError, match="surrogate"):
        next(stream)


@pytest.mark.parametrize("text", ["", " ", "\n\n\t  \n", "\u3000\u00a0"])
def test_blank_text_gives_no_chunks(text: str) -> None:
    assert chunk_text(text) == []


def test_short_text_is_one_chunk() -> None:
    text = "  Hello, world. This is short.\n\n"
    (chunk,) = run(text)
    assert chunk.text == "Hello, world. This is short."
    assert (chunk.char_start, chunk.char_end) == (2, 30)
    assert chunk.token_count == _count(chunk.text)


def test_chunk_is_frozen() -> None:
    (chunk,) = chunk_text("hello")
    with pytest.raises(AttributeError):
        chunk.text = "x"  # type: ignore[misc]


def test_explicit_encoding_and_determinism() -> None:
    text = _prose(random.Random(7), 60)
    first = chunk_text(text, max_tokens=128, overlap_tokens=16)
    assert chunk_text(text, max_tokens=128, overlap_tokens=16, encoding=ENC) == first
    assert chunk_text(text, max_tokens=128, overlap_tokens=16) == first


# -- real text ----------------------------------------------------------------------------

REAL_FILES = [
    Path("/usr/share/common-licenses/GPL-3"),
    STDLIB / "LICENSE.txt",
    STDLIB / "pydoc_data" / "topics.py",
    STDLIB / "difflib.py",
    STDLIB / "email" / "_header_value_parser.py",
]


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(512, 64), (100, 0), (16, 4)])
def test_exact_counts_on_real_files(path: Path, max_tokens: int, overlap_tokens: int) -> None:
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    text = path.read_text(encoding="utf-8")
    if max_tokens == 16:
        text = text[:60_000]
    run(text, max_tokens, overlap_tokens)


def test_exact_counts_on_the_samples_after_decoding() -> None:
    files = sorted((ROOT / "samples" / "python-tutorial").glob("*.rst.txt"))
    if not files:
        pytest.skip("samples/python-tutorial is not present")
    for path in files:
        text = decode_document(path.name, path.read_bytes())
        run(text, 512, 64)


def test_large_document_uses_parallel_segments_and_stays_exact() -> None:
    text = "\n\n".join(_prose(random.Random(seed), 40) for seed in range(40))
    assert len(text) > chunking.PARALLEL_MIN_CHARS
    assert "".join(chunking.segments(text, 8)) == text
    assert len(chunking.segments(text, 8)) == 8
    run(text, 512, 64)


def test_max_tokens_8191() -> None:
    gpl = Path("/usr/share/common-licenses/GPL-3")
    text = gpl.read_text() * 3 if gpl.is_file() else _prose(random.Random(3), 800)
    chunks = run(text, MAX_TOKENS_PER_INPUT, 256)
    assert len(chunks) >= 3
    assert max(c.token_count for c in chunks) > MAX_TOKENS_PER_INPUT // 2


def test_max_tokens_16_on_prose() -> None:
    chunks = run(_prose(random.Random(5), 30), 16, 4)
    assert all(c.token_count <= 16 for c in chunks)
    assert sum(c.token_count for c in chunks) / len(chunks) > 8


def test_special_token_text_is_counted_as_text() -> None:
    text = "Before <|endoftext|> after. " * 200 + "<|fim_prefix|><|im_start|>"
    run(text, 32, 8)


# -- hard text ----------------------------------------------------------------------------

HARD_TEXTS = {
    "cjk": "自然言語処理は、人間の言語をコンピュータで扱う技術です。" * 300
    + "中文分词没有空格。" * 300,
    "emoji_zwj_flags": "👩‍👩‍👧‍👦 family 🇫🇷🇯🇵 flags 👍🏽 skin tone 🤯. " * 300,
    "combining_marks": "Ça va? e\u0301\u0323 a\u0308\u0331 Z\u0335\u0321\u0327a\u0336lg\u0338o. "
    * 400,
    "arabic_hebrew": "مرحبا بالعالم. שלום עולם. " * 400,
    "huge_word": "x" * 40_000,
    "huge_random_word": "".join(random.Random(1).choice("abcXYZ0189+/=") for _ in range(30_000)),
    "word_then_huge_word": "A start. " + "ab" * 20_000 + " an end.",
    "space_runs": "word" + " " * 20_000 + "word " + "\t" * 5000 + "word. " * 50 + " " * 9000,
    "newline_runs": ("line\n" * 200 + "\n" * 5000) * 4 + "end",
    "crlf": "first line\r\nsecond line\r\n\r\n" * 500,
    "digits": "1234567890" * 3000,
    "punctuation": "!?.,;:-_=+*&^%$#@~`'\"()[]{}<>/\\|" * 800,
    "many_tiny_lines": "a\n" * 10_000,
}


@pytest.mark.parametrize("name", sorted(HARD_TEXTS))
@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(512, 64), (16, 4), (8191, 1000)])
def test_hard_text(name: str, max_tokens: int, overlap_tokens: int) -> None:
    run(HARD_TEXTS[name], max_tokens, overlap_tokens, overlap_bound=False)


@pytest.mark.parametrize("name", sorted(HARD_TEXTS))
def test_hard_text_with_the_largest_overlap(name: str) -> None:
    text = HARD_TEXTS[name][:4000]
    run(text, 16, 15, overlap_bound=False)


def test_minimum_max_tokens_holds_any_character() -> None:
    text = "𝕳𝖊𝖑𝖑𝖔 🤯🤯 𠜎𠜱𠝹 ok"  # characters that take several tokens each
    chunks = run(text, 4, 3, overlap_bound=False)
    assert "".join(c.text for c in chunks).replace(" ", "")
    run(text, 4, 0)


# -- boundaries ---------------------------------------------------------------------------


def test_paragraph_break_in_the_window_is_used() -> None:
    rng = random.Random(11)
    first = " ".join(rng.choice(WORDS) for _ in range(300)) + "."
    second = " ".join(rng.choice(WORDS) for _ in range(400)) + "."
    assert 256 < _count(first) < 480
    text = first + "\n\n" + second
    chunks = run(text, 512, 0)
    assert chunks[0].text == first
    assert chunks[1].char_start == len(first) + 2


def test_sentence_end_is_preferred_to_a_word() -> None:
    text = _prose(random.Random(2), 80).replace("\n\n", " ")  # one paragraph of sentences
    chunks = run(text, 64, 0)
    ends = [c.text[-1] for c in chunks[:-1]]
    assert len(ends) > 20
    # A sentence may be longer than the last quarter of the window: then a word boundary.
    assert sum(e in ".!?" for e in ends) >= 0.6 * len(ends)
    for chunk in chunks:
        assert chunk.char_end == len(text) or text[chunk.char_end] == " "


def test_word_boundary_when_there_is_no_sentence() -> None:
    text = " ".join(random.Random(4).choice(WORDS) for _ in range(3000))
    chunks = run(text, 50, 10)
    for chunk in chunks:
        assert chunk.char_start == 0 or text[chunk.char_start - 1] == " "
        assert chunk.char_end == len(text) or text[chunk.char_end] == " "


def test_line_breaks_are_sentence_boundaries() -> None:
    text = "\n".join(f"def function_{i}(argument): return argument * {i}" for i in range(400))
    chunks = run(text, 100, 20)
    for chunk in chunks[:-1]:
        assert text[chunk.char_end] == "\n"
    for chunk in chunks[1:]:
        assert text[chunk.char_start - 1] == "\n"


def test_overlap_is_about_overlap_tokens() -> None:
    text = _prose(random.Random(9), 300)
    for overlap in (16, 64, 128):
        chunks = run(text, 512, overlap)
        shared = [_count(text[b.char_start : a.char_end]) for a, b in itertools.pairwise(chunks)]
        assert min(shared) >= overlap // 2 - 2
        assert max(shared) <= overlap + overlap // 4 + 4
        assert abs(sum(shared) / len(shared) - overlap) <= overlap / 4


def test_no_overlap_means_disjoint_chunks() -> None:
    text = _prose(random.Random(10), 100)
    chunks = run(text, 128, 0)
    rebuilt = "".join(
        text[c.char_start : nxt.char_start] if nxt else text[c.char_start : c.char_end]
        for c, nxt in zip(chunks, [*chunks[1:], None], strict=True)
    )
    assert rebuilt == text.strip()


def test_chunks_are_mostly_full() -> None:
    text = _prose(random.Random(12), 400)
    chunks = run(text, 512, 64)
    assert sum(c.token_count for c in chunks[:-1]) / (len(chunks) - 1) > 512 * 0.6


# -- random text, both counting paths -----------------------------------------------------

PIECES = [
    "Hello", "world", " ", "  ", ". ", "! ", "? ", "\n", "\n\n", "\n\n\n", "\t", "\r\n",
    "日本語", "中文", "🙂", "👩‍💻", "e\u0301", "\u00a0", "\u2028", "'s", "'ll", "don't",
    "12345", "3.14", "x" * 40, "<|endoftext|>", "—", "...", "http://example.com/a?b=c",
    "    indented", "\u200b", "Ünïcödé", "ﬁ", "𝔘",
]  # fmt: skip


@pytest.mark.parametrize("seed", range(30))
def test_random_text_invariants(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 4000)))
    max_tokens = rng.choice([4, 5, 8, 16, 33, 100, 512])
    overlap = rng.choice([0, 1, max_tokens // 8, max_tokens // 2, max_tokens - 1])
    chunks = chunk_text(text, max_tokens=max_tokens, overlap_tokens=overlap)
    check(text, chunks, max_tokens, overlap, overlap_bound=False)
    # The shortcut (counts from the document's tokens plus two edge encodes) and the plain
    # path (encode every chunk) must agree exactly: same plan, same counts.
    offsets = TokenOffsets(text, ENC, encode(ENC, text))
    plain = Planner(text, offsets, ENC, max_tokens, overlap, safe_points=False).run()
    assert plain == chunks
    # The streaming form gives the same chunks as one call per text.
    assert list(chunk_texts([text, "", text], max_tokens=max_tokens, overlap_tokens=overlap)) == [
        chunks,
        [],
        chunks,
    ]


@pytest.mark.parametrize("seed", range(5))
def test_random_prose_invariants_with_overlap_bound(seed: int) -> None:
    rng = random.Random(100 + seed)
    text = _prose(rng, rng.randint(1, 200))
    max_tokens = rng.choice([16, 64, 256, 512, 1024])
    overlap = rng.choice([0, max_tokens // 8, max_tokens // 4])
    run(text, max_tokens, overlap)


# -- streams of documents -----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_short_texts_encoded_joined_get_their_own_tokens(seed: int) -> None:
    rng = random.Random(seed)
    texts = ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 60))) for _ in range(200)]
    texts = [t for t in texts if joinable(t)]
    split = split_joined(ENC, [len(t.encode()) for t in texts], encode_joined(ENC, texts))
    assert [None if s is None else s.tolist() for s in split] == [
        ENC.encode_ordinary(t) for t in texts
    ]


def test_a_stream_of_documents_gives_the_chunks_of_each() -> None:
    rng = random.Random(11)
    texts = [_prose(rng, rng.randint(1, 30)) for _ in range(60)]
    texts[5] = ""
    texts[9] = "  \n "
    texts[20] = "\n\n".join(_prose(random.Random(seed), 40) for seed in range(20))  # long
    texts[30] = " starts and ends with spaces "  # encoded alone, not joined
    expected = [chunk_text(t, max_tokens=64, overlap_tokens=8) for t in texts]
    # A small read-ahead and a large one: the same chunks, in the same order.
    for lookahead in (1, 1 << 22):
        got = chunk_texts(iter(texts), max_tokens=64, overlap_tokens=8, lookahead_chars=lookahead)
        assert list(got) == expected
