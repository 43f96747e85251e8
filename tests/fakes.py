"""Fakes with behaviour for unit tests: a clock, a recording HTTP session, a test signing key, a stand-in for
azure-identity's ClientAssertionCredential (`ScriptedInner`) and the refusals Entra answers with.

Used only where a unit test needs to script exact HTTP answers (5xx, 429, HTML, timeouts) that the
simulators do not play; integration tests use the simulators and the local stack.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from urllib.parse import parse_qs

import requests
from azure.core.credentials import AccessTokenInfo
from azure.core.exceptions import ClientAuthenticationError
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.signing import KeyInfo, SigningKey, SigningKeyProvider, local_signer


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def response(status: int, body=None, headers: dict | None = None, raw: bytes | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    if raw is not None:
        r._content = raw
    else:
        r._content = json.dumps(body).encode() if body is not None else b""
        r.headers["Content-Type"] = "application/json"
    r.headers.update(headers or {})
    r._content_consumed = True  # the body is in memory: iter_content reads it, as after a real download
    return r


class FakeSession:
    """A requests.Session stand-in: `answer(form) -> Response or Exception`; records every form sent."""

    def __init__(self, answer: Callable[[dict], requests.Response | Exception]) -> None:
        self.answer = answer
        self.forms: list[dict] = []
        self.lock = threading.Lock()

    def post(self, url, data=None, headers=None, timeout=None, verify=None, **kwargs):
        form = {k: v for k, v in (data or {}).items()}
        with self.lock:
            self.forms.append(form)
            self.options = kwargs  # e.g. allow_redirects, stream
        result = self.answer(form)
        if isinstance(result, Exception):
            raise result
        return result


def make_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_provider(key: rsa.RSAPrivateKey, kid: str = "kid-1", clock=None) -> SigningKeyProvider:
    signing = SigningKey(KeyInfo("test", "unit", kid, key.key_size), local_signer(key))
    return SigningKeyProvider(lambda: signing, ttl=300, clock=clock or (lambda: 0.0))


def form_of(body: str) -> dict:
    return {k: v[-1] for k, v in parse_qs(body).items()}


# -- the Entra exchange: the Skyporten token it carries, and a stand-in for azure-identity's credential ------
ISSUER = "https://test.sky.maskinporten.no"
SUB = "0192:987654321;banenor:payloadmanager.storage"
SCOPE = "https://bnplmextnwesttest.blob.core.windows.net/.default"
class ScriptedInner:
    """Stands in for ClientAssertionCredential: answers from its cache until five minutes before expiry, else
    calls the assertion callback, then raises or answers."""

    def __init__(self, assertion, outcomes, clock, presented=None):
        self.assertion = assertion
        self.outcomes = outcomes  # shared by the stand-ins built after each invalidate
        self.clock = clock
        self.assertions = [] if presented is None else presented  # the assertions it presented to Entra
        self.cache = {}

    def get_token_info(self, *scopes, options=None):
        cached = self.cache.get(scopes)
        if cached is not None and self.clock() < cached.expires_on - 300:
            return cached
        self.assertions.append(self.assertion())
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, Exception):
            raise outcome
        self.cache[scopes] = AccessTokenInfo("storage-token-xyz", int(self.clock()) + 3599)
        return self.cache[scopes]


def refusal(code, text="refused"):
    return ClientAuthenticationError(
        message=f"Authentication failed: AADSTS{code}: {text} Trace ID: t Correlation ID: c Timestamp: now")
