# azd postdeploy hook (Windows): the same steps as postdeploy.sh, which documents them. Polls until the host
# has its blobs_extension key, then creates the Event Grid subscription to the blob trigger, unless one already
# delivers to this app, with the host's current key, and this filter. Keeps nothing in the azd environment; the
# key goes to Azure in a request body file, never on a command line or in output. Every az call names
# AZURE_SUBSCRIPTION_ID.
$ErrorActionPreference = 'Stop'

$SubscriptionName = 'exports-blob-created'
$FunctionName = 'on_export'
$Api = '2022-06-15'
$attempts = if ($env:RELAY_KEY_POLL_ATTEMPTS) { [int]$env:RELAY_KEY_POLL_ATTEMPTS } else { 30 }
$interval = if ($env:RELAY_KEY_POLL_SECONDS) { [int]$env:RELAY_KEY_POLL_SECONDS } else { 10 }

function Fail([string]$Message) {
    [Console]::Error.WriteLine("postdeploy: $Message")
    exit 1
}
foreach ($name in 'AZURE_SUBSCRIPTION_ID', 'AZURE_RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'EVENT_GRID_SYSTEM_TOPIC_NAME', 'EVENT_GRID_SUBJECT_PREFIX', 'EVENT_GRID_DEAD_LETTER_ACCOUNT_ID', 'EVENT_GRID_DEAD_LETTER_CONTAINER') {
    if (-not [Environment]::GetEnvironmentVariable($name)) { Fail "$name is not in the azd environment. Fix: run azd provision (or azd up) first." }
}
if (-not (Get-Command az -ErrorAction SilentlyContinue)) { Fail 'the Azure CLI (az) is not installed. Fix: install it and az login as the same principal azd uses.' }

$rg = $env:AZURE_RESOURCE_GROUP
$app = $env:AZURE_FUNCTION_APP_NAME
$prefix = $env:EVENT_GRID_SUBJECT_PREFIX
$sub = $env:AZURE_SUBSCRIPTION_ID
$resource = "/subscriptions/$sub/resourceGroups/$rg/providers/Microsoft.EventGrid/systemTopics/$($env:EVENT_GRID_SYSTEM_TOPIC_NAME)/eventSubscriptions/$SubscriptionName"
$url = "$resource`?api-version=$Api"
$base = "https://$app.azurewebsites.net/runtime/webhooks/blobs"

function Get-Current {
    $out = az rest --method get --url $url --query '[properties.destination.properties.endpointBaseUrl, properties.filter.subjectBeginsWith, properties.provisioningState]' --output tsv 2>$null
    if ($LASTEXITCODE -ne 0 -or -not $out) { return @('', '', '') }
    return (($out -join "`t") -split "`t")
}

try { Invoke-WebRequest -Uri "https://$app.azurewebsites.net/" -TimeoutSec 60 -UseBasicParsing | Out-Null } catch { }

$key = ''
$last = ''
$errorFile = New-TemporaryFile
for ($i = 1; $i -le $attempts; $i++) {
    $key = az functionapp keys list --subscription $sub --resource-group $rg --name $app --query systemKeys.blobs_extension --output tsv 2>$errorFile
    if ($LASTEXITCODE -eq 0 -and $key) { break }
    $key = ''
    $last = (Get-Content -Path $errorFile -TotalCount 1 -ErrorAction SilentlyContinue) -join ''
    Write-Host "postdeploy: waiting for the host's blobs_extension key ($i/$attempts)"
    if ($i -lt $attempts) { Start-Sleep -Seconds $interval }
}
Remove-Item -Path $errorFile -Force -ErrorAction SilentlyContinue
if (-not $key) {
    $detail = if ($last) { " (last answer: $last)" } else { '' }
    Fail "the host of $app has no blobs_extension key after $attempts tries $($interval)s apart: the blob trigger has not started$detail. Fix: check the deployment (azd deploy output, the app's log stream, Application Insights traces for indexing errors), then run azd hooks run postdeploy."
}

$webhook = "$base`?functionName=Host.Functions.$FunctionName&code=$key"
$current = Get-Current
if ($current[0] -eq $base -and $current[1] -eq $prefix -and $current[2] -eq 'Succeeded') {
    # Event Grid returns the URL with its key only on request (getFullUrl); compared here, never printed.
    $full = az rest --method post --url "$resource/getFullUrl`?api-version=$Api" --query endpointUrl --output tsv 2>$null
    if ($LASTEXITCODE -eq 0 -and $full -eq $webhook) {
        Write-Host "postdeploy: Event Grid subscription $SubscriptionName already delivers to $app; unchanged."
        exit 0
    }
}

$body = @{
    properties = @{
        destination = @{ endpointType = 'WebHook'; properties = @{
                endpointUrl = $webhook
                maxEventsPerBatch = 1; preferredBatchSizeInKilobytes = 64 } }
        eventDeliverySchema = 'EventGridSchema'
        filter = @{ includedEventTypes = @('Microsoft.Storage.BlobCreated'); subjectBeginsWith = $prefix }
        retryPolicy = @{ maxDeliveryAttempts = 30; eventTimeToLiveInMinutes = 1440 }
        deadLetterWithResourceIdentity = @{ identity = @{ type = 'SystemAssigned' }; deadLetterDestination = @{
                endpointType = 'StorageBlob'
                properties = @{ resourceId = $env:EVENT_GRID_DEAD_LETTER_ACCOUNT_ID; blobContainerName = $env:EVENT_GRID_DEAD_LETTER_CONTAINER } } }
    }
} | ConvertTo-Json -Depth 8
$key = ''
$webhook = ''
$full = ''
$file = New-TemporaryFile
try {
    Set-Content -Path $file -Value $body -Encoding utf8
    $err = az rest --method put --url $url --body "@$file" --output none 2>&1
    if ($LASTEXITCODE -ne 0) { Fail "creating the Event Grid subscription was refused: $(("$err" -split "`n")[0]). Fix: see docs/deploy.md (troubleshooting the first deploy), then run azd hooks run postdeploy." }
} finally {
    Remove-Item -Path $file -Force -ErrorAction SilentlyContinue
}

for ($i = 1; $i -le $attempts; $i++) {
    $current = Get-Current
    if ($current[2] -eq 'Succeeded') {
        Write-Host "postdeploy: Event Grid subscription $SubscriptionName delivers BlobCreated in $prefix to $app."
        exit 0
    }
    if ($current[2] -in @('Failed', 'Canceled')) { Fail "Event Grid could not validate the webhook of $app (provisioning state $($current[2])). Fix: check that on_export is indexed (Application Insights traces), then run azd hooks run postdeploy." }
    if ($i -lt $attempts) { Start-Sleep -Seconds $interval }
}
Fail "the Event Grid subscription $SubscriptionName is still not Succeeded after $attempts checks. Fix: look at it in the portal (Event Grid system topic $($env:EVENT_GRID_SYSTEM_TOPIC_NAME)), then run azd hooks run postdeploy."
