"""Packing chunks into request lines and batch files, within OpenAI's limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch_embedder.openai.batch_files import (
    MAX_INPUTS_PER_BATCH,
    MAX_INPUTS_PER_REQUEST,
    MAX_TOKENS_PER_REQUEST,
    BatchLimits,
    custom_id,
    parse_custom_id,
    write_batch_files,
)


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_limits_are_openais() -> None:
    assert (MAX_INPUTS_PER_REQUEST, MAX_TOKENS_PER_REQUEST, MAX_INPUTS_PER_BATCH) == (
        2048, 300_000, 50_000,
    )  # fmt: skip


def test_requests_close_at_the_token_and_input_limits(tmp_path: Path) -> None:
    chunks = [(i, f"chunk {i}", 100) for i in range(10)]
    limits = BatchLimits(inputs_per_request=4, tokens_per_request=250)
    [f] = write_batch_files(
        chunks, job_id="j", model="text-embedding-3-small", dimensions=None,
        directory=tmp_path, limits=limits,
    )  # fmt: skip
    records = lines(f.path)
    assert [r["custom_id"] for r in records] == [f"j:{i}-{i + 2}" for i in range(0, 10, 2)]
    for r in records:
        body = r["body"]
        assert isinstance(body, dict)
        assert r["method"] == "POST" and r["url"] == "/v1/embeddings"
        assert body["model"] == "text-embedding-3-small"
        assert body["encoding_format"] == "base64"
        assert "dimensions" not in body
    assert (f.requests, f.inputs, f.tokens) == (5, 10, 1000)
    assert f.bytes == f.path.stat().st_size


def test_files_split_before_requests_inputs_or_bytes_pass_the_cap(tmp_path: Path) -> None:
    chunks = [(i, "x" * 50, 10) for i in range(100)]
    (tmp_path / "a").mkdir()
    by_requests = write_batch_files(
        chunks, job_id="j", model="m", dimensions=256, directory=tmp_path / "a",
        limits=BatchLimits(inputs_per_request=5, requests_per_file=3),
    )  # fmt: skip
    assert [f.requests for f in by_requests] == [3] * 6 + [2]
    assert all(lines(f.path)[0]["body"]["dimensions"] == 256 for f in by_requests)  # type: ignore[index]
    (tmp_path / "b").mkdir()
    by_inputs = write_batch_files(
        chunks, job_id="j", model="m", dimensions=None, directory=tmp_path / "b",
        limits=BatchLimits(inputs_per_request=7, inputs_per_file=20),
    )  # fmt: skip
    assert all(f.inputs <= 20 for f in by_inputs) and sum(f.inputs for f in by_inputs) == 100
    (tmp_path / "c").mkdir()
    by_bytes = write_batch_files(
        chunks, job_id="j", model="m", dimensions=None, directory=tmp_path / "c",
        limits=BatchLimits(inputs_per_request=10, bytes_per_file=2000),
    )  # fmt: skip
    assert len(by_bytes) > 1 and all(f.bytes <= 2000 for f in by_bytes)
    # Every chunk appears exactly once across files, in order.
    spans = [parse_custom_id(str(r["custom_id"]))[1:] for f in by_bytes for r in lines(f.path)]
    assert [i for a, b in spans for i in range(a, b)] == list(range(100))


def test_out_of_order_or_oversized_chunks_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="out of order"):
        write_batch_files(
            [(1, "a", 1), (1, "b", 1)], job_id="j", model="m", dimensions=None, directory=tmp_path
        )
    with pytest.raises(ValueError, match="over the request cap"):
        write_batch_files(
            [(0, "a", 10)], job_id="j", model="m", dimensions=None, directory=tmp_path,
            limits=BatchLimits(tokens_per_request=5),
        )  # fmt: skip


def test_a_gap_in_the_seqs_starts_a_new_request(tmp_path: Path) -> None:
    # Rows left out (urgent, or of a prefix over budget) leave gaps: a custom_id is a range.
    files = write_batch_files(
        [(0, "a", 1), (1, "b", 1), (5, "c", 1), (6, "d", 1)],
        job_id="j", model="m", dimensions=None, directory=tmp_path,
    )  # fmt: skip
    assert files[0].custom_ids == ["j:0-2", "j:5-7"]


def test_no_file_holds_more_tokens_than_the_enqueued_token_cap(tmp_path: Path) -> None:
    # A group larger than the queue becomes several batches that each fit (and wait for room).
    rows = [(i, f"chunk {i}", 400) for i in range(100)]
    files = write_batch_files(
        rows, job_id="j", model="m", dimensions=None, directory=tmp_path,
        limits=BatchLimits(inputs_per_request=10, tokens_per_file=10_000),
    )  # fmt: skip
    assert [f.tokens for f in files] == [8_000] * 5
    assert sum(f.inputs for f in files) == 100


def test_custom_id_round_trip() -> None:
    assert parse_custom_id(custom_id("3f2a-uuid:with:colons", 10, 20)) == (
        "3f2a-uuid:with:colons",
        10,
        20,
    )
    for bad in ("nojob", "j:5-5", "j:a-b", "j:7"):
        with pytest.raises(ValueError):
            parse_custom_id(bad)


def test_requests_for_a_model_with_another_tokenizer_carry_half_the_tokens() -> None:
    from batch_embedder.openai.batch_files import MAX_TOKENS_PER_REQUEST, tokens_per_request

    assert tokens_per_request("text-embedding-3-small") == MAX_TOKENS_PER_REQUEST
    # local-minilm counts WordPiece tokens, more than cl100k_base: a margin under 300,000.
    assert tokens_per_request("local-minilm") == MAX_TOKENS_PER_REQUEST // 2
