"""ChunkAndEstimate's skip of uploads that change nothing (see ``db/fingerprints.py``).

``Unchanged.open`` looks the group's keys up once. Then:

- ``split`` (before any read): an upload whose ETag is the one of the stored event is
  unchanged; it is not even read.
- ``same_bytes`` (after the read, before decoding): an upload whose bytes hash to the stored
  event's SHA-256 (a multipart re-upload has another ETag) is unchanged.
- ``accept`` / ``record`` remember the events the group accepted, so that the next upload of
  the same bytes is skipped once this group's chunks are written.

Without a database (no ``DATABASE_URL``, unreachable, not migrated) nothing is skipped and
nothing is recorded: the skip only saves work, it never decides what is stored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import psycopg
from aws_lambda_powertools import Logger

from ..db import fingerprints
from ..db.connection import connect_settings
from ..db.fingerprints import Fingerprint, clean_etag
from ..errors import ConfigurationError
from ..models import Upload
from ..records import sequencer_key
from ..settings import Settings

logger = Logger(child=True)


def fingerprint_of(upload: Upload, sha256: str, etag: str | None = None) -> Fingerprint:
    """The fingerprint of ``upload``'s event, given the SHA-256 (hex) of its bytes and the
    ETag its read returned (else the event's)."""
    tag = clean_etag(etag) or clean_etag(upload.etag)
    return Fingerprint(
        object_key=upload.key,
        sequencer=sequencer_key(upload.sequencer),
        version_id=upload.version_id or tag,
        etag=tag,
        content_sha256=sha256,
    )


@dataclass
class Unchanged:
    """The skip state of one group (one bucket, one settings fingerprint).

    Attributes:
        keys: the object keys skipped as unchanged, in the order found.
    """

    bucket: str
    settings: str
    conn: psycopg.Connection[tuple[object, ...]] | None = None
    stored: dict[str, Fingerprint] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    accepted: dict[str, Fingerprint] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: Settings, bucket: str, uploads: list[Upload]) -> Unchanged:
        """Connect and look up the stored events of ``uploads`` (one query). Only uploads
        with a sequencer (S3 events) take part; bulk prefixes are always processed."""
        state = cls(bucket, fingerprints.settings_fingerprint(settings))
        keys = [u.key for u in uploads if u.sequencer]
        if not keys:
            return state
        try:
            state.conn = connect_settings(settings)
            state.stored = fingerprints.confirmed(state.conn, bucket, keys, state.settings)
        except (psycopg.Error, ConfigurationError, OSError) as exc:
            logger.warning("unchanged uploads are not skipped", extra={"reason": str(exc)})
            state.close()
        return state

    def split(self, uploads: list[Upload]) -> list[Upload]:
        """The uploads left to read: those whose ETag matches their stored event are
        applied as unchanged (``fingerprints.mark_unchanged``, one transaction) and left out."""
        pairs = []
        for upload in uploads:
            old = self.stored.get(upload.key)
            tag = clean_etag(upload.etag)
            if old is not None and upload.sequencer and tag and tag == old.etag:
                pairs.append((old, fingerprint_of(upload, old.content_sha256)))
        done = self._apply(pairs)
        return [u for u in uploads if u.key not in done]

    def same_bytes(self, upload: Upload, data: bytes, etag: str | None) -> bool:
        """Whether ``data`` (the upload's bytes) is its stored event's content; if so it is
        applied as unchanged. Otherwise the event is remembered for ``record``."""
        sha = hashlib.sha256(data).hexdigest()
        new = fingerprint_of(upload, sha, etag)
        old = self.stored.get(upload.key)
        same = old is not None and bool(upload.sequencer) and old.content_sha256 == sha
        if same and old is not None and self._apply([(old, new)]):
            return True
        if upload.sequencer:
            self.accepted[upload.key] = new
        return False

    def record(self, object_keys: set[str]) -> None:
        """Store the events of ``object_keys`` (objects with at least one accepted
        document), then close the connection."""
        if self.conn is not None:
            prints = [p for k, p in self.accepted.items() if k in object_keys]
            try:
                fingerprints.record(self.conn, self.bucket, self.settings, prints)
            except psycopg.Error as exc:
                logger.warning("fingerprints not recorded", extra={"reason": str(exc)})
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _apply(self, pairs: list[tuple[Fingerprint, Fingerprint]]) -> set[str]:
        if not pairs or self.conn is None:
            return set()
        done = fingerprints.mark_unchanged(self.conn, self.bucket, self.settings, pairs)
        self.keys.extend(new.object_key for _, new in pairs if new.object_key in done)
        return done
