// The relay's user-assigned managed identity. User-assigned rather than system-assigned so that its role
// assignments exist before the function app first starts, and survive re-creating the app. The app
// selects it with AZURE_CLIENT_ID and the `__clientId` of its identity-based connections.
@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region.')
param location string

@description('Tags for the identity.')
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
