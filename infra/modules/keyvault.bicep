// Key Vault for the partner's Maskinporten signing key: RBAC mode, soft delete and purge protection. It holds
// no key material at deployment; the partner imports the key afterwards (docs/deploy.md), as a secret, a
// certificate or a key according to SIGNING_KEY_SOURCE.
@description('Key Vault name (3-24 characters).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags for the vault.')
param tags object

@minValue(7)
@maxValue(90)
@description('Days a deleted secret, key or certificate stays recoverable.')
param softDeleteRetentionInDays int = 90

@description('VNet mode: no public network access; the relay reads the key through a private endpoint.')
param vnetEnabled bool

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: Without vnetEnabled, Flex Consumption reaches the vault over its public endpoint; every call needs an Entra token and an RBAC role. vnetEnabled turns public access off
  // checkov:skip=CKV_AZURE_189: Same reason: without vnetEnabled the function app needs the public endpoint; access is Entra ID and RBAC only, no access policies
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    // RBAC instead of access policies: roles are assigned per identity in rbac.bicep.
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    // Purge protection cannot be turned off again: a deleted signing key stays recoverable.
    enablePurgeProtection: true
    publicNetworkAccess: vnetEnabled ? 'Disabled' : 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: vnetEnabled ? 'Deny' : 'Allow'
    }
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
output id string = vault.id
