"""Errors the workflow raises on purpose.

Each class name is the ``Error`` a Step Functions ``Catch`` matches on (Lambda reports the
exception class name as ``errorType``), so renaming one is a change to
``statemachine/embed_document.asl.json`` too.
"""

from __future__ import annotations


class BatchEmbedderError(Exception):
    """Base class of every error raised on purpose by the library."""


class InvalidDocumentError(BatchEmbedderError):
    """The uploaded object cannot be embedded (empty, binary, bad UTF-8, too big, ...).

    Attributes:
        key: the S3 object key (decoded) of the document.
        reason: a sentence for a person, saying what is wrong.
    """

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


class BudgetExceededError(BatchEmbedderError):
    """Reserving the job's estimated tokens would pass today's (UTC) token limit.

    Attributes:
        requested_tokens: tokens the job asked to reserve.
        remaining_tokens: tokens still free under the limit when it asked.
        limit_tokens: the daily limit of that scope (``DAILY_TOKEN_LIMIT`` for a model,
            ``PREFIX_TOKEN_LIMITS`` for a prefix).
        day: the UTC day, ``YYYY-MM-DD``.
        scope: which counter was full, e.g. ``model:text-embedding-3-small``.
    """

    def __init__(
        self,
        *,
        key: str,
        requested_tokens: int,
        remaining_tokens: int,
        limit_tokens: int,
        day: str,
        scope: str = "",
    ) -> None:
        self.key = key
        self.requested_tokens = requested_tokens
        self.remaining_tokens = remaining_tokens
        self.limit_tokens = limit_tokens
        self.day = day
        self.scope = scope
        where = f" of {scope}" if scope else ""
        super().__init__(
            f"{key}: needs {requested_tokens} tokens but only {remaining_tokens} of the "
            f"{limit_tokens}-token daily limit{where} remain for {day} (UTC)"
        )


class BatchNotFinishedError(BatchEmbedderError):
    """A batch ended in ``failed``, ``expired`` or ``cancelled`` instead of ``completed``."""


class EmbeddingsIncompleteError(BatchEmbedderError):
    """Some chunks still have no vector after every round (failed request lines): the
    documents that need them are not written; the others are.

    Attributes:
        expected: chunks in the group.
        received: chunks with a vector.
        failed_requests: request lines that failed.
        rounds: FetchAndWrite passes made.
    """

    def __init__(
        self, *, key: str, expected: int, received: int, failed_requests: int, rounds: int = 1
    ) -> None:
        self.expected = expected
        self.received = received
        self.failed_requests = failed_requests
        self.rounds = rounds
        super().__init__(
            f"{key}: {received} of {expected} chunks have a vector after {rounds} round(s) "
            f"({failed_requests} request line(s) failed); these documents were not written "
            "(every other document was)"
        )


class ConfigurationError(BatchEmbedderError):
    """A setting or secret is missing or invalid (the message names it)."""


class CacheNotReadyError(BatchEmbedderError):
    """Some content this job reuses is still being embedded by another execution.

    FetchAndWrite raises it; the state machine retries FetchAndWrite until the other
    execution has written its vectors.
    """


class ProviderAuthFailedError(BatchEmbedderError):
    """OpenAI refused the API key (401 invalid or revoked, 403 not allowed). Not retried:
    the execution ends in ``ProviderAuthFailed`` with nothing reserved or bought."""


class BatchFailedError(BatchEmbedderError):
    """A batch failed and every round since left contents without a vector: the documents
    that need them are not written (the message names them); the others are."""


class BatchExpiredError(BatchEmbedderError):
    """Batches expired round after round: the documents still missing vectors are not
    written (the message names them); the others are."""


class BatchCancelledError(BatchEmbedderError):
    """A batch was cancelled and the rounds since did not finish its contents: the
    documents still missing vectors are not written (the message names them)."""


class DatabaseUnavailableError(BatchEmbedderError):
    """Postgres could not be reached or dropped the connection (any psycopg
    ``OperationalError``: ``AdminShutdown`` from a failover, ``ConnectionFailure``,
    ``CannotConnectNow``, ...). The state machine retries it for 755 s, longer than a
    Multi-AZ failover (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/Concepts.MultiAZSingleStandby.html)."""


class ProviderUnavailableError(BatchEmbedderError):
    """The embedding provider did not answer (connection refused or reset, timeout, 5xx)
    after the client's own retries. Not a 4xx, not a refused key, not an empty quota.

    The state machine catches it into a ``ProviderDegraded`` Wait (``ProviderOutageWaitSeconds``)
    and runs the same step again: the execution pauses instead of failing. The degraded
    state is recorded once per provider (``aws.provider_health``).
    """


class ProviderOutageTooLongError(BatchEmbedderError):
    """This execution has waited for the provider longer than ``PROVIDER_OUTAGE_SECONDS``
    (``ProviderOutageSeconds``): it stops waiting and fails (``PipelineError``, the cause
    names the provider, since when it fails and the last error). What was bought stays
    in the content store; RecordFailure settles it."""
