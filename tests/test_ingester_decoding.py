"""The ingester decodes a round off its event loop, so /metrics, PUBACKs and the watchdog keep going.

A round is up to 256 uplink messages of up to 200 events; decoding one took seconds under load, and
while it ran on the event loop the ingester's ``/metrics`` stopped answering (seen by the scale-out
benchmark) and its systemd watchdog pings (``WatchdogSec=30``) stalled with it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from device_sims.canonical import shed_heartbeat
from device_sims.inventory import DISTRICT_ID, compound_id
from district.config import load_district_config
from district.ingester import MESSAGES_PER_ROUND, Ingester, IngestState, Round, decode_message
from foundation.events import utc_now
from foundation.mqtt import Message
from tests.district_data import district_toml
from uplink.protocol import encode_batch, event_topic

EVENTS_PER_MESSAGE = 200


def _round(compound: str) -> list[Message]:
    start = utc_now() - timedelta(hours=1)
    topic = event_topic("cgw/v1", DISTRICT_ID, compound, "ebike_shed")
    messages = []
    for m in range(MESSAGES_PER_ROUND):
        bodies = []
        for n in range(EVENTS_PER_MESSAGE):
            at = start + timedelta(milliseconds=m * EVENTS_PER_MESSAGE + n)
            device = f"{compound[:14]}{n:06d}"
            event = shed_heartbeat(compound, device, f"{m}-{n}", at, scope="decode-test")
            bodies.append(event.model_dump_json().encode())
        body = encode_batch(DISTRICT_ID, compound, bodies)
        messages.append(Message(topic=topic, payload=body, qos=1, retain=False, mid=m + 1, connection=1))
    return messages


async def test_a_full_round_decodes_while_the_event_loop_keeps_turning(tmp_path: Path) -> None:
    """While a full round (51,200 events) decodes, the loop runs other work; the result is unchanged.

    Checked to fail: with ``_decode_round`` decoding inline (as before), it returns a ``Round``
    instead of a pending future, and no tick of the loop happens until the whole round is decoded.
    """
    path = tmp_path / "district.toml"
    path.write_text(district_toml(tmp_path, store=f'type = "sqlite"\npath = "{tmp_path}/events.db"'))
    config = load_district_config(path)
    batch = _round(compound_id(1))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    with ThreadPoolExecutor(1) as decoder:
        async with IngestState(tmp_path / "ingest.db", 100) as state:
            ingester = Ingester(config, config.store.build(), state, decoder)
            ticking = asyncio.create_task(ticker())
            try:
                decoding = ingester._decode_round(batch)
                assert isinstance(decoding, asyncio.Future)
                while not decoding.done():
                    ticks_before = ticks
                    await asyncio.sleep(0.05)
                    if not decoding.done():
                        assert ticks > ticks_before, "the event loop stood still while decoding"
                decoded = await decoding
            finally:
                ticking.cancel()
    assert ticks >= 3, f"only {ticks} ticks while a round of {len(batch)} messages decoded"
    inline = Round(messages=batch)
    for message in batch:
        decode_message(config, message.topic, message.payload, inline)
    assert [e.event_id for e in decoded.events] == [e.event_id for e in inline.events]
    assert len(decoded.events) == MESSAGES_PER_ROUND * EVENTS_PER_MESSAGE
    assert decoded.letters == inline.letters == []
    assert ingester.messages_unacked == MESSAGES_PER_ROUND
