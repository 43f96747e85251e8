// Monitoring: Log Analytics, workspace-based Application Insights with local (key) auth disabled (the app
// sends telemetry with its identity: Monitoring Metrics Publisher in rbac.bicep), an optional e-mail action
// group, and two log alerts on the relay's own log lines: poisoned deliveries, and no successful sync.
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

@description('E-mail address that receives alerts; empty for none.')
param alertEmail string

@minValue(15)
@maxValue(2880)
@description('Minutes without a `sync summary ... outcome=ok` log line before the no-sync alert fires.')
param noSuccessfulSyncMinutes int

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
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

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-${applicationInsightsName}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'relay'
    enabled: true
    emailReceivers: [
      {
        name: 'relay-operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var actionGroups = empty(alertEmail) ? [] : [
  actionGroup.id
]

// The relay logs `outcome=poisoned` when an export has used up MAX_ATTEMPTS: a person must look at it.
resource poisonedAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-poisoned-${applicationInsightsName}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Skyporten relay: poisoned delivery'
    description: 'An export was given up after MAX_ATTEMPTS delivery attempts (log line with outcome=poisoned).'
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
          query: 'traces | where message contains "outcome=poisoned"'
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

// The timer logs one `sync summary ... outcome=ok` line per successful run. The query counts them over
// the configured minutes itself (overrideQueryTimeRange widens the data it may see to two days), so the
// rule fires when that count is zero: stopped timer, broken trust chain, or a failing gateway.
resource noSyncAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-no-sync-${applicationInsightsName}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Skyporten relay: no successful sync'
    description: 'No sync has finished with outcome=ok in the last ${noSuccessfulSyncMinutes} minutes.'
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
          query: 'traces | where timestamp > ago(${noSuccessfulSyncMinutes}m) | where message contains "sync summary" and message contains "outcome=ok" | summarize Successes = count()'
          timeAggregation: 'Total'
          metricMeasureColumn: 'Successes'
          operator: 'LessThan'
          threshold: 1
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
