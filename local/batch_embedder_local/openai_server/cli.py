"""``python -m batch_embedder_local.openai_server`` / ``batch-embedder local openai-server``.

Runs the emulator (:class:`.server.OpenAIEmulator`) in the foreground; flags map onto
:class:`.config.EmulatorConfig` fields.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .config import EmulatorConfig

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m batch_embedder_local.openai_server``."""
    p = argparse.ArgumentParser(
        prog="python -m batch_embedder_local.openai_server",
        description="Local OpenAI-compatible server (embeddings, files, batches). Dev only: "
        "its vectors are deterministic stand-ins, not OpenAI's.",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 = any free port")
    p.add_argument("--data-dir", type=Path, help="keep file contents here (default: temp dir)")
    p.add_argument("--api-key", help="accept only this Bearer key (default: any key)")
    p.add_argument(
        "--batch-seconds",
        type=float,
        help="duration of a batch's in_progress phase, seconds (on top of the work)",
    )
    p.add_argument("--validating-seconds", type=float, help="validating phase, seconds")
    p.add_argument("--finalizing-seconds", type=float, help="finalizing phase, seconds")
    p.add_argument("--cancel-seconds", type=float, help="cancelling -> cancelled, seconds")
    p.add_argument(
        "--batch-outcome",
        choices=["completed", "expired", "cancelled", "failed"],
        help="how batches end",
    )
    p.add_argument(
        "--expire-fraction", type=float, help="share (0..1) done when a batch expires/cancels"
    )
    p.add_argument(
        "--outage-seconds", type=float, help="refuse every /v1 request for this many seconds"
    )
    p.add_argument("--fail-custom-id-pattern", help="regex: matching batch requests fail (500)")
    p.add_argument("--rpm", type=int, help="requests per minute (0 = unlimited)")
    p.add_argument("--tpm", type=int, help="tokens per minute (0 = unlimited)")
    p.add_argument("--no-shuffle", action="store_true", help="keep batch output in input order")
    p.add_argument(
        "--config",
        help="JSON object (or @path to a JSON file) of EmulatorConfig fields, applied first",
    )
    p.add_argument("--verbose", action="store_true", help="log requests to stderr")
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Build the config: ``--config`` JSON first, then the individual flags."""
    data: dict[str, Any] = {}
    if args.config:
        text = args.config
        if text.startswith("@"):
            text = Path(text[1:]).read_text()
        data.update(json.loads(text))
    flags = {
        "api_key": args.api_key,
        "batch_in_progress_seconds": args.batch_seconds,
        "batch_validating_seconds": args.validating_seconds,
        "batch_finalizing_seconds": args.finalizing_seconds,
        "batch_cancel_seconds": args.cancel_seconds,
        "batch_outcome": args.batch_outcome,
        "expire_completed_fraction": args.expire_fraction,
        "outage_seconds": args.outage_seconds,
        "fail_custom_id_pattern": args.fail_custom_id_pattern,
        "rpm_limit": args.rpm,
        "tpm_limit": args.tpm,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.no_shuffle:
        data["shuffle_output"] = False
    return EmulatorConfig.model_validate(data)


def main(argv: list[str] | None = None) -> int:
    """Run the emulator in the foreground until SIGINT/SIGTERM.

    Prints exactly one line to stdout once it accepts connections:
    ``listening on http://127.0.0.1:PORT/v1``. Returns the exit code (0; 2 on bad args).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    from .server import OpenAIEmulator

    emulator = OpenAIEmulator(config, host=args.host, port=args.port, data_dir=args.data_dir)
    emulator.verbose = args.verbose
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
    emulator.start()
    try:
        print(f"listening on {emulator.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0
