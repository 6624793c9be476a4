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
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from batch_embedder.settings import MAX_TOKENS_PER_INPUT
from batch_embedder.tokenizer import get_encoding

if TYPE_CHECKING:
    import tiktoken

#: Smallest accepted ``max_tokens``: one character is at most 4 UTF-8 bytes, so at most 4
#: tokens, and every chunk must be able to hold one new character.
MIN_MAX_TOKENS = 4

#: A paragraph break is a cut candidate in this last fraction of the token window.
PARAGRAPH_ZONE = 0.5
#: A sentence end, a line break or a space is a cut candidate in this last fraction.
SENTENCE_ZONE = 0.25

#: Sentence ends (the cut goes after the first character of the separator).
_SENTENCE_ENDS = (". ", "! ", "? ", "。", "！", "？")

#: Encodings whose pre-tokeniser keeps "non-space, then space" in two pieces (see module doc).
_SAFE_POINT_ENCODINGS = frozenset({"cl100k_base"})

#: Documents shorter than this (characters) are encoded in one call, without threads.
_PARALLEL_MIN_CHARS = 1 << 18
#: Threads for the one-off encode of the document (tiktoken releases the GIL).
_THREADS = max(1, min(2, os.cpu_count() or 1))
#: Segments per thread: a few, so that one slow segment does not leave a core idle.
_SEGMENTS_PER_THREAD = 4
#: Re-plans of one chunk with a smaller budget before the bisection fallback.
_MAX_REPLANS = 8
#: Spaces preceded by whitespace skipped when looking back for a safe point.
_MAX_SAFE_POINT_STEPS = 64

_NON_SPACE = re.compile(r"\S")
#: A space right after a non-space character: the space's index is a safe point.
_SAFE_POINT = re.compile(r"(?<=\S) ")
#: What ends right before a sentence start (for the overlap): ". ", "! ", "? ", a line break.
_SENTENCE_START = re.compile(r"[.!?] |\n|[。！？]")
_WORD_GAP = re.compile(r" ")
#: A non-space character right after whitespace: a word start.
_WORD_START = re.compile(r"(?<=\s)\S")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a document, ready to embed.

    Attributes:
        index: position of the chunk in the document, from 0.
        text: the chunk, ``document[char_start:char_end]``; never empty, never starts or ends
            with whitespace.
        token_count: exact ``cl100k_base`` tokens of ``text`` (``encode_ordinary``), what the
            embeddings endpoint bills; ``1 <= token_count <= max_tokens``.
        sha256: hex SHA-256 of ``text`` encoded as UTF-8 (64 characters).
        char_start: offset of the first character in the document (characters, not bytes).
        char_end: offset just past the last character (characters, exclusive).
    """

    index: int
    text: str
    token_count: int
    sha256: str
    char_start: int
    char_end: int


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
    enc = encoding if encoding is not None else get_encoding()
    return _Chunker(
        text, enc, max_tokens, overlap_tokens, safe_points=enc.name in _SAFE_POINT_ENCODINGS
    ).run()


def make_chunk(index: int, text: str, token_count: int, char_start: int) -> Chunk:
    """A ``Chunk`` for ``text`` found at ``char_start`` (characters), with its SHA-256 filled in.

    ``token_count`` is trusted as given (tokens); ``char_end`` is ``char_start + len(text)``.
    """
    return Chunk(
        index=index,
        text=text,
        token_count=token_count,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        char_start=char_start,
        char_end=char_start + len(text),
    )


@functools.lru_cache(maxsize=8)
def _token_byte_lengths(enc: tiktoken.Encoding) -> npt.NDArray[np.int32]:
    """Byte length of every token id of ``enc`` (0 for ids that are not tokens)."""
    table = np.zeros(enc.max_token_value + 1, dtype=np.int32)
    for token in range(enc.max_token_value + 1):
        try:
            table[token] = len(enc.decode_single_token_bytes(token))
        except KeyError:
            continue
    return table


def _encode(enc: tiktoken.Encoding, text: str) -> npt.NDArray[np.uint32]:
    # Same tokens as encode_ordinary (special tokens are plain text), without a Python list.
    return enc.encode_to_numpy(text, disallowed_special=())


def _segments(text: str, parts: int) -> list[str]:
    """``text`` cut at safe points into about ``parts`` pieces of similar size."""
    if parts <= 1 or len(text) < _PARALLEL_MIN_CHARS:
        return [text]
    cuts = [0]
    for k in range(1, parts):
        match = _SAFE_POINT.search(text, max(cuts[-1] + 1, len(text) * k // parts))
        if match is None:
            break
        cuts.append(match.start())
    cuts.append(len(text))
    return [text[start:end] for start, end in itertools.pairwise(cuts)]


def _token_starts(enc: tiktoken.Encoding, text: str, n_bytes: int) -> npt.NDArray[np.int64]:
    """Byte offset of the start of every token of ``text``, then ``n_bytes``: shape (n + 1,)."""
    segments = _segments(text, _THREADS * _SEGMENTS_PER_THREAD)
    if len(segments) == 1:
        arrays = [_encode(enc, text)]
    else:
        with ThreadPoolExecutor(_THREADS) as pool:
            arrays = list(pool.map(functools.partial(_encode, enc), segments))
    tokens = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    starts = np.zeros(len(tokens) + 1, dtype=np.int64)
    np.cumsum(_token_byte_lengths(enc)[tokens], dtype=np.int64, out=starts[1:])
    if int(starts[-1]) != n_bytes:  # pragma: no cover - would be a tiktoken bug
        raise RuntimeError(f"tokens cover {int(starts[-1])} bytes of {n_bytes}")
    return starts


class _Chunker:
    """State of one ``chunk_text`` call; positions are characters unless named ``*_byte``."""

    def __init__(
        self,
        text: str,
        enc: tiktoken.Encoding,
        max_tokens: int,
        overlap: int,
        *,
        safe_points: bool,
    ) -> None:
        self.text = text
        self.enc = enc
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.safe_points = safe_points
        self.content_end = len(text.rstrip())
        try:
            self.data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"text holds a lone surrogate at character {exc.start}; it is not valid Unicode"
            ) from None
        self.ascii = len(self.data) == len(text)
        if not self.ascii:
            raw = np.frombuffer(self.data, dtype=np.uint8)
            # Byte offsets of UTF-8 continuation bytes, and the character owning each one.
            self.cont: npt.NDArray[np.int64] = np.flatnonzero((raw & 0xC0) == 0x80)
            self.owner: npt.NDArray[np.int64] = self.cont - np.arange(len(self.cont)) - 1
        self.starts = (
            _token_starts(enc, text, len(self.data)) if self.content_end else np.zeros(1, np.int64)
        )
        self.n_tokens = len(self.starts) - 1

    # -- offsets ---------------------------------------------------------------------------

    def _byte(self, char: int) -> int:
        if self.ascii:
            return char
        return char + int(self.owner.searchsorted(char, "left"))

    def _char(self, byte: int) -> int:
        """The character holding ``byte`` (or starting there); ``len(text)`` at the end."""
        if self.ascii:
            return byte
        char = byte - int(self.cont.searchsorted(byte, "left"))
        if byte < len(self.data) and self.data[byte] & 0xC0 == 0x80:
            char -= 1
        return char

    def _token_at(self, char: int) -> int:
        """Index of the token holding the first byte of character ``char``."""
        return int(self.starts.searchsorted(self._byte(char), "right")) - 1

    def _tokens_before(self, char: int) -> int:
        """Number of tokens that start before character ``char``."""
        return int(self.starts.searchsorted(self._byte(char), "left"))

    def _char_of_token(self, token: int) -> int:
        """Character where token ``token`` starts (clamped to the text)."""
        token = min(max(token, 0), self.n_tokens)
        return self._char(int(self.starts[token]))

    def _exact_token(self, char: int) -> int | None:
        byte = self._byte(char)
        index = int(self.starts.searchsorted(byte, "left"))
        if index < len(self.starts) and int(self.starts[index]) == byte:
            return index
        return None

    # -- text helpers ----------------------------------------------------------------------

    def _next_non_space(self, char: int) -> int:
        match = _NON_SPACE.search(self.text, char)
        return match.start() if match else len(self.text)

    def _rstrip(self, start: int, end: int) -> int:
        """``end`` moved back over whitespace, not before ``start``."""
        if end > start and not self.text[end - 1].isspace():
            return end
        return start + len(self.text[start:end].rstrip())

    # -- exact counts ----------------------------------------------------------------------

    def _encode_len(self, start: int, end: int) -> int:
        return len(self.enc.encode_ordinary(self.text[start:end])) if end > start else 0

    def _count(self, start: int, end: int) -> int:
        """Exact ``len(encode_ordinary(text[start:end]))`` (see the module doc, step 3)."""
        if self.safe_points:
            first = _SAFE_POINT.search(self.text, start + 1, end + 1)
            if first is not None:
                x = first.start()
                y = self._last_safe_point(x, end)
                if y is not None:
                    tx, ty = self._exact_token(x), self._exact_token(y)
                    if tx is not None and ty is not None:
                        return self._encode_len(start, x) + (ty - tx) + self._encode_len(y, end)
        return self._encode_len(start, end)

    def _last_safe_point(self, low: int, end: int) -> int | None:
        """Largest ``p`` in ``[low, end]`` with ``text[p] == " "`` after a non-space."""
        text = self.text
        p = text.rfind(" ", low, end + 1)
        for _ in range(_MAX_SAFE_POINT_STEPS):
            if p < low:
                return None
            if not text[p - 1].isspace():
                return p
            p = text.rfind(" ", low, p)
        return None

    # -- planning --------------------------------------------------------------------------

    def _choose_end(self, start: int, window_end: int, para_low: int, sent_low: int) -> int:
        """Best cut in ``(start, window_end]``: paragraph, sentence, line, space, else the end.

        Returns the cut moved back over whitespace; ``para_low``/``sent_low`` bound the search.
        """
        text = self.text
        if para_low < window_end:
            p = text.rfind("\n\n", para_low, window_end)
            if p >= 0:
                end = self._rstrip(start, p)
                if end > para_low:
                    return end
        if sent_low < window_end:
            best = text.rfind("\n", sent_low, window_end)
            for sep in _SENTENCE_ENDS:
                p = text.rfind(sep, sent_low, window_end + len(sep) - 1)
                if p >= 0:
                    best = max(best, p + 1)
            for cut in (best, text.rfind(" ", sent_low, window_end)):
                if cut >= 0:
                    end = self._rstrip(start, cut)
                    if end > sent_low:
                        return end
        return self._rstrip(start, window_end)

    def _plan_end(self, start: int, prev_end: int, budget: int, first: bool) -> int | None:
        """End of the chunk at ``start`` with about ``budget`` tokens, beyond ``prev_end``.

        ``None`` when the window does not reach new non-whitespace text.
        """
        s_tok = self._token_at(start)
        w_tok = s_tok + budget
        if w_tok >= self.n_tokens:
            return self.content_end
        window_end = self._char_of_token(w_tok)
        floor = max(start, prev_end)
        if window_end <= floor:
            return None
        if first:
            progress_tok = s_tok + 1
        else:
            progress_tok = self._tokens_before(prev_end) + max(1, (budget - self.overlap) // 2)
        para_tok = max(s_tok + budget - int(budget * PARAGRAPH_ZONE), progress_tok)
        sent_tok = max(s_tok + budget - int(budget * SENTENCE_ZONE), progress_tok)
        para_low = max(self._char_of_token(para_tok), floor)
        sent_low = max(self._char_of_token(sent_tok), floor)
        end = self._choose_end(start, window_end, para_low, sent_low)
        return end if end > floor else None

    def _fit(self, start: int, prev_end: int, first: bool) -> tuple[int, int, int]:
        """``(start, end, exact count)`` of the next chunk, ``count <= max_tokens``."""
        budget = self.max_tokens
        for _ in range(_MAX_REPLANS):
            end = self._plan_end(start, prev_end, budget, first)
            if end is None:
                break
            count = self._count(start, end)
            if count <= self.max_tokens:
                return start, end, count
            budget -= count - self.max_tokens
            if budget < 1:
                break
        return self._fallback(start, prev_end, first)

    def _fallback(self, start: int, prev_end: int, first: bool) -> tuple[int, int, int]:
        """Exact but slower: bisection on exact counts (pathological text only)."""
        limit = self.max_tokens
        target = start if first else max(start, self._next_non_space(prev_end))
        low_end = target + 1  # the chunk must hold at least one new character
        if self._count(start, low_end) > limit:
            # Give up overlap: the first word start (or the new character) that fits.
            candidates = [m.start() for m in _WORD_START.finditer(self.text, start + 1, target)]
            candidates.append(target)
            lo, hi = -1, len(candidates) - 1  # candidates[hi] fits: one character, <= 4 tokens
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self._count(candidates[mid], low_end) <= limit:
                    hi = mid
                else:
                    lo = mid
            start = candidates[hi]
        s_tok = self._token_at(start)
        high = (
            self.content_end
            if s_tok + limit + 1 >= self.n_tokens
            else self._char_of_token(s_tok + limit + 1)
        )
        lo_end, hi_end = low_end, max(high, low_end)
        if hi_end > lo_end and self._count(start, hi_end) <= limit:
            lo_end = hi_end
        else:
            while hi_end - lo_end > 1:
                mid = (lo_end + hi_end) // 2
                if self._count(start, mid) <= limit:
                    lo_end = mid
                else:
                    hi_end = mid
        end = self._rstrip(start, lo_end)
        # Prefer a natural boundary inside what fits, if it still makes progress.
        floor = target
        sent_low = max(floor, lo_end - (lo_end - start) // 4)
        para_low = max(floor, lo_end - (lo_end - start) // 2)
        nicer = self._choose_end(start, end, para_low, sent_low)
        if nicer > floor:
            count = self._count(start, nicer)
            if count <= limit:
                return start, nicer, count
        while True:  # trailing whitespace removed: recount (and never end in whitespace)
            count = self._count(start, end)
            if count <= limit:
                return start, end, count
            end = self._rstrip(start, end - 1)  # pragma: no cover - defensive

    def _next_start(self, start: int, end: int) -> int:
        """Start of the chunk after ``text[start:end]``: about ``overlap`` tokens back."""
        text = self.text
        next_new = self._next_non_space(end)
        if self.overlap == 0:
            return next_new
        s_tok = self._token_at(start)
        e_tok = self._tokens_before(end)
        t0 = max(e_tok - self.overlap, s_tok + 1)
        low = max(self._char_of_token(max(t0 - self.overlap // 4, s_tok + 1)), start + 1)
        high = min(self._char_of_token(t0 + self.overlap // 2), end)
        c0 = min(max(self._char_of_token(t0), low), high)
        chosen = c0
        for pattern in (_SENTENCE_START, _WORD_GAP):
            ahead = pattern.search(text, max(c0 - 1, 0), high)
            forward = ahead.end() if ahead else high + 1
            backward = -1
            for match in pattern.finditer(text, max(low - 2, 0), c0):
                backward = match.end()
            if forward <= high and (backward < low or forward - c0 <= c0 - backward):
                chosen = forward
                break
            if backward >= low:
                chosen = backward
                break
        new_start = self._next_non_space(chosen)
        if new_start <= start:
            new_start = self._next_non_space(start + 1)
        return min(new_start, next_new)

    def run(self) -> list[Chunk]:
        text = self.text
        start = self._next_non_space(0)
        if start >= self.content_end:
            return []
        chunks: list[Chunk] = []
        prev_end, first = start, True
        while True:
            start, end, count = self._fit(start, prev_end, first)
            chunks.append(make_chunk(len(chunks), text[start:end], count, start))
            if end >= self.content_end:
                return chunks
            start, prev_end, first = self._next_start(start, end), end, False
