// Roles for the person (or group) who runs the relay's command line against this deployment (OPERATOR_PRINCIPAL_ID):
// exactly what `doctor`, `status` and `send` need, no more. `doctor` reads the signing key, lists the export
// container and writes and deletes a probe in the ledger; `status` reads the ledger; `send` writes exports and
// delivers them as the app would (read the export, write the ledger, and with COPY_MODE auto/server or
// AFTER_DELIVERY=archive sign a user delegation SAS; with archive, write the archive). The gateway write of `doctor`
// goes through Bane NOR's identity, not this one. With VNET_ENABLED the operator also needs a network path.
@description('Object id of the operator (a user or a group); empty grants nothing.')
param operatorPrincipalId string

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
@description('Principal type of operatorPrincipalId.')
param operatorPrincipalType string

@description('Key Vault name.')
param keyVaultName string

@description('SIGNING_KEY_SOURCE: picks the Key Vault role (read the secret or certificate, or sign with the key).')
param signingKeySource string

@description('The partner\'s export account.')
param storageAccountName string

@description('EXPORT_CONTAINER.')
param exportContainerName string

@description('LEDGER_CONTAINER.')
param ledgerContainerName string

@description('ARCHIVE_CONTAINER.')
param archiveContainerName string

@description('COPY_MODE: auto and server sign a user delegation SAS.')
param copyMode string

@description('AFTER_DELIVERY: archive writes the archive and signs a SAS; archive and delete delete exports.')
param afterDelivery string

var grant = !empty(operatorPrincipalId)
var roles = {
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  keyVaultCertificateUser: 'db79e9a7-68ee-4b58-9aeb-b90e7c24fcba'
  keyVaultCryptoUser: '12338af0-0e69-4776-bea7-57ae8d297424'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageBlobDelegator: 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'
}
var keyVaultReaderRole = signingKeySource == 'keyvault-key' ? roles.keyVaultCryptoUser : (signingKeySource == 'keyvault-certificate' ? roles.keyVaultCertificateUser : roles.keyVaultSecretsUser)
var signsSas = copyMode != 'stream' || afterDelivery == 'archive'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

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

// doctor (key readable and valid), send (signs the grant): the same role the app has for SIGNING_KEY_SOURCE.
resource operatorKey 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grant) {
  name: guid(vault.id, operatorPrincipalId, keyVaultReaderRole)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultReaderRole)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

// send puts files into the export container (and AFTER_DELIVERY archive/delete removes them); doctor lists it.
resource operatorExports 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grant) {
  name: guid(exportContainer.id, operatorPrincipalId, roles.storageBlobDataContributor)
  scope: exportContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

// status reads the ledger; doctor writes and deletes its probe; send records receipts, failures and claims.
resource operatorLedger 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grant) {
  name: guid(ledgerContainer.id, operatorPrincipalId, roles.storageBlobDataContributor)
  scope: ledgerContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

resource operatorArchive 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grant && afterDelivery == 'archive') {
  name: guid(archiveContainer.id, operatorPrincipalId, roles.storageBlobDataContributor)
  scope: archiveContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

// send's server-side copy and archive copy sign a user delegation SAS (account scope is the service's only one).
resource operatorDelegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grant && signsSas) {
  name: guid(account.id, operatorPrincipalId, roles.storageBlobDelegator)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDelegator)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}
