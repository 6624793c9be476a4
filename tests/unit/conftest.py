"""The unit tier is pure: no stack, no Postgres, no moto, milliseconds each.

A test here that asks for a fixture of the other tiers stops the run: move it to
``tests/local`` (moto, the emulator) or ``tests/integration`` (the whole stack).
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: Fixtures that start real parts (tests/conftest.py, tests/local/conftest.py).
STACK_FIXTURES = frozenset({"home", "database_url", "db", "stack", "emulator", "aws"})
UNIT = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse unit tests that use a stack fixture."""
    for item in items:
        if UNIT not in Path(str(item.path)).resolve().parents:
            continue
        used = STACK_FIXTURES & set(getattr(item, "fixturenames", ()))
        if used:
            raise pytest.UsageError(
                f"{item.nodeid} uses {sorted(used)}: the unit tier is pure; "
                "move it to tests/local or tests/integration"
            )
