"""The district console: server-rendered pages (jinja2, htmx) for operators, inside the operator API.

The console is not a second service: ``compound-gateway api`` serves it beside ``/api/v1`` with the
same tokens, roles, scopes and audit log. A login exchanges a token for a server-side session
(``district.console.sessions``); every page reads district data through ``OperatorService`` as
the API does. Each page is one module under ``district.console.pages`` and one entry in
``district.console.registry``.
"""
