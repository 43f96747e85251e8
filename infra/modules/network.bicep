// VNet mode (vnetEnabled): a virtual network with a subnet for the function app's VNet integration (delegated
// to Microsoft.App/environments, as Flex Consumption requires) and one for private endpoints: blob and queue
// of both storage accounts and the Key Vault, each with its privatelink DNS zone linked to the network, so
// the relay reaches them without public endpoints. Shape as in Microsoft's Flex Consumption azd samples.
@description('Virtual network name.')
param name string

@description('Azure region.')
param location string

@description('Tags for the network resources.')
param tags object

@description('Address space of the virtual network.')
param addressPrefix string = '10.40.0.0/16'

@description('Subnet for private endpoints.')
param privateEndpointSubnetPrefix string = '10.40.1.0/24'

@description('Subnet for the function app\'s VNet integration.')
param appSubnetPrefix string = '10.40.2.0/24'

@description('The Functions host\'s storage account (blob and queue endpoints).')
param hostStorageAccountName string

@description('The partner\'s export account (blob and queue endpoints).')
param exportStorageAccountName string

@description('Key Vault name.')
param keyVaultName string

resource hostAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: hostStorageAccountName
}

resource exportAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: exportStorageAccountName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-01-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'private-endpoints'
        properties: {
          addressPrefix: privateEndpointSubnetPrefix
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
      {
        name: 'app'
        properties: {
          addressPrefix: appSubnetPrefix
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
    ]
  }
}

// Storage zones follow the cloud's storage suffix; Key Vault's privatelink zone is vaultcore in Azure public cloud.
var zoneNames = [
  'privatelink.blob.${environment().suffixes.storage}'
  'privatelink.queue.${environment().suffixes.storage}'
  'privatelink.vaultcore.azure.net'
]

resource zones 'Microsoft.Network/privateDnsZones@2020-06-01' = [for zoneName in zoneNames: {
  name: zoneName
  location: 'global'
  tags: tags
}]

resource zoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [for i in range(0, length(zoneNames)): {
  parent: zones[i]
  name: '${name}-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}]

// One private endpoint per (resource, sub-resource); zoneIndex points into zoneNames.
var endpoints = [
  {
    name: 'pe-${hostStorageAccountName}-blob'
    target: hostAccount.id
    group: 'blob'
    zoneIndex: 0
  }
  {
    name: 'pe-${hostStorageAccountName}-queue'
    target: hostAccount.id
    group: 'queue'
    zoneIndex: 1
  }
  {
    name: 'pe-${exportStorageAccountName}-blob'
    target: exportAccount.id
    group: 'blob'
    zoneIndex: 0
  }
  {
    name: 'pe-${exportStorageAccountName}-queue'
    target: exportAccount.id
    group: 'queue'
    zoneIndex: 1
  }
  {
    name: 'pe-${keyVaultName}'
    target: vault.id
    group: 'vault'
    zoneIndex: 2
  }
]

resource privateEndpoints 'Microsoft.Network/privateEndpoints@2024-01-01' = [for endpoint in endpoints: {
  name: endpoint.name
  location: location
  tags: tags
  dependsOn: [
    vnet
  ]
  properties: {
    subnet: {
      id: resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, 'private-endpoints')
    }
    privateLinkServiceConnections: [
      {
        name: endpoint.name
        properties: {
          privateLinkServiceId: endpoint.target
          groupIds: [
            endpoint.group
          ]
        }
      }
    ]
  }
}]

resource zoneGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-01-01' = [for i in range(0, length(endpoints)): {
  parent: privateEndpoints[i]
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: endpoints[i].group
        properties: {
          privateDnsZoneId: zones[endpoints[i].zoneIndex].id
        }
      }
    ]
  }
}]

output appSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, 'app')
