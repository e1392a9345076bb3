"""The client's defaults: where the sidecar lives, and the limits it checks events by.

Where the sidecar lives is shared with the server (recorder_common.defaults). The
event limits are the server's own defaults (recorder_server.validation.Limits),
repeated here as numbers because the client never imports the server: an
EventSender checks events against them until the server's RecordReady announces
the limits it really applies (`serve` flags may change them).
"""

from __future__ import annotations

from typing import Final

from recorder_common.defaults import (
    DB_ENV,
    MAX_RESPONSE_BYTES,
    TARGET_ENV,
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    data_dir,
    default_db_path,
    default_target,
    default_token,
    normalize_target,
    read_token_file,
    runtime_dir,
)

# Limits.max_id_length: characters of an id (session, loop, agent).
MAX_ID_LENGTH: Final = 256
# Limits.max_value_depth: nesting of Struct/ListValue containers in free-form JSON.
MAX_VALUE_DEPTH: Final = 64
# Limits.max_request_bytes: the largest request, so the largest event alone.
MAX_REQUEST_BYTES: Final = 16 * 1024 * 1024

__all__ = [
    "DB_ENV",
    "MAX_ID_LENGTH",
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "MAX_VALUE_DEPTH",
    "TARGET_ENV",
    "TLS_CA_ENV",
    "TLS_CERT_ENV",
    "TLS_KEY_ENV",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "data_dir",
    "default_db_path",
    "default_target",
    "default_token",
    "normalize_target",
    "read_token_file",
    "runtime_dir",
]
