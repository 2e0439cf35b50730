"""compound-gateway: the compound-side daemon and its shared core (events, config, outbox)."""
