"""`agent-recorder serve` whose commit pipeline dies at its first Record batch; not a test.

Run as `python -m support.dying_serve serve ...` with tests/ on the path.

The pipeline's own loop raises (as a bug in it would), so test_pipeline can check
that the process turns NOT_SERVING, fails the batch, and exits non-zero.
"""

from __future__ import annotations

import sys

from recorder_server.cli import main
from recorder_server.pipeline import Job, Pipeline


def _broken(self: Pipeline, first: Job) -> tuple[list[Job], object]:
    raise RuntimeError("injected: a bug in the pipeline's loop")


if __name__ == "__main__":
    Pipeline._take_group = _broken  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
