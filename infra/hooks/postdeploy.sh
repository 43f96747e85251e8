#!/bin/sh
# azd postdeploy hook: the Event Grid subscription that feeds the blob trigger (BlobCreated in the export
# container -> the blobs_extension webhook of on_export, dead-lettering with the topic's identity).
# It runs after the code is deployed because the webhook URL carries the host's blobs_extension system key,
# which exists only once the host runs the blob trigger; the hook polls for the key until it exists.
# Idempotent: a subscription that already delivers to this app, with its current key, and this filter is left
# alone; one with a stale key (host keys renewed) or another endpoint is updated. Nothing is stored in the azd
# environment: whether to create is decided by asking Azure, so `azd down` + `azd up` works.
# The key never appears on the command line or in output: it goes to Azure in a request body file (mode 600).
# Every az call names the subscription azd deploys to (AZURE_SUBSCRIPTION_ID), not the Azure CLI's default.
set -eu

SUBSCRIPTION_NAME=exports-blob-created
FUNCTION_NAME=on_export
API=2022-06-15
attempts="${RELAY_KEY_POLL_ATTEMPTS:-30}"
interval="${RELAY_KEY_POLL_SECONDS:-10}"

fail() {
  echo "postdeploy: $*" >&2
  exit 1
}
for name in AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP AZURE_FUNCTION_APP_NAME EVENT_GRID_SYSTEM_TOPIC_NAME EVENT_GRID_SUBJECT_PREFIX \
  EVENT_GRID_DEAD_LETTER_ACCOUNT_ID EVENT_GRID_DEAD_LETTER_CONTAINER; do
  eval "value=\${$name:-}"
  [ -n "$value" ] || fail "$name is not in the azd environment. Fix: run azd provision (or azd up) first."
done
command -v az >/dev/null 2>&1 || fail "the Azure CLI (az) is not installed. Fix: install it and az login as the same principal azd uses."

rg="$AZURE_RESOURCE_GROUP"
app="$AZURE_FUNCTION_APP_NAME"
sub="$AZURE_SUBSCRIPTION_ID"
resource="/subscriptions/$sub/resourceGroups/$rg/providers/Microsoft.EventGrid/systemTopics/$EVENT_GRID_SYSTEM_TOPIC_NAME/eventSubscriptions/$SUBSCRIPTION_NAME"
url="$resource?api-version=$API"
base="https://$app.azurewebsites.net/runtime/webhooks/blobs"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
umask 077

# "<endpoint base URL> <subject prefix> <provisioning state>" of the existing subscription, or empty.
current() {
  az rest --method get --url "$url" --query "[properties.destination.properties.endpointBaseUrl, properties.filter.subjectBeginsWith, properties.provisioningState]" --output tsv 2>/dev/null | tr '\t\n' '  ' || true
}

# Flex Consumption starts an instance on demand: a request wakes the host so it writes its system keys.
if command -v curl >/dev/null 2>&1; then
  curl --silent --output /dev/null --max-time 60 "https://$app.azurewebsites.net/" || true
fi

key=""
i=0
while [ "$i" -lt "$attempts" ]; do
  i=$((i + 1))
  key="$(az functionapp keys list --subscription "$sub" --resource-group "$rg" --name "$app" --query systemKeys.blobs_extension --output tsv 2>"$work/error")" || key=""
  [ -n "$key" ] && break
  echo "postdeploy: waiting for the host's blobs_extension key ($i/$attempts)"
  if [ "$i" -lt "$attempts" ]; then sleep "$interval"; fi
done
if [ -z "$key" ]; then
  last="$(head -n 1 "$work/error" 2>/dev/null || true)"
  fail "the host of $app has no blobs_extension key after $attempts tries ${interval}s apart: the blob trigger has not started${last:+ (last answer: $last)}. Fix: check the deployment (azd deploy output, the app's log stream, Application Insights traces for indexing errors), then run azd hooks run postdeploy."
fi

webhook="$base?functionName=Host.Functions.$FUNCTION_NAME&code=$key"
set -- $(current)
if [ "${1:-}" = "$base" ] && [ "${2:-}" = "$EVENT_GRID_SUBJECT_PREFIX" ] && [ "${3:-}" = "Succeeded" ]; then
  # Event Grid returns the URL with its key only on request (getFullUrl); compared here, never printed.
  full="$(az rest --method post --url "$resource/getFullUrl?api-version=$API" --query endpointUrl --output tsv 2>/dev/null || true)"
  if [ "$full" = "$webhook" ]; then
    echo "postdeploy: Event Grid subscription $SUBSCRIPTION_NAME already delivers to $app; unchanged."
    exit 0
  fi
fi

cat >"$work/body.json" <<JSON
{"properties": {
  "destination": {"endpointType": "WebHook", "properties": {
    "endpointUrl": "$webhook",
    "maxEventsPerBatch": 1, "preferredBatchSizeInKilobytes": 64}},
  "eventDeliverySchema": "EventGridSchema",
  "filter": {"includedEventTypes": ["Microsoft.Storage.BlobCreated"], "subjectBeginsWith": "$EVENT_GRID_SUBJECT_PREFIX"},
  "retryPolicy": {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440},
  "deadLetterWithResourceIdentity": {"identity": {"type": "SystemAssigned"}, "deadLetterDestination": {
    "endpointType": "StorageBlob",
    "properties": {"resourceId": "$EVENT_GRID_DEAD_LETTER_ACCOUNT_ID", "blobContainerName": "$EVENT_GRID_DEAD_LETTER_CONTAINER"}}}
}}
JSON
key=""
webhook=""
full=""
az rest --method put --url "$url" --body "@$work/body.json" --output none 2>"$work/error" ||
  fail "creating the Event Grid subscription was refused: $(head -n 1 "$work/error"). Fix: see docs/deploy.md (troubleshooting the first deploy), then run azd hooks run postdeploy."

# Event Grid validates the webhook (the host answers the handshake) before the subscription is Succeeded.
i=0
while [ "$i" -lt "$attempts" ]; do
  i=$((i + 1))
  set -- $(current)
  case "${3:-}" in
    Succeeded)
      echo "postdeploy: Event Grid subscription $SUBSCRIPTION_NAME delivers BlobCreated in $EVENT_GRID_SUBJECT_PREFIX to $app."
      exit 0 ;;
    Failed | Canceled)
      fail "Event Grid could not validate the webhook of $app (provisioning state ${3}). Fix: check that on_export is indexed (Application Insights traces), then run azd hooks run postdeploy." ;;
  esac
  if [ "$i" -lt "$attempts" ]; then sleep "$interval"; fi
done
fail "the Event Grid subscription $SUBSCRIPTION_NAME is still not Succeeded after $attempts checks. Fix: look at it in the portal (Event Grid system topic $EVENT_GRID_SYSTEM_TOPIC_NAME), then run azd hooks run postdeploy."
