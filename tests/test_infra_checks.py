"""scripts/infra_checks.py (step 3 of `make lint-infra`): passes on the repository and finds each kind of problem
it exists for in a changed copy."""

import importlib.util
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("infra_checks", ROOT / "scripts" / "infra_checks.py")
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)


@pytest.fixture
def repo(tmp_path):
    for rel in ("infra", "host.json", "docs", "azure.yaml", "requirements.txt", "requirements.in"):
        source = ROOT / rel
        if not source.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, tmp_path / rel)
        else:
            shutil.copy(source, tmp_path / rel)
    return tmp_path


def edit(repo: Path, rel: str, old: str, new: str) -> None:
    path = repo / rel
    text = path.read_text()
    assert old in text, f"{old!r} not in {rel}"
    path.write_text(text.replace(old, new, 1))


def test_the_repository_passes():
    assert checks.run(ROOT) == []


def test_allowed_regions_include_norway_east_and_match_the_hooks():
    main = (ROOT / "infra/main.bicep").read_text()
    flex = checks.bicep_allowed_locations(main)
    assert "norwayeast" in flex and len(flex) > 20
    assert sorted(checks.sh_list((ROOT / "infra/hooks/preprovision.sh").read_text(), "FLEX_REGIONS")) == sorted(flex)


RBAC = "infra/modules/rbac-exports.bicep"
BROKEN = {
    "a hook region list that differs from main.bicep": (
        "infra/hooks/preprovision.sh", " norwayeast ", " ", "preprovision.sh: its Flex region list differs"),
    "a location without an allowed list": (
        "infra/main.bicep", "@allowed([\n  'australiaeast'", "@metadata([\n  'australiaeast'", "has no @allowed list"),
    "blob data owner on the export account": (
        RBAC, "storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'",
        "storageBlobDataContributor: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'",
        "Storage Blob Data Owner on the export account"),
    "delete on exports without archive or delete": (
        RBAC, "= if (removesExports) {\n  name: guid(exportContainer.id", "= {\n  name: guid(exportContainer.id",
        "exportsReadDelete must be conditional on `removesExports`"),
    "write on the export container": (
        RBAC, "roleDefinitions', roles.storageBlobDataReader)\n    principalId",
        "roleDefinitions', roles.storageBlobDataContributor)\n    principalId",
        "exportsRead must grant storageBlobDataReader"),
    "a role at account scope other than the delegator": (
        RBAC, "  scope: ledgerContainer\n  properties", "  scope: account\n  properties",
        "ledgerWrite must be scoped to ledgerContainer"),
    "a custom role that can write": (
        RBAC, "blobs/delete'\n",
        "blobs/delete'\n          'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write'\n",
        "the custom role may only read and delete blobs"),
    "a delegator without a signed sas": (
        RBAC, "var signsSas = copyMode != 'stream' || afterDelivery == 'archive'", "var signsSas = true",
        "var signsSas must be"),
    "a postdeploy hook that does not poll for the key": (
        "infra/hooks/postdeploy.sh", 'while [ "$i" -lt "$attempts" ]; do\n  i=$((i + 1))\n  key=',
        "for once in 1; do\n  key=", "postdeploy.sh: must poll"),
    "resource logs into AzureDiagnostics": (
        "infra/modules/diagnostics.bicep", "    logAnalyticsDestinationType: 'Dedicated'\n", "",
        "sends resource logs to AzureDiagnostics"),
    "a metric the system topic does not have": (
        "infra/modules/eventgrid.bicep", "metricName: 'DeliveryAttemptFailCount'", "metricName: 'DeliveryFailedCount'",
        "has no metric DeliveryFailedCount"),
    "a query reading a field the link record lacks": (
        "infra/queries/link-broken.kql", 'code = extract(@"\\bcode=', 'code = extract(@"\\berror=',
        "reads error= from link broken lines"),
    "a filter on a key the delivery line lacks": (
        "infra/queries/poisoned.kql", '"delivery outcome=poisoned"', '"delivery result=poisoned"',
        "'delivery' lines carry no result="),
    "a status the relay never logs": (
        "infra/queries/poisoned.kql", '"delivery outcome=poisoned"', '"delivery outcome=poisened"',
        "outcome=poisened is not a value the relay logs"),
    "a column requests does not have": (
        "infra/queries/function-failures.kql", "| where success == false", "| where succeeded == false",
        "`succeeded` is not a column of requests"),
    "a docs query on AzureDiagnostics": (
        "docs/operations.md", "AZKVAuditLogs\n|", "AzureDiagnostics\n|", "reads table AzureDiagnostics"),
    "a workbook without the latency percentiles": (
        "infra/workbooks/relay.workbook.json", "p95 = percentile(latency, 95)", "p95 = max(latency)",
        "no panel for delivery latency p50/p95"),
    "a broken-link alert not split by link": (
        "infra/modules/monitoring.bicep", "              name: 'link'\n", "              name: 'cause'\n",
        "must split by the link dimension"),
    "a no-sync alert armed at deployment": (
        "infra/modules/monitoring.bicep", ", '__DEPLOYED__', deployedAt)", ", '__DEPLOYED__', '2026-01-01')",
        "must stay quiet after a deployment until the first successful sync"),
    "an alert without recipients": (
        "infra/modules/monitoring.bicep", "      actionGroups: actionGroups\n", "      actionGroups: []\n",
        "notifies no action group"),
    "an az call on the CLI's default subscription": (
        "infra/hooks/postdeploy.sh", 'az functionapp keys list --subscription "$sub" ', "az functionapp keys list ",
        "does not name the subscription"),
    "no azd version required": (
        "azure.yaml", "requiredVersions:\n  azd: '>= 1.13.0'\n", "", "no requiredVersions.azd"),
    "a dependency range in what is deployed": (
        "requirements.txt", "\nidna==", "\nidna>=", "is a range"),
    "an operator role wider than the commands need": (
        "infra/modules/rbac-operator.bicep", "  scope: ledgerContainer\n", "  scope: account\n",
        "operatorLedger must grant"),
    "no optional locks": (
        "infra/main.bicep", "module locks 'modules/locks.bicep' = if (lockResources)",
        "module locks 'modules/locks.bicep' = if (false)", "no optional CanNotDelete locks"),
    "an inline alert query": (
        "infra/modules/monitoring.bicep", "query: loadTextContent('../queries/poisoned.kql')",
        "query: 'traces | where message contains \"poisoned\"'", "an inline alert query"),
    "host.json sampling traces": (
        "host.json", '"excludedTypes": "Exception;Request;Trace"', '"excludedTypes": "Exception;Request"',
        'add "Trace" to excludedTypes'),
}


@pytest.mark.parametrize(("rel", "old", "new", "message"), BROKEN.values(), ids=[f"{k} is a problem" for k in BROKEN])
def test_each_broken_copy_is_a_problem(repo, rel, old, new, message):
    edit(repo, rel, old, new)
    assert any(message in p for p in checks.run(repo))


def test_an_extra_role_assignment_on_the_export_account_is_a_problem(repo):
    path = repo / "infra/modules/rbac-exports.bicep"
    path.write_text(path.read_text() + "\nresource extra 'Microsoft.Authorization/roleAssignments@2022-04-01' = {\n"
                    "  name: 'x'\n  scope: account\n  properties: {}\n}\n")
    assert any("role assignment extra is not one the settings need" in p for p in checks.run(repo))


def test_list_keys_in_a_template_is_a_problem(repo):
    path = repo / "infra/modules/eventgrid.bicep"
    path.write_text(path.read_text() + "\nvar k = listKeys('x', '2023-12-01')\n")
    assert any("eventgrid.bicep: reads keys with listKeys" in p for p in checks.run(repo))


def test_host_json_with_sampling_off_is_fine(repo):
    config = json.loads((repo / "host.json").read_text())
    config["logging"]["applicationInsights"]["samplingSettings"] = {"isEnabled": False}
    (repo / "host.json").write_text(json.dumps(config))
    assert checks.run(repo) == []


def test_a_missing_hook_is_named(repo):
    (repo / "infra/hooks/preprovision.ps1").unlink()
    assert checks.run(repo) == ["infra/hooks/preprovision.ps1: missing"]


def test_a_query_that_selects_no_relay_record_is_a_problem():
    problems = checks.check_query("q", 'traces | where message contains "poisoned" | project timestamp')
    assert any("none of the relay's records" in p for p in problems)
    assert any("without selecting one of the relay's records" in p for p in problems)


def test_a_list_of_links_other_than_the_relay_s_is_a_problem():
    query = ('let links = datatable(link: string) ["keyvault", "gateway"];\n'
             'traces | where message startswith "link broken" | extend link = extract(@"\\blink=(\\S+)", 1, message)')
    assert any("the list of links must be exactly" in p for p in checks.check_query("q", query))


def test_every_query_is_found(repo):
    wheres = [where for where, _ in checks.all_queries(repo)]
    assert {f"infra/queries/{p.name}" for p in (repo / "infra/queries").glob("*.kql")} <= set(wheres)
    assert sum("workbook" in w for w in wheres) >= 10 and sum(w.startswith("docs/") for w in wheres) >= 4


STARTING_COMMIT = "aefbf21"
# What the templates lacked before issue #28, one message each (scripts/infra_checks.py finds all of them).
GAPS = {
    "workbook": "no workbook",
    "diagnostic destination": "sends resource logs to AzureDiagnostics",
    "early Event Grid failures": "no metric alert for 'Event Grid failed to deliver (early)'",
    "function failures": "no alert for 'a function invocation failed'",
    "poison queue": "no alert for 'the blob trigger wrote to its poison queue'",
    "broken link": "no alert for 'a link broke",
    "key expiry": "no alert for 'the signing key nears its expiry or rotation date'",
    "quiet no-sync": "no alert for 'no successful sync (quiet until the first one after a deployment)'",
    "webhook recipients": "no @secure() alertWebhookUrl parameter",
    "existing action groups": "no alertActionGroupIds parameter",
    "alerts with no one to tell": "must warn (and refuse in prod) when alerts tell no one",
    "hooks on the CLI's default subscription": "does not name the subscription",
    "azd version": "no requiredVersions.azd",
    "locks": "no optional CanNotDelete locks",
    "budget": "no optional budget alert",
    "daily cap": "no optional Log Analytics daily cap",
    "operator roles": "no optional operator principal",
    "pinned package": "requirements.txt: what is deployed must be pinned exactly",
    "queries whose fields are not checked": "an inline alert query",
    "docs querying AzureDiagnostics": "reads table AzureDiagnostics",
}


def _checkout(commit: str, into: Path) -> bool:
    paths = ["infra", "host.json", "docs", "azure.yaml", "requirements.txt"]
    done = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, *paths], capture_output=True,
                          timeout=60)
    if done.returncode != 0:
        return False
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(into, filter="data")
    return True


@pytest.mark.parametrize("gap", GAPS)
def test_each_gap_of_issue_28_is_found_in_the_starting_templates(tmp_path_factory, gap):
    root = tmp_path_factory.getbasetemp() / "aefbf21"
    if not root.exists() and not _checkout(STARTING_COMMIT, root):
        pytest.skip(f"commit {STARTING_COMMIT} is not in this clone's history")
    problems = checks.run(root)
    assert any(GAPS[gap] in p for p in problems), "\n".join(problems)
