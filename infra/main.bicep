// The Skyporten relay in the partner's subscription: one resource group with the function app (Flex
// Consumption), the partner's storage account, Key Vault for the Maskinporten key, Event Grid wiring for the
// blob trigger, monitoring with alerts, and least-privilege role assignments. Deployed by `azd up`
// (azure.yaml); parameters come from the azd environment through main.parameters.json. See docs/deploy.md.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; used in resource names and the azd-env-name tag.')
param environmentName string

@minLength(1)
@description('Azure region for every resource.')
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
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
@description('Replication of the partner storage account.')
param storageSkuName string = 'Standard_ZRS'

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

@description('E-mail address for alerts; empty creates the alert rules without an action group.')
param alertEmail string = ''

@minValue(15)
@maxValue(2880)
@description('Alert when no sync has finished with outcome=ok for this many minutes (at most two days).')
param noSuccessfulSyncMinutes int = 120

@description('Create the Event Grid subscription. Needs the deployed code (the blobs_extension key): the azd postdeploy hook sets it.')
param deployEventSubscription bool = false

@description('Object id of the person or pipeline that puts the signing key into Key Vault (azd fills in the signed-in user); empty for none.')
param keyAdminPrincipalId string = ''

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
@description('Principal type of keyAdminPrincipalId.')
param keyAdminPrincipalType string = 'User'

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
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
    noSuccessfulSyncMinutes: noSuccessfulSyncMinutes
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    skuName: storageSkuName
    softDeleteDays: blobSoftDeleteDays
    ledgerContainerName: ledgerContainerName
    containerNames: [
      exportContainerName
      ledgerContainerName
      archiveContainerName
      deploymentContainerName
      deadLetterContainerName
    ]
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
  }
}

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    exportContainerName: exportContainerName
    ledgerContainerName: ledgerContainerName
    archiveContainerName: archiveContainerName
    deploymentContainerName: deploymentContainerName
    signingKeySource: signingKeySource
    copyMode: copyMode
    afterDelivery: afterDelivery
    keyAdminPrincipalId: keyAdminPrincipalId
    keyAdminPrincipalType: keyAdminPrincipalType
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  // The roles exist before the host first starts, so it never runs without access to its own storage.
  dependsOn: [
    rbac
  ]
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
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
    exportContainerName: exportContainerName
    deadLetterContainerName: deadLetterContainerName
    functionAppName: functionApp.outputs.name
    functionName: 'on_export'
    deployEventSubscription: deployEventSubscription
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output KEY_VAULT_URL string = keyVault.outputs.uri
output SIGNING_KEY_NAME string = signingKeyName
output EVENT_GRID_SYSTEM_TOPIC_NAME string = eventGrid.outputs.systemTopicName
