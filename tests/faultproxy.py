"""A TLS-terminating HTTP/1.1 fault proxy for the integration tests: relay -> proxy -> simulator or Azurite.

Each `FaultProxy` listens on loopback with the stack's server certificate (signed by the CA in the stack's
bundle, so the real SDKs trust it with verification on), forwards every request to one upstream over TLS,
and injects faults on the requests a `Fault` matches: an HTTP error with `Retry-After`, a connection reset
before the answer, half-way through the answer's body or half-way through the request's body, an answer
lost after the upstream already did the work, a stall, or a success the upstream never saw (`fake_ok`: a
gateway that acknowledges and stores nothing). `chaos()` injects them at random, seeded.

Bodies are buffered (the tests move small files); the proxy never logs, so no token or key passes through
any output.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import re
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

ACTIONS = ("status", "page", "reset", "reset_response", "cut_request", "drop_answer", "stall", "fake_ok",
           "endless_listing", "slow", "slow_status")
# Hop-by-hop headers (RFC 9110 section 7.6.1) are the proxy's own business; it re-frames every body.
_HOP = frozenset("connection keep-alive proxy-connection transfer-encoding te trailer upgrade".split())
_STATUS_CODES = {403: "AuthorizationPermissionMismatch", 429: "TooManyRequests", 500: "InternalError",
                 503: "ServerBusy"}


@dataclass(frozen=True)
class Request:
    """What a fault matches on: method, path (no query), query parameters, headers (lower-case names)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]

    @property
    def comp(self) -> str:
        return self.query.get("comp", "")


Matcher = Callable[[Request], bool]


def match(method: str | None = None, path: str | None = None, comp: str | None = None) -> Matcher:
    """A matcher: `method` exactly, `path` a regular expression searched in the path, `comp` the ?comp=."""
    pattern = re.compile(path) if path else None

    def check(req: Request) -> bool:
        return ((method is None or req.method == method) and (pattern is None or bool(pattern.search(req.path)))
                and (comp is None or req.comp == comp))

    return check


@dataclass
class Fault:
    """Inject `action` on requests that `when` matches: skip the first `skip` matches, then fire `times`
    times (None: until removed). `status`/`retry_after` for "status" (a storage error), `status` for "page" (a
    proxy's or firewall's HTML page, no storage error code); for "stall" the request is held until the client
    hangs up (counted in `abandoned`: its timeout fired), the proxy stops, or `stall` seconds pass;
    `fraction` of the body that gets through for "reset_response" and "cut_request"; `headers` for "fake_ok"
    (201 for a PUT, 200 otherwise, never forwarded); `code` the storage error code of "status" (default: the usual
    one for the status); "endless_listing" answers a List Blobs with an empty page and a NextMarker (legal in
    Azure, endless here); "slow" holds the request `stall` seconds, then forwards it (a server that answers late);
    "slow_status" holds it `stall` seconds, then answers as "status" (a refusal that takes its time). For "slow",
    `arrivals` has, for each request it holds, how many it was holding then (that one included): the client's
    concurrency, request by request."""

    action: str
    when: Matcher = field(default=lambda req: True)
    status: int = 503
    retry_after: str | None = None
    times: int | None = 1
    skip: int = 0
    stall: float = 2.0
    fraction: float = 0.5
    headers: dict[str, str] = field(default_factory=dict)
    code: str | None = None
    seen: int = 0
    fired: int = 0
    abandoned: int = 0
    holding: int = 0
    arrivals: list[int] = field(default_factory=list, repr=False, compare=False)
    fired_once: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}; use one of {ACTIONS}")

    def wait_fired(self, process: Any) -> bool:
        """Until this fault has fired or `process` (a Popen) has ended, however long a loaded machine takes (pytest's
        timeout is the guard): whether it fired. No wall-clock deadline that a slow start could miss."""
        while not self.fired_once.wait(0.02):
            if process.poll() is not None:
                return self.fired_once.is_set()
        return True

    def take(self, req: Request) -> bool:
        if not self.when(req):
            return False
        self.seen += 1
        if self.seen <= self.skip or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        self.fired_once.set()
        return True


@dataclass
class Chaos:
    """Random faults: each matching request gets one of `actions` with `probability` (seeded rng)."""

    rng: random.Random
    probability: float
    actions: Sequence[str] = ("status", "reset", "reset_response", "cut_request", "drop_answer")
    when: Matcher = field(default=lambda req: True)
    statuses: Sequence[int] = (500, 503, 429)
    stall: float = 1.5

    def pick(self, req: Request) -> Fault | None:
        if not self.when(req) or self.rng.random() >= self.probability:
            return None
        action = self.rng.choice(list(self.actions))
        status = self.rng.choice(list(self.statuses))
        return Fault(action, status=status, retry_after="0" if status != 500 else None, stall=self.stall,
                     fraction=self.rng.uniform(0.1, 0.9))


class FaultProxy:
    """One proxy in front of one upstream (`https://host:port`). Start it, point a setting at `url(...)`."""

    def __init__(self, upstream: str, server_cert: str, server_key: str, ca_bundle: str, name: str = "") -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "https" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be https://host:port, got {upstream!r}")
        self.name = name or parts.netloc
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self._server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_context.load_cert_chain(server_cert, server_key)
        self._client_context = ssl.create_default_context(cafile=ca_bundle)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._faults: list[Fault] = []
        self._chaos: Chaos | None = None
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self.port = 0
        self.requests: Counter[str] = Counter()  # by method, forwarded or not
        self.connections = 0  # accepted from the client: how many it opened
        self.injected: Counter[str] = Counter()  # by action

    def __repr__(self) -> str:
        return f"FaultProxy({self.name!r} on port {self.port})"

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.2)
        self._listener = listener
        self.port = listener.getsockname()[1]
        thread = threading.Thread(target=self._accept_loop, name=f"faultproxy-{self.name}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Close the listener and every open connection; wait (bounded) for the threads."""
        self._stopping.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading a kept-alive connection
            with contextlib.suppress(OSError):
                sock.close()
        for thread in list(self._threads):
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> FaultProxy:
        return self if self._listener is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def url(self, upstream_url: str) -> str:
        """`upstream_url` with its scheme, host and port replaced by the proxy's."""
        parts = urlsplit(upstream_url)
        return self.base_url + upstream_url[len(f"{parts.scheme}://{parts.netloc}"):]

    # -- faults ------------------------------------------------------------------------------------
    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def chaos(self, chaos: Chaos | None) -> None:
        with self._lock:
            self._chaos = chaos

    def clear(self) -> None:
        """Faults off: every later request is forwarded untouched; the counters start again."""
        with self._lock:
            self._faults.clear()
            self._chaos = None
            self.requests.clear()
            self.injected.clear()
            self.connections = 0

    def _pick(self, req: Request) -> Fault | None:
        with self._lock:
            self.requests[req.method] += 1
            for fault in self._faults:
                if fault.take(req):
                    self.injected[fault.action] += 1
                    return fault
            if self._chaos is not None:
                fault = self._chaos.pick(req)
                if fault is not None:
                    self.injected[fault.action] += 1
                return fault
        return None

    # -- serving -----------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(30)
            thread = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            with self._lock:
                self.connections += 1
                self._sockets.add(raw)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        upstream: http.client.HTTPSConnection | None = None
        conn: socket.socket = raw
        try:
            conn = self._server_context.wrap_socket(raw, server_side=True)
            with self._lock:
                self._sockets.add(conn)
            rfile = conn.makefile("rb")
            while not self._stopping.is_set():
                line = rfile.readline(65537)
                if not line or not line.strip():
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                message = http.client.parse_headers(rfile)
                headers = [(k, v) for k, v in message.items()]
                lower = {k.lower(): v for k, v in headers}
                parts = urlsplit(target)
                req = Request(method, parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}, lower)
                fault = self._pick(req)
                length = int(lower.get("content-length") or 0)
                if fault is not None and fault.action == "cut_request" and length > 1:
                    rfile.read(max(1, int(length * fault.fraction)))  # half the body arrives, then the wire dies
                    self._reset(conn)
                    return
                body = _read_chunked(rfile) if "chunked" in lower.get("transfer-encoding", "").lower() else (
                    rfile.read(length) if length else b"")
                if fault is not None and fault.action in ("reset", "cut_request"):
                    self._reset(conn)
                    return
                if fault is not None and fault.action == "stall":
                    if self._client_hangs_up(conn, fault.stall):  # the client's read timeout should fire first
                        with self._lock:
                            fault.abandoned += 1
                    self._reset(conn)
                    return
                if fault is not None and fault.action in ("status", "slow_status"):
                    if fault.action == "slow_status":
                        self._stopping.wait(fault.stall)
                    conn.sendall(_error_response(fault.status, fault.retry_after, method, fault.code))
                    continue
                if fault is not None and fault.action == "endless_listing":
                    conn.sendall(_endless_listing(req, method))
                    continue
                if fault is not None and fault.action == "page":
                    conn.sendall(_page_response(fault.status, method))
                    continue
                if fault is not None and fault.action == "fake_ok":
                    conn.sendall(_fake_success(method, fault.headers))
                    continue
                if fault is not None and fault.action == "slow":
                    with self._lock:
                        fault.holding += 1
                        fault.arrivals.append(fault.holding)
                    self._stopping.wait(fault.stall)
                    with self._lock:
                        fault.holding -= 1
                if upstream is None:
                    upstream = http.client.HTTPSConnection(
                        self.upstream_host, self.upstream_port, context=self._client_context, timeout=60)
                status, reason, out_headers, data = self._forward(upstream, method, target, headers, body)
                if fault is not None and fault.action == "drop_answer":
                    self._reset(conn)  # the upstream did the work; the client never hears of it
                    return
                head = _response_head(status, reason, out_headers, data, method)
                if fault is not None and fault.action == "reset_response" and data:
                    conn.sendall(head + data[: int(len(data) * fault.fraction)])
                    self._reset(conn)
                    return
                conn.sendall(head + (b"" if method == "HEAD" else data))
        except (OSError, ssl.SSLError, ValueError, http.client.HTTPException):
            return
        finally:
            if upstream is not None:
                upstream.close()
            with self._lock:
                self._sockets.discard(conn)
                self._sockets.discard(raw)
            with contextlib.suppress(OSError):
                conn.close()

    def _forward(self, upstream: http.client.HTTPSConnection, method: str, target: str,
                 headers: list[tuple[str, str]], body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        send = [(k, v) for k, v in headers if k.lower() not in _HOP and k.lower() not in ("host", "content-length")]
        send.append(("Host", f"{self.upstream_host}:{self.upstream_port}"))
        if body or method in ("PUT", "POST", "PATCH"):
            send.append(("Content-Length", str(len(body))))
        for attempt in (1, 2):  # a kept-alive upstream connection the upstream closed meanwhile: reopen once
            try:
                upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for key, value in send:
                    upstream.putheader(key, value)
                upstream.endheaders(body if body else None)
                response = upstream.getresponse()
                data = response.read()
                return response.status, response.reason, response.getheaders(), data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                upstream.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _client_hangs_up(self, conn: ssl.SSLSocket, seconds: float) -> bool:
        """Hold a stalled request: True once the client closes its side, False when the proxy stops or `seconds`
        pass first. The cap is a hang guard only: tests assert on the hang-up, never on time."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            readable, _, _ = select.select([conn], [], [], min(remaining, 0.05))
            if not readable:
                continue
            try:
                if not conn.recv(1):  # end of stream (close_notify or FIN): the client gave up
                    return True
            except ssl.SSLWantReadError:
                continue
            except (OSError, ssl.SSLError):
                return True
        return False

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), not an orderly close."""
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            conn.close()


def _read_chunked(rfile) -> bytes:  # type: ignore[no-untyped-def]
    parts = []
    while True:
        size = int(rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(1024).strip():
                pass  # trailers
            return b"".join(parts)
        parts.append(rfile.read(size))
        rfile.readline(3)


def _response_head(status: int, reason: str, headers: list[tuple[str, str]], data: bytes, method: str) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    for key, value in headers:
        low = key.lower()
        if low in _HOP or (low == "content-length" and method != "HEAD"):
            continue
        lines.append(f"{key}: {value}")
    if method != "HEAD" and status not in (204, 304):
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _page_response(status: int, method: str) -> bytes:
    """`status` as a proxy or a web application firewall answers it: an HTML page, no storage error code."""
    body = b"" if method == "HEAD" else f"<html><body><h1>{status}</h1>Request blocked.</body></html>".encode()
    head = (f"HTTP/1.1 {status} {http.client.responses.get(status, 'Error')}\r\nContent-Type: text/html\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _endless_listing(req: Request, method: str) -> bytes:
    """An empty List Blobs page whose NextMarker always leads to another one."""
    marker = f"endless{int(req.query.get('marker', 'endless0')[len('endless'):] or 0) + 1}"
    body = ('<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="x"><Blobs />'
            f"<NextMarker>{marker}</NextMarker></EnumerationResults>").encode()
    data = b"" if method == "HEAD" else body
    head = ("HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nx-ms-version: 2025-01-05\r\n"
            f"Content-Length: {len(data)}\r\n\r\n")
    return head.encode() + data


def _error_response(status: int, retry_after: str | None, method: str, code: str | None = None) -> bytes:
    """An error as both storage (x-ms-error-code, XML) and OAuth servers (JSON `error`) say it."""
    code = code or _STATUS_CODES.get(status, "InternalError")
    body = (f'{{"error": "temporarily_unavailable", "error_description": "fault proxy: {code}"}}'
            if method == "POST" else
            f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
            f"<Message>fault proxy: {code}</Message></Error>")
    data = b"" if method == "HEAD" else body.encode()
    lines = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Error')}", f"x-ms-error-code: {code}",
             "Content-Type: " + ("application/json" if method == "POST" else "application/xml"),
             f"Content-Length: {len(data)}"]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def _fake_success(method: str, headers: dict[str, str]) -> bytes:
    """What a mocked API answers: success, an ETag, and nothing stored anywhere."""
    status = 201 if method == "PUT" else 200
    lines = [f"HTTP/1.1 {status} {http.client.responses[status]}", 'ETag: "0x8DEADBEEFFAKE"',
             "Last-Modified: Mon, 30 Nov 2026 00:00:00 GMT", "x-ms-request-server-encrypted: true"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if "content-length" not in {k.lower() for k in headers}:
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def proxy_for(stack, setting: str) -> FaultProxy:  # type: ignore[no-untyped-def]
    """One started proxy in front of the dependency that `setting` (a URL setting of the stack) points at."""
    parts = urlsplit(stack.settings[setting])
    tls = stack.workdir / "tls"
    return FaultProxy(f"{parts.scheme}://{parts.netloc}", str(tls / "server.pem"), str(tls / "server-key.pem"),
                      stack.settings["REQUESTS_CA_BUNDLE"], name=setting).start()


def proxies_for(stack) -> dict[str, FaultProxy]:  # type: ignore[no-untyped-def]
    """One started proxy per dependency of the relay, keyed by the setting it replaces."""
    tls = stack.workdir / "tls"
    bundle = stack.settings["REQUESTS_CA_BUNDLE"]
    endpoint = dict(p.split("=", 1) for p in stack.settings["EXPORT_STORAGE"].split(";") if "=" in p)["BlobEndpoint"]
    upstreams = {
        "KEY_VAULT_URL": stack.settings["KEY_VAULT_URL"],
        "MASKINPORTEN_TOKEN_ENDPOINT": stack.settings["MASKINPORTEN_TOKEN_ENDPOINT"],
        "BANENOR_AUTHORITY_HOST": stack.settings["BANENOR_AUTHORITY_HOST"],
        "EXPORT_STORAGE": endpoint,
        "BANENOR_STORAGE_URL": stack.settings["BANENOR_STORAGE_URL"],
    }
    started: dict[str, FaultProxy] = {}
    try:
        for setting, url in upstreams.items():
            parts = urlsplit(url)
            started[setting] = FaultProxy(f"{parts.scheme}://{parts.netloc}", str(tls / "server.pem"),
                                          str(tls / "server-key.pem"), bundle, name=setting).start()
    except BaseException:
        for proxy in started.values():
            proxy.stop()
        raise
    return started


def proxied_settings(stack, proxies: dict[str, FaultProxy]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The stack's settings with each dependency's URL pointing at its proxy."""
    settings = {k: proxies[k].url(stack.settings[k]) for k in proxies if k != "EXPORT_STORAGE"}
    conn = stack.settings["EXPORT_STORAGE"]
    endpoint = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)["BlobEndpoint"]
    settings["EXPORT_STORAGE"] = conn.replace(endpoint, proxies["EXPORT_STORAGE"].url(endpoint))
    return settings
