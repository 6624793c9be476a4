"""Records that cross a boundary outside the state payload, each defined once.

- :class:`ChunkRow`: one line of a group's chunk manifest (``jobs/<job>/chunks.jsonl``).
- :class:`EmbedRow`: one distinct content to embed (``jobs/<job>/embed.jsonl``).
- :class:`DocumentOutcome`: what became of one upload (``jobs/<job>/documents.jsonl``).
- :class:`BatchOutputLine`: one line of a batch output/error file, or of the synchronous
  path's output (the same shape).
- :class:`LedgerRecord`: one group's cost (usage table, ``pk = ledger#<day>``).
- :class:`JobItem`: the job's own item (jobs table, key ``job_id``).
- :class:`BudgetCounter`: one budget scope's counter for a day (usage table).

Money is USD as floats rounded to 9 decimals; tokens are cl100k_base tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Literal

from openai.types.create_embedding_response import Usage
from pydantic import BaseModel, ConfigDict, Field, Json, ValidationError, model_validator

from .models import BatchFile

MONEY_DECIMALS = 9


def usd(value: float | Decimal) -> float:
    """A money amount as the JSON and the ledger carry it: a float rounded to 9 decimals."""
    return round(float(value), MONEY_DECIMALS)


class Record(BaseModel):
    """Base of the records: unknown fields are kept out, nothing is coerced silently."""

    model_config = ConfigDict(extra="ignore")


class ChunkRow(Record):
    """One chunk of one document: ``seq`` numbers the group's chunks, ``chunk_index`` the
    document's; offsets are characters of the normalised text."""

    seq: int = Field(ge=0)
    source_key: str
    source_version: str | None = None
    chunk_index: int = Field(ge=0)
    text: str
    token_count: int = Field(ge=1)
    sha256: str
    char_start: int = Field(ge=0)
    char_end: int = Field(ge=0)
    prefix: str = Field(default="", description="the budget prefix of its document, or ''")
    urgent: bool = False
    object_key: str = Field(default="", description="the S3 key it came from ('' = source_key)")
    sequencer: str = Field(default="", description="its S3 event's sequencer, zero-padded")


class EmbedRow(Record):
    """One distinct content the group pays for.

    ``urgent``: some urgent document needs it (synchronous API). ``prefixes``: the budget
    prefixes of the documents that need it ('' for documents under no such prefix); the
    row is left out only when every one of them is over budget.
    """

    seq: int = Field(ge=0)
    sha256: str
    text: str
    token_count: int = Field(ge=1)
    urgent: bool = False
    prefixes: list[str] = Field(default_factory=lambda: [""])

    def needed(self, excluded: set[str]) -> bool:
        """Whether a document outside the ``excluded`` prefixes still needs this content."""
        return not excluded or any(p not in excluded for p in self.prefixes)


class EmbeddingItem(Record):
    """One vector of an embeddings response: base64 little-endian float32 (what the SDK and
    the batch lines ask for) or a list of floats."""

    index: int = Field(ge=0)
    embedding: str | list[float]


class EmbeddingsBody(Record):
    """The body of a ``/v1/embeddings`` response, as in the SDK's
    ``CreateEmbeddingResponse`` but with base64 vectors allowed; ``usage`` is the SDK's."""

    model: str = ""
    data: list[EmbeddingItem]
    usage: Usage


class OutputResponse(Record):
    """The ``response`` of an output line: the HTTP status and its body."""

    status_code: int
    request_id: str | None = None
    body: EmbeddingsBody | dict[str, object] | None = None


class BatchOutputLine(Record):
    """One line of a batch output or error file
    (https://platform.openai.com/docs/guides/batch): matched by ``custom_id``, never by
    position."""

    id: str | None = None
    custom_id: str
    response: OutputResponse | None = None
    error: dict[str, object] | None = None

    @property
    def embeddings(self) -> EmbeddingsBody | None:
        """The embeddings of a successful line (status 200, no error), else None."""
        if self.error or self.response is None or self.response.status_code != 200:
            return None
        body = self.response.body
        return body if isinstance(body, EmbeddingsBody) else None

    @property
    def billed_tokens(self) -> int:
        """Tokens this line was billed for (0 for a failed line)."""
        body = self.embeddings
        return body.usage.total_tokens if body is not None else 0


DocumentStatus = Literal["accepted", "rejected", "deleted", "unchanged"]


def sequencer_key(sequencer: str) -> str:
    """An S3 event ``sequencer`` made comparable as a string: hex, left-padded with zeros
    to 32 characters ("compare the strings after padding the shorter one with zeros",
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html).
    '' stays '' (no order known: a bulk load)."""
    return sequencer.rjust(32, "0") if sequencer else ""


class DocumentOutcome(Record):
    """What ChunkAndEstimate made of one document of the group."""

    key: str
    version: str | None = None
    status: DocumentStatus
    reason: str | None = None
    chunks: int = Field(default=0, ge=0)
    tokens: int = Field(default=0, ge=0)
    prefix: str = ""
    urgent: bool = False
    object_key: str = Field(default="", description="the S3 key ('' = key)")
    sequencer: str = Field(default="", description="the S3 event's sequencer, zero-padded")
    encoding: str | None = Field(
        default=None, description="how its text was read: utf-8, cp1252, utf-16, pdf, docx, ..."
    )


class LedgerRecord(Record):
    """One group's cost in the ledger (usage table, ``pk = ledger#<day>``, ``sk = job_id``).

    ``cost_usd`` is the OpenAI part, ``aws_cost_usd`` what the group's AWS requests cost at
    list prices (``aws_pricing``), ``total_cost_usd`` their sum. ``naive_cost_usd`` is every
    chunk through the synchronous API at the standard price, with no cache and no AWS.
    ``prefix`` is the documents' common top-level prefix ('' when they differ).
    """

    job_id: str
    source: str
    day: str
    model: str
    status: Literal["SUCCEEDED", "FAILED"]
    api: str = "batch"
    prefix: str = ""
    documents: int = 0
    batches: int = 0
    tokens: int = Field(ge=0, description="tokens billed by OpenAI")
    repaid_tokens: int = Field(
        default=0, ge=0, description="tokens bought again for content whose vector was lost"
    )
    price_per_million_usd: float = 0.0
    cost_usd: float = 0.0
    aws_cost_usd: float = 0.0
    total_cost_usd: float = 0.0
    standard_cost_usd: float = 0.0
    saved_usd: float = 0.0
    naive_cost_usd: float = 0.0
    cache_hits: int = 0
    tokens_saved: int = 0
    cost_avoided_usd: float = 0.0
    sfn_transitions: int = 0
    lambda_requests: int = 0
    lambda_gb_seconds: float = 0.0
    rejected_count: int = Field(default=0, description="documents left out (bad, over budget)")
    rejected: list[str] = Field(default_factory=list, description="'key: reason', first 20")
    results: str = Field(
        default="", description="s3:// URI of every document's result and cost (JSONL)"
    )
    cause: str = Field(default="", description="why a job the reconciler settled ended")

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> LedgerRecord:
        """One ledger item as DynamoDB returns it (numbers as ``Decimal``), validated.

        Raises:
            ValueError: the item is not a valid ledger record (the message names its
                ``pk/sk``).
        """
        try:
            return cls.model_validate(_plain(item))
        except ValidationError as exc:
            where = f"{item.get('pk', '?')}/{item.get('sk', item.get('job_id', '?'))}"
            raise ValueError(f"ledger record {where} is malformed: {exc}") from exc


def _plain(value: Any) -> Any:
    """A DynamoDB value with its ``Decimal`` numbers as ``int`` (integral) or ``float``."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set | tuple):
        return [_plain(v) for v in value]
    return value


ReservationState = Literal["held", "committed", "released", "swept"]

#: Attribute prefixes of the job item's per-batch and per-round attributes.
BATCH_ATTR, UPLOADS_ATTR = "batch#", "uploads#"


class JobItem(Record):
    """The job's own item in ``JOBS_TABLE`` (key ``job_id``), as the steps read it.

    Written by ``aws/jobs.py`` (batch claims, uploads per round, the final status) and
    ``aws/budget.py`` (the reservation). A job with no item reads as ``JobItem(job_id=...)``
    with every field at its default. Tokens are cl100k_base tokens; times epoch seconds.

    ``batch_claims`` gathers the ``batch#<input_file_id>`` attributes (``"creating"`` or
    the batch id); ``round_uploads`` the ``uploads#<round>`` ones (a JSON list of
    :class:`~batch_embedder.models.BatchFile`).
    """

    job_id: str
    status: Literal["SUCCEEDED", "FAILED"] | None = None
    failed_state: str = ""
    cause: str = ""
    source_key: str = ""
    model: str = ""
    finished_at: int | None = None
    reservation_state: ReservationState | None = None
    reserved_tokens: int = Field(default=0, ge=0)
    reservation_day: str | None = Field(default=None, description="UTC day, YYYY-MM-DD")
    budget_scopes: list[str] = Field(default_factory=list)
    scope_tokens: dict[str, int] = Field(default_factory=dict)
    billed_tokens: int = Field(default=0, ge=0, description="committed so far")
    batch_claims: dict[str, str] = Field(default_factory=dict)
    round_uploads: dict[int, Json[list[BatchFile]]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _gather(cls, item: Any) -> Any:
        if not isinstance(item, Mapping):
            return item
        out = {k: v for k, v in item.items() if not str(k).startswith((BATCH_ATTR, UPLOADS_ATTR))}
        out.setdefault("batch_claims", {
            str(k).removeprefix(BATCH_ATTR): v for k, v in item.items()
            if str(k).startswith(BATCH_ATTR)
        })  # fmt: skip
        out.setdefault("round_uploads", {
            str(k).removeprefix(UPLOADS_ATTR): v for k, v in item.items()
            if str(k).startswith(UPLOADS_ATTR)
        })  # fmt: skip
        return out

    @property
    def finished(self) -> bool:
        """Whether RecordCost or RecordFailure (or the reconciler) ended the job."""
        return self.status is not None

    @property
    def uploaded_file_ids(self) -> list[str]:
        """Every batch input file the job uploaded, over all its rounds."""
        return [f.file_id for files in self.round_uploads.values() for f in files]


class BudgetCounter(Record):
    """One scope's counter for a UTC day (usage table, ``pk = budget#<scope>``,
    ``sk = YYYY-MM-DD``), in tokens; 0 where the counter does not exist yet."""

    held_tokens: int = 0
    reserved_tokens: int = 0
    committed_tokens: int = 0
