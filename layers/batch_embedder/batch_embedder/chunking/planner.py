"""Where each chunk of a document starts and ends, and its exact token count.

``Planner`` walks a document once, chunk by chunk, over the token offsets of its one encode
(``tokens.TokenOffsets``). Steps 2 to 4 of ``chunking``'s module doc are here.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batch_embedder.chunking.tokens import SAFE_POINT as _SAFE_POINT
from batch_embedder.chunking.tokens import TokenOffsets

if TYPE_CHECKING:
    import tiktoken

#: A paragraph break is a cut candidate in this last fraction of the token window.
PARAGRAPH_ZONE = 0.5
#: A sentence end, a line break or a space is a cut candidate in this last fraction.
SENTENCE_ZONE = 0.25

#: Sentence ends (the cut goes after the first character of the separator).
_SENTENCE_ENDS = (". ", "! ", "? ", "。", "！", "？")
#: Re-plans of one chunk with a smaller budget before the bisection fallback.
_MAX_REPLANS = 8
#: Spaces preceded by whitespace skipped when looking back for a safe point.
_MAX_SAFE_POINT_STEPS = 64

_NON_SPACE = re.compile(r"\S")
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


class Planner:
    """State of one ``chunk_text`` call; positions are characters unless named ``*_byte``."""

    def __init__(
        self,
        text: str,
        offsets: TokenOffsets,
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
        self.offsets = offsets
        self.n_tokens = offsets.n_tokens
        self._token_at = offsets.token_at
        self._tokens_before = offsets.tokens_before
        self._char_of_token = offsets.char_of_token
        self._exact_token = offsets.exact_token

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
        """The chunks of the text (see ``chunk_text``)."""
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
