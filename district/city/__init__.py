"""The district's GA/T 1400 (视图库, VIID) link up to the city platform: ``compound-gateway city``.

Modules: ``config`` (the ``[city]`` section), ``model`` (what the parts hand each other),
``objects`` (events and registry entries as GA/T 1400 objects: ids, codes, times, privacy policy),
``queue`` (the durable queue the ingester feeds at commit), ``session`` (register, keepalive, time,
digest), ``delivery`` (batches and per-object outcomes), ``subscriptions`` (the upper platform's
subscriptions and their notifications), ``service`` (the daemon).
"""
