"""The district's GA/T 1400 (视图库, VIID) link up to the city platform: ``compound-gateway city``.

Modules: ``config`` (the ``[city]`` section), ``model`` (what the parts hand each other),
``objects`` (events and registry entries as GA/T 1400 objects: ids, codes, times, privacy policy),
``queue`` (the durable queue the ingesters feed at commit), ``apes`` (the device registry as the
APE list), ``session`` (register with digest, keepalive, time), ``delivery`` (batches and
per-object outcomes), ``subscriptions``, ``subscription_book``, ``notifications`` and ``digest``
(the upper platform's subscriptions and their notifications), ``service`` (the daemon) and ``cli``
(``city`` and ``city status``).
"""
