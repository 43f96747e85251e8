"""--json says the same thing in every command (issue 27): `status` entries carry `status` and `destination` as
sync's and send's outcomes do, and a rejected file's size is its size in `send` as in `sync --dry-run`."""

import pytest

from shared.cli import EXIT_FAILED, EXIT_OK, EXIT_REJECTED
from tests.cli_runner import as_json, exports_client, plant_foreign

pytestmark = pytest.mark.stack
FIELDS = ("source_name", "source_etag", "status", "destination", "reason")


def test_a_rejected_file_has_its_size_in_send_as_in_the_dry_run(cli, tmp_path):
    path = tmp_path / "tool.bin"
    path.write_bytes(b"M" * 1000)
    exports_client(cli).get_blob_client("other.bin").upload_blob(b"M" * 1000)
    (sent,) = as_json(cli("send", str(path), "--json", expect=EXIT_REJECTED))
    assert (sent["status"], sent["size"]) == ("rejected", 1000)
    dry = as_json(cli("sync", "--dry-run", "--json", expect=EXIT_OK))
    assert {o["source_name"]: o["size"] for o in dry["outcomes"]}["other.bin"] == 1000
    synced = as_json(cli("sync", "--json", expect=EXIT_REJECTED))
    assert {o["source_name"]: o["size"] for o in synced["outcomes"]}["other.bin"] == 1000


def test_status_entries_have_the_fields_every_command_has(cli, backend):
    exports = exports_client(cli)
    exports.get_blob_client("tool.exe").upload_blob(b"MZ")
    exports.get_blob_client("Målinger 1.csv").upload_blob(b"a\n")
    # Poisoned at once by a file of Bane NOR's own at its destination (a revoked ACL is the link's state: #26)
    plant_foreign(cli, backend, "Maalinger-1.csv")
    cli("sync", MAX_ATTEMPTS="1", expect=EXIT_FAILED)
    status = as_json(cli("status", "--json", expect=EXIT_FAILED))  # a poisoned version waits for a person
    (poisoned,) = status["poisoned"]
    (rejected,) = status["rejected"]
    for entry in (poisoned, rejected):
        assert set(FIELDS) <= set(entry), entry
    assert poisoned["status"] == "poisoned"
    assert poisoned["destination"] == f"partner-987654321/cli{cli.tag}/Maalinger-1.csv"
    assert (rejected["status"], rejected["destination"]) == ("rejected", None)
