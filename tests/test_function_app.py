"""function_app.py: indexing for each BLOB_TRIGGER_SOURCE, and the handlers run with real trigger objects
(azure.functions.blob.InputStream, azure.functions.timer.TimerRequest, and a BlobReference decoded from the host's
ModelBindingData through the worker's own steps with the real azurefunctions.extensions.base) against the local
stack."""

import dataclasses
import importlib
import json
import logging
import subprocess
import sys
import threading
import typing
import uuid
from pathlib import Path

import azure.functions as func
import pytest
from azure.functions.blob import InputStream  # the concrete class; func.InputStream is the abstract one
from azure.functions.timer import TimerRequest
from azurefunctions.extensions.base import Datum, get_binding_registry

from shared.blob_reference import BlobReference, BlobReferenceConverter
from shared.errors import ConfigError
from shared.runtime import get_runtime, reset_runtime
from tests.worker import Context, worker_fixture  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parent.parent


def load_app(monkeypatch, source=None):
    if source is None:
        monkeypatch.delenv("BLOB_TRIGGER_SOURCE", raising=False)
    else:
        monkeypatch.setenv("BLOB_TRIGGER_SOURCE", source)
    import function_app

    return importlib.reload(function_app)


def bindings(app):
    return {f.get_function_name(): [b.get_dict_repr() for b in f.get_bindings()] for f in app.app.get_functions()}


@pytest.mark.parametrize(("source", "expected"), [(None, "EventGrid"), ("EventGrid", "EventGrid"),
                                                  ("LogsAndContainerScan", "LogsAndContainerScan")])
def test_blob_trigger_binding_for_each_source(monkeypatch, source, expected):
    found = bindings(load_app(monkeypatch, source))
    [trigger] = found["on_export"]
    assert trigger["type"] == "blobTrigger"
    assert trigger["path"] == "%EXPORT_CONTAINER%/{name}"
    assert trigger["connection"] == "EXPORT_STORAGE"
    assert trigger["source"] == expected


def test_timer_binding_reads_its_schedule_from_settings(monkeypatch):
    [timer] = bindings(load_app(monkeypatch))["sync"]
    assert timer["type"] == "timerTrigger"
    assert timer["schedule"] == "%SYNC_SCHEDULE%"
    assert timer["runOnStartup"] is False


def test_functions_are_indexed_even_when_settings_are_broken(monkeypatch):
    monkeypatch.setenv("BANENOR_ENVIRONMENT", "staging")
    app = load_app(monkeypatch)
    assert sorted(bindings(app)) == ["on_export", "sync"]
    reset_runtime()
    with pytest.raises(ConfigError, match="BANENOR_ENVIRONMENT"):
        app.sync(TimerRequest(past_due=False), Context("sync", "inv-1", threading.local()))
    reset_runtime()


def test_export_name_from_input_stream_and_blob_client(monkeypatch):
    app = load_app(monkeypatch)
    assert app.export_name(InputStream(name="exports/a/b c.csv", data=b"")) == "a/b c.csv"

    class BlobClientLike:
        blob_name = "a/b.csv"

    assert app.export_name(BlobClientLike()) == "a/b.csv"


@pytest.fixture
def app_on_stack(stack, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    settings = dict(stack.settings, EXPORT_CONTAINER=f"fa-exports-{tag}", LEDGER_CONTAINER=f"fa-ledger-{tag}",
                    DESTINATION_TEMPLATE=f"fa{tag}/{{path}}", SYNC_SCHEDULE="0 */5 * * * *")
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    reset_runtime()
    app = load_app(monkeypatch, "LogsAndContainerScan")
    rt = get_runtime()
    rt.exports.create_container()
    yield app, rt
    reset_runtime()


@pytest.mark.stack
def test_blob_trigger_handler_delivers_the_export(app_on_stack, backend):
    app, rt = app_on_stack
    rt.exports.get_blob_client("inbox/Rapport 1.csv").upload_blob(b"a;b\n")
    handler = {f.get_function_name(): f.get_user_function() for f in app.app.get_functions()}["on_export"]
    handler(InputStream(name=f"{rt.settings.exports.container}/inbox/Rapport 1.csv", data=b""),
            Context("on_export", "inv-1", threading.local()))
    landed = backend.get_blob_client(f"{rt.settings.banenor.directory}/{rt.settings.relay.destination_template[:10]}"
                                     "/inbox/Rapport-1.csv")
    assert landed.download_blob().readall() == b"a;b\n"


@pytest.mark.stack
def test_blob_trigger_handler_raises_when_the_delivery_failed_so_the_host_retries(app_on_stack, stack, monkeypatch):
    from tests.faultproxy import Fault, match, proxy_for

    app, rt = app_on_stack
    rt.exports.get_blob_client("denied.csv").upload_blob(b"x")
    # A transient failure (a terminal one is poisoned at once and needs no host retry): the gateway acknowledges
    # the write and stores nothing, so the read-back finds no file.
    upstream = stack.settings["BANENOR_STORAGE_URL"]
    with proxy_for(stack, "BANENOR_STORAGE_URL") as proxy:
        proxy.add(Fault("fake_ok", when=match("PUT"), times=None))
        monkeypatch.setenv("BANENOR_STORAGE_URL", proxy.url(upstream))
        reset_runtime()
        rt = get_runtime()
        with pytest.raises(RuntimeError, match=r"denied\.csv"):
            app.on_export(InputStream(name=f"{rt.settings.exports.container}/denied.csv", data=b""),
                          Context("on_export", "inv-1", threading.local()))
    assert next(rt.ledger.failures()).attempts == 1


@pytest.mark.stack
def test_both_handlers_return_at_once_on_a_broken_link_and_leave_its_state_to_one_alert(app_on_stack, stack,
                                                                                         monkeypatch):
    from tests.faultproxy import Fault, match, proxy_for

    app, rt = app_on_stack
    rt.exports.get_blob_client("acl.csv").upload_blob(b"x")
    upstream = stack.settings["BANENOR_STORAGE_URL"]
    with proxy_for(stack, "BANENOR_STORAGE_URL") as proxy:
        # A role or ACL still propagating: every write is refused, whatever the file.
        proxy.add(Fault("status", when=match("PUT"), status=403, code="AuthorizationPermissionMismatch", times=None))
        monkeypatch.setenv("BANENOR_STORAGE_URL", proxy.url(upstream))
        reset_runtime()
        rt = get_runtime()
        app.on_export(InputStream(name=f"{rt.settings.exports.container}/acl.csv", data=b""),
                      Context("on_export", "inv-1", threading.local()))  # returns: no host retry, no poison queue
        app.sync(TimerRequest(past_due=False), Context("sync", "inv-2", threading.local()))  # no function failure
    assert list(rt.ledger.failures()) == []
    assert [s.link for s in rt.ledger.link_states()] == ["gateway"]


@pytest.mark.stack
def test_timer_handler_syncs_the_backlog_and_warns_when_past_due(app_on_stack, caplog):
    app, rt = app_on_stack
    for i in range(5):
        rt.exports.get_blob_client(f"backlog/{i}.json").upload_blob(b"{}")
    caplog.set_level(logging.INFO)
    app.sync(TimerRequest(past_due=True), Context("sync", "inv-1", threading.local()))
    assert rt.ledger.counts()["delivered"] == 5
    assert "past due" in caplog.text
    assert "sync summary outcome=ok delivered=5" in caplog.text


@pytest.mark.parametrize("name", ["on_export", "sync"])
def test_each_handler_asks_the_worker_for_its_context(monkeypatch, name):
    # The worker passes the invocation's Context to a parameter named `context` annotated func.Context.
    function = {f.get_function_name(): f for f in load_app(monkeypatch).app.get_functions()}[name]
    assert typing.get_type_hints(function.get_user_function())["context"] is func.Context


def runtime_with(monkeypatch, **settings):
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    reset_runtime()
    return get_runtime()


@pytest.mark.stack
def test_a_delivery_poisoned_in_a_sync_is_logged_with_the_invocation_id(app_on_stack, backend, monkeypatch, worker):
    app, _ = app_on_stack
    rt = runtime_with(monkeypatch, MAX_ATTEMPTS="1")
    rt.exports.get_blob_client("p/bad.csv").upload_blob(b"ours")
    # A foreign file where the export would land: the delivery fails, and with MAX_ATTEMPTS=1 it is poisoned.
    backend.get_blob_client(f"{rt.settings.banenor.directory}/{rt.settings.relay.destination_template[:10]}/p/bad.csv"
                            ).upload_blob(b"someone else's")
    invocation_id, _ = worker.invoke(app.sync, TimerRequest(past_due=False), function_name="sync")
    poisoned = [s for s in worker.sent if "delivery outcome=poisoned" in s.message]
    assert [(s.invocation_id, s.thread.startswith("relay-sync")) for s in poisoned] == [(invocation_id, True)]
    assert any("sync summary" in s.message and s.invocation_id == invocation_id for s in worker.sent)


@pytest.mark.stack
@pytest.mark.parametrize("mode", ["stream", "server"])
def test_block_copies_log_from_the_copiers_threads_with_the_invocation_id(app_on_stack, worker, monkeypatch, mode):
    app, _ = app_on_stack
    rt = runtime_with(monkeypatch, BLOCK_SIZE="262144", SINGLE_PUT_LIMIT="262144", COPY_MODE=mode)
    rt.exports.get_blob_client("big/one.csv").upload_blob(b"x" * (3 * 256 * 1024))
    sdk = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    level = sdk.level
    sdk.setLevel(logging.INFO)  # the SDK logs each request (and its retries) on the thread that sends it
    try:
        invocation_id, _ = worker.invoke(app.sync, TimerRequest(past_due=False), function_name="sync")
    finally:
        sdk.setLevel(level)
    pool = "copier-url" if mode == "server" else "copier_"  # the block pool of each mode
    copier_lines = [s for s in worker.sent if s.thread.startswith(pool)]
    assert copier_lines, f"no record was logged on a {pool} thread"
    assert {s.invocation_id for s in copier_lines} == {invocation_id}
    assert any(f"mode {mode}" in s.message for s in worker.sent)  # copied in the mode under test
    assert worker.dropped() == []


# --- the SDK-type binding: BlobReference and its converter, through the Python worker's own steps ---------------


class ParamTypeInfo(typing.NamedTuple):
    """The worker's azure_functions_worker.functions.ParamTypeInfo: what get_raw_bindings reads (.pytype)."""

    binding_name: str
    pytype: type | None


@dataclasses.dataclass(frozen=True)
class ModelBindingData:
    """The fields of the host's ModelBindingData protobuf message (content is bytes there)."""

    content: bytes | str
    version: str = "1.0"
    source: str = "AzureStorageBlobs"
    content_type: str = "application/json"


def host_datum(container="exports", blob_name="inbox/a.csv", connection="EXPORT_STORAGE") -> Datum:
    """A model_binding_data datum as the host sends it for a blob trigger with SupportsDeferredBinding."""
    content = {"Connection": connection, "ContainerName": container, "BlobName": blob_name}
    return Datum(ModelBindingData(json.dumps(content, ensure_ascii=False).encode()), "model_binding_data")


def on_export_function(app):
    # The indexed function the worker gets (app.get_functions() may be called only once per app).
    return {f.get_function_name(): f for f in app.app.get_functions()}["on_export"]


def client_annotation(function):
    # The worker reads annotations with typing.get_type_hints on the user function.
    return typing.get_type_hints(function.get_user_function())["client"]


def test_registry_treats_on_export_parameter_as_an_sdk_type(monkeypatch):
    annotation = client_annotation(on_export_function(load_app(monkeypatch)))
    assert annotation is BlobReference
    assert get_binding_registry().check_supported_type(annotation) is True


def test_raw_binding_of_on_export_asks_the_host_for_a_reference(monkeypatch):
    function = on_export_function(load_app(monkeypatch))
    input_types = {"client": ParamTypeInfo("blobTrigger", client_annotation(function))}
    raw, logs = get_binding_registry().get_raw_bindings(function, input_types)
    [trigger] = [json.loads(b) for b in raw]
    assert trigger["type"] == "blobTrigger"
    assert trigger["properties"] == {"SupportsDeferredBinding": True}
    assert logs == {"client": {BlobReference: "True"}}


def test_converter_registered_for_blob_trigger_is_ours():
    registry = get_binding_registry()
    assert registry.get("blobTrigger") is BlobReferenceConverter
    assert registry.get("blob") is BlobReferenceConverter


def test_converter_accepts_blob_reference():
    assert get_binding_registry().get("blobTrigger").check_input_type_annotation(BlobReference) is True


@pytest.mark.parametrize("pytype", [str, bytes, InputStream, object, list[BlobReference], None])
def test_converter_refuses_other_types(pytype):
    assert get_binding_registry().get("blobTrigger").check_input_type_annotation(pytype) is False


@pytest.mark.parametrize("blob_name", ["a.csv", "inbox/Rapport 1.csv", "2024/01/02/Målinger æøå (rev B).csv",
                                       "mappe med mellomrom/ fil .json", "日本/レポート.xml"])
def test_decode_gives_container_and_name_from_the_host_json(blob_name):
    converter = get_binding_registry().get("blobTrigger")
    ref = converter.decode(host_datum("exports", blob_name), trigger_metadata={}, pytype=BlobReference)
    assert ref == BlobReference(container="exports", blob_name=blob_name, connection="EXPORT_STORAGE")


def test_decode_reads_escaped_unicode_and_string_content():
    content = json.dumps({"Connection": "EXPORT_STORAGE", "ContainerName": "exports", "BlobName": "a/Ø b.csv"})
    ref = BlobReferenceConverter.decode(Datum(ModelBindingData(content), "model_binding_data"), trigger_metadata={},
                                        pytype=BlobReference)
    assert ref.blob_name == "a/Ø b.csv"


@pytest.mark.parametrize(("datum", "message"), [
    (Datum(b"a;b", "bytes"), r"unexpected type of data .*'bytes'"),
    (Datum("a;b", "string"), r"unexpected type of data .*'string'"),
    (Datum([], "collection_model_binding_data"), r"unexpected type of data .*'collection_model_binding_data'"),
    (Datum(ModelBindingData(b"not json"), "model_binding_data"), "content is not JSON"),
    (Datum(ModelBindingData(b"\xff\xfe\x00"), "model_binding_data"), "content is not JSON"),
    (Datum(ModelBindingData(b"[]"), "model_binding_data"), "content is JSON list, expected an object"),
    (Datum(ModelBindingData(None), "model_binding_data"), "has no content"),
    (Datum(object(), "model_binding_data"), "has no content"),
    (host_datum(blob_name=None), r"lacks BlobName \(keys present: BlobName, Connection, ContainerName\)"),
    (host_datum(blob_name=""), "lacks BlobName"),
    (host_datum(container=None), "lacks ContainerName"),
    (Datum(ModelBindingData(b"{}"), "model_binding_data"), r"lacks ContainerName and BlobName \(keys present: none\)"),
    (host_datum(connection=5), "Connection is int"),
], ids=["bytes", "string", "collection", "text", "not-utf", "array", "no-content", "no-mbd", "no-name",
        "empty-name", "no-container", "empty-object", "bad-connection"])
def test_decode_refuses_a_bad_datum_with_a_clear_error(datum, message):
    with pytest.raises(ValueError, match=message):
        BlobReferenceConverter.decode(datum, trigger_metadata={}, pytype=BlobReference)


def test_decode_refuses_to_make_another_type():
    with pytest.raises(ValueError, match="cannot make a 'BlobClient'"):
        BlobReferenceConverter.decode(host_datum(), trigger_metadata={}, pytype=type("BlobClient", (), {}))


@pytest.mark.parametrize("datum", [None, Datum(b"x", None)])
def test_decode_of_no_data_is_none(datum):
    assert BlobReferenceConverter.decode(datum, trigger_metadata={}, pytype=BlobReference) is None


def test_blob_reference_is_immutable_and_hashable():
    ref = BlobReference(container="exports", blob_name="a.csv")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.blob_name = "b.csv"
    assert len({ref, BlobReference(container="exports", blob_name="a.csv")}) == 1


def test_blob_reference_repr_names_container_path_and_connection():
    ref = BlobReference(container="exports", blob_name="inbox/a b.csv", connection="EXPORT_STORAGE")
    assert repr(ref) == "BlobReference(container='exports', blob_name='inbox/a b.csv', connection='EXPORT_STORAGE')"


def test_export_name_from_blob_reference_keeps_the_whole_path(monkeypatch):
    app = load_app(monkeypatch)
    assert app.export_name(BlobReference(container="exports", blob_name="inbox/2024/a b.csv")) == "inbox/2024/a b.csv"


def test_importing_function_app_does_not_import_the_storage_sdk_or_azure_identity():
    code = ("import sys, json, function_app; print(json.dumps(sorted(m for m in sys.modules if m.startswith("
            "('azure.storage', 'azure.identity', 'azurefunctions.extensions.bindings')))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    assert json.loads(done.stdout) == []


@pytest.mark.stack
def test_host_reference_decoded_and_handled_delivers_the_export(app_on_stack, backend):
    app, rt = app_on_stack
    name = "inbox/Rapport 2.csv"
    rt.exports.get_blob_client(name).upload_blob(b"c;d\n")
    etag = rt.exports.get_blob_client(name).get_blob_properties().etag
    function = on_export_function(app)
    converter = get_binding_registry().get("blobTrigger")
    ref = converter.decode(host_datum(rt.settings.exports.container, name), trigger_metadata={},
                           pytype=client_annotation(function))
    function.get_user_function()(ref, Context("on_export", "inv-1", threading.local()))
    receipt = rt.ledger.receipt(name, etag)
    assert receipt is not None and receipt.source_name == name
    landed = backend.get_blob_client(f"{rt.settings.banenor.directory}/{rt.settings.relay.destination_template[:10]}"
                                     "/inbox/Rapport-2.csv")
    assert landed.download_blob().readall() == b"c;d\n"
