"""Split a normalised document into overlapping chunks of at most ``max_tokens`` tokens.

Every chunk is a substring of the document (``document[char_start:char_end] == text``) and
its ``token_count`` is exactly ``len(encoding.encode_ordinary(text))``: the figure the
embeddings endpoint bills and checks against its 8,191-token per-input cap.

How it stays fast (the document is tokenised once, never once per chunk):

1. The whole document is encoded once (``encode_to_numpy``, in a few segments on two threads;
   tiktoken releases the GIL). Token byte lengths turn into a byte offset per token, and byte
   offsets map to character offsets, so a window of N tokens is a character range.
2. Each chunk's end is chosen inside its window: the last paragraph break (``\\n\\n``) in the
   last half of the window, else the last sentence end or line break in the last quarter,
   else the last space there, else the token boundary at the window's end.
3. The count of the chosen substring is made exact without re-encoding it. The cl100k_base
   pre-tokeniser never puts a space that follows a non-space character into the same piece
   as that character, and its pieces look ahead at most one character, past whitespace
   only. So at such a *safe point* the pieces of any substring and of the whole document
   agree, and the count of ``text[a:b]`` is ``encode(text[a:x]) + (document tokens in
   [x, y)) + encode(text[y:b])``, with ``x`` the first and ``y`` the last safe point inside
   the chunk: two tiny encodes. For other encodings, or a chunk without safe points (CJK,
   one huge word), the chunk is encoded whole. The tests check both paths agree.
4. A chunk whose exact count is over the limit (the pre-tokeniser splits an edge differently
   from the document) is re-planned with a smaller budget; a rare last resort searches the
   end by bisection on exact counts.

The modules: ``tokens`` (step 1: the one encode and the byte/character offsets of every
token) and ``planner`` (steps 2 to 4, and the ``Chunk`` record). ``chunk_texts`` chunks a
stream of documents, encoding the next ones on the thread pool while this thread plans
the current one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from batch_embedder.chunking.planner import (
    PARAGRAPH_ZONE,
    SENTENCE_ZONE,
    Chunk,
    Planner,
    make_chunk,
)
from batch_embedder.chunking.tokens import (
    PARALLEL_MIN_CHARS,
    THREADS,
    TokenOffsets,
    encode_all,
    encode_joined,
    encode_parts,
    join,
    joinable,
    segments,
    split_joined,
    utf8,
)
from batch_embedder.settings import MAX_TOKENS_PER_INPUT
from batch_embedder.tokenizer import get_encoding

if TYPE_CHECKING:
    import tiktoken

__all__ = ["MIN_MAX_TOKENS", "PARAGRAPH_ZONE", "PARALLEL_MIN_CHARS", "POOL_MIN_CHARS",
           "SENTENCE_ZONE", "Chunk",
           "chunk_text", "chunk_texts", "make_chunk", "segments"]  # fmt: skip

#: Smallest accepted ``max_tokens``: one character is at most 4 UTF-8 bytes, so at most 4
#: tokens, and every chunk must be able to hold one new character.
MIN_MAX_TOKENS = 4

#: Texts of this many characters or more are encoded alone by ``chunk_texts``; shorter
#: ones are joined (see ``chunk_texts``).
POOL_MIN_CHARS = 1 << 16

#: Short texts are encoded together, in one call of about this many characters.
JOIN_CHARS = 1 << 18
#: Characters ``chunk_texts`` reads ahead of the text it plans.
LOOKAHEAD_CHARS = 1 << 22

#: Encodings whose pre-tokeniser keeps "non-space, then space" in two pieces (see above).
_SAFE_POINT_ENCODINGS = frozenset({"cl100k_base"})


def chunk_text(
    text: str,
    *,
    max_tokens: int = 512,
    overlap_tokens: int = 64,
    encoding: tiktoken.Encoding | None = None,
) -> list[Chunk]:
    """Split ``text`` into overlapping chunks of at most ``max_tokens`` tokens each.

    Args:
        text: the document, normally the output of ``documents.decode_document`` (any string
            works; whitespace is not normalised here).
        max_tokens: hard limit on each chunk's exact token count, ``MIN_MAX_TOKENS`` (4) to
            ``MAX_TOKENS_PER_INPUT`` (8,191).
        overlap_tokens: tokens the start of a chunk repeats from the end of the previous one,
            ``0 <= overlap_tokens < max_tokens``. The start moves to the nearest sentence
            start (else word start) between ``overlap_tokens / 4`` tokens further back and
            ``overlap_tokens / 2`` tokens further on, so the real overlap is about
            ``0.5x`` to ``1.25x`` ``overlap_tokens``.
        encoding: the tokenizer; default ``tokenizer.get_encoding()`` (offline cl100k_base).

    Returns:
        The chunks in document order, ``index`` 0, 1, ... Empty for a text that is empty or
        only whitespace. Each chunk is ``text[char_start:char_end]`` with leading and trailing
        whitespace excluded; consecutive chunks overlap (or, with ``overlap_tokens=0``, are
        separated by whitespace only), so together they cover every non-whitespace character;
        each chunk reaches further than the previous one. Same input, same chunks.

    Cost: one encode of the whole text (on up to two threads, for texts of 256 Ki characters
    or more) plus two encodes of a few characters per chunk; about as fast as one
    ``encode_ordinary`` of the text (see ``benchmarks/chunking_speed.py``).

    Raises:
        ValueError: ``max_tokens`` or ``overlap_tokens`` is out of range (the message names
            them), or ``text`` holds lone surrogates (it is not valid Unicode).
    """
    _check(max_tokens, overlap_tokens)
    enc = encoding if encoding is not None else get_encoding()
    return _plan(text, enc, max_tokens, overlap_tokens, None)


def chunk_texts(
    texts: Iterable[str],
    *,
    max_tokens: int = 512,
    overlap_tokens: int = 64,
    encoding: tiktoken.Encoding | None = None,
    lookahead_chars: int = LOOKAHEAD_CHARS,
) -> Iterator[list[Chunk]]:
    """``chunk_text`` of each of ``texts``, in order, with the encodes done ahead.

    While this thread plans the chunks of one text, the next texts (up to
    ``lookahead_chars`` characters of them, 4 Mi by default) are encoded on a pool of
    ``tokens.THREADS`` (2) threads: tiktoken releases the GIL while it encodes. Long texts
    (``POOL_MIN_CHARS``, 64 Ki characters, or more) are encoded one by one, in segments;
    short ones are joined into one encode of about ``JOIN_CHARS`` (256 Ki) characters
    (``tokens.encode_joined``), because every encode on a pool thread costs a GIL hand-over
    back to it (up to ``sys.getswitchinterval()``, 5 ms, while this thread plans). The
    result is the same as ``[chunk_text(t, ...) for t in texts]``; ``texts`` is consumed
    lazily.

    Raises:
        ValueError: as ``chunk_text`` (arguments out of range, when the first result is
            asked for; a lone surrogate, at the text that holds it).
    """
    _check(max_tokens, overlap_tokens)
    enc = encoding if encoding is not None else get_encoding()
    stream = _Stream(iter(texts), enc, lookahead_chars)
    with ThreadPoolExecutor(THREADS) as pool:
        stream.pool = pool
        while (item := stream.next()) is not None:
            text, tokens, data = item
            yield _plan(text, enc, max_tokens, overlap_tokens, tokens, data)


class _Joined:
    """Short texts encoded together (``tokens.encode_joined``), split once on first use."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.sizes: list[int] = []
        self.future: Future[npt.NDArray[np.uint32]] | None = None
        self.split: list[npt.NDArray[np.uint32] | None] | None = None

    def tokens(self, enc: tiktoken.Encoding, position: int) -> npt.NDArray[np.uint32] | None:
        assert self.future is not None
        if self.split is None:
            self.split = split_joined(enc, self.sizes, self.future.result())
        return self.split[position]


class _Stream:
    """The texts of ``chunk_texts`` read ahead, with their encodes under way."""

    def __init__(self, texts: Iterator[str], enc: tiktoken.Encoding, lookahead: int) -> None:
        self.texts = texts
        self.enc = enc
        self.lookahead = lookahead
        self.pool: ThreadPoolExecutor | None = None
        # (text, its UTF-8 or None, its segments' futures or its joined batch and place)
        self.pending: deque[tuple[str, bytes | None, _Parts | tuple[_Joined, int] | None]]
        self.pending = deque()
        self.chars = 0
        self.open = _Joined()
        self.done = False

    def next(self) -> tuple[str, npt.NDArray[np.uint32] | None, bytes | None] | None:
        """The next text, its tokens when encoded ahead, its UTF-8; None at the end."""
        while not self.done and (not self.pending or self.chars < self.lookahead):
            self._read()
        if not self.pending:
            return None
        text, data, source = self.pending.popleft()
        self.chars -= len(text)
        if isinstance(source, tuple):
            batch, position = source
            if batch is self.open:
                self._close()
            return text, batch.tokens(self.enc, position), data
        return text, join(source) if source else None, data

    def _read(self) -> None:
        text = next(self.texts, None)
        if text is None:
            self.done = True
            self._close()
            return
        self.chars += len(text)
        # Nothing to encode for a blank text; a lone surrogate raises at its turn.
        data = _utf8_or_none(text) if text.strip() else None
        source: _Parts | tuple[_Joined, int] | None = None
        if data is None or self.pool is None:
            pass
        elif len(text) >= POOL_MIN_CHARS:
            source = encode_parts(self.enc, text, self.pool)
        elif self.enc.name in _SAFE_POINT_ENCODINGS and joinable(text):
            source = (self.open, len(self.open.texts))
            self.open.texts.append(text)
            self.open.sizes.append(len(data))
            if sum(len(t) for t in self.open.texts) >= JOIN_CHARS:
                self._close()
        self.pending.append((text, data, source))

    def _close(self) -> None:
        """Submit the open batch's encode (if it holds any text) and open a new one."""
        if self.open.texts and self.pool is not None:
            self.open.future = self.pool.submit(encode_joined, self.enc, self.open.texts)
            self.open = _Joined()


def _utf8_or_none(text: str) -> bytes | None:
    try:
        return utf8(text)
    except ValueError:
        return None


def _check(max_tokens: int, overlap_tokens: int) -> None:
    if not (0 <= overlap_tokens < max_tokens <= MAX_TOKENS_PER_INPUT):
        raise ValueError(
            f"chunking needs 0 <= overlap_tokens ({overlap_tokens}) < max_tokens ({max_tokens})"
            f" <= {MAX_TOKENS_PER_INPUT}"
        )
    if max_tokens < MIN_MAX_TOKENS:
        raise ValueError(
            f"max_tokens ({max_tokens}) must be at least {MIN_MAX_TOKENS}: one character can "
            f"take {MIN_MAX_TOKENS} tokens"
        )


_Parts = list[Future[npt.NDArray[np.uint32]]]


def _plan(
    text: str,
    enc: tiktoken.Encoding,
    max_tokens: int,
    overlap: int,
    tokens: npt.NDArray[np.uint32] | None,
    data: bytes | None = None,
) -> list[Chunk]:
    if not text.strip():
        return []
    if data is None:
        data = utf8(text)  # ValueError for a lone surrogate, before the encode
    found = encode_all(enc, text) if tokens is None else tokens
    offsets = TokenOffsets(text, enc, found, data)
    safe = enc.name in _SAFE_POINT_ENCODINGS
    return Planner(text, offsets, enc, max_tokens, overlap, safe_points=safe).run()
