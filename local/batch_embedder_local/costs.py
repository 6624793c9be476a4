"""``batch-embedder costs``: what the finished jobs cost, what they saved, per day and model.

Reads the cost ledger (one record per finished job in the usage table, ``pk =
"ledger#YYYY-MM-DD"``, written by RecordCost and RecordFailure) for a range of UTC days
and reports, per day, per model and in total:

- ``cost_usd``: what was paid (USD);
- ``standard_cost_usd``: the same billed tokens at the synchronous API's standard price;
- ``naive_cost_usd``: what a naive run would have cost (every chunk embedded through the
  synchronous API at standard price, cache hits included; records written before this
  field existed count their standard cost);
- ``saved_usd = standard - cost``, ``saved_pct = saved / standard * 100`` and
  ``saved_vs_naive_pct = (naive - cost) / naive * 100``.

Money stays ``Decimal`` (as DynamoDB returns it) and is rounded only when rendered. Output:
a fixed-width table (default), JSON (``--json``), a shareable Markdown report
(``--markdown FILE``) and a PNG chart of daily spend (``--plot FILE.png``, matplotlib).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from batch_embedder.aws import jobs

#: Where every price in the ledger comes from (named in the Markdown report's footnote).
PRICE_TABLE_SOURCE = "batch_embedder/pricing.py"
#: Default length of the reported range when ``--since`` is not given, in days.
DEFAULT_DAYS = 30
#: Decimals shown for USD amounts (1e-6 USD = 100 tokens at the cheapest batch price).
USD_DECIMALS = 6

_ZERO = Decimal(0)
_HUNDRED = Decimal(100)


# -- the report ----------------------------------------------------------------------


class CostRow(BaseModel):
    """Totals of a group of ledger records (one day, one model, or everything).

    Money in USD as exact ``Decimal`` (serialised as strings in JSON), tokens as billed.
    Percentages are ``None`` when their denominator is zero.
    """

    model_config = ConfigDict(frozen=True)

    label: str
    jobs: int
    failed_jobs: int
    tokens: int
    cost_usd: Decimal
    standard_cost_usd: Decimal
    naive_cost_usd: Decimal
    saved_usd: Decimal
    saved_pct: Decimal | None
    saved_vs_naive_pct: Decimal | None


class CostReport(BaseModel):
    """The ledger summarised over ``since..until`` (UTC days, both included).

    ``days``: one row per day that has records, oldest first (``label`` = ``YYYY-MM-DD``);
    ``models``: one row per model, largest spend first; ``total``: every record.
    """

    model_config = ConfigDict(frozen=True)

    since: date | None
    until: date | None
    days: list[CostRow]
    models: list[CostRow]
    total: CostRow


@dataclass
class _Sums:
    jobs: int = 0
    failed_jobs: int = 0
    tokens: int = 0
    cost: Decimal = _ZERO
    standard: Decimal = _ZERO
    naive: Decimal = _ZERO

    def add(self, rec: _Record) -> None:
        self.jobs += 1
        self.failed_jobs += rec.status == "FAILED"
        self.tokens += rec.tokens
        self.cost += rec.cost
        self.standard += rec.standard
        self.naive += rec.naive

    def row(self, label: str) -> CostRow:
        saved = self.standard - self.cost
        return CostRow(
            label=label,
            jobs=self.jobs,
            failed_jobs=self.failed_jobs,
            tokens=self.tokens,
            cost_usd=self.cost,
            standard_cost_usd=self.standard,
            naive_cost_usd=self.naive,
            saved_usd=saved,
            saved_pct=saved / self.standard * _HUNDRED if self.standard else None,
            saved_vs_naive_pct=(self.naive - self.cost) / self.naive * _HUNDRED
            if self.naive
            else None,
        )


@dataclass(frozen=True)
class _Record:
    day: date
    model: str
    status: str
    tokens: int
    cost: Decimal
    standard: Decimal
    naive: Decimal


def _money(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(str(value))
    return Decimal(value)


def _parse_record(raw: Mapping[str, Any]) -> _Record:
    where = f"ledger record {raw.get('pk', '?')}/{raw.get('sk', raw.get('job_id', '?'))}"
    try:
        day_text = str(raw.get("day") or str(raw["pk"]).removeprefix("ledger#"))
        standard = _money(raw["standard_cost_usd"])
        naive = raw.get("naive_cost_usd")
        return _Record(
            day=date.fromisoformat(day_text),
            model=str(raw["model"]),
            status=str(raw.get("status", "SUCCEEDED")),
            tokens=int(raw["tokens"]),
            cost=_money(raw["cost_usd"]),
            standard=standard,
            naive=standard if naive is None else _money(naive),
        )
    except (KeyError, ValueError, ArithmeticError) as exc:
        raise ValueError(f"{where} is malformed: {exc!r}") from exc


# -- reading and summarising -----------------------------------------------------------


def load_records(usage_table: str, since: date, until: date) -> list[dict[str, Any]]:
    """Every ledger record of the UTC days ``since..until`` (both included), oldest day first.

    One paginated DynamoDB query per day partition (``pk = "ledger#YYYY-MM-DD"``) of the
    usage table; within a day, records come in job-id order. Items are returned as
    DynamoDB gives them (numbers as ``Decimal``: ``tokens`` in tokens, ``*_usd`` in USD).

    Raises:
        ValueError: ``since`` is after ``until``.
    """
    if since > until:
        raise ValueError(f"--since {since} is after --until {until}")
    records: list[dict[str, Any]] = []
    day = since
    while day <= until:
        records.extend(jobs.ledger_records(usage_table, day.isoformat()))
        day += timedelta(days=1)
    return records


def summarise(
    records: Iterable[Mapping[str, Any]],
    since: date | None = None,
    until: date | None = None,
) -> CostReport:
    """Sum ledger records per day, per model and in total.

    Args:
        records: ledger items (``day``, ``model``, ``status``, ``tokens``, ``cost_usd``,
            ``standard_cost_usd`` and optionally ``naive_cost_usd``, which defaults to the
            standard cost); numbers as ``Decimal``, ``int``, ``str`` or ``float``.
        since, until: the reported range (UTC days); default: the first and last day
            found in ``records`` (``None`` when there are none).

    Raises:
        ValueError: a record lacks a field above or holds a value that is not a number.
    """
    parsed = [_parse_record(r) for r in records]
    by_day: dict[date, _Sums] = {}
    by_model: dict[str, _Sums] = {}
    total = _Sums()
    for rec in parsed:
        by_day.setdefault(rec.day, _Sums()).add(rec)
        by_model.setdefault(rec.model, _Sums()).add(rec)
        total.add(rec)
    models = sorted(by_model.items(), key=lambda kv: (-kv[1].cost, kv[0]))
    return CostReport(
        since=since if since is not None else min(by_day, default=None),
        until=until if until is not None else max(by_day, default=None),
        days=[by_day[d].row(d.isoformat()) for d in sorted(by_day)],
        models=[sums.row(name) for name, sums in models],
        total=total.row("total"),
    )


# -- rendering -----------------------------------------------------------------------


def _usd(value: Decimal) -> str:
    return f"{value:,.{USD_DECIMALS}f}"


def _pct(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _range(report: CostReport) -> str:
    if report.since is None or report.until is None:
        return "no days"
    if report.since == report.until:
        return f"{report.since} (UTC)"
    return f"{report.since} to {report.until} (UTC)"


_COLUMNS: list[tuple[str, Callable[[CostRow], str]]] = [
    ("jobs", lambda r: f"{r.jobs:,}"),
    ("failed", lambda r: f"{r.failed_jobs:,}"),
    ("tokens", lambda r: f"{r.tokens:,}"),
    ("cost $", lambda r: _usd(r.cost_usd)),
    ("standard $", lambda r: _usd(r.standard_cost_usd)),
    ("saved $", lambda r: _usd(r.saved_usd)),
    ("saved %", lambda r: _pct(r.saved_pct)),
    ("naive $", lambda r: _usd(r.naive_cost_usd)),
    ("vs naive %", lambda r: _pct(r.saved_vs_naive_pct)),
]


def _text_table(first: str, rows: Sequence[CostRow], total: CostRow) -> list[str]:
    headers = [first] + [name for name, _ in _COLUMNS]
    cells = [[r.label] + [fmt(r) for _, fmt in _COLUMNS] for r in [*rows, total]]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        first_cell = values[0].ljust(widths[0])
        rest = (v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True))
        return "  ".join([first_cell, *rest]).rstrip()

    rule = "-" * len(line(headers))
    return [line(headers), rule, *(line(c) for c in cells[:-1]), rule, line(cells[-1])]


def render_table(report: CostReport) -> str:
    """The report as fixed-width text for a terminal: a per-day and a per-model table.

    Amounts in USD with 6 decimals, tokens with thousands separators, percentages with 1.
    """
    lines = [f"Embedding costs, {_range(report)}"]
    if not report.total.jobs:
        lines.append("no finished jobs recorded in this range")
        return "\n".join(lines) + "\n"
    lines.append("")
    lines += _text_table("day", report.days, report.total)
    lines.append("")
    lines += _text_table("model", report.models, report.total)
    t = report.total
    lines += [
        "",
        f"paid ${_usd(t.cost_usd)}; the standard API would have cost "
        f"${_usd(t.standard_cost_usd)}: saved ${_usd(t.saved_usd)} ({_pct(t.saved_pct)}); "
        f"a naive run ${_usd(t.naive_cost_usd)} ({_pct(t.saved_vs_naive_pct)} saved)",
    ]
    return "\n".join(lines) + "\n"


def render_json(report: CostReport) -> str:
    """The report as indented JSON (USD amounts and percentages as exact decimal strings).

    ``CostReport.model_validate_json(render_json(report)) == report``.
    """
    return report.model_dump_json(indent=2) + "\n"


def _md_table(first: str, rows: Sequence[CostRow], total: CostRow) -> list[str]:
    headers = [first] + [name for name, _ in _COLUMNS]
    out = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join([":---"] + ["---:"] * len(_COLUMNS)) + "|",
    ]
    for row in rows:
        out.append("| " + " | ".join([row.label] + [fmt(row) for _, fmt in _COLUMNS]) + " |")
    out.append(
        "| "
        + " | ".join([f"**{total.label}**"] + [f"**{fmt(total)}**" for _, fmt in _COLUMNS])
        + " |"
    )
    return out


def render_markdown(report: CostReport, title: str = "Embedding costs") -> str:
    """A report to share: headline figures, the per-day and per-model tables, a footnote.

    Headline: total spend, what the standard API would have cost for the same tokens, the
    saving (USD and %) and the comparison with a naive run. The footnote names the price
    table (``batch_embedder/pricing.py``) and the date range. Amounts in USD.
    """
    t = report.total
    lines = [f"# {title}", "", f"{_range(report)}", ""]
    if not t.jobs:
        lines += ["No finished jobs were recorded in this range.", ""]
    else:
        failed = f", {t.failed_jobs:,} of them failed" if t.failed_jobs else ""
        lines += [
            f"- **Spent: ${_usd(t.cost_usd)}** on {t.tokens:,} billed tokens "
            f"over {t.jobs:,} job(s){failed}.",
            f"- **Standard API price** for the same tokens: ${_usd(t.standard_cost_usd)}.",
            f"- **Saved: ${_usd(t.saved_usd)} ({_pct(t.saved_pct)})** "
            "by embedding through the Batch API.",
            f"- **Versus a naive run** (every chunk through the synchronous API at standard "
            f"price, cache hits included): ${_usd(t.naive_cost_usd)}, so "
            f"${_usd(t.naive_cost_usd - t.cost_usd)} ({_pct(t.saved_vs_naive_pct)}) saved.",
            "",
            "## Per day",
            "",
            *_md_table("day (UTC)", report.days, t),
            "",
            "## Per model",
            "",
            *_md_table("model", report.models, t),
            "",
        ]
    lines += [
        "---",
        "",
        f"<sub>Ledger days {_range(report)}. Prices in USD per 1M input tokens from the "
        f"price table `{PRICE_TABLE_SOURCE}` (with `PRICE_OVERRIDES` where set), as recorded "
        "with each job when it finished. Failed jobs count the tokens billed before they "
        "failed.</sub>",
        "",
    ]
    return "\n".join(lines)


def plot_png(report: CostReport, path: str | Path) -> Path:
    """Draw daily spend vs the standard-price spend (and naive, if it differs) to a PNG.

    One point per UTC day of ``since..until`` (days without jobs at 0 USD); x axis dates,
    y axis USD. Uses matplotlib's Agg canvas (no display, no global pyplot state).

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

    cost, standard, naive = (
        series("cost_usd"),
        series("standard_cost_usd"),
        series("naive_cost_usd"),
    )
    fig = Figure(figsize=(10, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if days:
        x = list(range(len(days)))  # one slot per day; labelled with its date below
        ax.plot(x, standard, marker="o", color="tab:red", label="standard API price")
        if naive != standard:
            ax.plot(x, naive, marker="s", linestyle="--", color="tab:gray", label="naive run")
        ax.plot(x, cost, marker="o", color="tab:green", label="paid")
        ax.fill_between(x, cost, standard, color="tab:green", alpha=0.15, label="saved")
        ax.set_xlim(-0.5, len(days) - 0.5)
        ticks = x[:: max(1, math.ceil(len(days) / 12))]
        ax.set_xticks(ticks, [days[i].isoformat() for i in ticks], rotation=30, ha="right")
        ax.legend(loc="upper left")
    else:
        ax.text(0.5, 0.5, "no days in range", ha="center", va="center", transform=ax.transAxes)
    decimals = _axis_decimals(max([*cost, *standard, *naive, 0.0]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"${v:,.{decimals}f}"))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("day (UTC)")
    ax.set_ylabel("USD per day")
    ax.set_title(f"Daily embedding spend, {_range(report)}")
    ax.grid(True, alpha=0.3)
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

    ``--since``/``--until`` (YYYY-MM-DD, UTC), ``--json``, ``--markdown FILE`` (``-`` for
    stdout), ``--plot FILE.png``, ``--table`` and ``--stack-name``.
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
    today UTC), ``json``, ``markdown`` (file path or ``-`` for stdout, which replaces the
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
        report = summarise(load_records(table, since, until), since=since, until=until)
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
        sys.stdout.write(render_json(report))
    elif markdown != "-":
        sys.stdout.write(render_table(report))
    return 0
