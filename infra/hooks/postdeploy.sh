#!/bin/sh
# azd postdeploy hook: once the code runs, create the Event Grid subscription to the blob trigger.
# The subscription needs the host's blobs_extension key, which exists only after the host has started
# with the blob trigger, so the first `azd up` provisions without it and this hook provisions again.
set -eu

if [ "${DEPLOY_EVENT_SUBSCRIPTION:-false}" = "true" ]; then
  echo "Event Grid subscription already enabled."
  exit 0
fi

# Wake the host so it creates its system keys (Flex Consumption starts an instance on demand).
if [ -n "${AZURE_FUNCTION_APP_NAME:-}" ]; then
  curl --silent --output /dev/null --max-time 60 "https://${AZURE_FUNCTION_APP_NAME}.azurewebsites.net/" || true
fi

azd env set DEPLOY_EVENT_SUBSCRIPTION true
azd provision --no-prompt
