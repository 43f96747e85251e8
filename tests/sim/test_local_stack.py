"""The local stack as `make stack` runs it for `func start` (issue 19): the split layout on disk.

The Functions host is a .NET process: it reads `local.settings.json`, talks to `AzureWebJobsStorage` (blobs for
locks and timers, queues for the blob trigger, tables for diagnostics) and to the trigger's `EXPORT_STORAGE`
itself, and does not read REQUESTS_CA_BUNDLE. These tests use those settings exactly as written, with the
system's trust only (the stack's private CA removed from the environment), as the host would.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from shared.config import Settings
from shared.runtime import Runtime
from sim.stack import Stack

pytestmark = pytest.mark.stack

HOST_CONNECTIONS = ("AzureWebJobsStorage", "EXPORT_STORAGE")
PYTHON_ONLY_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER")


@pytest.fixture(scope="module")
def split_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = Stack(tmp_path_factory.mktemp("split"), layout="split", persistence="disk").start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def local_values(split_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("func") / "local.settings.json"
    split_stack.write_settings(target)
    return json.loads(target.read_text())["Values"]


@pytest.fixture
def host_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's view: none of the stack's Python-only trust or identity variables."""
    for name in PYTHON_ONLY_ENV:
        monkeypatch.delenv(name, raising=False)


def parse(connection_string: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in connection_string.split(";") if part)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("name", HOST_CONNECTIONS)
def test_host_connection_names_blob_queue_and_table_over_plain_http_on_loopback(local_values, name):
    parts = parse(local_values[name])
    assert parts["DefaultEndpointsProtocol"] == "http"
    for service in ("BlobEndpoint", "QueueEndpoint", "TableEndpoint"):
        url = urlsplit(parts[service])
        assert (url.scheme, url.hostname) == ("http", "127.0.0.1"), service
        assert url.path == f"/{parts['AccountName']}"


@pytest.mark.parametrize("name", HOST_CONNECTIONS)
def test_blob_service_creates_and_lists_containers_with_the_connection_string_as_written(
    local_values, host_environment, name
):
    container = unique("azure-webjobs-hosts-")
    with BlobServiceClient.from_connection_string(local_values[name]) as service:
        service.create_container(container)
        service.get_blob_client(container, "locks/host").upload_blob(b"lease", overwrite=True)
        assert container in [c.name for c in service.list_containers(name_starts_with="azure-webjobs-hosts-")]
        assert [b.name for b in service.get_container_client(container).list_blobs()] == ["locks/host"]


@pytest.mark.parametrize("name", HOST_CONNECTIONS)
def test_queue_service_creates_lists_and_carries_messages_with_the_connection_string_as_written(
    local_values, host_environment, name
):
    queue = unique("azure-webjobs-blobtrigger-")
    with QueueServiceClient.from_connection_string(local_values[name]) as service:
        service.create_queue(queue)
        client = service.get_queue_client(queue)
        client.send_message('{"BlobName": "a.csv"}')
        assert queue in [q.name for q in service.list_queues(name_starts_with="azure-webjobs-blobtrigger-")]
        assert [m.content for m in client.receive_messages()] == ['{"BlobName": "a.csv"}']


@pytest.mark.parametrize("name", HOST_CONNECTIONS)
def test_table_service_creates_and_lists_tables_with_the_connection_string_as_written(
    local_values, host_environment, name
):
    table = unique("AzureFunctionsDiagnosticEvents")
    with TableServiceClient.from_connection_string(local_values[name]) as service:
        service.create_table(table)
        assert table in [t.name for t in service.list_tables()]


def test_the_export_container_and_ledger_exist_on_the_host_connection(local_values, host_environment):
    with BlobServiceClient.from_connection_string(local_values["EXPORT_STORAGE"]) as service:
        names = {c.name for c in service.list_containers()}
    assert {local_values["EXPORT_CONTAINER"], local_values["LEDGER_CONTAINER"]} <= names


def test_bane_nor_side_stays_https_and_is_not_trusted_without_the_stack_ca(local_values, host_environment):
    for name in ("MASKINPORTEN_TOKEN_ENDPOINT", "BANENOR_STORAGE_URL", "KEY_VAULT_URL", "BANENOR_AUTHORITY_HOST"):
        assert urlsplit(local_values[name]).scheme == "https", name
    assert parse(local_values["STACK_BANENOR_BACKEND_CONNECTION_STRING"])["DefaultEndpointsProtocol"] == "https"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(local_values["MASKINPORTEN_ISSUER"] + "/.well-known/openid-configuration", timeout=5)
    issuer = requests.get(
        local_values["MASKINPORTEN_ISSUER"] + "/.well-known/openid-configuration",
        verify=local_values["REQUESTS_CA_BUNDLE"],
        timeout=5,
    )
    assert issuer.status_code == 200


def test_split_layout_streams_copies_because_azurite_copies_only_within_one_instance(split_stack):
    assert split_stack.settings["COPY_MODE"] == "stream"


def runtime_for(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """The relay as the Python worker builds it from the stack's settings (the worker gets them as env)."""
    for name in ("REQUESTS_CA_BUNDLE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        monkeypatch.setenv(name, stack.settings[name])
    return Runtime(Settings.load(dict(stack.settings)))


def backend_blob(stack: Stack, path: str):
    service = BlobServiceClient.from_connection_string(
        stack.settings["STACK_BANENOR_BACKEND_CONNECTION_STRING"], connection_verify=str(stack.ca_bundle)
    )
    return service.get_blob_client(stack.settings["BANENOR_CONTAINER"], path)


def test_relay_delivers_an_export_from_the_http_partner_side_to_bane_nor_through_the_gateway(
    split_stack, monkeypatch
):
    rt = runtime_for(split_stack, monkeypatch)
    name = f"split/{uuid.uuid4().hex[:8]}/report.csv"
    data = os.urandom(20 * 2**20)  # above the single-put limit: staged blocks
    rt.exports.get_blob_client(name).upload_blob(data, overwrite=True, max_concurrency=4)
    outcome = rt.relay.deliver(name)
    assert (outcome.status, outcome.mode) == ("delivered", "stream"), outcome
    landed = backend_blob(split_stack, outcome.destination)
    assert landed.download_blob(max_concurrency=4).readall() == data
    rt.banenor_credential.close()


def test_stack_restarted_on_disk_keeps_the_receipt_and_a_second_sync_delivers_nothing(tmp_path, monkeypatch):
    first = Stack(tmp_path, layout="split", persistence="disk").start()
    try:
        connection = first.settings["EXPORT_STORAGE"]
        rt = runtime_for(first, monkeypatch)
        rt.exports.get_blob_client("restart/measurements.csv").upload_blob(b"t;v\n1;2\n")
        summary = rt.relay.sync()
        assert (summary.delivered, summary.failed) == (1, 0)
        etag = rt.exports.get_blob_client("restart/measurements.csv").get_blob_properties().etag
        destination = rt.ledger.receipt("restart/measurements.csv", etag).destination_path
        rt.banenor_credential.close()
    finally:
        first.stop()

    second = Stack(tmp_path, layout="split", persistence="disk").start()
    try:
        assert second.settings["EXPORT_STORAGE"] == connection  # same keys and ports: func's settings still hold
        rt = runtime_for(second, monkeypatch)
        assert rt.exports.get_blob_client("restart/measurements.csv").get_blob_properties().etag == etag
        assert rt.ledger.receipt("restart/measurements.csv", etag) is not None
        assert backend_blob(second, destination).download_blob().readall() == b"t;v\n1;2\n"
        again = rt.relay.sync()
        assert (again.delivered, again.failed, again.rejected) == (0, 0, 0)
        rt.banenor_credential.close()
    finally:
        second.stop()


def test_in_memory_stack_writes_no_storage_files(tmp_path):
    stack = Stack(tmp_path, layout="split", persistence="memory").start()
    try:
        with BlobServiceClient.from_connection_string(stack.settings["EXPORT_STORAGE"]) as service:
            service.get_blob_client("exports", "a.csv").upload_blob(b"a")
    finally:
        stack.stop()
    assert not (tmp_path / "azurite").exists()
    assert not any(Path(tmp_path).rglob("__azurite_db_*"))


def test_the_documented_drop_command_puts_a_file_into_the_export_container(local_values, tmp_path):
    import re
    import subprocess
    import sys
    import textwrap

    from sim.azurite import REPO

    doc = (REPO / "docs" / "local-development.md").read_text()
    block = re.search(r"<!-- drop-command -->\s*```sh\n(.*?)```\s*<!-- /drop-command -->", doc, re.S).group(1)
    script = textwrap.dedent(block).replace(".venv/bin/python", sys.executable)
    (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": local_values}))
    name = f"drop-{uuid.uuid4().hex[:8]}.csv"
    # As a reader runs it: in a directory holding only local.settings.json, so the step makes its own file.
    env = {k: v for k, v in os.environ.items() if k not in PYTHON_ONLY_ENV}
    result = subprocess.run(["bash", "-c", script.replace("report.csv", name)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    made = (tmp_path / name).read_bytes()
    assert made
    with BlobServiceClient.from_connection_string(local_values["EXPORT_STORAGE"]) as service:
        blob = service.get_blob_client(local_values["EXPORT_CONTAINER"], name)
        assert blob.download_blob().readall() == made
