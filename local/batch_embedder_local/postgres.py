"""The local Postgres: ``pgserver`` (PostgreSQL 16 + pgvector 0.6, from PyPI) in a data dir.

A user's own ``DATABASE_URL`` wins over it. pgserver publishes wheels for CPython up to
3.12; on 3.13 this says so instead of failing with a stack trace.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

#: Settings written into a new data directory. HNSW inserts are CPU-bound; keeping the
#: graph in shared buffers and giving index builds memory is what makes them fast.
LOCAL_POSTGRES_CONF = """
shared_buffers = '1GB'
maintenance_work_mem = '1GB'
max_wal_size = '4GB'
synchronous_commit = off
"""


class LocalPostgresError(RuntimeError):
    """The embedded Postgres cannot run here; the message says what to do instead."""


_servers: dict[str, Any] = {}


def local_database_url(home: Path) -> str:
    """``DATABASE_URL`` if set, else the URL of pgserver running in ``home/pgdata``; its
    schema migrated (the local counterpart of the deploy's migration custom resource).

    Raises:
        LocalPostgresError: pgserver is not installable on this Python (3.13+).
    """
    if os.environ.get("DATABASE_URL"):
        return _migrated(os.environ["DATABASE_URL"])
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    try:
        import pgserver
    except ImportError as exc:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise LocalPostgresError(
            f"the embedded Postgres (pgserver) is not installed for Python {version}: pgserver "
            "publishes wheels for CPython 3.9-3.12 only. Use Python 3.11 or 3.12, or set "
            "DATABASE_URL to a Postgres with pgvector."
        ) from exc
    datadir = (home / "pgdata").resolve()
    datadir.parent.mkdir(parents=True, exist_ok=True)
    key = str(datadir)
    if key not in _servers:
        fresh = not (datadir / "PG_VERSION").exists()
        if fresh:
            server = pgserver.get_server(datadir, cleanup_mode="stop")  # type: ignore[attr-defined]
            server.cleanup()
            with (datadir / "postgresql.auto.conf").open("a") as fh:
                fh.write(LOCAL_POSTGRES_CONF)
        _servers[key] = pgserver.get_server(datadir, cleanup_mode="stop")  # type: ignore[attr-defined]
    uri: str = _servers[key].get_uri()
    return _migrated(uri)


_done: set[str] = set()


def _migrated(url: str) -> str:
    """``url``, its schema migrated once per process."""
    if url not in _done:
        from batch_embedder.db.connection import migrate_url

        migrate_url(url)
        _done.add(url)
    return url
