"""The moto adapter: real handlers run in-process, errors come back as on AWS."""

from __future__ import annotations

import json
from typing import Any

import boto3

from batch_embedder_local.lambda_adapter import check_moto_hooks


def test_moto_internals_are_where_the_adapter_expects_them() -> None:
    # Fails loudly when a moto upgrade moves LambdaSimpleBackend.invoke or
    # DynamoHandler.call_action; moto is pinned in pyproject.toml for that reason.
    check_moto_hooks()


def test_invoke_api_runs_the_real_handler(stack: Any) -> None:
    lam = boto3.client("lambda")
    event = {"job_id": "adapter-1", "error": {"Error": "InvalidDocumentError", "Cause": json.dumps(
        {"errorType": "InvalidDocumentError", "errorMessage": "x.txt: the file is empty (0 bytes)"}
    )}}  # fmt: skip
    resp = lam.invoke(FunctionName=stack.refs["RecordFailureFunction"], Payload=json.dumps(event))
    assert "FunctionError" not in resp
    out = json.loads(resp["Payload"].read())
    assert out["failed_state"] == "InvalidDocument"
    assert out["cause"] == "x.txt: the file is empty (0 bytes)"


def test_handler_exception_comes_back_with_its_class_name(stack: Any) -> None:
    lam = boto3.client("lambda")
    resp = lam.invoke(FunctionName=stack.refs["BudgetCheckFunction"], Payload=b'{"not": "a job"}')
    assert resp["FunctionError"] == "Unhandled"
    out = json.loads(resp["Payload"].read())
    assert out["errorType"] == "ValidationError"
    assert "job_id" in out["errorMessage"]
