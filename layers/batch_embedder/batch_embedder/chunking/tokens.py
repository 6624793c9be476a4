"""The one encode of a document, as token start offsets (bytes and characters).

``chunk_text`` never encodes a document twice: it encodes it once here, on up to two
threads (tiktoken releases the GIL while it encodes), and turns the tokens into the byte
offset where each one starts. ``TokenOffsets`` maps those offsets to and from character
offsets, so that a window of N tokens becomes a character range of the text.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import tiktoken

#: Documents shorter than this (characters) are encoded in one call, without threads.
PARALLEL_MIN_CHARS = 1 << 18
#: Threads for encoding (tiktoken releases the GIL; the benchmark machine has two cores).
THREADS = max(1, min(2, os.cpu_count() or 1))
#: Segments per thread: a few, so that one slow segment does not leave a core idle.
SEGMENTS_PER_THREAD = 4

#: A space right after a non-space character: the space's index is a *safe point*, where
#: the cl100k_base pre-tokeniser always starts a new piece (see ``chunking``'s module doc).
SAFE_POINT = re.compile(r"(?<=\S) ")


@functools.lru_cache(maxsize=8)
def token_byte_lengths(enc: tiktoken.Encoding) -> npt.NDArray[np.int64]:
    """Byte length of every token id of ``enc`` (0 for ids that are not tokens): shape
    ``(enc.max_token_value + 1,)``. Built once per encoding (about 0.1 s for cl100k_base)."""
    table = np.zeros(enc.max_token_value + 1, dtype=np.int64)
    for token in range(enc.max_token_value + 1):
        try:
            table[token] = len(enc.decode_single_token_bytes(token))
        except KeyError:
            continue
    return table


def encode(enc: tiktoken.Encoding, text: str) -> npt.NDArray[np.uint32]:
    """The tokens of ``encode_ordinary(text)`` (special tokens are plain text), as a numpy
    array rather than a Python list (no object per token)."""
    return enc.encode_to_numpy(text, disallowed_special=())


def segments(text: str, parts: int) -> list[str]:
    """``text`` cut at safe points into about ``parts`` pieces of similar size (one piece
    for texts under ``PARALLEL_MIN_CHARS`` characters). The pieces join back to ``text``,
    and their tokens joined are the tokens of ``text``."""
    if parts <= 1 or len(text) < PARALLEL_MIN_CHARS:
        return [text]
    cuts = [0]
    for k in range(1, parts):
        match = SAFE_POINT.search(text, max(cuts[-1] + 1, len(text) * k // parts))
        if match is None:
            break
        cuts.append(match.start())
    cuts.append(len(text))
    return [text[start:end] for start, end in itertools.pairwise(cuts)]


def encode_parts(
    enc: tiktoken.Encoding, text: str, pool: Executor
) -> list[Future[npt.NDArray[np.uint32]]]:
    """Futures of the tokens of ``text``'s ``segments``, encoded on ``pool``: joined in
    order (``join``) they are the tokens of ``text``. Only a safe-point encoding
    (cl100k_base) is cut into segments."""
    parts = segments(text, THREADS * SEGMENTS_PER_THREAD) if enc.name == "cl100k_base" else [text]
    return [pool.submit(encode, enc, part) for part in parts]


def encode_all(enc: tiktoken.Encoding, text: str) -> npt.NDArray[np.uint32]:
    """The tokens of ``text``: in one call, or for a long text in segments on ``THREADS``
    threads of a pool made for the call."""
    if len(text) < PARALLEL_MIN_CHARS or THREADS == 1:
        return encode(enc, text)
    with ThreadPoolExecutor(THREADS) as pool:
        return join(encode_parts(enc, text, pool))


def join(parts: list[Future[npt.NDArray[np.uint32]]]) -> npt.NDArray[np.uint32]:
    """The tokens of ``encode_parts``, waited for and joined (an encode error is raised)."""
    arrays = [part.result() for part in parts]
    return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]


#: Joins short texts for one encode (``encode_joined``). In cl100k_base a space after a
#: non-space character starts a piece (a safe point), " \n" is a piece of its own, and a
#: piece that starts after a line break does not depend on what came before it.
JOINER = " \n"


def joinable(text: str) -> bool:
    """Whether ``text`` can be encoded joined to others: it starts and ends with a
    non-whitespace character (a normalised text does)."""
    return bool(text) and not text[0].isspace() and not text[-1].isspace()


def encode_joined(enc: tiktoken.Encoding, texts: list[str]) -> npt.NDArray[np.uint32]:
    """The tokens of the ``joinable`` ``texts`` joined by ``JOINER``, in one encode (one
    GIL hand-over on a pool thread instead of one per text); ``split_joined`` cuts them."""
    return encode(enc, JOINER.join(texts))


def split_joined(
    enc: tiktoken.Encoding, sizes: list[int], tokens: npt.NDArray[np.uint32]
) -> list[npt.NDArray[np.uint32] | None]:
    """The tokens of each text of ``encode_joined``, given the texts' UTF-8 sizes (bytes).

    A text gets the tokens between its first and last byte when a token starts at both
    (for cl100k_base always: see ``JOINER``); else None, and it must be encoded alone.
    """
    starts = np.zeros(len(tokens) + 1, dtype=np.int64)
    np.cumsum(token_byte_lengths(enc).take(tokens), out=starts[1:])
    joiner = len(JOINER.encode())
    first = np.cumsum([0] + [size + joiner for size in sizes[:-1]], dtype=np.int64)
    last = first + np.asarray(sizes, dtype=np.int64)
    begin = starts.searchsorted(first)
    end = starts.searchsorted(last)
    exact = (starts[np.minimum(begin, len(tokens))] == first) & (
        starts[np.minimum(end, len(tokens))] == last
    )
    return [
        tokens[int(b) : int(e)] if ok else None for b, e, ok in zip(begin, end, exact, strict=True)
    ]


class TokenOffsets:
    """Where each token of a text starts, in bytes of its UTF-8 form and in characters.

    ``data``, when given, must be ``text.encode("utf-8")`` (it saves encoding it again).

    Attributes:
        data: the text as UTF-8 bytes.
        starts: byte offset of the start of every token, then ``len(data)``: shape (n + 1,).
        n_tokens: number of tokens ``n``.
        ascii: the text is ASCII (bytes and characters coincide).

    Raises:
        ValueError: (from the constructor) the text holds a lone surrogate.
        RuntimeError: the tokens do not cover the text's bytes (would be a tiktoken bug).
    """

    def __init__(
        self,
        text: str,
        enc: tiktoken.Encoding,
        tokens: npt.NDArray[np.uint32],
        data: bytes | None = None,
    ) -> None:
        self.data = utf8(text) if data is None else data
        self.ascii = len(self.data) == len(text)
        if not self.ascii:
            raw = np.frombuffer(self.data, dtype=np.uint8)
            # Byte offsets of UTF-8 continuation bytes, and the character owning each one.
            self.cont: npt.NDArray[np.int64] = np.flatnonzero((raw & 0xC0) == 0x80)
            self.owner: npt.NDArray[np.int64] = self.cont - np.arange(len(self.cont)) - 1
        starts = np.zeros(len(tokens) + 1, dtype=np.int64)
        np.cumsum(token_byte_lengths(enc).take(tokens), out=starts[1:])
        if int(starts[-1]) != len(self.data):  # pragma: no cover - would be a tiktoken bug
            raise RuntimeError(f"tokens cover {int(starts[-1])} bytes of {len(self.data)}")
        self.starts = starts
        self.n_tokens = len(tokens)

    def byte(self, char: int) -> int:
        """Byte offset of character ``char``."""
        if self.ascii:
            return char
        return char + int(self.owner.searchsorted(char, "left"))

    def char(self, byte: int) -> int:
        """The character holding ``byte`` (or starting there); ``len(text)`` at the end."""
        if self.ascii:
            return byte
        char = byte - int(self.cont.searchsorted(byte, "left"))
        if byte < len(self.data) and self.data[byte] & 0xC0 == 0x80:
            char -= 1
        return char

    def token_at(self, char: int) -> int:
        """Index of the token holding the first byte of character ``char``."""
        return int(self.starts.searchsorted(self.byte(char), "right")) - 1

    def tokens_before(self, char: int) -> int:
        """Number of tokens that start before character ``char``."""
        return int(self.starts.searchsorted(self.byte(char), "left"))

    def char_of_token(self, token: int) -> int:
        """Character where token ``token`` starts (``token`` clamped to ``[0, n]``)."""
        token = min(max(token, 0), self.n_tokens)
        return self.char(int(self.starts[token]))

    def exact_token(self, char: int) -> int | None:
        """Index of the token starting exactly at character ``char``, else ``None``."""
        byte = self.byte(char)
        index = int(self.starts.searchsorted(byte, "left"))
        if index < len(self.starts) and int(self.starts[index]) == byte:
            return index
        return None


def utf8(text: str) -> bytes:
    """``text`` as UTF-8.

    Raises:
        ValueError: ``text`` holds a lone surrogate (it is not valid Unicode).
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"text holds a lone surrogate at character {exc.start}; it is not valid Unicode"
        ) from None
