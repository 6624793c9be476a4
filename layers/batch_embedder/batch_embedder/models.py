"""The pydantic contracts that travel between the workflow's states.

Each Lambda parses its input into one of these and returns the next. They grow by
inheritance, so every state's output is the next state's input and the execution's
state payload stays small: chunks and request lines live in S3 (Step Functions caps a
payload at 256 KB).

Flow: ``ChunkRequest`` -> ChunkAndEstimate -> ``ChunkedJob`` -> BudgetCheck ->
``BudgetDecision`` (= ``ReservedJob`` once reserved) -> BuildAndUploadJsonl ->
``UploadedJob`` -> CreateBatch ->
``SubmittedJob`` -> (Wait, PollBatch -> ``SubmittedJob``)* -> FetchAndWrite ->
``WrittenJob`` -> RecordCost -> ``JobSummary``. Any failure -> RecordFailure
(``FailureInput``) -> ``FailureOutcome``.
"""

from __future__ import annotations

from typing import Any, Literal

from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel
from pydantic import BaseModel, ConfigDict, Field

BatchStatus = Literal[
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
]
#: The poll loop's status: a batch status, or "queued" while the Batch API's queue is full.
PollStatus = BatchStatus | Literal["queued"]


class Contract(BaseModel):
    """Base of every state contract: unknown keys are ignored (Step Functions may add some)."""

    model_config = ConfigDict(extra="ignore")


class S3Location(Contract):
    """An object in S3."""

    bucket: str
    key: str


class DocumentRef(Contract):
    """The uploaded document an execution embeds."""

    bucket: str
    key: str = Field(description="Object key, decoded (as EventBridge delivers it).")
    version_id: str | None = None
    etag: str | None = None
    size: int = Field(ge=0, description="bytes")


class ChunkRequest(Contract):
    """Input of ChunkAndEstimate: the EventBridge event and the execution's name as job id."""

    job_id: str = Field(min_length=1, max_length=80)
    event: S3EventNotificationEventBridgeModel


class CostEstimate(Contract):
    """What the counted tokens will cost, in USD."""

    batch_usd: float
    standard_usd: float


class EmbedPlan(Contract):
    """What CheckCache left to embed, and how.

    ``manifest`` holds one record per distinct content to embed (``seq`` 0..n-1, ``sha256``,
    ``text``, ``token_count``); the rest of the job's chunks reuse stored vectors.
    """

    api: Literal["batch", "sync", "none"] = Field(
        description="batch (Batch API), sync (Embeddings API: small or urgent), none (all cached)"
    )
    manifest: S3Location | None = None
    chunks: int = Field(ge=0, description="distinct contents to embed")
    tokens: int = Field(ge=0, description="their tokens: what is reserved and paid for")
    cache_hits: int = Field(ge=0, description="chunks whose vector is already stored")
    cached_tokens: int = Field(ge=0, description="tokens not paid for thanks to the cache")
    awaited: int = Field(default=0, ge=0, description="contents another execution is embedding")


class SyncOutput(Contract):
    """Embeddings fetched through the synchronous API, as batch-output-shaped JSONL in S3."""

    location: S3Location
    billed_tokens: int = Field(ge=0)
    requests: int = Field(ge=0)
    rate_limited: int = Field(ge=0, description="429 answers that were waited out")


class ChunkedJob(Contract):
    """Output of ChunkAndEstimate (and, with ``embed`` set, of CheckCache): the chunk
    manifest is in S3, counts are exact tokens."""

    job_id: str
    document: DocumentRef
    model: str
    dimensions: int = Field(gt=0)
    manifest: S3Location
    chunks: int = Field(ge=1)
    tokens: int = Field(ge=1, description="cl100k_base tokens summed over all chunks")
    estimate: CostEstimate
    documents: int = Field(default=1, ge=1, description="documents embedded (bundles: many)")
    rejected_count: int = Field(default=0, ge=0, description="bundle documents left out")
    rejected: list[str] = Field(default_factory=list, description="'key: reason', first 20")
    urgent: bool = Field(default=False, description="SYNC_PREFIXES or tag priority=urgent")
    embed: EmbedPlan | None = None


class Reservation(Contract):
    """Tokens held against the daily budget until RecordCost commits or RecordFailure releases."""

    day: str = Field(description="UTC day, YYYY-MM-DD")
    tokens: int = Field(ge=0)


class BudgetDecision(ChunkedJob):
    """Output of BudgetCheck: a reservation, or (``BUDGET_EXCEEDED_ACTION=wait``) how long
    to wait for the next UTC day before asking again."""

    reservation: Reservation | None = None
    budget_wait_seconds: int = Field(default=0, ge=0)


class ReservedJob(ChunkedJob):
    """Input of BuildAndUploadJsonl: a job holding its reservation."""

    reservation: Reservation


class BatchFile(Contract):
    """One uploaded batch input file (JSONL of /v1/embeddings requests)."""

    file_id: str
    requests: int = Field(ge=1)
    inputs: int = Field(ge=1, description="embedding inputs (chunks) across its requests")
    tokens: int = Field(ge=1)
    bytes: int = Field(ge=1)


class UploadedJob(ReservedJob):
    """Output of BuildAndUploadJsonl."""

    batch_files: list[BatchFile] = Field(min_length=1)


class BatchRef(Contract):
    """One OpenAI batch and what the last poll saw of it."""

    batch_id: str
    input_file_id: str
    status: BatchStatus = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed_requests: int = 0
    failed_requests: int = 0
    total_requests: int = 0


class PollState(Contract):
    """The wait/poll loop: the Wait state reads ``wait_seconds``; the Choice reads ``status``.

    ``queued``: CreateBatch could not create every batch yet (creations per hour or the
    enqueued-token cap); it is called again after ``wait_seconds``.
    """

    status: PollStatus
    wait_seconds: int = Field(ge=0, description="seconds the next Wait state waits")
    polls: int = Field(ge=0)
    fallback: bool = Field(
        default=False, description="failed/expired: finish the rest through the sync API"
    )


class SubmittedJob(UploadedJob):
    """Output of CreateBatch and of each PollBatch (``batches`` is empty while queued)."""

    batches: list[BatchRef] = Field(default_factory=list)
    poll: PollState


class WriteInput(ReservedJob):
    """Input of FetchAndWrite: where this job's new vectors are (batches and/or sync output)."""

    batches: list[BatchRef] = Field(default_factory=list)
    sync: SyncOutput | None = None


class WriteResult(Contract):
    """What FetchAndWrite did in Postgres."""

    vectors_written: int = Field(ge=0, description="rows inserted")
    rows_moved: int = Field(default=0, ge=0, description="unchanged chunks moved to a new index")
    rows_deleted: int = Field(ge=0, description="stale rows of earlier versions removed")
    billed_tokens: int = Field(ge=0, description="Batch API usage.total_tokens in the output")
    sync_billed_tokens: int = Field(default=0, ge=0, description="synchronous API usage")
    failed_requests: int = 0


class WrittenJob(WriteInput):
    """Output of FetchAndWrite."""

    written: WriteResult


class JobSummary(Contract):
    """Output of RecordCost: the execution's result as a user reads it."""

    job_id: str
    bucket: str
    key: str
    model: str
    dimensions: int
    chunks: int
    tokens: int
    billed_tokens: int
    vectors_written: int
    cost_usd: float
    standard_cost_usd: float
    saved_usd: float
    day: str
    documents: int = 1
    rejected_count: int = 0
    rejected: list[str] = Field(default_factory=list)
    api: str = "batch"
    cache_hits: int = 0
    tokens_saved: int = Field(default=0, description="tokens the cache did not pay for")
    cost_avoided_usd: float = 0.0
    naive_cost_usd: float = 0.0


class CaughtError(Contract):
    """What a Step Functions ``Catch`` puts at ``ResultPath``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    error: str = Field(alias="Error")
    cause: str = Field(default="", alias="Cause")


class FailureInput(Contract):
    """Input of RecordFailure: whatever the failed state had, plus the caught error.

    Reached from every ``Catch`` (``error`` set) and from the batch-status Choice when a
    batch ended ``failed`` / ``expired`` / ``cancelled`` (``poll`` and ``batches`` set).
    """

    job_id: str
    event: dict[str, Any] | None = None
    model: str | None = None
    document: DocumentRef | None = None
    batch_files: list[BatchFile] | None = None
    batches: list[BatchRef] | None = None
    poll: PollState | None = None
    error: CaughtError | None = None


FailedState = Literal[
    "InvalidDocument",
    "BudgetExceeded",
    "BatchFailed",
    "BatchExpired",
    "BatchCancelled",
    "EmbeddingsIncomplete",
    "PipelineError",
]


class SweepResult(Contract):
    """Output of SweepReservations: reservations of crashed executions given back."""

    released_jobs: list[str]
    released_tokens: int = Field(ge=0)


class DeleteRequest(Contract):
    """Input of DeleteDocument: an "Object Deleted" event (or a delete marker)."""

    job_id: str
    event: S3EventNotificationEventBridgeModel


class DeleteResult(Contract):
    """Output of DeleteDocument."""

    bucket: str
    key: str
    rows_deleted: int = Field(ge=0)


class FailureOutcome(Contract):
    """Output of RecordFailure: the Fail state to end in, and why."""

    job_id: str
    failed_state: FailedState
    error: str
    cause: str
    released_tokens: int = Field(ge=0)
    billed_tokens: int = Field(ge=0, description="tokens billed anyway (an expired batch's part)")
