// The partner's export account: exports (written by the partner system), the relay's ledger, the archive,
// Event Grid dead letters and the blob trigger's poison queue. The Functions host keeps its own state and the
// deployment package in a separate account (hoststorage.bicep), so the relay's roles here stay narrow.
// Entra ID only: shared key and anonymous blob access are off, TLS 1.2, HTTPS only.
@description('Storage account name (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags for the account.')
param tags object

@description('Replication SKU.')
param skuName string

@minValue(1)
@maxValue(365)
@description('Days deleted blobs and containers stay recoverable.')
param softDeleteDays int

@description('Containers to create (private).')
param containerNames array

@description('Queues to create: the blob trigger\'s poison queue, so its role can be scoped to that queue alone.')
param queueNames array

@description('VNet mode: refuse requests from public networks except trusted Azure services (Event Grid dead-lettering); the relay comes in through private endpoints.')
param vnetEnabled bool

@description('The relay ledger container: its delivery claims (claims/) are removed by a lifecycle rule.')
param ledgerContainerName string

@minValue(1)
@description('Days after which old delivery claims in the ledger are deleted (a claim matters for minutes).')
param claimRetentionDays int = 2

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Without vnetEnabled, Flex Consumption and Bane NOR's storage (server-side copy through a user delegation SAS) reach the account over its public endpoint; shared key is off, so every request needs an Entra token or a SAS signed with one. vnetEnabled denies public networks
  // checkov:skip=CKV_AZURE_59: Same reason as CKV_AZURE_35: public network access with Entra-only authorization unless vnetEnabled; anonymous blob access is off (allowBlobPublicAccess false)
  // checkov:skip=CKV_AZURE_206: Replication is the storageSkuName parameter (ZRS where the region has availability zones, else LRS; GRS and GZRS allowed); exports are a transit copy of the partner system's data, so geo-replication is the partner's choice
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    // Entra ID only: every client (the relay, the Functions host, Event Grid dead-lettering) uses an identity.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    // VNet mode keeps the public endpoint for trusted Azure services only (Event Grid dead-letters with its
    // identity); the partner system then writes exports through its own private endpoint or network rule.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: vnetEnabled ? 'Deny' : 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    // Blob soft delete: a blob removed by AFTER_DELIVERY=delete (or by mistake) stays recoverable.
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for containerName in containerNames: {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
  }
}]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queueName in queueNames: {
  parent: queueService
  name: queueName
}]

// A delivered version keeps its claim record (the receipt is what counts; see docs/ledger.md): this rule
// deletes claims that are older than claimRetentionDays. Receipts, failures and rejections are kept.
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'ledger-claims'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${ledgerContainerName}/claims/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: claimRetentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
}

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
