"""Day-2 operations, the same against the local stack and a deployed one.

Every function takes resolved resource names (:class:`Resources`), so the CLI, tests and
scripts call them alike: :func:`resources_from_stack` reads them from a CloudFormation
stack (``describe_stack_resources``), :func:`resources_from_local` from a running
:class:`~batch_embedder_local.stack.LocalStack`.

- :func:`status`: upload queue and DLQ depth, batches in flight (the registry's
  ``OpenBatches`` index), executions by status (``ListExecutions``), today's budget counter
  of the model; without Step Functions (``state_machine_arn=None``: the local stack's state
  machine is in-memory), finished jobs by status from the jobs table instead;
- :func:`list_jobs`: failed or running executions with their keys, failed state and cause
  (from the job's item, which RecordFailure writes; else from the execution);
- :func:`retry`: a new execution ``<job>-retry-<n>`` with the failed one's input;
- :func:`search_stack`: the nearest chunks, with the stack's database and OpenAI key.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import boto3
from botocore.exceptions import ClientError
from pydantic import TypeAdapter

from batch_embedder.aws.budget import budget_store, utc_day
from batch_embedder.aws.jobs import job_store
from batch_embedder.aws.registry import batch_registry
from batch_embedder.models import ObjectCreated, UploadEvent

#: An execution's input: the group's uploads, as the pipe sends them.
_UPLOADS = TypeAdapter(list[UploadEvent])

#: Execution statuses, in the order they are shown.
STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")
#: ``-retry-<n>`` at the end of a retry's name.
RETRY_SUFFIX = re.compile(r"-retry-\d+$")


class OpsError(Exception):
    """A problem the user can fix (no such job, a job that did not fail, ...)."""


@dataclass(frozen=True)
class Resources:
    """The names a day-2 command needs. ``state_machine_arn`` None: no Step Functions to
    ask (the local stack offline); queue URLs None: not shown."""

    jobs_table: str
    usage_table: str
    model: str
    state_machine_arn: str | None = None
    upload_queue_url: str | None = None
    dead_letter_queue_url: str | None = None
    documents_bucket: str | None = None
    database_url_secret: str | None = None
    openai_key_secret: str | None = None
    openai_base_url: str = ""
    dimensions: int = 0
    #: The provider's settings (``Settings`` field -> value) from the stack's parameters.
    provider: dict[str, str] = field(default_factory=dict)


#: template.yaml parameters -> the ``Settings`` fields that name the provider.
PROVIDER_PARAMETERS = {
    "EmbeddingProvider": "embedding_provider",
    "AzureOpenAIEndpoint": "azure_openai_endpoint",
    "AzureOpenAIApiVersion": "azure_openai_api_version",
    "AzureOpenAIDeployment": "azure_openai_deployment",
    "AzureOpenAIAuth": "azure_openai_auth",
}


def _provider(params: dict[str, Any]) -> dict[str, str]:
    """The provider's settings among a stack's parameters (empty ones left out)."""
    return {f: str(params[p]) for p, f in PROVIDER_PARAMETERS.items() if params.get(p)}


#: template.yaml logical ids -> :class:`Resources` fields.
LOGICAL_IDS = {
    "JobsTable": "jobs_table",
    "UsageTable": "usage_table",
    "EmbedUploadsStateMachine": "state_machine_arn",
    "UploadQueue": "upload_queue_url",
    "UploadDeadLetterQueue": "dead_letter_queue_url",
    "DocumentsBucket": "documents_bucket",
    "DatabaseUrlSecret": "database_url_secret",
    "OpenAIApiKeySecret": "openai_key_secret",
}


def resources_from_stack(stack_name: str) -> Resources:
    """Resolve the names of a deployed stack (default boto3 session).

    Physical ids from ``describe_stack_resources`` (tables: names; queues: URLs; the state
    machine and secrets: ARNs); model, dimensions and OpenAI base URL from its parameters.

    Raises:
        OpsError: the stack lacks one of the tables.
    """
    cfn = boto3.client("cloudformation")
    found: dict[str, Any] = {}
    for res in cfn.describe_stack_resources(StackName=stack_name)["StackResources"]:
        field = LOGICAL_IDS.get(res["LogicalResourceId"])
        if field and res.get("PhysicalResourceId"):
            found[field] = res["PhysicalResourceId"]
    missing = [f for f in ("jobs_table", "usage_table") if f not in found]
    if missing:
        raise OpsError(f"stack {stack_name!r} has no {', '.join(missing)}")
    stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    params = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}
    return Resources(
        model=params.get("EmbeddingModel") or "text-embedding-3-small",
        dimensions=int(params.get("EmbeddingDimensions") or 0),
        openai_base_url=params.get("OpenAIBaseUrl", ""),
        provider=_provider(params),
        **found,
    )


def _local_provider(stack: Any) -> dict[str, str]:
    """The provider's settings of a local stack: its parameters, Azure's endpoint being the
    emulator's root when the parameter is empty (the emulator poses as Azure)."""
    provider = _provider(stack.parameters)
    if (
        provider.get("embedding_provider") == "azure"
        and not provider.get("azure_openai_endpoint")
        and stack.emulator is not None
    ):
        provider["azure_openai_endpoint"] = stack.emulator.url
    return provider


def resources_from_local(stack: Any, *, live: bool = True) -> Resources:
    """The names of a running local stack. ``live=False`` for a stack opened only to read
    the persisted tables: its Step Functions and SQS (moto, in memory) know nothing of
    earlier runs, so no state machine and no queues are named."""
    refs: dict[str, str] = stack.refs
    return Resources(
        model=str(stack.parameters["EmbeddingModel"]),
        dimensions=int(stack.parameters.get("EmbeddingDimensions") or 0),
        openai_base_url=stack.emulator.base_url if stack.emulator is not None else "",
        provider=_local_provider(stack),
        **{
            field: refs[logical]
            for logical, field in LOGICAL_IDS.items()
            if logical in refs
            and (
                live
                or field not in ("state_machine_arn", "upload_queue_url", "dead_letter_queue_url")
            )
        },
    )


# -- status -------------------------------------------------------------------------


def _queue_depth(url: str) -> dict[str, Any]:
    attrs = boto3.client("sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return {
        "queue": url.rsplit("/", 1)[-1],
        "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
    }


def _count_executions(arn: str) -> dict[str, int]:
    sfn = boto3.client("stepfunctions")
    counts: dict[str, int] = {}
    for status_ in STATUSES:
        kwargs: dict[str, Any] = {"stateMachineArn": arn, "statusFilter": status_}
        total = 0
        while True:
            page = sfn.list_executions(**kwargs)
            total += len(page["executions"])
            if not page.get("nextToken"):
                break
            kwargs["nextToken"] = page["nextToken"]
        counts[status_] = total
    return counts


def status(res: Resources, *, day: str | None = None, scan_jobs: bool = False) -> dict[str, Any]:
    """What is going on: queues, batches in flight, executions, today's budget.

    ``executions`` is None without a state machine to ask; ``jobs`` (finished jobs by the
    status their item records) only with ``scan_jobs`` (a table scan: local stack).
    """
    day = day or utc_day()
    queues = [_queue_depth(u) for u in (res.upload_queue_url, res.dead_letter_queue_url) if u]
    batches = batch_registry(res.jobs_table).open_batches()
    counter = budget_store(res.jobs_table, res.usage_table).counter(day, f"model:{res.model}")
    out: dict[str, Any] = {
        "queues": queues,
        "open_batches": [
            {"batch_id": b.batch_id, "job_id": b.owner, "status": b.status, "model": b.model}
            for b in sorted(batches, key=lambda b: b.batch_id)
        ],
        "executions": _count_executions(res.state_machine_arn) if res.state_machine_arn else None,
        "budget": {"day": day, "scope": f"model:{res.model}", **counter.model_dump()},
    }
    if scan_jobs:
        counts = Counter(i.status or "RUNNING?" for i in job_store(res.jobs_table).scan_jobs())
        out["jobs"] = dict(sorted(counts.items()))
    return out


# -- jobs ---------------------------------------------------------------------------


@dataclass
class JobInfo:
    """One job as ``jobs`` lists it."""

    job_id: str
    status: str
    started: str = ""
    stopped: str = ""
    keys: list[str] | None = None
    failed_state: str = ""
    cause: str = ""
    execution_arn: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, int | float | Decimal):
        return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value or "")


def _keys(execution_input: str) -> list[str]:
    try:
        uploads = json.loads(execution_input or "[]")
    except ValueError:
        return []
    if isinstance(uploads, dict):
        uploads = uploads.get("uploads", [])
    return [str(u.get("key")) for u in uploads if isinstance(u, dict) and u.get("key")]


def _failed_state_from_history(sfn: Any, arn: str) -> str:
    page = sfn.get_execution_history(executionArn=arn, reverseOrder=True, maxResults=50)
    for event in page["events"]:
        if event["type"] == "FailStateEntered":
            return str(event["stateEnteredEventDetails"]["name"])
    return ""


def list_jobs(res: Resources, which: str = "failed", *, limit: int = 20) -> list[JobInfo]:
    """The newest ``limit`` failed (``which="failed"``) or running jobs.

    With a state machine: its executions (``ListExecutions``), their keys from the input,
    failed state and cause from the job's item (RecordFailure's) or else the execution.
    Without (local stack offline): only failed jobs, from the jobs table (a scan).
    """
    if which not in ("failed", "running"):
        raise OpsError(f"which must be failed or running, not {which!r}")
    if res.state_machine_arn is None:
        if which == "running":
            raise OpsError(
                "running executions are only known while the stack runs (moto keeps Step "
                "Functions in memory); the jobs table records jobs when they finish"
            )
        return _failed_from_table(res, limit)
    sfn = boto3.client("stepfunctions")
    found: list[JobInfo] = []
    kwargs: dict[str, Any] = {
        "stateMachineArn": res.state_machine_arn,
        "statusFilter": which.upper(),
        "maxResults": min(max(limit, 1), 1000),
    }
    while len(found) < limit:
        page = sfn.list_executions(**kwargs)
        for ex in page["executions"]:
            desc = sfn.describe_execution(executionArn=ex["executionArn"])
            info = JobInfo(
                job_id=ex["name"],
                status=ex["status"],
                started=_when(ex.get("startDate")),
                stopped=_when(ex.get("stopDate")),
                keys=_keys(desc.get("input", "")),
                execution_arn=ex["executionArn"],
            )
            if which == "failed":
                item = job_store(res.jobs_table).get(ex["name"])
                info.failed_state = item.failed_state or (
                    _failed_state_from_history(sfn, ex["executionArn"])
                )
                info.cause = item.cause or str(desc.get("cause", ""))
            found.append(info)
        if not page.get("nextToken"):
            break
        kwargs["nextToken"] = page["nextToken"]
    return found[:limit]


def _failed_from_table(res: Resources, limit: int) -> list[JobInfo]:
    items = [i for i in job_store(res.jobs_table).scan_jobs() if i.status == "FAILED"]
    items.sort(key=lambda i: -(i.finished_at or 0))
    return [
        JobInfo(
            job_id=i.job_id,
            status="FAILED",
            stopped=_when(i.finished_at),
            keys=[i.source_key] if i.source_key else [],
            failed_state=i.failed_state,
            cause=i.cause,
        )
        for i in items[:limit]
    ]


# -- retry --------------------------------------------------------------------------


def execution_arn(state_machine_arn: str, name: str) -> str:
    """The ARN of execution ``name`` of a standard state machine."""
    return state_machine_arn.replace(":stateMachine:", ":execution:", 1) + ":" + name


def _exists(sfn: Any, arn: str) -> bool:
    try:
        sfn.describe_execution(executionArn=arn)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ExecutionDoesNotExist":
            return False
        raise
    return True


def _latest(uploads: list[UploadEvent]) -> list[UploadEvent]:
    """Each created upload pointed at its object's current version (after a fix)."""
    s3 = boto3.client("s3")
    fresh: list[UploadEvent] = []
    for upload in uploads:
        if isinstance(upload, ObjectCreated):
            head = s3.head_object(Bucket=upload.bucket, Key=upload.key)
            version = head.get("VersionId")
            upload = upload.model_copy(
                update={
                    "etag": str(head["ETag"]).strip('"'),
                    "size": int(head["ContentLength"]),
                    **({"version_id": version} if version and version != "null" else {}),
                }
            )
        fresh.append(upload)
    return fresh


def retry(res: Resources, job_id: str, *, latest: bool = False) -> dict[str, str]:
    """Start ``<job>-retry-<n>`` (the first free n) with the input of execution ``job_id``.

    A new execution, not RedriveExecution: the workflow's job id is the execution name, so
    the retry reserves, bills and records as a job of its own. ``latest``: read each
    uploaded object's current version (the input names the version that failed).

    Raises:
        OpsError: no state machine, no such execution, or it is still running.
    """
    if res.state_machine_arn is None:
        raise OpsError("retry needs Step Functions: run it while the stack runs")
    sfn = boto3.client("stepfunctions")
    old = execution_arn(res.state_machine_arn, job_id)
    try:
        desc = sfn.describe_execution(executionArn=old)
    except ClientError as exc:
        raise OpsError(f"no execution {job_id!r}: {exc}") from None
    if desc["status"] == "RUNNING":
        raise OpsError(f"{job_id} is still running")
    uploads = _UPLOADS.validate_json(desc.get("input") or "[]")
    if latest:
        uploads = _latest(uploads)
    base = RETRY_SUFFIX.sub("", job_id)
    n = 1
    while _exists(sfn, execution_arn(res.state_machine_arn, f"{base}-retry-{n}")):
        n += 1
    name = f"{base}-retry-{n}"
    started = sfn.start_execution(
        stateMachineArn=res.state_machine_arn,
        name=name,
        input=_UPLOADS.dump_json(uploads, exclude_none=True).decode(),
    )
    return {"job_id": job_id, "retry": name, "execution_arn": str(started["executionArn"])}


# -- search against a deployed stack --------------------------------------------------


def migrate_stack(res: Resources) -> int:
    """Apply the pending schema migrations to the stack's database (what its
    ``MigrateDatabase`` custom resource does on deploy); returns the schema version."""
    from batch_embedder.db.connection import migrate_url

    if not res.database_url_secret:
        raise OpsError("the stack has no DatabaseUrlSecret")
    sm = boto3.client("secretsmanager")
    url = sm.get_secret_value(SecretId=res.database_url_secret)["SecretString"]
    return migrate_url(url)


def search_stack(res: Resources, query: str, *, k: int = 5, prefix: str = "") -> list[Any]:
    """The ``k`` chunks nearest to ``query`` among keys starting with ``prefix``: the
    database URL and OpenAI key from the stack's secrets, model and dimensions from its
    parameters (as the functions embed)."""
    from batch_embedder.openai.client import get_client
    from batch_embedder.settings import Settings

    from .search import nearest

    if not res.database_url_secret or not res.openai_key_secret:
        raise OpsError("the stack has no DatabaseUrlSecret / OpenAIApiKeySecret")
    sm = boto3.client("secretsmanager")
    url = sm.get_secret_value(SecretId=res.database_url_secret)["SecretString"]
    key = sm.get_secret_value(SecretId=res.openai_key_secret)["SecretString"]
    settings = Settings.model_validate(
        {
            "embedding_model": res.model,
            "embedding_dimensions": res.dimensions,
            "openai_api_key": key,
            "openai_base_url": res.openai_base_url,
            **res.provider,
        }
    )
    # The client the functions use: OpenAI, Azure (deployment names, api-version) or a
    # compatible server, as the stack is configured.
    return list(nearest(url, get_client(settings), query, settings, k=k, prefix=prefix))


# -- rendering ----------------------------------------------------------------------


def render_status(data: dict[str, Any]) -> str:
    """``status`` as text."""
    lines = ["queues"]
    for q in data["queues"]:
        lines.append(f"  {q['queue']:<48} {q['visible']:>7} waiting {q['in_flight']:>7} in flight")
    if not data["queues"]:
        lines.append("  unknown offline (the local queues live only while the stack runs)")
    batches = data["open_batches"]
    lines.append(f"batches in flight: {len(batches)}")
    for b in batches[:20]:
        lines.append(f"  {b['batch_id']:<40} {b['status']:<12} job {b['job_id']}")
    if len(batches) > 20:
        lines.append(f"  ... {len(batches) - 20} more")
    if data["executions"] is None:
        lines.append("executions: unknown offline (Step Functions is in memory; see `jobs`)")
    else:
        shown = ", ".join(f"{s} {n}" for s, n in data["executions"].items())
        lines.append(f"executions: {shown}")
    if "jobs" in data:
        shown = ", ".join(f"{s} {n}" for s, n in data["jobs"].items()) or "none"
        lines.append(f"finished jobs (jobs table): {shown}")
    b = data["budget"]
    lines.append(
        f"budget {b['scope']} {b['day']}: held {b['held_tokens']:,} tokens "
        f"(reserved {b['reserved_tokens']:,}, committed {b['committed_tokens']:,})"
    )
    return "\n".join(lines) + "\n"


def render_jobs(found: list[JobInfo]) -> str:
    """``jobs`` as text: one line a job, then its failed state and cause."""
    if not found:
        return "no jobs\n"
    lines = []
    for j in found:
        keys = ", ".join((j.keys or [])[:3]) + (" ..." if len(j.keys or []) > 3 else "")
        lines.append(f"{j.job_id:<40} {j.status:<9} {j.stopped or j.started:<20} {keys}")
        if j.failed_state or j.cause:
            cause = " ".join(j.cause.split())
            lines.append(f"  -> {j.failed_state}: {cause[:300]}")
    return "\n".join(lines) + "\n"
