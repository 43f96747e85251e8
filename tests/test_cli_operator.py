"""Off the happy path, as a partner's operator meets it (issue 20): every CLI command
(`python -m shared --env-file ... <command>`) against the local stack or a deliberately broken endpoint.

Each link failure ends in one message (link, cause, fix) with the link's exit code, as `doctor` uses them, within
the CLI's documented bound; answers (dry run, retry, rejections, exit codes, --json) are right; settings are read
as operators hold them (dotenv, local.settings.json, `az functionapp config appsettings list`).

Commands run in this process (`cli`, tests/cli_runner.py); Ctrl-C and a closed pipe are a real process's, so those
two tests start `python -m shared` as a subprocess."""

import datetime as dt
import json
import re
import subprocess
import sys
import time
import uuid

import pytest

from shared.cli import DOCTOR_EXIT, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_REJECTED
from tests.cli_runner import REPO, as_json, exports_client, no_token_backoff, plant_foreign, run_main
from tests.helpers import closed_port

pytestmark = pytest.mark.stack
BOUND_SECONDS = 10  # the CLI's documented bound for a broken partner storage link (docs/troubleshooting.md)
# The bound itself follows from the client options (test_the_documented_bound_follows_from_the_interactive_options)
# and, for a stall, from counted attempts; a run's wall time only guards against a hang or the SDK's default
# retries (15 + 18 + 24 s and a 120 s read timeout), far past anything a loaded machine adds.
HANG_GUARD_SECONDS = 50


def with_blob_endpoint(connection_string: str, endpoint: str) -> str:
    parts = [p for p in connection_string.split(";") if p and not p.startswith("BlobEndpoint=")]
    return ";".join([*parts, f"BlobEndpoint={endpoint}"])


def one_clear_message(result):
    text = result.stdout + result.stderr
    assert "Traceback" not in text
    assert "Fix:" in result.stderr
    return result.stderr


def timed(cli, *args, **kwargs):
    started = time.monotonic()
    result = cli(*args, **kwargs)
    return result, time.monotonic() - started


COMMANDS = {  # the command, and the link it meets first on the partner's storage
    "sync": (("sync",), "exports"),
    "send": (("send", str(REPO / "README.md")), "exports"),
    "status": (("status",), "ledger"),
    "retry": (("retry", "--all-poisoned"), "ledger"),
    "doctor": (("doctor",), "exports"),
}


# -- errors, never tracebacks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_partner_storage_refusing_connections_is_one_message_with_the_links_exit_code_within_the_bound(cli, command):
    args, link = COMMANDS[command]
    endpoint = f"https://127.0.0.1:{closed_port()}/devstoreaccount1"
    result, seconds = timed(cli, *args, EXPORT_STORAGE=with_blob_endpoint(cli.base["EXPORT_STORAGE"], endpoint))
    assert result.returncode == DOCTOR_EXIT[link], result.stdout + result.stderr
    text = result.stdout + result.stderr
    assert "Traceback" not in text and "Fix:" in text
    assert "refused" in text and "EXPORT_STORAGE" in text
    assert seconds < HANG_GUARD_SECONDS


def test_partner_storage_that_accepts_and_never_answers_ends_within_the_bound(cli, stack):
    from shared.storage import INTERACTIVE_RETRIES
    from tests.faultproxy import Fault, match, proxied_settings, proxies_for

    proxies = proxies_for(stack)
    try:
        stall = proxies["EXPORT_STORAGE"].add(Fault("stall", when=match(path=rf"/{cli.base['LEDGER_CONTAINER']}(/|$)"),
                                                    stall=60, times=None))
        result, seconds = timed(cli, "status", EXPORT_STORAGE=proxied_settings(stack, proxies)["EXPORT_STORAGE"])
    finally:
        for proxy in proxies.values():
            proxy.stop()
    assert result.returncode == DOCTOR_EXIT["ledger"], result.stderr
    assert "timed out" in one_clear_message(result)
    # Within the bound: each stalled request was given up by the client's read timeout, and no more were tried
    # than the interactive retries allow.
    assert stall.fired == stall.abandoned == INTERACTIVE_RETRIES + 1
    assert seconds < HANG_GUARD_SECONDS


def test_the_documented_bound_follows_from_the_interactive_options():
    from shared.storage import INTERACTIVE_CONNECT_SECONDS, INTERACTIVE_READ_SECONDS, interactive_storage_options

    options = interactive_storage_options()
    policy = options["retry_policy"]
    attempts = policy.total_retries + 1
    backoffs = (attempts - 1) * (policy.backoff + policy.random_jitter_range)
    assert (options["connection_timeout"], options["read_timeout"]) == (INTERACTIVE_CONNECT_SECONDS,
                                                                        INTERACTIVE_READ_SECONDS)
    assert attempts * INTERACTIVE_CONNECT_SECONDS + backoffs <= BOUND_SECONDS  # a host that never answers
    assert attempts * INTERACTIVE_READ_SECONDS + backoffs <= BOUND_SECONDS + 1  # one that accepts, then stalls


def test_ctrl_c_ends_with_one_word_and_exit_130(cli, stack, tmp_path):
    import signal

    from tests.faultproxy import Fault, match, proxied_settings, proxies_for

    proxies = proxies_for(stack)
    try:
        stall = proxies["EXPORT_STORAGE"].add(Fault("stall", when=match(path=rf"/{cli.base['LEDGER_CONTAINER']}(/|$)"),
                                                    stall=30, times=None))
        env_file = tmp_path / "stall.env"
        values = dict(cli.base, EXPORT_STORAGE=proxied_settings(stack, proxies)["EXPORT_STORAGE"])
        env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        process = subprocess.Popen([sys.executable, "-m", "shared", "--env-file", str(env_file), "status"],
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stall.wait_fired(process)  # until the command waits for the stalled ledger, however long its start takes
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        for proxy in proxies.values():
            proxy.stop()
    assert process.returncode == 130 and stderr.strip() == "interrupted", stderr


def test_partner_storage_host_that_does_not_resolve_names_dns(cli):
    endpoint = "https://partnerexports.invalid/devstoreaccount1"
    result = cli("status", EXPORT_STORAGE=with_blob_endpoint(cli.base["EXPORT_STORAGE"], endpoint),
                 expect=DOCTOR_EXIT["ledger"])
    message = one_clear_message(result)
    assert "partnerexports.invalid" in message and "DNS" in message


def test_partner_storage_certificate_not_trusted_names_the_ca_bundle(cli):
    import certifi

    result = cli("status", REQUESTS_CA_BUNDLE=certifi.where(), expect=DOCTOR_EXIT["ledger"])
    message = one_clear_message(result)
    assert "TLS" in message and "REQUESTS_CA_BUNDLE" in message


@pytest.mark.parametrize("container", ["ledger", "exports"])
def test_a_403_on_a_partner_container_names_the_container_and_the_role(cli, stack, container):
    from tests.faultproxy import Fault, match, proxied_settings, proxies_for

    name = cli.base["LEDGER_CONTAINER" if container == "ledger" else "EXPORT_CONTAINER"]
    proxies = proxies_for(stack)
    try:
        proxies["EXPORT_STORAGE"].add(Fault("status", when=match(path=rf"/{name}(/|$)"), status=403, times=None))
        result = cli("sync", EXPORT_STORAGE=proxied_settings(stack, proxies)["EXPORT_STORAGE"],
                     expect=DOCTOR_EXIT[container])
    finally:
        for proxy in proxies.values():
            proxy.stop()
    message = one_clear_message(result)
    assert f"'{name}'" in message and "403" in message
    assert ("Storage Blob Data Contributor" if container == "ledger" else "Storage Blob Data Reader") in message


def test_a_malformed_connection_string_is_a_setting_problem_not_a_traceback(cli):
    broken = cli.base["EXPORT_STORAGE"].replace(";", ";;", 1)
    result = cli("status", EXPORT_STORAGE=broken, expect=EXIT_CONFIG)
    assert "EXPORT_STORAGE: is not a storage connection string" in result.stderr
    assert "Traceback" not in result.stderr
    assert broken.split("AccountKey=")[1].split(";")[0] not in result.stdout + result.stderr


def test_skyporten_unreachable_is_the_skyporten_link_for_token_and_sync(cli):
    port = closed_port()
    for args in (("token",), ("sync",)):
        # The client's own retries, without waiting out their backoff (0.5, 1, 2 s): a message, not a wait, is tested.
        result = cli(*args, MASKINPORTEN_TOKEN_ENDPOINT=f"https://127.0.0.1:{port}/token", prepare=no_token_backoff,
                     expect=DOCTOR_EXIT["skyporten"])
        assert "MASKINPORTEN_TOKEN_ENDPOINT" in one_clear_message(result)
        assert "retry 1" not in result.stderr  # our retries are detail: --verbose


@pytest.mark.parametrize("command", ["token", "sync"])
def test_key_vault_unreachable_is_the_key_vault_link(cli, command):
    result, seconds = timed(cli, command, KEY_VAULT_URL=f"https://127.0.0.1:{closed_port()}")
    assert result.returncode == DOCTOR_EXIT["key_vault"], result.stderr
    assert "KEY_VAULT_URL" in one_clear_message(result)
    assert seconds < HANG_GUARD_SECONDS


def test_entra_unreachable_is_the_entra_link(cli):
    result = cli("sync", BANENOR_AUTHORITY_HOST=f"https://127.0.0.1:{closed_port()}", expect=DOCTOR_EXIT["entra"])
    assert "BANENOR_AUTHORITY_HOST" in one_clear_message(result)


@pytest.mark.parametrize("command", ["sync", "send"])
def test_gateway_unreachable_is_the_gateway_link_and_charges_no_file(cli, command):
    exports_client(cli).get_blob_client("waiting.csv").upload_blob(b"w\n")
    args = ("send", str(REPO / "README.md")) if command == "send" else ("sync",)
    url = f"https://127.0.0.1:{closed_port()}/payload-manager/v1"
    result, seconds = timed(cli, *args, BANENOR_STORAGE_URL=url)
    assert result.returncode == DOCTOR_EXIT["gateway"], result.stdout + result.stderr
    assert "cannot be reached" in one_clear_message(result) and "BANENOR_STORAGE_URL" in result.stderr
    assert seconds < HANG_GUARD_SECONDS
    assert as_json(cli("status", "--json", expect=EXIT_OK))["counts"]["failed"] == 0


def test_a_refused_entra_exchange_shows_our_diagnosis_without_the_sdks_raw_warning(cli):
    result = cli("sync", BANENOR_CLIENT_ID=str(uuid.uuid4()), expect=DOCTOR_EXIT["entra"])
    message = one_clear_message(result)
    assert "AADSTS700016" in message
    assert "WARNING" not in result.stderr and "azure.identity" not in result.stderr


def test_verbose_shows_the_sdks_raw_detail(cli):
    result = cli("sync", "--verbose", BANENOR_CLIENT_ID=str(uuid.uuid4()), expect=DOCTOR_EXIT["entra"])
    assert "azure.identity" in result.stderr


def test_a_closed_pipe_ends_quietly(cli, tmp_path):
    env_file = tmp_path / "pipe.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in cli.base.items()))
    for i in range(3):
        exports_client(cli).get_blob_client(f"pipe-{i}.exe").upload_blob(b"MZ")
    cli("sync")
    process = subprocess.Popen([sys.executable, "-m", "shared", "--env-file", str(env_file), "status"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # like `| head` that has read enough (here: before the first line)
    stderr = process.stderr.read().decode()
    process.wait(timeout=60)
    assert stderr == ""


# -- answers that are right ---------------------------------------------------------------------------------
def test_dry_run_makes_the_real_decisions_and_writes_nothing(cli, backend):
    exports = exports_client(cli)
    exports.get_blob_client("tool.bin").upload_blob(b"MZ")
    exports.get_blob_client("Målinger 1.csv").upload_blob(b"a\n")
    before = as_json(cli("status", "--json", expect=EXIT_OK))["counts"]
    dry = as_json(cli("sync", "--dry-run", "--json", expect=EXIT_OK))
    by_name = {o["source_name"]: o for o in dry["outcomes"]}
    assert by_name["tool.bin"]["status"] == "rejected" and "ALLOWED_EXTENSIONS" in by_name["tool.bin"]["reason"]
    assert by_name["Målinger 1.csv"]["status"] == "would_deliver"
    assert by_name["Målinger 1.csv"]["destination"].endswith("/Maalinger-1.csv")
    assert by_name["Målinger 1.csv"]["reason"] == "new"
    assert as_json(cli("status", "--json", expect=EXIT_OK))["counts"] == before
    assert not list(backend.list_blobs(name_starts_with=f"cli{cli.tag}/"))
    text = cli("sync", "--dry-run", expect=EXIT_OK).stdout
    assert "would_deliver" in text and "Maalinger-1.csv" in text and "pending retry" not in text


def test_dry_run_knows_a_file_too_big_for_the_block_size(cli):
    # A page blob declares its size without its bytes: 13 GiB listed, nothing stored.
    exports_client(cli).get_blob_client("huge.csv").create_page_blob(size=13 * 2**30)
    dry = as_json(cli("sync", "--dry-run", "--json", BLOCK_SIZE="256KiB", expect=EXIT_OK))
    huge = next(o for o in dry["outcomes"] if o["source_name"] == "huge.csv")
    assert huge["status"] == "failed" and "BLOCK_SIZE" in huge["reason"]


def test_dry_run_shows_already_delivered_and_a_due_retry(cli, backend):
    exports = exports_client(cli)
    exports.get_blob_client("done.csv").upload_blob(b"a\n")
    cli("sync", expect=EXIT_OK)
    exports.get_blob_client("stuck.csv").upload_blob(b"b\n")
    foreign = plant_foreign(cli, backend, "stuck.csv")
    cli("sync", MAX_ATTEMPTS="1", expect=EXIT_FAILED)
    foreign.delete_blob()
    cli("retry", "stuck.csv", expect=EXIT_OK)
    dry = as_json(cli("sync", "--dry-run", "--json", "--verbose", expect=EXIT_OK))
    by_name = {o["source_name"]: o for o in dry["outcomes"]}
    assert dry["already_delivered"] == 1 and "done.csv" not in by_name
    assert by_name["stuck.csv"]["status"] == "would_deliver" and "retry" in by_name["stuck.csv"]["reason"]


@pytest.mark.parametrize("case", ["unknown", "delivered", "rejected"])
def test_retry_of_a_name_that_is_not_poisoned_says_why_and_exits_non_zero(cli, case):
    exports = exports_client(cli)
    exports.get_blob_client("ok.csv").upload_blob(b"a\n")
    exports.get_blob_client("tool.exe").upload_blob(b"MZ")
    cli("sync")
    name = {"unknown": "never-seen.csv", "delivered": "ok.csv", "rejected": "tool.exe"}[case]
    result = cli("retry", name)
    assert result.returncode == EXIT_FAILED
    assert {"unknown": "no export named", "delivered": "delivered", "rejected": "rejected"}[case] in result.stderr
    assert "will be retried" not in result.stdout + result.stderr


def test_a_poisoned_delivery_and_status_say_the_same_next_step(cli, backend):
    exports_client(cli).get_blob_client("stuck.csv").upload_blob(b"x")
    plant_foreign(cli, backend, "stuck.csv")
    sync = cli("sync", MAX_ATTEMPTS="1", expect=EXIT_FAILED)
    status = cli("status", expect=EXIT_FAILED)  # a poisoned version waits for a person (issue 26: README's table)
    step = "retry stuck.csv"
    assert step in sync.stdout and step in status.stdout


def test_a_rejection_is_short_names_the_setting_and_file_is_logged_once_and_shown_once(cli, tmp_path):
    path = tmp_path / "tool.bin"
    path.write_bytes(b"MZ")
    send = cli("send", str(path), expect=EXIT_REJECTED)
    assert (send.stdout + send.stderr).count("tool.bin") <= 2  # the line and its reason: not a log line as well
    # Rejected by the send, not by this run: counted, where to see it, and no colour on this run's exit (issue 26)
    sync = cli("sync", expect=EXIT_OK)
    assert "rejected 1" in sync.stdout and "`status`" in sync.stdout
    status = as_json(cli("status", "--json", expect=EXIT_REJECTED))
    assert [r["source_name"] for r in status["rejected"]] == ["tool.bin"]
    reason = status["rejected"][0]["reason"]
    assert "ALLOWED_EXTENSIONS" in reason and "tool.bin" in reason and len(reason) < 200


def test_send_and_sync_share_the_exit_code_table(cli, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("a\n")
    bad = tmp_path / "bad.exe"
    bad.write_bytes(b"MZ")
    assert cli("send", str(good)).returncode == EXIT_OK
    assert cli("send", str(good), str(bad)).returncode == EXIT_REJECTED
    assert cli("sync").returncode == EXIT_OK  # the rejected version waits in `status`; this run went well
    assert cli("status").returncode == EXIT_REJECTED
    absent = cli("send", str(tmp_path / "absent.csv"), str(good), "--json")
    assert absent.returncode == EXIT_CONFIG  # a command-line mistake: nothing is sent, nothing to retry
    assert "no such file" in as_json(absent)["error"]
    first, second = as_json(cli("send", str(good), str(bad), "--json", expect=EXIT_REJECTED))
    assert set(first) == set(second)  # the same fields for every file


ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_json_has_iso_utc_times_unquoted_etags_and_the_same_field_names(cli, backend, tmp_path):
    path = tmp_path / "j.csv"
    path.write_text("a\n")
    sent = as_json(cli("send", str(path), "--json", expect=EXIT_OK))[0]
    exports_client(cli).get_blob_client("stuck.csv").upload_blob(b"x")
    plant_foreign(cli, backend, "stuck.csv")
    synced = as_json(cli("sync", "--json", MAX_ATTEMPTS="1", expect=EXIT_FAILED))
    status = as_json(cli("status", "--json", expect=EXIT_FAILED))
    token = as_json(cli("token", "--json", expect=EXIT_OK))
    poisoned = status["poisoned"][0]
    outcome = synced["outcomes"][0]
    assert not sent["source_etag"].startswith('"') and not outcome["source_etag"].startswith('"')
    assert not poisoned["source_etag"].startswith('"')
    for key in ("source_name", "source_etag", "reason"):
        assert key in sent and key in outcome and key in poisoned
    for value in (poisoned["next_retry_at"], poisoned["last_failed_at"], token["expires_at"]):
        assert ISO_UTC.match(value), value
    assert dt.datetime.fromisoformat(token["expires_at"]) > dt.datetime.now(dt.UTC)


# -- settings as operators hold them ------------------------------------------------------------------------
@pytest.mark.parametrize("command", [("doctor",), ("status",), ("token",)])
def test_a_misspelt_setting_is_reported_with_the_closest_real_name(cli, command):
    result = cli(*command, BANENOR_DIRECTROY="partner-x")
    assert result.returncode in (EXIT_CONFIG, DOCTOR_EXIT["settings"])
    text = result.stdout + result.stderr
    assert "BANENOR_DIRECTROY" in text and "BANENOR_DIRECTORY" in text
    assert "Traceback" not in text


def run_with(path, *args):
    return run_main(["--env-file", str(path), *args])


def test_env_file_reads_a_functions_local_settings_json(cli, tmp_path):
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": dict(cli.base, SYNC_CONCURRENCY="7")}))
    result = run_with(path, "doctor", "--settings", "--json")
    rows = {r["name"]: r["value"] for r in json.loads(result.stdout)["settings"]}
    assert rows["SYNC_CONCURRENCY"] == "7" and rows["EXPORT_CONTAINER"] == cli.base["EXPORT_CONTAINER"]


def test_env_file_reads_az_functionapp_config_appsettings_list(cli, tmp_path):
    path = tmp_path / "appsettings.json"
    rows = [{"name": k, "value": v, "slotSetting": False} for k, v in dict(cli.base, SYNC_CONCURRENCY="6").items()]
    path.write_text(json.dumps(rows))
    result = run_with(path, "doctor", "--settings", "--json")
    settings = {r["name"]: r["value"] for r in json.loads(result.stdout)["settings"]}
    assert settings["SYNC_CONCURRENCY"] == "6"


def test_env_file_reads_dotenv_with_export_and_quotes(cli, tmp_path):
    path = tmp_path / ".env"
    lines = [f'export {k}="{v}"' for k, v in dict(cli.base, SYNC_CONCURRENCY="5").items()]
    path.write_text("# settings\n" + "\n".join(lines) + "\n")
    result = run_with(path, "doctor", "--settings", "--json")
    settings = {r["name"]: r["value"] for r in json.loads(result.stdout)["settings"]}
    assert settings["SYNC_CONCURRENCY"] == "5"


def test_an_unreadable_env_file_names_the_formats(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"Values": [1, 2')
    result = run_with(path, "status")
    assert result.returncode == EXIT_CONFIG and "Traceback" not in result.stderr
    for fmt in ("KEY=value", "local.settings.json", "az functionapp config appsettings list"):
        assert fmt in result.stderr


# -- the documentation ---------------------------------------------------------------------------------------
# docs/local-development.md has other owners (issue 20 left it to them); docs/deploy.md is checked here too (#28).
OTHERS = {"local-development.md"}
DOCS = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name not in OTHERS)]


def test_docs_link_only_to_files_in_the_repository():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to {target}"
        assert "PROTOCOL.md" not in doc.read_text(), doc.name


DOCUMENTED_COMMAND = r"(?:^|`|\s)((?:[^\s`]*python3?) -m shared\b[^`|]*|[^\s`]*bin/skyporten-relay\b[^`|]*)"


def documented_commands():
    """(doc, command, runnable): every `python -m shared` and `skyporten-relay` command in the docs; runnable when it
    is a line of a code block."""
    for doc in DOCS:
        in_block = False
        for line in doc.read_text().splitlines():
            if line.startswith("```"):
                in_block = not in_block
                continue
            for m in re.finditer(DOCUMENTED_COMMAND, line):
                yield doc.name, m.group(1).split(" #")[0].strip(), in_block


def test_documented_commands_use_the_venv_and_the_ones_to_paste_parse():
    import shlex

    from shared.cli import build_parser

    commands = list(documented_commands())
    assert sum(runnable for _, _, runnable in commands) >= 5
    assert any(command.startswith(".venv/bin/skyporten-relay") for _, command, _ in commands)
    for doc, command, runnable in commands:
        words = shlex.split(command)
        assert words[0] == ".venv/bin/python" or words[0].endswith(".venv/bin/skyporten-relay"), (doc, command)
        if runnable:
            try:
                build_parser().parse_args(words[3:] if words[0].endswith("python") else words[1:])
            except SystemExit:
                pytest.fail(f"{doc}: {command!r} does not parse")


def test_readme_says_once_early_how_to_run_the_command_line():
    text = (REPO / "README.md").read_text()
    assert text.index(".venv/bin/skyporten-relay") < text.index("## What it does")
    assert text.index(".venv/bin/python -m shared") < text.index("## What it does")


def test_onboarding_lists_what_the_partner_tells_bane_nor():
    text = (REPO / "docs" / "onboarding.md").read_text().lower()
    assert "organisation number" in text and "tell bane nor" in text and "environment" in text


def test_local_settings_example_marks_every_value_left_unset_in_azure_and_matches_the_azd_defaults():
    example = json.loads((REPO / "local.settings.example.json").read_text())["Values"]
    bicep = (REPO / "infra" / "main.bicep").read_text()
    for name in ("MASKINPORTEN_ISSUER", "MASKINPORTEN_TOKEN_ENDPOINT", "BANENOR_STORAGE_URL",
                 "BANENOR_STORAGE_AUDIENCE", "BANENOR_AUTHORITY_HOST", "EXPORT_STORAGE", "BLOB_TRIGGER_SOURCE",
                 "AzureWebJobsStorage", "REQUESTS_CA_BUNDLE"):
        assert "azure: leave unset" in example[name].lower(), name
    for name, param in (("EXPORT_CONTAINER", "exportContainerName"), ("LEDGER_CONTAINER", "ledgerContainerName"),
                        ("ARCHIVE_CONTAINER", "archiveContainerName"), ("SIGNING_KEY_NAME", "signingKeyName"),
                        ("SYNC_SCHEDULE", "syncSchedule"), ("AFTER_DELIVERY", "afterDelivery"),
                        ("COPY_MODE", "copyMode"), ("NAME_POLICY", "namePolicy"), ("MAX_ATTEMPTS", "maxAttempts")):
        default = re.search(rf"param {param} \w+ = '?([^'\n]*)'?", bicep).group(1)
        assert example[name] == default, (name, example[name], default)
