"""Issue 29: a storage token the gateway refuses (401) before its expiry is recovered where the token is used: in
Bane NOR's storage client, for every request it sends (a write, a read-back, a listing), not in one delivery path.

Bane NOR's client is built by the product's own builder (`storage.banenor_service_client`) on a scripted transport
(`transport=`, a public option of every azure-core client) that answers as the gateway would; the credential is the
real `BaneNorCredential` with a scripted stand-in for azure-identity's inner credential that issues a new token per
exchange. The real chain against the simulators is tests/test_token_recovery.py.
"""

from __future__ import annotations

import io
import threading

import jwt
import pytest
import requests
from azure.core.credentials import AccessTokenInfo
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import HttpTransport, RequestsTransportResponse

from shared.banenor_credential import BaneNorCredential
from shared.config import Settings
from shared.skyporten_token import GrantRequest, SkyportenClient
from shared.storage import banenor_service_client
from tests.fakes import ISSUER, SUB, FakeClock, FakeSession, key_provider, make_key, response

KEY = make_key()
ENV = {
    "BANENOR_ENVIRONMENT": "test", "MASKINPORTEN_CLIENT_ID": "a1b2c3d4-0000-0000-0000-000000000000",
    "MASKINPORTEN_KEY_ID": "partner-key-2026", "SIGNING_KEY_SOURCE": "keyvault-secret",
    "KEY_VAULT_URL": "https://partner-kv.vault.azure.net", "SIGNING_KEY_NAME": "maskinporten-key",
    "BANENOR_TENANT_ID": "6ee535f2-3064-4ac9-81d8-4ceb2ff790c6",
    "BANENOR_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
    "BANENOR_CONTAINER": "integration-dev", "BANENOR_DIRECTORY": "partner-987654321",
    "EXPORT_STORAGE__blobServiceUri": "https://partnerexports.blob.core.windows.net",
}

class IssuingInner:
    """Stands in for azure-identity's ClientAssertionCredential: caches its token until five minutes before
    expiry, and every exchange (the assertion asked for) issues a token of its own: storage-token-1, -2, ..."""

    issued = 0
    lock = threading.Lock()

    def __init__(self, assertion, clock):
        self.assertion, self.clock, self.cache = assertion, clock, {}

    def get_token_info(self, *scopes, options=None):
        cached = self.cache.get(scopes)
        if cached is not None and self.clock() < cached.expires_on - 300:
            return cached
        self.assertion()
        with IssuingInner.lock:
            IssuingInner.issued += 1
            token = f"storage-token-{IssuingInner.issued}"
        self.cache[scopes] = AccessTokenInfo(token, int(self.clock()) + 3599)
        return self.cache[scopes]


def credential():
    """The real BaneNorCredential; its Skyporten client answers from a scripted session (`session.forms`: one per
    Skyporten token fetched)."""
    clock = FakeClock()
    IssuingInner.issued = 0

    def answer(form):
        now = int(clock())
        token = jwt.encode({"iss": ISSUER, "sub": SUB, "aud": "api://AzureADTokenExchange", "iat": now,
                            "exp": now + 120, "jti": str(len(session.forms))}, "k" * 32, algorithm="HS256")
        return response(200, {"access_token": token, "expires_in": 120, "scope": "s"})

    session = FakeSession(answer)
    sky = SkyportenClient(GrantRequest(ISSUER, "c", "banenor:payloadmanager.storage"), ISSUER + "/token",
                             key_provider(KEY), session=session, clock=clock, sleep=clock.sleep)
    cred = BaneNorCredential("tenant", "mi-client", sky, clock=clock, sleep=clock.sleep,
                             new_inner=lambda assertion: IssuingInner(assertion, clock))
    return cred, session


class Gateway(HttpTransport):
    """A transport that answers as the gateway: 401 to a token it was told to refuse, else `ok(request)`.
    Records each request's bearer token and body as sent."""

    def __init__(self, refuse=lambda token: False):
        self.refuse = refuse
        self.sent: list[tuple[str, str, bytes | None]] = []  # (method, token, body)
        self.lock = threading.Lock()

    def send(self, request, **kwargs):
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        body = request.body
        data = body.read() if hasattr(body, "read") else body
        with self.lock:
            self.sent.append((request.method, token, data))
        if self.refuse(token):
            answer = response(401, {"statusCode": 401, "message": "Unauthorized. Access token is invalid."})
        elif request.method == "PUT":
            answer = response(201, raw=b"", headers={"ETag": '"0x1"',
                                                     "Last-Modified": "Mon, 30 Nov 2026 01:02:03 GMT"})
        else:
            answer = response(200, raw=b"", headers={"ETag": '"0x1"', "Content-Length": "0",
                                                     "Last-Modified": "Mon, 30 Nov 2026 01:02:03 GMT",
                                                     "x-ms-blob-type": "BlockBlob"})
        answer.request = requests.Request(request.method, request.url).prepare()
        return RequestsTransportResponse(request, answer)

    def tokens(self):
        return [token for _method, token, _body in self.sent]

    def open(self):
        pass

    def close(self):
        pass

    def __exit__(self, *args):
        pass


def client(cred, gateway):
    settings = Settings.load(ENV)
    return banenor_service_client(settings.banenor, settings.http, cred, transport=gateway)


def blob(cred, gateway, name="partner-987654321/a.csv"):
    return client(cred, gateway).get_blob_client("integration-dev", name)


def test_a_read_back_refused_once_is_sent_again_with_a_token_entra_issues_anew():
    cred, session = credential()
    gateway = Gateway(refuse=lambda token: token == "storage-token-1")
    props = blob(cred, gateway).get_blob_properties()
    assert props.etag == '"0x1"'
    assert gateway.tokens() == ["storage-token-1", "storage-token-2"]
    assert (cred.exchanges, len(session.forms)) == (2, 1)  # one Entra exchange anew; the Skyporten token was good


def test_a_write_refused_once_is_sent_again_whole_with_the_same_body():
    cred, _ = credential()
    gateway = Gateway(refuse=lambda token: token == "storage-token-1")
    blob(cred, gateway).upload_blob(b"a;b\n1;2\n", overwrite=True)
    assert [(m, t, b) for m, t, b in gateway.sent] == [("PUT", "storage-token-1", b"a;b\n1;2\n"),
                                                     ("PUT", "storage-token-2", b"a;b\n1;2\n")]


def test_a_listing_refused_once_heals_as_well():
    cred, _ = credential()
    gateway = Gateway(refuse=lambda token: token == "storage-token-1")
    container = client(cred, gateway).get_container_client("integration-dev")
    container.get_container_properties()
    assert gateway.tokens() == ["storage-token-1", "storage-token-2"]


def test_a_fresh_token_refused_again_fetches_the_skyporten_token_anew():
    cred, session = credential()
    gateway = Gateway(refuse=lambda token: token in ("storage-token-1", "storage-token-2"))
    blob(cred, gateway).get_blob_properties()
    assert gateway.tokens() == ["storage-token-1", "storage-token-2", "storage-token-3"]
    assert len(session.forms) == 2


def test_a_token_refused_every_time_is_sent_at_most_twice_more_then_the_401_reaches_the_caller():
    cred, session = credential()
    gateway = Gateway(refuse=lambda token: True)
    with pytest.raises(ClientAuthenticationError) as refused:
        blob(cred, gateway).get_blob_properties()
    assert refused.value.status_code == 401
    assert len(gateway.sent) == 3  # the request, then two more (UNAUTHORIZED_RETRIES)
    assert len(session.forms) == 2  # bounded: one Entra exchange anew, then one with a new Skyporten token
    assert "storage-token" not in str(refused.value)


class OneWayStream(io.RawIOBase):
    """An upload body that can be read once and never sought back (a pipe, a generator's stream)."""

    def __init__(self, data):
        self.data = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        return self.data.readinto(buffer)

    def seekable(self):
        return False

    def tell(self):
        raise io.UnsupportedOperation("tell")

    def seek(self, *args):
        raise io.UnsupportedOperation("seek")


def test_a_body_that_cannot_be_sent_again_fails_with_its_401_but_the_refused_token_is_dropped():
    cred, _ = credential()
    gateway = Gateway(refuse=lambda token: token == "storage-token-1")
    target = blob(cred, gateway)
    with pytest.raises(ClientAuthenticationError):
        target.stage_block("block-000001", OneWayStream(b"a;b\n"), length=4)  # the stream is the request's body
    assert gateway.tokens() == ["storage-token-1"]  # not sent again: its bytes are gone
    target.get_blob_properties()  # the next request carries a token Entra issued anew
    assert gateway.tokens() == ["storage-token-1", "storage-token-2"]


def test_concurrent_requests_refused_at_once_share_one_new_exchange():
    cred, session = credential()
    refused = threading.Barrier(6, timeout=10)

    def refuse(token):
        if token == "storage-token-1":
            refused.wait()  # every request meets the 401 before any of them sends again
            return True
        return False

    gateway = Gateway()
    container = client(cred, gateway).get_container_client("integration-dev")
    container.get_container_properties()  # warm: every request then starts with storage-token-1 cached
    gateway.sent.clear()
    gateway.refuse = refuse
    errors: list[BaseException] = []

    def read(i):
        try:
            container.get_blob_client(f"partner-987654321/{i}.csv").get_blob_properties()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(set(gateway.tokens())) == ["storage-token-1", "storage-token-2"]
    assert cred.exchanges == 2 and len(session.forms) == 1
