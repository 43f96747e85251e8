// The Skyporten relay in the partner's subscription: one resource group with the function app (Flex
// Consumption) and its own host storage account, the partner's export account, Key Vault for the Maskinporten
// key, the Event Grid topic for the blob trigger (its subscription is made by the postdeploy hook), monitoring
// with alerts and diagnostic settings, least-privilege role assignments, and optionally a VNet with private
// endpoints. Deployed by `azd up` (azure.yaml); parameters come from the azd environment through
// main.parameters.json; the preprovision hook checks region and SKU first. See docs/deploy.md.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; used in resource names and the azd-env-name tag.')
param environmentName string

// Regions with Flex Consumption (as Microsoft's Flex Consumption azd samples list them; `az functionapp
// list-flexconsumption-locations` shows the current list). infra/hooks/preprovision.* keep the same list and
// refuse any other region before anything is created; `make lint-infra` checks that the three agree.
@minLength(1)
@description('Azure region for every resource; only regions with Flex Consumption.')
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group name; empty means rg-<environmentName>.')
param resourceGroupName string = ''

@allowed([
  'dev'
  'test'
  'prod'
])
@description('Bane NOR environment (BANENOR_ENVIRONMENT): picks the Skyporten issuer, gateway URL and storage audience.')
param banenorEnvironment string

@minLength(36)
@maxLength(36)
@description('Bane NOR\'s Entra tenant id (BANENOR_TENANT_ID), given by Bane NOR at onboarding.')
param banenorTenantId string

@minLength(36)
@maxLength(36)
@description('Client id (not object id) of the managed identity Bane NOR created for your organisation (BANENOR_CLIENT_ID).')
param banenorClientId string

@minLength(3)
@maxLength(63)
@description('Container in Bane NOR\'s external storage, one per Bane NOR domain, e.g. integration-dev (BANENOR_CONTAINER).')
param banenorContainer string

@description('Directory inside the Bane NOR container where files are written (BANENOR_DIRECTORY); empty for the root.')
param banenorDirectory string = ''

@minLength(1)
@description('Client id of your Maskinporten integration in the Skyporten environment matching banenorEnvironment (MASKINPORTEN_CLIENT_ID).')
param maskinportenClientId string

@description('kid of the key registered on the Maskinporten integration (MASKINPORTEN_KEY_ID); may be empty only with keyvault-certificate.')
param maskinportenKeyId string = ''

@description('Optional `resource` claim for the grant (MASKINPORTEN_RESOURCE); leave empty unless Bane NOR gives you a value.')
param maskinportenResource string = ''

@allowed([
  'keyvault-secret'
  'keyvault-certificate'
  'keyvault-key'
])
@description('Where the Maskinporten signing key lives in Key Vault (SIGNING_KEY_SOURCE); also picks the Key Vault role the app gets.')
param signingKeySource string = 'keyvault-secret'

@minLength(1)
@maxLength(127)
@description('Name of the secret, certificate or key in Key Vault that holds the signing key (SIGNING_KEY_NAME).')
param signingKeyName string = 'maskinporten-signing-key'

@minLength(3)
@maxLength(63)
@description('Container the partner system writes exports to (EXPORT_CONTAINER).')
param exportContainerName string = 'exports'

@minLength(3)
@maxLength(63)
@description('Container holding the relay\'s delivery ledger (LEDGER_CONTAINER).')
param ledgerContainerName string = 'relay-ledger'

@minLength(3)
@maxLength(63)
@description('Container delivered exports move to when afterDelivery is archive (ARCHIVE_CONTAINER).')
param archiveContainerName string = 'exports-archive'

@minLength(3)
@maxLength(63)
@description('Container where Event Grid dead-letters BlobCreated events it could not deliver.')
param deadLetterContainerName string = 'eventgrid-deadletter'

@description('NCRONTAB schedule (six fields) of the catch-up sync (SYNC_SCHEDULE).')
param syncSchedule string = '0 */15 * * * *'

@allowed([
  'auto'
  'stream'
  'server'
])
@description('COPY_MODE: server and auto use server-side copy with a user delegation SAS (needs Storage Blob Delegator); stream never does.')
param copyMode string = 'auto'

@allowed([
  'keep'
  'archive'
  'delete'
])
@description('AFTER_DELIVERY: what happens to a delivered export; archive and delete need write access to the export container.')
param afterDelivery string = 'keep'

@minValue(1)
@maxValue(100)
@description('Delivery attempts before an export is marked poisoned (MAX_ATTEMPTS).')
param maxAttempts int = 5

@allowed([
  'sanitize'
  'strict'
])
@description('NAME_POLICY: sanitize names to Bane NOR\'s characters, or refuse names that break the rules.')
param namePolicy string = 'sanitize'

@allowed([
  ''
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
@description('Replication of the storage accounts (STORAGE_SKU); empty picks Standard_ZRS where the region has availability zones, else Standard_LRS. The preprovision hook refuses ZRS and GZRS in a region without zones.')
param storageSkuName string = ''

@minValue(1)
@maxValue(365)
@description('Days deleted blobs and containers stay recoverable (blob soft delete).')
param blobSoftDeleteDays int = 14

@minValue(40)
@maxValue(1000)
@description('Upper bound of Flex Consumption instances.')
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
@description('Memory per Flex Consumption instance in MB.')
param instanceMemoryMB int = 2048

@description('More relay app settings, name to string value (e.g. SYNC_CONCURRENCY, BLOCK_SIZE, ALLOWED_EXTENSIONS). Every provision writes the whole app-settings list, so a setting added by hand in the portal is gone after the next `azd provision`: put it here. A setting with its own parameter above is set by that parameter.')
param extraAppSettings object = {}

@description('E-mail address for alerts (ALERT_EMAIL). With no e-mail, webhook or action group the alerts tell no one: the preprovision hook warns, and refuses for BANENOR_ENVIRONMENT=prod.')
param alertEmail string = ''

@secure()
@description('Webhook that receives alerts in the common alert schema (ALERT_WEBHOOK_URL), e.g. an on-call or chat URL; empty for none.')
param alertWebhookUrl string = ''

@description('Resource ids of existing action groups to notify, comma-separated (ALERT_ACTION_GROUP_IDS); empty for none.')
param alertActionGroupIds string = ''

@minValue(1)
@maxValue(180)
@description('Alert when the signing key or certificate expires, or a registered key is due for rotation, within this many days (KEY_EXPIRY_WARNING_DAYS).')
param keyExpiryWarningDays int = 30

@description('Time of this deployment (UTC); the no-successful-sync alert stays quiet from then until the first successful sync. Leave the default.')
param deployedAt string = utcNow('s')

@description('Daily ingestion cap of the Log Analytics workspace in GB (LOG_DAILY_CAP_GB, e.g. 0.5); empty for none. Ingestion, and so the log alerts, stop for the rest of the day when it is reached.')
param logDailyCapGb string = ''

@description('Delete locks on the Key Vault and the export account (LOCK_RESOURCES): `azd down` would delete the signing key\'s vault and the ledger; with the locks it fails until they are removed.')
param lockResources bool = false

@minValue(0)
@description('Monthly cost budget of the resource group in the subscription\'s currency (BUDGET_AMOUNT); 0 for none. Notifies ALERT_EMAIL and the action groups at 80 % actual and 100 % forecast.')
param budgetAmount int = 0

@description('First day of the month the budget starts, yyyy-MM-dd (BUDGET_START_DATE); set once by the preprovision hook when BUDGET_AMOUNT is set.')
param budgetStartDate string = ''

@description('Object id of the operator who runs doctor, status and send against this deployment (OPERATOR_PRINCIPAL_ID); empty grants nothing. Gets exactly the roles those commands need (docs/deploy.md).')
param operatorPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
@description('Principal type of operatorPrincipalId (OPERATOR_PRINCIPAL_TYPE).')
param operatorPrincipalType string = 'User'

@minValue(15)
@maxValue(2880)
@description('Alert when no sync has finished with outcome=ok for this many minutes (at most two days).')
param noSuccessfulSyncMinutes int = 120

@description('Grant the principal running azd (keyAdminPrincipalId) the Key Vault officer role for SIGNING_KEY_SOURCE, to import the signing key (GRANT_KEY_IMPORT_ROLE). Off by default: turn it on for the import, then off (docs/deploy.md).')
param grantKeyImportRole bool = false

@description('Object id of the principal running azd (AZURE_PRINCIPAL_ID, set by azd); used only with grantKeyImportRole.')
param keyAdminPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
@description('Principal type of keyAdminPrincipalId (AZURE_PRINCIPAL_TYPE), detected by the preprovision hook: User for a person, ServicePrincipal for a CI pipeline.')
param keyAdminPrincipalType string = 'User'

@description('VNet integration for the function app with private endpoints for both storage accounts and Key Vault (VNET_ENABLED). Needs COPY_MODE stream or auto: Bane NOR\'s storage cannot pull from a private account.')
param vnetEnabled bool = false

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
// Flex Consumption regions that also have availability zones (ZRS); the others get LRS unless told otherwise.
var zoneRedundantRegions = [
  'australiaeast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'westeurope'
  'westus2'
  'westus3'
]
var effectiveStorageSku = !empty(storageSkuName) ? storageSkuName : (contains(zoneRedundantRegions, location) ? 'Standard_ZRS' : 'Standard_LRS')
// The blob trigger's poison queue, in its connection's (EXPORT_STORAGE) account.
var poisonQueueName = 'webjobs-blobtrigger-poison'
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = 'func-relay-${resourceToken}'
// Flex Consumption reads the app package from this container (functionAppConfig.deployment.storage).
var deploymentContainerName = 'app-package'

// The relay's app settings (shared/config.py reads them; docs/deploy.md lists them).
var relaySettings = {
  BANENOR_ENVIRONMENT: banenorEnvironment
  BANENOR_TENANT_ID: banenorTenantId
  BANENOR_CLIENT_ID: banenorClientId
  BANENOR_CONTAINER: banenorContainer
  MASKINPORTEN_CLIENT_ID: maskinportenClientId
  SIGNING_KEY_SOURCE: signingKeySource
  SIGNING_KEY_NAME: signingKeyName
  EXPORT_CONTAINER: exportContainerName
  LEDGER_CONTAINER: ledgerContainerName
  ARCHIVE_CONTAINER: archiveContainerName
  SYNC_SCHEDULE: syncSchedule
  COPY_MODE: copyMode
  AFTER_DELIVERY: afterDelivery
  MAX_ATTEMPTS: string(maxAttempts)
  NAME_POLICY: namePolicy
}
// Optional settings stay unset when empty, so the relay's own defaults apply rather than an empty string.
var directorySetting = empty(banenorDirectory) ? {} : {
  BANENOR_DIRECTORY: banenorDirectory
}
var keyIdSetting = empty(maskinportenKeyId) ? {} : {
  MASKINPORTEN_KEY_ID: maskinportenKeyId
}
var resourceSetting = empty(maskinportenResource) ? {} : {
  MASKINPORTEN_RESOURCE: maskinportenResource
}

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-relay-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    alertEmail: alertEmail
    alertWebhookUrl: alertWebhookUrl
    alertActionGroupIds: empty(alertActionGroupIds) ? [] : split(replace(alertActionGroupIds, ' ', ''), ',')
    noSuccessfulSyncMinutes: noSuccessfulSyncMinutes
    deployedAt: deployedAt
    keyExpiryWarningDays: keyExpiryWarningDays
    dailyCapGb: logDailyCapGb
    exportStorageAccountName: storage.outputs.name
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    skuName: effectiveStorageSku
    softDeleteDays: blobSoftDeleteDays
    ledgerContainerName: ledgerContainerName
    containerNames: [
      exportContainerName
      ledgerContainerName
      archiveContainerName
      deadLetterContainerName
    ]
    queueNames: [
      poisonQueueName
    ]
    vnetEnabled: vnetEnabled
  }
}

module hostStorage 'modules/hoststorage.bicep' = {
  name: 'hoststorage'
  scope: rg
  params: {
    name: 'stfn${resourceToken}'
    location: location
    tags: tags
    skuName: effectiveStorageSku
    deploymentContainerName: deploymentContainerName
    vnetEnabled: vnetEnabled
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
    vnetEnabled: vnetEnabled
  }
}

module network 'modules/network.bicep' = if (vnetEnabled) {
  name: 'network'
  scope: rg
  params: {
    name: 'vnet-${resourceToken}'
    location: location
    tags: tags
    hostStorageAccountName: hostStorage.outputs.name
    exportStorageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    hostStorageAccountName: hostStorage.outputs.name
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    signingKeySource: signingKeySource
    grantKeyImportRole: grantKeyImportRole
    keyAdminPrincipalId: keyAdminPrincipalId
    keyAdminPrincipalType: keyAdminPrincipalType
  }
}

module rbacExports 'modules/rbac-exports.bicep' = {
  name: 'rbac-exports'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    exportContainerName: exportContainerName
    ledgerContainerName: ledgerContainerName
    archiveContainerName: archiveContainerName
    poisonQueueName: poisonQueueName
    copyMode: copyMode
    afterDelivery: afterDelivery
  }
}

module rbacOperator 'modules/rbac-operator.bicep' = if (!empty(operatorPrincipalId)) {
  name: 'rbac-operator'
  scope: rg
  params: {
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
    keyVaultName: keyVault.outputs.name
    signingKeySource: signingKeySource
    storageAccountName: storage.outputs.name
    exportContainerName: exportContainerName
    ledgerContainerName: ledgerContainerName
    archiveContainerName: archiveContainerName
    copyMode: copyMode
    afterDelivery: afterDelivery
  }
}

module locks 'modules/locks.bicep' = if (lockResources) {
  name: 'locks'
  scope: rg
  params: {
    keyVaultName: keyVault.outputs.name
    storageAccountName: storage.outputs.name
  }
}

// A budget needs someone to tell: ALERT_EMAIL or an action group.
module budget 'modules/budget.bicep' = if (budgetAmount > 0 && !empty(budgetStartDate) && (!empty(alertEmail) || !empty(alertWebhookUrl) || !empty(alertActionGroupIds))) {
  name: 'budget'
  scope: rg
  params: {
    name: 'budget-relay-${resourceToken}'
    amount: max(budgetAmount, 1)
    startDate: budgetStartDate
    contactEmails: empty(alertEmail) ? [] : [
      alertEmail
    ]
    actionGroupIds: monitoring.outputs.actionGroupIds
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  // The roles (and in VNet mode the private endpoints) exist before the host first starts, so it never runs
  // without access to its own storage.
  dependsOn: [
    rbac
    rbacExports
    network
  ]
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    hostStorageAccountName: hostStorage.outputs.name
    exportStorageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    virtualNetworkSubnetId: vnetEnabled ? network.outputs.appSubnetId : ''
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    relaySettings: union(extraAppSettings, relaySettings, directorySetting, keyIdSetting, resourceSetting, {
      KEY_VAULT_URL: keyVault.outputs.uri
    })
  }
}

module eventGrid 'modules/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: rg
  params: {
    systemTopicName: 'evgt-${resourceToken}'
    location: location
    tags: tags
    storageAccountName: storage.outputs.name
    deadLetterContainerName: deadLetterContainerName
    actionGroupIds: monitoring.outputs.actionGroupIds
  }
}

module diagnostics 'modules/diagnostics.bicep' = {
  name: 'diagnostics'
  scope: rg
  params: {
    workspaceId: monitoring.outputs.workspaceId
    keyVaultName: keyVault.outputs.name
    exportStorageAccountName: storage.outputs.name
    hostStorageAccountName: hostStorage.outputs.name
    systemTopicName: eventGrid.outputs.systemTopicName
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_HOST_STORAGE_ACCOUNT_NAME string = hostStorage.outputs.name
output AZURE_STORAGE_SKU string = effectiveStorageSku
output AZURE_KEY_VAULT_ID string = keyVault.outputs.id
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output KEY_VAULT_URL string = keyVault.outputs.uri
output SIGNING_KEY_NAME string = signingKeyName
output AZURE_WORKBOOK_ID string = monitoring.outputs.workbookId
// What the postdeploy hook needs to create the Event Grid subscription (descriptions of what exists, nothing
// that decides whether to create it: the hook asks Azure).
output EVENT_GRID_SYSTEM_TOPIC_NAME string = eventGrid.outputs.systemTopicName
output EVENT_GRID_SUBJECT_PREFIX string = '/blobServices/default/containers/${exportContainerName}/'
output EVENT_GRID_DEAD_LETTER_ACCOUNT_ID string = storage.outputs.id
output EVENT_GRID_DEAD_LETTER_CONTAINER string = deadLetterContainerName
