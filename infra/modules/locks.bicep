// Optional delete locks (LOCK_RESOURCES=true) on what holds the partner's state: the Key Vault with the signing key
// and the export account with the ledger (receipts: what was delivered). `azd down` deletes the resource group, and
// with it the ledger; with the locks it fails instead, until someone removes them on purpose (docs/deploy.md).
@description('Key Vault name.')
param keyVaultName string

@description('The partner\'s export account (exports and the ledger).')
param storageAccountName string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource vaultLock 'Microsoft.Authorization/locks@2020-05-01' = {
  name: 'relay-keep-signing-key'
  scope: vault
  properties: {
    level: 'CanNotDelete'
    notes: 'Holds the Maskinporten signing key. Remove this lock before azd down (docs/deploy.md).'
  }
}

resource accountLock 'Microsoft.Authorization/locks@2020-05-01' = {
  name: 'relay-keep-ledger'
  scope: account
  properties: {
    level: 'CanNotDelete'
    notes: 'Holds the exports and the delivery ledger. Remove this lock before azd down (docs/deploy.md).'
  }
}
