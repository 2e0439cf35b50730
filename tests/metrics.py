"""Reading a Prometheus exposition in tests: parsed by prometheus-client, never matched by regex."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(text: str, name: str) -> list[Sample]:
    """Every sample called ``name`` (a counter's samples carry its ``_total`` name)."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def value(text: str, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``; fails if none or several match."""
    matching = [s for s in samples(text, name) if labels.items() <= s.labels.items()]
    assert len(matching) == 1, f"{len(matching)} samples {name} {labels} in:\n{text}"
    return matching[0].value


def total(text: str, name: str) -> float:
    """The sum over every sample of ``name`` (all label values)."""
    return sum(s.value for s in samples(text, name))


def families(text: str) -> dict[str, str]:
    """Each family's name, as the exposition's TYPE lines name it, and its type."""
    named = {}
    for family in text_string_to_metric_families(text):
        # the parser strips a counter's _total; the exposition (and our dashboards) keep it
        named[family.name + ("_total" if family.type == "counter" else "")] = family.type
    return named


async def scrape(url: str) -> tuple[str, str]:
    """GET ``url`` (a /metrics endpoint): the exposition and its Content-Type."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.text(), response.headers["Content-Type"]
