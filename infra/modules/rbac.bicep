// Role assignments outside the partner's export account: the Functions host's own storage account, Key Vault,
// Application Insights, and (only when asked for) the Key Vault officer role for whoever imports the signing
// key. The export account's roles are in rbac-exports.bicep. Names are guid(scope, principal, role), so a
// re-deployment finds the same assignment instead of failing with RoleAssignmentExists.
@description('Principal (object) id of the relay\'s user-assigned managed identity.')
param principalId string

@description('The Functions host\'s storage account (AzureWebJobsStorage and the deployment package).')
param hostStorageAccountName string

@description('Key Vault name.')
param keyVaultName string

@description('Application Insights component name.')
param applicationInsightsName string

@description('SIGNING_KEY_SOURCE: picks the Key Vault roles.')
param signingKeySource string

@description('Grant keyAdminPrincipalId the Key Vault officer role for SIGNING_KEY_SOURCE (GRANT_KEY_IMPORT_ROLE).')
param grantKeyImportRole bool

@description('Object id of whoever imports the signing key (azd\'s signed-in principal).')
param keyAdminPrincipalId string

@description('Principal type of keyAdminPrincipalId, detected by the preprovision hook.')
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
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  // Send telemetry to an Application Insights component with local auth disabled.
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

var keyVaultReaderRole = signingKeySource == 'keyvault-key' ? roles.keyVaultCryptoUser : (signingKeySource == 'keyvault-certificate' ? roles.keyVaultCertificateUser : roles.keyVaultSecretsUser)
var keyVaultAdminRole = signingKeySource == 'keyvault-key' ? roles.keyVaultCryptoOfficer : (signingKeySource == 'keyvault-certificate' ? roles.keyVaultCertificatesOfficer : roles.keyVaultSecretsOfficer)

resource hostAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: hostStorageAccountName
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

// The person or pipeline importing the key needs the matching officer role on the vault (RBAC mode has no
// access policies). Only on request (GRANT_KEY_IMPORT_ROLE=true): a later provision without it leaves an
// existing assignment alone (ARM never deletes what a template stops declaring); remove it with
// `az role assignment delete` after the import (docs/deploy.md).
resource signingKeyAdmin 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantKeyImportRole && !empty(keyAdminPrincipalId)) {
  name: guid(vault.id, keyAdminPrincipalId, keyVaultAdminRole)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultAdminRole)
    principalId: keyAdminPrincipalId
    principalType: keyAdminPrincipalType
  }
}

// AzureWebJobsStorage, identity-based, on the host's own account: the host creates and uses its containers
// (azure-webjobs-hosts, azure-webjobs-secrets) and reads the deployment package; the Functions docs ask for
// Storage Blob Data Owner for identity-based host storage. This account holds nothing of the partner's.
resource hostBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostAccount.id, principalId, roles.storageBlobDataOwner)
  scope: hostAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The host's internal queues in AzureWebJobsStorage (e.g. the blob trigger's scan queue with
// LogsAndContainerScan).
resource hostQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostAccount.id, principalId, roles.storageQueueDataContributor)
  scope: hostAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
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
