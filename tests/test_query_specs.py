"""A new operator query is one spec plus one method per store backend.

``busiest_devices`` below exists only in this file: a request and a result model, a ``StoreQuery``
with its SQLite and InfluxQL methods, and a ``QuerySpec``. Registered for a test (and removed
after), it answers through ``compound-gateway query``, through HTTP and in the OpenAPI document,
is refused below its role, and every call lands in the audit log once, on both stores.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import aiohttp
import pytest
from openapi_spec_validator import validate
from pydantic import Field

from cli.main import main
from district.config import load_district_config
from district.operator_api import openapi_document
from district.operator_output import Presenter, Table
from district.queries.context import QueryContext
from district.queries.registry import QUERIES, index
from district.queries.spec import NeedsReason, QuerySpec, Route
from district.query_backends import (
    InfluxQueries,
    SqliteQueries,
    influx_where,
    measurements,
    open_query_backend,
    series_of,
    sqlite_where,
)
from district.query_model import Model, Ranged, Reason, Role, Selection
from foundation.events import Event
from tests.district_data import DistrictData, district_toml, serving_operator_api
from uplink.stores import InfluxV1StoreConfig, InfluxV2StoreConfig, SqliteStoreConfig, StoreConfig

OPENAPI_FILE = Path(__file__).resolve().parents[1] / "docs" / "operator-api.openapi.json"
NAME = "busiest_devices"

# ---- the new query: everything it takes ----------------------------------------------------


class BusiestRequest(Ranged):
    """The devices that reported most in a window."""

    top: int = Field(default=3, ge=1, le=100, description="how many devices")
    reason: Reason


class DeviceTally(Model):
    """One device and how many events it sent."""

    device_id: str
    events: int


class Busiest(Model):
    """The busiest devices, most events first (ties by device id)."""

    devices: list[DeviceTally]


@dataclass(frozen=True)
class TallyPerDevice:
    """Events per device of a selection: the one question this query asks each store."""

    selection: Selection

    async def on_sqlite(self, store: SqliteQueries) -> dict[str, int]:
        where, params = sqlite_where(self.selection)
        sql = f"SELECT device_id, count(*) FROM events WHERE {where} GROUP BY device_id"

        def read(db: sqlite3.Connection) -> dict[str, int]:
            return {device: int(n) for device, n in db.execute(sql, params)}

        return await store.read(read)

    async def on_influx(self, store: InfluxQueries) -> dict[str, int]:
        where, params = influx_where(self.selection)
        statement = (
            f"SELECT count(event_id) FROM {measurements(self.selection)} WHERE {where} GROUP BY device_id"
        )
        totals: Counter[str] = Counter()
        for series in series_of(await store.influxql(statement, params)):
            totals[series["tags"]["device_id"]] += int(series["values"][0][1])
        return dict(totals)


async def busiest(ctx: QueryContext, request: BusiestRequest) -> Busiest:
    tallies = await ctx.backend.run(TallyPerDevice(ctx.selection(request)))
    ranked = sorted(tallies.items(), key=lambda kv: (-kv[1], kv[0]))[: request.top]
    return Busiest(devices=[DeviceTally(device_id=d, events=n) for d, n in ranked])


def busiest_tables(view: Presenter, result: Busiest) -> list[Table]:
    return [(["device", "events"], [[d.device_id, str(d.events)] for d in result.devices])]


def busiest_rows(result: Busiest) -> int:
    return len(result.devices)


SPEC = QuerySpec(
    name=NAME,
    request=BusiestRequest,
    result=Busiest,
    role=Role.OPERATOR,
    route=Route("GET", "/busiest-devices", "The devices that reported most"),
    run=busiest,
    rows=busiest_rows,
    tables=busiest_tables,
    needs_reason=NeedsReason("a device ranking"),
)

# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[QuerySpec[BusiestRequest, Busiest]]:
    """The spec in the registry for one test (monkeypatch takes it out again)."""
    monkeypatch.setitem(QUERIES, NAME, SPEC)
    yield SPEC
    assert QUERIES[NAME] is SPEC


STORES = {
    "sqlite": lambda data: f'type = "sqlite"\npath = "{data.sqlite_path}"',
    "influx": lambda data: f'type = "influx_v1"\nurl = "{data.influx_url}"\ndatabase = "{data.database}"',
}


@pytest.fixture(params=sorted(STORES))
def config_file(request: pytest.FixtureRequest, district_data: DistrictData, tmp_path: Path) -> Path:
    """A district config over one of the two stores."""
    path = tmp_path / "district.toml"
    path.write_text(district_toml(tmp_path, store=STORES[request.param](district_data)), "utf-8")
    return path


def oracle(events: list[Event], top: int) -> list[dict[str, Any]]:
    """The answer computed in plain Python over what the stores hold."""
    tallies = Counter(e.device_id for e in events)
    ranked = sorted(tallies.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [{"device_id": d, "events": n} for d, n in ranked]


def audit_of(ops_db: Path) -> list[tuple[str | None, str, int, str | None]]:
    """(actor, outcome, status, reason) of every audit entry of the new query, oldest first."""
    with sqlite3.connect(ops_db) as db:
        rows = db.execute(
            "SELECT actor, outcome, status, reason FROM audit WHERE action = ? ORDER BY seq", (NAME,)
        ).fetchall()
    return [tuple(row) for row in rows]


# ---- tests -------------------------------------------------------------------------------------


def test_the_query_works_through_the_cli(
    registered: QuerySpec[BusiestRequest, Busiest],
    config_file: Path,
    district_data: DistrictData,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`compound-gateway query busiest-devices` answers as JSON and as a table; a viewer is refused."""
    tokens = {}
    for role in ("operator", "viewer"):
        assert main(["token", "create", "--config", str(config_file), "--name", role, "--role", role]) == 0
        tokens[role] = capsys.readouterr().out.strip()
    window = ["--start", district_data.start.isoformat(), "--end", district_data.end.isoformat()]
    query = ["query", "busiest-devices", "--config", str(config_file), *window]

    monkeypatch.setenv("CGW_TOKEN", tokens["operator"])
    assert main([*query, "--top", "50", "--reason", "maintenance plan", "--format", "json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer == {"devices": oracle(district_data.events, 50)}
    assert main([*query, "--reason", "maintenance plan"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["device", "events"]
    assert [line.split() for line in table[2:]] == [
        [row["device_id"], str(row["events"])] for row in oracle(district_data.events, 3)
    ]

    monkeypatch.setenv("CGW_TOKEN", tokens["viewer"])
    assert main([*query, "--reason", "curious"]) == 1
    assert "refused [403 forbidden]" in capsys.readouterr().err

    ops_db = load_district_config(config_file).api.ops_db
    assert audit_of(ops_db) == [
        ("operator", "ok", 200, "maintenance plan"),
        ("operator", "ok", 200, "maintenance plan"),
        ("viewer", "forbidden", 403, "curious"),
    ]


@dataclass
class Api:
    url: str
    tokens: dict[str, str]
    ops_db: Path
    window: dict[str, str]

    async def get(self, who: str, **params: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/busiest-devices", params=params, headers=headers) as response,
        ):
            return response.status, await response.json()


@pytest.fixture
async def api(
    registered: QuerySpec[BusiestRequest, Busiest], config_file: Path, district_data: DistrictData
) -> AsyncIterator[Api]:
    """The real operator API, built while the new query is registered."""
    config = load_district_config(config_file)
    async with serving_operator_api(config) as (url, tokens, _):
        window = {"start": district_data.start.isoformat(), "end": district_data.end.isoformat()}
        yield Api(url, tokens, config.api.ops_db, window)


async def test_the_query_works_over_http(api: Api, district_data: DistrictData) -> None:
    """GET /api/v1/busiest-devices answers the typed result; below its role 403; no reason 400."""
    status, body = await api.get("operator", **api.window, top="5", reason="maintenance plan")
    assert (status, body) == (200, {"devices": oracle(district_data.events, 5)})
    status, body = await api.get("viewer", **api.window, reason="curious")
    assert (status, body["error"]) == (403, "forbidden")
    status, body = await api.get("admin", **api.window)
    assert (status, body["error"], body["field"]) == (400, "invalid_query", "reason")
    assert audit_of(api.ops_db) == [
        ("operator", "ok", 200, "maintenance plan"),
        ("viewer", "forbidden", 403, "curious"),
        ("admin", "invalid_query", 400, None),
    ]


def test_the_query_is_in_the_openapi_document_with_its_result_schema(
    registered: QuerySpec[BusiestRequest, Busiest],
) -> None:
    """The route, its parameters, its access rule and its typed 200 schema are all derived from the spec."""
    document = openapi_document()
    validate(document)
    operation = document["paths"]["/api/v1/busiest-devices"]["get"]
    assert operation["operationId"] == NAME
    assert {p["name"] for p in operation["parameters"]} == {"start", "end", "compounds", "top", "reason"}
    assert {p["name"] for p in operation["parameters"] if p["required"]} == {"start", "end", "reason"}
    assert "Least role: operator" in operation["description"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/Busiest"}
    schemas = document["components"]["schemas"]
    assert schemas["Busiest"]["properties"]["devices"]["items"] == {
        "$ref": "#/components/schemas/DeviceTally"
    }
    assert set(schemas["DeviceTally"]["properties"]) == {"device_id", "events"}
    assert set(schemas["DeviceTally"]["required"]) == {"device_id", "events"}


def test_the_test_query_is_registered_only_for_its_tests() -> None:
    """Outside the fixture the registry and the checked-in OpenAPI document know nothing of it."""
    assert NAME not in QUERIES
    assert "/api/v1/busiest-devices" not in json.loads(OPENAPI_FILE.read_text(encoding="utf-8"))["paths"]


def test_every_response_of_the_checked_in_document_is_typed() -> None:
    """No operation answers an untyped object any more: each 200 names a schema of components."""
    document = openapi_document()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if operation["operationId"] == "openapi":
                continue
            if "application/octet-stream" in operation["responses"]["200"]["content"]:
                continue  # the evidence file route answers bytes
            schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
            ref = schema.get("$ref") or schema["items"]["$ref"]
            assert ref.removeprefix("#/components/schemas/") in document["components"]["schemas"], (
                path,
                method,
            )


def test_the_registry_refuses_a_second_spec_on_one_route() -> None:
    """Two specs may not share a name, a route or a subcommand: the registry says which."""
    same_route = dataclasses.replace(SPEC, name="other_name", cli="other-name")
    with pytest.raises(ValueError, match="other_name"):
        index([SPEC, same_route])
    assert set(index([SPEC, dataclasses.replace(same_route, route=Route("GET", "/x", "x"))])) == {
        NAME,
        "other_name",
    }


def test_spec_refuses_a_reason_rule_without_a_reason_field() -> None:
    """A spec that needs a reason its request cannot carry is refused when it is defined."""

    class NoReason(Ranged):
        """No reason field."""

    with pytest.raises(TypeError, match="'reason' field"):
        QuerySpec(
            name="broken",
            request=NoReason,
            result=Busiest,
            role=Role.OPERATOR,
            route=Route("GET", "/broken", "broken"),
            run=busiest,  # type: ignore[arg-type]  # the mismatch is what is refused
            rows=busiest_rows,
            tables=busiest_tables,
            needs_reason=NeedsReason("anything"),
        )


async def test_every_store_config_opens_its_backend(tmp_path: Path) -> None:
    """Every member of StoreConfig has a query backend (InfluxDB 2.x/3.x through InfluxQL, like 1.x)."""
    samples: dict[type[Any], tuple[Any, type[Any]]] = {
        SqliteStoreConfig: (SqliteStoreConfig(path=tmp_path / "store.db"), SqliteQueries),
        InfluxV1StoreConfig: (
            InfluxV1StoreConfig(url="http://127.0.0.1:1", create_database=False),
            InfluxQueries,
        ),
        InfluxV2StoreConfig: (
            InfluxV2StoreConfig(url="http://127.0.0.1:1", org="o", bucket="b", token="t"),
            InfluxQueries,
        ),
    }
    assert set(samples) == set(get_args(get_args(StoreConfig)[0]))
    for config, backend_type in samples.values():
        async with open_query_backend(config) as backend:
            assert type(backend) is backend_type
