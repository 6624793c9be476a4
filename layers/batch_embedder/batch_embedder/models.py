"""The pydantic contracts that travel between the workflow's states.

One execution embeds one **group** of uploads: the EventBridge Pipe (or the local stack,
which groups the same way) collects the S3 events of a window and starts one execution
with the list of :data:`UploadEvent` records. Each Lambda parses its input into one of these
and returns the next. They grow by inheritance, so every state's output is the next
state's input and the state payload stays small: chunks, request lines and per-document
outcomes live in S3 (Step Functions caps a payload at 256 KB,
https://docs.aws.amazon.com/step-functions/latest/dg/limits-overview.html).

Flow: ``GroupRequest`` -> ChunkAndEstimate -> ``ChunkedJob`` -> (DeleteDocuments) ->
CheckCache -> BudgetCheck -> ``BudgetDecision`` (= ``ReservedJob`` once reserved) ->
(EmbedSync for urgent documents) -> BuildAndUploadJsonl -> ``UploadedJob`` -> CreateBatch
-> ``SubmittedJob`` -> WaitForBatches (a task token, finished by the webhook or the
reconciler) -> FetchAndWrite -> ``WrittenJob`` -> RecordCost -> ``JobSummary``. Any
failure -> RecordFailure (``failure_models.FailureInput``) -> ``FailureOutcome``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from .aws.metering import AwsUsage

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
#: CreateBatch's status: created, or "queued" while the Batch API's queue is full.
CreateStatus = Literal["created", "queued"]


class Contract(BaseModel):
    """Base of every state contract: unknown keys are ignored (Step Functions may add some)."""

    model_config = ConfigDict(extra="ignore")


class Metered(Contract):
    """A contract that carries the AWS usage of the execution so far (see ``aws.metering``).

    Every handler adds its own invocation (Lambda request, GB-seconds, the AWS requests
    it made) to ``aws`` on the way out, so RecordCost can price the whole execution.
    """

    aws: AwsUsage = Field(default_factory=AwsUsage)


class S3Location(Contract):
    """An object in S3."""

    bucket: str
    key: str


class Upload(Contract):
    """What both kinds of :data:`UploadEvent` share (about 250 bytes); ``sequencer`` orders
    events of one key (https://docs.aws.amazon.com/AmazonS3/latest/userguide/ev-events.html).
    """

    bucket: str
    key: str = Field(min_length=1, description="Object key, decoded (as EventBridge delivers it).")
    version_id: str | None = None
    etag: str | None = None
    size: int = Field(default=0, ge=0, description="bytes")
    sequencer: str = ""

    @field_validator("version_id", "etag", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # The pipe's input template renders a field the event lacks as "".
        return None if value in ("", "null") else value

    @field_validator("size", mode="before")
    @classmethod
    def _empty_is_zero(cls, value: object) -> object:
        return 0 if value in ("", None) else value


CREATED: Final = "Object Created"
DELETED: Final = "Object Deleted"


class ObjectCreated(Upload):
    """An object was put (or copied, or a multipart upload completed): embed it."""

    event: Literal["Object Created"] = CREATED


class ObjectDeleted(Upload):
    """An object was deleted, or a delete marker put: remove its rows."""

    event: Literal["Object Deleted"]


def _event_kind(value: object) -> str:
    """An upload's tag: its ``event`` (EventBridge ``detail-type``), "Object Created" if none."""
    if isinstance(value, Mapping):
        return str(value.get("event", CREATED))
    return str(getattr(value, "event", CREATED))


#: One S3 event of a group as the pipe's input transformer keeps it, tagged by ``event``:
#: :class:`ObjectCreated` or :class:`ObjectDeleted`
#: (https://docs.pydantic.dev/latest/concepts/unions/#discriminated-unions).
UploadEvent = Annotated[
    Annotated[ObjectCreated, Tag(CREATED)] | Annotated[ObjectDeleted, Tag(DELETED)],
    Discriminator(_event_kind),
]


class GroupRequest(Contract):
    """Input of ChunkAndEstimate: the group's uploads and the execution's name as job id."""

    job_id: str = Field(min_length=1, max_length=80)
    execution_arn: str | None = Field(default=None, description="$$.Execution.Id")
    uploads: list[UploadEvent] = Field(min_length=1)


class CostEstimate(Contract):
    """What the counted tokens will cost, in USD."""

    batch_usd: float
    standard_usd: float


class EmbedPlan(Contract):
    """What CheckCache left to embed, and how.

    ``manifest`` holds one :class:`~batch_embedder.records.EmbedRow` per distinct content
    to embed; the rest of the group's chunks reuse stored vectors. Rows needed by an urgent
    document are embedded through the synchronous API, the others through the Batch API.
    """

    api: Literal["batch", "sync", "sync+batch", "none"] = Field(
        description="batch (Batch API), sync (urgent only), sync+batch, none (all cached)"
    )
    manifest: S3Location | None = None
    chunks: int = Field(ge=0, description="distinct contents to embed")
    tokens: int = Field(ge=0, description="their tokens: what is reserved and paid for")
    sync_chunks: int = Field(default=0, ge=0, description="contents for urgent documents")
    sync_tokens: int = Field(default=0, ge=0)
    batch_chunks: int = Field(default=0, ge=0)
    batch_tokens: int = Field(default=0, ge=0)
    cache_hits: int = Field(ge=0, description="chunks whose vector is already stored")
    cached_tokens: int = Field(ge=0, description="tokens not paid for thanks to the cache")
    awaited: int = Field(default=0, ge=0, description="contents another execution is embedding")
    prefix_tokens: dict[str, int] = Field(
        default_factory=dict, description="tokens to embed per prefix with a budget of its own"
    )


class SyncOutput(Contract):
    """One EmbedSync run: its vectors are in the content store (``db/content.py``), one
    purchase per request; these counts are for people (the store is what is settled)."""

    phase: Literal["urgent", "fallback"] = "urgent"
    chunks: int = Field(default=0, ge=0, description="contents embedded by this run")
    billed_tokens: int = Field(ge=0)
    requests: int = Field(ge=0)
    rate_limited: int = Field(ge=0, description="429 answers that were waited out")


class WriteResult(Contract):
    """What FetchAndWrite did in Postgres."""

    vectors_written: int = Field(ge=0, description="rows inserted")
    rows_moved: int = Field(default=0, ge=0, description="unchanged chunks moved to a new index")
    rows_deleted: int = Field(ge=0, description="stale rows of earlier versions removed")
    billed_tokens: int = Field(ge=0, description="Batch API usage, tokens (content store)")
    sync_billed_tokens: int = Field(default=0, ge=0, description="synchronous API usage")
    repaid_tokens: int = Field(
        default=0, ge=0, description="tokens bought again for content whose vector was lost"
    )
    failed_requests: int = 0
    incomplete: list[str] = Field(
        default_factory=list, description="documents not written: a chunk has no vector"
    )
    superseded: list[str] = Field(
        default_factory=list, description="objects left out: a newer event was applied first"
    )


class PendingWork(Contract):
    """Contents of the group still without a vector after FetchAndWrite (failed request
    lines, the unreturned part of an expired, failed or cancelled batch): embedded again,
    synchronously (``sync``: urgent documents, or ``SyncFallback``) or in the next batch."""

    api: Literal["sync", "batch"]
    manifest: S3Location = Field(description="EmbedRow lines of the pending contents")
    chunks: int = Field(ge=1, description="distinct contents")
    tokens: int = Field(ge=1)
    documents: list[str] = Field(default_factory=list, description="waiting documents, first 20")


class ChunkedJob(Metered):
    """Output of ChunkAndEstimate (and, with ``embed`` set, of CheckCache).

    The chunk manifest (``records.ChunkRow``) and the per-document outcomes
    (``records.DocumentOutcome``) are in S3; counts are exact cl100k_base tokens.
    """

    job_id: str
    execution_arn: str | None = None
    bucket: str
    source: str = Field(description="what a person reads: the key, or 'N uploads: first, ...'")
    model: str
    dimensions: int = Field(gt=0)
    manifest: S3Location
    outcomes: S3Location
    uploads: int = Field(ge=1, description="S3 events in the group")
    chunks: int = Field(ge=0)
    tokens: int = Field(ge=0, description="cl100k_base tokens summed over all chunks")
    estimate: CostEstimate
    documents: int = Field(default=0, ge=0, description="documents to embed")
    rejected_count: int = Field(default=0, ge=0, description="documents left out")
    rejected: list[str] = Field(default_factory=list, description="'key: reason', first 20")
    deletes: list[str] = Field(default_factory=list, description="keys deleted by the group")
    delete_sequencers: dict[str, str] = Field(
        default_factory=dict, description="each deleted key's event sequencer (zero-padded)"
    )
    superseded_deletes: list[str] = Field(
        default_factory=list, description="deletes a newer event of the key made no-ops"
    )
    superseded: list[str] = Field(
        default_factory=list, description="objects a newer event made no-ops (not embedded)"
    )
    urgent_documents: int = Field(default=0, ge=0, description="SYNC_PREFIXES or the tag")
    unchanged: list[str] = Field(
        default_factory=list,
        description="objects already embedded under the same settings: skipped, first 20",
    )
    unchanged_count: int = Field(default=0, ge=0, description="objects skipped as unchanged")
    excluded_prefixes: list[str] = Field(
        default_factory=list, description="prefixes over their daily budget: left out"
    )
    embed: EmbedPlan | None = None
    pending: PendingWork | None = None
    embed_round: int = Field(default=0, ge=0, description="FetchAndWrite passes so far")
    written: WriteResult | None = None


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
    """A group holding its reservation (input of EmbedSync and BuildAndUploadJsonl)."""

    reservation: Reservation
    sync_outputs: list[SyncOutput] = Field(default_factory=list)


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
    """One OpenAI batch and what was last seen of it."""

    batch_id: str
    input_file_id: str
    status: BatchStatus = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed_requests: int = 0
    failed_requests: int = 0
    total_requests: int = 0
    billed_tokens: int | None = Field(default=None, description="the batch's usage, if given")


class BatchesOutcome(Contract):
    """What WaitForBatches returns (sent with SendTaskSuccess by the webhook receiver or the
    reconciler once every batch of the group is terminal)."""

    status: BatchStatus
    batches: list[BatchRef]
    aws: AwsUsage = Field(default_factory=AwsUsage, description="the completer's AWS usage")


class SubmittedJob(UploadedJob):
    """Output of CreateBatch (``batches`` is empty while queued), input of WaitForBatches."""

    batches: list[BatchRef] = Field(default_factory=list)
    create_status: CreateStatus = "created"
    wait_seconds: int = Field(default=0, ge=0, description="queued: seconds to wait")
    outcome: BatchesOutcome | None = None


class WriteInput(ReservedJob):
    """Input of FetchAndWrite: where the group's new vectors are (batches and/or sync)."""

    batches: list[BatchRef] = Field(default_factory=list)
    outcome: BatchesOutcome | None = None

    @property
    def final_batches(self) -> list[BatchRef]:
        """The batches as their completion reported them (or as created)."""
        return self.outcome.batches if self.outcome is not None else self.batches


class WrittenJob(ChunkedJob):
    """Output of FetchAndWrite, input of RecordCost. A group with nothing to embed (only
    deletes, or everything cached) comes here without a reservation or a write."""

    reservation: Reservation | None = None
    sync_outputs: list[SyncOutput] = Field(default_factory=list)
    batches: list[BatchRef] = Field(default_factory=list)
    outcome: BatchesOutcome | None = None
    written: WriteResult | None = None

    @property
    def final_batches(self) -> list[BatchRef]:
        """The batches as their completion reported them (or as created)."""
        return self.outcome.batches if self.outcome is not None else self.batches


class DocumentResult(Contract):
    """One document of the group as the execution's output lists it."""

    key: str
    status: Literal["embedded", "rejected", "over_budget", "deleted", "superseded", "unchanged"]
    chunks: int = 0
    reason: str | None = None
    tokens: int = Field(default=0, description="its chunks' tokens (cache hits included)")
    cost_usd: float = Field(default=0.0, description="its share of the OpenAI cost, by tokens")
    aws_cost_usd: float = Field(default=0.0, description="its share of the AWS cost (equal)")
    naive_cost_usd: float = Field(default=0.0, description="its chunks at the standard price")
    encoding: str | None = Field(default=None, description="utf-8, cp1252, utf-16, pdf, docx, ...")


class JobSummary(Contract):
    """Output of RecordCost: the group's result as a user reads it (USD, tokens)."""

    job_id: str
    bucket: str
    source: str
    model: str
    dimensions: int
    uploads: int
    documents: int
    chunks: int
    tokens: int
    billed_tokens: int
    repaid_tokens: int = Field(
        default=0, description="tokens bought again for content whose vector was lost"
    )
    vectors_written: int
    batches: int
    cost_usd: float = Field(description="OpenAI")
    aws_cost_usd: float
    total_cost_usd: float
    standard_cost_usd: float
    saved_usd: float
    naive_cost_usd: float
    day: str
    rejected_count: int = 0
    rejected: list[str] = Field(default_factory=list)
    api: str = "batch"
    cache_hits: int = 0
    tokens_saved: int = Field(default=0, description="tokens the cache did not pay for")
    cost_avoided_usd: float = 0.0
    aws: AwsUsage = Field(default_factory=AwsUsage)
    results: list[DocumentResult] = Field(
        default_factory=list, description="per document, as many as fit in 100 KB"
    )
    results_file: str = Field(default="", description="s3:// URI of every document's result")
