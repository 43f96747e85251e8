"""Every KQL query in infra/ and docs/ against the relay's own log records.

A sync on the local stack (a delivered export, a rejected one, a poisoned one, with a fresh runtime, so the signing
key is loaded and a Skyporten and an Entra token issued) yields the records the workbook and the alerts read. The
tests hold scripts/infra_checks.py's RELAY_RECORDS (what `make lint-infra` checks queries against offline) to
those records, and run each query's field extraction on them: a changed log line fails here, not in Azure.

The two link records (`link broken`, `link restored`, shared/links.py): the fixture also breaks a link for real (a
signing key name the vault does not hold: `link broken link=key_vault`) and heals it (the right key on the same
ledger: `link restored`), and those records are checked as the others.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import uuid
from pathlib import Path

import pytest

from shared.delivery import STATUSES

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("infra_checks", ROOT / "scripts" / "infra_checks.py")
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)

FREE_TEXT = ("reason", "cause")  # free text to the end of the line: always the last key


def keys_of(message: str) -> list[str]:
    """The key=value keys of a record, up to its free-text key (whose text may hold `=` itself)."""
    cut = min((m.end() for k in FREE_TEXT for m in [re.search(rf"\s{k}=", message)] if m), default=len(message))
    return re.findall(r"(?:^|\s)(\w+)=", message[:cut])


def kind_of(message: str) -> str | None:
    return next((k for k in checks.RELAY_RECORDS if message.startswith(k)), None)


@pytest.fixture(scope="module")
def records(stack):
    """Messages of the relay's records from real syncs on the stack (one of them breaks a link, one heals it), by
    kind."""
    from azure.storage.blob import BlobServiceClient

    from shared.config import Settings
    from shared.runtime import Runtime

    tag = uuid.uuid4().hex[:8]
    env = dict(stack.settings, EXPORT_CONTAINER=f"lf-exports-{tag}", LEDGER_CONTAINER=f"lf-ledger-{tag}",
               DESTINATION_TEMPLATE=f"lf{tag}/{{path}}")
    rt = Runtime(Settings.load(env))
    rt.exports.create_container()
    rt.exports.get_blob_client("in/good.csv").upload_blob(b"a;b\n1;2\n")
    rt.exports.get_blob_client("in/notes.exe").upload_blob(b"MZ")  # refused extension: rejected
    rt.exports.get_blob_client("in/clash.csv").upload_blob(b"ours")
    backend = BlobServiceClient.from_connection_string(
        stack.settings["STACK_BANENOR_BACKEND_CONNECTION_STRING"],
        connection_verify=stack.settings["REQUESTS_CA_BUNDLE"]).get_container_client(env["BANENOR_CONTAINER"])
    # Someone else's file where clash.csv would land: never overwritten, so the delivery is poisoned.
    backend.get_blob_client(f"{rt.settings.banenor.directory}/lf{tag}/in/clash.csv").upload_blob(b"theirs")

    captured: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record.getMessage())

    handler = Capture(level=logging.INFO)
    logger = logging.getLogger("shared")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    runtimes = [rt]
    try:
        summary = rt.relay.sync()
        # A key the vault does not hold breaks the key_vault link (one `link broken` line); the right key on the
        # same ledger finds the recorded break, answers, and ends it (one `link restored` line).
        runtimes.append(Runtime(Settings.load(dict(env, SIGNING_KEY_NAME=f"lf-missing-{tag}"))))
        runtimes[-1].relay.sync()
        runtimes.append(Runtime(Settings.load(env)))
        runtimes[-1].relay.sync()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        for runtime in runtimes:
            if runtime.built("banenor_credential"):
                runtime.banenor_credential.close()
    assert summary.error is None, summary.error
    by_kind: dict[str, list[str]] = {kind: [] for kind in checks.RELAY_RECORDS}
    for message in captured:
        kind = kind_of(message)
        if kind:
            by_kind[kind].append(message)
    return by_kind


@pytest.mark.stack
def test_the_sync_produced_every_record_the_queries_read(records):
    outcomes = {re.match(r"delivery outcome=(\w+)", m).group(1) for m in records["delivery"]}
    assert {"delivered", "rejected", "poisoned"} <= outcomes
    assert all(records[kind] for kind in checks.RELAY_RECORDS), {k: len(v) for k, v in records.items()}


@pytest.mark.stack
@pytest.mark.parametrize("kind", sorted(checks.RELAY_RECORDS))
def test_relay_records_table_is_what_the_code_logs(records, kind):
    # The union over the captured lines: reason= and latency= appear on some delivery lines only.
    logged = {key for message in records[kind] for key in keys_of(message)}
    assert logged == set(checks.RELAY_RECORDS[kind]), f"{kind}: the code logs {sorted(logged)}"


def test_the_delivery_statuses_a_query_may_name_are_the_code_s():
    allowed = set(checks.RECORD_VALUES[("delivery", "outcome")])
    assert set(STATUSES) <= allowed
    assert allowed - set(STATUSES) == set()


@pytest.mark.stack
def test_the_latency_is_logged_on_deliveries_as_seconds_since_the_export_was_written(records):
    delivered = [m for m in records["delivery"] if m.startswith("delivery outcome=delivered")]
    latencies = [float(re.search(r"\blatency=([0-9.]+)", m).group(1)) for m in delivered]
    assert latencies and all(0 <= value < 600 for value in latencies)
    assert not any("latency=" in m for m in records["delivery"] if not m.startswith("delivery outcome=delivered"))


@pytest.mark.stack
def test_the_loaded_key_says_how_many_days_are_left(records):
    [first, *_] = records["signing key loaded:"]
    fields = dict(re.findall(r"(\w+)=(\S+)", first))
    assert re.fullmatch(r"-?\d+", fields["days_left"]) and fields["expiry_from"] in ("registration", "keyvault",
                                                                                   "certificate")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields["expires"])


QUERIES = checks.all_queries(ROOT)


def test_there_are_queries_to_check():
    wheres = [where for where, _ in QUERIES]
    assert any(w.startswith("infra/queries/") for w in wheres) and any("workbook" in w for w in wheres)
    assert any(w.startswith("docs/") for w in wheres) and len(QUERIES) >= 20


@pytest.mark.parametrize(("where", "query"), QUERIES, ids=[w for w, _ in QUERIES])
def test_each_query_passes_the_offline_field_check(where, query):
    assert checks.check_query(where, query) == []


def _converted(query: str, regex: str) -> str | None:
    """The conversion wrapped around an extract of `regex`, if any (toint, tolong, todouble, toreal)."""
    match = re.search(r"(toint|tolong|todouble|toreal)\(\s*extract\(\s*@\"" + re.escape(regex) + '"', query)
    return match.group(1) if match else None


RELAY_QUERIES = [(where, query) for where, query in QUERIES if checks.message_filters(query)]


def test_the_workbook_the_alerts_and_the_docs_read_relay_records():
    wheres = " ".join(where for where, _ in RELAY_QUERIES)
    assert "workbook" in wheres and "infra/queries/" in wheres and "docs/" in wheres


@pytest.mark.stack
@pytest.mark.parametrize(("where", "query"), RELAY_QUERIES, ids=[w for w, _ in RELAY_QUERIES])
def test_each_query_finds_its_fields_in_the_real_records(records, where, query):
    filters = checks.message_filters(query)
    kinds = sorted({kind for lit in filters for kind in checks.relay_kinds(lit)})
    for literal in filters:
        assert any(m.startswith(literal) or literal in m for k in kinds for m in records[k]), \
            f"{where}: no record the relay logs matches {literal!r}"
    for key, regex in checks.extracted_keys(query):
        carrying = [m for k in kinds if key in checks.RELAY_RECORDS[k] for m in records[k]]
        values = [found.group(1) for m in carrying for found in [re.search(regex, m)] if found]
        assert values, f"{where}: {regex!r} finds nothing in {carrying[:2]}"
        if _converted(query, regex):
            parsed = [float(v) for v in values if re.fullmatch(r"-?\d+(\.\d+)?", v)]
            assert parsed, f"{where}: {regex!r} finds no number in {values[:3]}"


def test_link_records_match_the_code():
    """The link records' keys and the links' names, from shared/links.py's format strings and LINK_TITLES (the
    fixture also captures the real lines)."""
    from shared import links

    assert set(links.LINK_TITLES) == set(checks.LINK_NAMES)
    source = Path(links.__file__).read_text()
    for kind in checks.LINK_RECORDS:
        [fmt] = re.findall(rf'"({kind} [^"]*)"', source)
        assert fmt.startswith(kind)
        assert keys_of(fmt) == list(checks.RELAY_RECORDS[kind]), fmt


@pytest.mark.stack
def test_a_broken_and_restored_link_is_logged_as_the_queries_read_it(records):
    [broken] = records["link broken"]
    [restored] = records["link restored"]
    assert re.search(r"\blink=(\S+)", broken).group(1) == "key_vault" == re.search(r"\blink=(\S+)", restored).group(1)
