"""The Bane NOR credential: AADSTS errors -> messages from the data table; federation retry window; 700024.

The inner azure-identity credential is replaced here by a scripted stand-in (tests/fakes.py's `ScriptedInner`) that
caches as azure-identity does (until five minutes before expiry; the real one against the Entra simulator is exercised
in tests/test_token_chain.py and tests/test_token_recovery.py); the Skyporten client is real, with a scripted session.
"""

import jwt
import pytest
from azure.core.credentials import AccessTokenInfo

from shared.banenor_credential import AADSTS, BaneNorCredential, entra_error
from shared.errors import EntraError
from shared.skyporten_token import GrantRequest, SkyportenClient
from tests.fakes import (
    ISSUER,
    SCOPE,
    SUB,
    FakeClock,
    FakeSession,
    ScriptedInner,
    key_provider,
    make_key,
    refusal,
    response,
)

KEY = make_key()


def make(outcomes, retry_window=300, presented=None):
    """The credential, its Skyporten session and clock; `presented` (a list) collects every assertion the
    stand-ins for azure-identity present to Entra, across the stand-ins built after each invalidate."""
    clock = FakeClock()

    def answer(form):
        now = int(clock())
        token = jwt.encode({"iss": ISSUER, "sub": SUB, "aud": "api://AzureADTokenExchange", "iat": now,
                            "exp": now + 120, "jti": str(len(session.forms))}, "k" * 32, algorithm="HS256")
        return response(200, {"access_token": token, "expires_in": 120, "scope": "s"})

    session = FakeSession(answer)
    sky = SkyportenClient(GrantRequest(ISSUER, "c", "banenor:payloadmanager.storage"), ISSUER + "/token",
                             key_provider(KEY), session=session, clock=clock, sleep=clock.sleep)
    script = list(outcomes)
    cred = BaneNorCredential("tenant", "mi-client", sky, clock=clock, sleep=clock.sleep,
                             federation_retry_seconds=retry_window,
                             new_inner=lambda assertion: ScriptedInner(assertion, script, clock, presented))
    return cred, session, clock


def test_success_returns_the_storage_token_and_caches_it():
    cred, session, _ = make([None])
    assert cred.get_token(SCOPE).token == "storage-token-xyz"
    cred.get_token(SCOPE)
    assert cred.exchanges == 1
    assert len(session.forms) == 1


def test_refreshes_five_minutes_before_expiry():
    cred, _, clock = make([None, None])
    first = cred.get_token_info(SCOPE)
    clock.now = first.expires_on - 301
    cred.get_token_info(SCOPE)
    assert cred.exchanges == 1
    clock.now = first.expires_on - 300
    cred.get_token_info(SCOPE)
    assert cred.exchanges == 2


def test_the_credential_hands_out_what_azure_identity_answers_with_no_cache_of_its_own():
    renewed = iter(["first-token", "renewed-token"])

    class Renewing:  # an inner credential whose cache renewed the token between two calls
        def get_token_info(self, *scopes, options=None):
            return AccessTokenInfo(next(renewed), 10**10)

    cred = BaneNorCredential("tenant", "mi-client", None, new_inner=lambda assertion: Renewing())
    assert [cred.get_token(SCOPE).token for _ in range(2)] == ["first-token", "renewed-token"]


@pytest.mark.parametrize("code", sorted(AADSTS))
def test_each_aadsts_code_maps_to_its_message_from_the_table(code):
    error = entra_error(refusal(code), {"iss": ISSUER, "sub": SUB, "aud": "a"}, {"client_id": "x", "issuer": ISSUER})
    assert error.code == f"AADSTS{code}"
    assert AADSTS[code].meaning in str(error)
    assert error.hint == AADSTS[code].fix


def test_unknown_code_still_gives_one_clear_error():
    error = entra_error(refusal(99999), {}, {})
    assert error.code == "AADSTS99999"
    assert "troubleshooting" in error.hint


def test_federation_mismatch_shows_what_the_token_carried_beside_what_is_needed():
    text = ("No matching federated identity record found for presented assertion. "
            f"Assertion Issuer: '{ISSUER}'. Assertion Subject: '{SUB}'. Assertion Audience: 'api://x'.")
    error = entra_error(refusal(70021, text), {"iss": ISSUER, "sub": SUB, "aud": "api://x"},
                        {"client_id": "mi-client", "issuer": ISSUER})
    message = str(error)
    assert f"issuer={ISSUER!r}" in message
    assert f"subject={SUB!r}" in message
    assert "audience='api://x'" in message
    assert "'mi-client'" in message
    assert "ask Bane NOR" in message


def test_federation_mismatch_is_retried_with_backoff_within_the_window():
    cred, _, clock = make([refusal(70021), refusal(70021), None], retry_window=300)
    assert cred.get_token(SCOPE).token == "storage-token-xyz"
    assert clock.slept == [5.0, 10.0]


def test_federation_mismatch_gives_up_when_the_window_is_over():
    cred, _, clock = make([refusal(700213)] * 50, retry_window=120)
    with pytest.raises(EntraError, match="AADSTS700213"):
        cred.get_token(SCOPE)
    assert sum(clock.slept) == pytest.approx(120)


def test_after_the_window_a_later_call_fails_at_once():
    cred, _, clock = make([refusal(70021)] * 50, retry_window=60)
    with pytest.raises(EntraError):
        cred.get_token(SCOPE)
    slept = len(clock.slept)
    with pytest.raises(EntraError):
        cred.get_token(SCOPE)
    assert len(clock.slept) == slept


def test_expired_assertion_refetches_the_skyporten_token_and_retries_once():
    presented = []
    cred, session, _ = make([refusal(700024), None], presented=presented)
    cred.get_token(SCOPE)
    assert len(session.forms) == 2  # the cached Skyporten token was dropped
    first, second = presented
    assert first != second, "the retry must present a new Skyporten token"


def test_expired_assertion_twice_is_reported():
    cred, _, _ = make([refusal(700024), refusal(700024)])
    with pytest.raises(EntraError, match="AADSTS700024"):
        cred.get_token(SCOPE)


@pytest.mark.parametrize("code", [700016, 90002, 50027, 53003, 500011])
def test_fatal_codes_are_not_retried(code):
    cred, _, clock = make([refusal(code), None])
    with pytest.raises(EntraError):
        cred.get_token(SCOPE)
    assert cred.exchanges == 1
    assert clock.slept == []


def test_object_id_instead_of_client_id_is_explained():
    cred, _, _ = make([refusal(700016, "Application with identifier 'x' was not found in the directory 't'.")])
    with pytest.raises(EntraError) as info:
        cred.get_token(SCOPE)
    assert "not its object/principal id" in str(info.value)


def test_credential_repr_and_errors_hold_no_token(caplog):
    presented = []
    cred, session, _ = make([refusal(70021)] * 50, retry_window=0, presented=presented)
    with pytest.raises(EntraError) as info:
        cred.get_token(SCOPE)
    assertion = presented[0]
    assert assertion not in str(info.value)
    assert assertion not in repr(cred)
    assert assertion not in caplog.text
    assert session.forms[0]["assertion"] not in caplog.text


def test_a_malformed_skyporten_answer_inside_the_assertion_callback_stays_a_skyporten_error():
    # The real azure-identity credential calls our callback before it contacts Entra (the authority here is
    # never reached): the error must name Skyporten's setting, not BANENOR_AUTHORITY_HOST.
    from shared.errors import MaskinportenError
    from shared.signing import b64url

    clock = FakeClock()
    not_a_claims_object = b64url(b'{"alg":"none"}') + "." + b64url(b"[1, 2]") + ".c2ln"
    session = FakeSession(lambda form: response(200, {"access_token": not_a_claims_object, "expires_in": 120}))
    sky = SkyportenClient(GrantRequest(ISSUER, "c", "banenor:payloadmanager.storage"), ISSUER + "/token",
                             key_provider(KEY), session=session, clock=clock, sleep=clock.sleep, max_retries=0)
    cred = BaneNorCredential("6ee535f2-3064-4ac9-81d8-4ceb2ff790c6", "11111111-2222-3333-4444-555555555555", sky,
                             authority="https://127.0.0.1:9", clock=clock, sleep=clock.sleep)
    with pytest.raises(MaskinportenError) as info:
        cred.get_token(SCOPE)
    assert "MASKINPORTEN_TOKEN_ENDPOINT" in str(info.value)
    assert "BANENOR_AUTHORITY_HOST" not in str(info.value)


@pytest.mark.parametrize(("resource", "aud", "expect"), [
    (None, "unspecified", "Set MASKINPORTEN_RESOURCE"),
    ("https://skyporten.example.no", "https://skyporten.example.no", "the token's audience is MASKINPORTEN_RESOURCE"),
    ("https://skyporten.example.no", "api://bound", "ignored MASKINPORTEN_RESOURCE"),
    (None, "api://bound", "bound the audience 'api://bound' to the scope (no MASKINPORTEN_RESOURCE sent)"),
])
def test_audience_mismatch_fix_says_which_reading_of_the_audience_is_in_play(resource, aud, expect):
    error = entra_error(refusal(700212), {"iss": ISSUER, "sub": SUB, "aud": aud},
                        {"client_id": "x", "issuer": ISSUER, "resource": resource})
    assert expect in error.hint
    assert f"resource sent: {resource or 'none'}" in str(error)


# -- after a gateway 401 (issue 18) ---------------------------------------------------------------------------

def test_dropping_the_refused_token_makes_the_next_call_exchange_anew():
    cred, session, _ = make([])
    refused = cred.get_token(SCOPE).token
    assert cred.invalidate(refused) is True
    cred.get_token(SCOPE)
    assert cred.exchanges == 2
    assert len(session.forms) == 1  # the Skyporten token was still good


def test_a_token_already_replaced_is_not_dropped_again():
    cred, _, _ = make([])
    cred.get_token(SCOPE)
    assert cred.invalidate("a-token-no-longer-cached") is False
    cred.get_token(SCOPE)
    assert cred.exchanges == 1


def test_a_token_issued_anew_and_refused_again_drops_the_skyporten_token_too():
    cred, session, _ = make([])
    cred.invalidate(cred.get_token(SCOPE).token)
    fresh = cred.get_token(SCOPE).token
    assert len(session.forms) == 1
    assert cred.invalidate(fresh) is True
    cred.get_token(SCOPE)
    assert len(session.forms) == 2

