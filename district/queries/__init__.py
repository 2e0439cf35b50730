"""Operator queries, one module each; ``district.queries.registry`` lists them.

A module defines its request and result models, how it runs (on a ``QueryContext``) and a
``SPEC`` (``district.queries.spec.QuerySpec``). The operator service, the ``query`` subcommands,
the HTTP routes and the OpenAPI document are all derived from the registry.
"""
