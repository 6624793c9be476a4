"""The cost report's "What would save money" on a hand-made ledger (pure, no AWS)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from batch_embedder.records import LedgerRecord
from batch_embedder_local import ops
from batch_embedder_local.cost_report import advise, render_advice

SMALL, LARGE = "text-embedding-3-small", "text-embedding-3-large"


def item(job_id: str, **kw: Any) -> LedgerRecord:
    """A ledger record read from an item as DynamoDB returns it (numbers as Decimal)."""
    base: dict[str, Any] = {
        "pk": "ledger#2025-03-01",
        "sk": job_id,
        "job_id": job_id,
        "source": f"s3://docs/{job_id}",
        "day": "2025-03-01",
        "model": SMALL,
        "status": "SUCCEEDED",
        "api": "batch",
        "documents": 1,
        "tokens": 1000,
    }
    return LedgerRecord.from_item(
        {k: Decimal(str(v)) if isinstance(v, float) else v for k, v in {**base, **kw}.items()}
    )


LEDGER = [
    # 0.60 USD through the synchronous API: the Batch API would have cost 0.30.
    item("sync-1", api="sync", documents=5, cost_usd=0.6, aws_cost_usd=0.01),
    # three one-document groups, 0.02 USD of AWS each: 3 documents fit in one group.
    *(item(f"small-{i}", documents=1, cost_usd=0.1, aws_cost_usd=0.02) for i in range(3)),
    # a big batch group with cache hits: 3000 tokens served from the cache.
    item(
        "big",
        documents=40,
        tokens=9000,
        cost_usd=0.3,
        aws_cost_usd=0.03,
        cache_hits=12,
        tokens_saved=3000,
        cost_avoided_usd=0.05,
    ),
    # mixed sync+batch: not counted in the sync share.
    item("mixed", api="sync+batch", documents=4, cost_usd=0.1, aws_cost_usd=0.0),
]


def by_topic(lines: list[Any]) -> dict[str, Any]:
    return {a.topic: a for a in lines if a.topic != "dimensions"}


def test_sync_share_and_half_price_saving() -> None:
    sync = by_topic(advise(LEDGER))["sync_api"]
    assert sync.share == pytest.approx(0.6 / 1.3)  # of the 1.30 USD OpenAI spend
    assert sync.saving_usd == pytest.approx(0.3)
    assert "46%" in sync.text and "1 mixed" in sync.text


def test_small_groups_merge_into_one() -> None:
    small = by_topic(advise(LEDGER))["small_groups"]
    assert small.share == pytest.approx(0.06 / 0.10)  # of the 0.10 USD AWS spend
    assert small.saving_usd == pytest.approx(0.04)  # three groups become one
    assert "3 of 6 group(s)" in small.text and "UploadBatchWindowSeconds" in small.text


def test_cache_hit_rate() -> None:
    cache = by_topic(advise(LEDGER))["cache"]
    assert cache.share == pytest.approx(3000 / (3000 + 14000))  # 14000 billed
    assert cache.saving_usd == 0.0 and "$0.050000" in cache.text


def test_dimensions_per_native_text_embedding_3_model() -> None:
    ledger = [*LEDGER, item("large", model=LARGE), item("ada", model="text-embedding-ada-002")]
    dims = {a.text.split()[0]: a for a in advise(ledger) if a.topic == "dimensions"}
    assert set(dims) == {SMALL, LARGE}
    assert dims[SMALL].share == pytest.approx(1 - 512 / 1536)
    assert dims[LARGE].share == pytest.approx(1 - 512 / 3072) and "83%" in dims[LARGE].text
    assert not [a for a in advise(LEDGER, dimensions=512) if a.topic == "dimensions"]


def test_empty_ledger_and_rendering() -> None:
    lines = advise([])
    assert [a.saving_usd for a in lines] == [0.0, 0.0, 0.0]
    text = render_advice(advise(LEDGER))
    assert text.startswith("\nWhat would save money\n") and "$0.300000" in text
    assert render_advice([]) == ""


def test_malformed_record_is_refused() -> None:
    with pytest.raises(ValueError, match="malformed"):
        LedgerRecord.from_item({"pk": "ledger#2025-03-01", "sk": "x"})


def test_execution_arn_and_retry_names() -> None:
    sm = "arn:aws:states:us-east-1:123456789012:stateMachine:embed-uploads"
    assert ops.execution_arn(sm, "job-1") == (
        "arn:aws:states:us-east-1:123456789012:execution:embed-uploads:job-1"
    )
    assert ops.RETRY_SUFFIX.sub("", "job-1-retry-12") == "job-1"
    assert ops.render_jobs([]) == "no jobs\n"


def test_a_deployed_stack_is_resolved_from_its_resources(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """describe_stack_resources gives the names; `status --stack-name` reads them."""
    import boto3

    from batch_embedder_local.cli import main
    from batch_embedder_local.template import load_template

    resources = load_template()["Resources"]
    body = {
        "Parameters": {"EmbeddingModel": {"Type": "String"}},
        "Resources": {
            "JobsTable": resources["JobsTable"],
            "UsageTable": resources["UsageTable"],
            "UploadQueue": {"Type": "AWS::SQS::Queue"},
            "UploadDeadLetterQueue": {"Type": "AWS::SQS::Queue"},
        },
    }
    boto3.client("cloudformation").create_stack(
        StackName="be",
        TemplateBody=json.dumps(body),
        Parameters=[{"ParameterKey": "EmbeddingModel", "ParameterValue": LARGE}],
    )
    res = ops.resources_from_stack("be")
    assert res.jobs_table.startswith("be-JobsTable") and res.model == LARGE
    assert res.upload_queue_url and "UploadQueue" in res.upload_queue_url
    assert res.state_machine_arn is None

    assert main(["status", "--stack-name", "be", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["queues"]) == 2 and data["open_batches"] == []
    assert data["budget"]["scope"] == f"model:{LARGE}" and data["executions"] is None
    assert main(["jobs", "--failed", "--stack-name", "be"]) == 0  # from the jobs table
    assert capsys.readouterr().out == "no jobs\n"
    assert main(["retry", "job-1", "--stack-name", "be"]) == 2
    assert "retry needs Step Functions" in capsys.readouterr().err
    assert main(["status", "--stack-name", "no-such-stack"]) == 2
