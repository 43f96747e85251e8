"""docs/deploy.md, walked in order, agrees with the templates and the hooks: the subscription is set before anything
else, every variable it sets is one the templates or the hooks read, every value it reads is one azd writes, the
VNet key import opens and closes exactly what the template closed, and the operator's roles are the template's."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "deploy.md").read_text()
MAIN = (ROOT / "infra" / "main.bicep").read_text()
PARAMETERS = (ROOT / "infra" / "main.parameters.json").read_text()
HOOKS = "".join((ROOT / "infra" / "hooks" / name).read_text() for name in ("preprovision.sh", "postdeploy.sh"))
# Variables azd itself reads or writes (the environment's name, subscription and region; the signed-in principal).
AZD_OWN = {"AZURE_ENV_NAME", "AZURE_SUBSCRIPTION_ID", "AZURE_LOCATION", "AZURE_PRINCIPAL_ID"}


def commands() -> list[str]:
    """Every command of the guide's sh blocks, in order, with continuation lines joined and comments cut."""
    found = []
    for block in re.findall(r"^ *```sh\n(.*?)^ *```", GUIDE, re.S | re.M):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(re.split(r"\s+#\s", line)[0].strip())
    return found


def first(prefix: str, after: int = -1) -> int:
    return next(i for i, c in enumerate(commands()) if i > after and c.startswith(prefix))


def test_the_subscription_is_set_before_any_other_az_command_and_before_azd_provisions():
    cmds = commands()
    set_sub = first("az account set --subscription")
    later = [i for i, c in enumerate(cmds) if c.startswith("az ") and not c.startswith(("az login", "az account set"))]
    assert later and all(i > set_sub for i in later)
    assert first("azd env set AZURE_SUBSCRIPTION_ID") < first("azd up")


def test_every_variable_the_guide_sets_is_read_by_the_templates_or_the_hooks():
    mapped = set(re.findall(r"\$\{(\w+)", PARAMETERS))
    for cmd in commands():
        if cmd.startswith("azd env set "):
            name = cmd.split()[3]
            assert name in mapped | AZD_OWN or name in HOOKS, f"{cmd}: nothing reads {name}"


def test_every_variable_the_templates_read_is_documented():
    for name in set(re.findall(r"\$\{(\w+)", PARAMETERS)) - AZD_OWN - {"AZURE_RESOURCE_GROUP", "AZURE_PRINCIPAL_TYPE"}:
        assert f"`{name}`" in GUIDE or f"azd env set {name} " in GUIDE, f"docs/deploy.md does not document {name}"


def test_every_value_the_guide_reads_from_azd_is_an_output_of_main_bicep():
    outputs = set(re.findall(r"^output (\w+) ", MAIN, re.M))
    for name in re.findall(r"azd env get-value (\w+)", GUIDE):
        assert name in outputs | AZD_OWN, f"docs/deploy.md reads {name}, which main.bicep does not output"


def test_the_vnet_key_import_opens_the_vault_for_one_address_and_closes_it_again():
    keyvault = (ROOT / "infra" / "modules" / "keyvault.bicep").read_text()
    assert "publicNetworkAccess: vnetEnabled ? 'Disabled' : 'Enabled'" in keyvault
    cmds = commands()
    opened = first("az keyvault update --name \"$KV\" --public-network-access Enabled")
    rule = first("az keyvault network-rule add", opened)
    removed = first("az keyvault network-rule remove", rule)
    closed = first("az keyvault update --name \"$KV\" --public-network-access Disabled", removed)
    assert "--default-action Deny" in cmds[opened]  # public access on, but for the rule's address only
    assert cmds[rule].split("--ip-address")[1] == cmds[removed].split("--ip-address")[1]
    assert opened < rule < removed < closed


def test_the_guide_s_key_imports_come_after_the_vault_name_and_the_import_role():
    cmds = commands()
    kv = first('KV=$(azd env get-value AZURE_KEY_VAULT_NAME)') if any(c.startswith("KV=") for c in cmds) else None
    grant = first("azd env set GRANT_KEY_IMPORT_ROLE true")
    imports = [i for i, c in enumerate(cmds) if re.match(r"az keyvault (secret set|certificate import|key import)", c)]
    assert imports and all(i > grant for i in imports)
    assert "KV=$(azd env get-value AZURE_KEY_VAULT_NAME)" in GUIDE and (kv is None or all(i > kv for i in imports))


ROLE_NAMES = {
    "keyVaultReaderRole": "Key Vault Secrets User / Certificate User / Crypto User",
    "roles.storageBlobDataContributor": "Storage Blob Data Contributor",
    "roles.storageBlobDelegator": "Storage Blob Delegator",
}


def test_the_operator_roles_table_is_the_template_s():
    operator = (ROOT / "infra" / "modules" / "rbac-operator.bicep").read_text()
    table = GUIDE[GUIDE.index("### Who may run `doctor`, `status` and `send`"):GUIDE.index("## Private networking")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| role")]
    granted = re.findall(r"roleDefinitions', ([\w.]+)\)", operator)
    assert len(rows) == len(granted)
    for role, row in zip(granted, rows, strict=True):
        assert row.startswith(f"| {ROLE_NAMES[role]}"), (role, row)
    assert "OPERATOR_PRINCIPAL_ID" in PARAMETERS and "OPERATOR_PRINCIPAL_ID" in GUIDE


def test_azd_down_purge_is_explained_as_the_template_makes_it():
    keyvault = (ROOT / "infra" / "modules" / "keyvault.bicep").read_text()
    assert "enablePurgeProtection: true" in keyvault
    section = GUIDE[GUIDE.index("## `azd down` and `azd up` again"):GUIDE.index("## CI deployment")]
    assert "`azd down --purge`" in section and "purge protection" in section
    assert "LOCK_RESOURCES" in section and "az lock delete" in section


def test_the_guide_names_the_azd_version_azure_yaml_requires():
    required = re.search(r"azd: '>= ([\d.]+)'", (ROOT / "azure.yaml").read_text()).group(1)
    assert f"(`azd`) {required} or later" in GUIDE


def test_the_parameters_file_is_json_and_maps_the_new_deployment_options():
    given = json.loads(PARAMETERS)["parameters"]
    for param in ("alertWebhookUrl", "alertActionGroupIds", "operatorPrincipalId", "lockResources", "budgetAmount",
                  "logDailyCapGb", "keyExpiryWarningDays"):
        assert param in given
