"""`doctor` when the Entra exchange fails for a cause it has already found (issue 27): Skyporten takes the token's
audience from the grant's resource and none was sent. It says so at once (no five minutes of retries for a
federated credential to propagate), and a retry in progress is a note shown only with --verbose."""

import pytest

from shared.cli import DOCTOR_EXIT

pytestmark = pytest.mark.stack


@pytest.fixture
def resource_mode(stack):
    stack.set_audience_mode("resource")
    yield
    stack.set_audience_mode("scope")


def test_doctor_stops_at_once_naming_the_resource_when_none_was_sent(cli, resource_mode):
    # FEDERATION_RETRY_SECONDS is left at its default (300 s): the subprocess's 120 s timeout would end a doctor
    # that waits for a propagation that cannot help.
    result = cli("doctor", MASKINPORTEN_RESOURCE=None, FEDERATION_RETRY_SECONDS=None, expect=DOCTOR_EXIT["entra"])
    assert "[FAIL] Entra exchange" in result.stdout
    fix = next(line for line in result.stdout.splitlines() if "Fix:" in line)
    assert "Set MASKINPORTEN_RESOURCE" in fix
    assert "retrying" not in result.stdout + result.stderr and "WARNING" not in result.stderr


def test_a_federation_retry_is_a_note_only_with_verbose(cli, resource_mode):
    # A resource that is sent but not the credential's audience: it may be a credential still propagating, so
    # the relay retries for FEDERATION_RETRY_SECONDS (1 s here), then reports.
    wrong = {"MASKINPORTEN_RESOURCE": "https://skyporten.example.no", "FEDERATION_RETRY_SECONDS": "1"}
    quiet = cli("doctor", expect=DOCTOR_EXIT["entra"], **wrong)
    assert "retrying" not in quiet.stderr and "AADSTS700212" in quiet.stdout
    verbose = cli("doctor", "--verbose", expect=DOCTOR_EXIT["entra"], **wrong)
    assert "retrying in 1 s" in verbose.stderr
