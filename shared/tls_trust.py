"""One TLS context per trust store for every connection the storage clients open (issue 30).

requests hands urllib3 the path of its CA bundle, and urllib3 builds a new SSLContext for each new connection and
reads the bundle into it: certifi's bundle (what `connection_verify=True` means in Azure) is about 140 roots, 0.7 MiB
of memory and a parse per connection, kept as long as the connection lives. A sync opens a connection for each
thread that sends to each host, so its memory grew with its width by that much per connection. The adapter here
builds one context per trust store, once, with urllib3's own defaults (`create_urllib3_context`: certificate and
host name checked), and gives it to every pool (requests' documented hooks for subclasses:
`build_connection_pool_key_attributes`, `cert_verify`). A client certificate, or verification off, keeps requests'
own path.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any

from requests.adapters import HTTPAdapter

_contexts: dict[str, ssl.SSLContext] = {}
_lock = threading.Lock()  # a sync's threads open their first connections at once: the bundle is read once


def trust_context(where: str) -> ssl.SSLContext:
    """A client context that checks certificates against the bundle file (or directory of hashed certificates)
    `where`, and the host name; built once per process and shared by every connection. Asked for on every request
    (requests builds each request's pool key), so a context already built is returned without the lock."""
    context = _contexts.get(where)
    if context is not None:
        return context
    with _lock:
        context = _contexts.get(where)
        if context is None:
            from urllib3.util.ssl_ import create_urllib3_context

            context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
            if os.path.isdir(where):
                context.load_verify_locations(capath=where)
            else:
                context.load_verify_locations(cafile=where)
            _contexts[where] = context
        return context


def forget_contexts() -> None:
    """Drop the contexts built so far (a test, or a bundle replaced on disk): the next connection reads it again."""
    with _lock:
        _contexts.clear()


def _trust_store(verify: Any) -> str | None:
    """The trust store a request's `verify` names, as requests reads it: True is its default bundle (certifi's)."""
    if verify is True:
        from requests.certs import where

        return where()
    return verify if isinstance(verify, str) and verify else None


class SharedTrustAdapter(HTTPAdapter):
    """requests' HTTPAdapter whose HTTPS pools share one SSLContext per trust store (`trust_context`)."""

    def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None) -> Any:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        where = _trust_store(verify) if cert is None else None
        if where is not None and host_params.get("scheme") == "https":
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
            pool_kwargs["ssl_context"] = trust_context(where)
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        if getattr(conn, "conn_kw", {}).get("ssl_context") is not None:
            conn.ca_certs = conn.ca_cert_dir = None  # the context holds them: not read again per connection
