"""Connections to Postgres with pgvector's types registered and the schema migrated."""

from __future__ import annotations

import threading

import psycopg
from pgvector.psycopg import register_vector

from ..aws.secrets import database_url
from ..errors import ConfigurationError
from ..settings import Settings
from .schema import LATEST_VERSION, migrate, schema_version

_checked: set[str] = set()
_lock = threading.Lock()


def connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection to ``url``, check the schema version once per process, register
    pgvector's types.

    Migrations are not run here: a deploy runs them once (the ``MigrateDatabase`` custom
    resource, ``functions/migrate_database``), ``batch-embedder migrate --stack-name`` by
    hand, and the local stack when it starts its Postgres.

    The connection is in autocommit mode: every ``conn.transaction()`` block is a real
    transaction, committed when it ends. The content store relies on that: a purchase
    stored before a later request fails stays stored (an implicit transaction around the
    whole step would roll it back with the failure).

    Raises:
        psycopg.OperationalError: the server cannot be reached.
        ConfigurationError: the database's schema is older than this code (not migrated).
    """
    conn: psycopg.Connection[tuple[object, ...]] = psycopg.connect(
        url, connect_timeout=15, autocommit=True
    )
    with _lock:
        if url not in _checked:
            version = schema_version(conn)
            if version < LATEST_VERSION:
                conn.close()
                raise ConfigurationError(
                    f"the database schema is at version {version}, this code needs "
                    f"{LATEST_VERSION}: run the migration (a deploy does; by hand: "
                    "batch-embedder migrate --stack-name NAME)"
                )
            _checked.add(url)
    register_vector(conn)
    return conn


def migrate_url(url: str) -> int:
    """Apply the pending migrations to the database at ``url`` (idempotent).

    Returns:
        The schema version afterwards.
    """
    with psycopg.connect(url, connect_timeout=15, autocommit=True) as conn:
        return migrate(conn)


def connect_settings(settings: Settings) -> psycopg.Connection[tuple[object, ...]]:
    """:func:`connect` to ``DATABASE_URL`` (or its secret)."""
    return connect(database_url(settings))
