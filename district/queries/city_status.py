"""``city_status``: the GA/T 1400 link to the city as the city service last saw it, and its queue.

Read from the city service's files (``[city] queue_path`` and the subscriptions beside it), opened
for the length of one request and only when ``[city]`` is configured: the link state the service
saved (registered since when, last keepalive, last error, clock skew), the queue's counts per
category (backlog, refused, parked, accepted), the latest refusals with the city's reasons, and
the upper platform's subscriptions. Without ``[city]`` the answer says so (``configured`` false);
before the service first ran, the files are absent and the answer says that too.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from district.city.model import Category
from district.city.queue import read_status
from district.city.subscription_book import book_path, read_subscriptions
from district.operator_output import Presenter, Table
from district.queries.context import QueryContext
from district.queries.spec import QuerySpec, Route
from district.query_model import Model, Role

MAX_REFUSALS = 20
"""Refusals listed at most (the newest)."""


class CityStatusRequest(Model):
    """The city link's state; no filters."""


class CategoryFigures(Model):
    """One collection's objects in the queue."""

    category: str = Field(description="MotorVehicle, Face or APE")
    backlog: int = Field(description="not yet accepted by the city (refused ones waiting to retry included)")
    refused: int = Field(description="whose last answer was a refusal (parked included)")
    parked: int = Field(description="refused too often: kept and shown, no longer sent")
    accepted: int


class RefusalView(Model):
    """An object the city refused at its last attempt."""

    category: str
    object_id: str
    attempts: int
    reason: str = Field(description="the city's StatusCode and StatusString")
    at: datetime
    parked: bool


class SubscriptionView(Model):
    """One of the upper platform's subscriptions."""

    subscribe_id: str
    title: str
    details: list[int] = Field(description="SubscribeDetail codes: 3/4 devices, 12 faces, 13 motor vehicles")
    state: str = Field(description="active, cancelled or expired")
    receive_addr: str
    begin_at: datetime
    end_at: datetime
    notified: int = Field(description="objects the receiver accepted")
    last_notified_at: datetime | None
    last_error: str | None


class CityStatus(Model):
    """The city link: configured or not, its state, backlog, refusals and subscriptions."""

    configured: bool = Field(description="false: no [city] section, nothing else is set")
    service_seen: bool = Field(description="the city service has written its queue file")
    server_url: str | None = None
    platform_id: str | None = None
    registered: bool = False
    registered_at: datetime | None = None
    last_keepalive_at: datetime | None = None
    last_error: str | None = None
    clock_skew_s: float | None = None
    state_updated_at: datetime | None = Field(
        default=None, description="when the service last saved the state"
    )
    accepted_total: int = 0
    categories: list[CategoryFigures] = Field(default_factory=list)
    oldest_pending_at: datetime | None = None
    refusals: list[RefusalView] = Field(default_factory=list, description="the newest refusals first")
    subscriptions_enabled: bool = False
    subscriptions: list[SubscriptionView] = Field(default_factory=list)

    @property
    def backlog_total(self) -> int:
        """Objects waiting, every category."""
        return sum(c.backlog for c in self.categories)


async def city_status(ctx: QueryContext, _request: CityStatusRequest) -> CityStatus:
    """The link state, queue counts, refusals and subscriptions from the city service's files."""
    city = ctx.config.city
    if city is None:
        return CityStatus(configured=False, service_seen=False)
    base = CityStatus(
        configured=True,
        service_seen=False,
        server_url=city.server_url,
        platform_id=city.platform_id,
        subscriptions_enabled=city.subscriptions is not None and city.subscriptions.enabled,
    )
    # read-only, never created, no schema run: the API may read the city's files, never write them
    found = await read_status(city.queue_path, MAX_REFUSALS)
    if found is None:  # the city service and the ingesters never ran
        return base
    state, counts, refusals = found.link, found.counts, found.refusals
    subscriptions = [
        SubscriptionView(
            subscribe_id=s.subscribe_id,
            title=s.title,
            details=list(s.details),
            state=s.state.value,
            receive_addr=s.receive_addr,
            begin_at=s.begin_at,
            end_at=s.end_at,
            notified=s.notified,
            last_notified_at=s.last_notified_at,
            last_error=s.last_error,
        )
        for s in await read_subscriptions(book_path(city.queue_path))
    ]
    categories = [
        CategoryFigures(
            category=c.value,
            backlog=counts.backlog.get(c.value, 0),
            refused=counts.refused.get(c.value, 0),
            parked=counts.parked.get(c.value, 0),
            accepted=counts.accepted.get(c.value, 0),
        )
        for c in Category
    ]
    return base.model_copy(
        update={
            "service_seen": True,
            "registered": state.registered,
            "registered_at": state.registered_at,
            "last_keepalive_at": state.last_keepalive_at,
            "last_error": state.last_error,
            "clock_skew_s": state.clock_skew_s,
            "state_updated_at": state.updated_at,
            "accepted_total": state.accepted_total,
            "categories": categories,
            "oldest_pending_at": counts.oldest_pending_at,
            "refusals": [
                RefusalView(
                    category=r.category.value,
                    object_id=r.object_id,
                    attempts=r.attempts,
                    reason=r.reason,
                    at=r.at,
                    parked=r.parked,
                )
                for r in refusals
            ],
            "subscriptions": subscriptions,
        }
    )


def _tables(view: Presenter, status: CityStatus) -> list[Table]:
    def when(moment: datetime | None) -> str:
        return view.time(moment) if moment else "-"

    link = (
        ["configured", "registered", "since", "last keepalive", "backlog", "refused", "last error"],
        [
            [
                "yes" if status.configured else "no",
                "yes" if status.registered else "no",
                when(status.registered_at),
                when(status.last_keepalive_at),
                str(status.backlog_total),
                str(sum(c.refused for c in status.categories)),
                status.last_error or "",
            ]
        ],
    )
    queue = (
        ["category", "backlog", "refused", "parked", "accepted"],
        [
            [c.category, str(c.backlog), str(c.refused), str(c.parked), str(c.accepted)]
            for c in status.categories
        ],
    )
    refusals = (
        ["at", "category", "object", "attempts", "parked", "reason"],
        [
            [when(r.at), r.category, r.object_id, str(r.attempts), "yes" if r.parked else "", r.reason]
            for r in status.refusals
        ],
    )
    subscriptions = (
        ["subscription", "state", "details", "receive address", "notified", "last error"],
        [
            [
                s.subscribe_id,
                s.state,
                ",".join(map(str, s.details)),
                s.receive_addr,
                str(s.notified),
                s.last_error or "",
            ]
            for s in status.subscriptions
        ],
    )
    return [link, queue, refusals, subscriptions]


SPEC = QuerySpec(
    name="city_status",
    request=CityStatusRequest,
    result=CityStatus,
    role=Role.OPERATOR,
    route=Route(
        "GET", "/city/status", "The GA/T 1400 link to the city: registration, keepalive, backlog, refusals"
    ),
    run=city_status,
    rows=lambda status: len(status.categories),
    tables=_tables,
    cli=None,  # `compound-gateway city status` reads the same files on the city host
)
