"""OTLP ingest: spans of OpenTelemetry-instrumented agents recorded as sessions.

mapping.py (pure) reads one span and says what it is and which events it makes;
assembler.py (pure) places spans into loops whatever order they arrive in;
store.py keeps the assembler's state in SQLite; ingest.py runs the assembler and
feeds its events to the writer; receiver.py serves OTLP/gRPC and OTLP/HTTP.
"""
