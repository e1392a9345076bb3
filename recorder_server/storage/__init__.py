"""SQLite persistence of the recording model. Storage knows SQL and protobuf bytes,
not gRPC and not the rules.

- schema.py: the tables, their migrations, what the stored blobs hold;
- rows.py: a ChangeSet as SQL statements and rows, pure (no database);
- lookups.py: the state the rules consult (open loops, what a batch names);
- connections.py: connections, pragmas, the store's thread and WriteStore.

Reads for clients (reads.py) use a pool of read-only connections of their own.

Which connection, thread and busy timeout each operation uses:

| operation                          | connection       | thread              | busy timeout |
| ---------------------------------- | ---------------- | ------------------- | ------------ |
| open and migrate                   | write            | store's thread      | 5 s          |
| load open loops (start, reload)    | write            | store's thread      | 0 (NO_WAIT)  |
| a group's write, lock free at once | write            | event loop (inline) | 0 (NO_WAIT)  |
| a group's write, otherwise         | write            | store's thread      | 5 s, then 0  |
| control jobs (flush, import, ...)  | write            | store's thread      | 5 s, then 0  |
| lookups for a batch, thread idle   | write            | event loop          | 0 (NO_WAIT)  |
| lookups for a batch, thread busy   | lookup (ro)      | event loop          | 5 s          |
| WAL catch-up after a checkpoint    | write            | store's thread      | 0 (NO_WAIT)  |
| background checkpoints             | checkpoint's own | checkpoint thread   | 5 s          |
| client reads (reads.py)            | read pool (ro)   | aiosqlite threads   | 5 s          |

The names below are the ones the rest of the server uses.
"""

from recorder_server.storage.connections import (
    COMMON_PRAGMAS,
    INLINE_WRITE_BYTES,
    READ_ONLY_PRAGMAS,
    WRITER_PRAGMAS,
    WriteStore,
    configure,
    connect,
)
from recorder_server.storage.rows import INSERT_EVENTS, insert_statements, ts_us
from recorder_server.storage.schema import (
    LOOP_EVENTS_FIELD,
    LOOP_MESSAGES_FIELD,
    LOOP_TURNS_FIELD,
    MIGRATIONS,
    SCHEMA_VERSION,
    SESSION_LOOPS_FIELD,
)

__all__ = [
    "COMMON_PRAGMAS",
    "INLINE_WRITE_BYTES",
    "INSERT_EVENTS",
    "LOOP_EVENTS_FIELD",
    "LOOP_MESSAGES_FIELD",
    "LOOP_TURNS_FIELD",
    "MIGRATIONS",
    "READ_ONLY_PRAGMAS",
    "SCHEMA_VERSION",
    "SESSION_LOOPS_FIELD",
    "WRITER_PRAGMAS",
    "WriteStore",
    "configure",
    "connect",
    "insert_statements",
    "ts_us",
]
