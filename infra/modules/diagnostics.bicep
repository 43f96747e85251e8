// Diagnostic settings into the Log Analytics workspace, each into its resource-specific table
// (logAnalyticsDestinationType 'Dedicated'; without it Key Vault and Event Grid write to the shared AzureDiagnostics
// table and the tables docs/operations.md queries stay empty): Key Vault's audit log (who read or changed the
// signing key: AZKVAuditLogs), the blob and queue logs of both storage accounts (who read,
// wrote or deleted an export, the ledger or the host's state: StorageBlobLogs, StorageQueueLogs) and Event
// Grid's delivery failures (AegDeliveryFailureLogs). The dead-letter alert itself is a metric alert
// (eventgrid.bicep).
@description('Log Analytics workspace resource id.')
param workspaceId string

@description('Key Vault name.')
param keyVaultName string

@description('The partner\'s export account.')
param exportStorageAccountName string

@description('The Functions host\'s storage account.')
param hostStorageAccountName string

@description('Event Grid system topic on the export account.')
param systemTopicName string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource exportBlobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  name: '${exportStorageAccountName}/default'
}

resource exportQueues 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  name: '${exportStorageAccountName}/default'
}

resource hostBlobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  name: '${hostStorageAccountName}/default'
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

var storageLogs = [
  {
    category: 'StorageRead'
    enabled: true
  }
  {
    category: 'StorageWrite'
    enabled: true
  }
  {
    category: 'StorageDelete'
    enabled: true
  }
]

resource vaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-workspace'
  scope: vault
  properties: {
    workspaceId: workspaceId
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

resource exportBlobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-workspace'
  scope: exportBlobs
  properties: {
    workspaceId: workspaceId
    logAnalyticsDestinationType: 'Dedicated'
    logs: storageLogs
  }
}

resource exportQueueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-workspace'
  scope: exportQueues
  properties: {
    workspaceId: workspaceId
    logAnalyticsDestinationType: 'Dedicated'
    logs: storageLogs
  }
}

resource hostBlobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-workspace'
  scope: hostBlobs
  properties: {
    workspaceId: workspaceId
    logAnalyticsDestinationType: 'Dedicated'
    // Writes and deletes only: the host reads its lease and key blobs all day.
    logs: [
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

resource topicDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-workspace'
  scope: systemTopic
  properties: {
    workspaceId: workspaceId
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        category: 'DeliveryFailures'
        enabled: true
      }
    ]
  }
}
