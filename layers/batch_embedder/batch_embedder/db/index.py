"""The HNSW index of each (model, dimensions): when a load goes around it, and (re)building it.

Inserting rows one by one into an HNSW graph is far slower than building the graph once
over the same rows; pgvector's README says so ("Index build time": *"create the index
after loading your initial data"*, https://github.com/pgvector/pgvector#index-build-time).
So a load that adds more than :data:`REBUILD_SHARE` of a model's indexed rows (and at least
:data:`REBUILD_MIN_ROWS`) is written without the index and the index is built after it:

1. In the load's transaction, before its first write to ``chunks``, the index is dropped
   (:func:`drop_for_load`, ``lock_timeout`` :data:`DROP_LOCK_TIMEOUT_S`; when another
   transaction holds the table the drop is given up and the load inserts into the index).
   Searches of the model wait for that transaction (seconds: a COPY-speed load), then see
   the new rows.
2. After the commit, :func:`ensure_index` builds the index with ``CREATE INDEX
   CONCURRENTLY``, with the server's parallel maintenance workers
   (``max_parallel_maintenance_workers``; the local stack sets one per core beyond the
   leader) and enough ``maintenance_work_mem`` for the graph (:func:`build_memory_bytes`).
   Until it is valid the planner does not use it: searches run as an exact scan (slower,
   never wrong) and writers keep writing.

Why not drop and create inside the load transaction: the ``DROP INDEX`` lock
(ACCESS EXCLUSIVE) would then block every search and every writer of ``chunks`` for the
whole build (a minute for 20,000 rows of 1,536 dimensions on 2 cores), where this way they
are blocked only while the rows are copied. ``CREATE INDEX CONCURRENTLY`` cannot run
inside a transaction (PostgreSQL docs, CREATE INDEX,
https://www.postgresql.org/docs/current/sql-createindex.html#SQL-CREATEINDEX-CONCURRENTLY),
so its settings are set for the session and reset after, not ``SET LOCAL``; on a
connection in a transaction (or not in autocommit mode) the index is built in that
transaction instead, with ``SET LOCAL``.

Builds are serialised by a session advisory lock per index: a writer that finds another
build running leaves it to that one (whose snapshot includes the rows committed before
it). A build that died leaves an INVALID index; the next :func:`ensure_index` that gets the
lock drops and rebuilds it.

One build per load, however many groups it comes in: the last load out builds.

- A load that writes without the index (it went around it, or there is none) holds a
  shared transaction-level advisory lock on the model's *load key* from that decision
  (:func:`should_bypass`) to its commit. :func:`ensure_index` after a commit first tries the
  load key exclusively: while another such load is in flight it builds nothing, since that
  load's own :func:`ensure_index` will (every load calls it after its commit).
- A load large enough to go around an index that is still being built
  (``CREATE INDEX CONCURRENTLY`` of an earlier group) cancels that build
  (``pg_cancel_backend`` of the pid ``pg_stat_progress_create_index`` names, same role) and
  drops the invalid index: the build would be redone over its rows anyway. The cancelled
  builder returns quietly.

Searches stay correct meanwhile: without a valid index the planner scans exactly. If the
last load rolls back instead, the index stays missing until the next write of the model
(its retry: Step Functions retries FetchAndWrite).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import psycopg
from psycopg import errors, sql
from psycopg.pq import TransactionStatus

from .schema import HNSW_MAX_VECTOR_DIMENSIONS, SCHEMA, index_name, uses_halfvec, vector_type

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[object, ...]]

#: A load adding more than this share of a model's indexed rows is written without the index,
#: which is rebuilt after it. Rebuilding costs (E + A) * b for E rows in place and A added,
#: inserting A * i; on 2 cores a build takes b ~ 3 ms a row of 1,536 dimensions and an
#: insert i ~ 18 ms (benchmarks/write_speed.py), so rebuilding wins from A > E * b / (i - b),
#: about 20%.
REBUILD_SHARE = 0.2
#: Loads adding fewer rows always insert into the index (seconds at most): below this the
#: fixed costs of a concurrent build (two table scans, waiting for older transactions) and
#: the short block of searches while the load holds the dropped index's lock do not pay.
REBUILD_MIN_ROWS = 500
#: How long the load waits for the table lock the drop needs before inserting instead.
DROP_LOCK_TIMEOUT_S = 2
#: Upper bound of the ``maintenance_work_mem`` a build asks for (bytes); a server setting
#: above it is kept.
BUILD_MEMORY_CAP_BYTES = 2 * 1024**3
#: Bytes of build memory per row besides the vector itself: the element and its level-0
#: neighbour list at pgvector's default ``m = 16`` (pgvector README, "Index options").
GRAPH_BYTES_PER_ROW = 600


@dataclass(frozen=True)
class IndexState:
    """The HNSW index of one (model, dimensions).

    Attributes:
        name: the index's name (``schema.index_name``).
        exists: the index is in the catalog (possibly still being built).
        valid: the planner may use it (``pg_index.indisvalid``).
        rows: rows it held at its last build/VACUUM/ANALYZE (``pg_class.reltuples``;
            0 when missing or never counted).
    """

    name: str
    exists: bool
    valid: bool
    rows: int


def index_state(conn: Conn, model: str, dimensions: int) -> IndexState:
    """Read the catalog entry of the index of (model, dimensions)."""
    name = index_name(model, dimensions)
    row = conn.execute(
        "SELECT i.indisvalid, c.reltuples FROM pg_class c JOIN pg_index i "
        "ON i.indexrelid = c.oid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (SCHEMA, name),
    ).fetchone()
    if row is None:
        return IndexState(name=name, exists=False, valid=False, rows=0)
    return IndexState(
        name=name, exists=True, valid=bool(row[0]), rows=max(0, int(float(str(row[1]))))
    )


def model_rows(conn: Conn, model: str, dimensions: int) -> int:
    """Rows of ``chunks`` for (model, dimensions), counted (a scan)."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {schema}.chunks WHERE model = %s AND dimensions = %s").format(
            schema=sql.Identifier(SCHEMA)
        ),
        (model, dimensions),
    ).fetchone()
    return int(str(row[0])) if row else 0


def should_bypass(conn: Conn, model: str, dimensions: int, adding: int) -> bool:
    """Whether a load inserting ``adding`` rows of (model, dimensions) should be written
    without the index and the index rebuilt after it.

    True when the index exists and ``adding`` is at least :data:`REBUILD_MIN_ROWS` and more
    than :data:`REBUILD_SHARE` of the rows it holds (estimated from the catalog, confirmed
    by a count when the estimate says yes). False without an index (nothing to go around).
    When the answer means the load writes without the index (True, or no index), the
    caller's transaction joins the model's loads in flight (module docstring): call it
    inside the load's transaction.
    """
    if adding <= 0:
        return False
    state = index_state(conn, model, dimensions)
    if not state.exists:
        _join_load(conn, state.name)  # written without an index: build after the last load
        return False
    if adding < REBUILD_MIN_ROWS or adding <= REBUILD_SHARE * state.rows:
        return False
    if adding > REBUILD_SHARE * model_rows(conn, model, dimensions):
        _join_load(conn, state.name)
        return True
    return False


def _load_key(name: str) -> str:
    return f"batch_embedder.load/{name}"


def _join_load(conn: Conn, name: str) -> None:
    """Mark the caller's transaction as a load of index ``name`` written without it (a
    shared transaction-level advisory lock, released at its commit or rollback)."""
    conn.execute("SELECT pg_advisory_xact_lock_shared(hashtext(%s))", (_load_key(name),))


def loads_in_flight(conn: Conn, name: str) -> bool:
    """Whether another transaction is loading rows of index ``name`` without it (holds the
    load key, :func:`should_bypass`); such a load builds the index after its commit."""
    key = _load_key(name)
    row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
    if not (row and row[0]):
        return True
    conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
    return False


def _cancel_builds(conn: Conn, name: str) -> int:
    """Cancel the ``CREATE INDEX CONCURRENTLY`` of index ``name`` other sessions are running
    (``pg_stat_progress_create_index``,
    https://www.postgresql.org/docs/current/progress-reporting.html#CREATE-INDEX-PROGRESS-REPORTING).

    Returns:
        Builds signalled (0 when none runs, or the role may not signal them).
    """
    try:
        with conn.transaction():
            rows = conn.execute(
                "SELECT pg_cancel_backend(p.pid) FROM pg_stat_progress_create_index p "
                "WHERE p.index_relid = to_regclass(%s) AND p.pid <> pg_backend_pid()",
                (f"{SCHEMA}.{name}",),
            ).fetchall()
    except errors.InsufficientPrivilege:
        return 0
    return sum(1 for r in rows if r[0])


def drop_for_load(conn: Conn, model: str, dimensions: int) -> bool:
    """Drop the index of (model, dimensions) inside the caller's load transaction (a
    savepoint), waiting at most :data:`DROP_LOCK_TIMEOUT_S` for the table lock.

    An index still being built (invalid) is abandoned: its build is cancelled first
    (module docstring).

    Returns:
        True if dropped (the caller must :func:`ensure_index` after its commit); False if
        the lock was not had in time or a deadlock was detected (nothing changed).
    """
    state = index_state(conn, model, dimensions)
    if state.exists and not state.valid and _cancel_builds(conn, state.name):
        logger.info("index %s: its running build gives way to a larger load", state.name)
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{DROP_LOCK_TIMEOUT_S}s")
                )
            )
            conn.execute(
                sql.SQL("DROP INDEX IF EXISTS {schema}.{name}").format(
                    schema=sql.Identifier(SCHEMA),
                    name=sql.Identifier(index_name(model, dimensions)),
                )
            )
            conn.execute("SET LOCAL lock_timeout = DEFAULT")
    except (errors.LockNotAvailable, errors.DeadlockDetected):
        logger.info("index %s busy: the load inserts into it", index_name(model, dimensions))
        return False
    return True


def build_memory_bytes(rows: int, dimensions: int, halfvec: bool) -> int:
    """The ``maintenance_work_mem`` a build of ``rows`` vectors asks for, in bytes: the
    vectors (4 bytes a dimension, 2 as halfvec) plus :data:`GRAPH_BYTES_PER_ROW`, with a
    25% margin, between 64 MiB and :data:`BUILD_MEMORY_CAP_BYTES`."""
    per_row = dimensions * (2 if halfvec else 4) + GRAPH_BYTES_PER_ROW
    return int(min(BUILD_MEMORY_CAP_BYTES, max(64 * 1024**2, rows * per_row * 1.25)))


def _create_sql(model: str, dimensions: int, halfvec: bool, concurrently: bool) -> sql.Composed:
    return sql.SQL(
        "CREATE INDEX {how} IF NOT EXISTS {name} ON {schema}.chunks USING hnsw "
        "((embedding::{vtype}) {ops}) WHERE model = {model} AND dimensions = {dims}"
    ).format(
        how=sql.SQL("CONCURRENTLY" if concurrently else ""),
        name=sql.Identifier(index_name(model, dimensions)),
        schema=sql.Identifier(SCHEMA),
        vtype=vector_type(dimensions, halfvec),
        ops=sql.SQL("halfvec_cosine_ops" if halfvec else "vector_cosine_ops"),
        model=sql.Literal(model),
        dims=sql.Literal(dimensions),
    )


def ensure_index(conn: Conn, model: str, dimensions: int) -> bool:
    """Make sure the HNSW cosine index of (model, dimensions) exists and is valid: build
    it when missing, rebuild it when a build died (module docstring). Above 2,000
    dimensions the index is on ``halfvec(D)`` (pgvector >= 0.7), else there is none.

    Nothing is built while another load of the model is in flight without the index
    (:func:`loads_in_flight`): that load builds it after its commit, once for both.

    Returns:
        True if an index exists afterwards, or another session is building it, or a load
        in flight will, or this build was cancelled in favour of a larger load; False
        above 2,000 dimensions without halfvec (a warning is logged).

    Raises:
        psycopg.Error: the build failed (the rows are written; searches scan exactly
            until a later call builds it).
    """
    state = index_state(conn, model, dimensions)
    if state.valid:
        return True
    if loads_in_flight(conn, state.name):
        logger.info("index %s: left to the load still in flight", state.name)
        return True
    halfvec = uses_halfvec(conn, dimensions)
    if dimensions > HNSW_MAX_VECTOR_DIMENSIONS and not halfvec:
        logger.warning(
            "no HNSW index for %s/%s: over 2,000 dimensions needs pgvector >= 0.7 (halfvec); "
            "set EMBEDDING_DIMENSIONS <= 2000",
            model,
            dimensions,
        )
        return False
    key = f"batch_embedder.index/{state.name}"
    row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
    if not (row and row[0]):
        return True  # another session is building it
    # CONCURRENTLY only outside any transaction block (not inside a caller's transaction).
    concurrently = conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE
    try:
        state = index_state(conn, model, dimensions)
        if state.valid:
            return True
        rows = model_rows(conn, model, dimensions)
        memory = build_memory_bytes(rows, dimensions, halfvec)
        scope: AbstractContextManager[object] = (
            nullcontext() if concurrently else conn.transaction()
        )
        with scope:
            if state.exists:  # INVALID and nobody builds it: a build died
                conn.execute(
                    sql.SQL("DROP INDEX {how} IF EXISTS {schema}.{name}").format(
                        how=sql.SQL("CONCURRENTLY" if concurrently else ""),
                        schema=sql.Identifier(SCHEMA),
                        name=sql.Identifier(state.name),
                    )
                )
            _raise_memory(conn, memory, local=not concurrently)
            conn.execute(_create_sql(model, dimensions, halfvec, concurrently))
        logger.info("built index %s over %d rows", state.name, rows)
    except errors.QueryCanceled as exc:
        # A larger load took the build over (drop_for_load: "user request"), or a
        # statement_timeout: the invalid index is dropped and rebuilt by that load or by the
        # next ensure_index.
        taken_over = "user request" in (exc.diag.message_primary or "")
        (logger.info if taken_over else logger.warning)(
            "build of index %s cancelled (%s); a later load rebuilds it", state.name, exc
        )
    finally:
        if concurrently:
            conn.execute("RESET maintenance_work_mem")
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
    return True


def _raise_memory(conn: Conn, memory: int, *, local: bool) -> None:
    """Raise ``maintenance_work_mem`` to ``memory`` bytes unless it is already higher."""
    row = conn.execute(
        "SELECT setting::bigint * 1024 FROM pg_settings WHERE name = 'maintenance_work_mem'"
    ).fetchone()
    if row is not None and int(str(row[0])) >= memory:
        return
    conn.execute(
        sql.SQL("SET {scope} maintenance_work_mem = {kb}").format(
            scope=sql.SQL("LOCAL" if local else "SESSION"),
            kb=sql.Literal(f"{memory // 1024}kB"),
        )
    )
