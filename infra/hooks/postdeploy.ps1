# azd postdeploy hook (Windows): see postdeploy.sh. Creates the Event Grid subscription to the blob
# trigger once the deployed host has its blobs_extension key.
$ErrorActionPreference = 'Stop'

if ($env:DEPLOY_EVENT_SUBSCRIPTION -eq 'true') {
    Write-Host 'Event Grid subscription already enabled.'
    exit 0
}
if ($env:AZURE_FUNCTION_APP_NAME) {
    try {
        Invoke-WebRequest -Uri "https://$($env:AZURE_FUNCTION_APP_NAME).azurewebsites.net/" -TimeoutSec 60 -UseBasicParsing | Out-Null
    } catch { }
}
azd env set DEPLOY_EVENT_SUBSCRIPTION true
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
azd provision --no-prompt
exit $LASTEXITCODE
