"""The one place agent-recorder's version is written.

pyproject.toml reads it (`[tool.setuptools.dynamic]`); `agent-recorder --version`,
the server's `RecordReady.server_version` and `server-version` response header, and
the client's User-Agent all take it from here.
"""

from __future__ import annotations

from typing import Final

__version__: Final = "0.2.0"
# The prefix of every Python client's User-Agent (gRPC appends its own after it).
USER_AGENT: Final = f"agent-recorder-python/{__version__}"
# The response header (initial metadata) in which the server names its version.
SERVER_VERSION_HEADER: Final = "server-version"
