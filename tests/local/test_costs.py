"""``batch-embedder costs``: the ledger read back, summed exactly and rendered."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from batch_embedder import pricing
from batch_embedder.aws import clients, dynamodb, jobs
from batch_embedder_local import costs
from batch_embedder_local.moto_tables import create_table
from batch_embedder_local.template import load_template

SMALL, LARGE = "text-embedding-3-small", "text-embedding-3-large"
# USD per 1M tokens, as in batch_embedder/pricing.py (checked below).
PRICES = {SMALL: {"standard": 0.02, "batch": 0.01}, LARGE: {"standard": 0.13, "batch": 0.065}}

# (day, job, model, api, status, billed tokens, cost, standard cost, naive cost or None)
#   a1: 1,000,000 x 0.01/1M = 0.01 paid, x 0.02 = 0.02 standard; naive embeds 1,500,000
#       tokens (cache hits included) x 0.02 = 0.03
#   a2: 200,000 x 0.065 = 0.013, x 0.13 = 0.026; written before naive_cost_usd existed
#   b1: 500,000 through the synchronous API: 0.01 paid = standard = naive
#   b2: failed after 10,000 billed tokens: 0.00065, 0.0013, naive 0.0013
#   c1: 3,000,000 x 0.065 = 0.195, x 0.13 = 0.39; naive 4,000,000 x 0.13 = 0.52
JOBS: list[tuple[str, str, str, str | None, str, int, float, float, float | None]] = [
    ("2025-03-01", "a1", SMALL, "batch", "SUCCEEDED", 1_000_000, 0.01, 0.02, 0.03),
    ("2025-03-01", "a2", LARGE, None, "SUCCEEDED", 200_000, 0.013, 0.026, None),
    ("2025-03-02", "b1", SMALL, "sync", "SUCCEEDED", 500_000, 0.01, 0.01, 0.01),
    ("2025-03-02", "b2", LARGE, "batch", "FAILED", 10_000, 0.00065, 0.0013, 0.0013),
    ("2025-03-03", "c1", LARGE, "batch", "SUCCEEDED", 3_000_000, 0.195, 0.39, 0.52),
]
D = Decimal


def _write_ledger(table: str) -> None:
    for day, job_id, model, api, status, tokens, cost, standard, naive in JOBS:
        price = PRICES[model]["standard" if api == "sync" else "batch"]
        record: dict[str, Any] = {
            "job_id": job_id,
            "source": f"s3://docs/{job_id}.md",
            "day": day,
            "model": model,
            "status": status,
            "tokens": tokens,
            "price_per_million_usd": price,
            "cost_usd": cost,
            "standard_cost_usd": standard,
            "saved_usd": standard - cost,
        }
        if naive is not None:
            record["naive_cost_usd"] = naive
        if api is not None:
            record["api"] = api
        jobs.put_ledger_record(table, day, job_id, record)


def _create_usage_table(name: str) -> str:
    create_table("UsageTable", name)
    return name


@pytest.fixture()
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "USAGE_TABLE", "PRICE_OVERRIDES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        dynamodb.reset()
        clients.reset()
        yield
    dynamodb.reset()
    clients.reset()


@pytest.fixture()
def table(aws: None) -> str:
    name = _create_usage_table("costs-usage")
    _write_ledger(name)
    return name


def _args(**kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = {
        "since": None,
        "until": None,
        "json": False,
        "markdown": None,
        "plot": None,
        "table": None,
        "stack_name": None,
    }
    return argparse.Namespace(**{**base, **kw})


def _report(table: str) -> costs.CostReport:
    from datetime import date

    since, until = date(2025, 3, 1), date(2025, 3, 3)
    return costs.summarise(costs.load_records(table, since, until), since, until)


def test_the_hand_figures_match_the_price_table() -> None:
    for _day, _job, model, api, _status, tokens, cost, standard, _naive in JOBS:
        price = pricing.PRICES[model]
        assert float(price.standard) == PRICES[model]["standard"]
        assert float(price.batch) == PRICES[model]["batch"]
        b = pricing.breakdown(model, tokens)
        assert b.standard_usd == D(str(standard))
        assert (b.standard_usd if api == "sync" else b.batch_usd) == D(str(cost))


def test_summary_totals_are_exact(table: str) -> None:
    records = costs.load_records(table, *_days("2025-03-01", "2025-03-03"))
    assert [r["day"] for r in records] == ["2025-03-01"] * 2 + ["2025-03-02"] * 2 + ["2025-03-03"]
    assert isinstance(records[0]["cost_usd"], Decimal)
    report = costs.summarise(records)
    t = report.total
    assert (t.jobs, t.failed_jobs, t.tokens) == (5, 1, 4_710_000)
    assert t.cost_usd == D("0.22865")  # 0.01 + 0.013 + 0.01 + 0.00065 + 0.195
    assert t.standard_cost_usd == D("0.4473")  # 0.02 + 0.026 + 0.01 + 0.0013 + 0.39
    assert t.naive_cost_usd == D("0.5873")  # 0.03 + 0.026 (old: = standard) + 0.01 + 0.0013 + 0.52
    assert t.saved_usd == D("0.21865")
    assert t.saved_pct == D("0.21865") / D("0.4473") * 100
    assert t.saved_vs_naive_pct == D("0.35865") / D("0.5873") * 100
    assert f"{t.saved_pct:.2f}" == "48.88"
    assert f"{t.saved_vs_naive_pct:.2f}" == "61.07"

    days = {r.label: r for r in report.days}
    assert list(days) == ["2025-03-01", "2025-03-02", "2025-03-03"]
    assert (days["2025-03-01"].cost_usd, days["2025-03-01"].naive_cost_usd) == (
        D("0.023"),
        D("0.056"),
    )
    assert days["2025-03-02"].cost_usd == D("0.01065")
    assert days["2025-03-02"].saved_usd == D("0.00065")
    assert days["2025-03-02"].failed_jobs == 1
    assert days["2025-03-03"].saved_pct == D(50)

    models = report.models
    assert [m.label for m in models] == [LARGE, SMALL]  # largest spend first
    assert (models[0].jobs, models[0].tokens, models[0].cost_usd) == (3, 3_210_000, D("0.20865"))
    assert (models[0].standard_cost_usd, models[0].naive_cost_usd) == (D("0.4173"), D("0.5473"))
    assert (models[1].jobs, models[1].tokens, models[1].cost_usd) == (2, 1_500_000, D("0.02"))
    assert models[1].saved_pct == D("0.01") / D("0.03") * 100
    assert (report.since, report.until) == _days("2025-03-01", "2025-03-03")


def test_an_empty_range_reports_nothing(aws: None) -> None:
    name = _create_usage_table("empty-usage")
    report = costs.summarise(costs.load_records(name, *_days("2025-01-01", "2025-01-02")))
    assert report.total.jobs == 0 and report.total.saved_pct is None
    assert "no finished jobs" in costs.render_table(report)
    assert "No finished jobs" in costs.render_markdown(report)


def test_table_markdown_and_json(table: str) -> None:
    report = _report(table)
    text = costs.render_table(report)
    assert "2025-03-02" in text and LARGE in text
    total_line = next(line for line in text.splitlines() if line.startswith("total"))
    assert "4,710,000" in total_line and "0.228650" in total_line and "48.9%" in total_line
    widths = {len(line) for line in text.splitlines()[2:7]}  # header, rule, 3 days
    assert len(widths) == 1, text

    md = costs.render_markdown(report, title="March embeddings")
    head, _, rest = md.partition("## Per day")
    assert head.startswith("# March embeddings")
    for figure in ("$0.228650", "$0.447300", "$0.218650 (48.9%)", "$0.587300", "(61.1%)"):
        assert figure in head, figure
    per_day, _, per_model = rest.partition("## Per model")
    assert "| 2025-03-01 | 2 | 0 | 1,200,000 | 0.023000 |" in per_day
    assert "| **total** | **5** | **1** | **4,710,000** |" in per_day
    assert f"| {LARGE} | 3 | 1 | 3,210,000 | 0.208650 |" in per_model
    assert "`batch_embedder/pricing.py`" in per_model
    assert "2025-03-01 to 2025-03-03" in per_model.split("---")[-1]

    raw = costs.render_json(report)
    assert costs.CostReport.model_validate_json(raw) == report
    data = json.loads(raw)
    assert data["total"]["cost_usd"] == "0.22865"
    assert data["days"][0]["label"] == "2025-03-01"


def test_plot_writes_a_png(table: str, tmp_path: Path) -> None:
    out = costs.plot_png(_report(table), tmp_path / "plots" / "daily.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < len(data) < 1_000_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1000, 500)


def test_main_filters_days_and_writes_files(
    table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    costs.add_arguments(parser)
    md, png = tmp_path / "costs.md", tmp_path / "costs.png"
    argv = ["--table", table, "--since", "2025-03-02", "--until", "2025-03-03", "--json"]
    args = parser.parse_args([*argv, "--markdown", str(md), "--plot", str(png)])
    assert costs.main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["label"] for d in data["days"]] == ["2025-03-02", "2025-03-03"]
    assert D(data["total"]["cost_usd"]) == D("0.20565")  # 0.01 + 0.00065 + 0.195
    assert data["total"]["jobs"] == 3
    assert "$0.205650" in md.read_text() and png.read_bytes()[:4] == b"\x89PNG"

    # default --since: 30 days before --until; the table goes to stdout; USAGE_TABLE used
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("USAGE_TABLE", table)
        assert costs.main(_args(until="2025-03-31")) == 0
    out = capsys.readouterr().out
    assert out.startswith("Embedding costs, 2025-03-01 to 2025-03-31 (UTC)")
    assert "0.228650" in out

    assert costs.main(_args(table=table, since="2025-03-03", until="2025-03-03", markdown="-")) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Embedding costs") and "$0.195000" in out and "day    " not in out

    with pytest.raises(SystemExit):
        parser.parse_args(["--since", "March"])


def test_main_reports_usage_errors(table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert costs.main(_args()) == 2
    assert "no usage table" in capsys.readouterr().err
    assert costs.main(_args(table=table, since="2025-03-03", until="2025-03-01")) == 2
    assert "after --until" in capsys.readouterr().err
    assert costs.main(_args(table=table, json=True, markdown="-")) == 2
    assert costs.main(_args(table="no-such-table", until="2025-03-01")) == 2
    assert "ResourceNotFound" in capsys.readouterr().err


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
    assert json.loads(capsys.readouterr().out)["total"]["cost_usd"] == "0.195"

    body["Outputs"] = {"Other": {"Value": "x"}}
    cfn.create_stack(StackName="no-output", TemplateBody=json.dumps(body))
    assert costs.main(_args(stack_name="no-output")) == 2
    assert "no UsageTableName output (outputs: Other)" in capsys.readouterr().err


def _days(since: str, until: str) -> tuple[Any, Any]:
    from datetime import date

    return date.fromisoformat(since), date.fromisoformat(until)
