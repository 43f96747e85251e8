"""The storage clients' connections share one TLS context per trust store (shared.tls_trust), and it checks as
requests does: the server's certificate against the bundle, and the host name. Against a real TLS server on
loopback with certificates made here."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from shared.tls_trust import SharedTrustAdapter, trust_context
from sim.pki import cert_pem, issue_certificate, new_rsa_key, private_pem
from tests.helpers import count_bundle_reads


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def _authority(tmp_path: Path, name: str) -> tuple[object, object, Path]:
    key = new_rsa_key()
    cert = issue_certificate(key, f"{name} test CA", is_ca=True)
    path = tmp_path / f"{name}-ca.pem"
    path.write_bytes(cert_pem(cert))
    return key, cert, path


@contextmanager
def _server(tmp_path: Path, ca: tuple[object, object, Path], names: tuple[str, ...]) -> Iterator[str]:
    ca_key, ca_cert, _ = ca
    key = new_rsa_key()
    cert = issue_certificate(key, names[0], ca_key, ca_cert, server_names=names)  # type: ignore[arg-type]
    (tmp_path / "server.pem").write_bytes(cert_pem(cert))
    (tmp_path / "server-key.pem").write_bytes(private_pem(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server-key.pem")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def ours(tmp_path: Path) -> tuple[object, object, Path]:
    return _authority(tmp_path, "ours")


def _session() -> requests.Session:
    session = requests.Session()
    session.mount("https://", SharedTrustAdapter())
    return session


def test_a_server_the_bundle_trusts_under_its_own_name_is_reached(tmp_path, ours):
    with _server(tmp_path, ours, ("127.0.0.1",)) as url:
        assert _session().get(url, verify=str(ours[2]), timeout=30).text == "ok"


def test_a_certificate_for_another_host_name_is_refused(tmp_path, ours):
    with _server(tmp_path, ours, ("elsewhere.example",)) as url:
        with pytest.raises(requests.exceptions.SSLError, match=r"[Mm]ismatch"):
            _session().get(url, verify=str(ours[2]), timeout=30)


def test_a_certificate_from_an_authority_the_bundle_does_not_hold_is_refused(tmp_path, ours):
    other = _authority(tmp_path, "other")
    with _server(tmp_path, other, ("127.0.0.1",)) as url:
        with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            _session().get(url, verify=str(ours[2]), timeout=30)


def test_every_connection_shares_one_context_and_reads_the_bundle_once(tmp_path, ours, monkeypatch):
    reads = count_bundle_reads(monkeypatch)
    with _server(tmp_path, ours, ("127.0.0.1",)) as url:
        sessions = [_session() for _ in range(4)]  # a session each: a new connection each
        for session in sessions:
            assert session.get(url, verify=str(ours[2]), timeout=30).text == "ok"
        # requests alone: a new context, and the bundle read into it, for each of the 4 connections
        assert len(reads) == 1


def test_verify_true_means_requests_default_bundle(tmp_path):
    from requests.certs import where

    adapter = SharedTrustAdapter()
    request = requests.Request("GET", "https://example.blob.core.windows.net/").prepare()
    _, pool_kwargs = adapter.build_connection_pool_key_attributes(request, True)
    assert pool_kwargs["ssl_context"] is trust_context(where())
    assert "ca_certs" not in pool_kwargs


def test_a_client_certificate_or_no_verification_keeps_requests_own_path(tmp_path):
    adapter = SharedTrustAdapter()
    request = requests.Request("GET", "https://example.blob.core.windows.net/").prepare()
    for verify, cert in ((True, str(tmp_path / "client.pem")), (False, None)):
        _, pool_kwargs = adapter.build_connection_pool_key_attributes(request, verify, cert)
        assert "ssl_context" not in pool_kwargs
