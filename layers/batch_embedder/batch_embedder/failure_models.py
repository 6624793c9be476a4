"""The contracts of the failure path: what a ``Catch`` hands RecordFailure, and the Fail
state it picks (see ``steps/failure.py`` and the ASL's ``FailureKind`` Choice)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Discriminator, Field, RootModel, Tag, field_validator

from .models import (
    BatchesOutcome,
    BatchFile,
    BatchRef,
    Contract,
    Metered,
    SyncOutput,
    UploadEvent,
)


class CaughtError(Contract):
    """What a Step Functions ``Catch`` puts at ``ResultPath``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    error: str = Field(alias="Error")
    cause: str = Field(default="", alias="Cause")


class UploadList(RootModel[list[UploadEvent]]):
    """The group's uploads, when the failed state had them (ChunkAndEstimate's input)."""

    @property
    def count(self) -> int:
        """S3 events in the group."""
        return len(self.root)

    @property
    def keys(self) -> list[str]:
        """Their object keys."""
        return [u.key for u in self.root]


class UploadCount(RootModel[int]):
    """How many uploads the group had, when the failed state only counted them (a
    ``ChunkedJob`` and every state after it); ``null`` reads as 0."""

    root: int = Field(ge=0)

    @field_validator("root", mode="before")
    @classmethod
    def _none_is_zero(cls, value: object) -> object:
        return 0 if value is None else value

    @property
    def count(self) -> int:
        """S3 events in the group."""
        return self.root

    @property
    def keys(self) -> list[str]:
        """No keys are known (the state's ``source`` names them)."""
        return []


def _uploads_kind(value: object) -> str:
    return "list" if isinstance(value, list | UploadList) else "count"


#: ``uploads`` as the failed state had it: a list of uploads or their count.
FailedUploads = Annotated[
    Annotated[UploadList, Tag("list")] | Annotated[UploadCount, Tag("count")],
    Discriminator(_uploads_kind),
]


class FailureInput(Metered):
    """Input of RecordFailure: whatever the failed state had, plus the caught error.

    Reached from every ``Catch``, with the error at ``error`` (a batch that did not
    complete is a FetchAndWrite error once its rounds are spent: ``BatchFailedError``, ...).
    """

    job_id: str
    uploads: FailedUploads = Field(default_factory=lambda: UploadCount(0))
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
