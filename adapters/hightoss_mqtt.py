"""Thrown-object (高空抛物) camera, MQTT JSON modelled on Dahua's HighTossDetect event.

Topics: ``hightoss/<sn>/alarm`` for detections (and heartbeats), ``hightoss/<sn>/status`` for
birth/will. Quirks: coordinates on the vendor's 0..8191 grid, tracks as ``[t_ms, x, y]`` triples, one
alarm split over several posts of a picture group (``GroupID``/``IndexInGroup``/``CountInGroup``:
only the first post of a group is the alarm, the others add pictures), the floor an estimate from
the camera's configured floor table, clips and snapshots as keys in the camera's own storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.base import (
    DeviceContext,
    DeviceTopics,
    Fields,
    ParseResult,
    RawMessage,
    Transport,
    build_event,
    clamp_unit,
    parse_epoch,
    read_mqtt_json,
    status_event,
    topic_parts,
)
from foundation.errors import PayloadRejected
from foundation.events import EventKind, MediaRef, Severity, ThrownObjectPayload, TrajectoryPoint

PREFIX = "hightoss"
GRID = 8191.0
MAX_TRACK_POINTS = 512


@dataclass(frozen=True)
class HighTossMqtt:
    """Facade camera publishing thrown-object detections over MQTT."""

    name: str = "hightoss-mqtt"
    vendor: str = "dahua"
    kind: EventKind = EventKind.THROWN_OBJECT
    transport: Transport = Transport.MQTT
    description: str = (
        "Thrown-object camera, MQTT JSON HighTossDetect alarms with track, frames and floor estimate"
    )
    topic_filter: str | None = f"{PREFIX}/+/+"
    device_topics: DeviceTopics = field(default_factory=lambda: DeviceTopics.under_prefix(PREFIX))
    commands: None = None  # its devices take no commands
    # EventID is no message sequence: Start, Stop and every post of a picture group repeat it, and the
    # camera numbers the events of all its rules with it, so a missing number proves no loss
    sequence: None = None

    def device_ref(self, raw: RawMessage) -> str:
        """The camera serial number in the topic."""
        return topic_parts(raw, PREFIX)[0]

    def parse(self, raw: RawMessage, ctx: DeviceContext) -> ParseResult:
        """A detection -> one thrown_object alarm; heartbeats and follow-up group posts -> none."""
        sn, channel, doc = read_mqtt_json(raw, PREFIX, "alarm")
        if channel == "status":
            return ParseResult(events=(status_event(ctx, self, sn, doc, "online"),))
        code = doc.text("Code", max_len=32)
        if code == "Heartbeat":
            return ParseResult(events=())
        if code != "HighTossDetect":
            raise PayloadRejected("unsupported_event", f"{code!r} is not HighTossDetect", field="Code")
        action = doc.opt_text("Action", max_len=16) or "Pulse"
        if action == "Stop":
            return ParseResult(events=())  # the alarm was raised at Start/Pulse
        index_in_group = doc.opt_integer("IndexInGroup", lo=0, hi=1000) or 1
        if index_in_group > 1:
            return ParseResult(events=())
        event_no = doc.integer("EventID", lo=0)
        seconds = doc.integer("UTC", lo=0, hi=2**33)
        millis = doc.opt_integer("UTCMS", lo=0, hi=999) or 0
        occurred_at = parse_epoch(seconds + millis / 1000, "UTC")
        objects = doc.items("Objects")
        if not objects:
            raise PayloadRejected("missing_field", "a detection needs at least one object", field="Objects")
        main = objects[0]
        confidence = main.number("Confidence", lo=0, hi=100) / 100
        trajectory = _track(main)
        floor = doc.opt_sub("FloorInfo")
        building = unit = None
        start_floor = None
        floor_range: tuple[int, int] | None = None
        if floor is not None:
            building = floor.opt_text("Building", max_len=32)
            unit = floor.opt_text("Unit", max_len=32)
            start_floor = floor.opt_integer("StartFloor", lo=-5, hi=200)
            bounds = floor.raw("FloorRange")
            if bounds is not None:
                floor_range = _floor_range(bounds)
        location = ctx.location
        payload = ThrownObjectPayload(
            building=building or (location.building if location else None),
            unit=unit or (location.unit if location else None),
            start_floor=start_floor,
            floor_range=floor_range,
            confidence=confidence,
            trajectory=trajectory,
            frames=doc.opt_integer("CountInGroup", lo=0, hi=1000),
        )
        device_media = tuple(
            MediaRef(role=role, ref=f"device:{key}")
            for role, key in (
                ("snapshot", doc.opt_text("Snapshot", max_len=256)),
                ("trajectory", doc.opt_text("TrajectoryImage", max_len=256)),
                ("clip", doc.opt_text("Clip", max_len=256)),
            )
            if key is not None
        )
        event = build_event(
            ctx,
            self,
            vendor_key=f"{event_no}|{seconds}.{millis:03d}",
            payload=payload,
            severity=Severity.CRITICAL,
            occurred_at=occurred_at,
            event_code=f"HighTossDetect/{action}",
            device_ref=sn,
            device_media=device_media,
        )
        return ParseResult(events=(event,))


def _track(obj: Fields) -> tuple[TrajectoryPoint, ...]:
    raw_track = obj.raw("Track")
    if raw_track is None:
        return ()
    if not isinstance(raw_track, list) or len(raw_track) > MAX_TRACK_POINTS:
        raise PayloadRejected(
            "bad_field", f"expected a list of at most {MAX_TRACK_POINTS} points", field=obj.path("Track")
        )
    points = []
    for i, item in enumerate(raw_track):
        where = f"{obj.path('Track')}[{i}]"
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
        ):
            raise PayloadRejected("bad_field", "expected [t_ms, x, y] integers", field=where)
        t_ms, x, y = item
        if t_ms < 0 or not (-64 <= x <= GRID + 64 and -64 <= y <= GRID + 64):
            raise PayloadRejected("out_of_range", f"point {item} is off the 0..8191 grid", field=where)
        points.append(TrajectoryPoint(t_ms=t_ms, x=clamp_unit(x / GRID), y=clamp_unit(y / GRID)))
    return tuple(points)


def _floor_range(bounds: object) -> tuple[int, int]:
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and -5 <= v <= 200 for v in bounds)
        or bounds[0] > bounds[1]
    ):
        raise PayloadRejected("bad_field", "expected [lowest, highest] floors", field="FloorInfo.FloorRange")
    return bounds[0], bounds[1]


DIALECT = HighTossMqtt()
