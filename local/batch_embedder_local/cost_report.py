"""The cost ledger summed per group of rows (day, model, prefix or API) and rendered.

It sums :class:`batch_embedder.records.LedgerRecord` records (as
``aws.ledger.LedgerStore.records`` reads them). Per row and in total:

- ``openai_usd`` (the records' ``cost_usd``), ``aws_usd`` (``aws_cost_usd``) and
  ``total_usd = openai_usd + aws_usd``;
- ``naive_usd``: every chunk through the synchronous API at standard price, no cache, no
  AWS (records written before ``naive_cost_usd`` existed count their standard cost);
- ``saved_vs_naive_usd = naive - total`` and ``total_over_naive = total / naive``.

Sums are exact (``Decimal``) and rounded once to 9 decimals (:func:`records.usd`), so a
row's OpenAI and AWS parts add up to its total. Renderers: fixed-width text, JSON (money
as numbers), Markdown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from batch_embedder.records import LedgerRecord, usd

GroupBy = Literal["day", "model", "prefix", "api"]
GROUP_BY: tuple[str, ...] = get_args(GroupBy)
#: Where the prices come from (named in the Markdown report's footnote).
PRICE_SOURCES = "`batch_embedder/pricing.py` (OpenAI) and `batch_embedder/aws_pricing.py` (AWS)"
#: Decimals shown for USD amounts in text and Markdown (JSON carries all 9).
USD_DECIMALS = 6


class CostRow(BaseModel):
    """Totals of a group of ledger records. USD as floats rounded to 9 decimals;
    ``total_over_naive`` is ``None`` when the naive cost is zero."""

    model_config = ConfigDict(frozen=True)

    label: str
    jobs: int
    failed_jobs: int
    documents: int
    batches: int
    tokens: int
    openai_usd: float
    aws_usd: float
    total_usd: float
    naive_usd: float
    saved_vs_naive_usd: float
    total_over_naive: float | None


class CostReport(BaseModel):
    """The ledger over ``since..until`` (UTC days, both included), grouped ``by``.

    ``groups``: one row per day (oldest first) or per model, prefix or API (largest total
    first); ``total``: every record; ``days``: per day whatever ``by`` (for the chart,
    left out of the JSON).
    """

    model_config = ConfigDict(frozen=True)

    since: date | None
    until: date | None
    by: GroupBy = "day"
    groups: list[CostRow]
    total: CostRow
    days: list[CostRow] = Field(default_factory=list, exclude=True)


def _money(value: float) -> Decimal:
    return Decimal(str(value))


def _usd(value: Decimal) -> float:
    return usd(float(value))


@dataclass
class _Sums:
    jobs: int = 0
    failed_jobs: int = 0
    documents: int = 0
    batches: int = 0
    tokens: int = 0
    openai: Decimal = Decimal(0)
    aws: Decimal = Decimal(0)
    naive: Decimal = Decimal(0)

    def add(self, rec: LedgerRecord) -> None:
        self.jobs += 1
        self.failed_jobs += rec.status == "FAILED"
        self.documents += rec.documents
        self.batches += rec.batches
        self.tokens += rec.tokens
        self.openai += _money(rec.cost_usd)
        self.aws += _money(rec.aws_cost_usd)
        has_naive = "naive_cost_usd" in rec.model_fields_set
        self.naive += _money(rec.naive_cost_usd if has_naive else rec.standard_cost_usd)

    @property
    def total(self) -> Decimal:
        return self.openai + self.aws

    def row(self, label: str) -> CostRow:
        total = self.total
        return CostRow(
            label=label,
            jobs=self.jobs,
            failed_jobs=self.failed_jobs,
            documents=self.documents,
            batches=self.batches,
            tokens=self.tokens,
            openai_usd=_usd(self.openai),
            aws_usd=_usd(self.aws),
            total_usd=_usd(total),
            naive_usd=_usd(self.naive),
            saved_vs_naive_usd=_usd(self.naive - total),
            total_over_naive=_usd(total / self.naive) if self.naive else None,
        )


def _key(rec: LedgerRecord, by: GroupBy) -> str:
    return {"day": rec.day, "model": rec.model, "prefix": rec.prefix, "api": rec.api}[by]


def summarise(
    records: Iterable[LedgerRecord],
    since: date | None = None,
    until: date | None = None,
    by: GroupBy = "day",
) -> CostReport:
    """Sum ledger records per ``by`` group, per day and in total.

    ``since``/``until`` default to the first and last day found (``None`` when none).

    Raises:
        ValueError: ``by`` is unknown.
    """
    if by not in GROUP_BY:
        raise ValueError(f"cannot group by {by!r} (one of: {', '.join(GROUP_BY)})")
    groups: dict[str, _Sums] = {}
    days: dict[str, _Sums] = {}
    total = _Sums()
    for rec in records:
        groups.setdefault(_key(rec, by), _Sums()).add(rec)
        days.setdefault(rec.day, _Sums()).add(rec)
        total.add(rec)
    if by == "day":
        ordered = sorted(groups.items())
    else:
        ordered = sorted(groups.items(), key=lambda kv: (-kv[1].total, kv[0]))
    day_range = sorted(date.fromisoformat(d) for d in days)
    return CostReport(
        since=since if since is not None else (day_range[0] if day_range else None),
        until=until if until is not None else (day_range[-1] if day_range else None),
        by=by,
        groups=[sums.row(label) for label, sums in ordered],
        total=total.row("total"),
        days=[days[d].row(d) for d in sorted(days)],
    )


# -- rendering -----------------------------------------------------------------------


def fmt_usd(value: float) -> str:
    """USD with 6 decimals and thousands separators."""
    return f"{value:,.{USD_DECIMALS}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def date_range(report: CostReport) -> str:
    """``since to until (UTC)``, one day, or ``no days``."""
    if report.since is None or report.until is None:
        return "no days"
    if report.since == report.until:
        return f"{report.since} (UTC)"
    return f"{report.since} to {report.until} (UTC)"


def _label(row: CostRow, by: GroupBy) -> str:
    return "(mixed)" if by == "prefix" and not row.label else row.label


_COLUMNS: list[tuple[str, Callable[[CostRow], str]]] = [
    ("groups", lambda r: f"{r.jobs:,}"),
    ("failed", lambda r: f"{r.failed_jobs:,}"),
    ("documents", lambda r: f"{r.documents:,}"),
    ("batches", lambda r: f"{r.batches:,}"),
    ("tokens", lambda r: f"{r.tokens:,}"),
    ("openai $", lambda r: fmt_usd(r.openai_usd)),
    ("aws $", lambda r: fmt_usd(r.aws_usd)),
    ("total $", lambda r: fmt_usd(r.total_usd)),
    ("naive $", lambda r: fmt_usd(r.naive_usd)),
    ("saved $", lambda r: fmt_usd(r.saved_vs_naive_usd)),
    ("total/naive", lambda r: _ratio(r.total_over_naive)),
]


def _cells(report: CostReport) -> list[list[str]]:
    rows = [*report.groups, report.total]
    return [[_label(r, report.by)] + [fmt(r) for _, fmt in _COLUMNS] for r in rows]


def _headline(t: CostRow) -> str:
    return (
        f"paid ${fmt_usd(t.total_usd)} (OpenAI ${fmt_usd(t.openai_usd)} + AWS "
        f"${fmt_usd(t.aws_usd)}); a naive run ${fmt_usd(t.naive_usd)}: saved "
        f"${fmt_usd(t.saved_vs_naive_usd)} (total/naive {_ratio(t.total_over_naive)})"
    )


def render_table(report: CostReport) -> str:
    """The report as fixed-width text: one row per group, a rule, the total, a headline."""
    lines = [f"Embedding costs per {report.by}, {date_range(report)}"]
    if not report.total.jobs:
        return "\n".join([*lines, "no finished jobs recorded in this range"]) + "\n"
    headers = [report.by] + [name for name, _ in _COLUMNS]
    cells = _cells(report)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        rest = (v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True))
        return "  ".join([values[0].ljust(widths[0]), *rest]).rstrip()

    rule = "-" * len(line(headers))
    body = [line(c) for c in cells[:-1]]
    lines += ["", line(headers), rule, *body, rule, line(cells[-1]), "", _headline(report.total)]
    return "\n".join(lines) + "\n"


def render_json(report: CostReport) -> str:
    """The report as indented JSON; USD as numbers with at most 9 decimals."""
    return report.model_dump_json(indent=2) + "\n"


def render_markdown(report: CostReport, title: str = "Embedding costs") -> str:
    """A report to share: headline figures, the per-group table, a footnote on prices."""
    t = report.total
    lines = [f"# {title}", "", date_range(report), ""]
    if not t.jobs:
        lines += ["No finished jobs were recorded in this range.", ""]
    else:
        failed = f", {t.failed_jobs:,} of them failed" if t.failed_jobs else ""
        cells = _cells(report)
        lines += [
            f"- **Spent: ${fmt_usd(t.total_usd)}** (OpenAI ${fmt_usd(t.openai_usd)} + AWS "
            f"${fmt_usd(t.aws_usd)}) on {t.tokens:,} billed tokens, {t.documents:,} "
            f"document(s) in {t.batches:,} batch(es) over {t.jobs:,} group(s){failed}.",
            f"- **Versus a naive run** (every chunk through the synchronous API at standard "
            f"price, no cache, no AWS): ${fmt_usd(t.naive_usd)}, so "
            f"**${fmt_usd(t.saved_vs_naive_usd)} saved** "
            f"(total/naive {_ratio(t.total_over_naive)}).",
            "",
            f"## Per {report.by}",
            "",
            "| " + " | ".join([report.by] + [name for name, _ in _COLUMNS]) + " |",
            "|" + "|".join([":---"] + ["---:"] * len(_COLUMNS)) + "|",
            *("| " + " | ".join(c) + " |" for c in cells[:-1]),
            "| " + " | ".join(f"**{c}**" for c in cells[-1]) + " |",
            "",
        ]
    lines += [
        "---",
        "",
        f"<sub>Ledger days {date_range(report)}. USD at list prices from {PRICE_SOURCES} "
        "(with `PRICE_OVERRIDES` where set), as recorded with each group when it finished. "
        "Failed groups count what was billed before they failed.</sub>",
        "",
    ]
    return "\n".join(lines)


# -- what would save money ---------------------------------------------------------------

#: A group of at most this many documents is "small": it pays a whole workflow's state
#: transitions and Lambda requests for little work.
SMALL_GROUP_DOCUMENTS = 2
#: Documents per group assumed once UploadBatchWindowSeconds is raised (the pipe's batch).
TARGET_GROUP_DOCUMENTS = 10
#: The dimensions suggested for text-embedding-3 models (shortened natively by the API).
SUGGESTED_DIMENSIONS = 512
#: The models' native dimensions (text-embedding-3 accept a shorter ``dimensions``).
NATIVE_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}


class Advice(BaseModel):
    """One line of "What would save money": ``saving_usd`` is the estimated saving over
    the report's range (0 when the line is about storage or what was already saved)."""

    model_config = ConfigDict(frozen=True)

    topic: Literal["sync_api", "small_groups", "cache", "dimensions"]
    saving_usd: float
    share: float | None = Field(description="the fraction the line is about (0..1)")
    text: str


def advise(
    records: Iterable[LedgerRecord], dimensions: int = 0, small: int = SMALL_GROUP_DOCUMENTS
) -> list[Advice]:
    """What would save money, from ledger records.

    - ``sync_api``: the OpenAI spend of groups that went through the synchronous API only
      (``api == "sync"``) and what the Batch API (half price) would save on it;
    - ``small_groups``: the AWS spend of groups of at most ``small`` documents; merging them
      into groups of :data:`TARGET_GROUP_DOCUMENTS` (a longer UploadBatchWindowSeconds)
      saves all but one group's fixed cost per merged group;
    - ``cache``: the content cache's hit rate (tokens served from it over tokens needed)
      and what it already avoided;
    - ``dimensions``: per text-embedding-3 model used at its native size (``dimensions``
      is the stack's EmbeddingDimensions, 0 = native), the storage a 512-dimension vector
      saves (the OpenAI price does not depend on dimensions: saving 0 USD).
    """
    recs = list(records)
    openai = sum((_money(r.cost_usd) for r in recs), Decimal(0))
    lines: list[Advice] = []

    sync = sum((_money(r.cost_usd) for r in recs if r.api == "sync"), Decimal(0))
    mixed = sum(1 for r in recs if r.api not in ("sync", "batch"))
    share = float(sync / openai) if openai else 0.0
    text = (
        f"{share:.0%} of the OpenAI spend (${fmt_usd(_usd(sync))}) went through the "
        f"synchronous API; the Batch API (half price) would save "
        f"${fmt_usd(_usd(sync / 2))}: keep SyncPrefixes to what must be searchable at once"
    )
    if mixed:
        text += f" ({mixed} mixed sync+batch group(s) not counted)"
    lines.append(Advice(topic="sync_api", saving_usd=_usd(sync / 2), share=share, text=text))

    smalls = [r for r in recs if r.documents <= small]
    small_aws = sum((_money(r.aws_cost_usd) for r in smalls), Decimal(0))
    aws = sum((_money(r.aws_cost_usd) for r in recs), Decimal(0))
    small_docs = sum(max(1, r.documents) for r in smalls)
    after = -(-small_docs // TARGET_GROUP_DOCUMENTS) if smalls else 0
    saving = small_aws * (1 - Decimal(after) / len(smalls)) if smalls else Decimal(0)
    share = float(small_aws / aws) if aws else 0.0
    lines.append(
        Advice(
            topic="small_groups",
            saving_usd=_usd(max(saving, Decimal(0))),
            share=share,
            text=(
                f"{len(smalls)} of {len(recs)} group(s) had <= {small} document(s): "
                f"{share:.0%} of the AWS spend (${fmt_usd(_usd(small_aws))}) in state "
                f"transitions and Lambda requests; a longer UploadBatchWindowSeconds "
                f"(~{TARGET_GROUP_DOCUMENTS} documents a group: {after} group(s)) would save "
                f"about ${fmt_usd(_usd(max(saving, Decimal(0))))}"
            ),
        )
    )

    saved_tokens = sum(r.tokens_saved for r in recs)
    needed = saved_tokens + sum(r.tokens for r in recs)
    hits = sum(r.cache_hits for r in recs)
    avoided = sum((_money(r.cost_avoided_usd) for r in recs), Decimal(0))
    rate = saved_tokens / needed if needed else 0.0
    lines.append(
        Advice(
            topic="cache",
            saving_usd=0.0,
            share=rate,
            text=(
                f"cache hit rate {rate:.0%} ({hits:,} chunk(s), {saved_tokens:,} tokens): "
                f"already avoided ${fmt_usd(_usd(avoided))}; re-uploading unchanged "
                "content costs nothing, changed content only its new chunks"
            ),
        )
    )

    for model in sorted({r.model for r in recs}):
        native = NATIVE_DIMENSIONS.get(model)
        if native is None or (dimensions and dimensions != native):
            continue
        cut = 1 - SUGGESTED_DIMENSIONS / native
        lines.append(
            Advice(
                topic="dimensions",
                saving_usd=0.0,
                share=cut,
                text=(
                    f"{model} at its native {native} dimensions: EmbeddingDimensions="
                    f"{SUGGESTED_DIMENSIONS} would cut vector storage (and index memory) by "
                    f"{cut:.0%} ({4 * (native - SUGGESTED_DIMENSIONS):,} bytes a chunk); the "
                    "OpenAI price is the same, re-embedding is needed"
                ),
            )
        )
    return lines


def render_advice(lines: Sequence[Advice]) -> str:
    """The "What would save money" section as text, one line each with its saving."""
    if not lines:
        return ""
    out = ["", "What would save money"]
    for a in lines:
        saving = f"${fmt_usd(a.saving_usd)}" if a.saving_usd else "-"
        out.append(f"  {saving:>12}  {a.text}")
    return "\n".join(out) + "\n"
