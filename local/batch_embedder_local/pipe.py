"""The local stand-ins for what moto does not run: the EventBridge rules, the Pipe, the
reconciler's schedule and the webhook receiver's Function URL.

- **Rules -> queue.** :meth:`LocalPipe.deliver` sends an S3 event to the template's upload
  queue (moto SQS), as the ``ObjectCreatedRule`` / ``ObjectDeletedRule`` targets do.
- **Pipe.** A thread receives from the queue (at most 10 messages a call, as a pipe does),
  gathers records until ``UploadBatchSize`` or until ``UploadBatchWindowSeconds`` passed
  since the first one, renders the template's ``InputTemplate`` for each record, starts
  one execution with the list, and deletes the messages. moto has no Pipes runtime
  (see docs/architecture.md), so this thread is the pipe; its input template is the one
  in template.yaml, not a copy.
- **Schedule.** A thread invokes the reconciler every ``reconcile_seconds``.
- **Function URL.** A werkzeug server on 127.0.0.1 turns each HTTP request into a Function
  URL event (payload 2.0) and invokes the receiver through moto's Lambda, so the real
  handler answers.

Every SQS request the rule and the pipe make is counted with the library's meter
(:attr:`LocalPipe.usage`), so the benchmarks price what a deployment would pay.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import boto3
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from batch_embedder.aws import metering

#: ``<$.path.to.field>`` placeholders of an EventBridge Pipes input template.
_PLACEHOLDER = re.compile(r"<\$\.([^>]+)>")
#: Messages one ReceiveMessage returns at most (SQS's limit).
RECEIVE_MAX = 10
#: Long-polling wait of a receive on an idle queue, seconds (a pipe uses up to 20).
LONG_POLL_SECONDS = 1


def render_input_template(template: str, record: dict[str, Any]) -> Any:
    """Render a Pipes input template for one SQS record (``$.body`` is the parsed body).

    A path the record lacks renders as an empty string, as Pipes does for a missing field
    inside quotes (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-pipes-input-transformation.html).

    Returns:
        The rendered JSON value.
    """
    scope = {**record, "body": json.loads(record["body"])}

    def lookup(match: re.Match[str]) -> str:
        value: Any = scope
        for part in match.group(1).split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return ""
        text = json.dumps(value) if not isinstance(value, str) else value
        return json.dumps(text)[1:-1]  # escaped for its place inside the template's quotes

    return json.loads(_PLACEHOLDER.sub(lookup, template))


@dataclass
class StartedGroup:
    """One execution the pipe started: its ARN and the (key, sequencer) of its events."""

    execution_arn: str
    events: list[tuple[str, str]]


@dataclass
class LocalPipe:
    """The rules, the pipe and the reconciler's schedule of template.yaml, run locally."""

    queue_url: str
    state_machine_arn: str
    input_template: str
    batch_size: int
    window_seconds: float
    region: str
    usage: metering.AwsUsage = field(default_factory=metering.AwsUsage)
    started: list[StartedGroup] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _flush: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _sqs_client: Any = None

    def _metered(self, call: Any, **kwargs: Any) -> Any:
        with metering.meter() as m:
            result = call(**kwargs)
        with self._lock:
            self.usage = self.usage + m.usage
        return result

    def _sqs(self) -> Any:
        """The metered SQS client, made once (making one costs about 10 ms)."""
        if self._sqs_client is None:
            self._sqs_client = metering.instrument(boto3.client("sqs", region_name=self.region))
        return self._sqs_client

    def deliver(self, event: dict[str, Any]) -> None:
        """What the EventBridge rule does: send the event to the upload queue."""
        sqs = self._sqs()
        self._metered(sqs.send_message, QueueUrl=self.queue_url, MessageBody=json.dumps(event))

    def flush(self) -> None:
        """No more uploads are coming (the CLI sent its last one): from now on a group
        starts as soon as the queue is drained, without waiting out the window. A deployed
        pipe cannot know this and always waits for its window."""
        self._flush.set()

    def start(self, reconcile: Any = None, reconcile_seconds: float = 0) -> None:
        """Start the pipe thread (and the reconciler's schedule when given)."""
        self._stop.clear()
        self._flush.clear()
        self._threads = [threading.Thread(target=self._run, name="local-pipe", daemon=True)]
        if reconcile is not None and reconcile_seconds > 0:
            self._threads.append(
                threading.Thread(
                    target=self._schedule,
                    args=(reconcile, reconcile_seconds),
                    name="local-reconciler",
                    daemon=True,
                )
            )
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the threads (records not yet started stay in the queue, as in SQS)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _schedule(self, reconcile: Any, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                reconcile()
            except Exception:
                time.sleep(0)

    def _run(self) -> None:
        sqs = self._sqs()
        sfn = boto3.client("stepfunctions", region_name=self.region)
        records: list[dict[str, Any]] = []
        first_at = 0.0
        while not self._stop.is_set():
            want = min(RECEIVE_MAX, self.batch_size - len(records))
            # Long polling, as a pipe does (an idle queue costs a few receives a minute).
            left = self.window_seconds - (time.monotonic() - first_at) if records else 1e9
            flushing = self._flush.is_set()
            wait = LONG_POLL_SECONDS if left >= LONG_POLL_SECONDS and not flushing else 0
            page = self._metered(
                sqs.receive_message, QueueUrl=self.queue_url, MaxNumberOfMessages=want,
                VisibilityTimeout=600, WaitTimeSeconds=wait,
            )  # fmt: skip
            got = page.get("Messages", [])
            if got and not records:
                first_at = time.monotonic()
            records.extend(got)
            full = len(records) >= self.batch_size
            due = records and (
                time.monotonic() - first_at >= self.window_seconds or (flushing and not got)
            )
            if full or due:
                self._start_group(sfn, sqs, records)
                records = []
            elif not got:
                self._stop.wait(0.05)

    def _start_group(self, sfn: Any, sqs: Any, records: list[dict[str, Any]]) -> None:
        uploads = [render_input_template(self.input_template, {"body": r["Body"]}) for r in records]
        arn = sfn.start_execution(
            stateMachineArn=self.state_machine_arn, name=str(uuid.uuid4()),
            input=json.dumps(uploads),
        )["executionArn"]  # fmt: skip
        for start in range(0, len(records), RECEIVE_MAX):
            batch = records[start : start + RECEIVE_MAX]
            self._metered(
                sqs.delete_message_batch, QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": r["ReceiptHandle"]}
                         for i, r in enumerate(batch)],
            )  # fmt: skip
        with self._lock:
            self.usage = self.usage + metering.AwsUsage(pipes_requests=len(records))
            self.started.append(
                StartedGroup(arn, [(str(u["key"]), str(u.get("sequencer", ""))) for u in uploads])
            )

    def groups_for(self, events: set[tuple[str, str]]) -> list[StartedGroup] | None:
        """The groups that carry all of ``events`` ((key, sequencer)), or None if some are
        still in the queue."""
        with self._lock:
            groups = [g for g in self.started if events.intersection(g.events)]
            seen = {e for g in groups for e in g.events}
        return groups if events <= seen else None


class FunctionUrl:
    """A Lambda Function URL on 127.0.0.1: HTTP in, the function's response out."""

    def __init__(self, function_name: str, region: str) -> None:
        self.function_name = function_name
        self.region = region
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/``."""
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_port}/"

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        event = {
            "version": "2.0",
            "rawPath": request.path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": request.get_data(as_text=True),
            "isBase64Encoded": False,
            "requestContext": {"http": {"method": request.method, "path": request.path}},
        }
        lam = boto3.client("lambda", region_name=self.region)
        answer = lam.invoke(FunctionName=self.function_name, Payload=json.dumps(event))
        payload = json.loads(answer["Payload"].read() or b"{}")
        if answer.get("FunctionError"):
            response = Response(json.dumps(payload), status=502, mimetype="application/json")
        else:
            response = Response(
                payload.get("body", ""),
                status=int(payload.get("statusCode", 200)),
                mimetype="application/json",
            )
        return response(environ, start_response)

    def start(self) -> FunctionUrl:
        """Serve in a daemon thread."""
        # werkzeug logs every request at INFO; the webhook's outcome is in the results.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
