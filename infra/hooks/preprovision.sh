#!/bin/sh
# azd preprovision hook: what must fail before anything is created, and who is running azd.
#   - the region must offer Flex Consumption (same list as main.bicep's `location`);
#   - STORAGE_SKU Standard_ZRS/GZRS needs a region with availability zones (empty picks one by region);
#   - VNET_ENABLED=true cannot go with COPY_MODE=server (Bane NOR's storage cannot pull from a private account);
#   - AZURE_PRINCIPAL_TYPE is set from the Azure CLI's sign-in: User for a person, ServicePrincipal for CI,
#     so role assignments to the principal running azd (GRANT_KEY_IMPORT_ROLE) carry the right type;
#   - a Key Vault of this azd environment soft-deleted by an earlier `azd down` (purge protection keeps it and
#     its name for 90 days) is recovered, with the signing key in it, so provisioning can use the name again;
#   - alerts with no one to tell (no ALERT_EMAIL, ALERT_WEBHOOK_URL or ALERT_ACTION_GROUP_IDS): a warning, and a
#     refusal for BANENOR_ENVIRONMENT=prod;
#   - BUDGET_AMOUNT set: BUDGET_START_DATE is fixed once to the first day of this month (a budget's start stays).
# Every az call names the subscription azd deploys to (AZURE_SUBSCRIPTION_ID), so the Azure CLI's own default
# subscription cannot send it elsewhere.
# Nothing here is remembered for later runs: every provision checks again.
set -eu

FLEX_REGIONS="australiaeast australiasoutheast brazilsouth canadacentral centralindia centralus eastasia eastus eastus2 francecentral germanywestcentral italynorth japaneast koreacentral northcentralus northeurope norwayeast southafricanorth southcentralus southeastasia southindia spaincentral swedencentral uaenorth uksouth ukwest westcentralus westeurope westus westus2 westus3"
ZONE_REGIONS="australiaeast brazilsouth canadacentral centralindia centralus eastasia eastus eastus2 francecentral germanywestcentral italynorth japaneast koreacentral northeurope norwayeast southafricanorth southcentralus southeastasia spaincentral swedencentral uaenorth uksouth westeurope westus2 westus3"

fail() {
  echo "preprovision: $*" >&2
  echo "preprovision: nothing was created." >&2
  exit 1
}
listed() { case " $1 " in *" $2 "*) return 0 ;; esac; return 1; }

location="${AZURE_LOCATION:-}"
[ -n "$location" ] || fail "AZURE_LOCATION is not set. Fix: azd env set AZURE_LOCATION norwayeast (or another region with Flex Consumption)."
listed "$FLEX_REGIONS" "$location" || fail "region '$location' does not offer the Flex Consumption plan the relay runs on. Fix: azd env set AZURE_LOCATION <region>, one of: $FLEX_REGIONS."

sku="${STORAGE_SKU:-}"
case "$sku" in
  "" | Standard_LRS | Standard_GRS) ;;
  Standard_ZRS | Standard_GZRS)
    listed "$ZONE_REGIONS" "$location" || fail "STORAGE_SKU=$sku needs availability zones, and $location has none. Fix: azd env set STORAGE_SKU '' (picks Standard_LRS there) or Standard_GRS, or choose a region with zones." ;;
  *) fail "STORAGE_SKU=$sku is not a storage SKU the relay supports. Fix: azd env set STORAGE_SKU '' (by region), Standard_LRS, Standard_ZRS, Standard_GRS or Standard_GZRS." ;;
esac

if [ "${VNET_ENABLED:-false}" = "true" ] && [ "${COPY_MODE:-auto}" = "server" ]; then
  fail "VNET_ENABLED=true with COPY_MODE=server: Bane NOR's storage cannot pull exports from an account without public access. Fix: azd env set COPY_MODE auto (falls back to streaming) or stream."
fi

if [ -z "${ALERT_EMAIL:-}${ALERT_WEBHOOK_URL:-}${ALERT_ACTION_GROUP_IDS:-}" ]; then
  if [ "${BANENOR_ENVIRONMENT:-}" = "prod" ]; then
    fail "no one would be told when the relay stops delivering: ALERT_EMAIL, ALERT_WEBHOOK_URL and ALERT_ACTION_GROUP_IDS are all empty. Fix: azd env set ALERT_EMAIL ops@example.com (or ALERT_WEBHOOK_URL, or ALERT_ACTION_GROUP_IDS with an existing action group's resource id)."
  fi
  echo "preprovision: WARNING: ALERT_EMAIL, ALERT_WEBHOOK_URL and ALERT_ACTION_GROUP_IDS are empty: the alerts will fire and tell no one. Fix: azd env set ALERT_EMAIL <address> (docs/deploy.md)." >&2
fi

sub="${AZURE_SUBSCRIPTION_ID:-}"
[ -n "$sub" ] || fail "AZURE_SUBSCRIPTION_ID is not in the azd environment. Fix: azd env set AZURE_SUBSCRIPTION_ID <subscription id> (the one azd deploys to)."

command -v az >/dev/null 2>&1 || fail "the Azure CLI (az) is not installed; the deploy hooks use it. Fix: install it (https://aka.ms/azure-cli), then az login as the same principal azd uses."
user_type="$(az account show --subscription "$sub" --query user.type --output tsv 2>/dev/null)" || fail "the Azure CLI is not signed in, or cannot see subscription $sub. Fix: az login (a person), or in CI sign it in as the same service principal as azd (docs/deploy.md, CI); then az account set --subscription $sub."
case "$user_type" in
  user) principal_type=User ;;
  servicePrincipal) principal_type=ServicePrincipal ;;
  *) fail "az account show reports user.type '$user_type', expected user or servicePrincipal. Fix: az login again." ;;
esac
azd env set AZURE_PRINCIPAL_TYPE "$principal_type"

env_name="${AZURE_ENV_NAME:-}"
if [ -n "$env_name" ]; then
  deleted="$(az keyvault list-deleted --subscription "$sub" --resource-type vault --query "[?properties.tags.\"azd-env-name\"=='$env_name'].name" --output tsv 2>/dev/null || true)"
  for vault in $deleted; do
    group="${AZURE_RESOURCE_GROUP:-rg-$env_name}"
    # Recovery puts the vault back into its resource group, which `azd down` deleted.
    az group create --subscription "$sub" --name "$group" --location "$location" --tags "azd-env-name=$env_name" --output none ||
      fail "could not create resource group $group to recover Key Vault $vault into. Fix: check your role on the subscription."
    az keyvault recover --subscription "$sub" --name "$vault" --output none ||
      fail "Key Vault $vault of this environment is soft-deleted and could not be recovered. Fix: az keyvault recover --subscription $sub --name $vault, or use a new azd environment name."
    echo "preprovision: recovered Key Vault $vault (soft-deleted by an earlier azd down), with its signing key"
  done
fi

if [ "${BUDGET_AMOUNT:-0}" != "0" ] && [ -n "${BUDGET_AMOUNT:-}" ] && [ -z "${BUDGET_START_DATE:-}" ]; then
  azd env set BUDGET_START_DATE "$(date -u +%Y-%m-01)"
fi

if listed "$ZONE_REGIONS" "$location"; then auto_sku=Standard_ZRS; else auto_sku=Standard_LRS; fi
echo "preprovision: region $location, storage ${sku:-$auto_sku (by region)}, azd runs as a $principal_type"
