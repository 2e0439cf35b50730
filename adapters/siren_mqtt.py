"""Alarm output (siren / strobe / broadcast loudspeaker), MQTT JSON: sounds on command, reports faults.

Why MQTT and not HTTP: the compound already runs a broker with one account per device and an ACL
written from ``DeviceTopics``, so a siren needs no listening port, the gateway no per-speaker
HTTP credentials, and nothing polls it: its last will tells the gateway the moment it drops off
the network (an unplugged siren must be known before the fire, not found at it). Broker and
gateway both sit in the compound, so a local rule sounds the siren while the district is
unreachable.

Topics: ``siren/<sn>/report`` for its reports, ``siren/<sn>/status`` for birth/will, and the
command topics every MQTT dialect has. Reports::

    {"sn": "SR2026A0101", "seq": 42, "ts": 1780000000000, "event": "fault", "output": 1,
     "fault": "speaker_open", "detail": "..."}

``event`` is ``heartbeat``, ``sounding`` (``cause`` remote / button, ``clip`` when a clip
plays), ``silent`` (``cause`` remote / button / timeout), ``fault`` or ``fault_cleared``.
Only the faults become canonical events, as ``device_status`` (fault, then online again): there
is no event kind for an alarm output, and adding one would change the event schema, the uplink's
line protocol and the district console for what the command's own states already say (a command
to sound is verified by reading the output back; the rule that fired it is an event itself).
``sounding`` and ``silent`` reports are accepted, counted by ``seq``, and produce nothing.

Commands (``SirenCommands``):

- ``siren/<sn>/cmd/req``: ``{"id": <command id>, "op": "alarm_on" | "alarm_off" | "play",
  "output": 1, "clip": 3}`` (``clip`` with ``play`` only: a preset stored on the device, never
  free text); ``output`` counts from 1, like our channels.
- ``siren/<sn>/cmd/resp``: ``{"id": <echoed>, "op": ..., "ret": 0, "msg": ""}``; any other ``ret``
  is a refusal and ``msg`` the device's reason.
- ``siren/<sn>/state/req``: ``{"id": <query id>, "op": "get_output", "output": 1}``;
  ``.../state/resp``: ``{"id": <echoed>, "op": "get_output", "ret": 0, "output": 1,
  "mode": "idle" | "alarm" | "clip"}``.

No reference describes such a device's messages (``shared/reference/downlink-console-scale.md``
notes there is no MQTT standard); the names are ours, in the style of the other MQTT dialects, and a
real installation's belong here and nowhere else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from adapters.base import (
    DeviceContext,
    DeviceTopics,
    Fields,
    JsonSequence,
    ParseResult,
    RawMessage,
    Transport,
    build_event,
    load_json_object,
    parse_epoch,
    read_mqtt_json,
    status_event,
    topic_parts,
)
from adapters.commands import (
    ActuatorState,
    Command,
    CommandAction,
    CommandNotSupportedError,
    CommandReply,
    DeviceRequest,
    MqttRequest,
    ReplyStatus,
    StateReading,
    is_valid_id,
)
from foundation.errors import PayloadRejected
from foundation.events import DeviceState, DeviceStatusPayload, EventKind, Severity

PREFIX = "siren"
NAME = "siren-mqtt"
QUIET_REPORTS = {"heartbeat", "sounding", "silent"}
OPS = {
    CommandAction.SIREN_ON: "alarm_on",
    CommandAction.SIREN_OFF: "alarm_off",
    CommandAction.BROADCAST: "play",
}
GET_OUTPUT = "get_output"
RET_OK = 0
MODES = {"idle": ActuatorState.SILENT, "alarm": ActuatorState.SOUNDING, "clip": ActuatorState.SOUNDING}
_TOPIC_UNSAFE = re.compile(r"[/+#\x00-\x1f]")


def _answer(raw: RawMessage, channel: str, ops: set[str]) -> tuple[Fields, str]:
    """The answer document on ``siren/<sn>/<channel>/resp`` and the id it echoes, or reject."""
    parts = (raw.topic or "").split("/")
    if len(parts) != 4 or parts[0] != PREFIX or not parts[1] or parts[2:] != [channel, "resp"]:
        raise PayloadRejected("bad_topic", f"expected {PREFIX}/<sn>/{channel}/resp, got {raw.topic!r}")
    doc = Fields(load_json_object(raw.body, what="answer"))
    op = doc.raw("op")
    if not isinstance(op, str) or op not in ops:
        raise PayloadRejected(
            "bad_field", f"expected one of {sorted(ops)}, got {doc.raw('op')!r}", field="op"
        )
    echoed = doc.text("id", max_len=64)
    if not is_valid_id(echoed):
        raise PayloadRejected("bad_field", "not a command or query id we send", field="id")
    return doc, echoed


def _reason(doc: Fields, ret: int) -> str:
    """The device's ``msg``; a blank one (firmware pad it) falls back to the code."""
    message = doc.raw("msg")
    if isinstance(message, str) and not message.strip():
        return f"ret {ret}"
    return doc.opt_text("msg", max_len=200) or f"ret {ret}"


@dataclass(frozen=True)
class SirenCommands:
    """Sounds, silences and plays clips on the alarm output, and reads the output back."""

    actions: frozenset[CommandAction] = frozenset(OPS)

    def _base(self, sn: str) -> str:
        if not sn or len(sn) > 64 or _TOPIC_UNSAFE.search(sn):
            raise CommandNotSupportedError(NAME, f"serial {sn[:70]!r} cannot be used in an MQTT topic")
        return f"{PREFIX}/{sn}"

    def request(self, command: Command, device_ref: str) -> MqttRequest:
        """``alarm_on`` / ``alarm_off`` / ``play`` on ``siren/<sn>/cmd/req``; the answer on ``.../cmd/resp``."""
        op = OPS.get(command.action)
        if op is None:
            raise CommandNotSupportedError(NAME, f"an alarm output has no {command.action.value}")
        base = self._base(device_ref)
        body: dict[str, object] = {"id": command.command_id, "op": op, "output": command.channel}
        if command.clip is not None:
            body["clip"] = command.clip
        return MqttRequest(
            topic=f"{base}/cmd/req",
            payload=json.dumps(body).encode(),
            reply_topic=f"{base}/cmd/resp",
            correlation_id=command.command_id,
        )

    def decode_reply(self, raw: RawMessage, sent: DeviceRequest | None = None) -> CommandReply:
        """``ret`` 0 is OK; any other is a refusal with ``msg`` as the reason (``sent`` unused: the id is echoed)."""
        doc, echoed = _answer(raw, "cmd", set(OPS.values()))
        ret = doc.integer("ret", lo=0, hi=99_999)
        if ret == RET_OK:
            return CommandReply(echoed, ReplyStatus.OK, device_code=str(ret))
        return CommandReply(echoed, ReplyStatus.REFUSED, reason=_reason(doc, ret), device_code=str(ret))

    def state_request(self, query_id: str, channel: int, device_ref: str) -> MqttRequest:
        """``get_output`` on ``siren/<sn>/state/req``; the answer on ``.../state/resp``."""
        if not is_valid_id(query_id):
            raise CommandNotSupportedError(NAME, f"query id {query_id[:70]!r} is not a valid id")
        if not 1 <= channel <= 64:
            raise CommandNotSupportedError(NAME, f"channel {channel} is outside 1..64")
        base = self._base(device_ref)
        body = {"id": query_id, "op": GET_OUTPUT, "output": channel}
        return MqttRequest(
            topic=f"{base}/state/req",
            payload=json.dumps(body).encode(),
            reply_topic=f"{base}/state/resp",
            correlation_id=query_id,
        )

    def decode_state(self, raw: RawMessage, sent: DeviceRequest | None = None) -> StateReading:
        """``mode`` idle -> silent, alarm or clip -> sounding; a refused query reads unknown with the reason."""
        doc, echoed = _answer(raw, "state", {GET_OUTPUT})
        ret = doc.integer("ret", lo=0, hi=99_999)
        output = doc.integer("output", lo=1, hi=64)
        if ret != RET_OK:
            detail = f"the device refused the query: {_reason(doc, ret)}"
            return StateReading(echoed, output, ActuatorState.UNKNOWN, detail)
        mode = doc.text("mode", max_len=16)
        state = MODES.get(mode)
        if state is None:
            raise PayloadRejected("bad_field", f"unknown mode {mode!r}", field="mode")
        return StateReading(echoed, output, state)


@dataclass(frozen=True)
class SirenMqtt:
    """Alarm output (siren / broadcast speaker) reporting over MQTT and taking commands."""

    name: str = NAME
    vendor: str = "generic"
    kind: EventKind = EventKind.DEVICE_STATUS
    transport: Transport = Transport.MQTT
    description: str = (
        "Alarm output (siren / broadcast speaker), MQTT JSON reports (siren/<sn>/report), commands"
    )
    topic_filter: str | None = f"{PREFIX}/+/+"
    device_topics: DeviceTopics = field(default_factory=lambda: DeviceTopics.under_prefix(PREFIX))
    commands: SirenCommands = field(default_factory=SirenCommands)
    # every report takes the next seq; a reboot starts again
    sequence: JsonSequence = field(default_factory=lambda: JsonSequence(("seq",)))

    def device_ref(self, raw: RawMessage) -> str:
        """The serial number in the topic."""
        return topic_parts(raw, PREFIX)[0]

    def parse(self, raw: RawMessage, ctx: DeviceContext) -> ParseResult:
        """A fault (or its end) -> one device_status event; other reports -> none; status -> device_status."""
        sn, channel, doc = read_mqtt_json(raw, PREFIX, "report")
        if channel == "status":
            return ParseResult(events=(status_event(ctx, self, sn, doc, "online"),))
        seq = doc.integer("seq", lo=0, hi=2**32)
        ts_ms = doc.integer("ts", lo=0, hi=2**43)
        occurred_at = parse_epoch(ts_ms / 1000, "ts")
        report = doc.text("event", max_len=16)
        if report in QUIET_REPORTS:
            return ParseResult(events=(), sequence=seq)
        if report not in {"fault", "fault_cleared"}:
            raise PayloadRejected(
                "unsupported_event", f"{report!r} is not a report of an alarm output", field="event"
            )
        fault = doc.text("fault", max_len=32)
        detail = doc.opt_text("detail", max_len=80)
        said = f"{fault}: {detail}" if detail else fault
        faulty = report == "fault"
        payload = DeviceStatusPayload(
            state=DeviceState.FAULT if faulty else DeviceState.ONLINE,
            reason=said if faulty else f"fault cleared: {said}",
        )
        event = build_event(
            ctx,
            self,
            vendor_key=f"{seq}|{ts_ms}|{report}",
            payload=payload,
            severity=Severity.WARNING if faulty else Severity.INFO,
            occurred_at=occurred_at,
            event_code=f"{report}/{fault}",
            device_ref=sn,
        )
        return ParseResult(events=(event,), sequence=seq)


DIALECT = SirenMqtt()
