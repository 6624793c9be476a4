"""Postgres + pgvector: connection, schema migrations, the bulk writer and the search query."""
