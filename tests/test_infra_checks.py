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


def test_a_hook_region_list_that_differs_from_main_bicep_is_a_problem(repo):
    edit(repo, "infra/hooks/preprovision.sh", " norwayeast ", " ")
    assert any("preprovision.sh: its Flex region list differs" in p for p in checks.run(repo))


def test_a_location_without_an_allowed_list_is_a_problem(repo):
    edit(repo, "infra/main.bicep", "@allowed([\n  'australiaeast'", "@metadata([\n  'australiaeast'")
    assert any("has no @allowed list" in p for p in checks.run(repo))


def test_blob_data_owner_on_the_export_account_is_a_problem(repo):
    edit(repo, "infra/modules/rbac-exports.bicep", "storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'",
         "storageBlobDataContributor: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'")
    assert any("Storage Blob Data Owner on the export account" in p for p in checks.run(repo))


def test_delete_on_exports_without_archive_or_delete_is_a_problem(repo):
    edit(repo, "infra/modules/rbac-exports.bicep", "= if (removesExports) {\n  name: guid(exportContainer.id",
         "= {\n  name: guid(exportContainer.id")
    assert any("exportsReadDelete must be conditional on `removesExports`" in p for p in checks.run(repo))


def test_write_on_the_export_container_is_a_problem(repo):
    edit(repo, "infra/modules/rbac-exports.bicep",
         "roleDefinitions', roles.storageBlobDataReader)\n    principalId",
         "roleDefinitions', roles.storageBlobDataContributor)\n    principalId")
    assert any("exportsRead must grant storageBlobDataReader" in p for p in checks.run(repo))


def test_a_role_at_account_scope_other_than_the_delegator_is_a_problem(repo):
    edit(repo, "infra/modules/rbac-exports.bicep", "  scope: ledgerContainer\n  properties",
         "  scope: account\n  properties")
    assert any("ledgerWrite must be scoped to ledgerContainer" in p for p in checks.run(repo))


def test_an_extra_role_assignment_on_the_export_account_is_a_problem(repo):
    path = repo / "infra/modules/rbac-exports.bicep"
    path.write_text(path.read_text() + "\nresource extra 'Microsoft.Authorization/roleAssignments@2022-04-01' = {\n"
                    "  name: 'x'\n  scope: account\n  properties: {}\n}\n")
    assert any("role assignment extra is not one the settings need" in p for p in checks.run(repo))


def test_a_custom_role_that_can_write_is_a_problem(repo):
    edit(repo, "infra/modules/rbac-exports.bicep", "blobs/delete'\n", "blobs/delete'\n          "
         "'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write'\n")
    assert any("the custom role may only read and delete blobs" in p for p in checks.run(repo))


def test_a_delegator_without_a_signed_sas_is_a_problem(repo):
    edit(repo, "infra/modules/rbac-exports.bicep", "var signsSas = copyMode != 'stream' || afterDelivery == 'archive'",
         "var signsSas = true")
    assert any("var signsSas must be" in p for p in checks.run(repo))


def test_a_postdeploy_hook_that_does_not_poll_for_the_key_is_a_problem(repo):
    edit(repo, "infra/hooks/postdeploy.sh", 'while [ "$i" -lt "$attempts" ]; do\n  i=$((i + 1))\n  key=',
         'for once in 1; do\n  key=')
    assert any("postdeploy.sh: must poll" in p for p in checks.run(repo))


def test_list_keys_in_a_template_is_a_problem(repo):
    path = repo / "infra/modules/eventgrid.bicep"
    path.write_text(path.read_text() + "\nvar k = listKeys('x', '2023-12-01')\n")
    assert any("eventgrid.bicep: reads keys with listKeys" in p for p in checks.run(repo))


def test_host_json_sampling_traces_is_a_problem(repo):
    edit(repo, "host.json", '"excludedTypes": "Exception;Request;Trace"', '"excludedTypes": "Exception;Request"')
    assert any('add "Trace" to excludedTypes' in p for p in checks.run(repo))


def test_host_json_with_sampling_off_is_fine(repo):
    config = json.loads((repo / "host.json").read_text())
    config["logging"]["applicationInsights"]["samplingSettings"] = {"isEnabled": False}
    (repo / "host.json").write_text(json.dumps(config))
    assert checks.run(repo) == []


def test_a_missing_hook_is_named(repo):
    (repo / "infra/hooks/preprovision.ps1").unlink()
    assert checks.run(repo) == ["infra/hooks/preprovision.ps1: missing"]
