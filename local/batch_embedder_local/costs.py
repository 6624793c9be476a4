"""``batch-embedder costs``: what the finished groups cost (OpenAI + AWS) and saved vs naive.

Reads the cost ledger (one :class:`~batch_embedder.records.LedgerRecord` per group of
uploads in the usage table, ``pk = "ledger#YYYY-MM-DD"``, ``sk = job_id``, written by
RecordCost and RecordFailure) for a range of UTC days and reports it grouped ``--by day``
(default), ``model``, ``prefix`` or ``api`` (see :mod:`.cost_report` for the figures).
Output: a fixed-width table (default), JSON (``--json``, USD as numbers with at most 9
decimals), a shareable Markdown report (``--markdown FILE``) and a PNG chart of daily spend,
OpenAI and AWS stacked, against the naive cost (``--plot FILE.png``, matplotlib).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import cast

from batch_embedder.aws.ledger import ledger_store
from batch_embedder.records import LedgerRecord

from .cost_report import (
    GROUP_BY,
    CostReport,
    CostRow,
    GroupBy,
    advise,
    date_range,
    render_advice,
    render_json,
    render_markdown,
    render_table,
    summarise,
)

__all__ = [
    "CostReport",
    "CostRow",
    "CostsError",
    "add_arguments",
    "load_records",
    "main",
    "plot_png",
    "render_json",
    "render_markdown",
    "render_table",
    "stack_output",
    "summarise",
]

#: Default length of the reported range when ``--since`` is not given, in days.
DEFAULT_DAYS = 30


# -- reading and summarising -----------------------------------------------------------


def load_records(usage_table: str, since: date, until: date) -> list[LedgerRecord]:
    """Every ledger record of the UTC days ``since..until`` (both included), oldest day first.

    One paginated DynamoDB query per day partition (``pk = "ledger#YYYY-MM-DD"``) of the
    usage table (``aws.ledger.LedgerStore.records``); within a day, records come in job-id
    order (``tokens`` in tokens, ``*_usd`` in USD).

    Raises:
        ValueError: ``since`` is after ``until``, or a stored record is malformed.
    """
    if since > until:
        raise ValueError(f"--since {since} is after --until {until}")
    ledger = ledger_store(usage_table)
    records: list[LedgerRecord] = []
    day = since
    while day <= until:
        records.extend(ledger.records(day.isoformat()))
        day += timedelta(days=1)
    return records


# -- the chart ---------------------------------------------------------------


def plot_png(report: CostReport, path: str | Path) -> Path:
    """Draw daily spend, OpenAI and AWS stacked, against the naive cost, to a PNG.

    One bar per UTC day of ``since..until`` (days without groups at 0 USD), whatever the
    report's grouping; x axis dates, y axis USD. Uses matplotlib's Agg canvas (no display,
    no global pyplot state).

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    out = Path(path)
    by_day = {date.fromisoformat(r.label): r for r in report.days}
    days: list[date] = []
    if report.since is not None and report.until is not None:
        day = report.since
        while day <= report.until:
            days.append(day)
            day += timedelta(days=1)

    def series(field: str) -> list[float]:
        return [float(getattr(by_day[d], field)) if d in by_day else 0.0 for d in days]

    openai, aws, naive = series("openai_usd"), series("aws_usd"), series("naive_usd")
    fig = Figure(figsize=(10, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if days:
        x = list(range(len(days)))  # one slot per day; labelled with its date below
        ax.bar(x, openai, color="tab:green", label="OpenAI")
        ax.bar(x, aws, bottom=openai, color="tab:orange", label="AWS")
        ax.plot(x, naive, marker="s", linestyle="--", color="tab:gray", label="naive run")
        ax.set_xlim(-0.5, len(days) - 0.5)
        ticks = x[:: max(1, math.ceil(len(days) / 12))]
        ax.set_xticks(ticks, [days[i].isoformat() for i in ticks], rotation=30, ha="right")
        ax.legend(loc="upper left")
    else:
        ax.text(0.5, 0.5, "no days in range", ha="center", va="center", transform=ax.transAxes)
    totals = [o + a for o, a in zip(openai, aws, strict=True)]
    decimals = _axis_decimals(max([*totals, *naive, 0.0]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"${v:,.{decimals}f}"))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("day (UTC)")
    ax.set_ylabel("USD per day")
    ax.set_title(f"Daily embedding spend, {date_range(report)}")
    ax.grid(True, axis="y", alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _axis_decimals(top: float) -> int:
    """Decimals of the USD axis labels: two significant digits of the largest value."""
    if top <= 0 or top >= 1:
        return 2
    return min(9, max(2, 2 - math.floor(math.log10(top))))


# -- the command -----------------------------------------------------------------------


def _iso_day(value: str) -> str:
    try:
        date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``batch-embedder costs`` to ``parser``.

    ``--since``/``--until`` (YYYY-MM-DD, UTC), ``--by day|model|prefix|api``, ``--json``,
    ``--markdown FILE`` (``-`` for stdout), ``--plot FILE.png``, ``--table`` and
    ``--stack-name``.
    """
    parser.add_argument(
        "--since",
        type=_iso_day,
        metavar="YYYY-MM-DD",
        help=f"first UTC day (default: {DEFAULT_DAYS} days before --until)",
    )
    parser.add_argument(
        "--until", type=_iso_day, metavar="YYYY-MM-DD", help="last UTC day (default: today)"
    )
    parser.add_argument(
        "--by",
        choices=GROUP_BY,
        default="day",
        help="one row per day (default), model, prefix (common top-level folder) or api",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of a table"
    )
    parser.add_argument(
        "--markdown",
        metavar="FILE",
        help="write a shareable Markdown report to FILE ('-' for stdout)",
    )
    parser.add_argument("--plot", metavar="FILE.png", help="draw daily spend to a PNG file")
    parser.add_argument(
        "--table", help="usage table name (default: --stack-name's output, then $USAGE_TABLE)"
    )
    parser.add_argument(
        "--stack-name",
        help="read the usage table from this CloudFormation stack's UsageTableName output",
    )
    parser.add_argument(
        "--dimensions",
        type=int,
        default=0,
        help="the stack's EmbeddingDimensions, for the advice (default 0: native)",
    )


class CostsError(Exception):
    """A problem the user can fix (no table, bad range, stack without the output)."""


def stack_output(stack_name: str, output_key: str = "UsageTableName") -> str:
    """The value of ``output_key`` among the outputs of CloudFormation stack ``stack_name``.

    Uses the default boto3 session (region and credentials from the environment).

    Raises:
        CostsError: the stack has no such output.
    """
    import boto3

    cfn = boto3.client("cloudformation")
    stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    if output_key not in outputs:
        found = ", ".join(sorted(outputs)) or "none"
        raise CostsError(f"stack {stack_name!r} has no {output_key} output (outputs: {found})")
    return str(outputs[output_key])


def _usage_table(args: argparse.Namespace) -> str:
    table: str | None = getattr(args, "table", None)
    if table:
        return table
    stack_name: str | None = getattr(args, "stack_name", None)
    if stack_name:
        return stack_output(stack_name)
    env = os.environ.get("USAGE_TABLE")
    if env:
        return env
    raise CostsError("no usage table: pass --table NAME or --stack-name STACK, or set USAGE_TABLE")


def _date_range(args: argparse.Namespace) -> tuple[date, date]:
    until_text: str | None = getattr(args, "until", None)
    since_text: str | None = getattr(args, "since", None)
    try:
        until = date.fromisoformat(until_text) if until_text else datetime.now(UTC).date()
        since = (
            date.fromisoformat(since_text) if since_text else until - timedelta(days=DEFAULT_DAYS)
        )
    except ValueError as exc:
        raise CostsError(f"bad date: {exc}") from None
    if since > until:
        raise CostsError(f"--since {since} is after --until {until}")
    return since, until


def main(args: argparse.Namespace) -> int:
    """Run ``batch-embedder costs``: read the ledger, print a table (or JSON), write files.

    ``args``: ``since``/``until`` (``YYYY-MM-DD`` or None: 30 days before today UTC /
    today UTC), ``by`` (``day``, the default when absent, ``model``, ``prefix``, ``api``),
    ``json``, ``markdown`` (file path or ``-`` for stdout, which replaces the
    table), ``plot`` (PNG path), ``table`` and ``stack_name``. The usage table is
    ``--table``, else the ``UsageTableName`` output of ``--stack-name``, else
    ``$USAGE_TABLE``. AWS calls use the default boto3 session.

    Returns:
        0 on success, 2 on a problem the user can fix (message on stderr).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    want_json = bool(getattr(args, "json", False))
    markdown: str | None = getattr(args, "markdown", None)
    plot: str | None = getattr(args, "plot", None)
    try:
        if want_json and markdown == "-":
            raise CostsError("--json and --markdown - both write to stdout; pick one")
        since, until = _date_range(args)
        table = _usage_table(args)
        by = cast(GroupBy, getattr(args, "by", None) or "day")
        records = load_records(table, since, until)
        report = summarise(records, since, until, by=by)
        advice = advise(records, dimensions=int(getattr(args, "dimensions", 0) or 0))
    except (CostsError, ValueError, ClientError, BotoCoreError) as exc:
        print(f"batch-embedder costs: {exc}", file=sys.stderr)
        return 2
    if markdown == "-":
        sys.stdout.write(render_markdown(report))
    elif markdown:
        Path(markdown).write_text(render_markdown(report), encoding="utf-8")
        print(f"wrote {markdown}", file=sys.stderr)
    if plot:
        print(f"wrote {plot_png(report, plot)}", file=sys.stderr)
    if want_json:
        data = json.loads(render_json(report))
        data["advice"] = [a.model_dump() for a in advice]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif markdown != "-":
        sys.stdout.write(render_table(report))
        if report.total.jobs:
            sys.stdout.write(render_advice(advice))
    return 0
