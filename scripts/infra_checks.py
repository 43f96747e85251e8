"""Offline checks of infra/ that a Bicep compiler would not make (run by scripts/lint-infra.sh; stdlib only).

- regions: main.bicep's allowed `location`s (Flex Consumption), its zone-redundant list and the preprovision
  hooks' lists agree, include Norway East, and zone regions are Flex regions;
- export roles: the relay's roles on the partner's export account (infra/modules/rbac-exports.bicep) are no
  wider than the settings need, and no other module gives the relay a role there;
- key polling: the Event Grid subscription is made by the postdeploy hooks, which poll for the
  blobs_extension key; no template reads host keys (listKeys) or declares the subscription;
- host.json: Application Insights does not sample traces (the alerts hang on single trace lines);
- queries: every KQL query in infra/ (infra/queries/*.kql, the workbook) and docs/ reads only tables and columns
  that exist, and from the relay's own lines only the key=value fields those lines carry (RELAY_RECORDS, which
  tests/test_log_fields.py holds against the records the code emits);
- monitoring: the workbook; an alert for each way the relay stops (Event Grid delivery failures and dead letters
  with metric names of Microsoft.EventGrid/systemTopics, function failures, the poison queue, a broken link, the
  key's expiry, no successful sync quiet until the first one after a deployment); alert recipients (e-mail,
  webhook, existing action groups); resource logs into resource-specific tables (Dedicated);
- deployment: the hooks' az calls name the subscription; azure.yaml requires an azd version; optional locks,
  budget and daily cap; the operator's roles no wider than doctor, status and send need; requirements.txt pins
  exact versions.
Each check returns a list of problems, each naming the file and the fix.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# The only role assignments rbac-exports.bicep may declare: (resource symbol, role, scope, condition).
# Conditions are compared with whitespace removed.
EXPORT_ROLES = {
    "exportsRead": ("roles.storageBlobDataReader", "exportContainer", "!removesExports"),
    "exportsReadDelete": ("custom:exportReaderDeleter", "exportContainer", "removesExports"),
    "ledgerWrite": ("roles.storageBlobDataContributor", "ledgerContainer", None),
    "archiveWrite": ("roles.storageBlobDataContributor", "archiveContainer", "afterDelivery=='archive'"),
    "poisonQueueWrite": ("roles.storageQueueDataContributor", "poisonQueue", None),
    "delegator": ("roles.storageBlobDelegator", "account", "signsSas"),
}
EXPORT_VARS = {
    # archive moves the original (copy, then delete); delete deletes it; nothing else removes exports.
    "removesExports": "afterDelivery=='archive'||afterDelivery=='delete'",
    # a user delegation SAS is signed for server-side copy and for the archive copy.
    "signsSas": "copyMode!='stream'||afterDelivery=='archive'",
}
CUSTOM_ROLE_DATA_ACTIONS = {
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete",
}
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _quoted_list(block: str) -> list[str]:
    return re.findall(r"'([a-z0-9]+)'", block)


def bicep_allowed_locations(main_bicep: str) -> list[str]:
    # The @allowed list right before `param location` (no other param in between).
    match = re.search(r"@allowed\(\[(?P<list>[^\]]*)\]\)(?:(?!\nparam ).)*\nparam location string", main_bicep, re.S)
    return _quoted_list(match.group("list")) if match else []


def bicep_zone_regions(main_bicep: str) -> list[str]:
    match = re.search(r"var zoneRedundantRegions = \[(?P<list>[^\]]*)\]", main_bicep)
    return _quoted_list(match.group("list")) if match else []


def sh_list(script: str, name: str) -> list[str]:
    match = re.search(rf'^{name}="([^"]*)"', script, re.M)
    return match.group(1).split() if match else []


def ps1_list(script: str, name: str) -> list[str]:
    match = re.search(rf"^\${name} = @\(([^)]*)\)", script, re.M)
    return re.findall(r"'([a-z0-9]+)'", match.group(1)) if match else []


def check_regions(main_bicep: str, pre_sh: str, pre_ps1: str) -> list[str]:
    problems = []
    flex = bicep_allowed_locations(main_bicep)
    zones = bicep_zone_regions(main_bicep)
    if not flex:
        return ["infra/main.bicep: `param location` has no @allowed list of Flex Consumption regions; add one"]
    if "norwayeast" not in flex:
        problems.append("infra/main.bicep: norwayeast is missing from the allowed locations")
    if not zones:
        problems.append("infra/main.bicep: no `var zoneRedundantRegions` list; the storage SKU cannot follow the "
                        "region")
    if not set(zones) <= set(flex):
        extra = sorted(set(zones) - set(flex))
        problems.append(f"infra/main.bicep: zoneRedundantRegions lists non-Flex regions: {extra}")
    for path, got_flex, got_zones in (
        ("infra/hooks/preprovision.sh", sh_list(pre_sh, "FLEX_REGIONS"), sh_list(pre_sh, "ZONE_REGIONS")),
        ("infra/hooks/preprovision.ps1", ps1_list(pre_ps1, "FlexRegions"), ps1_list(pre_ps1, "ZoneRegions")),
    ):
        if sorted(got_flex) != sorted(flex):
            problems.append(f"{path}: its Flex region list differs from main.bicep's allowed locations "
                            f"(only in hook: {sorted(set(got_flex) - set(flex))}, only in main.bicep: "
                            f"{sorted(set(flex) - set(got_flex))}); make them the same")
        if sorted(got_zones) != sorted(zones):
            problems.append(f"{path}: its zone region list differs from main.bicep's zoneRedundantRegions; make them "
                            "the same")
    return problems


def _resources(bicep: str) -> dict[str, tuple[str, str | None, str]]:
    """symbol -> (type@version, condition or None, body) for each top-level resource."""
    found = {}
    pattern = re.compile(r"^resource (\w+) '([^']+)'(?: existing)? = (?:if \((.*?)\) )?\{", re.M)
    for match in pattern.finditer(bicep):
        depth, i = 0, match.end() - 1
        for i in range(match.end() - 1, len(bicep)):
            depth += {"{": 1, "}": -1}.get(bicep[i], 0)
            if depth == 0:
                break
        found[match.group(1)] = (match.group(2), match.group(3), bicep[match.end():i])
    return found


def check_export_roles(rbac_exports: str, main_bicep: str) -> list[str]:
    path = "infra/modules/rbac-exports.bicep"
    problems = []
    if STORAGE_BLOB_DATA_OWNER in rbac_exports:
        problems.append(f"{path}: Storage Blob Data Owner on the export account; use the narrow roles")
    for name, expected in EXPORT_VARS.items():
        match = re.search(rf"^var {name} = (.*)$", rbac_exports, re.M)
        if not match or _squash(match.group(1)) != expected:
            problems.append(f"{path}: var {name} must be `{expected}` (which settings need this access)")
    resources = _resources(rbac_exports)
    assignments = {k: v for k, v in resources.items() if v[0].startswith("Microsoft.Authorization/roleAssignments@")}
    for symbol, (_, condition, body) in assignments.items():
        if symbol not in EXPORT_ROLES:
            problems.append(f"{path}: role assignment {symbol} is not one the settings need; remove it or justify it "
                            "in scripts/infra_checks.py EXPORT_ROLES")
            continue
        role, scope, wanted = EXPORT_ROLES[symbol]
        got_scope = re.search(r"^\s*scope: (\w+)", body, re.M)
        if not got_scope or got_scope.group(1) != scope:
            problems.append(f"{path}: {symbol} must be scoped to {scope}, not {got_scope and got_scope.group(1)}")
        if role.startswith("custom:"):
            if "guid(resourceGroup().id, 'skyporten-relay-export-reader-deleter')" not in body:
                problems.append(f"{path}: {symbol} must use the custom export reader-deleter role")
        elif f"roleDefinitions', {role})" not in body:
            problems.append(f"{path}: {symbol} must grant {role.split('.')[1]}")
        if (_squash(condition) if condition else None) != wanted:
            problems.append(f"{path}: {symbol} must be conditional on `{wanted}`, not `{condition}`")
    for symbol in EXPORT_ROLES:
        if symbol not in assignments:
            problems.append(f"{path}: role assignment {symbol} is missing")
    custom = resources.get("exportReaderDeleter")
    if custom is None:
        problems.append(f"{path}: the custom export reader-deleter role definition is missing")
    else:
        data = re.search(r"dataActions: \[(.*?)\]", custom[2], re.S)
        actions = set(re.findall(r"'([^']+)'", data.group(1))) if data else set()
        if actions != CUSTOM_ROLE_DATA_ACTIONS:
            problems.append(f"{path}: the custom role may only read and delete blobs, has {sorted(actions)}")
        if _squash(custom[1] or "") != "removesExports":
            problems.append(f"{path}: the custom role is needed only when removesExports")
    rbac = re.search(r"module rbac 'modules/rbac\.bicep' = \{(.*?)\n\}", main_bicep, re.S)
    if rbac and "storage.outputs" in rbac.group(1):
        problems.append("infra/main.bicep: module rbac gets the export account; its roles belong in rbac-exports.bicep")
    return problems


def check_key_polling(post_sh: str, post_ps1: str, bicep_texts: dict[str, str], parameters: str) -> list[str]:
    problems = []
    loop_sh = re.search(r"while \[.*?\n(.*?)\ndone", post_sh, re.S)
    if not loop_sh or "functionapp keys list" not in loop_sh.group(1) or "blobs_extension" not in loop_sh.group(1) \
            or "sleep" not in loop_sh.group(1):
        problems.append("infra/hooks/postdeploy.sh: must poll (a while loop with sleep) `az functionapp keys list` for "
                        "the blobs_extension key before creating the subscription")
    loop_ps1 = re.search(r"for \(\$i = 1;.*?\{(.*?)\n\}", post_ps1, re.S)
    if not loop_ps1 or "functionapp keys list" not in loop_ps1.group(1) or "Start-Sleep" not in loop_ps1.group(1):
        problems.append("infra/hooks/postdeploy.ps1: must poll `az functionapp keys list` for the blobs_extension key")
    for path, text in bicep_texts.items():
        if "listKeys(" in text:
            problems.append(f"{path}: reads keys with listKeys during provisioning; the postdeploy hook does that")
        if "eventSubscriptions@" in text:
            problems.append(f"{path}: declares the Event Grid subscription; the postdeploy hook creates it")
    if "DEPLOY_EVENT_SUBSCRIPTION" in parameters or "DEPLOY_EVENT_SUBSCRIPTION" in post_sh:
        problems.append("infra: DEPLOY_EVENT_SUBSCRIPTION must not decide anything (it broke azd down + azd up)")
    return problems


def check_host_json(host_json: str) -> list[str]:
    try:
        sampling = json.loads(host_json)["logging"]["applicationInsights"]["samplingSettings"]
    except (ValueError, KeyError, TypeError):
        return []  # no sampling settings: the host's default samples everything but requests and exceptions
    if sampling.get("isEnabled") is False:
        return []
    excluded = {t.strip().lower() for t in str(sampling.get("excludedTypes", "")).split(";")}
    if "trace" not in excluded:
        return ['host.json: logging.applicationInsights.samplingSettings samples traces; add "Trace" to excludedTypes '
                "(the poisoned and no-sync alerts hang on single trace lines)"]
    return []


# -- queries ---------------------------------------------------------------------------------------------------
# The relay's log lines that queries read, by the text before their first key=value pair: the keys each carries.
# tests/test_log_fields.py captures the real records (running the relay's code) and fails when this table and
# the code disagree, so it cannot drift (the two link records included: shared/links.py).
RELAY_RECORDS = {
    "delivery": ("outcome", "correlation_id", "source", "version", "destination", "bytes", "seconds", "mode",
                 "latency", "reason"),
    "sync summary": ("outcome", "delivered", "already", "rejected", "failed", "poisoned", "pending", "in_progress",
                     "bytes", "seconds"),
    "Skyporten token issued:": ("scope", "expires_in"),
    "Entra token issued:": ("scope", "expires_in"),
    "signing key loaded:": ("source", "name", "kid", "created", "expires", "days_left", "expiry_from"),
    "link broken": ("link", "since", "status", "code", "cause"),
    "link restored": ("link", "since", "seconds"),
}
# Values a query may compare a key with (the rest are free): delivery statuses are shared/delivery.py STATUSES
# ("held": a delivery that met a broken link; "superseded": a version replaced before delivery; both #26).
RECORD_VALUES = {
    ("delivery", "outcome"): ("delivered", "already_delivered", "rejected", "failed", "poisoned", "in_progress",
                              "missing", "pending", "would_deliver", "held", "superseded"),
    ("sync summary", "outcome"): ("ok", "error"),
}
# The links of shared/links.py (LINK_TITLES: doctor's names for them).
LINK_NAMES = ("key_vault", "key", "skyporten", "entra", "gateway", "exports", "ledger")
LINK_RECORDS = ("link broken", "link restored")
# Columns of the tables queries read (Azure Monitor table reference; App Insights classic names in its scope).
TABLE_COLUMNS = {
    "traces": {"timestamp", "message", "severityLevel", "itemType", "customDimensions", "operation_Name",
               "operation_Id", "operation_ParentId", "cloud_RoleName", "cloud_RoleInstance", "appName"},
    "requests": {"timestamp", "id", "name", "success", "resultCode", "duration", "itemType", "customDimensions",
                 "operation_Name", "operation_Id", "cloud_RoleName", "cloud_RoleInstance", "appName"},
    "AegDeliveryFailureLogs": {"TimeGenerated", "Category", "EventSubscriptionName", "Message", "OperationName",
                               "SubResourceName", "_ResourceId", "TenantId", "Type"},
    "StorageQueueLogs": {"TimeGenerated", "AccountName", "OperationName", "StatusCode", "StatusText", "ObjectKey",
                         "Uri", "CallerIpAddress", "AuthenticationType", "RequesterObjectId", "RequesterUpn",
                         "DurationMs", "Category", "_ResourceId"},
    "StorageBlobLogs": {"TimeGenerated", "AccountName", "OperationName", "StatusCode", "StatusText", "ObjectKey",
                        "Uri", "CallerIpAddress", "AuthenticationType", "RequesterObjectId", "RequesterUpn",
                        "DurationMs", "Category", "_ResourceId"},
    "AZKVAuditLogs": {"TimeGenerated", "OperationName", "CallerIpAddress", "Identity", "HttpStatusCode", "Id",
                      "ResultType", "ResultSignature", "ResultDescription", "DurationMs", "_ResourceId"},
}
_KQL_WORDS = {
    "where", "extend", "project", "summarize", "by", "order", "sort", "asc", "desc", "and", "or", "not", "in",
    "startswith", "has", "contains", "hasprefix", "endswith", "matches", "regex", "let", "datatable", "string",
    "int", "long", "real", "bool", "datetime", "timespan", "dynamic", "join", "kind", "leftouter", "inner", "on",
    "render", "timechart", "barchart", "true", "false", "print", "range", "step", "from", "to", "top", "take",
    "limit", "distinct", "count", "with", "parse", "union", "between", "nulls", "first", "last", "isfuzzy",
}
_PLACEHOLDERS = {"__MINUTES__": "120", "__DAYS__": "30", "__DEPLOYED__": "2026-01-01T00:00:00", "__ACCOUNT__": "st"}


def kql_strings(query: str) -> list[str]:
    """The string literals of a query, verbatim (@"...") ones as written, others unescaped."""
    found = []
    for verbatim, body in re.findall(r'(@?)"((?:[^"\\]|\\.)*)"', query):
        found.append(body if verbatim else re.sub(r"\\(.)", r"\1", body))
    return found


def relay_kinds(literal: str) -> list[str]:
    """The relay records whose message a `message startswith/has` literal selects."""
    return [kind for kind in RELAY_RECORDS if literal.startswith(kind) or (kind.startswith(literal) and literal)]


def extracted_keys(query: str) -> list[tuple[str, str]]:
    """(key, regex) for each key=value field a query reads from `message` (extract or parse)."""
    keys = []
    for verbatim, pattern in re.findall(r'extract\(\s*(@?)"((?:[^"\\]|\\.)*)"', query):
        regex = pattern if verbatim else re.sub(r"\\(.)", r"\1", pattern)
        for key in re.findall(r"(\w+)=", re.sub(r"\\[A-Za-z]", " ", regex)):  # not the b of \bname=
            keys.append((key, regex))
    for clause in re.findall(r"parse\s+message\s+with\s+([^|\n]*)", query):
        keys += [(key, "") for key in re.findall(r'"[^"]*?(\w+)="', clause)]
    return keys


def message_filters(query: str) -> list[str]:
    return [lit for _, lit in re.findall(r'message\s+(startswith|has|contains|hasprefix)\s+"([^"]+)"', query)]


def query_columns(query: str) -> tuple[set[str], set[str]]:
    """(sources, identifiers read): the tables or let-names each statement starts from, and the identifiers the
    query reads that it does not define itself (columns, by elimination)."""
    text = query
    for placeholder, value in _PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'@?"(?:[^"\\]|\\.)*"', '""', text)
    text = re.sub(r"datetime\([^)]*\)", "datetime()", text)
    defined = set(re.findall(r"\b([A-Za-z_]\w*)\s*=(?!=)", text))
    defined |= set(re.findall(r"\blet\s+(\w+)", text))
    defined |= {name for cols in re.findall(r"datatable\(([^)]*)\)", text) for name in re.findall(r"(\w+)\s*:", cols)}
    sources = set()
    for statement in text.split(";"):
        statement = re.sub(r"^\s*let\s+\w+\s*=\s*", "", statement.strip())
        first = re.match(r"([A-Za-z_]\w*)(?!\w|\s*\()", statement)  # a function call is no source
        if first and first.group(1) not in ("datatable", "print", "range"):
            sources.add(first.group(1))
    read = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_]\w*)\b(?!\s*\()", text):
        name = match.group(1)
        assigned = text[match.end():match.end() + 1] == "=" and text[match.end():match.end() + 2] != "=="
        if name in _KQL_WORDS or name in defined or name in sources or assigned:
            continue
        read.add(name)
    return sources, read


def check_query(where: str, query: str) -> list[str]:
    problems = []
    sources, read = query_columns(query)
    let_names = set(re.findall(r"\blet\s+(\w+)", query))
    tables = {src for src in sources if src not in let_names}
    for table in sorted(tables - set(TABLE_COLUMNS)):
        fix = " (resource logs go to resource-specific tables: logAnalyticsDestinationType 'Dedicated')" \
            if table == "AzureDiagnostics" else ""
        problems.append(f"{where}: reads table {table}, which none of the relay's resources writes{fix}")
    columns = set().union(*(TABLE_COLUMNS.get(t, set()) for t in tables)) if tables else set()
    for name in sorted(read - columns):
        problems.append(f"{where}: `{name}` is not a column of {', '.join(sorted(tables)) or 'its table'}")
    if "traces" in tables:
        filters = message_filters(query)
        kinds = sorted({kind for lit in filters for kind in relay_kinds(lit)})
        for lit in filters:
            if not relay_kinds(lit):
                problems.append(f'{where}: filters message on "{lit}", which is none of the relay\'s records '
                                f"({', '.join(RELAY_RECORDS)})")
            for kind in relay_kinds(lit):
                rest = lit[len(kind):]
                for key, value in re.findall(r"(\w+)=(\w*)", rest):
                    if key not in RELAY_RECORDS[kind]:
                        problems.append(f'{where}: "{lit}": {kind!r} lines carry no {key}=')
                    elif value and (kind, key) in RECORD_VALUES and value not in RECORD_VALUES[(kind, key)] \
                            and rest.endswith(value):
                        pass  # a prefix of a value (startswith) is checked below
                    if value and (kind, key) in RECORD_VALUES and not any(
                            v.startswith(value) for v in RECORD_VALUES[(kind, key)]):
                        problems.append(f'{where}: "{lit}": {key}={value} is not a value the relay logs')
        if not kinds:
            problems.append(f"{where}: reads traces without selecting one of the relay's records "
                            '(message startswith "<record>")')
        allowed = set().union(*(RELAY_RECORDS[k] for k in kinds)) if kinds else set()
        for key, _ in extracted_keys(query):
            if key not in allowed:
                problems.append(f"{where}: reads {key}= from {', '.join(kinds) or 'traces'} lines, which carry "
                                f"{', '.join(sorted(allowed)) or 'no such field'}")
        for names in re.findall(r"datatable\(link: string\)\s*\[([^\]]*)\]", query):
            if set(re.findall(r'"(\w+)"', names)) != set(LINK_NAMES):
                problems.append(f"{where}: the list of links must be exactly {', '.join(LINK_NAMES)}")
    return problems


def workbook_queries(workbook: dict) -> list[tuple[str, str]]:
    """(item name, query) of every query item, also inside groups."""
    found = []
    for item in workbook.get("items") or []:
        content = item.get("content") or {}
        if isinstance(content.get("query"), str) and item.get("type") == 3:
            found.append((item.get("name", "?"), content["query"]))
        found += workbook_queries(content) if isinstance(content, dict) and content.get("items") else []
    return found


def doc_queries(markdown: str) -> list[str]:
    """```kusto blocks, and inline code spans that start with a known table followed by a pipe."""
    found = re.findall(r"```(?:kusto|kql)\n(.*?)```", markdown, re.S)
    prose = re.sub(r"```.*?```", "", markdown, flags=re.S)
    tables = "|".join([*TABLE_COLUMNS, "AzureDiagnostics"])
    found += [m for m in re.findall(r"`([^`]+)`", prose) if re.match(rf"({tables})\s*\|", m)]
    return found


def all_queries(root: Path) -> list[tuple[str, str]]:
    """(where, query) for every KQL query in infra/ and docs/."""
    found = []
    for path in sorted((root / "infra").rglob("*.kql")):
        found.append((str(path.relative_to(root)), path.read_text(encoding="utf-8")))
    for path in sorted((root / "infra").rglob("*.workbook.json")):
        try:
            workbook = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue  # check_monitoring names it
        found += [(f"{path.relative_to(root)} item {name}", q) for name, q in workbook_queries(workbook)]
    for path in sorted((root / "docs").glob("*.md")) if (root / "docs").is_dir() else []:
        for i, query in enumerate(doc_queries(path.read_text(encoding="utf-8")), 1):
            found.append((f"{path.relative_to(root)} query {i} ({query.strip().splitlines()[0][:40]})", query))
    return found


def check_queries(root: Path, bicep_texts: dict[str, str]) -> list[str]:
    problems = []
    for where, text in bicep_texts.items():
        if re.search(r"^\s*query: '", text, re.M):
            problems.append(f"{where}: an inline alert query; put it in infra/queries/*.kql and load it with "
                            "loadTextContent, so its fields are checked")
    for where, query in all_queries(root):
        problems += check_query(where, query)
    return problems


# -- monitoring ------------------------------------------------------------------------------------------------
# Metric names Azure Monitor offers per resource type (Microsoft's supported-metrics reference).
METRICS = {
    "Microsoft.EventGrid/systemTopics": {
        "AdvancedFilterEvaluationCount", "DeadLetteredCount", "DeliveryAttemptFailCount", "DeliverySuccessCount",
        "DestinationProcessingDurationInMs", "DroppedEventCount", "MatchedEventCount", "PublishFailCount",
        "PublishSuccessCount", "PublishSuccessLatencyInMs",
    },
}
# Each way the relay stops delivering, and the alert that tells: (what, query file or metric name).
REQUIRED_ALERTS = {
    "a delivery was poisoned": "poisoned.kql",
    "a link broke (one alert per broken period)": "link-broken.kql",
    "a function invocation failed": "function-failures.kql",
    "the blob trigger wrote to its poison queue": "poison-queue.kql",
    "the signing key nears its expiry or rotation date": "key-expiry.kql",
    "no successful sync (quiet until the first one after a deployment)": "no-sync.kql",
    "Event Grid failed to deliver (early)": "DeliveryAttemptFailCount",
    "Event Grid dead-lettered an event": "DeadLetteredCount",
}
WORKBOOK_PANELS = {
    "deliveries and bytes per hour": ("delivery outcome=delivered", "bytes="),
    "delivery latency p50/p95": ("latency=", "percentile(latency, 50)", "percentile(latency, 95)"),
    "outcomes by status and reason": ("outcome=", "reason="),
    "the state of each link": ("link broken", "link restored"),
    "token requests": ("Skyporten token issued", "Entra token issued"),
    "the last successful sync": ("sync summary outcome=ok",),
}


def check_monitoring(root: Path, bicep_texts: dict[str, str], main_bicep: str) -> list[str]:
    problems = []
    everything = "\n".join(bicep_texts.values())
    resources = {}
    for path, text in bicep_texts.items():
        for symbol, (rtype, _, body) in _resources(text).items():
            resources[(path, symbol)] = (rtype, body)
    # metric alerts: names of the resource type's metrics
    metric_names = set()
    for (path, symbol), (rtype, body) in resources.items():
        if not rtype.startswith("Microsoft.Insights/metricAlerts@"):
            continue
        for namespace, name in re.findall(r"metricNamespace: '([^']+)'\s*\n\s*metricName: '([^']+)'", body):
            metric_names.add(name)
            if name not in METRICS.get(namespace, {name}):
                problems.append(f"{path}: {symbol}: {namespace} has no metric {name} "
                                f"({', '.join(sorted(METRICS[namespace]))})")
    # log alerts: each loads its query from infra/queries
    loaded = {}
    for (path, symbol), (rtype, body) in resources.items():
        if rtype.startswith("Microsoft.Insights/scheduledQueryRules@"):
            for name in re.findall(r"loadTextContent\('\.\./queries/([\w.-]+)'\)", body):
                loaded[name] = (path, symbol, body)
            if "actionGroups: actionGroups" not in body:
                problems.append(f"{path}: {symbol} notifies no action group; use `actionGroups: actionGroups`")
    for what, source in REQUIRED_ALERTS.items():
        if source.endswith(".kql"):
            if source not in loaded:
                problems.append(f"infra/modules/monitoring.bicep: no alert for '{what}' (a scheduledQueryRules "
                                f"resource with loadTextContent('../queries/{source}'))")
            elif not (root / "infra" / "queries" / source).is_file():
                problems.append(f"infra/queries/{source}: missing")
        elif source not in metric_names:
            problems.append(f"infra/modules/eventgrid.bicep: no metric alert for '{what}' (metric {source} of "
                            "Microsoft.EventGrid/systemTopics)")
    link_rule = loaded.get("link-broken.kql")
    if link_rule and not re.search(r"dimensions: \[\s*\{\s*name: 'link'", link_rule[2]):
        problems.append("infra/modules/monitoring.bicep: the broken-link alert must split by the link dimension")
    no_sync = root / "infra" / "queries" / "no-sync.kql"
    if "no-sync.kql" in loaded and (not no_sync.is_file() or "__DEPLOYED__" not in no_sync.read_text()
                                    or "deployedAt" not in loaded["no-sync.kql"][2]
                                    or not re.search(r"param deployedAt string = utcNow\(", main_bicep)):
        problems.append("infra: the no-sync alert must stay quiet after a deployment until the first successful "
                        "sync (no-sync.kql reads __DEPLOYED__, filled from main.bicep's `param deployedAt string = "
                        "utcNow(...)`)")
    # the workbook
    workbooks = [body for (rtype, body) in resources.values() if rtype.startswith("Microsoft.Insights/workbooks@")]
    files = sorted((root / "infra").rglob("*.workbook.json"))
    if not workbooks or not files:
        problems.append("infra/modules/monitoring.bicep: no workbook (Microsoft.Insights/workbooks with "
                        "infra/workbooks/relay.workbook.json)")
    else:
        for path in files:
            try:
                workbook = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                problems.append(f"{path.relative_to(root)}: not JSON: {exc}")
                continue
            if workbook.get("version") != "Notebook/1.0":
                problems.append(f"{path.relative_to(root)}: version must be Notebook/1.0")
            queries = "\n".join(q for _, q in workbook_queries(workbook))
            for panel, needles in WORKBOOK_PANELS.items():
                if not all(n in queries for n in needles):
                    problems.append(f"{path.relative_to(root)}: no panel for {panel}")
    # recipients
    if not re.search(r"@secure\(\)\s*\n@description\([^\n]*\)\s*\nparam alertWebhookUrl string", everything):
        problems.append("infra/main.bicep: no @secure() alertWebhookUrl parameter (alerts to a webhook)")
    if "param alertActionGroupIds" not in main_bicep:
        problems.append("infra/main.bicep: no alertActionGroupIds parameter (alerts to existing action groups)")
    # resource logs into resource-specific tables
    for (path, symbol), (rtype, body) in resources.items():
        if rtype.startswith("Microsoft.Insights/diagnosticSettings@") and "workspaceId" in body \
                and "logAnalyticsDestinationType: 'Dedicated'" not in body:
            problems.append(f"{path}: {symbol} sends resource logs to AzureDiagnostics; set "
                            "logAnalyticsDestinationType: 'Dedicated' (AZKVAuditLogs, AegDeliveryFailureLogs)")
    return problems


# -- deployment ------------------------------------------------------------------------------------------------
# The operator's roles (rbac-operator.bicep): (symbol, role, scope, condition) for doctor, status and send.
OPERATOR_ROLES = {
    "operatorKey": ("keyVaultReaderRole", "vault", "grant"),
    "operatorExports": ("roles.storageBlobDataContributor", "exportContainer", "grant"),
    "operatorLedger": ("roles.storageBlobDataContributor", "ledgerContainer", "grant"),
    "operatorArchive": ("roles.storageBlobDataContributor", "archiveContainer", "grant&&afterDelivery=='archive'"),
    "operatorDelegator": ("roles.storageBlobDelegator", "account", "grant&&signsSas"),
}


def _az_calls(script: str) -> list[str]:
    """The az invocations of a hook (not the ones quoted in messages)."""
    return [m.group(0).strip() for m in re.finditer(r"(?:^[ \t]*|\$\(|=[ \t]*)az [a-z][^\n]*", script, re.M)]


def check_deployment(root: Path, bicep_texts: dict[str, str], main_bicep: str) -> list[str]:
    problems = []
    for name in ("preprovision.sh", "postdeploy.sh", "preprovision.ps1", "postdeploy.ps1"):
        script = (root / "infra" / "hooks" / name).read_text(encoding="utf-8")
        for call in _az_calls(script):
            by_url = call.split("az ", 1)[1].startswith("rest") and ("$url" in call or "$resource/" in call)
            if "--subscription" not in call and not by_url:
                problems.append(f"infra/hooks/{name}: `{call[:60]}` does not name the subscription; add "
                                "--subscription \"$AZURE_SUBSCRIPTION_ID\" (the CLI's default may be another)")
        if name.startswith("preprovision") and not all(v in script for v in ("ALERT_EMAIL", "ALERT_WEBHOOK_URL",
                                                                             "ALERT_ACTION_GROUP_IDS")):
            problems.append(f"infra/hooks/{name}: must warn (and refuse in prod) when alerts tell no one "
                            "(ALERT_EMAIL, ALERT_WEBHOOK_URL, ALERT_ACTION_GROUP_IDS all empty)")
    azure_yaml = (root / "azure.yaml").read_text(encoding="utf-8") if (root / "azure.yaml").is_file() else ""
    if not re.search(r"^requiredVersions:\s*\n\s+azd: ['\"]?>=\s*\d+\.\d+", azure_yaml, re.M):
        problems.append("azure.yaml: no requiredVersions.azd (e.g. `azd: '>= 1.x.y'`)")
    everything = "\n".join(bicep_texts.values())
    locks = [body for text in bicep_texts.values() for (rtype, _, body) in _resources(text).values()
             if rtype.startswith("Microsoft.Authorization/locks@")]
    scopes = {re.search(r"scope: (\w+)", b).group(1) for b in locks if re.search(r"scope: (\w+)", b)}
    if not ({"vault", "account"} <= scopes and all("CanNotDelete" in b for b in locks)) \
            or not re.search(r"module locks '[^']+' = if \(lockResources\)", main_bicep):
        problems.append("infra: no optional CanNotDelete locks on the Key Vault and the export account "
                        "(LOCK_RESOURCES; azd down would delete the ledger)")
    if "Microsoft.Consumption/budgets@" not in everything or "param budgetAmount" not in main_bicep:
        problems.append("infra: no optional budget alert (BUDGET_AMOUNT, Microsoft.Consumption/budgets)")
    if "dailyQuotaGb" not in everything or "param logDailyCapGb" not in main_bicep:
        problems.append("infra: no optional Log Analytics daily cap (LOG_DAILY_CAP_GB, workspaceCapping.dailyQuotaGb)")
    operator = bicep_texts.get("infra/modules/rbac-operator.bicep")
    if operator is None or "param operatorPrincipalId" not in main_bicep:
        problems.append("infra: no optional operator principal (OPERATOR_PRINCIPAL_ID) with the roles doctor, status "
                        "and send need (infra/modules/rbac-operator.bicep)")
    else:
        assignments = {k: v for k, v in _resources(operator).items()
                       if v[0].startswith("Microsoft.Authorization/roleAssignments@")}
        for symbol, (_, condition, body) in assignments.items():
            if symbol not in OPERATOR_ROLES:
                problems.append(f"infra/modules/rbac-operator.bicep: {symbol} is more than doctor, status and send "
                                "need; remove it or add it to OPERATOR_ROLES with its reason")
                continue
            role, scope, wanted = OPERATOR_ROLES[symbol]
            if f"roleDefinitions', {role})" not in body or not re.search(rf"^\s*scope: {scope}$", body, re.M) \
                    or _squash(condition or "") != wanted:
                problems.append(f"infra/modules/rbac-operator.bicep: {symbol} must grant {role} on {scope} if "
                                f"`{wanted}`")
        for symbol in set(OPERATOR_ROLES) - set(assignments):
            problems.append(f"infra/modules/rbac-operator.bicep: role assignment {symbol} is missing")
    requirements = root / "requirements.txt"
    if requirements.is_file():
        loose = [line for line in requirements.read_text().splitlines()
                 if line.split("#")[0].strip() and not line.startswith("-")
                 and not re.match(r"^[A-Za-z0-9_.\-\[\],]+==[\w.]+(\s*;.*)?(\s*#.*)?$", line.strip())]
        if loose:
            problems.append(f"requirements.txt: what is deployed must be pinned exactly (name==version); "
                            f"{loose[0]!r} is a range. Run `make upgrade-pins`")
    return problems


def run(root: Path) -> list[str]:
    infra = root / "infra"
    needed = ["infra/main.bicep", "infra/main.parameters.json", "infra/modules/rbac-exports.bicep", "host.json"] + [
        f"infra/hooks/{name}.{ext}" for name in ("preprovision", "postdeploy") for ext in ("sh", "ps1")]
    missing = [rel for rel in needed if not (root / rel).is_file()]
    if missing:
        return [f"{rel}: missing" for rel in missing]

    def read(rel: str) -> str:
        return (root / rel).read_text(encoding="utf-8")

    bicep = {str(p.relative_to(root)): p.read_text(encoding="utf-8") for p in sorted(infra.rglob("*.bicep"))}
    problems = check_regions(read("infra/main.bicep"), read("infra/hooks/preprovision.sh"),
                             read("infra/hooks/preprovision.ps1"))
    problems += check_export_roles(read("infra/modules/rbac-exports.bicep"), read("infra/main.bicep"))
    problems += check_key_polling(read("infra/hooks/postdeploy.sh"), read("infra/hooks/postdeploy.ps1"), bicep,
                                  read("infra/main.parameters.json"))
    problems += check_host_json(read("host.json"))
    problems += check_queries(root, bicep)
    problems += check_monitoring(root, bicep, read("infra/main.bicep"))
    problems += check_deployment(root, bicep, read("infra/main.bicep"))
    return problems


if __name__ == "__main__":
    found = run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    for problem in found:
        print(f"   FAIL {problem}")
    print(f"   regions, export roles, key polling, host.json sampling, queries, monitoring, deployment: "
          f"{len(found)} problems")
    sys.exit(1 if found else 0)
