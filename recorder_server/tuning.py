"""What the process that runs the sidecar sets for itself (`serve` calls these; a
program that embeds the server decides for itself). Figures: docs/performance.md."""

from __future__ import annotations

import gc
import sys
from typing import Final

# The store's thread gets the GIL back sooner after each SQL statement: more ingest.
GIL_SWITCH_INTERVAL_S: Final = 0.001


def before_start() -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def after_start() -> None:
    """What startup made lives as long as the process: frozen, full collections no
    longer walk it (and no longer pause the event loop)."""
    gc.collect()
    gc.freeze()
