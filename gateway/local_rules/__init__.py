"""Local rules: reactions inside the compound to its own events, with or without the district.

``config`` (the ``[[rules]]`` models), ``engine`` (matching, debounce, cooldown, clear; pure),
``store`` (the durable state in ``rules.db``), ``actions`` (the ports and the bounded runner),
``service`` (the task in the running gateway), ``cli`` (``compound-gateway rules test``).
docs/local-rules.md is the reference.
"""
