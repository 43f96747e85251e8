"""The local stack: it starts, the whole token chain works through it, and it stops without leftovers."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import pytest
import requests
from azure.identity import ClientAssertionCredential, ManagedIdentityCredential
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from azure.keyvault.secrets import SecretClient
from azure.storage.blob import BlobServiceClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from sim.azurite import REPO
from sim.stack import Stack

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SETTING_KEYS = {
    "BANENOR_ENVIRONMENT", "MASKINPORTEN_ISSUER", "MASKINPORTEN_TOKEN_ENDPOINT", "BANENOR_STORAGE_URL",
    "BANENOR_STORAGE_AUDIENCE", "MASKINPORTEN_CLIENT_ID", "MASKINPORTEN_SCOPE", "MASKINPORTEN_KEY_ID",
    "SIGNING_KEY_SOURCE", "KEY_VAULT_URL", "SIGNING_KEY_NAME", "SIGNING_KEY_FILE", "BANENOR_TENANT_ID",
    "BANENOR_CLIENT_ID", "BANENOR_AUTHORITY_HOST", "BANENOR_CONTAINER", "BANENOR_DIRECTORY", "EXPORT_STORAGE",
    "EXPORT_CONTAINER", "LEDGER_CONTAINER", "REQUESTS_CA_BUNDLE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER",
    "STACK_BANENOR_BACKEND_CONNECTION_STRING", "STACK_KEYVAULT_KEY_ID", "STACK_PARTNER_ORGNO", "STACK_AUDIENCE_MODE",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = Stack(tmp_path_factory.mktemp("stack")).start()
    yield started
    started.stop()


@pytest.fixture
def settings(stack: Stack) -> dict[str, str]:
    return stack.settings


@pytest.fixture
def partner_identity(settings, monkeypatch: pytest.MonkeyPatch) -> ManagedIdentityCredential:
    """The Function App's own identity, as azure-identity finds it on App Service."""
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "REQUESTS_CA_BUNDLE"):
        monkeypatch.setenv(name, settings[name])
    return ManagedIdentityCredential()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def grant_claims(settings: dict[str, str]) -> dict:
    now = int(time.time())
    return {
        "aud": settings["MASKINPORTEN_ISSUER"],
        "iss": settings["MASKINPORTEN_CLIENT_ID"],
        "scope": settings["MASKINPORTEN_SCOPE"],
        "iat": now,
        "exp": now + 100,
        "jti": str(uuid.uuid4()),
    }


def skyporten_token(settings: dict[str, str], grant: str) -> requests.Response:
    return requests.post(
        settings["MASKINPORTEN_TOKEN_ENDPOINT"],
        data={"grant_type": JWT_BEARER, "assertion": grant},
        verify=settings["REQUESTS_CA_BUNDLE"],
        timeout=10,
    )


def test_settings_have_exactly_the_documented_keys(settings):
    assert set(settings) == SETTING_KEYS
    assert settings["SIGNING_KEY_SOURCE"] == "keyvault-secret" and settings["BANENOR_ENVIRONMENT"] == "test"


def test_token_chain_reaches_bane_nors_storage_through_the_gateway(settings):
    key = serialization.load_pem_private_key(Path(settings["SIGNING_KEY_FILE"]).read_bytes(), None)
    grant = jwt.encode(grant_claims(settings), key, "RS256", headers={"kid": settings["MASKINPORTEN_KEY_ID"]})
    response = skyporten_token(settings, grant)
    assert response.status_code == 200, response.text
    assertion = response.json()["access_token"]
    credential = ClientAssertionCredential(
        settings["BANENOR_TENANT_ID"],
        settings["BANENOR_CLIENT_ID"],
        lambda: assertion,
        authority=settings["BANENOR_AUTHORITY_HOST"],
        connection_verify=settings["REQUESTS_CA_BUNDLE"],
    )
    service = BlobServiceClient(
        account_url=settings["BANENOR_STORAGE_URL"],
        credential=credential,
        audience=settings["BANENOR_STORAGE_AUDIENCE"],
        api_version="2025-01-05",
        connection_verify=settings["REQUESTS_CA_BUNDLE"],
    )
    name = f"{settings['BANENOR_DIRECTORY']}/chain/report.csv"
    service.get_blob_client(settings["BANENOR_CONTAINER"], name).upload_blob(b"a;b\n", overwrite=True)
    backend = BlobServiceClient.from_connection_string(
        settings["STACK_BANENOR_BACKEND_CONNECTION_STRING"], connection_verify=settings["REQUESTS_CA_BUNDLE"]
    )
    assert backend.get_blob_client(settings["BANENOR_CONTAINER"], name).download_blob().readall() == b"a;b\n"


def test_partner_identity_reads_the_signing_key_secret_from_key_vault(settings, partner_identity):
    client = SecretClient(
        settings["KEY_VAULT_URL"],
        partner_identity,
        verify_challenge_resource=False,
        connection_verify=settings["REQUESTS_CA_BUNDLE"],
    )
    pem = client.get_secret(settings["SIGNING_KEY_NAME"]).value
    assert pem == Path(settings["SIGNING_KEY_FILE"]).read_text()
    jwk = json.loads(client.get_secret("maskinporten-jwk").value)
    assert jwk["kid"] == settings["MASKINPORTEN_KEY_ID"] and "d" in jwk


def test_key_vault_key_signs_a_grant_skyporten_accepts(settings, partner_identity):
    header = {"alg": "RS256", "typ": "JWT", "kid": settings["STACK_KEYVAULT_KEY_ID"]}
    payload = json.dumps(grant_claims(settings)).encode()
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(payload)}"
    crypto = CryptographyClient(
        f"{settings['KEY_VAULT_URL']}/keys/maskinporten-signing",
        partner_identity,
        verify_challenge_resource=False,
        connection_verify=settings["REQUESTS_CA_BUNDLE"],
    )
    signed = crypto.sign(SignatureAlgorithm.rs256, hashlib.sha256(signing_input.encode()).digest())
    response = skyporten_token(settings, f"{signing_input}.{b64url(signed.signature)}")
    assert response.status_code == 200, response.text


def test_enterprise_certificate_signs_an_x5c_grant_skyporten_accepts(settings, partner_identity):
    client = SecretClient(
        settings["KEY_VAULT_URL"],
        partner_identity,
        verify_challenge_resource=False,
        connection_verify=settings["REQUESTS_CA_BUNDLE"],
    )
    pfx = base64.b64decode(client.get_secret("maskinporten-cert").value)
    key, leaf, chain = pkcs12.load_key_and_certificates(pfx, None)
    x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in [leaf, *chain]]
    grant = jwt.encode(grant_claims(settings), key, "RS256", headers={"x5c": x5c})
    response = skyporten_token(settings, grant)
    assert response.status_code == 200, response.text
    assert jwt.decode(response.json()["access_token"], options={"verify_signature": False})["sub"] == (
        f"0192:{settings['STACK_PARTNER_ORGNO']};banenor:payloadmanager.storage"
    )


def test_signing_key_file_is_readable_by_its_owner_only(settings):
    assert Path(settings["SIGNING_KEY_FILE"]).stat().st_mode & 0o777 == 0o600


def test_write_settings_writes_env_lines_and_local_settings_json(stack, tmp_path):
    env_file = stack.write_settings(tmp_path / "local.settings.json")
    lines = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert lines == stack.settings
    local = json.loads((tmp_path / "local.settings.json").read_text())
    assert local["IsEncrypted"] is False
    assert local["Values"]["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert local["Values"]["AzureWebJobsStorage"] == stack.settings["EXPORT_STORAGE"]
    assert local["Values"]["SYNC_SCHEDULE"] == "0 */5 * * * *"


def _listening(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=0.5):
            return True
    except OSError:
        return False


def test_stop_closes_every_server_and_azurite(tmp_path):
    stack = Stack(tmp_path).start()
    urls = [stack.settings[k] for k in ("MASKINPORTEN_ISSUER", "KEY_VAULT_URL", "BANENOR_AUTHORITY_HOST",
                                        "BANENOR_STORAGE_URL")]
    process = stack.azurite.process
    urls.append(stack.azurite.endpoint)
    assert all(_listening(url) for url in urls)
    stack.stop()
    assert not any(_listening(url) for url in urls)
    assert process.poll() is not None


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sim.stack", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_cli_start_while_running_is_a_no_op_and_stop_leaves_no_process(tmp_path):
    workdir, local = tmp_path / "local", tmp_path / "local.settings.json"
    started = _cli("start", "--workdir", str(workdir), "--local-settings", str(local))
    try:
        assert started.returncode == 0, started.stderr
        assert (workdir / "settings.env").exists() and local.exists()
        assert (workdir / "azurite" / "partner").is_dir() and (workdir / "azurite" / "banenor").is_dir()
        pid = int((workdir / "stack.pid").read_text())
        azurite_pids = [int(line) for line in (workdir / "azurite.pid").read_text().split()]
        assert len(azurite_pids) == 2  # the partner's (HTTP) and Bane NOR's (HTTPS) Azurite
        again = _cli("start", "--workdir", str(workdir), "--local-settings", str(local))  # `make stack` again
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout and "make stack-stop" in again.stdout
        assert int((workdir / "stack.pid").read_text()) == pid and (workdir / "settings.env").exists()
    finally:
        stopped = _cli("stop", "--workdir", str(workdir))
    assert stopped.returncode == 0
    assert not _alive(pid) and not any(_alive(azurite_pid) for azurite_pid in azurite_pids)
    assert not (workdir / "stack.pid").exists() and not (workdir / "settings.env").exists()


def test_cli_start_in_memory_keeps_no_storage_data_on_disk(tmp_path):
    workdir, local = tmp_path / "local", tmp_path / "local.settings.json"
    started = _cli("start", "--in-memory", "--workdir", str(workdir), "--local-settings", str(local))
    try:
        assert started.returncode == 0, started.stderr
        assert "in memory" in started.stdout
        assert not (workdir / "azurite").exists()
    finally:
        _cli("stop", "--workdir", str(workdir))


def test_cli_clean_stops_a_running_stack_and_removes_what_it_wrote(tmp_path):
    workdir, local = tmp_path / "local", tmp_path / "local.settings.json"
    started = _cli("start", "--workdir", str(workdir), "--local-settings", str(local))
    try:
        assert started.returncode == 0, started.stderr
        pid = int((workdir / "stack.pid").read_text())
        azurite_pids = [int(line) for line in (workdir / "azurite.pid").read_text().split()]
        cleaned = _cli("clean", "--workdir", str(workdir), "--local-settings", str(local))  # `make clean`
    finally:
        _cli("stop", "--workdir", str(workdir))  # a no-op when clean did its job
    assert cleaned.returncode == 0, cleaned.stderr
    assert not _alive(pid) and not any(_alive(azurite_pid) for azurite_pid in azurite_pids)
    assert not workdir.exists()
    assert not local.exists()  # its account key and identity header belonged to the stack that is gone


def test_cli_clean_keeps_a_local_settings_json_the_stack_did_not_write(tmp_path):
    workdir, local = tmp_path / "local", tmp_path / "local.settings.json"
    workdir.mkdir()
    (workdir / "stack.log").write_text("an old run\n")
    mine = json.dumps({"IsEncrypted": False, "Values": {"FUNCTIONS_WORKER_RUNTIME": "python"}})
    local.write_text(mine)
    cleaned = _cli("clean", "--workdir", str(workdir), "--local-settings", str(local))
    assert cleaned.returncode == 0, cleaned.stderr
    assert not workdir.exists()
    assert local.read_text() == mine


def test_make_clean_stops_the_stack_before_it_deletes_the_stack_files():
    dry = subprocess.run(["make", "-n", "clean"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    stop = next(i for i, line in enumerate(lines) if "sim.stack clean" in line)
    remove = next(i for i, line in enumerate(lines) if "rm -rf" in line and ".local" in line)
    assert stop < remove
