// The relay identity's roles on the partner's export account: only what the settings use, each at the
// narrowest scope the service allows. `make lint-infra` checks this file: no Owner role, no role at account
// scope except Storage Blob Delegator, delete on the export container only when AFTER_DELIVERY removes the
// original (archive moves it, delete deletes it), write only on the ledger and archive containers.
@description('Principal (object) id of the relay\'s user-assigned managed identity.')
param principalId string

@description('Partner export account name.')
param storageAccountName string

@description('Export container (EXPORT_CONTAINER).')
param exportContainerName string

@description('Ledger container (LEDGER_CONTAINER).')
param ledgerContainerName string

@description('Archive container (ARCHIVE_CONTAINER).')
param archiveContainerName string

@description('The blob trigger\'s poison queue on the export account (its connection EXPORT_STORAGE).')
param poisonQueueName string

@description('COPY_MODE: auto and server sign a user delegation SAS for the source.')
param copyMode string

@description('AFTER_DELIVERY: archive copies through a user delegation SAS and deletes the original; delete deletes it.')
param afterDelivery string

// Built-in role definition ids (az role definition list --name "<role>" --query [].name).
var roles = {
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  // Get User Delegation Key, the account-level call behind a user delegation SAS.
  storageBlobDelegator: 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'
}

// Both archive and delete remove the delivered original (shared/delivery.py, Delivery._after_delivery); neither writes to it.
var removesExports = afterDelivery == 'archive' || afterDelivery == 'delete'
// The relay signs a user delegation SAS for server-side copy (COPY_MODE auto or server) and for the archive
// copy (Copy Blob From URL reads the source by URL).
var signsSas = copyMode != 'stream' || afterDelivery == 'archive'

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

resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  name: '${storageAccountName}/default/${poisonQueueName}'
}

// No built-in role reads and deletes blobs without also writing them: Storage Blob Data Reader plus delete.
resource exportReaderDeleter 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (removesExports) {
  name: guid(resourceGroup().id, 'skyporten-relay-export-reader-deleter')
  properties: {
    roleName: 'Skyporten relay export reader and deleter (${uniqueString(resourceGroup().id)})'
    description: 'Lists and reads blobs and deletes delivered ones; cannot write. For AFTER_DELIVERY archive or delete.'
    type: 'CustomRole'
    permissions: [
      {
        actions: [
          'Microsoft.Storage/storageAccounts/blobServices/containers/read'
        ]
        dataActions: [
          'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read'
          'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete'
        ]
        notActions: []
        notDataActions: []
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

// Exports: read (and list) always; delete only when AFTER_DELIVERY removes delivered originals.
resource exportsRead 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!removesExports) {
  name: guid(exportContainer.id, principalId, roles.storageBlobDataReader)
  scope: exportContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource exportsReadDelete 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (removesExports) {
  name: guid(exportContainer.id, principalId, 'skyporten-relay-export-reader-deleter')
  scope: exportContainer
  dependsOn: [
    exportReaderDeleter
  ]
  properties: {
    // A custom role deployed from a resource-group deployment still lives at subscription level.
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', guid(resourceGroup().id, 'skyporten-relay-export-reader-deleter'))
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Ledger: receipts, failures and claims (conditional writes; claim release and failure clean-up delete).
resource ledgerWrite 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(ledgerContainer.id, principalId, roles.storageBlobDataContributor)
  scope: ledgerContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Archive: the destination of AFTER_DELIVERY=archive; no access otherwise.
resource archiveWrite 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (afterDelivery == 'archive') {
  name: guid(archiveContainer.id, principalId, roles.storageBlobDataContributor)
  scope: archiveContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The blob trigger writes an export that failed every retry to this queue of its connection (EXPORT_STORAGE).
resource poisonQueueWrite 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(poisonQueue.id, principalId, roles.storageQueueDataContributor)
  scope: poisonQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// User delegation key (account-level by design of the service). A user delegation SAS never grants more than
// the identity's own data roles above; the relay signs each one for one blob, read only, short-lived.
resource delegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (signsSas) {
  name: guid(account.id, principalId, roles.storageBlobDelegator)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDelegator)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
