"""The foundation both sides stand on; it imports nothing else of ours.

Canonical events, errors, strict JSON, logging, configuration helpers, the SQLite thread, backoff and
supervision, health and metrics, and the MQTT port (``tests/test_architecture.py`` checks the layers).
"""
