"""function_app.py: indexing for each BLOB_TRIGGER_SOURCE, and the handlers run with real trigger objects
(azure.functions.blob.InputStream, azure.functions.timer.TimerRequest) against the local stack."""

import importlib
import logging
import uuid

import pytest
from azure.functions.blob import InputStream  # the concrete class; func.InputStream is the abstract one
from azure.functions.timer import TimerRequest

from shared.errors import ConfigError
from shared.runtime import get_runtime, reset_runtime


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
        app.sync(TimerRequest(past_due=False))
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
    handler(InputStream(name=f"{rt.settings.export_container}/inbox/Rapport 1.csv", data=b""))
    landed = backend.get_blob_client(f"{rt.settings.banenor_directory}/{rt.settings.destination_template[:10]}"
                                     "/inbox/Rapport-1.csv")
    assert landed.download_blob().readall() == b"a;b\n"


@pytest.mark.stack
def test_blob_trigger_handler_raises_when_the_delivery_failed_so_the_host_retries(app_on_stack, stack):
    app, rt = app_on_stack
    rt.exports.get_blob_client("denied.csv").upload_blob(b"x")
    stack.gateway.revoke(stack.mi_object_id)
    try:
        with pytest.raises(RuntimeError, match=r"denied\.csv"):
            app.on_export(InputStream(name=f"{rt.settings.export_container}/denied.csv", data=b""))
    finally:
        stack.gateway.grant(stack.mi_object_id, "integration-dev", "partner-987654321")
    assert next(rt.ledger.failures()).attempts == 1


@pytest.mark.stack
def test_timer_handler_syncs_the_backlog_and_warns_when_past_due(app_on_stack, caplog):
    app, rt = app_on_stack
    for i in range(5):
        rt.exports.get_blob_client(f"backlog/{i}.json").upload_blob(b"{}")
    caplog.set_level(logging.INFO)
    app.sync(TimerRequest(past_due=True))
    assert rt.ledger.counts()["delivered"] == 5
    assert "past due" in caplog.text
    assert "sync summary outcome=ok delivered=5" in caplog.text
