"""The contracts of the failure path: what a ``Catch`` hands RecordFailure, and the Fail
state it picks (see ``steps/failure.py`` and the ASL's ``FailureKind`` Choice)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .models import BatchesOutcome, BatchFile, BatchRef, Contract, Metered, SyncOutput, Upload


class CaughtError(Contract):
    """What a Step Functions ``Catch`` puts at ``ResultPath``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    error: str = Field(alias="Error")
    cause: str = Field(default="", alias="Cause")


class FailureInput(Metered):
    """Input of RecordFailure: whatever the failed state had, plus the caught error.

    Reached from every ``Catch``, with the error at ``error`` (a batch that did not
    complete is a FetchAndWrite error once its rounds are spent: ``BatchFailedError``, ...).
    """

    job_id: str
    uploads: list[Upload] | int | None = None
    source: str | None = None
    model: str | None = None
    batch_files: list[BatchFile] | None = None
    batches: list[BatchRef] | None = None
    outcome: BatchesOutcome | None = None
    sync_outputs: list[SyncOutput] = Field(default_factory=list)
    error: CaughtError | None = None


FailedState = Literal[
    "InvalidDocument",
    "BudgetExceeded",
    "BatchFailed",
    "BatchExpired",
    "BatchCancelled",
    "EmbeddingsIncomplete",
    "ProviderAuthFailed",
    "PipelineError",
]


class FailureOutcome(Contract):
    """Output of RecordFailure: the Fail state to end in, and why."""

    job_id: str
    failed_state: FailedState
    error: str
    cause: str
    released_tokens: int = Field(ge=0)
    billed_tokens: int = Field(ge=0, description="tokens billed anyway (an expired batch's part)")
