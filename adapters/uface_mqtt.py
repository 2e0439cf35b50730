"""Face gate, MQTT JSON (a second vendor; 宇泛-style terminals that publish recognition records).

Topics: ``uface/<sn>/event`` for recognition records, ``uface/<sn>/status`` for the device's
birth/last-will message. Device quirks handled here: local time without a zone, similarity on a
0-100 scale, numeric code tables, an optional base64 JPEG in ``data.image``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from adapters.base import (
    DeviceContext,
    DeviceTopics,
    MediaBlob,
    ParseResult,
    RawMessage,
    Transport,
    build_event,
    parse_iso_time,
    read_mqtt_json,
    status_event,
    topic_parts,
)
from adapters.pictures import MAX_PICTURE_BYTES, check_picture
from foundation.errors import PayloadRejected
from foundation.events import (
    AccessResult,
    Direction,
    EventKind,
    FaceAccessPayload,
    PersonType,
    Severity,
    VerifyMode,
)

PREFIX = "uface"
RESULTS = {1: AccessResult.GRANTED, 2: AccessResult.DENIED, 3: AccessResult.STRANGER}
PERSON_TYPES = {1: PersonType.RESIDENT, 2: PersonType.VISITOR, 3: PersonType.BLOCKLIST, 4: PersonType.ADMIN}
DIRECTIONS = {1: Direction.IN, 2: Direction.OUT}
VERIFY_MODES = {
    "face": VerifyMode.FACE,
    "card": VerifyMode.CARD,
    "face_card": VerifyMode.COMBINED,
    "qrcode": VerifyMode.QR_CODE,
    "password": VerifyMode.PASSWORD,
    "remote": VerifyMode.REMOTE,
    "idcard": VerifyMode.ID_CARD,
}
MAX_IMAGE_B64 = (MAX_PICTURE_BYTES * 4) // 3 + 4


@dataclass(frozen=True)
class UfaceMqtt:
    """Face terminal publishing JSON recognition records over MQTT."""

    name: str = "uface-mqtt"
    vendor: str = "uface"
    kind: EventKind = EventKind.FACE_ACCESS
    transport: Transport = Transport.MQTT
    description: str = "Face gate, MQTT JSON recognition records (uface/<sn>/event) with optional base64 JPEG"
    topic_filter: str | None = f"{PREFIX}/+/+"
    device_topics: DeviceTopics = field(default_factory=lambda: DeviceTopics.under_prefix(PREFIX))
    commands: None = None  # its devices take no commands
    sequence: None = None  # msgId is an opaque string, not a count: only the terminal's silence shows a loss

    def device_ref(self, raw: RawMessage) -> str:
        """The serial number in the topic."""
        return topic_parts(raw, PREFIX)[0]

    def parse(self, raw: RawMessage, ctx: DeviceContext) -> ParseResult:
        """A recognition record -> one face_access event; a status message -> device_status."""
        sn, channel, doc = read_mqtt_json(raw, PREFIX, "event")
        if channel == "status":
            return ParseResult(events=(status_event(ctx, self, sn, doc, "online"),))
        msg_type = doc.text("type", max_len=32)
        if msg_type == "heartbeat":
            return ParseResult(events=())
        if msg_type != "face_rec":
            raise PayloadRejected(
                "unsupported_event", f"{msg_type!r} is not face_rec or heartbeat", field="type"
            )
        msg_id = doc.text("msgId", max_len=64)
        occurred_at = parse_iso_time(doc.text("time", max_len=40), "time", ctx.local_tz)
        data = doc.sub("data")
        result_code = data.integer("recResult", lo=0, hi=99)
        if result_code not in RESULTS:
            raise PayloadRejected(
                "bad_field", f"unknown recognition result {result_code}", field="data.recResult"
            )
        result = RESULTS[result_code]
        person_id = data.opt_text("personId", max_len=64)
        similarity = data.opt_number("similarity", lo=0, hi=100)
        mask = data.opt_integer("mask", lo=0, hi=1)
        verify = data.opt_text("verifyMode", max_len=16) or "face"
        media: tuple[MediaBlob, ...] = ()
        image = data.opt_text("image", max_len=MAX_IMAGE_B64)
        if image is not None:
            try:
                picture = base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError):
                raise PayloadRejected(
                    "bad_picture", "image is not valid base64", field="data.image"
                ) from None
            media = (
                MediaBlob(
                    "face", check_picture(picture, None, "data.image", max_bytes=MAX_PICTURE_BYTES), picture
                ),
            )
        payload = FaceAccessPayload(
            result=result,
            direction=DIRECTIONS.get(data.opt_integer("direction", lo=0, hi=9) or 0, Direction.UNKNOWN),
            verify_mode=VERIFY_MODES.get(verify.lower(), VerifyMode.UNKNOWN),
            person_ref=ctx.pseudonymizer.person_ref(person_id) if person_id else None,
            person_type=PERSON_TYPES.get(
                data.opt_integer("personType", lo=0, hi=99) or 0, PersonType.UNKNOWN
            ),
            similarity=None if similarity is None else similarity / 100,
            mask=None if mask is None else bool(mask),
        )
        event = build_event(
            ctx,
            self,
            vendor_key=msg_id,
            payload=payload,
            severity=Severity.INFO if result is AccessResult.GRANTED else Severity.WARNING,
            occurred_at=occurred_at,
            event_code=f"face_rec/{result_code}",
            device_ref=sn,
            media=media,
        )
        return ParseResult(events=(event,), media=media)


DIALECT = UfaceMqtt()
