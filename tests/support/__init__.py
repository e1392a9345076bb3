"""Helpers the tests share, imported as `support.<module>` (never `from conftest import`).

- `recorder`: `RunningRecorder`, a real in-process sidecar on a temp socket and file.
- `events`: builders of realistic events, and ways to send them.
- `shapes`: valid-shaped events and requests for the pure validation tests.
- `priced`: a multi-agent run whose cost is computed by hand (the cost tests).
- `fault_harness`, `fault_worker`: the kill -9 scenario (tests/test_faults.py, scripts/soak.py).

conftest.py holds only fixtures; it imports what it needs from here.
"""
