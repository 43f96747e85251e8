"""The Skyporten token client: grant claims, token request, cache boundaries, concurrency, retries, errors."""

import http.server
import json
import threading

import jwt
import pytest
import requests

from shared.errors import MaskinportenError
from shared.skyporten_token import (
    GRANT_LIFETIME,
    JWT_BEARER,
    GrantRequest,
    SkyportenClient,
    decode_unverified,
    grant_claims,
)
from tests.fakes import FakeClock, FakeSession, key_provider, make_key, response

ISSUER = "https://test.sky.maskinporten.no"
REQUEST = GrantRequest(ISSUER, "client-123", "banenor:payloadmanager.storage")
KEY = make_key()


def token_body(clock, expires_in=120, exp_offset=None):
    now = int(clock())
    claims = {"iss": ISSUER, "sub": "0192:987654321;banenor:payloadmanager.storage", "aud": "api://x",
              "iat": now, "exp": now + (expires_in if exp_offset is None else exp_offset)}
    token = jwt.encode(claims, "k" * 32, algorithm="HS256")
    return {"access_token": token, "token_type": "Bearer", "expires_in": expires_in,
            "scope": "banenor:payloadmanager.storage"}


def make_client(answer, clock=None, request=REQUEST, **kwargs):
    clock = clock or FakeClock()
    session = FakeSession(answer)
    client = SkyportenClient(request, ISSUER + "/token", key_provider(KEY), session=session, clock=clock,
                                sleep=clock.sleep, jitter=lambda: 1.0, **kwargs)
    return client, session, clock


# -- the grant ------------------------------------------------------------------------------------------

def test_grant_has_exactly_the_documented_claims():
    claims = grant_claims(REQUEST, 1000.7, "jti-1")
    assert claims == {"aud": ISSUER, "iss": "client-123", "scope": "banenor:payloadmanager.storage",
                      "iat": 1000, "exp": 1000 + GRANT_LIFETIME, "jti": "jti-1"}


def test_grant_lifetime_is_within_maskinportens_120_seconds():
    claims = grant_claims(REQUEST, 0, "j")
    assert 0 < claims["exp"] - claims["iat"] <= 120


def test_resource_is_sent_as_a_string_by_default():
    claims = grant_claims(GrantRequest(ISSUER, "c", "s", resource="https://r.example"), 0, "j")
    assert claims["resource"] == "https://r.example"


def test_resource_is_sent_as_an_array_when_configured():
    claims = grant_claims(GrantRequest(ISSUER, "c", "s", resource="https://r.example", resource_form="array"), 0, "j")
    assert claims["resource"] == ["https://r.example"]


def test_grant_is_signed_rs256_with_the_kid_and_verifies_with_the_public_key():
    client, _, _ = make_client(lambda f: response(200, {}))
    grant = client.build_grant()
    header = jwt.get_unverified_header(grant)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": "kid-1"}
    claims = jwt.decode(grant, KEY.public_key(), algorithms=["RS256"], audience=ISSUER,
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["iss"] == "client-123"


def test_every_grant_has_a_fresh_jti():
    client, _, _ = make_client(lambda f: response(200, {}))
    jtis = {decode_unverified(client.build_grant())["jti"] for _ in range(5)}
    assert len(jtis) == 5


def test_token_request_is_a_form_post_with_the_jwt_bearer_grant():
    clock = FakeClock()
    client, session, _ = make_client(lambda f: response(200, token_body(clock)), clock=clock)
    client.get_token()
    assert set(session.forms[0]) == {"grant_type", "assertion"}
    assert session.forms[0]["grant_type"] == JWT_BEARER


# -- the cache ------------------------------------------------------------------------------------------

def test_token_valid_until_min_of_expires_in_and_exp_claim():
    clock = FakeClock()
    client, _, _ = make_client(lambda f: response(200, token_body(clock, expires_in=120, exp_offset=90)), clock=clock)
    assert client.get_token().expires_at == int(clock()) + 90


def test_reuses_cached_token_until_one_second_before_refresh_margin():
    clock = FakeClock()
    client, session, _ = make_client(lambda f: response(200, token_body(clock, expires_in=120)), clock=clock,
                                     margin=30)
    first = client.get_token()
    clock.now = first.expires_at - 30 - 1
    assert client.get_token() is first
    assert len(session.forms) == 1


def test_refreshes_at_the_refresh_margin():
    clock = FakeClock()
    client, session, _ = make_client(lambda f: response(200, token_body(clock, expires_in=120)), clock=clock,
                                     margin=30)
    first = client.get_token()
    clock.now = first.expires_at - 30
    assert client.get_token() is not first
    assert len(session.forms) == 2


def test_invalidate_forces_a_new_request():
    clock = FakeClock()
    client, session, _ = make_client(lambda f: response(200, token_body(clock)), clock=clock)
    client.get_token()
    client.invalidate()
    client.get_token()
    assert len(session.forms) == 2


def test_fifty_threads_asking_at_once_cause_one_request():
    clock = FakeClock()
    gate = threading.Event()

    def slow(form):
        gate.wait(2)
        return response(200, token_body(clock))

    client, session, _ = make_client(slow, clock=clock)
    results = []
    threads = [threading.Thread(target=lambda: results.append(client.get_token())) for _ in range(50)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(session.forms) == 1
    assert len({id(r) for r in results}) == 1


# -- retries --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_retries_transient_status_then_succeeds(status):
    clock = FakeClock()
    answers = iter([response(status, {"error": "server_error"}), response(200, token_body(clock))])
    client, session, _ = make_client(lambda f: next(answers), clock=clock)
    client.get_token()
    assert len(session.forms) == 2


def test_honours_retry_after_on_429():
    clock = FakeClock()
    answers = iter([response(429, {"error": "slow_down"}, {"Retry-After": "7"}), response(200, token_body(clock))])
    client, _, _ = make_client(lambda f: next(answers), clock=clock)
    client.get_token()
    assert clock.slept == [7.0]


def test_backoff_grows_exponentially_and_is_capped():
    clock = FakeClock()
    client, session, _ = make_client(lambda f: response(503, {"error": "x"}), clock=clock, max_retries=6)
    with pytest.raises(MaskinportenError):
        client.get_token()
    assert clock.slept == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert len(session.forms) == 7


def test_connection_errors_are_retried_then_reported_as_unreachable():
    client, session, _ = make_client(lambda f: requests.ConnectionError("refused"), max_retries=2)
    with pytest.raises(MaskinportenError, match="unreachable") as info:
        client.get_token()
    assert info.value.transient
    assert len(session.forms) == 3


@pytest.mark.parametrize("status", [400, 401])
def test_client_errors_are_never_retried(status):
    client, session, _ = make_client(lambda f: response(status, {"error": "invalid_grant",
                                                                "error_description": "bad (MP-124)"}))
    with pytest.raises(MaskinportenError):
        client.get_token()
    assert len(session.forms) == 1


def test_clock_error_mp130_is_retried_once_with_a_fresh_grant(caplog):
    clock = FakeClock()
    answers = iter([response(400, {"error": "invalid_grant", "error_description": "JWT expired (MP-130)"}),
                    response(200, token_body(clock))])
    client, session, _ = make_client(lambda f: next(answers), clock=clock)
    client.get_token()
    assert session.forms[0]["assertion"] != session.forms[1]["assertion"]
    assert "check the clock" in caplog.text


def test_clock_error_mp130_twice_is_reported():
    body = {"error": "invalid_grant", "error_description": "JWT expired (MP-130)"}
    client, session, _ = make_client(lambda f: response(400, body))
    with pytest.raises(MaskinportenError, match="MP-130") as info:
        client.get_token()
    assert "NTP" in info.value.hint
    assert len(session.forms) == 2


# -- error messages -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "description", "expect_code", "expect_hint"), [
    ("invalid_client", "Client not found (MP-100) Trace ID: 1", "MP-100", "MASKINPORTEN_CLIENT_ID"),
    ("invalid_grant", "Invalid JWT claim aud (MP-110)", "MP-110", "trailing slash"),
    ("invalid_grant", "Invalid certificate (MP-120)", "MP-120", "enterprise certificate"),
    ("invalid_grant", "Key expired (MP-121)", "MP-121", "register a new key"),
    ("invalid_grant", "Invalid x5c (MP-123)", "MP-123", "JSON array"),
    ("invalid_grant", "Invalid signature (MP-124)", "MP-124", "MASKINPORTEN_KEY_ID"),
    ("invalid_grant", "Grant is used before (MP-012)", "MP-012", "never resend"),
    ("invalid_scope", "Scope not allowed (MP-200)", "MP-200", "Samarbeidsportalen"),
    ("invalid_scope", "Scope not allowed (MP-201)", "MP-201", "Samarbeidsportalen"),
    ("invalid_scope", "Consumer not granted (MP-250)", "MP-250", "ask Bane NOR"),
    ("unauthorized_client", "nope", None, "Samarbeidsportalen"),
    ("unsupported_grant_type", "nope", None, "MASKINPORTEN_TOKEN_ENDPOINT"),
])
def test_each_refusal_names_its_cause_and_fix(error, description, expect_code, expect_hint):
    client, _, _ = make_client(lambda f: response(400, {"error": error, "error_description": description}))
    with pytest.raises(MaskinportenError) as info:
        client.get_token()
    assert info.value.code == expect_code
    assert info.value.error == error
    assert expect_hint in str(info.value)
    assert description in str(info.value)  # logged whole: it carries the trace id


@pytest.mark.parametrize(("status", "raw", "ctype"), [
    (200, b"<html>proxy login</html>", "text/html"),
    (200, b"", "application/json"),
    (502, b"<html>bad gateway</html>", "text/html"),
])
def test_non_oauth_answers_give_one_clear_error(status, raw, ctype):
    client, _, _ = make_client(lambda f: response(status, raw=raw, headers={"Content-Type": ctype}), max_retries=0)
    with pytest.raises(MaskinportenError, match=r"MASKINPORTEN_TOKEN_ENDPOINT|without"):
        client.get_token()


def test_json_without_access_token_is_an_error():
    client, _, _ = make_client(lambda f: response(200, {"token_type": "Bearer"}))
    with pytest.raises(MaskinportenError, match="without an access_token"):
        client.get_token()


def test_token_repr_and_errors_never_show_the_token_or_grant(caplog):
    clock = FakeClock()
    body = token_body(clock)
    client, session, _ = make_client(lambda f: response(200, body), clock=clock)
    caplog.set_level("DEBUG")
    token = client.get_token()
    assert body["access_token"] not in repr(token)
    assert session.forms[0]["assertion"] not in caplog.text
    assert body["access_token"] not in caplog.text
    assert json.dumps(body["access_token"])[1:20] not in caplog.text


# -- redirects and malformed answers (issue 17 points 5 and 6) ----------------------------------------------

class _Recorder(http.server.BaseHTTPRequestHandler):
    """A loopback HTTP server: /token answers with `reply` (status, headers, body); records each request."""

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append((self.path, self.rfile.read(length)))
        status, headers, body = self.server.reply
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_servers():
    servers = []

    def start(reply):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        server.seen, server.reply = [], reply
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("where", ["another origin", "plain http elsewhere"])
def test_a_redirect_from_the_token_endpoint_is_an_error_naming_the_endpoint_setting(http_servers, status, where):
    elsewhere = http_servers((200, {}, b"{}"))
    target = f"http://127.0.0.1:{elsewhere.server_port}/token"
    if where == "plain http elsewhere":
        target = f"http://localhost:{elsewhere.server_port}/stolen"
    endpoint = http_servers((status, {"Location": target}, b""))
    client = SkyportenClient(REQUEST, f"http://127.0.0.1:{endpoint.server_port}/token", key_provider(KEY),
                                max_retries=0)
    with pytest.raises(MaskinportenError) as info:
        client.get_token()
    assert "MASKINPORTEN_TOKEN_ENDPOINT" in str(info.value)
    assert "redirect" in str(info.value)
    assert len(endpoint.seen) == 1
    assert elsewhere.seen == []  # the signed grant went nowhere else


def _jwt_with_payload(payload: bytes) -> str:
    from shared.signing import b64url

    return b64url(b'{"alg":"none"}') + "." + b64url(payload) + ".c2ln"


@pytest.mark.parametrize(("body", "what"), [
    ({"access_token": _jwt_with_payload(b"[1, 2]"), "expires_in": 120}, "payload is a JSON list"),
    ({"access_token": _jwt_with_payload(b"null"), "expires_in": 120}, "payload is null"),
    ({"access_token": _jwt_with_payload(b"not json"), "expires_in": 120}, "payload is not JSON"),
    ({"access_token": "no-dots-at-all", "expires_in": 120}, "not a JWT"),
    ({"access_token": _jwt_with_payload(b'{"exp": "soon"}')}, "non-numeric exp without expires_in"),
    ({"access_token": _jwt_with_payload(b'{"exp": "soon"}'), "expires_in": "a while"}, "neither is a number"),
    ([{"access_token": "x"}], "answer is a JSON list"),
    (None, "answer is null"),
    ({"access_token": 42, "expires_in": 120}, "access_token is a number"),
])
def test_each_malformed_answer_is_one_skyporten_error_naming_the_endpoint_setting(body, what):
    client, _, _ = make_client(lambda f: response(200, body), max_retries=0)
    with pytest.raises(MaskinportenError) as info:
        client.get_token().expires_at + 0  # a usable token must also say when it expires
    assert "MASKINPORTEN_TOKEN_ENDPOINT" in str(info.value), what


def test_an_answer_over_the_size_cap_is_refused_without_reading_it_all(http_servers):
    from shared.skyporten_token import MAX_ANSWER_BYTES

    body = b'{"access_token": "' + b"a" * (MAX_ANSWER_BYTES * 4) + b'"}'
    endpoint = http_servers((200, {"Content-Type": "application/json"}, body))
    client = SkyportenClient(REQUEST, f"http://127.0.0.1:{endpoint.server_port}/token", key_provider(KEY),
                                max_retries=0)
    with pytest.raises(MaskinportenError, match="larger than"):
        client.get_token()


def test_a_non_numeric_iat_is_ignored_and_the_token_is_cached_from_when_it_was_sent():
    body = {"access_token": _jwt_with_payload(b'{"iat": "now", "exp": 1800000100}'), "expires_in": 120}
    client, _, clock = make_client(lambda f: response(200, body), max_retries=0)
    first = client.get_token()
    assert client.get_token() is first
    assert first.claims["iat"] == clock()
