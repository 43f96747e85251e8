"""Offline checks of infra/ that a Bicep compiler would not make (run by scripts/lint-infra.sh; stdlib only).

- regions: main.bicep's allowed `location`s (Flex Consumption), its zone-redundant list and the preprovision
  hooks' lists agree, include Norway East, and zone regions are Flex regions;
- export roles: the relay's roles on the partner's export account (infra/modules/rbac-exports.bicep) are no
  wider than the settings need, and no other module gives the relay a role there;
- key polling: the Event Grid subscription is made by the postdeploy hooks, which poll for the
  blobs_extension key; no template reads host keys (listKeys) or declares the subscription;
- host.json: Application Insights does not sample traces (the alerts hang on single trace lines).
Each check returns a list of problems, each naming the file and the fix.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# The only role assignments rbac-exports.bicep may declare: (resource symbol, role, scope, condition).
# Conditions are compared with whitespace removed.
EXPORT_ROLES = {
    "exportsRead": ("roles.storageBlobDataReader", "exportContainer", "!removesExports"),
    "exportsReadDelete": ("custom:exportReaderDeleter", "exportContainer", "removesExports"),
    "ledgerWrite": ("roles.storageBlobDataContributor", "ledgerContainer", None),
    "archiveWrite": ("roles.storageBlobDataContributor", "archiveContainer", "afterDelivery=='archive'"),
    "poisonQueueWrite": ("roles.storageQueueDataContributor", "poisonQueue", None),
    "delegator": ("roles.storageBlobDelegator", "account", "signsSas"),
}
EXPORT_VARS = {
    # archive moves the original (copy, then delete); delete deletes it; nothing else removes exports.
    "removesExports": "afterDelivery=='archive'||afterDelivery=='delete'",
    # a user delegation SAS is signed for server-side copy and for the archive copy.
    "signsSas": "copyMode!='stream'||afterDelivery=='archive'",
}
CUSTOM_ROLE_DATA_ACTIONS = {
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
}
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _quoted_list(block: str) -> list[str]:
    return re.findall(r"'([a-z0-9]+)'", block)


def bicep_allowed_locations(main_bicep: str) -> list[str]:
    # The @allowed list right before `param location` (no other param in between).
    match = re.search(r"@allowed\(\[(?P<list>[^\]]*)\]\)(?:(?!\nparam ).)*\nparam location string", main_bicep, re.S)
    return _quoted_list(match.group("list")) if match else []


def bicep_zone_regions(main_bicep: str) -> list[str]:
    match = re.search(r"var zoneRedundantRegions = \[(?P<list>[^\]]*)\]", main_bicep)
    return _quoted_list(match.group("list")) if match else []


def sh_list(script: str, name: str) -> list[str]:
    match = re.search(rf'^{name}="([^"]*)"', script, re.M)
    return match.group(1).split() if match else []


def ps1_list(script: str, name: str) -> list[str]:
    match = re.search(rf"^\${name} = @\(([^)]*)\)", script, re.M)
    return re.findall(r"'([a-z0-9]+)'", match.group(1)) if match else []


def check_regions(main_bicep: str, pre_sh: str, pre_ps1: str) -> list[str]:
    problems = []
    flex = bicep_allowed_locations(main_bicep)
    zones = bicep_zone_regions(main_bicep)
    if not flex:
        return ["infra/main.bicep: `param location` has no @allowed list of Flex Consumption regions; add one"]
    if "norwayeast" not in flex:
        problems.append("infra/main.bicep: norwayeast is missing from the allowed locations")
    if not zones:
        problems.append("infra/main.bicep: no `var zoneRedundantRegions` list; the storage SKU cannot follow the "
                        "region")
    if not set(zones) <= set(flex):
        extra = sorted(set(zones) - set(flex))
        problems.append(f"infra/main.bicep: zoneRedundantRegions lists non-Flex regions: {extra}")
    for path, got_flex, got_zones in (
        ("infra/hooks/preprovision.sh", sh_list(pre_sh, "FLEX_REGIONS"), sh_list(pre_sh, "ZONE_REGIONS")),
        ("infra/hooks/preprovision.ps1", ps1_list(pre_ps1, "FlexRegions"), ps1_list(pre_ps1, "ZoneRegions")),
    ):
        if sorted(got_flex) != sorted(flex):
            problems.append(f"{path}: its Flex region list differs from main.bicep's allowed locations "
                            f"(only in hook: {sorted(set(got_flex) - set(flex))}, only in main.bicep: "
                            f"{sorted(set(flex) - set(got_flex))}); make them the same")
        if sorted(got_zones) != sorted(zones):
            problems.append(f"{path}: its zone region list differs from main.bicep's zoneRedundantRegions; make them "
                            "the same")
    return problems


def _resources(bicep: str) -> dict[str, tuple[str, str | None, str]]:
    """symbol -> (type@version, condition or None, body) for each top-level resource."""
    found = {}
    pattern = re.compile(r"^resource (\w+) '([^']+)'(?: existing)? = (?:if \((.*?)\) )?\{", re.M)
    for match in pattern.finditer(bicep):
        depth, i = 0, match.end() - 1
        for i in range(match.end() - 1, len(bicep)):
            depth += {"{": 1, "}": -1}.get(bicep[i], 0)
            if depth == 0:
                break
        found[match.group(1)] = (match.group(2), match.group(3), bicep[match.end():i])
    return found


def check_export_roles(rbac_exports: str, main_bicep: str) -> list[str]:
    path = "infra/modules/rbac-exports.bicep"
    problems = []
    if STORAGE_BLOB_DATA_OWNER in rbac_exports:
        problems.append(f"{path}: Storage Blob Data Owner on the export account; use the narrow roles")
    for name, expected in EXPORT_VARS.items():
        match = re.search(rf"^var {name} = (.*)$", rbac_exports, re.M)
        if not match or _squash(match.group(1)) != expected:
            problems.append(f"{path}: var {name} must be `{expected}` (which settings need this access)")
    resources = _resources(rbac_exports)
    assignments = {k: v for k, v in resources.items() if v[0].startswith("Microsoft.Authorization/roleAssignments@")}
    for symbol, (_, condition, body) in assignments.items():
        if symbol not in EXPORT_ROLES:
            problems.append(f"{path}: role assignment {symbol} is not one the settings need; remove it or justify it "
                            "in scripts/infra_checks.py EXPORT_ROLES")
            continue
        role, scope, wanted = EXPORT_ROLES[symbol]
        got_scope = re.search(r"^\s*scope: (\w+)", body, re.M)
        if not got_scope or got_scope.group(1) != scope:
            problems.append(f"{path}: {symbol} must be scoped to {scope}, not {got_scope and got_scope.group(1)}")
        if role.startswith("custom:"):
            if "guid(resourceGroup().id, 'skyporten-relay-export-reader-deleter')" not in body:
                problems.append(f"{path}: {symbol} must use the custom export reader-deleter role")
        elif f"roleDefinitions', {role})" not in body:
            problems.append(f"{path}: {symbol} must grant {role.split('.')[1]}")
        if (_squash(condition) if condition else None) != wanted:
            problems.append(f"{path}: {symbol} must be conditional on `{wanted}`, not `{condition}`")
    for symbol in EXPORT_ROLES:
        if symbol not in assignments:
            problems.append(f"{path}: role assignment {symbol} is missing")
    custom = resources.get("exportReaderDeleter")
    if custom is None:
        problems.append(f"{path}: the custom export reader-deleter role definition is missing")
    else:
        data = re.search(r"dataActions: \[(.*?)\]", custom[2], re.S)
        actions = set(re.findall(r"'([^']+)'", data.group(1))) if data else set()
        if actions != CUSTOM_ROLE_DATA_ACTIONS:
            problems.append(f"{path}: the custom role may only read and delete blobs, has {sorted(actions)}")
        if _squash(custom[1] or "") != "removesExports":
            problems.append(f"{path}: the custom role is needed only when removesExports")
    rbac = re.search(r"module rbac 'modules/rbac\.bicep' = \{(.*?)\n\}", main_bicep, re.S)
    if rbac and "storage.outputs" in rbac.group(1):
        problems.append("infra/main.bicep: module rbac gets the export account; its roles belong in rbac-exports.bicep")
    return problems


def check_key_polling(post_sh: str, post_ps1: str, bicep_texts: dict[str, str], parameters: str) -> list[str]:
    problems = []
    loop_sh = re.search(r"while \[.*?\n(.*?)\ndone", post_sh, re.S)
    if not loop_sh or "functionapp keys list" not in loop_sh.group(1) or "blobs_extension" not in loop_sh.group(1) \
            or "sleep" not in loop_sh.group(1):
        problems.append("infra/hooks/postdeploy.sh: must poll (a while loop with sleep) `az functionapp keys list` for "
                        "the blobs_extension key before creating the subscription")
    loop_ps1 = re.search(r"for \(\$i = 1;.*?\{(.*?)\n\}", post_ps1, re.S)
    if not loop_ps1 or "functionapp keys list" not in loop_ps1.group(1) or "Start-Sleep" not in loop_ps1.group(1):
        problems.append("infra/hooks/postdeploy.ps1: must poll `az functionapp keys list` for the blobs_extension key")
    for path, text in bicep_texts.items():
        if "listKeys(" in text:
            problems.append(f"{path}: reads keys with listKeys during provisioning; the postdeploy hook does that")
        if "eventSubscriptions@" in text:
            problems.append(f"{path}: declares the Event Grid subscription; the postdeploy hook creates it")
    if "DEPLOY_EVENT_SUBSCRIPTION" in parameters or "DEPLOY_EVENT_SUBSCRIPTION" in post_sh:
        problems.append("infra: DEPLOY_EVENT_SUBSCRIPTION must not decide anything (it broke azd down + azd up)")
    return problems


def check_host_json(host_json: str) -> list[str]:
    try:
        sampling = json.loads(host_json)["logging"]["applicationInsights"]["samplingSettings"]
    except (ValueError, KeyError, TypeError):
        return []  # no sampling settings: the host's default samples everything but requests and exceptions
    if sampling.get("isEnabled") is False:
        return []
    excluded = {t.strip().lower() for t in str(sampling.get("excludedTypes", "")).split(";")}
    if "trace" not in excluded:
        return ['host.json: logging.applicationInsights.samplingSettings samples traces; add "Trace" to excludedTypes '
                "(the poisoned and no-sync alerts hang on single trace lines)"]
    return []


def run(root: Path) -> list[str]:
    infra = root / "infra"
    needed = ["infra/main.bicep", "infra/main.parameters.json", "infra/modules/rbac-exports.bicep", "host.json"] + [
        f"infra/hooks/{name}.{ext}" for name in ("preprovision", "postdeploy") for ext in ("sh", "ps1")]
    missing = [rel for rel in needed if not (root / rel).is_file()]
    if missing:
        return [f"{rel}: missing" for rel in missing]

    def read(rel: str) -> str:
        return (root / rel).read_text(encoding="utf-8")

    bicep = {str(p.relative_to(root)): p.read_text(encoding="utf-8") for p in sorted(infra.rglob("*.bicep"))}
    problems = check_regions(read("infra/main.bicep"), read("infra/hooks/preprovision.sh"),
                             read("infra/hooks/preprovision.ps1"))
    problems += check_export_roles(read("infra/modules/rbac-exports.bicep"), read("infra/main.bicep"))
    problems += check_key_polling(read("infra/hooks/postdeploy.sh"), read("infra/hooks/postdeploy.ps1"), bicep,
                                  read("infra/main.parameters.json"))
    problems += check_host_json(read("host.json"))
    return problems


if __name__ == "__main__":
    found = run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    for problem in found:
        print(f"   FAIL {problem}")
    print(f"   regions, export roles, key polling, host.json sampling: {len(found)} problems")
    sys.exit(1 if found else 0)
