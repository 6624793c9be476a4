"""``batch-embedder costs``: LedgerRecords read back from DynamoDB, grouped, summed exactly."""

from __future__ import annotations

import argparse
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from batch_embedder.aws.ledger import ledger_key, ledger_store
from batch_embedder.openai import pricing
from batch_embedder.records import LedgerRecord
from batch_embedder_local import cost_report, costs
from batch_embedder_local.moto_tables import create_table
from batch_embedder_local.template import load_template

SMALL, LARGE = "text-embedding-3-small", "text-embedding-3-large"
D = Decimal


def _rec(job_id: str, day: str, model: str, api: str, **kw: Any) -> LedgerRecord:
    status = kw.pop("status", "SUCCEEDED")
    source = f"s3://docs/{job_id}"
    return LedgerRecord(
        job_id=job_id, source=source, day=day, model=model, api=api, status=status, **kw
    )


# OpenAI figures at openai/pricing.py's prices (checked below); AWS figures arbitrary, 9 decimals.
#   a1: 1,000,000 batch tokens: 0.01 paid, 0.02 standard; naive 1,500,000 x 0.02 = 0.03
#   b1: 500,000 through the synchronous API: 0.01 = standard = naive, so total > naive
#   b2: failed after 10,000 billed batch tokens: 0.00065, standard = naive = 0.0013
#   c1: 3,000,000 batch tokens, documents under several folders: 0.195, 0.39, naive 0.52
RECORDS = [
    _rec("a1", "2025-03-01", SMALL, "batch", prefix="tenant-a/", documents=40, batches=2,
         tokens=1_000_000, cost_usd=0.01, aws_cost_usd=0.000123456,
         total_cost_usd=0.010123456, standard_cost_usd=0.02, naive_cost_usd=0.03),
    _rec("b1", "2025-03-02", SMALL, "sync", prefix="tenant-b/", documents=3, tokens=500_000,
         cost_usd=0.01, aws_cost_usd=0.000002345, total_cost_usd=0.010002345,
         standard_cost_usd=0.01, naive_cost_usd=0.01),
    _rec("b2", "2025-03-02", LARGE, "batch", status="FAILED", prefix="tenant-a/", batches=1,
         tokens=10_000, cost_usd=0.00065, aws_cost_usd=0.000050001,
         total_cost_usd=0.000700001, standard_cost_usd=0.0013, naive_cost_usd=0.0013),
    _rec("c1", "2025-03-03", LARGE, "batch+sync", prefix="", documents=120, batches=3,
         tokens=3_000_000, cost_usd=0.195, aws_cost_usd=0.001234567,
         total_cost_usd=0.196234567, standard_cost_usd=0.39, naive_cost_usd=0.52),
]  # fmt: skip
# a2: written before api, prefix, documents, AWS and naive costs existed: api "batch", no
# AWS cost, naive = its standard cost (200,000 large batch tokens: 0.013, standard 0.026).
LEGACY = {"job_id": "a2", "source": "s3://docs/a2", "day": "2025-03-01", "model": LARGE,
          "status": "SUCCEEDED", "tokens": 200_000, "price_per_million_usd": 0.065,
          "cost_usd": 0.013, "standard_cost_usd": 0.026, "saved_usd": 0.013}  # fmt: skip

# label: (groups, failed, documents, batches, tokens, openai, aws, total, naive)
TOTAL = (5, 1, 163, 6, 4_710_000, 0.22865, 0.001410369, 0.230060369, 0.5873)
BY_DAY = {
    "2025-03-01": (2, 0, 40, 2, 1_200_000, 0.023, 0.000123456, 0.023123456, 0.056),
    "2025-03-02": (2, 1, 3, 1, 510_000, 0.01065, 0.000052346, 0.010702346, 0.0113),
    "2025-03-03": (1, 0, 120, 3, 3_000_000, 0.195, 0.001234567, 0.196234567, 0.52),
}
BY_MODEL = {  # largest total first
    LARGE: (3, 1, 120, 4, 3_210_000, 0.20865, 0.001284568, 0.209934568, 0.5473),
    SMALL: (2, 0, 43, 2, 1_500_000, 0.02, 0.000125801, 0.020125801, 0.04),
}
BY_PREFIX = {
    "": (2, 0, 120, 3, 3_200_000, 0.208, 0.001234567, 0.209234567, 0.546),
    "tenant-a/": (2, 1, 40, 3, 1_010_000, 0.01065, 0.000173457, 0.010823457, 0.0313),
    "tenant-b/": (1, 0, 3, 0, 500_000, 0.01, 0.000002345, 0.010002345, 0.01),
}
BY_API = {
    "batch+sync": (1, 0, 120, 3, 3_000_000, 0.195, 0.001234567, 0.196234567, 0.52),
    "batch": (3, 1, 40, 3, 1_210_000, 0.02365, 0.000173457, 0.023823457, 0.0573),
    "sync": (1, 0, 3, 0, 500_000, 0.01, 0.000002345, 0.010002345, 0.01),
}


def _figures(row: cost_report.CostRow) -> tuple[Any, ...]:
    return (
        row.jobs,
        row.failed_jobs,
        row.documents,
        row.batches,
        row.tokens,
        row.openai_usd,
        row.aws_usd,
        row.total_usd,
        row.naive_usd,
    )


def _put_item(table: str, day: str, job_id: str, item: dict[str, Any]) -> None:
    """A raw ledger item, as an older (or broken) writer left it."""
    values = {k: D(str(v)) if isinstance(v, float) else v for k, v in item.items()}
    boto3.resource("dynamodb").Table(table).put_item(Item={**values, **ledger_key(day, job_id)})


def _write_ledger(table: str) -> None:
    for rec in RECORDS:
        ledger_store(table).put(rec)
    _put_item(table, "2025-03-01", "a2", LEGACY)


@pytest.fixture()
def table(aws: None) -> str:
    create_table("UsageTable", "costs-usage")
    _write_ledger("costs-usage")
    return "costs-usage"


def _args(**kw: Any) -> argparse.Namespace:
    base = dict.fromkeys(["since", "until", "markdown", "plot", "table", "stack_name"])
    return argparse.Namespace(**{**base, "json": False, **kw})


def _report(table: str, by: cost_report.GroupBy = "day") -> costs.CostReport:
    since, until = date(2025, 3, 1), date(2025, 3, 3)
    return costs.summarise(costs.load_records(table, since, until), since, until, by=by)


def test_the_hand_figures_match_the_price_table() -> None:
    for rec in [*RECORDS, LedgerRecord.model_validate({**LEGACY, "api": "batch"})]:
        b = pricing.breakdown(rec.model, rec.tokens)
        assert b.standard_usd == D(str(rec.standard_cost_usd))
        assert (b.standard_usd if rec.api == "sync" else b.batch_usd) == D(str(rec.cost_usd))
    for rec in RECORDS:
        assert D(str(rec.cost_usd)) + D(str(rec.aws_cost_usd)) == D(str(rec.total_cost_usd))


def test_items_are_read_through_ledger_record(table: str) -> None:
    raw = boto3.resource("dynamodb").Table(table).get_item(Key=ledger_key("2025-03-01", "a1"))
    assert isinstance(raw["Item"]["cost_usd"], Decimal)  # stored as DynamoDB numbers
    parsed = costs.load_records(table, date(2025, 3, 1), date(2025, 3, 3))
    assert [r.job_id for r in parsed] == ["a1", "a2", "b1", "b2", "c1"]
    assert parsed[0] == RECORDS[0]  # Decimals back to the floats written
    assert ledger_store(table).get("2025-03-01", "a1") == RECORDS[0]
    assert ledger_store(table).get("2025-03-01", "nobody") is None
    legacy = parsed[1]
    assert (legacy.api, legacy.prefix, legacy.aws_cost_usd, legacy.documents) == ("batch", "", 0, 0)
    with pytest.raises(ValueError, match="ledger record ledger#2025-03-01/x is malformed"):
        LedgerRecord.from_item({"pk": "ledger#2025-03-01", "sk": "x", "tokens": D(-1)})


@pytest.mark.parametrize(
    ("by", "expected"),
    [("day", BY_DAY), ("model", BY_MODEL), ("prefix", BY_PREFIX), ("api", BY_API)],
)
def test_grouped_figures_are_exact(
    table: str, by: cost_report.GroupBy, expected: dict[str, tuple[Any, ...]]
) -> None:
    report = _report(table, by)
    assert report.by == by
    assert {r.label: _figures(r) for r in report.groups} == expected
    assert [r.label for r in report.groups] == list(expected)  # days oldest, else largest first
    assert _figures(report.total) == TOTAL
    assert [r.label for r in report.days] == list(BY_DAY)  # the chart's days, whatever `by`
    for row in [*report.groups, report.total]:
        assert D(str(row.openai_usd)) + D(str(row.aws_usd)) == D(str(row.total_usd))
        assert D(str(row.saved_vs_naive_usd)) == D(str(row.naive_usd)) - D(str(row.total_usd))
    t = report.total
    assert t.saved_vs_naive_usd == 0.357239631
    assert t.total_over_naive == round(0.230060369 / 0.5873, 9)
    if by == "api":  # the synchronous group paid AWS on top of the naive price
        assert report.groups[2].saved_vs_naive_usd == -0.000002345


def test_an_empty_range_reports_nothing(aws: None) -> None:
    create_table("UsageTable", "empty-usage")
    report = costs.summarise(costs.load_records("empty-usage", date(2025, 1, 1), date(2025, 1, 2)))
    assert report.total.jobs == 0 and report.total.total_over_naive is None
    assert (report.since, report.until, report.groups) == (None, None, [])
    assert "no finished jobs" in costs.render_table(report)
    assert "No finished jobs" in costs.render_markdown(report)
    with pytest.raises(ValueError, match="cannot group by 'week'"):
        costs.summarise([], by="week")  # type: ignore[arg-type]


def test_table_and_markdown(table: str) -> None:
    text = costs.render_table(_report(table, "prefix"))
    lines = text.splitlines()
    assert lines[0] == "Embedding costs per prefix, 2025-03-01 to 2025-03-03 (UTC)"
    assert lines[2].split() == [
        "prefix",
        "groups",
        "failed",
        "documents",
        "batches",
        "tokens",
        "openai",
        "$",
        "aws",
        "$",
        "total",
        "$",
        "naive",
        "$",
        "saved",
        "$",
        "total/naive",
    ]
    assert lines[4].split()[:2] == ["(mixed)", "2"]
    assert len({len(line) for line in lines[2:5]}) == 1, text  # header, rule, first row
    total_line = next(line for line in lines if line.startswith("total"))
    assert total_line.split()[1:] == [
        "5",
        "1",
        "163",
        "6",
        "4,710,000",
        "0.228650",
        "0.001410",
        "0.230060",
        "0.587300",
        "0.357240",
        "0.392",
    ]
    assert "paid $0.230060 (OpenAI $0.228650 + AWS $0.001410)" in text

    md = costs.render_markdown(_report(table, "api"), title="March embeddings")
    head, _, rest = md.partition("## Per api")
    assert head.startswith("# March embeddings")
    for figure in (
        "**Spent: $0.230060** (OpenAI $0.228650 + AWS $0.001410)",
        "163 document",
        "$0.587300",
        "**$0.357240 saved** (total/naive 0.392)",
    ):
        assert figure in head, figure
    row = "| sync | 1 | 0 | 3 | 0 | 500,000 | 0.010000 | 0.000002 | 0.010002 | 0.010000 |"
    assert row in rest
    assert "| **total** | **5** | **1** | **163** | **6** | **4,710,000** |" in rest
    assert "`batch_embedder/aws_pricing.py`" in rest.split("---")[-1]


def _decimals(value: float) -> int:
    return max(0, -int(D(str(value)).as_tuple().exponent))


def test_json_money_is_numbers_with_at_most_9_decimals(table: str) -> None:
    data = json.loads(costs.render_json(_report(table, "model")))
    assert set(data) == {"since", "until", "by", "groups", "total"}
    assert (data["by"], [g["label"] for g in data["groups"]]) == ("model", [LARGE, SMALL])
    t = data["total"]
    assert (t["openai_usd"], t["aws_usd"], t["total_usd"]) == (0.22865, 0.001410369, 0.230060369)
    assert (t["naive_usd"], t["saved_vs_naive_usd"]) == (0.5873, 0.357239631)
    for row in [*data["groups"], t]:
        for name in ("openai_usd", "aws_usd", "total_usd", "naive_usd", "saved_vs_naive_usd"):
            assert type(row[name]) is float and _decimals(row[name]) <= 9, (name, row[name])


def test_plot_writes_a_png(table: str, tmp_path: Path) -> None:
    out = costs.plot_png(_report(table, "prefix"), tmp_path / "plots" / "daily.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < len(data) < 1_000_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1000, 500)


def test_main_groups_filters_days_and_writes_files(
    table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    costs.add_arguments(parser)
    assert parser.parse_args([]).by == "day"
    md, png = tmp_path / "costs.md", tmp_path / "costs.png"
    argv = ["--table", table, "--since", "2025-03-02", "--until", "2025-03-03", "--json"]
    args = parser.parse_args([*argv, "--by", "api", "--markdown", str(md), "--plot", str(png)])
    assert costs.main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert [g["label"] for g in data["groups"]] == ["batch+sync", "sync", "batch"]
    assert (data["total"]["jobs"], data["total"]["total_usd"]) == (3, 0.206936913)
    assert "## Per api" in md.read_text() and png.read_bytes()[:4] == b"\x89PNG"

    # no `by` in the namespace: per day; default --since: 30 days before --until; USAGE_TABLE
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("USAGE_TABLE", table)
        assert costs.main(_args(until="2025-03-31")) == 0
    out = capsys.readouterr().out
    assert out.startswith("Embedding costs per day, 2025-03-01 to 2025-03-31 (UTC)")
    assert "0.230060" in out and "2025-03-02" in out

    assert costs.main(_args(table=table, since="2025-03-03", until="2025-03-03", markdown="-")) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Embedding costs") and "$0.196235" in out and "day    " not in out

    for bad in (["--since", "March"], ["--by", "week"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_main_reports_usage_errors(table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert costs.main(_args()) == 2
    assert "no usage table" in capsys.readouterr().err
    assert costs.main(_args(table=table, since="2025-03-03", until="2025-03-01")) == 2
    assert "after --until" in capsys.readouterr().err
    assert costs.main(_args(table=table, json=True, markdown="-")) == 2
    assert costs.main(_args(table="no-such-table", until="2025-03-01")) == 2
    assert "ResourceNotFound" in capsys.readouterr().err
    _put_item(table, "2025-03-04", "bad", {"job_id": "bad", "model": SMALL})
    assert costs.main(_args(table=table, since="2025-03-04", until="2025-03-04")) == 2
    assert "ledger record ledger#2025-03-04/bad is malformed" in capsys.readouterr().err


def test_main_reads_the_table_from_a_stack_output(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    usage = load_template()["Resources"]["UsageTable"]
    cfn = boto3.client("cloudformation")
    body = {
        "Resources": {"UsageTable": usage},
        "Outputs": {"UsageTableName": {"Value": {"Ref": "UsageTable"}}},
    }
    cfn.create_stack(StackName="batch-embedder", TemplateBody=json.dumps(body))
    name = costs.stack_output("batch-embedder")
    assert name.startswith("batch-embedder-UsageTable")
    _write_ledger(name)
    args = _args(stack_name="batch-embedder", since="2025-03-03", until="2025-03-03", json=True)
    assert costs.main(args) == 0
    assert json.loads(capsys.readouterr().out)["total"]["total_usd"] == 0.196234567

    body["Outputs"] = {"Other": {"Value": "x"}}
    cfn.create_stack(StackName="no-output", TemplateBody=json.dumps(body))
    assert costs.main(_args(stack_name="no-output")) == 2
    assert "no UsageTableName output (outputs: Other)" in capsys.readouterr().err
