"""``python -m batch_embedder_local.openai_server --port N``: run the emulator in the foreground.

Prints ``listening on http://127.0.0.1:PORT/v1`` once ready; stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

from .server import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
