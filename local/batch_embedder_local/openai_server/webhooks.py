"""Batch webhooks of the local OpenAI emulator (dev only), signed exactly like OpenAI's.

Event (https://platform.openai.com/docs/guides/webhooks): when a batch reaches a terminal
status and ``EmulatorConfig.webhook_url`` is set, the emulator POSTs this JSON body::

    {"id": "evt_<32 hex>", "object": "event", "created_at": <unix seconds of the terminal
     status>, "type": "batch.completed" | "batch.failed" | "batch.expired" |
     "batch.cancelled", "data": {"id": "<batch id>"}}

Headers (Standard Webhooks, https://www.standardwebhooks.com/):

- ``webhook-id``: the event id, identical on every retry and duplicate (dedupe on it);
- ``webhook-timestamp``: unix seconds of this attempt (receivers refuse more than 300 s of
  skew, the openai SDK's default tolerance);
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.
  {body}")>`` where ``key`` is the base64-decoded part of a ``whsec_<base64>`` secret;
- ``content-type: application/json``.

The official SDK's ``client.webhooks.unwrap(body, headers, secret=...)`` (and
``verify_signature``) accepts these deliveries.

Delivery runs in daemon threads, never in the batch worker: one attempt has a 5 s timeout;
a non-2xx answer or a connection error is retried after a short backoff (0.05 s doubling,
capped at 1 s) up to ``webhook_max_attempts`` attempts. OpenAI retries with exponential
backoff for up to 72 hours; the emulator keeps it short so tests stay fast. Redirects are
not followed and proxies are bypassed: requests go only to the configured URL. During an
emulated OpenAI outage (``EmulatorConfig.outage_seconds``) every attempt waits until the
outage ends (polled every 0.05 s), then goes out: events are held, not lost.

Every attempt (and every dropped or unsendable event) appends one dict to the delivery log
(:attr:`WebhookSender.deliveries`, served at ``GET /_emulator/webhooks``)::

    {"event_id": "evt_...", "type": "batch.completed", "batch_id": "batch_...",
     "copy": 1, "attempt": 1, "outcome": "delivered" | "http_error" | "connection_error" |
     "dropped" | "no_url", "status_code": 200 | None, "error": None | "...",
     "forged": False, "url": "http://127.0.0.1:PORT/hook" | None, "sent_at": <unix s, float>}

``copy`` counts duplicates (1..``webhook_duplicates``; 0 for dropped / unsent events) and
``attempt`` counts tries of that copy (1..``webhook_max_attempts``; 0 when nothing was sent).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import EmulatorConfig
from .errors import new_id

__all__ = [
    "DEFAULT_WEBHOOK_SECRET",
    "EVENT_TYPES",
    "WebhookSender",
    "decode_secret",
    "sign",
    "signed_headers",
]

#: Secret used when ``webhook_secret`` is None (dev only; the key is 32 bytes of 0x42).
DEFAULT_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"B" * 32).decode()
#: Terminal batch status -> event type.
EVENT_TYPES = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}
#: Seconds one delivery attempt may take (connect + send + answer).
DELIVERY_TIMEOUT_SECONDS = 5.0
#: Backoff before retry n (n = 1, 2, ...): FIRST * 2**(n-1), at most MAX, seconds.
RETRY_BACKOFF_FIRST_SECONDS = 0.05
RETRY_BACKOFF_MAX_SECONDS = 1.0
#: How often a delivery held by an outage checks whether it has ended, seconds.
OUTAGE_POLL_SECONDS = 0.05
#: Shortest hold of ``webhook_reorder``, seconds (so events finishing together get reversed).
MIN_REORDER_HOLD_SECONDS = 0.1
USER_AGENT = "openai-emulator-webhooks/1"


def decode_secret(secret: str) -> bytes:
    """HMAC key of a secret: base64-decoded after ``whsec_``, else the UTF-8 bytes (as the SDK)."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[6:])
    return secret.encode("utf-8")


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, "{webhook_id}.{timestamp}.{body}")>`` (Standard Webhooks)."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The four headers of a delivery (timestamp in unix seconds)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, webhook_id, timestamp, body),
        "content-type": "application/json",
    }


def _forged_key(key: bytes) -> bytes:
    """A key that is never the real one (for ``webhook_forge``)."""
    return hashlib.sha256(b"forged:" + key).digest()


def _backoff(attempt: int) -> float:
    return float(min(RETRY_BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1), RETRY_BACKOFF_MAX_SECONDS))


@dataclass(frozen=True)
class _Event:
    id: str
    type: str
    batch_id: str
    created_at: int

    def body(self) -> bytes:
        payload = {
            "id": self.id,
            "object": "event",
            "created_at": self.created_at,
            "type": self.type,
            "data": {"id": self.batch_id},
        }
        return json.dumps(payload, separators=(",", ":")).encode("utf-8")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turn 3xx into an error: deliveries go only to the configured URL."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookSender:
    """Sends the ``batch.*`` events of one emulator and keeps the delivery log. Thread-safe.

    Args:
        get_config: returns the emulator's CURRENT config. ``webhook_url``, ``webhook_drop``,
            ``webhook_delay_seconds`` and ``webhook_reorder`` are read when the batch ends;
            the URL (again), secret, forge, duplicates and max attempts when sending starts.
        outage_left: returns the seconds left of the emulator's outage (0 = none); every
            attempt waits until it is 0. None = never held.
    """

    def __init__(
        self,
        get_config: Callable[[], EmulatorConfig],
        outage_left: Callable[[], float] | None = None,
    ) -> None:
        self._get_config = get_config
        self._outage_left = outage_left
        self._cond = threading.Condition()
        self._log: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._held: list[_Event] = []
        self._flushing = False
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    # --- public ----------------------------------------------------------------------------

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        """A copy of the delivery log, oldest first (entry shape: module docstring)."""
        with self._cond:
            return [dict(entry) for entry in self._log]

    def wait_for(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Block until the log holds at least ``n`` entries; return a copy of it.

        Raises:
            TimeoutError: fewer than ``n`` entries after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._log) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"expected {n} webhook log entries within {timeout} s, got "
                        f"{len(self._log)}: {self._log!r}"
                    )
                self._cond.wait(left)
            return [dict(entry) for entry in self._log]

    def batch_finished(self, batch_id: str, status: str, finished_at: int) -> None:
        """Schedule the event of a batch that reached ``status`` at ``finished_at`` (unix s).

        Returns at once; non-terminal statuses and an unset ``webhook_url`` do nothing.
        """
        event_type = EVENT_TYPES.get(status)
        cfg = self._get_config()
        if event_type is None or cfg.webhook_url is None:
            return
        event = _Event(new_id("evt_"), event_type, batch_id, finished_at)
        if cfg.webhook_drop:
            self._record(self._stop, event, 0, 0, "dropped", None, None, False, cfg.webhook_url)
            return
        if cfg.webhook_reorder:
            with self._cond:
                stop = self._stop
                self._held.append(event)
                if self._flushing:
                    return
                self._flushing = True
            hold = max(cfg.webhook_delay_seconds, MIN_REORDER_HOLD_SECONDS)
            self._spawn(self._flush, stop, hold, name="emulator-webhooks-flush")
        else:
            self._spawn(
                self._deliver_later,
                self._stop,
                event,
                cfg.webhook_delay_seconds,
                name=f"emulator-{event.id}",
            )

    def clear(self) -> None:
        """Abandon pending deliveries and empty the log (``OpenAIEmulator.reset``)."""
        self.stop()
        with self._cond:
            self._log.clear()

    def stop(self) -> None:
        """Abandon pending deliveries; the log stays (an attempt already in flight ends
        within its 5 s timeout, unlogged). Later events are sent normally."""
        with self._cond:
            self._stop.set()
            self._stop = threading.Event()
            self._held.clear()
            self._flushing = False

    # --- workers ---------------------------------------------------------------------------

    @staticmethod
    def _spawn(target: Callable[..., None], *args: Any, name: str) -> None:
        threading.Thread(target=target, args=args, name=name, daemon=True).start()

    def _deliver_later(self, stop: threading.Event, event: _Event, delay: float) -> None:
        if delay > 0 and stop.wait(delay):
            return
        self._deliver(stop, event)

    def _flush(self, stop: threading.Event, hold: float) -> None:
        if stop.wait(hold):
            return
        with self._cond:
            if stop is not self._stop:
                return
            events, self._held = self._held[::-1], []
            self._flushing = False
        for event in events:
            self._deliver(stop, event)

    def _wait_outage(self, stop: threading.Event) -> bool:
        """Wait while the emulator's outage lasts; False if stopped meanwhile."""
        while self._outage_left is not None and (left := self._outage_left()) > 0:
            if stop.wait(min(left, OUTAGE_POLL_SECONDS)):
                return False
        return not stop.is_set()

    def _deliver(self, stop: threading.Event, event: _Event) -> None:
        """Send every copy of ``event``, each retried until a 2xx or the attempts run out."""
        if not self._wait_outage(stop):
            return
        cfg = self._get_config()
        url = cfg.webhook_url
        if url is None:
            self._record(stop, event, 0, 0, "no_url", None, "webhook_url unset", False, None)
            return
        key = decode_secret(cfg.webhook_secret or DEFAULT_WEBHOOK_SECRET)
        if cfg.webhook_forge:
            key = _forged_key(key)
        body = event.body()
        for copy in range(1, cfg.webhook_duplicates + 1):
            for attempt in range(1, cfg.webhook_max_attempts + 1):
                if not self._wait_outage(stop):
                    return
                headers = signed_headers(key, event.id, int(time.time()), body)
                status, error = self._post(url, body, headers)
                ok = status is not None and 200 <= status < 300
                if ok:
                    outcome = "delivered"
                else:
                    outcome = "http_error" if status is not None else "connection_error"
                self._record(
                    stop, event, copy, attempt, outcome, status, error, cfg.webhook_forge, url
                )
                if ok:
                    break
                if attempt < cfg.webhook_max_attempts and stop.wait(_backoff(attempt)):
                    return

    def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str | None]:
        """One POST; returns (HTTP status or None, error text or None)."""
        request = urllib.request.Request(  # noqa: S310 - scheme checked by EmulatorConfig
            url, data=body, headers={**headers, "user-agent": USER_AGENT}, method="POST"
        )
        try:
            with self._opener.open(request, timeout=DELIVERY_TIMEOUT_SECONDS) as response:
                response.read()
                return int(response.status), None
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code), f"HTTP {exc.code}"
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def _record(
        self,
        stop: threading.Event,
        event: _Event,
        copy: int,
        attempt: int,
        outcome: str,
        status: int | None,
        error: str | None,
        forged: bool,
        url: str | None,
    ) -> None:
        entry = {
            "event_id": event.id,
            "type": event.type,
            "batch_id": event.batch_id,
            "copy": copy,
            "attempt": attempt,
            "outcome": outcome,
            "status_code": status,
            "error": error,
            "forged": forged,
            "url": url,
            "sent_at": time.time(),
        }
        with self._cond:
            if stop is not self._stop:  # cleared meanwhile: forget stale deliveries
                return
            self._log.append(entry)
            self._cond.notify_all()
