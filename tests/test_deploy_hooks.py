"""infra/hooks/*.sh, the azd hooks, run with `sh` against a fake `az` and `azd` (the Azure CLI and azd talk to
Azure and have no local stand-in; the fakes answer the few calls the hooks make and record them)."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ROOT / "infra" / "hooks"
KEY = "s3cr3t-blobs-extension-key=="

FAKE_AZ = textwrap.dedent("""\
    import json, sys
    from pathlib import Path
    here = Path(__file__).parent
    state_file = here / "state.json"
    state = json.loads(state_file.read_text())
    args = sys.argv[1:]
    with open(here / "calls.jsonl", "a") as log:
        log.write(json.dumps(args) + "\\n")

    def save():
        state_file.write_text(json.dumps(state))

    def arg(name):
        return args[args.index(name) + 1]

    # Which subscription the call acts on: --subscription, the one in an az rest URL, else the CLI's default
    # (`az account set`), which here is another subscription than the one azd deploys to.
    named = arg("--subscription") if "--subscription" in args else None
    if args[:1] == ["rest"] and "/subscriptions/" in arg("--url"):
        named = arg("--url").split("/subscriptions/")[1].split("/")[0]
    if (named or state["default_subscription"]) != state["subscription_id"]:
        sys.exit(f"ERROR: (ResourceNotFound) not found in subscription {named or state['default_subscription']}")

    if args[:2] == ["account", "show"]:
        if state.get("user_type") is None:
            sys.exit("ERROR: Please run 'az login' to setup account.")
        print(state["user_type"])
    elif args[:2] == ["keyvault", "list-deleted"]:
        env = arg("--query").split("=='")[1].split("'")[0]
        print("\\n".join(v for v, e in state.get("deleted_vaults", []) if e == env))
    elif args[:2] in (["group", "create"], ["keyvault", "recover"]):
        pass
    elif args[:3] == ["functionapp", "keys", "list"]:
        answer = state["keys"].pop(0) if state["keys"] else ""
        save()
        if answer == "503":
            sys.exit("ERROR: Operation returned an invalid status 'Service Unavailable'")
        print(answer)
    elif args[:1] == ["rest"] and arg("--method") == "get":
        sub = state.get("subscription")
        if sub is None:
            sys.exit("ERROR: Not Found({\\"error\\":{\\"code\\":\\"ResourceNotFound\\"}})")
        print("\\t".join([sub["base"], sub["prefix"], sub["state"]]))
    elif args[:1] == ["rest"] and arg("--method") == "post" and "/getFullUrl?" in arg("--url"):
        print(state["put"]["properties"]["destination"]["properties"]["endpointUrl"])
    elif args[:1] == ["rest"] and arg("--method") == "put":
        body = json.loads(Path(arg("--body")[1:]).read_text())
        state["put"] = body
        props = body["properties"]
        state["subscription"] = {"base": props["destination"]["properties"]["endpointUrl"].split("?")[0],
                                 "prefix": props["filter"]["subjectBeginsWith"], "state": state.get("put_state",
                                 "Succeeded")}
        save()
    else:
        sys.exit(f"fake az: unexpected call {args}")
    """)

ENV = {
    "AZURE_ENV_NAME": "relay-test",
    "AZURE_LOCATION": "norwayeast",
    "AZURE_RESOURCE_GROUP": "rg-relay",
    "AZURE_FUNCTION_APP_NAME": "func-relay-abc",
    "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
    "EVENT_GRID_SYSTEM_TOPIC_NAME": "evgt-abc",
    "EVENT_GRID_SUBJECT_PREFIX": "/blobServices/default/containers/exports/",
    "EVENT_GRID_DEAD_LETTER_ACCOUNT_ID": "/subscriptions/x/resourceGroups/rg-relay/providers/Microsoft.Storage/"
                                         "storageAccounts/stabc",
    "EVENT_GRID_DEAD_LETTER_CONTAINER": "eventgrid-deadletter",
    "RELAY_KEY_POLL_SECONDS": "0",
    "RELAY_KEY_POLL_ATTEMPTS": "4",
}


class Fakes:
    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        (self.bin / "fake_az.py").write_text(FAKE_AZ)
        self._script("az", f'exec "{sys.executable}" "{self.bin / "fake_az.py"}" "$@"')
        self._script("azd", f'echo "$*" >> "{self.bin / "azd.log"}"')
        self._script("curl", "exit 0")  # the hook's wake-up request must not leave this machine
        self.state = {"user_type": "user", "keys": [KEY], "subscription": None,
                      "subscription_id": ENV["AZURE_SUBSCRIPTION_ID"],
                      "default_subscription": "99999999-0000-0000-0000-000000000009"}

    def _script(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)

    def run(self, hook: str, **env: str) -> subprocess.CompletedProcess:
        (self.bin / "state.json").write_text(json.dumps(self.state))
        full = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(self.bin)} | ENV | env
        done = subprocess.run(["sh", str(HOOKS / hook)], env=full, capture_output=True, text=True, timeout=60)
        self.state = json.loads((self.bin / "state.json").read_text())
        return done

    def calls(self) -> list[list[str]]:
        path = self.bin / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def azd(self) -> list[str]:
        path = self.bin / "azd.log"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def fakes(tmp_path):
    return Fakes(tmp_path)


# --- preprovision ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("user_type", "expected"), [("user", "User"), ("servicePrincipal", "ServicePrincipal")])
def test_preprovision_sets_the_principal_type_of_whoever_runs_azd(fakes, user_type, expected):
    fakes.state["user_type"] = user_type
    done = fakes.run("preprovision.sh")
    assert done.returncode == 0, done.stderr
    assert fakes.azd() == [f"env set AZURE_PRINCIPAL_TYPE {expected}"]


def test_preprovision_accepts_norway_east_with_zone_redundant_storage(fakes):
    done = fakes.run("preprovision.sh", AZURE_LOCATION="norwayeast")
    assert done.returncode == 0, done.stderr
    assert "storage Standard_ZRS (by region)" in done.stdout


def test_preprovision_picks_lrs_where_the_region_has_no_zones(fakes):
    done = fakes.run("preprovision.sh", AZURE_LOCATION="westus")
    assert done.returncode == 0, done.stderr
    assert "storage Standard_LRS (by region)" in done.stdout


def test_preprovision_refuses_a_region_without_flex_consumption_before_anything_else(fakes):
    done = fakes.run("preprovision.sh", AZURE_LOCATION="norwaywest")
    assert done.returncode == 1
    assert "region 'norwaywest' does not offer the Flex Consumption plan" in done.stderr
    assert "azd env set AZURE_LOCATION" in done.stderr and "nothing was created" in done.stderr
    assert fakes.calls() == [] and fakes.azd() == []


@pytest.mark.parametrize("sku", ["Standard_ZRS", "Standard_GZRS"])
def test_preprovision_refuses_zone_redundant_storage_in_a_region_without_zones(fakes, sku):
    done = fakes.run("preprovision.sh", AZURE_LOCATION="westus", STORAGE_SKU=sku)
    assert done.returncode == 1
    assert f"STORAGE_SKU={sku} needs availability zones, and westus has none" in done.stderr
    assert fakes.azd() == []


def test_preprovision_refuses_an_unknown_storage_sku(fakes):
    done = fakes.run("preprovision.sh", STORAGE_SKU="Premium_LRS")
    assert done.returncode == 1 and "STORAGE_SKU=Premium_LRS is not a storage SKU" in done.stderr


def test_preprovision_refuses_server_copy_in_vnet_mode(fakes):
    done = fakes.run("preprovision.sh", VNET_ENABLED="true", COPY_MODE="server")
    assert done.returncode == 1 and "azd env set COPY_MODE auto" in done.stderr


def test_preprovision_says_how_to_sign_in_when_the_cli_is_not(fakes):
    fakes.state["user_type"] = None
    done = fakes.run("preprovision.sh")
    assert done.returncode == 1 and "the Azure CLI is not signed in, or cannot see subscription" in done.stderr
    assert "Fix: az login" in done.stderr
    assert "Traceback" not in done.stderr


def test_preprovision_recovers_the_key_vault_an_earlier_azd_down_soft_deleted(fakes):
    fakes.state["deleted_vaults"] = [["kv-abc", "relay-test"], ["kv-other", "someone-else"]]
    done = fakes.run("preprovision.sh", AZURE_RESOURCE_GROUP="")
    assert done.returncode == 0, done.stderr
    changes = [c for c in fakes.calls() if c[:2] in (["group", "create"], ["keyvault", "recover"])]
    assert [(c[:2], c[c.index("--name") + 1]) for c in changes] == [(["group", "create"], "rg-relay-test"),
                                                                     (["keyvault", "recover"], "kv-abc")]
    assert "recovered Key Vault kv-abc" in done.stdout


def test_preprovision_recovers_nothing_when_no_vault_is_soft_deleted(fakes):
    assert fakes.run("preprovision.sh").returncode == 0
    assert [c for c in fakes.calls() if c[0] == "group" or c[:2] == ["keyvault", "recover"]] == []


# --- postdeploy -----------------------------------------------------------------------------------------


def test_postdeploy_polls_until_the_key_exists_then_creates_the_subscription(fakes):
    fakes.state["keys"] = ["503", "", KEY]
    done = fakes.run("postdeploy.sh")
    assert done.returncode == 0, done.stderr
    key_calls = [c for c in fakes.calls() if c[:3] == ["functionapp", "keys", "list"]]
    assert len(key_calls) == 3
    props = fakes.state["put"]["properties"]
    assert props["destination"]["properties"]["endpointUrl"] == (
        "https://func-relay-abc.azurewebsites.net/runtime/webhooks/blobs?functionName=Host.Functions.on_export"
        f"&code={KEY}")
    assert props["filter"] == {"includedEventTypes": ["Microsoft.Storage.BlobCreated"],
                               "subjectBeginsWith": "/blobServices/default/containers/exports/"}
    assert props["deadLetterWithResourceIdentity"]["deadLetterDestination"]["properties"] == {
        "resourceId": ENV["EVENT_GRID_DEAD_LETTER_ACCOUNT_ID"], "blobContainerName": "eventgrid-deadletter"}
    assert "delivers BlobCreated" in done.stdout


def test_postdeploy_never_puts_the_key_on_a_command_line_or_in_its_output(fakes):
    done = fakes.run("postdeploy.sh")
    assert done.returncode == 0, done.stderr
    assert KEY not in done.stdout + done.stderr
    assert all(KEY not in arg for call in fakes.calls() for arg in call)


def test_postdeploy_a_second_time_changes_nothing(fakes):
    assert fakes.run("postdeploy.sh").returncode == 0
    first = len(fakes.calls())
    fakes.state["keys"] = [KEY]
    done = fakes.run("postdeploy.sh")
    assert done.returncode == 0 and "unchanged" in done.stdout
    again = fakes.calls()[first:]
    assert [c[:3] for c in again] == [["functionapp", "keys", "list"], ["rest", "--method", "get"],
                                      ["rest", "--method", "post"]]  # no write


def test_postdeploy_updates_a_subscription_whose_key_is_stale(fakes):
    assert fakes.run("postdeploy.sh").returncode == 0
    fakes.state["keys"] = ["renewed-key"]
    done = fakes.run("postdeploy.sh")
    assert done.returncode == 0, done.stderr
    assert fakes.state["put"]["properties"]["destination"]["properties"]["endpointUrl"].endswith("&code=renewed-key")
    assert "renewed-key" not in done.stdout + done.stderr


def test_postdeploy_updates_a_subscription_that_points_elsewhere(fakes):
    fakes.state["subscription"] = {"base": "https://func-old.azurewebsites.net/runtime/webhooks/blobs",
                                   "prefix": ENV["EVENT_GRID_SUBJECT_PREFIX"], "state": "Succeeded"}
    done = fakes.run("postdeploy.sh")
    assert done.returncode == 0, done.stderr
    assert "put" in fakes.state


def test_postdeploy_gives_up_with_the_reason_when_the_key_never_appears(fakes):
    fakes.state["keys"] = ["503", "", "", ""]
    done = fakes.run("postdeploy.sh")
    assert done.returncode == 1
    assert "has no blobs_extension key after 4 tries" in done.stderr
    assert "azd hooks run postdeploy" in done.stderr
    assert "put" not in fakes.state


def test_postdeploy_reports_a_webhook_event_grid_could_not_validate(fakes):
    fakes.state["put_state"] = "Failed"
    done = fakes.run("postdeploy.sh")
    assert done.returncode == 1 and "Event Grid could not validate the webhook" in done.stderr


def test_postdeploy_needs_the_provisioned_outputs(fakes):
    env = dict.fromkeys(["EVENT_GRID_SYSTEM_TOPIC_NAME"], "")
    done = fakes.run("postdeploy.sh", **env)
    assert done.returncode == 1
    assert "EVENT_GRID_SYSTEM_TOPIC_NAME is not in the azd environment. Fix: run azd provision" in done.stderr
    assert fakes.calls() == []


def test_hooks_keep_nothing_in_the_azd_environment_that_decides_the_subscription(fakes):
    fakes.run("preprovision.sh")
    fakes.run("postdeploy.sh")
    assert [line.split()[2] for line in fakes.azd()] == ["AZURE_PRINCIPAL_TYPE"]
    assert "DEPLOY_EVENT_SUBSCRIPTION" not in (HOOKS / "postdeploy.sh").read_text()


@pytest.mark.skipif(os.name == "nt", reason="POSIX hooks")
def test_hooks_are_executable():
    assert all(os.access(HOOKS / name, os.X_OK) for name in ("preprovision.sh", "postdeploy.sh"))


# --- the subscription, the alerts' recipients, the budget ------------------------------------------------


def named_subscriptions(calls):
    for call in calls:
        if "--subscription" in call:
            yield call[call.index("--subscription") + 1]
        else:
            url = call[call.index("--url") + 1]
            yield url.split("/subscriptions/")[1].split("/")[0]


def test_every_az_call_names_the_subscription_azd_deploys_to_not_the_cli_default(fakes):
    # The fake az answers only for AZURE_SUBSCRIPTION_ID; its default subscription is another one.
    fakes.state["deleted_vaults"] = [["kv-abc", "relay-test"]]
    assert fakes.run("preprovision.sh").returncode == 0
    done = fakes.run("postdeploy.sh")
    assert done.returncode == 0, done.stderr
    calls = fakes.calls()
    assert {c[0] for c in calls} >= {"account", "keyvault", "group", "functionapp", "rest"}
    assert set(named_subscriptions(calls)) == {ENV["AZURE_SUBSCRIPTION_ID"]}


@pytest.mark.parametrize("hook", ["preprovision.sh", "postdeploy.sh"])
def test_hooks_refuse_to_run_without_the_subscription(fakes, hook):
    done = fakes.run(hook, AZURE_SUBSCRIPTION_ID="")
    assert done.returncode == 1 and "AZURE_SUBSCRIPTION_ID" in done.stderr
    assert fakes.calls() == []


def test_preprovision_warns_when_alerts_would_tell_no_one(fakes):
    done = fakes.run("preprovision.sh", BANENOR_ENVIRONMENT="test")
    assert done.returncode == 0, done.stderr
    assert "WARNING: ALERT_EMAIL, ALERT_WEBHOOK_URL and ALERT_ACTION_GROUP_IDS are empty" in done.stderr


def test_preprovision_refuses_alerts_with_no_one_to_tell_in_prod(fakes):
    done = fakes.run("preprovision.sh", BANENOR_ENVIRONMENT="prod")
    assert done.returncode == 1 and "azd env set ALERT_EMAIL" in done.stderr
    assert fakes.calls() == [] and fakes.azd() == []


@pytest.mark.parametrize("target", [{"ALERT_EMAIL": "ops@example.com"},
                                    {"ALERT_WEBHOOK_URL": "https://hooks.example.com/x?token=s3cr3t-webhook"},
                                    {"ALERT_ACTION_GROUP_IDS": "/subscriptions/x/resourceGroups/ops/providers/"
                                                               "microsoft.insights/actionGroups/on-call"}])
def test_preprovision_accepts_any_recipient_in_prod_and_never_prints_the_webhook(fakes, target):
    done = fakes.run("preprovision.sh", BANENOR_ENVIRONMENT="prod", **target)
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr and "s3cr3t-webhook" not in done.stdout + done.stderr


def test_preprovision_fixes_the_budget_start_once(fakes):
    assert fakes.run("preprovision.sh", BUDGET_AMOUNT="50").returncode == 0
    [line] = [c for c in fakes.azd() if "BUDGET_START_DATE" in c]
    assert re.fullmatch(r"env set BUDGET_START_DATE \d{4}-\d{2}-01", line)
    assert fakes.run("preprovision.sh", BUDGET_AMOUNT="50", BUDGET_START_DATE="2026-01-01").returncode == 0
    assert len([c for c in fakes.azd() if "BUDGET_START_DATE" in c]) == 1
