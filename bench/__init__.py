"""The performance harness of issue #6: `python -m bench.run` (or `make bench`).

Not shipped with the distribution; it drives the real sidecar as its own process
through the real client library, so its numbers are what an agent would see.
"""
