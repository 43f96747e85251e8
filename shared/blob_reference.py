"""`BlobReference`: the blob trigger's parameter type, a name and nothing else (an SDK-type binding of our own).

Why not the official `azurefunctions-extensions-bindings-blob` (`BlobClient`)? Its package imports the storage SDK
and azure.identity when it is imported, about 170 ms of every cold start, and at each invocation it builds a
`BlobClient` (with its own credential) that the relay never uses: the handler needs only the blob's name, and the
relay reads the blob with its own clients. This module imports only `azurefunctions.extensions.base` and the
standard library.

How the Python worker uses it (azure_functions_worker/bindings/meta.py): `get_binding_registry()` is the registry;
at indexing `check_supported_type(BlobReference)` is true (a subclass of `SdkType`), so the worker asks the host for
a reference (the binding gets `"properties": {"SupportsDeferredBinding": true}`) and asks the converter registered
for "blobTrigger" (`BlobReferenceConverter`) whether it accepts the annotation. At each invocation the host sends a
`model_binding_data` datum whose `.content` is JSON, e.g.
`{"Connection": "EXPORT_STORAGE", "ContainerName": "exports", "BlobName": "inbox/a.csv"}` (the format the official
extension reads), and the worker calls `BlobReferenceConverter.decode(datum, trigger_metadata=..., pytype=...)`.
The worker caches the result per parameter, type, content and function, hence an immutable value.

Only one converter may be registered for "blob": the official blob extension must not be imported alongside.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from azurefunctions.extensions.base import InConverter, SdkType

MODEL_BINDING_DATA = "model_binding_data"


@dataclass(frozen=True)
class BlobReference(SdkType):
    """A blob the host told us about: its container, its path inside the container, and the name of the
    connection setting (e.g. EXPORT_STORAGE) the trigger uses. No client and no bytes: the relay reads the blob."""

    container: str
    blob_name: str
    connection: str | None = None

    def get_sdk_type(self) -> BlobReference:
        return self


class BlobReferenceConverter(InConverter, binding="blob", trigger="blobTrigger"):  # type: ignore[call-arg]
    """Decodes the host's ModelBindingData for a blob (trigger or input) into a `BlobReference`."""

    @classmethod
    def check_input_type_annotation(cls, pytype: type) -> bool:
        return pytype is BlobReference

    @classmethod
    def has_implicit_output(cls) -> bool:
        return False

    @classmethod
    def decode(cls, data: Any, *, trigger_metadata: Any = None, pytype: type | None = None) -> BlobReference | None:
        if data is None or data.type is None:
            return None
        if data.type != MODEL_BINDING_DATA:
            raise ValueError(f'unexpected type of data received for the "blob" binding: {data.type!r} '
                             f"(BlobReference needs {MODEL_BINDING_DATA!r}; does the binding have "
                             "SupportsDeferredBinding?)")
        if pytype is not None and pytype is not BlobReference:
            raise ValueError(f"BlobReferenceConverter cannot make a {getattr(pytype, '__name__', pytype)!r}, "
                             "only a BlobReference")
        return _reference_from_content(getattr(data.value, "content", None))


def _reference_from_content(content: Any) -> BlobReference:
    if content is None:
        raise ValueError("blob model binding data has no content (expected JSON with ContainerName and BlobName)")
    try:
        fields = json.loads(content)
    except (TypeError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"blob model binding data content is not JSON: {e}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"blob model binding data content is JSON {type(fields).__name__}, expected an object "
                         "with ContainerName and BlobName")
    missing = [key for key in ("ContainerName", "BlobName") if not isinstance(fields.get(key), str) or not fields[key]]
    if missing:
        raise ValueError(f"blob model binding data content lacks {' and '.join(missing)} "
                         f"(keys present: {', '.join(sorted(fields)) or 'none'})")
    connection = fields.get("Connection")
    if connection is not None and not isinstance(connection, str):
        raise ValueError(f"blob model binding data Connection is {type(connection).__name__}, expected a setting name")
    return BlobReference(container=fields["ContainerName"], blob_name=fields["BlobName"], connection=connection)
