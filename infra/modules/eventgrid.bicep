// Event Grid wiring for the Flex Consumption blob trigger: a system topic on the partner storage account and
// a subscription that delivers BlobCreated for the export container to the `blobs_extension` webhook of the
// function `on_export`, with retries and dead-lettering (through the topic's own identity: shared key is off).
@description('Event Grid system topic name.')
param systemTopicName string

@description('Azure region (the storage account\'s).')
param location string

@description('Tags for the topic.')
param tags object

@description('Partner storage account that raises the events.')
param storageAccountName string

@description('Export container whose BlobCreated events trigger deliveries.')
param exportContainerName string

@description('Container for events Event Grid could not deliver.')
param deadLetterContainerName string

@description('Function app that hosts the blob trigger.')
param functionAppName string

@description('Name of the blob-trigger function in function_app.py.')
param functionName string

@description('Create the subscription; false until the code is deployed and the blobs_extension key exists.')
param deployEventSubscription bool

@minValue(1)
@maxValue(30)
@description('Delivery attempts before Event Grid dead-letters an event.')
param maxDeliveryAttempts int = 30

@minValue(1)
@maxValue(1440)
@description('Minutes Event Grid keeps retrying an event before dead-lettering it.')
param eventTimeToLiveInMinutes int = 1440

// Storage Blob Data Contributor: the topic's identity writes dead-lettered events.
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  name: '${storageAccountName}/default/${deadLetterContainerName}'
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: systemTopicName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// Dead-lettering with the topic's identity, because the account refuses shared key (allowSharedKeyAccess).
resource deadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetterContainer.id, systemTopic.id, storageBlobDataContributor)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: systemTopic.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// The Flex Consumption blob trigger (source EventGrid) is called at the host's blobs webhook with the
// blobs_extension system key; the key exists only once the host has started with the deployed code, which
// is why deployEventSubscription waits for azd's postdeploy hook. Event Grid validates the endpoint when
// the subscription is created, which again needs the running code. ARM evaluates list* functions of a
// conditional resource even when the condition is false, hence the guard around listKeys.
var blobsExtensionKey = deployEventSubscription ? listKeys(resourceId('Microsoft.Web/sites/host', functionAppName, 'default'), '2023-12-01').systemKeys.blobs_extension : ''
var webhookUrl = 'https://${functionAppName}.azurewebsites.net/runtime/webhooks/blobs?functionName=Host.Functions.${functionName}&code=${blobsExtensionKey}'

resource exportCreated 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (deployEventSubscription) {
  parent: systemTopic
  name: 'exports-blob-created'
  dependsOn: [
    deadLetterWriter
  ]
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: webhookUrl
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      // The trailing slash keeps a container named e.g. exports-archive out.
      subjectBeginsWith: '/blobServices/default/containers/${exportContainerName}/'
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: storage.id
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}

output systemTopicName string = systemTopic.name
