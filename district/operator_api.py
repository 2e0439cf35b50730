"""The operators' HTTP API (aiohttp) and its OpenAPI 3 document.

Every data route goes through ``OperatorService.handle`` (authentication, validation, scope,
audit); this module only maps HTTP onto it. Tokens travel as ``Authorization: Bearer <token>``.
List filters accept repeated parameters or comma-separated values. Errors are JSON:
``{"error": code, "message": ..., "field": ...}`` with the status the error maps to.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel

from district.health_server import add_operator_api_health
from district.operator_output import to_jsonable
from district.operator_service import ACTIONS, Caller, OperatorService
from district.query_model import AlarmActionRequest
from foundation.errors import InvalidQueryError, OperatorError
from foundation.health import Health

log = structlog.get_logger(__name__)

API_PREFIX = "/api/v1"
LIST_FIELDS = frozenset({"compounds", "kinds", "devices", "group_by", "states"})
MAX_BODY = 16 * 1024
SERVICE_KEY = web.AppKey("operator_service", OperatorService)

ROUTES: dict[str, tuple[str, str]] = {
    "events": ("/events", "Events, newest first, a page at a time"),
    "counts": ("/counts", "Event counts per hour or day, by compound, kind and/or device"),
    "compare": (
        "/compare",
        "查询比对: one plate's or person reference's passages across compounds, in time order",
    ),
    "barrier": ("/barrier", "Every vehicle through one barrier in a window, in time order"),
    "devices": ("/devices", "Device inventory with online status and last seen; online rate per compound"),
    "alarms": ("/alarms", "Alarms (critical events) with their lifecycle state and history"),
    "alarm_counts": ("/alarm-counts", "Alarms per compound and day or month: total, confirmed, false, open"),
    "audit": ("/audit", "The audit log, newest first (admin)"),
}
"""GET routes: action -> (path under /api/v1, summary)."""


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _query_params(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        if key in LIST_FIELDS:
            params[key] = [part for value in values for part in value.split(",") if part]
        elif len(values) > 1:
            raise InvalidQueryError(f"{key} is given {len(values)} times; give it once", field=key)
        else:
            params[key] = values[0]
    return params


def _error(exc: OperatorError) -> web.Response:
    body = {"error": exc.code, "message": exc.message, "field": exc.field}
    headers = {"WWW-Authenticate": 'Bearer realm="compound-district"'} if exc.status == 401 else None
    return web.json_response(body, status=exc.status, headers=headers)


def _caller(request: web.Request) -> Caller:
    return Caller("api", request.remote)


def _handler(action: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        service = request.app[SERVICE_KEY]
        try:
            params = _query_params(request)
        except InvalidQueryError as exc:
            raw = {"query": request.query_string[:500]}
            await service.refuse(_bearer(request), action, raw, _caller(request), exc)
            return _error(exc)
        try:
            answer = await service.handle(_bearer(request), action, params, _caller(request))
        except OperatorError as exc:
            return _error(exc)
        return web.json_response(to_jsonable(answer.result), dumps=_dumps)

    return handle


async def _alarm_action(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    try:
        document = await request.json() if request.can_read_body else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        document = None
    params = dict(document) if isinstance(document, dict) else {"unparsed_body": True}
    params["event_id"] = request.match_info["event_id"]
    try:
        answer = await service.handle(_bearer(request), "alarm_action", params, _caller(request))
    except OperatorError as exc:
        return _error(exc)
    return web.json_response(to_jsonable(answer.result), dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(), dumps=_dumps)


def build_api(service: OperatorService, health: Health | None = None) -> web.Application:
    """The aiohttp application serving the operator API, with ``/healthz``, ``/readyz`` and ``/metrics``."""
    app = web.Application(client_max_size=MAX_BODY)
    app[SERVICE_KEY] = service
    for action, (path, _) in ROUTES.items():
        app.router.add_get(API_PREFIX + path, _handler(action))
    app.router.add_post(API_PREFIX + "/alarms/{event_id}/actions", _alarm_action)
    app.router.add_get(API_PREFIX + "/openapi.json", _openapi)
    add_operator_api_health(app, health or Health(), service)
    return app


# ---- OpenAPI ----------------------------------------------------------------------------------


def _parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema["properties"].items():
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": {k: v for k, v in prop.items() if k not in {"title", "description"}},
        }
        if "description" in prop:
            parameter["description"] = prop["description"]
        if name in LIST_FIELDS:
            parameter["style"] = "form"
            parameter["explode"] = True
        parameters.append(parameter)
    return parameters


def _definitions() -> dict[str, Any]:
    definitions: dict[str, Any] = {}
    for spec in ACTIONS.values():
        schema = spec.model.model_json_schema(ref_template="#/components/schemas/{model}")
        definitions.update(schema.get("$defs", {}))
    return definitions


ERROR_RESPONSES = {
    "400": "Invalid request: the field and the fix are in the message",
    "401": "No token, or an unknown or revoked token",
    "403": "The token's role or scope does not allow this",
    "503": "The district store did not answer in time",
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the API (checked in as ``docs/operator-api.openapi.json``)."""
    error_ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    errors = {code: {"description": text, **error_ref} for code, text in ERROR_RESPONSES.items()}
    paths: dict[str, Any] = {}
    for action, (path, summary) in ROUTES.items():
        spec = ACTIONS[action]
        paths[API_PREFIX + path] = {
            "get": {
                "operationId": action,
                "summary": summary,
                "description": f"Least role: {spec.role.value}. Every call is audited.",
                "parameters": _parameters(spec.model),
                "responses": {
                    "200": {
                        "description": "The answer",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **errors,
                },
            }
        }
    action_schema = AlarmActionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    action_schema["properties"].pop("event_id")
    action_schema["required"] = [r for r in action_schema["required"] if r != "event_id"]
    action_schema.pop("$defs", None)
    paths[API_PREFIX + "/alarms/{event_id}/actions"] = {
        "post": {
            "operationId": "alarm_action",
            "summary": "Move an alarm along new -> acknowledged -> confirmed | false_alarm -> resolved",
            "description": "Least role: operator. The note is required and audited.",
            "parameters": [
                {"name": "event_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": action_schema}}},
            "responses": {
                "200": {
                    "description": "The recorded step",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                **errors,
                "404": {"description": "No such alarm in the token's scope", **error_ref},
                "409": {"description": "The alarm's state does not allow this step", **error_ref},
            },
        }
    }
    paths[API_PREFIX + "/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1"}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "compound-gateway district operator API",
            "version": "1.0",
            "description": "Queries over every compound's events, device status and alarm follow-up."
            " Plate and person lookups need a reason, which the audit log keeps.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                **_definitions(),
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "field": {"type": ["string", "null"]},
                    },
                },
            },
        },
    }
