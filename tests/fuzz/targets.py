"""Fuzz targets: each takes arbitrary bytes and fails (raises) only on a bug.

A target stands for one place where a peer's bytes enter: a device dialect behind the intake (the
whole path: device resolution, parser, event model), the multipart reader, the picture check, the
ingester's decoding of an uplink message (topic and body), and what the gateway reads from the
district (receipts and watch lists). A refusal with a specific reason is the expected answer to
garbage; any other exception, or a refusal that hides a crash (``parser_error``), is a finding.

Inputs of the intake, multipart and ingester targets carry their envelope in the first line (the
MQTT topic or HTTP content type), so the fuzzer mutates it too. Inputs of the HTTP intake targets may
carry the authentication headers on the lines after it (``Authorization: ...``, ``X-Cgw-Timestamp:
...``, ``X-Cgw-Signature: ...``): they go through the push authentication first (with a fixed clock
and nonce key, so kept inputs stay valid), which must answer with an admission of the path's own
device or a refusal with a known reason, and nothing else. The body then goes to the intake whatever
the verdict, as if its sender had authenticated (like the watch-list target's digest retry), so the
parsers stay reachable from every input.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from urllib.request import parse_http_list, parse_keqv_list

from multidict import CIMultiDict

from adapters import DIALECTS
from adapters.base import RawMessage, Transport
from adapters.multipart import split_multipart
from adapters.pictures import MAX_PICTURE_BYTES, MAX_PICTURE_PIXELS, check_picture, picture_size
from device_sims.devices import sample_secret
from device_sims.inventory import DISTRICT_ID, sample_device_secrets, sample_devices, write_sample_config
from district.config import DistrictConfig
from district.ingester import Round, decode_message
from foundation.errors import PayloadRejected
from foundation.events import Event
from foundation.identity import Pseudonymizer
from gateway.config import GatewayConfig, load_config
from gateway.intake import Intake, IntakeItem, Outcome
from gateway.outbox import StoreEvents
from gateway.push_auth import REFUSAL_REASONS, PushAuthenticator, Refusal
from uplink.lineprotocol import to_line
from uplink.protocol import decode_receipt
from uplink.watchlist_document import WatchListRejected, canonical_json, decode_document

MAX_BODY = 1024 * 1024


class InvariantError(AssertionError):
    """An input that broke an invariant (the fuzzer reports it as a crash)."""


@dataclass(frozen=True)
class Target:
    """One fuzz target: a name (its corpus directory) and the function the fuzzer calls."""

    name: str
    run: Callable[[bytes], None]


def split_envelope(data: bytes) -> tuple[str, bytes]:
    """First line (latin-1, so any bytes decode) and the rest."""
    head, _, body = data.partition(b"\n")
    return head.decode("latin-1"), body


@cache
def fuzz_gateway_config() -> GatewayConfig:
    """The sample compound's configuration (in a temporary directory nothing is written to)."""
    directory = Path(tempfile.mkdtemp(prefix="cgw-fuzz-"))
    path = write_sample_config(
        directory / "gateway.toml", state_dir=directory / "state", http_port=8480, mqtt_port=1883
    )
    return load_config(path)


@cache
def fuzz_intake() -> Intake:
    """The sample compound's intake, as its gateway would build it."""
    config = fuzz_gateway_config()
    return Intake(config, Pseudonymizer(b"fuzz-key-" * 4, config.compound.compound_id))


def _transport_of(dialect: str) -> Transport:
    return DIALECTS[dialect].transport


def _device_of(dialect: str) -> str:
    return next(d.id for d in sample_devices() if d.dialect == dialect)


def intake_item(dialect: str, data: bytes) -> IntakeItem:
    """What the transport of ``dialect`` would hand the intake for these bytes (envelope line first)."""
    head, body = split_envelope(data)
    transport = _transport_of(dialect)
    if transport is Transport.MQTT:
        return IntakeItem("mqtt", RawMessage(body, topic=head), MAX_BODY)
    if transport is Transport.HTTP_DEVICE:
        return IntakeItem("http_device", RawMessage(body, content_type=head), MAX_BODY, _device_of(dialect))
    return IntakeItem("http_platform", RawMessage(body, content_type=head), MAX_BODY, dialect)


def classify(dialect: str, data: bytes) -> Outcome:
    """Run the sample compound's intake on one input."""
    if _transport_of(dialect) is not Transport.MQTT:
        data = strip_auth_headers(data)
    return fuzz_intake().classify(intake_item(dialect, data))


AUTH_HEADERS = ("authorization", "x-cgw-timestamp", "x-cgw-signature")
FUZZ_NONCE_KEY = b"compound-gateway fuzz nonce key!"
FUZZ_REMOTE = "192.168.1.11"


def split_http_envelope(data: bytes) -> tuple[str, CIMultiDict[str], bytes]:
    """Content type (first line), the authentication header lines after it, and the body."""
    head, _, rest = data.partition(b"\n")
    headers: CIMultiDict[str] = CIMultiDict()
    while True:
        line, newline, after = rest.partition(b"\n")
        name, colon, value = line.partition(b":")
        if not newline or not colon or name.strip().decode("latin-1").lower() not in AUTH_HEADERS:
            return head.decode("latin-1"), headers, rest
        # as aiohttp decodes header values: UTF-8, undecodable bytes kept as surrogates
        headers.add(name.strip().decode("latin-1"), value.strip().decode("utf-8", "surrogateescape"))
        rest = after


def strip_auth_headers(data: bytes) -> bytes:
    """The input without its authentication header lines (what the intake sees: envelope and body)."""
    head = data.partition(b"\n")[0]
    _, headers, body = split_http_envelope(data)
    return head + b"\n" + body if headers else data


def fuzz_authenticator() -> PushAuthenticator:
    """A fresh authenticator (no nonce counts used yet) at ``SEED_TIME``, with a fixed nonce key."""
    return PushAuthenticator(
        fuzz_gateway_config(),
        sample_device_secrets(),
        clock=SEED_TIME.timestamp,
        nonce_key=FUZZ_NONCE_KEY,
    )


def auth_check(dialect: str, data: bytes) -> None:
    """The push authentication on an HTTP input's headers: admits the path's own sender, or refuses."""
    transport = _transport_of(dialect)
    _, headers, body = split_http_envelope(data)
    auth = fuzz_authenticator()
    if transport is Transport.HTTP_DEVICE:
        device = _device_of(dialect)
        verdict = auth.check("http_device", device, FUZZ_REMOTE, f"/push/{device}", headers)
        expected = device
    else:
        verdict = auth.check("http_platform", dialect, FUZZ_REMOTE, f"/platform/{dialect}", headers)
        expected = f"platform:{dialect}"
        if not isinstance(verdict, Refusal):
            verdict = auth.check_body(verdict, body, FUZZ_REMOTE) or verdict
    if isinstance(verdict, Refusal):
        if verdict.reason not in REFUSAL_REASONS or verdict.answer not in REFUSAL_REASONS:
            raise InvariantError(
                f"{dialect}: refused with unknown reason {verdict.reason!r}/{verdict.answer!r}"
            )
        if verdict.peer not in {expected, "unknown"} or not verdict.challenges:
            raise InvariantError(f"{dialect}: refusal counted against {verdict.peer!r} without challenge")
        return
    if verdict.peer != expected:
        raise InvariantError(f"{dialect}: admitted as {verdict.peer!r} on the path of {expected!r}")
    _check_admitted(dialect, headers, body)


def _check_admitted(dialect: str, headers: CIMultiDict[str], body: bytes) -> None:
    """An admitted input really carries the path's sender's credentials (checked here independently)."""
    if _transport_of(dialect) is Transport.HTTP_PLATFORM:
        stamp = headers.get("X-Cgw-Timestamp", "")
        key = sample_secret(dialect).encode()
        signature = hmac.new(key, stamp.encode("utf-8", "surrogateescape") + b"\n" + body, hashlib.sha256)
        if headers.get("X-Cgw-Signature", "").lower() != signature.hexdigest():
            raise InvariantError(f"{dialect}: admitted with a signature that does not match the body")
        return
    authorization = headers.get("Authorization", "")
    fields = parse_keqv_list(parse_http_list(authorization.partition(" ")[2]))
    if fields.get("username") != _device_of(dialect):
        raise InvariantError(f"{dialect}: admitted with the credentials of {fields.get('username')!r}")


def intake_target(dialect: str) -> Callable[[bytes], None]:
    """The intake as the transports call it, for one dialect's devices."""

    def run(data: bytes) -> None:
        if _transport_of(dialect) is not Transport.MQTT:
            auth_check(dialect, data)
        outcome = classify(dialect, data)
        if outcome.rejection is not None:
            if outcome.rejection.reason == "parser_error":
                raise InvariantError(f"{dialect} parser crashed: {outcome.rejection.detail}")
            if not outcome.rejection.detail:
                raise InvariantError(f"{dialect}: rejection {outcome.rejection.reason} without a detail")
            return
        if not isinstance(outcome.operation, StoreEvents):
            raise InvariantError(f"{dialect}: accepted without events")
        compound = fuzz_gateway_config().compound.compound_id
        for row in outcome.operation.events:
            event = Event.model_validate_json(row.body)  # what is stored reads back as an event
            if event.device_id != outcome.device or event.compound_id != compound:
                raise InvariantError(f"{dialect}: event attributed to {event.device_id}/{event.compound_id}")

    return run


def multipart_target(data: bytes) -> None:
    """The multipart reader: parts, or a multipart-specific refusal."""
    content_type, body = split_envelope(data)
    try:
        parts = split_multipart(body, content_type)
    except PayloadRejected as exc:
        if exc.rejection.reason not in {"wrong_content_type", "malformed_multipart"}:
            raise InvariantError(f"multipart refused with {exc.rejection.reason}") from exc
        return
    if not parts:
        raise InvariantError("multipart accepted with no parts")


def picture_target(data: bytes) -> None:
    """The picture check: a JPEG/PNG within bounds, or bad_picture / picture_too_large."""
    try:
        check_picture(data, None, "picture", max_bytes=MAX_PICTURE_BYTES)
    except PayloadRejected as exc:
        if exc.rejection.reason not in {"bad_picture", "picture_too_large"}:
            raise InvariantError(f"picture refused with {exc.rejection.reason}") from exc
        return
    size = picture_size(data)
    if size is None or size[0] * size[1] > MAX_PICTURE_PIXELS:
        raise InvariantError(f"picture accepted with size {size}")


FUZZ_DISTRICT = DistrictConfig.model_validate(
    {
        "district_id": DISTRICT_ID,
        "ingest": {"name": "fuzz", "max_message_bytes": 64 * 1024},
        "store": {"type": "sqlite", "path": "/nonexistent/fuzz.db"},
    }
)


def uplink_target(data: bytes) -> None:
    """The ingester's decoding of one message: events of the topic's compound, statuses, or dead letters."""
    topic, body = split_envelope(data)
    into = Round()
    decode_message(FUZZ_DISTRICT, topic, body, into)
    parts = topic.split("/")
    for event in into.events:
        if len(parts) != 5 or event.compound_id != parts[3] or event.district_id != DISTRICT_ID:
            raise InvariantError(f"event of {event.compound_id} taken from topic {topic!r}")
        # what the stores will do with it must work: JSON for SQLite, line protocol for InfluxDB
        event.model_dump_json().encode("utf-8")
        to_line(event).encode("utf-8")
    for letter in into.letters:
        if letter.reason == "decoder_error":
            raise InvariantError(f"the ingester's decoder crashed: {letter.detail}")
        if not letter.reason or not letter.detail:
            raise InvariantError(f"dead letter without reason or detail: {letter}")
    for compound, state, at in into.statuses:
        (at or "").encode("utf-8")
        if compound != parts[3] or state not in {"online", "offline", "stopped"}:
            raise InvariantError(f"status {state!r} of {compound} from {topic!r}")


def receipt_target(data: bytes) -> None:
    """A receipt from the district: event ids, or a refusal."""
    try:
        ids = decode_receipt(data)
    except PayloadRejected:
        return
    if not all(isinstance(i, str) and 8 <= len(i) <= 64 and i.encode("utf-8") for i in ids):
        raise InvariantError("receipt accepted with a malformed id")


def watchlist_target(data: bytes) -> None:
    """A watch-list document; JSON objects are also tried with a correct digest, to reach validation."""
    documents = [data]
    try:
        inner = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        inner = None
    if isinstance(inner, dict) and isinstance(inner.get("list"), dict):
        content = inner["list"]
        try:
            digest = hashlib.sha256(canonical_json(content)).hexdigest()
        except UnicodeEncodeError:  # lone surrogates: decode_document must refuse the raw form
            digest = None
        if digest is not None:
            documents.append(json.dumps({"list": content, "sha256": digest}).encode())
    for document in documents:
        try:
            watch_list = decode_document(document, district_id=DISTRICT_ID)
        except WatchListRejected:
            continue
        if watch_list.district_id != DISTRICT_ID:
            raise InvariantError("a list of another district was accepted")


def canary_target(data: bytes) -> None:
    """A planted bug, to show the harness finds and reports one (not in the regular set)."""
    if len(data) >= 4 and data[0] == 0x46 and data[1] == 0x55 and data[2] == 0x5A and data[3] == 0x5A:
        raise InvariantError("the canary: input starts with FUZZ")


TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        *(Target(f"intake-{name}", intake_target(name)) for name in sorted(DIALECTS)),
        Target("multipart", multipart_target),
        Target("picture", picture_target),
        Target("uplink-message", uplink_target),
        Target("receipt", receipt_target),
        Target("watchlist", watchlist_target),
    ]
}
CANARY = Target("canary", canary_target)
SEED_TIME = datetime(2026, 6, 1, 0, 30, tzinfo=UTC)
