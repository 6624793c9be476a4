"""``batch-embedder``: the command line of the local stack and of the cost ledger.

- ``batch-embedder local ingest PATH...``: upload files one by one; the pipe groups them.
- ``batch-embedder local replay EVENTS.jsonl``: deliver S3 events in a given order (replay.py).
- ``batch-embedder local search "query"``: nearest chunks in pgvector.
- ``batch-embedder local costs``: what local runs cost (OpenAI + AWS), ``--by`` day|model|....
- ``batch-embedder local openai-server --port N``: the OpenAI-compatible emulator alone.
- ``batch-embedder costs --stack-name NAME``: the same report for a deployed stack.
- Day-2 (docs/operate.md): ``status``, ``jobs --failed|--running``, ``retry JOB`` and
  ``search "query"`` with ``--stack-name NAME``; ``local status`` and ``local jobs --failed``
  read what the local stack persisted (its executions live only while it runs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .stack import (
    ACCOUNT,
    REGION,
    STACK,
    ExecutionResult,
    LocalStack,
    bucket_name,
    default_home,
    function_environments,
)

if TYPE_CHECKING:
    from batch_embedder.settings import Settings


def _collect(paths: list[str]) -> list[tuple[str, Path]]:
    """``(key, file)`` for every file named or found (recursively) in a named folder."""
    found: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = file.relative_to(path)
                if not any(part.startswith(".") for part in rel.parts):
                    found.append((rel.as_posix(), file))
        elif path.is_file():
            found.append((path.name, path))
        else:
            raise SystemExit(f"batch-embedder: {raw}: no such file or folder")
    return found


def _parse_params(values: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep:
            raise SystemExit(f"batch-embedder: --param {value!r} is not NAME=VALUE")
        params[name] = setting
    return params


def _parse_emulator(values: list[str]) -> dict[str, Any]:
    """``--emulator KEY=VALUE`` switches: any ``EmulatorConfig`` field (``webhook_drop=true``,
    ``fail_next_requests_429=3``, ``batch_outcome=expired``); values are JSON when they
    parse as JSON, else strings. The fault switches: ``outage_seconds=30`` (OpenAI
    unreachable for 30 s from start), ``error_rate_429=0.2`` / ``error_rate_5xx=0.1``
    (probabilities, seeded by ``error_seed=N``), ``batch_outcome=cancelled``,
    ``api_key=other`` (revokes the stack's key: every call gets 401).

    Raises:
        SystemExit: a switch is not NAME=VALUE or names no field of the emulator.
    """
    from .openai_server import EmulatorConfig

    switches: dict[str, Any] = {}
    for value in values:
        name, sep, raw = value.partition("=")
        if not sep:
            raise SystemExit(f"batch-embedder: --emulator {value!r} is not NAME=VALUE")
        if name not in EmulatorConfig.model_fields:
            raise SystemExit(
                f"batch-embedder: --emulator {name}: no such switch; see EmulatorConfig in "
                "local/batch_embedder_local/openai_server/config.py"
            )
        try:
            switches[name] = json.loads(raw)
        except ValueError:
            switches[name] = raw
    return switches


#: Examples shown in the ``--emulator`` help (fields: EmulatorConfig in openai_server/config.py).
_EMULATOR_EXAMPLES = (
    "webhook_drop=true, webhook_forge=true, outage_seconds=30 (OpenAI unreachable for 30 s), "
    "error_rate_429=0.2, error_rate_5xx=0.1, error_seed=7, batch_outcome=cancelled "
    "(or expired, failed), expire_completed_fraction=0.5, api_key=revoked"
)


def _totals(results: list[ExecutionResult]) -> dict[str, Any]:
    """Sums over the executions (money: USD rounded to 9 decimals). ``files`` counts the
    files uploaded; ``cmd_ingest`` sets ``unchanged``, the files not uploaded."""
    rows = [r.as_dict() for r in results]
    return {
        "files": sum(len(r["keys"]) for r in rows),
        "executions": len(rows),
        "succeeded": sum(1 for r in rows if r["status"] == "SUCCEEDED"),
        "failed": sum(1 for r in rows if r["status"] != "SUCCEEDED"),
        "documents": sum(r["documents"] for r in rows),
        "rejected": sum(r["rejected_count"] for r in rows),
        "batches": sum(r["batches"] for r in rows),
        "chunks": sum(r["chunks"] for r in rows),
        "tokens": sum(r["tokens"] for r in rows),
        "repaid_tokens": sum(r["repaid_tokens"] for r in rows),
        "vectors_written": sum(r["vectors_written"] for r in rows),
        "cost_usd": round(sum(r["cost_usd"] for r in rows), 9),
        "aws_cost_usd": round(sum(r["aws_cost_usd"] for r in rows), 9),
        "total_cost_usd": round(sum(r["total_cost_usd"] for r in rows), 9),
        "standard_cost_usd": round(sum(r["standard_cost_usd"] for r in rows), 9),
        "naive_cost_usd": round(sum(r["naive_cost_usd"] for r in rows), 9),
        "cache_hits": sum(r["cache_hits"] for r in rows),
        "tokens_saved": sum(r["tokens_saved"] for r in rows),
        "cost_avoided_usd": round(sum(r["cost_avoided_usd"] for r in rows), 9),
        "unchanged": 0,
    }


def _print_table(results: list[ExecutionResult], totals: dict[str, Any], seconds: float) -> None:
    header = (
        f"{'status':<10} {'docs':>5} {'chunks':>7} {'tokens':>10} {'vectors':>8} "
        f"{'openai $':>11} {'aws $':>11}  group"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        row = r.as_dict()
        print(
            f"{row['status']:<10} {row['documents']:>5} {row['chunks']:>7} {row['tokens']:>10} "
            f"{row['vectors_written']:>8} {row['cost_usd']:>11.6f} {row['aws_cost_usd']:>11.6f}"
            f"  {row['key']}"
        )
        if row["status"] != "SUCCEEDED":
            print(f"{'':>10} -> {row['failed_state']}: {row['cause']}")
        for rejected in row["rejected"]:
            print(f"{'':>10} left out: {rejected}")
    print("-" * len(header))
    print(
        f"{'total':<10} {totals['documents']:>5} {totals['chunks']:>7} {totals['tokens']:>10} "
        f"{totals['vectors_written']:>8} {totals['cost_usd']:>11.6f} "
        f"{totals['aws_cost_usd']:>11.6f}  {totals['files']} file(s) in "
        f"{totals['executions']} execution(s) and {totals['batches']} batch(es); "
        f"{totals['failed']} execution(s) failed; {totals['unchanged']} file(s) unchanged, "
        "not uploaded"
    )
    saved = totals["naive_cost_usd"] - totals["total_cost_usd"]
    naive = (
        f"a naive run (synchronous API, no cache) ${totals['naive_cost_usd']:.6f}: saved "
        f"${saved:.6f}"
        if totals["naive_cost_usd"]
        else "nothing was embedded"
        if not totals["executions"]
        else "the model's tokens are free (a local model)"
    )
    print(
        f"paid ${totals['total_cost_usd']:.6f} (OpenAI ${totals['cost_usd']:.6f} + AWS "
        f"${totals['aws_cost_usd']:.6f}); {naive}; cache hits "
        f"{totals['cache_hits']} chunks ({totals['tokens_saved']} tokens); {seconds:.1f} s"
    )


class _Progress:
    """Live view on stderr: executions per current state, like the console's list."""

    def __init__(self, stack: LocalStack, total: int, started: float) -> None:
        self.stack = stack
        self.total = total
        self.started = started
        self.last = 0.0

    def __call__(self, pending: dict[str, str]) -> None:
        now = time.monotonic()
        if now - self.last < 2.0 and pending:
            return
        self.last = now
        states = Counter(self.stack.current_state(arn) for arn in list(pending)[:200])
        self.total = max(self.total, len(pending))
        done = self.total - len(pending)
        shown = ", ".join(f"{name} {count}" for name, count in states.most_common())
        print(
            f"[{now - self.started:7.1f}s] {done}/{self.total} finished; running: {shown or '-'}",
            file=sys.stderr,
            flush=True,
        )


#: ``local ingest --vectors semantic`` (the default with the emulator): the local model,
#: all-MiniLM-L6-v2, and chunks that fit its 256-word-piece window (``local_model.py``).
SEMANTIC_PARAMETERS = {
    "EmbeddingModel": "local-minilm",
    "EmbeddingDimensions": "0",
    "ChunkTokens": "200",
    "ChunkOverlapTokens": "32",
}


def _ingest_params(args: argparse.Namespace) -> dict[str, str]:
    """Template parameters of ``local ingest``: ``--vectors``, then ``--param`` (wins)."""
    params: dict[str, str] = {}
    if args.openai == "emulator" and args.vectors == "semantic":
        from batch_embedder import local_model

        if local_model.is_installed():
            params.update(SEMANTIC_PARAMETERS)
        else:
            print(
                "batch-embedder: the local model is not installed (pip install "
                "'batch-embedder[local-model]'); using hashed vectors",
                file=sys.stderr,
            )
    params.update(_parse_params(args.param))
    return params


def _open_stack(
    args: argparse.Namespace, home: Path, params: dict[str, str] | None = None
) -> LocalStack:
    """The local stack with the command's ``--param``, ``--openai`` and ``--emulator``."""
    return LocalStack(
        home,
        parameters=_parse_params(args.param) if params is None else params,
        openai=args.openai,
        emulator_config=_parse_emulator(args.emulator),
        log_file=home / "lambda.log",
    )


def _ingest_settings(stack: LocalStack) -> Settings:
    """The settings ChunkAndEstimate will run with under ``stack``'s parameters (the
    template's Globals and the function's own ``Environment``, resolved), without starting
    anything: resources are only named, never created."""
    from batch_embedder.settings import Settings

    from .template import Resolver

    resources = stack.template["Resources"]
    refs = {logical: f"{STACK}-{logical}" for logical in resources}
    attrs: dict[str, dict[str, str]] = {logical: defaultdict(str) for logical in resources}
    pseudo = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::StackName": STACK,
              "AWS::Partition": "aws"}  # fmt: skip
    resolver = Resolver(stack.template, stack.parameters, refs, attrs, pseudo)
    globals_fn = stack.template.get("Globals", {}).get("Function", {})
    env = function_environments(resources, globals_fn, resolver)["ChunkAndEstimateFunction"]
    values: dict[str, Any] = {name.lower(): str(value) for name, value in env.items()}
    return Settings(**values)


def unchanged_files(stack: LocalStack, files: list[tuple[str, Path]]) -> set[str]:
    """Keys of ``files`` whose bytes are already embedded under the same key and the same
    settings: the SHA-256 of the file equals the one ``object_fingerprints`` holds for the
    object's current event (``batch_embedder.db.fingerprints.confirmed``, one query for all
    keys), as ``aws s3 sync`` compares before uploading. Only Postgres is started
    (``postgres.local_database_url``); keys under ``BulkPrefix`` are never skipped.

    Returns:
        The object keys to leave out; empty when nothing was embedded yet.

    Raises:
        psycopg.Error: Postgres could not be queried.
        postgres.LocalPostgresError: the embedded Postgres cannot run here.
    """
    from batch_embedder.db import fingerprints
    from batch_embedder.db.connection import connect

    from .postgres import local_database_url

    paths = {key: path for key, path in files if stack.starts_execution(key)}
    if not paths:
        return set()
    try:
        settings = fingerprints.settings_fingerprint(_ingest_settings(stack))
    except (KeyError, ValueError) as exc:  # the skip only saves work: upload everything
        print(f"batch-embedder: every file is uploaded ({exc!r})", file=sys.stderr)
        return set()
    with connect(local_database_url(stack.home)) as conn:
        stored = fingerprints.confirmed(conn, bucket_name("DocumentsBucket"), paths, settings)
    return {
        key
        for key, fp in stored.items()
        if hashlib.sha256(paths[key].read_bytes()).hexdigest() == fp.content_sha256
    }


def cmd_ingest(args: argparse.Namespace) -> int:
    """Upload files one by one (the pipe groups them), wait, print the summary.

    A file whose bytes are already embedded under the same key and settings is not
    uploaded (:func:`unchanged_files`); when every file is, the stack is not started (only
    Postgres, for the lookup). The summary counts them as ``unchanged``.
    """
    files = _collect(args.paths)
    if not files:
        raise SystemExit("batch-embedder: no files to ingest")
    home = Path(args.home) if args.home else default_home()
    started = time.monotonic()
    stack = _open_stack(args, home, _ingest_params(args))
    skipped = unchanged_files(stack, files)
    todo = [(key, path) for key, path in files if key not in skipped]
    if skipped:
        print(
            f"{len(skipped)} file(s) unchanged (same bytes, same settings, already embedded): "
            "not uploaded",
            file=sys.stderr,
        )
    results: list[ExecutionResult] = []
    if todo:
        args.exit_now = True  # main(): skip the teardown of moto's backends (exit_now)
        with stack:
            events = [stack.upload(key, path.read_bytes()) for key, path in todo]
            delivered = [e for e in events if stack.starts_execution(e["detail"]["object"]["key"])]
            if stack.pipe is not None:  # the last upload is sent: group now, not after the window
                stack.pipe.flush()
            print(
                f"uploaded {len(events)} file(s); the pipe groups them at once (up to "
                f"{stack.parameters['UploadBatchSize']} a group)",
                file=sys.stderr,
            )
            results = stack.wait_for_groups(
                delivered,
                timeout=args.timeout,
                on_progress=None if args.quiet else _Progress(stack, 0, started),
            )
    seconds = time.monotonic() - started
    totals = _totals(results)
    totals["unchanged"] = len(skipped)
    if args.json:
        json.dump(
            {
                "executions": [r.as_dict() for r in results],
                "totals": totals,
                "seconds": round(seconds, 3),
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        _print_table(results, totals, seconds)
    return 0 if totals["failed"] == 0 else 1


def cmd_replay(args: argparse.Namespace) -> int:
    """Run the steps of EVENTS.jsonl on the local stack, print the outcome per key."""
    from .replay import ReplayError, format_report, load_steps, replay

    path = Path(args.events)
    if not path.is_file():
        raise SystemExit(f"batch-embedder: {args.events}: no such file")
    try:
        steps = load_steps(path)
    except ReplayError as exc:
        raise SystemExit(f"batch-embedder: {exc}") from None
    if not steps:
        raise SystemExit(f"batch-embedder: {args.events}: no steps")
    home = Path(args.home) if args.home else default_home()
    report: dict[str, Any] | None = None
    error = ""
    with _open_stack(args, home) as stack:
        try:
            report = replay(stack, steps, concurrent=args.concurrent, timeout=args.timeout)
        except (ReplayError, TimeoutError) as exc:
            error = str(exc)
    if report is None:  # printed once the stack gave stdout back (not to lambda.log)
        print(f"batch-embedder: {error}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print(format_report(report))
    return 0 if report["totals"]["failed"] == 0 else 1


def cmd_search(args: argparse.Namespace) -> int:
    """Embed the query with the same provider and model, print the nearest chunks."""
    from .search import search_local

    hits = search_local(
        args.query,
        k=args.k,
        prefix=args.prefix,
        home=Path(args.home) if args.home else None,
        openai_mode=args.openai,
    )
    if args.json:
        _print_hits(args, hits)
        return 0
    if not hits:
        print("no chunks indexed yet: run `batch-embedder local ingest PATH` first")
        return 1
    _print_hits(args, hits)
    return 0


def _print_hits(args: argparse.Namespace, hits: list[Any]) -> None:
    if args.json:
        json.dump(
            [
                {
                    "key": h.key,
                    "chunk_index": h.chunk_index,
                    "score": round(h.score, 6),
                    "model": h.model,
                    "text": h.text,
                }
                for h in hits
            ],
            sys.stdout,
            indent=2,
        )
        print()
        return
    if not hits:
        print("no chunks found")
    for rank, h in enumerate(hits, 1):
        snippet = " ".join(h.text.split())[:160]
        print(f"{rank}. {h.score:.4f}  {h.key} #{h.chunk_index}  [{h.model}]\n   {snippet}")


def cmd_local_costs(args: argparse.Namespace) -> int:
    """``batch-embedder local costs``: the ledger the local runs kept in BATCH_EMBEDDER_HOME."""
    from . import costs

    home = Path(args.home) if args.home else default_home()
    with LocalStack(home, compute=False) as stack:
        os.environ["USAGE_TABLE"] = stack.refs["UsageTable"]
        if not getattr(args, "dimensions", 0):  # the advice: the stack's own setting
            args.dimensions = int(stack.parameters.get("EmbeddingDimensions") or 0)
        return costs.main(args)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        json.dump(data, sys.stdout, indent=2, default=str)
        print()
    else:
        sys.stdout.write(text)


def _ops_call(func: Any) -> int:
    """Run a day-2 command; a problem the user can fix is a message and exit 2."""
    from botocore.exceptions import BotoCoreError, ClientError

    from .ops import OpsError

    try:
        return int(func())
    except (OpsError, ClientError, BotoCoreError) as exc:
        print(f"batch-embedder: {exc}", file=sys.stderr)
        return 2


def _day2(args: argparse.Namespace, res: Any, *, offline: bool = False) -> int:
    from . import ops

    if args.day2 == "status":
        data = ops.status(res, scan_jobs=offline)
        _emit(args, data, ops.render_status(data))
        return 0
    if args.day2 == "jobs":
        found = ops.list_jobs(res, "running" if args.running else "failed", limit=args.limit)
        _emit(args, [j.as_dict() for j in found], ops.render_jobs(found))
        return 0
    if args.day2 == "retry":
        started = ops.retry(res, args.job, latest=args.latest)
        _emit(args, started, f"started {started['retry']}: {started['execution_arn']}\n")
        return 0
    raise SystemExit(f"batch-embedder: unknown command {args.day2}")


def cmd_day2(args: argparse.Namespace) -> int:
    """``status``/``jobs``/``retry --stack-name NAME``: a deployed stack."""
    from . import ops

    return _ops_call(lambda: _day2(args, ops.resources_from_stack(args.stack_name)))


def cmd_local_day2(args: argparse.Namespace) -> int:
    """``local status``/``local jobs``: the tables the local runs persisted (offline)."""
    from . import ops

    if args.day2 == "retry":
        print(
            "batch-embedder: local executions live only while the stack runs (moto keeps "
            "Step Functions in memory): fix the file and run `batch-embedder local ingest` "
            "again (see docs/operate.md)",
            file=sys.stderr,
        )
        return 2
    home = Path(args.home) if args.home else default_home()
    with LocalStack(home, compute=False) as stack:
        res = ops.resources_from_local(stack, live=False)
        return _ops_call(lambda: _day2(args, res, offline=True))


def cmd_stack_search(args: argparse.Namespace) -> int:
    """``search "query" --stack-name NAME``: the deployed index, through its secrets."""
    from . import ops

    def run() -> int:
        hits = ops.search_stack(
            ops.resources_from_stack(args.stack_name), args.query, k=args.k, prefix=args.prefix
        )
        _print_hits(args, hits)
        return 0 if hits else 1

    return _ops_call(run)


def cmd_migrate(args: argparse.Namespace) -> int:
    """``migrate --stack-name NAME``: apply the schema migrations to the stack's database."""
    from . import ops

    def run() -> int:
        version = ops.migrate_stack(ops.resources_from_stack(args.stack_name))
        print(f"schema at version {version}")
        return 0

    return _ops_call(run)


def _add_day2(sub: Any, *, deployed: bool, func: Any) -> None:
    """``status``, ``jobs`` and ``retry`` under ``sub`` (deployed: --stack-name required)."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="the same data as JSON")
        if deployed:
            p.add_argument("--stack-name", required=True, help="the CloudFormation stack")
        else:
            p.add_argument("--home", help="data folder (default $BATCH_EMBEDDER_HOME)")
        p.set_defaults(func=func)

    status = sub.add_parser(
        "status", help="queue depths, batches in flight, executions, today's budget"
    )
    status.set_defaults(day2="status")
    common(status)
    jobs = sub.add_parser("jobs", help="failed or running jobs with their keys and causes")
    which = jobs.add_mutually_exclusive_group()
    which.add_argument("--failed", action="store_true", help="failed jobs (default)")
    which.add_argument("--running", action="store_true", help="running executions")
    jobs.add_argument("--limit", type=int, default=20, help="newest N (default 20)")
    jobs.set_defaults(day2="jobs")
    common(jobs)
    retry = sub.add_parser("retry", help="start JOB-retry-N with a failed job's input")
    retry.add_argument("job", metavar="JOB", help="the failed execution's name (job id)")
    retry.add_argument(
        "--latest", action="store_true", help="read each object's current version (after a fix)"
    )
    retry.set_defaults(day2="retry")
    common(retry)


def cmd_openai_server(args: argparse.Namespace) -> int:
    """Run the OpenAI-compatible emulator in the foreground."""
    from .openai_server.server import main as server_main

    argv = ["--host", args.host, "--port", str(args.port)]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if args.emulator:
        argv += ["--config", json.dumps(_parse_emulator(args.emulator))]
    return int(server_main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``batch-embedder``."""
    parser = argparse.ArgumentParser(prog="batch-embedder", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    local = sub.add_parser("local", help="the local stack: moto, Postgres, OpenAI emulator")
    lsub = local.add_subparsers(dest="local_command", required=True)

    ingest = lsub.add_parser("ingest", help="upload files and run the workflow on each")
    ingest.add_argument("paths", nargs="+", help="files or folders (recursively)")
    ingest.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ingest.add_argument(
        "--home", help="data folder (default $BATCH_EMBEDDER_HOME or ./.batch-embedder)"
    )
    ingest.add_argument(
        "--openai",
        choices=["emulator", "openai"],
        default="emulator",
        help="emulator (default) or the real API with OPENAI_API_KEY",
    )
    ingest.add_argument(
        "--vectors",
        choices=["semantic", "hashed"],
        default="semantic",
        help="with the emulator: semantic (default; the local model local-minilm, "
        "all-MiniLM-L6-v2, 200-token chunks) or hashed (the emulator's fast feature-hashed "
        "stand-ins for OpenAI's models, as the tests use)",
    )
    ingest.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="template parameter override, e.g. DailyTokenLimit=100000",
    )
    ingest.add_argument(
        "--timeout", type=float, default=3600, help="seconds to wait (default 3600)"
    )
    ingest.add_argument("--quiet", action="store_true", help="no live progress on stderr")
    ingest.add_argument(
        "--emulator",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"an emulator switch (any EmulatorConfig field), e.g. {_EMULATOR_EXAMPLES}",
    )
    ingest.set_defaults(func=cmd_ingest)

    replay = lsub.add_parser(
        "replay", help="deliver S3 events in a given order (EVENTS.jsonl), print each outcome"
    )
    replay.add_argument("events", metavar="EVENTS.jsonl", help="one step a line (see replay.py)")
    replay.add_argument(
        "--concurrent", action="store_true", help="start every execution without waiting"
    )
    replay.add_argument("--json", action="store_true", help="one JSON object on stdout")
    replay.add_argument(
        "--home", help="data folder (default $BATCH_EMBEDDER_HOME or ./.batch-embedder)"
    )
    replay.add_argument("--openai", choices=["emulator", "openai"], default="emulator")
    replay.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE",
        help="template parameter override",
    )  # fmt: skip
    replay.add_argument("--timeout", type=float, default=600, help="seconds (default 600)")
    replay.add_argument(
        "--emulator", action="append", default=[], metavar="KEY=VALUE",
        help=f"an emulator switch, e.g. {_EMULATOR_EXAMPLES}",
    )  # fmt: skip
    replay.set_defaults(func=cmd_replay)

    search = lsub.add_parser("search", help="nearest chunks to a query")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="how many chunks (default 5)")
    search.add_argument("--json", action="store_true")
    search.add_argument("--prefix", default="", help="only keys starting with this")
    search.add_argument("--home")
    search.add_argument("--openai", choices=["emulator", "openai"], default="emulator")
    search.set_defaults(func=cmd_search)

    from . import costs

    local_costs = lsub.add_parser(
        "costs", help="costs (OpenAI + AWS) and savings of local runs, --by day|model|prefix|api"
    )
    costs.add_arguments(local_costs)
    local_costs.add_argument("--home")
    local_costs.set_defaults(func=cmd_local_costs)

    aws_costs = sub.add_parser(
        "costs", help="costs and savings of a deployed stack (--stack-name or --table)"
    )
    costs.add_arguments(aws_costs)
    aws_costs.set_defaults(func=costs.main)

    _add_day2(lsub, deployed=False, func=cmd_local_day2)
    _add_day2(sub, deployed=True, func=cmd_day2)
    stack_search = sub.add_parser("search", help="nearest chunks in a deployed stack's index")
    stack_search.add_argument("query")
    stack_search.add_argument("-k", type=int, default=5, help="how many chunks (default 5)")
    stack_search.add_argument("--json", action="store_true")
    stack_search.add_argument("--prefix", default="", help="only keys starting with this")
    stack_search.add_argument("--stack-name", required=True, help="the CloudFormation stack")
    stack_search.set_defaults(func=cmd_stack_search)
    migrate = sub.add_parser(
        "migrate", help="apply the schema migrations to a deployed stack's database"
    )
    migrate.add_argument("--stack-name", required=True, help="the CloudFormation stack")
    migrate.set_defaults(func=cmd_migrate)

    server = lsub.add_parser("openai-server", help="run the OpenAI-compatible emulator")
    server.add_argument("--port", type=int, default=8787)
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface (default 127.0.0.1; 0.0.0.0 for sam local invoke on Linux)",
    )
    server.add_argument("--data-dir")
    server.add_argument(
        "--emulator",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"a switch (any EmulatorConfig field), e.g. {_EMULATOR_EXAMPLES}",
    )
    server.set_defaults(func=cmd_openai_server)
    return parser


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process (``mallopt(M_ARENA_MAX)``, see mallopt(3):
    https://man7.org/linux/man-pages/man3/mallopt.3.html).

    glibc gives threads their own arenas (up to 8 per core) and keeps freed memory in
    each; the local stack runs many threads (moto, the emulator, the handlers), which held
    about 135 MB that way on a full ingest. Two arenas keep the whole stack under 500 MB
    (``docs/benchmarks.md``), at no measurable cost in speed. Same effect as
    ``MALLOC_ARENA_MAX=2``, which wins when set.

    Returns:
        Whether the cap was applied (Linux with glibc only).
    """
    if sys.platform != "linux" or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_arena_max = -8  # <malloc.h>
    return bool(libc.mallopt(m_arena_max, arenas))


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` without the interpreter's teardown: stdout and stderr
    are flushed and the ``atexit`` handlers run (the embedded Postgres's stop, logging's
    flush), then ``os._exit``. After ``local ingest`` has run the stack, the teardown only
    frees memory (moto's in-memory backends, about 380,000 objects and 2,300 modules) and
    took 1.5 s of a 10 s edit step (docs/benchmarks.md)."""
    import atexit

    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``batch-embedder`` console script (``argv`` None: the process's
    own arguments; after a ``local ingest`` that ran the stack the process then ends at
    once, :func:`exit_now`)."""
    limit_malloc_arenas()
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        if argv is None and getattr(args, "exit_now", False):
            exit_now(code)
        return code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear message, not a stack trace
        from .postgres import LocalPostgresError

        if isinstance(exc, LocalPostgresError):
            print(f"batch-embedder: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
