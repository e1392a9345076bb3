"""Helpers the tests share, imported as `support.<module>` (never `from conftest import`).

- `recorder`: `RunningRecorder`, a real in-process sidecar on a temp socket and file.
- `events`: builders of realistic events, and ways to send them.
- `shapes`: valid-shaped events and requests for the pure validation tests.
- `priced`: a multi-agent run whose cost is computed by hand (the cost tests).
- `processes`: child processes run without blocking the loop.
- `readme`: the README's code blocks, as a reader copies them.
- `user_agent`: a gRPC server that keeps each call's User-Agent.
- `parts`: skip (or fail under CI) when a part `make test` installs is missing.
- `otlp`: OTLP ingest: a sidecar taking spans, the OTel SDK sending them, reads.
- `fault_harness`, `fault_worker`: the kill -9 scenario (tests/test_faults.py, scripts/soak.py).

conftest.py holds only fixtures; it imports what it needs from here.
"""
