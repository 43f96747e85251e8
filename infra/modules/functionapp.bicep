// The relay's function app on Flex Consumption (python 3.11): plan, site with functionAppConfig, and the
// app settings. Every connection is identity-based with the user-assigned identity (no keys or connection
// strings with secrets); relay settings come from main.bicep's parameters.
@description('Function app name (also the host name <name>.azurewebsites.net).')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Azure region.')
param location string

@description('Tags; the site also gets azd-service-name=relay so `azd deploy` finds it.')
param tags object

@description('Resource id of the user-assigned managed identity.')
param identityId string

@description('Client id of the user-assigned managed identity (AZURE_CLIENT_ID and the connections\' clientId).')
param identityClientId string

@description('The Functions host\'s own storage account: AzureWebJobsStorage and the deployment package.')
param hostStorageAccountName string

@description('The partner\'s export account: the blob trigger\'s connection (EXPORT_STORAGE).')
param exportStorageAccountName string

@description('Subnet for VNet integration (vnetEnabled); empty for none.')
param virtualNetworkSubnetId string

@description('Container Flex Consumption deploys the app package to.')
param deploymentContainerName string

@description('Application Insights connection string (not a credential: the component has local auth disabled).')
param applicationInsightsConnectionString string

@minValue(40)
@maxValue(1000)
@description('Upper bound of instances.')
param maximumInstanceCount int

@description('Memory per instance in MB.')
param instanceMemoryMB int

@description('The relay\'s own settings (BANENOR_*, MASKINPORTEN_*, SIGNING_KEY_*, ...), built in main.bicep.')
param relaySettings object

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: hostStorageAccountName
}

resource exportStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: exportStorageAccountName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: Flex Consumption zone redundancy is region-dependent and bills always-ready instances; a missed event is caught by Event Grid retries and the timer sync
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

var hostSettings = {
  // Host storage, identity-based (https://learn.microsoft.com/azure/azure-functions/functions-reference
  // #connecting-to-host-storage-with-an-identity): no AzureWebJobsStorage connection string.
  AzureWebJobsStorage__accountName: hostStorage.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // The blob trigger's connection (EXPORT_STORAGE), identity-based, to the partner's export account. A blob
  // trigger needs the queue service URI too: it keeps its poison queue (webjobs-blobtrigger-poison) there.
  EXPORT_STORAGE__blobServiceUri: exportStorage.properties.primaryEndpoints.blob
  EXPORT_STORAGE__queueServiceUri: exportStorage.properties.primaryEndpoints.queue
  EXPORT_STORAGE__credential: 'managedidentity'
  EXPORT_STORAGE__clientId: identityClientId
  // Flex Consumption's Event Grid-based blob trigger; the subscription is in eventgrid.bicep.
  BLOB_TRIGGER_SOURCE: 'EventGrid'
  // DefaultAzureCredential / ManagedIdentityCredential in the relay pick the user-assigned identity.
  AZURE_CLIENT_ID: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  // Entra-authenticated telemetry (the component has DisableLocalAuth).
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
}
var appSettings = union(relaySettings, hostSettings)

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: Event Grid delivers to the blobs_extension webhook over the public endpoint (also with vnetEnabled, which covers outbound traffic); the webhook needs the system key
  // checkov:skip=CKV_AZURE_17: Event Grid cannot present a client certificate to the webhook; it authenticates with the blobs_extension key
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero by design; a cold start delays an event, Event Grid retries it, and the timer sync catches anything missed
  // checkov:skip=CKV_AZURE_213: The app has no HTTP endpoint of its own to probe (blob and timer triggers only); failures surface through the alerts in monitoring.bicep
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'relay'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // VNet mode: outbound traffic (storage, Key Vault through private endpoints) goes through this subnet.
    virtualNetworkSubnetId: empty(virtualNetworkSubnetId) ? null : virtualNetworkSubnetId
    clientCertEnabled: false
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(appSettings): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// No publishing with user name and password: azd deploys with Entra ID.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}



output name string = site.name
output id string = site.id
output defaultHostName string = site.properties.defaultHostName
