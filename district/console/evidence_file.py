"""One evidence file for a console page: the ``media`` route of the pages that show evidence.

The alarm page and the barrier window both show files the district holds for an event. Each page
adds ``ConsoleRoute("media", Role.OPERATOR, evidence_file)``; the file is served only through the
``evidence_media`` action (operator role, a reason, the event in the session's scope; audited),
exactly like the JSON API's media route, which a browser session cannot call (it needs a bearer token).
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from district.console.page import RouteView
from district.queries.evidence import MEDIA_SPEC, MediaFile

INLINE_TYPES = frozenset({"image/jpeg", "image/png", "video/mp4", "video/webm"})
"""Types a browser shows as media inline; anything else is saved, never rendered."""


def media_query(event_id: str, sha256: str, reason: str) -> str:
    """The query string of a page's ``media`` route for one file."""
    return urlencode({"id": event_id, "sha": sha256, "reason": reason})


async def evidence_file(view: RouteView) -> web.StreamResponse:
    """The file ``id`` (event), ``sha`` (its SHA-256) with ``reason``, through ``evidence_media``."""
    ctx = view.ctx
    params = {
        "event_id": ctx.query.get("id", ""),
        "sha256": ctx.query.get("sha", ""),
        "reason": ctx.query.get("reason", ""),
    }
    found: MediaFile = await ctx.ask(MEDIA_SPEC.name, params, spec=MEDIA_SPEC)
    inline = found.content_type in INLINE_TYPES
    return web.FileResponse(
        found.path,
        headers={
            "Content-Type": found.content_type if inline else "application/octet-stream",
            "Content-Disposition": "inline" if inline else "attachment",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )
