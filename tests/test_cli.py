"""Every CLI command on the local stack, run as a partner would (`python -m shared --env-file ... <command>`),
including each `doctor` failure (one test per broken link) and the secrecy of what is printed.

Commands run in this process (`cli`, tests/cli_runner.py); `--help` runs as a subprocess, so one test starts the
interpreter on `python -m shared` as a partner does."""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shared.cli import DOCTOR_EXIT, EXIT_REJECTED
from tests.cli_runner import REPO, as_json, run_main

pytestmark = pytest.mark.stack


def test_help_explains_every_command():
    result = subprocess.run([sys.executable, "-m", "shared", "--help"], cwd=REPO, capture_output=True, text=True)
    for command in ("doctor", "token", "send", "sync", "status", "retry"):
        assert command in result.stdout


def test_token_shows_non_secret_facts_only(cli, stack):
    result = cli("token", "--json", expect=0)
    facts = as_json(result)
    assert facts["subject"] == "0192:987654321;banenor:payloadmanager.storage"
    assert facts["audience"] == "api://AzureADTokenExchange"
    assert facts["consumer_org"] == "0192:987654321"
    assert "access_token" not in facts
    assert "eyJ" not in result.stdout + result.stderr


def test_token_raw_prints_the_token_when_asked(cli):
    facts = as_json(cli("token", "--json", "--raw", expect=0))
    assert facts["access_token"].startswith("eyJ")


def test_token_refusal_is_one_clear_message_without_traceback(cli):
    result = cli("token", MASKINPORTEN_SCOPE="banenor:not.granted", expect=DOCTOR_EXIT["skyporten"])
    assert "MP-200" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_settings_exit_2_naming_each(cli):
    result = cli("token", BANENOR_ENVIRONMENT="staging", BANENOR_TENANT_ID="nope", expect=2)
    assert "BANENOR_ENVIRONMENT" in result.stderr and "BANENOR_TENANT_ID" in result.stderr


def test_send_delivers_local_files(cli, tmp_path, backend):
    path = tmp_path / "Årsrapport 2025.pdf"
    path.write_bytes(b"%PDF-1.7 report")
    results = as_json(cli("send", str(path), "--to", "manual", "--json", expect=0))
    assert results[0]["status"] == "delivered"
    assert results[0]["destination"].endswith("/manual/Aarsrapport-2025.pdf")
    assert backend.get_blob_client(results[0]["destination"]).download_blob().readall() == b"%PDF-1.7 report"


def test_send_refused_extension_exits_non_zero(cli, tmp_path):
    path = tmp_path / "tool.exe"
    path.write_bytes(b"MZ")
    results = as_json(cli("send", str(path), "--json", expect=EXIT_REJECTED))
    assert results[0]["status"] == "rejected"


def test_sync_dry_run_lists_then_sync_delivers_then_status_counts(cli, tmp_path):
    files = []
    for i in range(3):
        files.append(tmp_path / f"s{i}.csv")
        files[-1].write_text("a\n")
    cli("send", *map(str, files), expect=0)
    from azure.storage.blob import BlobServiceClient

    exports = BlobServiceClient.from_connection_string(
        cli.base["EXPORT_STORAGE"], connection_verify=cli.base["REQUESTS_CA_BUNDLE"]
    ).get_container_client(cli.base["EXPORT_CONTAINER"])
    exports.get_blob_client("late.csv").upload_blob(b"late\n")
    dry = as_json(cli("sync", "--dry-run", "--json", expect=0))
    assert dry["would_deliver"] == 1 and dry["delivered"] == 0
    done = as_json(cli("sync", "--json", expect=0))
    assert done["delivered"] == 1 and done["already_delivered"] == 3
    status = as_json(cli("status", "--json", expect=0))
    assert status["counts"]["delivered"] == 4


def test_status_shows_poisoned_and_retry_makes_them_due(cli, backend):
    from azure.storage.blob import BlobServiceClient

    exports = BlobServiceClient.from_connection_string(
        cli.base["EXPORT_STORAGE"], connection_verify=cli.base["REQUESTS_CA_BUNDLE"]
    ).get_container_client(cli.base["EXPORT_CONTAINER"])
    exports.get_blob_client("stuck.csv").upload_blob(b"x")
    # A file of Bane NOR's own where the export would land: never overwritten, so the version is poisoned at once
    # (a refusal about the link, such as a revoked ACL, charges no file: test_a_revoked_acl_is_the_links_state).
    foreign = backend.get_blob_client(f"{cli.base['BANENOR_DIRECTORY']}/cli{cli.tag}/stuck.csv")
    foreign.upload_blob(b"bane nor's own")
    cli("sync", expect=1)
    status = cli("status", "--json", expect=1)  # a poisoned version waits for a person: exit 1, as README says
    assert [p["source_name"] for p in as_json(status)["poisoned"]] == ["stuck.csv"]
    assert "never overwritten" in as_json(status)["poisoned"][0]["reason"]
    text = cli("status", expect=1).stdout
    assert "poisoned  stuck.csv" in text
    foreign.delete_blob()  # Bane NOR removed it
    assert as_json(cli("retry", "--all-poisoned", "--json", expect=0)) == {"retried": 1}
    assert as_json(cli("sync", "--json", expect=0))["delivered"] == 1
    cli("status", expect=0)


def test_a_revoked_acl_is_the_links_state_and_the_next_sync_heals_it(cli, stack):
    from azure.storage.blob import BlobServiceClient

    exports = BlobServiceClient.from_connection_string(
        cli.base["EXPORT_STORAGE"], connection_verify=cli.base["REQUESTS_CA_BUNDLE"]
    ).get_container_client(cli.base["EXPORT_CONTAINER"])
    exports.get_blob_client("waits.csv").upload_blob(b"x")
    stack.gateway.revoke(stack.mi_object_id)
    try:
        stopped = cli("sync", MAX_ATTEMPTS="1", expect=16)  # the gateway link's code, as doctor numbers it
        assert "AuthorizationPermissionMismatch" in stopped.stderr
        status = cli("status", expect=16)
        assert "LINK BROKEN" in status.stdout and "Bane NOR's storage" in status.stdout
        assert as_json(cli("status", "--json", expect=16))["counts"] == {"delivered": 0, "failed": 0,
                                                                         "poisoned": 0, "rejected": 0}
    finally:
        stack.gateway.grant(stack.mi_object_id, "integration-dev", "partner-987654321")
    # doctor sees every link work now, and says what the ledger still records until the next run gets through
    ledger = next(c for c in as_json(cli("doctor", "--json", expect=0))["checks"] if c["link"] == "ledger")
    assert ledger["status"] == "warn" and any("broken link" in d and "refuses since" in d for d in ledger["details"])
    assert as_json(cli("sync", "--json", expect=0))["delivered"] == 1
    assert as_json(cli("status", "--json", expect=0))["links"] == []


def test_an_earlier_rejection_does_not_colour_a_later_syncs_exit_code(cli):
    from azure.storage.blob import BlobServiceClient

    exports = BlobServiceClient.from_connection_string(
        cli.base["EXPORT_STORAGE"], connection_verify=cli.base["REQUESTS_CA_BUNDLE"]
    ).get_container_client(cli.base["EXPORT_CONTAINER"])
    exports.get_blob_client("tool.exe").upload_blob(b"MZ")
    cli("sync", expect=3)  # this run rejected it
    exports.get_blob_client("fine.csv").upload_blob(b"a\n")
    later = cli("sync", expect=0)  # this run went well; the old rejection waits in `status`
    assert "earlier runs" in later.stdout
    cli("status", expect=3)


def test_doctor_passes_every_link_on_the_stack(cli):
    report = as_json(cli("doctor", "--json", expect=0))
    assert [c["link"] for c in report["checks"]] == list(DOCTOR_EXIT)
    assert all(c["status"] in ("ok", "warn") for c in report["checks"])


def test_doctor_read_only_lists_instead_of_writing(cli):
    report = as_json(cli("doctor", "--read-only", "--json", expect=0))
    gateway = next(c for c in report["checks"] if c["link"] == "gateway")
    assert "read-only" in gateway["details"][0]


def test_a_missing_env_file_is_one_clear_error(tmp_path):
    result = run_main(["--env-file", str(tmp_path / "absent.env"), "status"])
    assert result.returncode == 2
    assert "absent.env: No such file or directory" in result.stderr and "make stack" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_local_stack_settings_file_says_the_stack_is_not_running(tmp_path):
    missing = tmp_path / ".local" / "settings.env"  # what `make stack-stop` leaves: the file is gone
    for command in ("doctor", "status"):
        result = run_main(["--env-file", str(missing), command])
        assert result.returncode == 2, result.stderr
        assert "the local stack is not running: `make stack`" in result.stderr
        assert "Traceback" not in result.stderr


def test_settings_of_a_stopped_local_stack_say_it_is_not_running(stack, tmp_path):
    import re
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on, for every endpoint the stack wrote
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    values = {k: re.sub(r"//(127\.0\.0\.1|localhost):\d+", rf"//\g<1>:{closed}", v) for k, v in stack.settings.items()}
    local = tmp_path / "local.settings.json"  # what `make stack-stop` leaves behind for `func start`
    local.write_text(json.dumps({"IsEncrypted": False, "Values": values}))
    for command in ("doctor", "status", "sync"):
        result = run_main(["--env-file", str(local), command])
        assert result.returncode == 2, result.stdout + result.stderr
        assert "the local stack is not running: `make stack`" in result.stderr
        assert "network" not in result.stderr and "Traceback" not in result.stderr


def test_an_env_file_line_that_is_no_setting_is_one_clear_error(tmp_path):
    env_file = tmp_path / "bad.env"
    env_file.write_text("EXPORT_CONTAINER=exports\n=oops\n")
    result = run_main(["--env-file", str(env_file), "status"])
    assert result.returncode == 2
    assert "line 2" in result.stderr and "not a setting name" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_env_file_line_without_equals_is_exit_2_naming_its_line(tmp_path):
    env_file = tmp_path / "typo.env"
    env_file.write_text("EXPORT_CONTAINER=exports\nBANENOR_DIRECTORY partner-987654321\n")
    for command in ("doctor", "status"):
        result = run_main(["--env-file", str(env_file), command])
        assert result.returncode == 2, result.stdout + result.stderr
        assert "line 2" in result.stderr and "BANENOR_DIRECTORY" in result.stderr and "KEY=value" in result.stderr
        assert "Traceback" not in result.stderr


def test_doctor_settings_lists_each_setting_with_its_origin_and_no_key(cli):
    result = cli("doctor", "--settings", "--json", SYNC_CONCURRENCY="12", expect=0)
    rows = {row["name"]: row for row in as_json(result)["settings"]}
    assert rows["SYNC_CONCURRENCY"] == {"name": "SYNC_CONCURRENCY", "value": "12", "origin": "set"}
    assert rows["MAX_ATTEMPTS"]["origin"] == "default"
    account_key = dict(p.split("=", 1) for p in cli.base["EXPORT_STORAGE"].split(";") if "=" in p)["AccountKey"]
    assert account_key not in result.stdout + result.stderr
    assert "AccountKey=<redacted>" in rows["EXPORT_STORAGE"]["value"]


def doctor_failure(cli, link, **overrides):
    result = cli("doctor", expect=DOCTOR_EXIT[link], **overrides)
    assert "FAIL" in result.stdout and "Fix:" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def test_doctor_settings_link(cli):
    assert "MASKINPORTEN_CLIENT_ID" in doctor_failure(cli, "settings", MASKINPORTEN_CLIENT_ID=None)


def test_doctor_key_vault_link(cli):
    assert "no secret named" in doctor_failure(cli, "key_vault", SIGNING_KEY_NAME="absent-key")


def test_doctor_key_link(cli, stack):
    from sim.pki import new_rsa_key, private_pem

    stack.keyvault.set_secret("doctor-short-key", private_pem(new_rsa_key(1024)).decode())
    assert "1024 bits" in doctor_failure(cli, "key", SIGNING_KEY_NAME="doctor-short-key")


def test_doctor_warns_about_a_key_near_its_one_year_expiry(cli, stack):
    import time

    pem = Path(stack.settings["SIGNING_KEY_FILE"]).read_text()
    stack.keyvault.set_secret("doctor-old-key", pem, created=time.time() - 350 * 86400)
    report = as_json(cli("doctor", "--json", SIGNING_KEY_NAME="doctor-old-key", expect=0))
    key = next(c for c in report["checks"] if c["link"] == "key")
    assert key["status"] == "warn"
    assert any("register the next key" in d for d in key["details"])


def test_doctor_skyporten_link(cli):
    assert "MP-100" in doctor_failure(cli, "skyporten", MASKINPORTEN_CLIENT_ID=str(uuid.uuid4()))


def test_doctor_entra_link(cli, stack):
    out = doctor_failure(cli, "entra", BANENOR_CLIENT_ID=stack.mi_object_id)
    assert "AADSTS700016" in out and "object/principal id" in out


def test_doctor_gateway_link(cli, stack):
    stack.gateway.revoke(stack.mi_object_id)
    try:
        out = doctor_failure(cli, "gateway")
    finally:
        stack.gateway.grant(stack.mi_object_id, "integration-dev", "partner-987654321")
    assert "403" in out and "only Bane NOR" in out


def test_doctor_exports_link(cli):
    out = doctor_failure(cli, "exports", EXPORT_CONTAINER=f"missing-{cli.tag}")
    assert "does not exist" in out and "EXPORT_CONTAINER" in out


def test_cli_output_never_contains_secrets(cli, stack):
    outputs = []
    for args in (("doctor",), ("token", "--decode"), ("sync",), ("status",)):
        result = cli(*args)
        outputs.append(result.stdout + result.stderr)
    text = "\n".join(outputs)
    pem_body = Path(stack.settings["SIGNING_KEY_FILE"]).read_text().splitlines()[1]
    assert pem_body not in text
    assert "eyJ" not in text
    assert stack.settings["IDENTITY_HEADER"] not in text
    account_key = stack.settings["EXPORT_STORAGE"].split("AccountKey=")[1].split(";")[0]
    assert account_key not in text


def test_doctor_ledger_link(cli, stack):
    # Azurite holds the exports and the ledger in one account, so a ledger-only failure is made by a proxy in
    # front of the partner's storage that denies (403, as RBAC does) every request for the ledger container.
    from tests.faultproxy import Fault, match, proxied_settings, proxies_for

    proxies = proxies_for(stack)
    try:
        proxies["EXPORT_STORAGE"].add(Fault("status", when=match(path=rf"/{cli.base['LEDGER_CONTAINER']}(/|$)"),
                                            status=403, times=None))
        out = doctor_failure(cli, "ledger", EXPORT_STORAGE=proxied_settings(stack, proxies)["EXPORT_STORAGE"])
    finally:
        for proxy in proxies.values():
            proxy.stop()
    assert f"access to container '{cli.base['LEDGER_CONTAINER']}' was denied (403)" in out
    assert "Storage Blob Data Contributor" in out


def test_doctor_clock_link(cli, stack):
    # A token endpoint whose Date header is a minute behind this machine: Skyporten allows 10 s of skew.
    import email.utils
    import re
    import time

    from sim.httpbase import Handler, SimServer
    from sim.pki import TlsFiles

    class SlowClock(Handler):
        def date_time_string(self, timestamp=None):
            return email.utils.formatdate(time.time() - 60, usegmt=True)

        def do_GET(self):
            self.send_json(200, {"issuer": "x"})

    tls_dir = stack.workdir / "tls"
    tls = TlsFiles(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server-key.pem")
    server = SimServer(SlowClock, tls.server_context()).start()
    try:
        out = doctor_failure(cli, "clock", MASKINPORTEN_ISSUER=server.base_url,
                             MASKINPORTEN_TOKEN_ENDPOINT=server.base_url + "/token")
    finally:
        server.stop()
    # The Date header is a minute behind when sent; time a loaded machine takes before the doctor reads it only adds.
    skew = re.search(r"clock is \+(\d+) s off", out)
    assert skew and 59 <= int(skew.group(1)) < 120, out
    assert "NTP" in out
