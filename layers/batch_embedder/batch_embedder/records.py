"""Records that cross a boundary outside the state payload, each defined once.

- :class:`ChunkRow`: one line of a group's chunk manifest (``jobs/<job>/chunks.jsonl``).
- :class:`EmbedRow`: one distinct content to embed (``jobs/<job>/embed.jsonl``).
- :class:`DocumentOutcome`: what became of one upload (``jobs/<job>/documents.jsonl``).
- :class:`BatchOutputLine`: one line of a batch output/error file, or of the synchronous
  path's output (the same shape).
- :class:`LedgerRecord`: one group's cost (usage table, ``pk = ledger#<day>``).

Money is USD as floats rounded to 9 decimals; tokens are cl100k_base tokens.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from openai.types.create_embedding_response import Usage
from pydantic import BaseModel, ConfigDict, Field

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
