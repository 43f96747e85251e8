"""scripts/infra_checks.py (step 3 of `make lint-infra`): passes on the repository and finds each kind of problem
it exists for in a changed copy."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("infra_checks", ROOT / "scripts" / "infra_checks.py")
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)


@pytest.fixture
def repo(tmp_path):
    for rel in ("infra", "host.json"):
        source = ROOT / rel
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
