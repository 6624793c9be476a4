"""What every benchmark prints about the machine it ran on, and the bare-COPY floor."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (Linux), else ``platform.processor()``."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """``x86_64, <CPU>, 2 cores, Python 3.11.7``."""
    return (
        f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )


def bare_copy_seconds(conn: Any, rows: Iterable[tuple[str, str, Any]]) -> float:
    """Seconds to binary-COPY ``(text, sha256, vector)`` rows into a new unindexed table
    ``bench_bare`` (left in place for the caller; ``conn`` has pgvector registered): the
    floor any writer is compared with."""
    conn.execute("DROP TABLE IF EXISTS bench_bare")
    conn.execute(
        "CREATE TABLE bench_bare (chunk_index int, text text, sha256 text, embedding vector)"
    )
    started = time.perf_counter()
    with conn.cursor().copy(
        "COPY bench_bare (chunk_index, text, sha256, embedding) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["int4", "text", "text", "vector"])
        for i, (text, sha, vector) in enumerate(rows):
            copy.write_row((i, text, sha, vector))
    return time.perf_counter() - started
