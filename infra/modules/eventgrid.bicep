// Event Grid wiring for the Flex Consumption blob trigger: the system topic on the partner's export account,
// the role its identity dead-letters with (shared key is off), and two metric alerts: failed delivery attempts
// (early: the webhook refuses or is unreachable now) and dead-lettered events (after 24 h of retries).
@description('Event Grid system topic name.')
param systemTopicName string

@description('Azure region (the storage account\'s).')
param location string

@description('Tags for the topic.')
param tags object

@description('Partner storage account that raises the events.')
param storageAccountName string

@description('Container for events Event Grid could not deliver.')
param deadLetterContainerName string

@description('Action groups the alerts notify; empty for none.')
param actionGroupIds array

@minValue(1)
@description('Alert when Event Grid failed more than this many delivery attempts to the blob trigger within 15 minutes (a cold start can fail one attempt; Event Grid retries it).')
param deliveryFailureThreshold int = 3

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

// The subscription itself (BlobCreated on the export container -> the blobs_extension webhook of on_export,
// with retries and dead-lettering into deadLetterContainerName through the topic's identity) is created by
// azd's postdeploy hook (infra/hooks/postdeploy.sh), after the code is deployed: its webhook URL carries the
// host's blobs_extension system key, which exists only once the host runs the blob trigger, and Event Grid
// validates the endpoint on creation. Reading the key here (listKeys) in the same deployment that rewrites the
// site's settings fails with ServiceUnavailable often enough to break first and later provisions.

// Dead-lettered events: a broken webhook is otherwise silent while the timer sync catches up.
resource deadLetterAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'alert-deadletter-${systemTopicName}'
  location: 'global'
  tags: tags
  properties: {
    description: 'Event Grid dead-lettered a BlobCreated event for the relay (webhook unreachable or refusing); the timer sync still delivers the export. See docs/operations.md.'
    severity: 2
    enabled: true
    scopes: [
      systemTopic.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'dead-lettered'
          metricNamespace: 'Microsoft.EventGrid/systemTopics'
          metricName: 'DeadLetteredCount'
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Total'
        }
      ]
    }
    autoMitigate: true
    actions: [for id in actionGroupIds: {
      actionGroupId: id
    }]
  }
}

// Failed delivery attempts, minutes after they start (DeadLetteredCount comes only after 24 hours of retries):
// a stopped app, a changed blobs_extension key, a deleted function. AegDeliveryFailureLogs says why.
resource deliveryFailureAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'alert-delivery-failures-${systemTopicName}'
  location: 'global'
  tags: tags
  properties: {
    description: 'Event Grid failed to deliver BlobCreated events to the relay\'s webhook (more than ${deliveryFailureThreshold} attempts in 15 minutes); the timer sync still delivers the exports. See docs/operations.md.'
    severity: 2
    enabled: true
    scopes: [
      systemTopic.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'delivery-attempts-failed'
          metricNamespace: 'Microsoft.EventGrid/systemTopics'
          metricName: 'DeliveryAttemptFailCount'
          operator: 'GreaterThan'
          threshold: deliveryFailureThreshold
          timeAggregation: 'Total'
        }
      ]
    }
    autoMitigate: true
    actions: [for id in actionGroupIds: {
      actionGroupId: id
    }]
  }
}

output systemTopicName string = systemTopic.name
