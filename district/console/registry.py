"""Every console page, by name: the one list the router and the navigation are built from.

A new page is a module under ``district.console.pages`` with a ``PAGE``, added below; nothing else
changes (the alarms, events, barrier window, statistics, admin, device commands, device registry
and city link pages each come this way).
"""

from __future__ import annotations

from collections.abc import Iterable

from district.console.page import ConsolePage
from district.console.pages import admin, alarms, barrier, city, devices, events, overview, statistics


def index(pages: Iterable[ConsolePage]) -> dict[str, ConsolePage]:
    """Pages by name; refuses two pages with one name or one path."""
    by_name: dict[str, ConsolePage] = {}
    paths: set[str] = set()
    for page in pages:
        if page.name in by_name or page.path in paths or page.path in {"/login", "/logout", "/static"}:
            raise ValueError(f"console page {page.name}: its name or path is taken")
        by_name[page.name] = page
        paths.add(page.path)
    return by_name


PAGES: dict[str, ConsolePage] = index(
    [
        overview.PAGE,
        alarms.PAGE,
        devices.PAGE,
        events.PAGE,
        barrier.PAGE,
        statistics.PAGE,
        city.PAGE,
        admin.PAGE,
    ]
)
"""Page name -> page. Tests may add a page for their duration (``monkeypatch.setitem``) before the app is built."""
