"""The operator HTTP API over the embedded store: authentication, errors, alarm actions, OpenAPI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate

from device_sims.inventory import compound_id
from district.config import load_district_config
from district.operations import OperationsDb
from district.operator_api import openapi_document
from tests.district_data import OTHER_COMPOUND, DistrictData, district_toml, serving_operator_api

OPENAPI_FILE = Path(__file__).resolve().parents[1] / "docs" / "operator-api.openapi.json"
C1, C2 = compound_id(1), compound_id(2)


@dataclass
class Api:
    url: str
    tokens: dict[str, str]
    ops: OperationsDb
    window: dict[str, str]

    async def get(
        self, path: str, who: str | None = None, **params: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1{path}", params=params, headers=headers) as response,
        ):
            return response.status, await response.json(), response


@pytest.fixture
async def api(district_data: DistrictData, tmp_path: Path) -> AsyncIterator[Api]:
    path = tmp_path / "district.toml"
    path.write_text(
        district_toml(tmp_path, store=f'type = "sqlite"\npath = "{district_data.sqlite_path}"'), "utf-8"
    )
    config = load_district_config(path)
    async with serving_operator_api(config) as (url, tokens, ops):
        window = {"start": district_data.start.isoformat(), "end": district_data.end.isoformat()}
        yield Api(url, tokens, ops, window)


async def test_no_token_is_401_with_a_challenge(api: Api) -> None:
    status, body, response = await api.get("/events", **api.window)
    assert status == 401
    assert body["error"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    records = await api.ops.audit_records(limit=1)
    assert (records[0].entry.outcome, records[0].entry.channel, records[0].entry.client) == (
        "unauthenticated",
        "api",
        "127.0.0.1",
    )


async def test_events_as_json_with_list_filters(api: Api) -> None:
    status, body, _ = await api.get(
        "/events", "viewer", **api.window, compounds=f"{C1},{C2}", kinds="vehicle_pass", limit="5"
    )
    assert status == 200
    assert len(body["events"]) == 5
    assert body["next_cursor"].isdigit()
    assert {e["kind"] for e in body["events"]} == {"vehicle_pass"}
    status, more, _ = await api.get(
        "/events", "viewer", **api.window, compounds=C1, kinds="vehicle_pass", before=body["next_cursor"]
    )
    assert status == 200
    assert not {e["event_id"] for e in more["events"]} & {e["event_id"] for e in body["events"][:1]}


async def test_refusals_name_the_field(api: Api) -> None:
    status, body, _ = await api.get("/events", "operator", **api.window, compounds=OTHER_COMPOUND)
    assert (status, body["error"]) == (403, "forbidden")
    status, body, _ = await api.get("/counts", "viewer", **api.window, interval="week")
    assert (status, body["field"]) == (400, "interval")
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{api.url}/api/v1/events?limit=1&limit=2&start={api.window['start']}",
            headers={"Authorization": f"Bearer {api.tokens['viewer']}"},
        ) as response,
    ):
        assert response.status == 400
        assert (await response.json())["field"] == "limit"
    newest = await api.ops.audit_records(limit=1)
    assert (newest[0].entry.outcome, newest[0].entry.actor) == ("invalid_query", "viewer")


async def test_devices_and_counts_answer_in_json(api: Api) -> None:
    status, body, _ = await api.get("/devices", "viewer")
    assert status == 200
    names = {c["name"] for c in body["compounds"]}
    assert "青云谱示范小区" in names  # non-ASCII names travel as UTF-8
    assert all(0 <= c["rate"] <= 1 for c in body["compounds"])
    status, rows, _ = await api.get(
        "/counts", "viewer", **api.window, group_by="compound,kind", interval="day"
    )
    assert status == 200
    assert {r["kind"] for r in rows} >= {"face_access", "vehicle_pass"}


async def test_alarm_actions_over_post(api: Api) -> None:
    _, alarms, _ = await api.get("/alarms", "viewer", **api.window, limit="1")
    event_id = alarms["alarms"][0]["event"]["event_id"]
    headers = {"Authorization": f"Bearer {api.tokens['operator']}"}
    async with aiohttp.ClientSession() as session:
        url = f"{api.url}/api/v1/alarms/{event_id}/actions"
        async with session.post(
            url, json={"to": "acknowledged", "note": "on my way"}, headers=headers
        ) as response:
            assert response.status == 200
            assert (await response.json())["state"] == "acknowledged"
        async with session.post(url, data=b"{not json", headers=headers) as response:
            assert response.status == 400
        async with session.post(
            url, json={"to": "resolved", "note": "skipping"}, headers=headers
        ) as response:
            assert response.status == 409
            assert "acknowledged" in (await response.json())["message"]
    _, after, _ = await api.get("/alarms", "viewer", **api.window, states="acknowledged")
    assert [a["event"]["event_id"] for a in after["alarms"]] == [event_id]
    assert after["alarms"][0]["history"][0]["note"] == "on my way"


async def test_openapi_document_is_valid_served_and_checked_in(api: Api) -> None:
    document = openapi_document()
    validate(document)
    status, served, _ = await api.get("/openapi.json")
    assert status == 200
    assert served == json.loads(json.dumps(document))
    assert json.loads(OPENAPI_FILE.read_text(encoding="utf-8")) == served, (
        "docs/operator-api.openapi.json is stale: run `compound-gateway openapi --output docs/operator-api.openapi.json`"
    )
    documented = {op["operationId"] for path in served["paths"].values() for op in path.values()}
    assert documented >= {
        "events",
        "counts",
        "compare",
        "barrier",
        "devices",
        "alarms",
        "alarm_action",
        "audit",
    }
