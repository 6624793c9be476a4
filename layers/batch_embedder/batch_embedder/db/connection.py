"""Connections to Postgres with pgvector's types registered and the schema migrated."""

from __future__ import annotations

import threading

import psycopg
from pgvector.psycopg import register_vector

from ..aws.secrets import database_url
from ..settings import Settings
from .schema import migrate

_migrated: set[str] = set()
_lock = threading.Lock()


def connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection to ``url``, migrate the schema once per process, register vectors.

    The connection is in autocommit mode: every ``conn.transaction()`` block is a real
    transaction, committed when it ends. The content store relies on that: a purchase
    stored before a later request fails stays stored (an implicit transaction around the
    whole step would roll it back with the failure).

    Raises:
        psycopg.OperationalError: the server cannot be reached.
    """
    conn: psycopg.Connection[tuple[object, ...]] = psycopg.connect(
        url, connect_timeout=15, autocommit=True
    )
    with _lock:
        if url not in _migrated:
            migrate(conn)
            _migrated.add(url)
    register_vector(conn)
    return conn


def connect_settings(settings: Settings) -> psycopg.Connection[tuple[object, ...]]:
    """:func:`connect` to ``DATABASE_URL`` (or its secret)."""
    return connect(database_url(settings))
