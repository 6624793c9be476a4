"""Reading OpenAI files line by line without holding them in memory."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai


def iter_jsonl_file(client: openai.OpenAI, file_id: str) -> Iterator[dict[str, Any]]:
    """Stream the JSONL file ``file_id`` (a batch output or error file) record by record."""
    with client.with_streaming_response.files.content(file_id) as response:
        for line in response.iter_lines():
            if line.strip():
                yield json.loads(line)


def decode_embedding(value: str | list[float]) -> np.ndarray[Any, np.dtype[np.float32]]:
    """An embedding as float32: base64 (little-endian float32, as requested) or a float list."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def delete_files(client: openai.OpenAI, file_ids: list[str | None]) -> int:
    """Delete files at OpenAI, best effort: a file already gone, or an error, is skipped
    (files with purpose ``batch`` expire after 30 days anyway:
    https://platform.openai.com/docs/api-reference/files).

    Returns:
        Files deleted.
    """
    deleted = 0
    for file_id in file_ids:
        if not file_id:
            continue
        try:
            client.files.delete(file_id)
            deleted += 1
        except openai.APIError:
            continue
    return deleted
