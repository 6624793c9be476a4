"""The upload-to-searchable figure RecordCost emits (pure: no stack)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from batch_embedder.steps.cost import searchable_seconds


def test_it_is_the_executions_age_plus_the_pipes_window() -> None:
    started = datetime.now(UTC) - timedelta(seconds=300)
    seconds = searchable_seconds([{"timestamp": started}, {"timestamp": datetime.now(UTC)}], 60)
    assert seconds == pytest.approx(360, abs=5)


def test_no_history_gives_no_figure() -> None:
    assert searchable_seconds([], 60) is None
    assert searchable_seconds([{"id": 1}], 60) is None
