"""The district platform; it never imports the compound daemon (``gateway``).

The ingester, the operator service (queries, alarms, audit) with its CLI and HTTP API, and the
watch-list administration.
"""
