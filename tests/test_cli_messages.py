"""What the command line says when something is wrong, without the local stack (issue 27): a mistyped FILE is a
command-line mistake, a dead Skyporten host has a fix, a diagnosed Entra refusal is not retried for minutes, and
an AADSTS500011 fix never suggests the audience that was just refused."""

from __future__ import annotations

import jwt
import pytest

from shared.banenor_credential import BaneNorCredential
from shared.cli import EXIT_CONFIG, main
from shared.config import Settings
from shared.doctor import CHECKS, Run, run_checks
from shared.errors import EntraError
from shared.skyporten_token import UNSPECIFIED_AUDIENCE, GrantRequest, SkyportenClient
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
from tests.helpers import base_env, closed_port

KEY = make_key()


# -- send FILE that is not there (item 2) ----------------------------------------------------------------------
def test_send_of_a_local_file_that_does_not_exist_is_a_command_line_mistake(tmp_path, capsys, cli_logging):
    absent = tmp_path / "absent.csv"
    assert main(["send", str(absent)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"no such file: {absent}" in err and "Fix:" in err
    assert "retried by the next sync" not in err


def test_send_names_every_missing_file_and_a_directory_before_sending_anything(tmp_path, capsys, cli_logging):
    present = tmp_path / "present.csv"
    present.write_text("a\n")
    code = main(["send", str(present), str(tmp_path / "one.csv"), str(tmp_path), "--json"])
    assert code == EXIT_CONFIG
    captured = capsys.readouterr()
    assert "one.csv" in captured.err and "is a directory" in captured.err
    assert '"exit_code": 2' in captured.out


# -- doctor's clock link with a dead Skyporten host (item 4) -----------------------------------------------------
def test_doctor_clock_link_with_skyporten_unreachable_gives_the_cause_and_a_fix():
    issuer = f"https://127.0.0.1:{closed_port()}"
    run = Run(read_only=True, settings=Settings.load(base_env(MASKINPORTEN_ISSUER=issuer)))
    clock = next(c for c in CHECKS if c.link == "clock")
    (result,) = run_checks((clock,), read_only=True, run=run)
    assert result.status == "fail" and result.exit_code == 11
    assert "cannot be reached" in result.details[0] and "refused" in result.details[0]
    assert "HTTPSConnectionPool" not in result.details[0]
    assert result.fix and "MASKINPORTEN_ISSUER" in result.fix


# -- the Entra exchange once the cause is known (item 5) -------------------------------------------------------
def credential(outcomes, *, aud, resource=None, retry_window=300):
    """A BaneNorCredential whose Skyporten tokens carry `aud`, sent with `resource`, and whose Entra answers
    are `outcomes` (an exception, or None for a token)."""
    clock = FakeClock()

    def answer(form):
        now = int(clock())
        token = jwt.encode({"iss": ISSUER, "sub": SUB, "aud": aud, "iat": now, "exp": now + 120,
                            "jti": str(len(session.forms))}, "k" * 32, algorithm="HS256")
        return response(200, {"access_token": token, "expires_in": 120, "scope": "s"})

    session = FakeSession(answer)
    sky = SkyportenClient(GrantRequest(ISSUER, "c", "banenor:payloadmanager.storage", resource=resource),
                             ISSUER + "/token", key_provider(KEY), session=session, clock=clock, sleep=clock.sleep)
    script = list(outcomes)
    cred = BaneNorCredential("tenant", "mi-client", sky, clock=clock, sleep=clock.sleep,
                             federation_retry_seconds=retry_window,
                             new_inner=lambda assertion: ScriptedInner(assertion, script, clock))
    return cred, clock


@pytest.mark.parametrize("code", [700212, 70021])
def test_an_audience_mismatch_already_diagnosed_is_reported_at_once_not_retried(code):
    # aud 'unspecified' with no resource sent: Skyporten takes the audience from a resource that was never sent,
    # so no federated credential can ever match; waiting for propagation cannot help.
    cred, clock = credential([refusal(code)] * 50, aud=UNSPECIFIED_AUDIENCE, resource=None)
    with pytest.raises(EntraError) as info:
        cred.get_token(SCOPE)
    assert clock.slept == [] and cred.exchanges == 1
    assert "MASKINPORTEN_RESOURCE" in info.value.hint


def test_an_audience_mismatch_with_a_resource_sent_is_still_retried_for_propagation():
    cred, clock = credential([refusal(700212), None], aud="https://skyporten.example.no",
                             resource="https://skyporten.example.no")
    assert cred.get_token(SCOPE).token == "storage-token-xyz"
    assert clock.slept == [5.0]


def test_retry_notes_reach_the_terminal_only_with_verbose(tmp_path, capsys, cli_logging):
    from shared import banenor_credential, skyporten_token

    absent = str(tmp_path / "absent.csv")
    for verbose in (False, True):
        main(["send", absent, *(["--verbose"] if verbose else [])])  # exits 2 at once; logging is set up
        # As the relay logs them: each retry note carries the structured mark the command line filters on (#29)
        banenor_credential.log.warning("No federated credential matched yet (it may still be propagating); "
                                       "retrying in %.0f s, giving up in %.0f s", 5, 295, extra={"relay_retry": True})
        skyporten_token.log.warning("Skyporten token request failed; retry %d in %.1f s", 1, 0.5,
                                    extra={"relay_retry": True})
        err = capsys.readouterr().err
        assert ("retrying in 5 s" in err) is verbose and ("retry 1 in 0.5 s" in err) is verbose


# -- AADSTS500011 (item 6) ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [500011, 70011])
def test_an_unknown_storage_audience_fix_does_not_suggest_the_refused_audience(code):
    refused = SCOPE.removesuffix("/.default")  # https://bnplmextnwesttest.blob.core.windows.net
    cred, _ = credential([refusal(code)], aud="api://AzureADTokenExchange")
    with pytest.raises(EntraError) as info:
        cred.get_token(SCOPE)
    assert refused not in info.value.hint
    assert "BANENOR_STORAGE_AUDIENCE" in info.value.hint and "BANENOR_ENVIRONMENT" in info.value.hint
    assert "https://bnplmextnwestprod.blob.core.windows.net" in info.value.hint  # another environment's preset
    assert f"asked for {refused!r}" in info.value.message
