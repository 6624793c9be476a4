"""S3 access: reading the uploaded document and the chunk manifest (JSONL) in the work bucket."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from botocore.exceptions import ClientError

from ..errors import InvalidDocumentError
from .clients import client


def read_document(
    bucket: str, key: str, version_id: str | None, *, max_bytes: int
) -> tuple[bytes, str | None]:
    """Read an object whose size is not known yet: a HEAD first, so that an object over
    ``max_bytes`` is refused before it is downloaded.

    Returns:
        ``(body bytes, ETag without quotes)``.

    Raises:
        InvalidDocumentError: the object is over ``max_bytes`` or no longer exists.
    """
    extra: dict[str, Any] = {"VersionId": version_id} if version_id else {}
    try:
        size = int(client("s3").head_object(Bucket=bucket, Key=key, **extra)["ContentLength"])
    except ClientError as exc:
        _raise_if_gone(key, exc)
        raise
    return read_upload(bucket, key, version_id, size=size, max_bytes=max_bytes)


def _raise_if_gone(key: str, exc: ClientError) -> None:
    code = exc.response.get("Error", {}).get("Code", "")
    if code in {"404", "NoSuchKey", "NoSuchVersion"}:
        raise InvalidDocumentError(key, "the object no longer exists in S3") from exc


def read_upload(
    bucket: str, key: str, version_id: str | None, *, size: int, max_bytes: int
) -> tuple[bytes, str | None]:
    """Read an upload whose size the S3 event already gave: one GET, no HEAD.

    Returns:
        ``(body bytes, ETag without quotes)``.

    Raises:
        InvalidDocumentError: the object is over ``max_bytes`` (refused before any
            request) or no longer exists.
    """
    if size > max_bytes:
        raise InvalidDocumentError(
            key, f"the file is {size} bytes, over the {max_bytes}-byte limit (MAX_DOCUMENT_BYTES)"
        )
    extra: dict[str, Any] = {"VersionId": version_id} if version_id else {}
    try:
        obj = client("s3").get_object(Bucket=bucket, Key=key, **extra)
    except ClientError as exc:
        _raise_if_gone(key, exc)
        raise
    body: bytes = obj["Body"].read(max_bytes + 1)
    if len(body) > max_bytes:
        raise InvalidDocumentError(
            key, f"the file is over the {max_bytes}-byte limit (MAX_DOCUMENT_BYTES)"
        )
    etag = obj.get("ETag")
    return body, etag.strip('"') if etag else None


def write_jsonl(bucket: str, key: str, records: Iterable[dict[str, Any]]) -> int:
    """Write ``records`` as JSON Lines to ``s3://bucket/key``.

    Returns:
        Bytes written.
    """
    payload = b"".join(
        json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for r in records
    )
    client("s3").put_object(
        Bucket=bucket, Key=key, Body=payload, ContentType="application/x-ndjson"
    )
    return len(payload)


def iter_jsonl(bucket: str, key: str) -> Iterator[dict[str, Any]]:
    """Stream the JSON Lines object ``s3://bucket/key`` record by record."""
    body = client("s3").get_object(Bucket=bucket, Key=key)["Body"]
    for line in body.iter_lines(chunk_size=1 << 20):
        if line:
            yield json.loads(line)


def list_keys(bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
    """``(key, size in bytes)`` of every object under ``prefix`` (paginated)."""
    paginator = client("s3").get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield str(obj["Key"]), int(obj["Size"])


def has_tag(bucket: str, key: str, version_id: str | None, tag: str, value: str) -> bool:
    """Whether the object carries the tag ``tag=value`` (False if tags cannot be read)."""
    extra: dict[str, Any] = {"VersionId": version_id} if version_id else {}
    try:
        tags = client("s3").get_object_tagging(Bucket=bucket, Key=key, **extra)["TagSet"]
    except ClientError:
        return False
    return any(t["Key"] == tag and t["Value"] == value for t in tags)


def exists(bucket: str, key: str) -> bool:
    """Whether ``key`` is there now (False after a delete or under a delete marker)."""
    try:
        client("s3").head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "405"}:
            return False
        raise
    return True
