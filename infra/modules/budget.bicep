// Optional monthly cost budget on the relay's resource group (BUDGET_AMOUNT > 0): e-mails at 80 % of the actual
// cost and at 100 % of the forecast. Its start is the first day of a month and stays fixed (BUDGET_START_DATE,
// set once by the preprovision hook).
@description('Budget name.')
param name string

@minValue(1)
@description('Monthly amount, in the billing currency of the subscription.')
param amount int

@description('First day of the month the budget starts (yyyy-MM-dd).')
param startDate string

@description('E-mail addresses notified (with actionGroupIds, at least one of the two).')
param contactEmails array

@description('Action groups notified as well.')
param actionGroupIds array

resource budget 'Microsoft.Consumption/budgets@2023-11-01' = {
  name: name
  properties: {
    category: 'Cost'
    amount: amount
    timeGrain: 'Monthly'
    timePeriod: {
      startDate: startDate
    }
    notifications: {
      actual80: {
        enabled: true
        operator: 'GreaterThanOrEqualTo'
        threshold: 80
        thresholdType: 'Actual'
        contactEmails: contactEmails
        contactGroups: actionGroupIds
      }
      forecast100: {
        enabled: true
        operator: 'GreaterThanOrEqualTo'
        threshold: 100
        thresholdType: 'Forecasted'
        contactEmails: contactEmails
        contactGroups: actionGroupIds
      }
    }
  }
}
