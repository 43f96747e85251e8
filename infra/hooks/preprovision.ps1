# azd preprovision hook (Windows): the same checks as preprovision.sh, which documents them. Fails before
# anything is created on a region without Flex Consumption, ZRS/GZRS storage in a region without availability
# zones, or VNET_ENABLED with COPY_MODE=server; warns about alerts with no one to tell (refuses in prod); sets
# AZURE_PRINCIPAL_TYPE from the Azure CLI's sign-in; fixes BUDGET_START_DATE once. Every az call names
# AZURE_SUBSCRIPTION_ID.
$ErrorActionPreference = 'Stop'

$FlexRegions = @('australiaeast', 'australiasoutheast', 'brazilsouth', 'canadacentral', 'centralindia', 'centralus', 'eastasia', 'eastus', 'eastus2', 'francecentral', 'germanywestcentral', 'italynorth', 'japaneast', 'koreacentral', 'northcentralus', 'northeurope', 'norwayeast', 'southafricanorth', 'southcentralus', 'southeastasia', 'southindia', 'spaincentral', 'swedencentral', 'uaenorth', 'uksouth', 'ukwest', 'westcentralus', 'westeurope', 'westus', 'westus2', 'westus3')
$ZoneRegions = @('australiaeast', 'brazilsouth', 'canadacentral', 'centralindia', 'centralus', 'eastasia', 'eastus', 'eastus2', 'francecentral', 'germanywestcentral', 'italynorth', 'japaneast', 'koreacentral', 'northeurope', 'norwayeast', 'southafricanorth', 'southcentralus', 'southeastasia', 'spaincentral', 'swedencentral', 'uaenorth', 'uksouth', 'westeurope', 'westus2', 'westus3')

function Fail([string]$Message) {
    [Console]::Error.WriteLine("preprovision: $Message")
    [Console]::Error.WriteLine('preprovision: nothing was created.')
    exit 1
}

$location = $env:AZURE_LOCATION
if (-not $location) { Fail 'AZURE_LOCATION is not set. Fix: azd env set AZURE_LOCATION norwayeast (or another region with Flex Consumption).' }
if ($FlexRegions -notcontains $location) { Fail "region '$location' does not offer the Flex Consumption plan the relay runs on. Fix: azd env set AZURE_LOCATION <region>, one of: $($FlexRegions -join ' ')." }

$sku = "$env:STORAGE_SKU"
switch ($sku) {
    { $_ -in @('', 'Standard_LRS', 'Standard_GRS') } { break }
    { $_ -in @('Standard_ZRS', 'Standard_GZRS') } {
        if ($ZoneRegions -notcontains $location) { Fail "STORAGE_SKU=$sku needs availability zones, and $location has none. Fix: azd env set STORAGE_SKU '' (picks Standard_LRS there) or Standard_GRS, or choose a region with zones." }
        break
    }
    default { Fail "STORAGE_SKU=$sku is not a storage SKU the relay supports. Fix: azd env set STORAGE_SKU '' (by region), Standard_LRS, Standard_ZRS, Standard_GRS or Standard_GZRS." }
}

if ($env:VNET_ENABLED -eq 'true' -and $env:COPY_MODE -eq 'server') {
    Fail "VNET_ENABLED=true with COPY_MODE=server: Bane NOR's storage cannot pull exports from an account without public access. Fix: azd env set COPY_MODE auto (falls back to streaming) or stream."
}

if (-not "$($env:ALERT_EMAIL)$($env:ALERT_WEBHOOK_URL)$($env:ALERT_ACTION_GROUP_IDS)") {
    if ($env:BANENOR_ENVIRONMENT -eq 'prod') { Fail 'no one would be told when the relay stops delivering: ALERT_EMAIL, ALERT_WEBHOOK_URL and ALERT_ACTION_GROUP_IDS are all empty. Fix: azd env set ALERT_EMAIL ops@example.com (or ALERT_WEBHOOK_URL, or ALERT_ACTION_GROUP_IDS with an existing action group''s resource id).' }
    [Console]::Error.WriteLine('preprovision: WARNING: ALERT_EMAIL, ALERT_WEBHOOK_URL and ALERT_ACTION_GROUP_IDS are empty: the alerts will fire and tell no one. Fix: azd env set ALERT_EMAIL <address> (docs/deploy.md).')
}

$sub = $env:AZURE_SUBSCRIPTION_ID
if (-not $sub) { Fail 'AZURE_SUBSCRIPTION_ID is not in the azd environment. Fix: azd env set AZURE_SUBSCRIPTION_ID <subscription id> (the one azd deploys to).' }

if (-not (Get-Command az -ErrorAction SilentlyContinue)) { Fail 'the Azure CLI (az) is not installed; the deploy hooks use it. Fix: install it (https://aka.ms/azure-cli), then az login as the same principal azd uses.' }
$userType = az account show --subscription $sub --query user.type --output tsv 2>$null
if ($LASTEXITCODE -ne 0) { Fail "the Azure CLI is not signed in, or cannot see subscription $sub. Fix: az login (a person), or in CI sign it in as the same service principal as azd (docs/deploy.md, CI); then az account set --subscription $sub." }
switch ($userType) {
    'user' { $principalType = 'User' }
    'servicePrincipal' { $principalType = 'ServicePrincipal' }
    default { Fail "az account show reports user.type '$userType', expected user or servicePrincipal. Fix: az login again." }
}
azd env set AZURE_PRINCIPAL_TYPE $principalType
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }

# A Key Vault of this environment soft-deleted by an earlier `azd down` is recovered (purge protection keeps
# its name for 90 days), with the signing key in it.
$envName = $env:AZURE_ENV_NAME
if ($envName) {
    $deleted = az keyvault list-deleted --subscription $sub --resource-type vault --query "[?properties.tags.\"azd-env-name\"=='$envName'].name" --output tsv 2>$null
    foreach ($vault in @($deleted | Where-Object { $_ })) {
        $group = if ($env:AZURE_RESOURCE_GROUP) { $env:AZURE_RESOURCE_GROUP } else { "rg-$envName" }
        az group create --subscription $sub --name $group --location $location --tags "azd-env-name=$envName" --output none
        if ($LASTEXITCODE -ne 0) { Fail "could not create resource group $group to recover Key Vault $vault into. Fix: check your role on the subscription." }
        az keyvault recover --subscription $sub --name $vault --output none
        if ($LASTEXITCODE -ne 0) { Fail "Key Vault $vault of this environment is soft-deleted and could not be recovered. Fix: az keyvault recover --subscription $sub --name $vault, or use a new azd environment name." }
        Write-Host "preprovision: recovered Key Vault $vault (soft-deleted by an earlier azd down), with its signing key"
    }
}

if ($env:BUDGET_AMOUNT -and $env:BUDGET_AMOUNT -ne '0' -and -not $env:BUDGET_START_DATE) {
    azd env set BUDGET_START_DATE ([DateTime]::UtcNow.ToString('yyyy-MM-01'))
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
}

$autoSku = if ($ZoneRegions -contains $location) { 'Standard_ZRS' } else { 'Standard_LRS' }
$shownSku = if ($sku) { $sku } else { "$autoSku (by region)" }
Write-Host "preprovision: region $location, storage $shownSku, azd runs as a $principalType"
