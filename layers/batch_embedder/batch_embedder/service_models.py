"""Inputs and outputs of the functions that are not steps of a group's job: WaitForBatches'
token, the webhook receiver, the reconciler and the sweep."""

from __future__ import annotations

import time as _time
from datetime import datetime
from typing import Any

from pydantic import Field

from .models import Contract, Metered


class SweepResult(Contract):
    """Output of SweepReservations: reservations of crashed executions settled."""

    released_jobs: list[str]
    released_tokens: int = Field(ge=0, description="reserved tokens given back")
    committed_tokens: int = Field(default=0, ge=0, description="what their batches billed")


class WaitRequest(Contract):
    """Input of WaitForBatches: the task token and the group's batches."""

    task_token: str = Field(min_length=1)
    job: dict[str, Any]


class WaitAck(Contract):
    """What WaitForBatches returns (Step Functions ignores it: SendTaskSuccess's output is
    the task's result)."""

    job_id: str
    batches: int = Field(ge=0)
    completed_now: bool


class ScheduledEvent(Contract):
    """An EventBridge scheduled event: ``time`` is when the schedule fired (ISO 8601 UTC)."""

    id: str = ""
    time: str = ""

    def epoch_seconds(self) -> float:
        """``time`` as seconds since the epoch (now when the event has none)."""
        if not self.time:
            return _time.time()
        return datetime.fromisoformat(self.time.replace("Z", "+00:00")).timestamp()


class FunctionUrlRequest(Contract):
    """A Lambda Function URL request, payload format 2.0 (the fields the receiver reads):
    https://docs.aws.amazon.com/lambda/latest/dg/urls-invocation.html"""

    headers: dict[str, str] = Field(default_factory=dict)
    body: str = ""
    isBase64Encoded: bool = False


class ReconcileResult(Metered):
    """Output of ReconcileBatches: how many open batches were checked and finished, and
    what the run cost in AWS requests (``aws``)."""

    open_batches: int = Field(ge=0, description="batches not yet ingested")
    finished: int = Field(ge=0, description="seen terminal by this run")
    completions_sent: int = Field(ge=0)
    cancelled: int = Field(default=0, ge=0, description="running batches of ended executions")
    adopted: int = Field(default=0, ge=0, description="batches of ended executions ingested")
