// Least-privilege role assignments for the relay's managed identity, each at the narrowest scope the
// service allows, and for the person who imports the signing key. Names are guid(scope, principal, role),
// so a re-deployment finds the same assignment instead of failing with RoleAssignmentExists.
@description('Principal (object) id of the relay\'s user-assigned managed identity.')
param principalId string

@description('Partner storage account name.')
param storageAccountName string

@description('Key Vault name.')
param keyVaultName string

@description('Application Insights component name.')
param applicationInsightsName string

@description('Export container (EXPORT_CONTAINER).')
param exportContainerName string

@description('Ledger container (LEDGER_CONTAINER).')
param ledgerContainerName string

@description('Archive container (ARCHIVE_CONTAINER).')
param archiveContainerName string

@description('Flex Consumption deployment container.')
param deploymentContainerName string

@description('SIGNING_KEY_SOURCE: picks the Key Vault role.')
param signingKeySource string

@description('COPY_MODE: auto and server need Storage Blob Delegator.')
param copyMode string

@description('AFTER_DELIVERY: archive and delete need write access to the export container.')
param afterDelivery string

@description('Object id of whoever imports the signing key; empty for none.')
param keyAdminPrincipalId string

@description('Principal type of keyAdminPrincipalId.')
param keyAdminPrincipalType string

// Built-in role definition ids (az role definition list --name "<role>" --query [].name).
var roles = {
  // Read secrets: the PEM or JWK signing key (SIGNING_KEY_SOURCE=keyvault-secret).
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  // Read certificates including the private key through the secret endpoint (keyvault-certificate).
  keyVaultCertificateUser: 'db79e9a7-68ee-4b58-9aeb-b90e7c24fcba'
  // Read a key's public part and sign with it; the private key never leaves the vault (keyvault-key).
  keyVaultCryptoUser: '12338af0-0e69-4776-bea7-57ae8d297424'
  // Import and manage the matching object type: for the person who puts the key in.
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
  keyVaultCertificatesOfficer: 'a4417e6f-fecd-4de8-b567-7b0420556985'
  keyVaultCryptoOfficer: '14b46e9e-c2b7-41b4-b07b-48a6ebf60603'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  // Get User Delegation Key, the account-level call behind a user delegation SAS.
  storageBlobDelegator: 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'
  // Send telemetry to an Application Insights component with local auth disabled.
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

var keyVaultReaderRole = signingKeySource == 'keyvault-key' ? roles.keyVaultCryptoUser : (signingKeySource == 'keyvault-certificate' ? roles.keyVaultCertificateUser : roles.keyVaultSecretsUser)
var keyVaultAdminRole = signingKeySource == 'keyvault-key' ? roles.keyVaultCryptoOfficer : (signingKeySource == 'keyvault-certificate' ? roles.keyVaultCertificatesOfficer : roles.keyVaultSecretsOfficer)
// Archiving copies the export to the archive container and deletes the original; delete only deletes.
var exportsWritable = afterDelivery == 'archive' || afterDelivery == 'delete'
var usesUserDelegationSas = copyMode == 'auto' || copyMode == 'server'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource exportContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  name: '${storageAccountName}/default/${exportContainerName}'
}

resource ledgerContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  name: '${storageAccountName}/default/${ledgerContainerName}'
}

resource archiveContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  name: '${storageAccountName}/default/${archiveContainerName}'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  name: '${storageAccountName}/default/${deploymentContainerName}'
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Key Vault: read only the object type SIGNING_KEY_SOURCE names. Vault scope, because the object does not
// exist yet at deployment (the partner imports it afterwards); the vault holds nothing else.
resource signingKeyReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, keyVaultReaderRole)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultReaderRole)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The person or pipeline importing the key needs the matching Officer role on the vault (RBAC mode has
// no access policies). Remove it after the import if nobody rotates keys from that account.
resource signingKeyAdmin 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(keyAdminPrincipalId)) {
  name: guid(vault.id, keyAdminPrincipalId, keyVaultAdminRole)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultAdminRole)
    principalId: keyAdminPrincipalId
    principalType: keyAdminPrincipalType
  }
}

// Exports: the relay reads them (and creates user delegation SAS URLs for them); it writes or deletes
// only when AFTER_DELIVERY moves or removes delivered exports.
resource exportsAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(exportContainer.id, principalId, exportsWritable ? roles.storageBlobDataContributor : roles.storageBlobDataReader)
  scope: exportContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', exportsWritable ? roles.storageBlobDataContributor : roles.storageBlobDataReader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Archive: the destination of AFTER_DELIVERY=archive; no access otherwise.
resource archiveAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (afterDelivery == 'archive') {
  name: guid(archiveContainer.id, principalId, roles.storageBlobDataContributor)
  scope: archiveContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Ledger: the relay writes a receipt per delivered source version and its failures (conditional writes).
resource ledgerAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(ledgerContainer.id, principalId, roles.storageBlobDataContributor)
  scope: ledgerContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Deployment container: Flex Consumption reads the app package with the identity named in
// functionAppConfig.deployment.storage.authentication.
resource deploymentAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deploymentContainer.id, principalId, roles.storageBlobDataContributor)
  scope: deploymentContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// AzureWebJobsStorage (identity-based, this account): the Functions host creates and uses its own containers
// (azure-webjobs-hosts: timer schedule status and singleton locks, blob trigger receipts; azure-webjobs-secrets:
// host keys, including the blobs_extension key Event Grid calls with), which needs Storage Blob Data Owner on
// the account per the Functions docs for identity-based host storage. Note: on this account that role also
// covers the export, ledger and archive containers, so the container roles above narrow nothing for this
// identity; a separate host storage account would. They stay so the intent is explicit and survives a split.
resource hostBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, roles.storageBlobDataOwner)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Queues: the blob trigger writes exports that fail every retry to the webjobs-blobtrigger-poison queue of
// its connection (EXPORT_STORAGE, this account), and the host keeps internal queues in AzureWebJobsStorage.
resource hostQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, roles.storageQueueDataContributor)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Server-side copy (COPY_MODE auto or server): Bane NOR's storage pulls the export through a user delegation
// SAS; getting the delegation key is an account-level operation. The relay signs each SAS for one blob,
// read only, short-lived; a user delegation SAS never grants more than the identity's own data roles.
resource blobDelegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (usesUserDelegationSas) {
  name: guid(account.id, principalId, roles.storageBlobDelegator)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDelegator)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Application Insights with DisableLocalAuth accepts telemetry only from identities with this role.
resource telemetryPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
