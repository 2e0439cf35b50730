"""The operators' HTTP API (aiohttp) and its OpenAPI 3 document, both derived from the query specs.

Every data route goes through ``OperatorService.handle`` (authentication, validation, scope,
audit); this module only maps HTTP onto it. Each spec's route says its method and path: a GET
takes the request's fields as query parameters, a POST as a JSON body; ``{name}`` path segments
are request fields too. Tokens travel as ``Authorization: Bearer <token>``. List filters accept
repeated parameters or comma-separated values. Errors are JSON
``{"error": code, "message": ..., "field": ...}`` with the status the error maps to.
The operators' web console (``district.console``) is mounted into the same application.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, get_args

import structlog
from aiohttp import web
from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from district.config import OperatorApiConfig
from district.console.app import mount_console
from district.health_server import add_operator_api_health
from district.operator_service import Caller, OperatorService
from district.queries.evidence import MEDIA_SPEC, MediaFile
from district.queries.registry import QUERIES
from district.queries.spec import QuerySpec
from foundation.errors import InvalidQueryError, OperatorError
from foundation.health import Health

log = structlog.get_logger(__name__)

API_PREFIX = "/api/v1"
MAX_BODY = 16 * 1024
SERVICE_KEY = web.AppKey("operator_service", OperatorService)
SCHEMA_REF = "#/components/schemas/{model}"


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _query_params(request: web.Request, list_fields: frozenset[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        if key in list_fields:
            params[key] = [part for value in values for part in value.split(",") if part]
        elif len(values) > 1:
            raise InvalidQueryError(f"{key} is given {len(values)} times; give it once", field=key)
        else:
            params[key] = values[0]
    return params


async def _body_params(request: web.Request) -> dict[str, Any]:
    try:
        document = await request.json() if request.can_read_body else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        document = None
    # a body that is not a JSON object becomes a field the request model refuses (400, audited)
    return dict(document) if isinstance(document, dict) else {"unparsed_body": True}


def _error(exc: OperatorError) -> web.Response:
    body = {"error": exc.code, "message": exc.message, "field": exc.field}
    headers = {"WWW-Authenticate": 'Bearer realm="compound-district"'} if exc.status == 401 else None
    return web.json_response(body, status=exc.status, headers=headers)


def _caller(request: web.Request) -> Caller:
    return Caller("api", request.remote)


def _handler(spec: QuerySpec[Any, Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
    list_fields = spec.list_fields()

    async def handle(request: web.Request) -> web.Response:
        service = request.app[SERVICE_KEY]
        if spec.route.method == "POST":
            params = await _body_params(request)
        else:
            try:
                params = _query_params(request, list_fields)
            except InvalidQueryError as exc:
                raw = {"query": request.query_string[:500]}
                await service.refuse(_bearer(request), spec.name, raw, _caller(request), exc)
                return _error(exc)
        params.update(request.match_info)
        try:
            answer = await service.handle(_bearer(request), spec.name, params, _caller(request))
        except OperatorError as exc:
            return _error(exc)
        return web.json_response(answer.dump(), dumps=_dumps)

    return handle


async def _evidence_media(request: web.Request) -> web.StreamResponse:
    """One verified evidence file: operator role, a reason, the event in scope; audited like every action."""
    service = request.app[SERVICE_KEY]
    try:
        params = _query_params(request, frozenset())
    except InvalidQueryError as exc:
        raw = {"query": request.query_string[:500]}
        await service.refuse(_bearer(request), MEDIA_SPEC.name, raw, _caller(request), exc)
        return _error(exc)
    params.update(request.match_info)
    try:
        answer = await service.handle(
            _bearer(request), MEDIA_SPEC.name, params, _caller(request), spec=MEDIA_SPEC
        )
    except OperatorError as exc:
        return _error(exc)
    media: MediaFile = answer.result
    headers = {
        "Content-Type": media.content_type or "application/octet-stream",
        "X-Content-SHA256": media.sha256,
        "X-Evidence-Role": media.role,
        "Cache-Control": "no-store",
        # the type is the compound's word: a browser must save the file, never render it as a page
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f'attachment; filename="{media.role}-{media.sha256[:16]}"',
    }
    return web.FileResponse(media.path, headers=headers)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(), dumps=_dumps)


def build_api(
    service: OperatorService, health: Health | None = None, api: OperatorApiConfig | None = None
) -> web.Application:
    """The operator API: one route per spec in the registry, with ``/healthz``, ``/readyz`` and ``/metrics``.

    The web console (``/console/``, ``district.console``) is served beside it, on the same service:
    the same tokens, roles, scopes and audit log; ``api`` gives its session settings.
    """
    app = web.Application(client_max_size=MAX_BODY)
    app[SERVICE_KEY] = service
    for spec in QUERIES.values():
        app.router.add_route(spec.route.method, API_PREFIX + spec.route.path, _handler(spec))
    app.router.add_get(API_PREFIX + MEDIA_SPEC.route.path, _evidence_media)
    app.router.add_get(API_PREFIX + "/openapi.json", _openapi)
    health = health or Health()
    add_operator_api_health(app, health, service)
    mount_console(app, service, api or OperatorApiConfig(), health)
    return app


# ---- OpenAPI ----------------------------------------------------------------------------------


def _schemas() -> tuple[dict[tuple[str, str], dict[str, Any]], dict[str, Any]]:
    # one pass over every request (validation) and result (serialization) type, so that a model
    # used by several actions is one component and names never clash
    adapters: list[tuple[tuple[str, str], JsonSchemaMode, TypeAdapter[Any]]] = []
    for spec in QUERIES.values():
        adapters.append(((spec.name, "request"), "validation", TypeAdapter(spec.request)))
        adapters.append(((spec.name, "result"), "serialization", spec.adapter))
    keyed, definitions = TypeAdapter.json_schemas(adapters, ref_template=SCHEMA_REF)
    return {key: schema for (key, _), schema in keyed.items()}, definitions.get("$defs", {})


def _parameters(spec: QuerySpec[Any, Any], schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(schema.get("required", []))
    list_fields = spec.list_fields()
    parameters = []
    for name, prop in schema["properties"].items():
        where = "path" if name in spec.route.path_fields else "query"
        if spec.route.method == "POST" and where == "query":
            continue  # the body carries it
        parameter: dict[str, Any] = {
            "name": name,
            "in": where,
            "required": name in required or where == "path",
            "schema": {k: v for k, v in prop.items() if k not in {"title", "description"}},
        }
        if "description" in prop:
            parameter["description"] = prop["description"]
        if name in list_fields:
            parameter["style"] = "form"
            parameter["explode"] = True
        parameters.append(parameter)
    return parameters


def _body(spec: QuerySpec[Any, Any], schema: dict[str, Any]) -> dict[str, Any]:
    carried = set(spec.route.path_fields)
    body = {k: v for k, v in schema.items() if k not in {"properties", "required"}}
    body["properties"] = {k: v for k, v in schema["properties"].items() if k not in carried}
    body["required"] = [r for r in schema.get("required", []) if r not in carried]
    return {"required": True, "content": {"application/json": {"schema": body}}}


def _first_line(result: Any) -> str:
    # what a 200 answer is: the result model's docstring (a list's: its rows')
    rows = get_args(result)
    doc = (rows[0] if rows else result).__doc__ or "The answer"
    return ("Rows, each: " if rows else "") + doc.strip().splitlines()[0]


def _media_operation(error_ref: dict[str, Any], errors: dict[str, Any]) -> dict[str, Any]:
    # the binary route is outside the spec machinery (its answer is bytes, not JSON)
    schema = TypeAdapter(MEDIA_SPEC.request).json_schema()
    parameters = _parameters(MEDIA_SPEC, schema)
    return {
        "operationId": MEDIA_SPEC.name,
        "summary": MEDIA_SPEC.route.summary,
        "description": MEDIA_SPEC.describe_access()
        + " The body is the file; `X-Content-SHA256` repeats its SHA-256, which the client should check.",
        "parameters": parameters,
        "responses": {
            "200": {
                "description": "The file's bytes",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
            **errors,
            **{
                str(status): {"description": text, **error_ref}
                for status, text in MEDIA_SPEC.responses.items()
            },
        },
    }


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
    schemas, definitions = _schemas()
    paths: dict[str, Any] = {}
    for spec in QUERIES.values():
        request_schema = definitions[schemas[spec.name, "request"]["$ref"].rsplit("/", 1)[1]]
        operation: dict[str, Any] = {
            "operationId": spec.name,
            "summary": spec.route.summary,
            "description": spec.describe_access(),
            "parameters": _parameters(spec, request_schema),
        }
        if spec.route.method == "POST":
            operation["requestBody"] = _body(spec, request_schema)
        operation["responses"] = {
            "200": {
                "description": _first_line(spec.result),
                "content": {"application/json": {"schema": schemas[spec.name, "result"]}},
            },
            **errors,
            **{str(status): {"description": text, **error_ref} for status, text in spec.responses.items()},
        }
        paths.setdefault(API_PREFIX + spec.route.path, {})[spec.route.method.lower()] = operation
    paths[API_PREFIX + MEDIA_SPEC.route.path] = {"get": _media_operation(error_ref, errors)}
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
                **definitions,
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
