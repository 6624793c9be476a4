"""MigrateDatabase: the CloudFormation custom resource that migrates the created database.

Runs when the stack is created and whenever the layer (where the migrations live) or the
database URL changes; a Delete does nothing (the schema stays with the data). The answer
goes to CloudFormation's pre-signed URL by hand (the cfn-response protocol is one PUT), on
every path, so a failure fails the deploy instead of hanging it for an hour.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import psycopg

from batch_embedder.aws.secrets import database_url
from batch_embedder.db.schema import migrate
from batch_embedder.settings import DatabaseSettings, Settings, scoped

#: What it reads: the settings mixins (template.yaml gives it their variables).
SETTINGS = (DatabaseSettings,)

PHYSICAL_ID = "batch-embedder-schema"
#: Seconds kept in hand to answer CloudFormation before the Lambda timeout.
ANSWER_MARGIN_SECONDS = 30
#: A cluster at 0 ACU takes some seconds to resume; connections are retried meanwhile.
RETRY_SECONDS = 10


def _answer(event: dict[str, Any], status: str, reason: str, data: dict[str, Any]) -> None:
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason[:3000],
            "PhysicalResourceId": event.get("PhysicalResourceId", PHYSICAL_ID),
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "Data": data,
        }
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - CloudFormation's https pre-signed URL
        event["ResponseURL"],
        data=body,
        method="PUT",
        headers={"Content-Type": "", "Content-Length": str(len(body))},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        response.read()


def _migrate(deadline: float) -> int:
    url = database_url(scoped(Settings(), SETTINGS))
    while True:
        try:
            with psycopg.connect(url, connect_timeout=15, autocommit=True) as conn:
                return migrate(conn)
        except psycopg.OperationalError:
            if time.monotonic() + RETRY_SECONDS + 15 > deadline:
                raise
            time.sleep(RETRY_SECONDS)


def lambda_handler(event: dict[str, Any], context: Any) -> None:
    """Create/Update: migrate and answer SUCCESS with ``SchemaVersion``; Delete: SUCCESS."""
    try:
        if event["RequestType"] == "Delete":
            _answer(event, "SUCCESS", "nothing to do on delete", {})
            return
        remaining = context.get_remaining_time_in_millis() / 1000 - ANSWER_MARGIN_SECONDS
        version = _migrate(time.monotonic() + remaining)
        _answer(event, "SUCCESS", f"schema at version {version}", {"SchemaVersion": version})
    except Exception as exc:  # every failure must reach CloudFormation
        print(json.dumps({"level": "ERROR", "message": "migration failed", "error": repr(exc)}))
        _answer(event, "FAILED", f"{type(exc).__name__}: {exc}", {})
