"""Azure Functions entry point (Python v2 model): registration of the two triggers, nothing else.

- `on_export`: blob trigger on `%EXPORT_CONTAINER%/{name}` (connection EXPORT_STORAGE); forwards the new or
  updated export at once. It receives a `BlobReference` (container and name, decoded from the host's
  ModelBindingData by `shared.blob_reference`), never the file's bytes nor a storage client: the relay reads the
  blob itself in blocks, with its own clients.
- `sync`: timer on `%SYNC_SCHEDULE%`; delivers everything not yet delivered (missed events, retries, backlog).

Each handler takes the invocation's `context` and binds it (`shared.invocation`), so records logged on the
relay's pool threads carry the invocation id and reach Application Insights (the host drops records without one).

Settings are read and clients built on first invocation, not at import: a bad setting must not hide the
functions from the host; it is raised, clearly, when a function runs (and by `python -m shared doctor`).
"""

import logging

import azure.functions as func

from shared import invocation
from shared.blob_reference import BlobReference
from shared.config import blob_trigger_source

app = func.FunctionApp()
log = logging.getLogger("relay.functions")

# _CONTEXT: the worker passes the invocation's Context to a parameter named `context` only if its annotation is
# exactly func.Context (`func.Context | None` fails indexing); the default None serves callers outside the host
# (sim/demo.py), where there is no invocation id to carry.
_SOURCE = {"EventGrid": func.BlobSource.EVENT_GRID, "LogsAndContainerScan": func.BlobSource.LOGS_AND_CONTAINER_SCAN}


def export_name(trigger: object) -> str:
    """The export's path inside EXPORT_CONTAINER, from a BlobReference (or anything with `blob_name`) or a
    func.InputStream."""
    name = getattr(trigger, "blob_name", None)  # BlobReference.blob_name is the path, without the container
    if name:
        return name
    full = getattr(trigger, "name", None) or ""  # InputStream.name is "<container>/<path>"
    return full.split("/", 1)[1] if "/" in full else full


@app.function_name("on_export")
@app.blob_trigger(arg_name="client", path="%EXPORT_CONTAINER%/{name}", connection="EXPORT_STORAGE",
                  source=_SOURCE[blob_trigger_source()])
def on_export(client: BlobReference, context: func.Context = None) -> None:  # see _CONTEXT
    from shared.runtime import get_runtime

    invocation.bind(context)
    outcome = get_runtime().relay.deliver(export_name(client))
    if outcome.status == "failed":
        # Raise so the host retries the trigger (and poisons it after maxDequeueCount); the ledger keeps the
        # failure for the timer sync either way. A broken link ("held") returns at once: its state is recorded
        # and alerted once, and the sync delivers the file when the link answers again.
        raise RuntimeError(f"delivery of {outcome.source_name!r} failed: {outcome.reason}")


@app.function_name("sync")
@app.timer_trigger(arg_name="timer", schedule="%SYNC_SCHEDULE%", run_on_startup=False, use_monitor=True)
def sync(timer: func.TimerRequest, context: func.Context = None) -> None:  # see _CONTEXT
    from shared.runtime import get_runtime

    invocation.bind(context)
    if timer.past_due:
        log.warning("sync timer is past due: running now")
    summary = get_runtime().relay.sync()
    if summary.error and summary.link is None:
        # A broken link is not a failure of this run: it is recorded and alerted once (shared/links.py), and the
        # next run probes it and resumes by itself.
        raise RuntimeError(f"sync stopped: {summary.error}")
