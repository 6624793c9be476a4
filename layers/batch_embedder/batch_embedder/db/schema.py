"""The project's own schema in Postgres, created and migrated by the project.

Everything lives in the ``batch_embedder`` schema:

- ``chunks``: one row per chunk of each document and (model, dimensions); the embedding
  column is an untyped ``vector`` so several models/dimensions can coexist (a model change
  never overwrites the old vectors). It is also the embedding cache: a chunk whose
  (content sha256, model, dimensions) is already here is never embedded again.
- ``embeddings`` and ``purchases``: the content store (``db/content.py``), every vector
  paid for and what it cost, kept the moment it comes back; the cache reads it.
- ``objects``: the newest S3 event (``sequencer``) applied to each object, so that an
  older write or delete never undoes a newer one.
- ``embedding_claims``: content an execution is embedding right now, so that concurrent
  executions pay for each distinct chunk once.
- ``fallback_documents``: objects written with the fallback model (``local-minilm``)
  while the provider did not answer, until the provider's model replaces them
  (``db/fallback.py``).
- one HNSW cosine index per (model, dimensions), an expression index on
  ``embedding::vector(D)`` restricted to that model (pgvector README, "indexing vectors with
  different dimensions"). pgvector's HNSW on ``vector`` stops at 2,000 dimensions; above
  that a ``halfvec`` expression index is used where pgvector >= 0.7, else none (logged).
  ``db/index.py`` builds it, and rebuilds it after loads too large to insert one by one.
"""

from __future__ import annotations

import hashlib

import psycopg
from psycopg import sql

SCHEMA = "batch_embedder"
#: pgvector's HNSW limit for ``vector`` (pgvector README).
HNSW_MAX_VECTOR_DIMENSIONS = 2000

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE batch_embedder.chunks (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            source_bucket   text        NOT NULL,
            source_key      text        NOT NULL,
            source_version  text,
            chunk_index     integer     NOT NULL CHECK (chunk_index >= 0),
            text            text        NOT NULL,
            content_sha256  text        NOT NULL,
            token_count     integer     NOT NULL CHECK (token_count > 0),
            char_start      integer     NOT NULL,
            char_end        integer     NOT NULL,
            model           text        NOT NULL,
            dimensions      integer     NOT NULL,
            embedding       vector      NOT NULL,
            job_id          text        NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT chunks_document_chunk
                UNIQUE (source_bucket, source_key, model, dimensions, chunk_index),
            CONSTRAINT chunks_embedding_dimensions CHECK (vector_dims(embedding) = dimensions)
        );
        CREATE INDEX chunks_content ON batch_embedder.chunks (content_sha256, model, dimensions);
        """,
    ),
    (
        2,
        """
        -- Unchanged chunks keep their row when a new version shifts their index: the
        -- merge moves them, so (document, chunk_index) is unique only at commit.
        ALTER TABLE batch_embedder.chunks DROP CONSTRAINT chunks_document_chunk;
        ALTER TABLE batch_embedder.chunks ADD CONSTRAINT chunks_document_chunk
            UNIQUE (source_bucket, source_key, model, dimensions, chunk_index)
            DEFERRABLE INITIALLY DEFERRED;
        CREATE INDEX chunks_document ON batch_embedder.chunks
            (source_bucket, source_key, model, dimensions);
        -- Content some execution is embedding right now: others wait for it instead of
        -- paying for it again.
        CREATE TABLE batch_embedder.embedding_claims (
            content_sha256  text        NOT NULL,
            model           text        NOT NULL,
            dimensions      integer     NOT NULL,
            job_id          text        NOT NULL,
            claimed_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (content_sha256, model, dimensions)
        );
        CREATE INDEX embedding_claims_job ON batch_embedder.embedding_claims (job_id);
        """,
    ),
    (
        3,
        """
        -- The content store (db/content.py): every vector paid for, kept as it comes back,
        -- and every purchase with the tokens OpenAI billed for it.
        CREATE TABLE batch_embedder.embeddings (
            content_sha256  text        NOT NULL,
            model           text        NOT NULL,
            dimensions      integer     NOT NULL,
            embedding       vector      NOT NULL,
            token_count     integer     NOT NULL CHECK (token_count > 0),
            purchase_id     text        NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (content_sha256, model, dimensions),
            CONSTRAINT embeddings_dimensions CHECK (vector_dims(embedding) = dimensions)
        );
        INSERT INTO batch_embedder.embeddings
            (content_sha256, model, dimensions, embedding, token_count, purchase_id, created_at)
        SELECT DISTINCT ON (content_sha256, model, dimensions) content_sha256, model,
            dimensions, embedding, token_count, 'before-content-store', created_at
        FROM batch_embedder.chunks ORDER BY content_sha256, model, dimensions, id;
        CREATE TABLE batch_embedder.purchases (
            purchase_id     text        PRIMARY KEY,
            job_id          text        NOT NULL,
            api             text        NOT NULL CHECK (api IN ('batch', 'sync')),
            state           text        NOT NULL CHECK (state IN ('sent', 'stored', 'lost')),
            tokens          integer     NOT NULL DEFAULT 0 CHECK (tokens >= 0),
            vectors         integer     NOT NULL DEFAULT 0,
            repaid_tokens   integer     NOT NULL DEFAULT 0,
            contents        text[],
            model           text        NOT NULL,
            dimensions      integer     NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            stored_at       timestamptz
        );
        CREATE INDEX purchases_job ON batch_embedder.purchases (job_id);
        CREATE INDEX purchases_lost ON batch_embedder.purchases (state) WHERE state <> 'stored';
        -- Claims carry a lease: taken over once it has run out.
        ALTER TABLE batch_embedder.embedding_claims
            ADD COLUMN lease_until timestamptz NOT NULL DEFAULT now() + interval '26 hours';
        """,
    ),
    (
        4,
        """
        -- The newest S3 event applied to each object (db/vectors.py): an older write or
        -- delete of the key is a no-op. Sequencers are hex, zero-padded to compare as text.
        CREATE TABLE batch_embedder.objects (
            source_bucket   text        NOT NULL,
            object_key      text        NOT NULL,
            sequencer       text        NOT NULL,
            version_id      text,
            deleted         boolean     NOT NULL DEFAULT false,
            updated_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (source_bucket, object_key)
        );
        -- The S3 object a row came from: a bundle's documents share it, and a delete
        -- matches it exactly ('#' in a key is no prefix).
        ALTER TABLE batch_embedder.chunks ADD COLUMN object_key text;
        UPDATE batch_embedder.chunks SET object_key = CASE
            WHEN strpos(source_key, '.bundle.jsonl#') > 0
            THEN left(source_key, strpos(source_key, '.bundle.jsonl#') + 12)
            ELSE source_key END;
        ALTER TABLE batch_embedder.chunks ALTER COLUMN object_key SET NOT NULL;
        CREATE INDEX chunks_object ON batch_embedder.chunks
            (source_bucket, object_key, model, dimensions);
        """,
    ),
    (
        5,
        """
        -- Fingerprints of accepted object events (db/fingerprints.py): an upload whose
        -- ETag or bytes match the event ``objects`` holds, under the same settings, is
        -- skipped before chunking.
        CREATE TABLE batch_embedder.object_fingerprints (
            source_bucket   text        NOT NULL,
            object_key      text        NOT NULL,
            settings        text        NOT NULL,
            sequencer       text        NOT NULL,
            version_id      text,
            etag            text,
            content_sha256  text        NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (source_bucket, object_key, settings, sequencer)
        );
        """,
    ),
    (
        6,
        """
        -- Objects written with the fallback model during a provider outage
        -- (FALLBACK_PROVIDER=local, db/fallback.py): the reconciler re-submits them once
        -- the provider answers; the primary model's write deletes the fallback rows.
        CREATE TABLE batch_embedder.fallback_documents (
            source_bucket       text        NOT NULL,
            object_key          text        NOT NULL,
            model               text        NOT NULL,
            dimensions          integer     NOT NULL,
            primary_model       text        NOT NULL,
            primary_dimensions  integer     NOT NULL,
            job_id              text        NOT NULL,
            created_at          timestamptz NOT NULL DEFAULT now(),
            resubmitted_at      timestamptz,
            resubmissions       integer     NOT NULL DEFAULT 0,
            PRIMARY KEY (source_bucket, object_key)
        );
        """,
    ),
]


#: The schema version this code needs (the last migration).
LATEST_VERSION = MIGRATIONS[-1][0]


def schema_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """The database's schema version (0 when the project's schema is not there)."""
    row = conn.execute("SELECT to_regclass('batch_embedder.schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    found = conn.execute("SELECT coalesce(max(version), 0) FROM batch_embedder.schema_version")
    value = found.fetchone()
    return int(str(value[0])) if value else 0


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Create the extension, the schema and apply pending migrations, under an advisory lock.

    Returns:
        The schema version after migrating.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('batch_embedder.migrate'))")
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        schema = sql.Identifier(SCHEMA)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_version ("
                "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(schema)
        )
        row = conn.execute(
            sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_version").format(schema)
        ).fetchone()
        current = int(str(row[0])) if row else 0
        for version, ddl in MIGRATIONS:
            if version > current:
                conn.execute(ddl)
                conn.execute(
                    sql.SQL("INSERT INTO {}.schema_version (version) VALUES (%s)").format(schema),
                    (version,),
                )
                current = version
    return current


def index_name(model: str, dimensions: int) -> str:
    """Name of the HNSW index of one (model, dimensions)."""
    digest = hashlib.sha256(f"{model}/{dimensions}".encode()).hexdigest()[:10]
    return f"chunks_hnsw_{dimensions}_{digest}"


def vector_type(dimensions: int, halfvec: bool = False) -> sql.Composable:
    """``vector(D)`` (or ``halfvec(D)``) as SQL, for casts that must match the index."""
    return sql.SQL("{}({})").format(
        sql.SQL("halfvec" if halfvec else "vector"), sql.Literal(dimensions)
    )


def pgvector_version(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, ...]:
    """The installed pgvector extension's version, e.g. ``(0, 8, 6)``; ``(0,)`` without it.

    What depends on it: ``halfvec`` needs >= 0.7 (0.7.0 changelog), iterative index scans
    (``hnsw.iterative_scan``) >= 0.8 (0.8.0 changelog; pgvector CHANGELOG.md,
    https://github.com/pgvector/pgvector/blob/master/CHANGELOG.md). RDS and Aurora
    PostgreSQL ship 0.7 and 0.8 depending on the engine version.
    """
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if not row:
        return (0,)
    return tuple(int(p) for p in str(row[0]).split("-")[0].split(".") if p.isdigit())


def uses_halfvec(conn: psycopg.Connection[tuple[object, ...]], dimensions: int) -> bool:
    """Whether vectors of ``dimensions`` are indexed (and searched) as ``halfvec``: above
    pgvector's 2,000-dimension HNSW limit for ``vector``, when pgvector >= 0.7 (3,072 for
    ``text-embedding-3-large`` gets an HNSW index on ``halfvec(3072)``, limit 4,000)."""
    return dimensions > HNSW_MAX_VECTOR_DIMENSIONS and pgvector_version(conn) >= (0, 7)
