"""Side by side: batch-embedder against LangChain, LlamaIndex and a naive asyncio script.

Issue 10's table on one machine, in one command. Every tool gets:

- the same corpus: the 497 ``.rst.txt`` files of the Python 3.11 documentation
  (``run.corpus()``, fetched once with ``apt-get download python3.11-doc``), or the first
  ``--limit N`` of them;
- the same chunking: windows of 512 cl100k_base tokens overlapping by 64;
- the same OpenAI-compatible emulator (``local/batch_embedder_local/openai_server``), with
  the same switches (rate limits off; batch lifecycle phases 0 s unless ``--batch-wait``):
  the peers share one ``batch-embedder local openai-server`` subprocess; batch-embedder's
  ``local ingest`` starts the same emulator in its own process (the CLI has no switch to
  use an external one), with the same ``--emulator`` switches and the same model
  (``--vectors hashed``: the emulator's text-embedding-3-small, not the local MiniLM);
- the same Postgres: one embedded server (``batch_embedder_local.postgres``), one database
  per tool; the peers create an HNSW index (``vector_cosine_ops``) before their first row,
  batch-embedder has its own schema's (migrated by ``local ingest``);
- its own virtual environment (``benchmarks/.work/peers/<tool>/venv``, pinned versions
  from ``PEER_REQUIREMENTS``, installed by this script with pip), running a driver from
  ``benchmarks/peers/``.

Three steps per tool: a first ingest; a re-ingest after editing 10% of the files (one
paragraph rewritten in each, ``incremental.edit``, the same files for every tool, seed 42);
an identical re-upload of the edited tree (``local ingest`` uploads only the files whose
bytes are not embedded yet, ``unchanged`` in its totals, as the peers' record managers and
the naive script's sha256 check skip theirs). Each step is one command, timed from its start
to its exit (wall-clock seconds, interpreter start included). Tokens billed: the shared
emulator's ``GET /_emulator/stats`` ``billed_tokens`` before and after the step (the
peers), or ``totals.tokens`` of ``local ingest --json`` (batch-embedder, whose emulator
lives in its process). Peak RSS: ``ru_maxrss`` of the step's process from ``os.wait4``
(the largest resident set of that process, MB = 2**20 bytes), the maximum over the steps;
Postgres and the shared emulator are not counted for anyone.

The emulator's simulated batch wait is each batch's ``batch_validating_seconds +
batch_in_progress_seconds + batch_finalizing_seconds`` (``EmulatorConfig``, 0.9 s by
default). By default those are 0, so batch-embedder's first ingest excludes the simulated
wait and nothing else; the wait the default lifecycle would add is reported separately as
batches x 0.9 s (a sum over batches, an upper bound on the wall-clock it adds).

Prints the table, or ``--json``. Asserts nothing.

Usage: ``python benchmarks/peers.py [--tools langchain,llamaindex,naive,batch-embedder]
[--limit N] [--json] [--batch-wait]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine
from incremental import edit
from run import WORK, corpus, files

from batch_embedder_local.openai_server import EmulatorConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DRIVERS = HERE / "peers"
PEERS_WORK = WORK / "peers"
BIN = Path(sys.executable).parent
MODEL = "text-embedding-3-small"
DIMENSIONS = 1536
CHUNK_TOKENS = 512
OVERLAP_TOKENS = 64
EDIT_FRACTION = 0.1
API_KEY = "sk-peers-benchmark"

#: Pinned requirements of each peer's own virtual environment (PyPI names, versions).
PEER_REQUIREMENTS: dict[str, list[str]] = {
    "langchain": [
        "langchain-core==1.8.3",
        "langchain-classic==1.0.8",
        "langchain-openai==1.8.1",
        "langchain-postgres==0.0.19",
        "langchain-text-splitters==1.1.3",
        "psycopg[binary]==3.3.9",
        "tiktoken==0.14.0",
    ],
    "llamaindex": [
        "llama-index-core==0.14.25",
        "llama-index-embeddings-openai==0.7.0",
        "llama-index-vector-stores-postgres==0.9.0",
        "tiktoken==0.14.0",
    ],
    "naive": [
        "openai==3.60.0",
        "psycopg[binary]==3.3.9",
        "pgvector==0.5.1",
        "tiktoken==0.14.0",
    ],
}
TOOLS = ("langchain", "llamaindex", "naive", "batch-embedder")
LABELS = {
    "langchain": "LangChain `index()` + PGVector + CacheBackedEmbeddings (HNSW)",
    "llamaindex": "LlamaIndex IngestionPipeline + PGVectorStore (HNSW)",
    "naive": "a naive asyncio script (HNSW)",
    "batch-embedder": "**batch-embedder `local ingest`**",
}
STEPS = ("first", "edit", "reupload")
#: The emulator's default batch lifecycle, seconds per batch phase (EmulatorConfig in
#: local/batch_embedder_local/openai_server/config.py).
LIFECYCLE: dict[str, float] = {
    name: float(EmulatorConfig.model_fields[name].default)
    for name in (
        "batch_validating_seconds",
        "batch_in_progress_seconds",
        "batch_finalizing_seconds",
    )
}


@dataclass
class Step:
    """One timed command: wall seconds, tokens billed, peak RSS (MB), its own figures."""

    seconds: float
    billed_tokens: int
    peak_rss_mb: float
    detail: dict[str, Any] = field(default_factory=dict)


def emulator_switches(batch_wait: bool) -> dict[str, Any]:
    """The ``EmulatorConfig`` fields every tool's emulator runs with."""
    switches: dict[str, Any] = {"rpm_limit": 0, "tpm_limit": 0, "api_key": API_KEY}
    if not batch_wait:
        switches.update({name: 0 for name in LIFECYCLE})
    return switches


def ensure_venv(tool: str, log: Path) -> Path:
    """``benchmarks/.work/peers/<tool>/venv/bin/python``, created and pip-installed once
    (again when ``PEER_REQUIREMENTS[tool]`` changes).

    Raises:
        subprocess.CalledProcessError: venv creation or pip failed (output in ``log``).
    """
    venv = PEERS_WORK / tool / "venv"
    python = venv / "bin" / "python"
    marker = venv / "requirements.txt"
    wanted = "\n".join(PEER_REQUIREMENTS[tool]) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=out)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS[tool]],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    marker.write_text(wanted)
    return python


def _rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` in MB (2**20 bytes), None once it has exited (Linux /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_measured(
    cmd: list[str], env: dict[str, str], log: Path, ok_codes: tuple[int, ...] = (0,)
) -> tuple[float, float, str, list[tuple[float, float]]]:
    """Run ``cmd``; return (wall seconds, peak RSS MB of its process, stdout, RSS series).

    The series is ``(seconds since start, RSS MB)`` sampled every second from /proc.

    Raises:
        RuntimeError: the command exited with a code not in ``ok_codes`` (stderr: ``log``).
    """
    series: list[tuple[float, float]] = []
    done = threading.Event()
    with log.open("a") as err, (log.with_suffix(".stdout")).open("w+") as out:
        err.write(f"$ {' '.join(cmd)}\n")
        err.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)

        def sample() -> None:
            while not done.wait(1.0):
                rss = _rss_mb(proc.pid)
                if rss is not None:
                    series.append((round(time.perf_counter() - started, 1), round(rss, 1)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        stdout = out.read()
    if proc.returncode not in ok_codes:
        raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}: see {log}")
    step = max(1, len(series) // 30)
    return seconds, usage.ru_maxrss / 1024, stdout, series[::step]  # ru_maxrss: KiB on Linux


class SharedEmulator:
    """``batch-embedder local openai-server`` as a subprocess on a free port."""

    def __init__(self, switches: dict[str, Any], log: Path) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        cmd = [str(BIN / "batch-embedder"), "local", "openai-server", "--port", str(self.port)]
        for name, value in switches.items():
            cmd += ["--emulator", f"{name}={value}"]
        self._log = log.open("a")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.stats()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"the emulator did not start: see {log}") from None
                time.sleep(0.2)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` for ``OPENAI_BASE_URL``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        """``GET /_emulator/stats`` (keys: openai_server/stats.py)."""
        url = f"http://127.0.0.1:{self.port}/_emulator/stats"
        with urllib.request.urlopen(url, timeout=5) as answer:
            result: dict[str, Any] = json.loads(answer.read())
        return result

    def stop(self) -> None:
        """Terminate the subprocess and wait for it."""
        self.proc.terminate()
        self.proc.wait(10)
        self._log.close()


def database_url(server_url: str, name: str) -> str:
    """``server_url`` (pgserver's ``postgresql://postgres:@/postgres?host=SOCKET``) with
    database ``name`` in place of its path."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def fresh_database(server_url: str, name: str) -> str:
    """Drop and create database ``name``; return its URL."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url(server_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    return url


def prepare_corpus(limit: int) -> tuple[Path, Path, int]:
    """Write the original tree and the edited tree (10% of files, seed 42) under
    ``.work/peers/corpus``; return (original dir, edited dir, files edited)."""
    docs = files(corpus())
    if limit:
        docs = docs[:limit]
    rng = random.Random(42)
    edited = set(rng.sample(range(len(docs)), max(1, int(len(docs) * EDIT_FRACTION))))
    base = PEERS_WORK / "corpus"
    shutil.rmtree(base, ignore_errors=True)
    for name, tree in (
        ("v1", docs),
        ("v2", [(k, edit(b, "v2") if i in edited else b) for i, (k, b) in enumerate(docs)]),
    ):
        for key, body in tree:
            path = base / name / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
    return base / "v1", base / "v2", len(edited)


def tiktoken_cache() -> Path:
    """A ``TIKTOKEN_CACHE_DIR`` holding cl100k_base (the peers' tiktoken never downloads)."""
    directory = PEERS_WORK / "tiktoken"
    subprocess.run(
        [sys.executable, "-m", "batch_embedder.tokenizer", "bake", str(directory)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return directory


def run_peer(
    tool: str, trees: dict[str, Path], db_url: str, emulator: SharedEmulator, cache: Path
) -> dict[str, Step]:
    """The three steps of one peer through its driver in its own venv."""
    work = PEERS_WORK / tool
    log = work / "log.txt"
    python = ensure_venv(tool, log)
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/root"),
        "OPENAI_BASE_URL": emulator.base_url,
        "OPENAI_API_KEY": API_KEY,
        "TIKTOKEN_CACHE_DIR": str(cache),
    }
    steps: dict[str, Step] = {}
    for step in STEPS:
        before = int(emulator.stats()["billed_tokens"])
        cmd = [
            str(python), str(DRIVERS / f"{tool}_driver.py"),
            "--corpus", str(trees[step]), "--db", db_url, "--state", str(state),
            "--model", MODEL, "--dimensions", str(DIMENSIONS),
            "--chunk-tokens", str(CHUNK_TOKENS), "--overlap", str(OVERLAP_TOKENS),
        ]  # fmt: skip
        seconds, rss, stdout, series = run_measured(cmd, env, log)
        billed = int(emulator.stats()["billed_tokens"]) - before
        detail = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}
        detail["rss_series_mb"] = series
        steps[step] = Step(round(seconds, 1), billed, round(rss, 1), detail)
    return steps


def run_batch_embedder(
    trees: dict[str, Path], db_url: str, switches: dict[str, Any]
) -> dict[str, Step]:
    """The three steps as ``batch-embedder local ingest DIR --json`` (own home, own DB)."""
    work = PEERS_WORK / "batch-embedder"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "log.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AWS_"))}
    env["DATABASE_URL"] = db_url
    steps: dict[str, Step] = {}
    for step in STEPS:
        cmd = [
            str(BIN / "batch-embedder"), "local", "ingest", str(trees[step]), "--json",
            "--quiet", "--home", str(work / "home"), "--timeout", "7200",
            "--vectors", "hashed", "--param", f"EmbeddingModel={MODEL}",
            "--param", f"ChunkTokens={CHUNK_TOKENS}",
            "--param", f"ChunkOverlapTokens={OVERLAP_TOKENS}",
        ]  # fmt: skip
        for name, value in switches.items():
            if name != "api_key":  # the stack sets its own key (stack.LOCAL_API_KEY)
                cmd += ["--emulator", f"{name}={value}"]
        # exit 1: some execution failed; the JSON still says which (counted in "failed")
        seconds, rss, stdout, series = run_measured(cmd, env, log, ok_codes=(0, 1))
        report = json.loads(stdout)
        totals = report["totals"]
        detail = {
            k: totals.get(k, 0)
            for k in (
                "files", "unchanged", "executions", "failed", "batches", "chunks", "cache_hits"
            )
        }  # fmt: skip
        detail["cli_seconds"] = report["seconds"]
        detail["rss_series_mb"] = series
        steps[step] = Step(round(seconds, 1), int(totals["tokens"]), round(rss, 1), detail)
    return steps


def figures_of(tool: str, steps: dict[str, Step], batch_wait: bool) -> dict[str, Any]:
    """One row of the table as a dict (seconds, tokens, MB)."""
    row: dict[str, Any] = {
        "tool": tool,
        "first_ingest_s": steps["first"].seconds,
        "edit_s": steps["edit"].seconds,
        "edit_billed_tokens": steps["edit"].billed_tokens,
        "first_billed_tokens": steps["first"].billed_tokens,
        "reupload_s": steps["reupload"].seconds,
        "reupload_billed_tokens": steps["reupload"].billed_tokens,
        "peak_rss_mb": max(s.peak_rss_mb for s in steps.values()),
        "steps": {name: vars(s) for name, s in steps.items()},
    }
    if tool == "batch-embedder":
        batches = int(steps["first"].detail.get("batches", 0))
        per_batch = round(sum(LIFECYCLE.values()), 3)
        row["simulated_batch_wait_included"] = batch_wait
        row["first_batches"] = batches
        row["simulated_batch_wait_s_per_batch"] = per_batch
        row["simulated_batch_wait_s_sum"] = round(batches * per_batch, 1)
    return row


def render(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of issue 10."""
    lines = [
        "| tool | first ingest (s) | after editing 10% of files (s, tokens billed) "
        "| identical re-upload (s) | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        first = f"{r['first_ingest_s']:,.1f}"
        if r["tool"] == "batch-embedder":
            if r["simulated_batch_wait_included"]:
                first += f" (includes <= {r['simulated_batch_wait_s_sum']:,.1f} s simulated wait)"
            else:
                first += (
                    f" (excluding the simulated batch wait; {r['first_batches']} batches x "
                    f"{r['simulated_batch_wait_s_per_batch']} s = "
                    f"{r['simulated_batch_wait_s_sum']:,.1f} s at the emulator's defaults)"
                )
        failed = sum(int(st["detail"].get("failed", 0)) for st in r["steps"].values())
        if failed:
            first += f" ({failed} execution(s) FAILED over the three steps)"
        lines.append(
            f"| {LABELS[r['tool']]} | {first} | {r['edit_s']:,.1f} "
            f"({r['edit_billed_tokens']:,}) | {r['reupload_s']:,.1f} | {r['peak_rss_mb']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated subset")
    parser.add_argument("--limit", type=int, default=0, help="only the first N files")
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    parser.add_argument(
        "--batch-wait", action="store_true",
        help="keep the emulator's default batch lifecycle (0.9 s a batch) instead of 0 s",
    )  # fmt: skip
    args = parser.parse_args()
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        parser.error(f"unknown tools {unknown}; choose from {', '.join(TOOLS)}")

    from batch_embedder_local.postgres import local_database_url

    PEERS_WORK.mkdir(parents=True, exist_ok=True)
    v1, v2, edited = prepare_corpus(args.limit)
    trees = {"first": v1, "edit": v2, "reupload": v2}
    switches = emulator_switches(args.batch_wait)
    shutil.rmtree(PEERS_WORK / "pg", ignore_errors=True)  # a fresh server, whatever ran before
    server_url = local_database_url(PEERS_WORK / "pg")
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "files": len(list(v1.rglob("*.rst.txt"))),
        "files_edited": edited,
        "chunk_tokens": CHUNK_TOKENS,
        "overlap_tokens": OVERLAP_TOKENS,
        "model": MODEL,
        "emulator_switches": switches,
        "peer_requirements": {t: PEER_REQUIREMENTS[t] for t in tools if t in PEER_REQUIREMENTS},
        "rows": [],
    }
    emulator: SharedEmulator | None = None
    try:
        peers = [t for t in tools if t in PEER_REQUIREMENTS]
        if peers:
            cache = tiktoken_cache()
            emulator = SharedEmulator(switches, PEERS_WORK / "emulator.log")
        for tool in tools:
            db_url = fresh_database(server_url, f"peers_{tool.replace('-', '_')}")
            print(f"[peers] {tool} ...", file=sys.stderr, flush=True)
            if tool == "batch-embedder":
                steps = run_batch_embedder(trees, db_url, switches)
            else:
                assert emulator is not None
                steps = run_peer(tool, trees, db_url, emulator, cache)
            figures["rows"].append(figures_of(tool, steps, args.batch_wait))
    finally:
        if emulator is not None:
            emulator.stop()
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(
            f"{figures['date']}; {figures['machine']}; {figures['files']} files "
            f"({edited} edited); {CHUNK_TOKENS}/{OVERLAP_TOKENS}-token chunks; {MODEL}"
        )
        print(render(figures["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
