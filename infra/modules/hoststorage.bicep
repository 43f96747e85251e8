// The Functions host's own storage account: AzureWebJobsStorage (host keys including blobs_extension, timer
// schedule status, singleton locks, blob-trigger receipts) and the Flex Consumption deployment package. Apart
// from the partner's export account, so the Storage Blob Data Owner role the host needs covers nothing of the
// partner's. Entra ID only; in VNet mode reachable only through private endpoints.
@description('Storage account name (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags for the account.')
param tags object

@description('Replication SKU (chosen in main.bicep from the region).')
param skuName string

@description('Container Flex Consumption deploys the app package to.')
param deploymentContainerName string

@description('VNet mode: no public network access; the function app comes in through private endpoints.')
param vnetEnabled bool

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Without vnetEnabled the Flex Consumption host reaches its storage over the public endpoint with its managed identity (shared key off); vnetEnabled turns public access off
  // checkov:skip=CKV_AZURE_59: Same reason as CKV_AZURE_35: Entra-only authorization, anonymous access off; vnetEnabled disables public network access
  // checkov:skip=CKV_AZURE_206: Host state and the app package are rebuilt by the next deployment; zone-redundant where the region has zones
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: vnetEnabled ? 'Disabled' : 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: vnetEnabled ? 'Deny' : 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
