"""Bane NOR's payload-manager gateway stand-in (API Management in front of the external storage accounts).

Owns what the gateway decides before a Blob REST call reaches storage (docs/protocol.md section 6): bearer token
and routing on its `aud`, the pinned `x-ms-version`, 100 MB per request, name characters and extensions,
directory ACLs; allowed requests are streamed to the upstream account (Azurite) and back, chunk by chunk.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .httpbase import Clock, Handler, SimServer

# Bane NOR's "File and blob restrictions" page (docs/protocol.md section 6).
BANE_NOR_EXTENSIONS = frozenset(
    "txt csv log json xml md jpg jpeg png gif bmp tiff webp mp3 wav mp4 avi mov flac pdf doc docx xls xlsx "
    "ppt pptx zip tar gz rar html css js py cs vp0 vspe kmm kmm2 hdr".split()
)
NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
CHUNK = 1024 * 1024
DRAIN_LIMIT = 256 * 1024 * 1024  # refused bodies up to this size are read and dropped to keep the connection
UPSTREAM_IDLE_REUSE = 2.0  # seconds; Node's keep-alive timeout is 5 s, so older idle connections are dropped
HOP_BY_HOP = frozenset(
    "connection keep-alive proxy-authenticate proxy-authorization te trailer trailers transfer-encoding "
    "upgrade host expect".split()
)
TokenValidator = Callable[[str], dict[str, Any]]


@dataclass
class GatewayOptions:
    """Policy knobs, mutable while the gateway runs."""

    max_request_bytes: int = 100 * 1024 * 1024  # "at most 100 MB per request"
    api_version: str | None = "2025-01-05"  # None accepts any x-ms-version
    allowed_extensions: frozenset[str] = BANE_NOR_EXTENSIONS
    allow_copy_source: bool = True  # False: storage cannot reach the source (CannotVerifyCopySource)
    allow_slash_in_names: bool = True  # their examples write path/to/folder/<file>
    allow_listing: bool = True  # False: an ACL with -wx and no r on the directory (List Blobs: 403)


@dataclass
class Refusal(Exception):
    """A request the gateway or storage refuses before forwarding."""

    status: int
    reason: str  # counter key
    message: str
    storage_code: str | None = None  # set: storage XML error; unset: APIM JSON error


@dataclass
class _Target:
    upstream: str  # account URL of the backend
    rest: str  # raw (still percent-encoded) "/<container>/<blob>" part of the path
    query: str


@dataclass
class GatewayStats:
    requests: Counter[str] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)
    responses: Counter[tuple[str, int]] = field(default_factory=Counter)  # (method, storage's status) forwarded
    bytes_in: int = 0


class GatewaySim(SimServer):
    """Blob REST API at `storage_url`, routed by the token's audience to upstream accounts."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None,
        token_validator: TokenValidator,
        backends: dict[str, str],
        upstream_ca: str,
        clock: Clock = time.time,
        port: int = 0,
        base_path: str = "/payload-manager/v1",
        options: GatewayOptions | None = None,
    ) -> None:
        super().__init__(_GatewayHandler, ssl_context, port=port, clock=clock)
        self.token_validator = token_validator
        self.backends = dict(backends)
        self.base_path = "/" + base_path.strip("/")
        self.options = options or GatewayOptions()
        self.upstream_context = ssl.create_default_context(cafile=upstream_ca)
        self._grants: dict[str, list[tuple[str, str]]] = {}
        self._seen_tokens: set[str] = set()  # `uti` of every token presented
        self._revoked_tokens: set[str] = set()
        self._revoke_next = 0
        self._revoke_after = 0
        self._lock = threading.Lock()
        self._stats = GatewayStats()

    def __repr__(self) -> str:
        return f"GatewaySim(storage_url={self.storage_url!r}, backends={sorted(self.backends)})"

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        super().serve_forever(poll_interval)  # a short poll makes stop() quick in tests

    @property
    def storage_url(self) -> str:
        """The account URL partners give azure-storage-blob (the SDK keeps the base path)."""
        return self.base_url + self.base_path

    @property
    def requests(self) -> Counter[str]:
        return self._stats.requests

    @property
    def rejections(self) -> Counter[str]:
        return self._stats.rejections

    @property
    def responses(self) -> Counter[tuple[str, int]]:
        """(method, status) of every answer the storage behind the gateway gave, e.g. ("PUT", 201)."""
        return self._stats.responses

    @property
    def bytes_in(self) -> int:
        return self._stats.bytes_in

    def grant(self, object_id: str, container: str, directory: str) -> None:
        """Let the identity read, write and list at or below `<container>/<directory>/` ("": all of it)."""
        with self._lock:
            self._grants.setdefault(object_id, []).append((container, directory.strip("/")))

    def revoke(self, object_id: str) -> None:
        with self._lock:
            self._grants.pop(object_id, None)

    def revoke_tokens(self, also_next: int = 0, after_requests: int = 0) -> None:
        """Refuse (401) every token presented so far, as when sessions are revoked before their expiry, and the
        next `also_next` new tokens the moment they are first presented. With `after_requests`, the revocation
        happens only after that many more requests were let through."""
        with self._lock:
            self._revoke_next = also_next
            self._revoke_after = after_requests
            if not after_requests:
                self._revoked_tokens |= self._seen_tokens

    def _token_revoked(self, claims: dict[str, Any]) -> bool:
        uti = str(claims.get("uti"))
        with self._lock:
            if uti not in self._seen_tokens:
                self._seen_tokens.add(uti)
                if self._revoke_next > 0:
                    self._revoke_next -= 1
                    self._revoked_tokens.add(uti)
            if uti in self._revoked_tokens:
                return True
            if self._revoke_after > 0:
                self._revoke_after -= 1
                if not self._revoke_after:
                    self._revoked_tokens |= self._seen_tokens  # from the next request on
            return False

    def count(self, *, method: str | None = None, rejection: str | None = None, bytes_in: int = 0,
              response: tuple[str, int] | None = None) -> None:
        with self._lock:
            if method:
                self._stats.requests[method] += 1
            if response:
                self._stats.responses[response] += 1
            if rejection:
                self._stats.rejections[rejection] += 1
            self._stats.bytes_in += bytes_in

    # -- policy ----------------------------------------------------------------------------------
    def authorize(self, method: str, raw_path: str, headers: Any) -> _Target:
        """Apply the gateway's and storage's checks in order; raises Refusal."""
        path, _, query = raw_path.partition("?")
        if path != self.base_path and not path.startswith(self.base_path + "/"):
            raise Refusal(404, "not_found", "Resource not found")
        auth = headers.get("Authorization") or ""
        if auth[:7].lower() != "bearer " or not auth[7:].strip():
            raise Refusal(401, "no_token", "Unauthorized. Access token is missing or invalid.")
        token = auth[7:].strip()
        try:
            claims = self.token_validator(token)
        except ValueError as exc:
            reason = "" if token in str(exc) else f": {exc}"  # never echo the token itself
            message = f"Unauthorized. Access token is missing or invalid{reason}"
            raise Refusal(401, "invalid_token", message) from exc
        if self._token_revoked(claims):
            raise Refusal(401, "invalid_token", "Unauthorized. Access token is missing or invalid: revoked")
        upstream = self.backends.get(str(claims.get("aud")))
        if upstream is None:  # the gateway picks the storage account from the audience
            raise Refusal(401, "audience_not_routed", "Unauthorized. Token audience not routed to a backend.")
        version = headers.get("x-ms-version")
        if self.options.api_version and version is not None and version != self.options.api_version:
            raise Refusal(400, "api_version", f"x-ms-version must be {self.options.api_version}")
        if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
            raise Refusal(411, "length_required", "Content-Length is required")
        length = int(headers.get("Content-Length") or 0)
        if length > self.options.max_request_bytes:
            raise Refusal(
                413, "too_large", f"Body exceeds {self.options.max_request_bytes} bytes: upload in blocks"
            )
        rest = path[len(self.base_path) :]
        container, _, blob = unquote(rest).lstrip("/").partition("/")
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        oid = str(claims.get("oid"))
        if not container:
            raise _permission_mismatch()  # service-level calls need account-wide RBAC
        if blob:
            self._check_name(blob)
            if not self._allowed(oid, container, blob):
                raise _permission_mismatch()
        else:
            listing = method == "GET" and (params.get("restype"), params.get("comp")) == ("container", "list")
            if (not listing or not self.options.allow_listing
                    or not self._allowed(oid, container, params.get("prefix", ""))):
                raise _permission_mismatch()
        if headers.get("x-ms-copy-source") and not self.options.allow_copy_source:
            raise Refusal(
                403,
                "copy_source",
                "The copy source could not be verified.",
                storage_code="CannotVerifyCopySource",
            )
        return _Target(upstream, rest, query)

    def _check_name(self, blob: str) -> None:
        if "/" in blob and not self.options.allow_slash_in_names:
            raise Refusal(400, "name", "Blob names may not contain '/'")
        segments = blob.split("/")
        for segment in segments:
            if not segment or not set(segment) <= NAME_CHARACTERS:
                raise Refusal(400, "name", "Blob name segments may contain only [a-zA-Z0-9.-]")
        last = segments[-1]
        extension = last.rsplit(".", 1)[1].lower() if "." in last else ""
        if extension not in self.options.allowed_extensions:
            raise Refusal(400, "extension", f"File extension '{extension}' is not allowed")

    def _allowed(self, oid: str, container: str, path: str) -> bool:
        with self._lock:
            grants = list(self._grants.get(oid, ()))
        for granted_container, directory in grants:
            if granted_container == container and (not directory or path.startswith(directory + "/")):
                return True
        return False


def _permission_mismatch() -> Refusal:
    return Refusal(
        403,
        "acl",
        "This request is not authorized to perform this operation using this permission.",
        storage_code="AuthorizationPermissionMismatch",
    )


class _GatewayHandler(Handler):
    server: GatewaySim

    def setup(self) -> None:
        super().setup()
        self._upstreams: dict[str, tuple[http.client.HTTPSConnection, float]] = {}

    def finish(self) -> None:
        for connection, _ in self._upstreams.values():
            connection.close()
        super().finish()

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    # -- request flow ----------------------------------------------------------------------------
    def _handle(self) -> None:
        self.server.count(method=self.command)
        try:
            target = self.server.authorize(self.command, self.path, self.headers)
        except Refusal as refusal:
            self.server.count(rejection=refusal.reason)
            self._drain()
            self._refuse(refusal)
            return
        try:
            self._forward(target)
        except (OSError, http.client.HTTPException):
            self.server.count(rejection="upstream_error")
            self.close_connection = True
            self._upstreams.clear()

    def _drain(self) -> None:
        """Read and drop a refused body so the client sees the answer and the connection stays usable."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        if remaining > DRAIN_LIMIT:
            self.close_connection = True
            return
        while remaining > 0:
            chunk = self.rfile.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)

    def _refuse(self, refusal: Refusal) -> None:
        headers = {"Connection": "close"} if self.close_connection else {}
        if refusal.storage_code is None:
            # API Management's own error shape for policy refusals.
            body = {"statusCode": refusal.status, "message": refusal.message}
            self.send_json(refusal.status, body, headers)
            return
        request_id = str(uuid.uuid4())
        stamp = dt.datetime.fromtimestamp(self.server.clock(), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
        body = (
            '<?xml version="1.0" encoding="utf-8"?><Error>'
            f"<Code>{refusal.storage_code}</Code><Message>{refusal.message}\nRequestId:{request_id}\n"
            f"Time:{stamp}</Message></Error>"
        ).encode()
        headers |= {"x-ms-error-code": refusal.storage_code, "x-ms-request-id": request_id}
        self.send_bytes(refusal.status, body, "application/xml", headers)

    def _connection(self, netloc: str) -> http.client.HTTPSConnection:
        cached = self._upstreams.pop(netloc, None)
        if cached is not None:
            connection, last_used = cached
            if time.monotonic() - last_used < UPSTREAM_IDLE_REUSE:
                return connection
            connection.close()
        host, _, port = netloc.rpartition(":")
        return http.client.HTTPSConnection(host, int(port), context=self.server.upstream_context, timeout=60)

    def _forward(self, target: _Target) -> None:
        upstream = urlsplit(target.upstream)
        path = upstream.path.rstrip("/") + target.rest + (f"?{target.query}" if target.query else "")
        connection = self._connection(upstream.netloc)
        connection.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", upstream.netloc)
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP:
                connection.putheader(name, value)
        connection.endheaders()
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:  # stream the body: never hold a whole 100 MB request
            chunk = self.rfile.read(min(CHUNK, remaining))
            if not chunk:
                raise ConnectionError("client closed the connection mid-body")
            connection.send(chunk)
            remaining -= len(chunk)
            self.server.count(bytes_in=len(chunk))
        response = connection.getresponse()
        self.server.count(response=(self.command, response.status))
        self._relay_response(response)
        if response.will_close:
            connection.close()
        else:
            self._upstreams[upstream.netloc] = (connection, time.monotonic())

    def _relay_response(self, response: http.client.HTTPResponse) -> None:
        self.send_response(response.status, response.reason)
        length = response.getheader("Content-Length")
        no_body = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        chunked = not no_body and length is None
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() not in ("date", "server"):
                self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if no_body:
            response.read()
            return
        while True:
            chunk = response.read(CHUNK) if length is not None else response.read1(CHUNK)
            if not chunk:
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
