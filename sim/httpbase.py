"""Shared plumbing for the simulators: a threaded HTTPS server run in a background thread.

Each simulator subclasses `Handler` and is served by `SimServer`, which binds to loopback, wraps the
socket in TLS with the stack's certificate, and exposes its base URL. Tests start and stop servers
in-process; `sim.stack` runs the same classes in a background process for `make stack`.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Clock = Callable[[], float]


class Handler(BaseHTTPRequestHandler):
    """Base request handler: JSON/form helpers, quiet logging, HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    server: SimServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the simulators never print requests: bodies carry tokens

    # -- request helpers -------------------------------------------------------------------
    @property
    def path_only(self) -> str:
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query, keep_blank_values=True).items()}

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def read_form(self) -> dict[str, str]:
        body = self.read_body().decode("utf-8", "replace")
        return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}

    def bearer_token(self) -> str | None:
        value = self.headers.get("Authorization") or ""
        if value[:7].lower() == "bearer ":
            return value[7:].strip()
        return None

    # -- response helpers ------------------------------------------------------------------
    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), "application/json; charset=utf-8", headers)

    def send_bytes(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class SimServer(ThreadingHTTPServer):
    """A TLS server on 127.0.0.1 serving one simulator, started in a daemon thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        handler: type[Handler],
        ssl_context: ssl.SSLContext | None,
        port: int = 0,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(("127.0.0.1", port), handler)
        self.clock = clock
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if ssl_context is not None else "http"
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        # A short poll interval makes stop() quick (tests start and stop many servers).
        super().serve_forever(poll_interval)

    def start(self) -> SimServer:
        self._thread = threading.Thread(target=self.serve_forever, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that drop a TLS connection are normal (retries, fault tests): stay quiet.
        pass
