"""Issue 18: both readings of the open audience point (PROTOCOL.md sections 1-2), on the local stack.

`scope`: Bane NOR binds the Skyporten token's audience to the scope; the relay sends no resource.
`resource`: the audience is the grant's `resource` (MASKINPORTEN_RESOURCE); without it (aud "unspecified") or with
a wrong one, Entra finds no federated credential, and the relay and `doctor` name MASKINPORTEN_RESOURCE.
"""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shared.cli import DOCTOR_EXIT
from shared.errors import EntraError
from shared.storage import gateway_error

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parent.parent
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"  # what the stack's federated credential expects


@pytest.fixture
def audience_mode(stack):
    """Switch the running stack to one reading; back to `scope` afterwards."""
    yield stack.set_audience_mode
    stack.set_audience_mode("scope")
    stack.entra.options.mismatch_style = "specific"


def write(rt, name="audience.txt"):
    path = f"{rt.settings.banenor.directory}/modes-{uuid.uuid4().hex[:8]}/{name}"
    try:
        rt.destination.get_blob_client(path).upload_blob(b"hello\n", overwrite=False)
    except Exception as exc:
        raise gateway_error(exc, path) from exc
    return path


def refusal(rt):
    with pytest.raises(EntraError) as info:
        write(rt)
    return info.value


def doctor(stack, tmp_path, *args, **overrides):
    values = {**stack.settings, **overrides}
    env_file = tmp_path / f"settings-{uuid.uuid4().hex[:6]}.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items() if v is not None))
    return subprocess.run([sys.executable, "-m", "shared", "--env-file", str(env_file), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode", ["scope", "resource"])
def test_the_chain_delivers_in_both_audience_modes(make_runtime, backend, audience_mode, mode):
    audience_mode(mode)
    rt = make_runtime()
    assert rt.settings.skyporten.resource == (EXCHANGE_AUDIENCE if mode == "resource" else None)
    assert rt.skyporten.get_token().claims["aud"] == EXCHANGE_AUDIENCE
    path = write(rt)
    assert backend.get_blob_client(path).download_blob().readall() == b"hello\n"


def test_scope_mode_ignores_a_resource_sent_anyway(make_runtime, stack, audience_mode):
    audience_mode("scope")
    rt = make_runtime(MASKINPORTEN_RESOURCE="https://skyporten.example.no")
    assert rt.skyporten.get_token().claims["aud"] == EXCHANGE_AUDIENCE
    write(rt)


def test_resource_mode_without_a_resource_gets_entras_audience_mismatch_naming_the_setting(make_runtime,
                                                                                          audience_mode):
    audience_mode("resource")
    error = refusal(make_runtime(MASKINPORTEN_RESOURCE=None, FEDERATION_RETRY_SECONDS="0"))
    assert error.code == "AADSTS700212"
    assert "MASKINPORTEN_RESOURCE" in str(error)
    assert "'unspecified'" in str(error)


def test_resource_mode_without_a_resource_and_a_generic_70021_still_names_the_setting(make_runtime, stack,
                                                                                      audience_mode):
    audience_mode("resource")
    stack.entra.options.mismatch_style = "generic"
    error = refusal(make_runtime(MASKINPORTEN_RESOURCE=None, FEDERATION_RETRY_SECONDS="0"))
    assert error.code == "AADSTS70021"
    assert "MASKINPORTEN_RESOURCE" in error.hint


def test_resource_mode_with_a_wrong_resource_shows_the_audience_it_produced(make_runtime, audience_mode):
    audience_mode("resource")
    error = refusal(make_runtime(MASKINPORTEN_RESOURCE="https://skyporten.example.no", FEDERATION_RETRY_SECONDS="0"))
    assert error.code == "AADSTS700212"
    assert "https://skyporten.example.no" in str(error)
    assert "MASKINPORTEN_RESOURCE" in str(error)


def test_doctor_in_resource_mode_without_a_resource_names_the_setting_beside_the_tokens_aud(stack, tmp_path,
                                                                                           audience_mode):
    audience_mode("resource")
    result = doctor(stack, tmp_path, "doctor", "--read-only", MASKINPORTEN_RESOURCE=None,
                    FEDERATION_RETRY_SECONDS="0")
    assert result.returncode == DOCTOR_EXIT["entra"], result.stdout + result.stderr
    assert "resource sent: none" in result.stdout
    assert "aud 'unspecified'" in result.stdout
    assert "MASKINPORTEN_RESOURCE" in result.stdout.split("[FAIL]")[1]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("mode", "sent"), [("scope", "none"), ("resource", EXCHANGE_AUDIENCE)])
def test_doctor_shows_the_resource_sent_and_which_reading_the_token_shows(stack, tmp_path, audience_mode, mode,
                                                                         sent):
    audience_mode(mode)
    result = doctor(stack, tmp_path, "doctor", "--read-only")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resource sent: {sent}" in result.stdout
    assert f"aud {EXCHANGE_AUDIENCE}" in result.stdout
    reading = "bound to the scope" if mode == "scope" else "taken from the resource"
    assert reading in result.stdout


@pytest.mark.parametrize(("mode", "sent"), [("scope", None), ("resource", EXCHANGE_AUDIENCE)])
def test_token_decode_shows_the_resource_sent_next_to_the_audience(stack, tmp_path, audience_mode, mode, sent):
    audience_mode(mode)
    result = doctor(stack, tmp_path, "token", "--decode", "--json")
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["resource_sent"] == sent
    assert facts["audience"] == EXCHANGE_AUDIENCE
    text = doctor(stack, tmp_path, "token", "--decode").stdout
    assert f"resource_sent {sent or 'none'}" in " ".join(text.split())


@pytest.mark.parametrize("how", ["variable", "environment"])
def test_make_stack_passes_the_audience_mode_to_the_stack(how):
    import os

    env = dict(os.environ, STACK_AUDIENCE_MODE="resource") if how == "environment" else None
    extra = ["STACK_AUDIENCE_MODE=resource"] if how == "variable" else []
    result = subprocess.run(["make", "-n", "stack", *extra], cwd=REPO, capture_output=True, text=True, env=env,
                            timeout=60)
    assert "sim.stack start --workdir .local --audience-mode resource" in result.stdout


def test_an_unknown_audience_mode_is_one_clear_error_before_anything_starts(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sim.stack", "start", "--workdir", str(tmp_path),
                             "--audience-mode", "audience"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "STACK_AUDIENCE_MODE is 'audience'; use scope" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "stack.pid").exists()
