// Monitoring: Log Analytics (optional daily cap), workspace-based Application Insights with local (key) auth
// disabled (the app sends telemetry with its identity: Monitoring Metrics Publisher in rbac.bicep), the relay's
// workbook, the action group (e-mail and/or webhook; existing action groups can be passed in), and the log alerts
// for every way the relay stops delivering: a poisoned delivery, a broken link, a failed invocation, the blob
// trigger's poison queue, the signing key nearing its expiry or rotation date, and no successful sync (quiet after
// a deployment until the first one). Each query is a file in infra/queries/ that `make lint-infra` and
// tests/test_log_fields.py hold against the relay's own log records. The Event Grid alerts are in eventgrid.bicep.
@description('Azure region.')
param location string

@description('Tags for the monitoring resources.')
param tags object

@description('Log Analytics workspace name.')
param logAnalyticsName string

@description('Application Insights component name.')
param applicationInsightsName string

@minValue(30)
@maxValue(730)
@description('Days Log Analytics keeps the relay\'s logs.')
param retentionInDays int = 30

@description('Daily ingestion cap of the workspace in GB (LOG_DAILY_CAP_GB, e.g. 0.5); empty for none. When the cap is reached, ingestion stops until the next day: the relay\'s log lines, and so the log alerts, too.')
param dailyCapGb string = ''

@description('E-mail address that receives alerts; empty for none.')
param alertEmail string

@secure()
@description('Webhook (e.g. a Teams or on-call URL) that receives alerts, common alert schema; empty for none. Secure: it often carries a token.')
param alertWebhookUrl string = ''

@description('Resource ids of existing action groups to notify as well (ALERT_ACTION_GROUP_IDS, comma-separated in azd).')
param alertActionGroupIds array = []

@minValue(15)
@maxValue(2880)
@description('Minutes without a `sync summary outcome=ok` log line before the no-sync alert fires.')
param noSuccessfulSyncMinutes int

@description('When this deployment ran (UTC, sortable); the no-sync alert stays quiet from then until the first successful sync.')
param deployedAt string

@minValue(1)
@maxValue(180)
@description('Alert when the signing key or certificate expires, or a registered key is due for rotation, within this many days.')
param keyExpiryWarningDays int = 30

@description('The partner\'s export account: its queue logs show the blob trigger\'s poison queue.')
param exportStorageAccountName string

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    workspaceCapping: {
      dailyQuotaGb: empty(dailyCapGb) ? -1 : json(dailyCapGb)
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    IngestionMode: 'LogAnalytics'
    // No instrumentation-key ingestion: only Entra-authenticated telemetry is accepted, so the connection
    // string in the app settings is not a credential.
    DisableLocalAuth: true
  }
}

var notifies = !empty(alertEmail) || !empty(alertWebhookUrl)

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (notifies) {
  name: 'ag-${applicationInsightsName}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'relay'
    enabled: true
    emailReceivers: empty(alertEmail) ? [] : [
      {
        name: 'relay-operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
    webhookReceivers: empty(alertWebhookUrl) ? [] : [
      {
        name: 'relay-webhook'
        serviceUri: alertWebhookUrl
        useCommonAlertSchema: true
      }
    ]
  }
}

var actionGroups = concat(notifies ? [
  actionGroup.id
] : [], alertActionGroupIds)

// The relay's workbook: deliveries, latency, outcomes, links, tokens, last sync, key expiry, failures.
resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, applicationInsightsName, 'skyporten-relay-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'Skyporten relay'
    category: 'workbook'
    sourceId: appInsights.id
    serializedData: replace(replace(loadTextContent('../workbooks/relay.workbook.json'), '__APPINSIGHTS_ID__', appInsights.id), '__WORKSPACE_ID__', workspace.id)
  }
}

// Stateless rules (autoMitigate false) fire once per evaluation that finds rows: one alert per poisoned delivery
// batch, per broken period of a link. Stateful ones (autoMitigate true) fire once and resolve when the condition ends.
resource poisonedAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-poisoned-${applicationInsightsName}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Skyporten relay: poisoned delivery'
    description: 'An export was given up after MAX_ATTEMPTS delivery attempts (delivery outcome=poisoned). Run `status`, fix the cause, then `retry`.'
    severity: 1
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: loadTextContent('../queries/poisoned.kql')
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: actionGroups
    }
  }
}

// One `link broken` line per broken period (and `link restored` when it heals): each line is one alert, per link.
resource linkBrokenAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-link-broken-${applicationInsightsName}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Skyporten relay: a link is broken'
    description: 'A link broke (Key Vault, the signing key, Skyporten, Entra, Bane NOR\'s storage, the export account or the ledger); the alert carries the link, the status, the error code and the cause. Run `doctor` for the fix.'
    severity: 1
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: loadTextContent('../queries/link-broken.kql')
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'link'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: actionGroups
    }
  }
}

// A failed invocation of on_export or sync (the host retries the blob trigger; the sync logs its own summary).
resource functionFailureAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-function-failures-${applicationInsightsName}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Skyporten relay: function invocations failed'
    description: 'on_export or sync failed (Application Insights requests with success == false); resolves after 15 minutes without failures.'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: loadTextContent('../queries/function-failures.kql')
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'operation_Name'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

// The blob trigger's poison queue, from the export account's queue logs (StorageQueueLogs in the workspace).
resource poisonQueueAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-poison-queue-${applicationInsightsName}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Skyporten relay: blob trigger poison queue'
    description: 'The blob trigger gave up on an export and wrote it to webjobs-blobtrigger-poison; the timer sync still tries it. Run `status`.'
    severity: 2
    enabled: true
    scopes: [
      workspace.id
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: replace(loadTextContent('../queries/poison-queue.kql'), '__ACCOUNT__', exportStorageAccountName)
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: actionGroups
    }
  }
}

// The key the relay loads (every SIGNING_KEY_CACHE_SECONDS while it works) expires or is due for rotation soon.
resource keyExpiryAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-key-expiry-${applicationInsightsName}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Skyporten relay: signing key expires soon'
    description: 'The Maskinporten key or certificate expires, or the registered key is due for rotation, within ${keyExpiryWarningDays} days. Follow docs/key-rotation.md.'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'PT6H'
    criteria: {
      allOf: [
        {
          query: replace(loadTextContent('../queries/key-expiry.kql'), '__DAYS__', string(keyExpiryWarningDays))
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'name'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

// No successful sync: the query looks back two days itself (overrideQueryTimeRange) and returns one row when the
// last `sync summary outcome=ok` is older than the configured minutes, once armed: by the first successful sync
// after this deployment, or two days after it (infra/queries/no-sync.kql).
resource noSyncAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-no-sync-${applicationInsightsName}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Skyporten relay: no successful sync'
    description: 'No sync has finished with outcome=ok in the last ${noSuccessfulSyncMinutes} minutes (quiet after a deployment until the first successful sync).'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    overrideQueryTimeRange: 'P2D'
    criteria: {
      allOf: [
        {
          query: replace(replace(loadTextContent('../queries/no-sync.kql'), '__MINUTES__', string(noSuccessfulSyncMinutes)), '__DEPLOYED__', deployedAt)
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

output applicationInsightsName string = appInsights.name
output connectionString string = appInsights.properties.ConnectionString
output workspaceId string = workspace.id
output actionGroupIds array = actionGroups
output workbookId string = workbook.id
