"""The seed corpus: real payloads of every simulated device, the golden samples, and what the district sends."""

from __future__ import annotations

import hashlib
import hmac
import io
import random
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from adapters import DIALECTS
from adapters.base import Transport
from device_sims.devices import HttpPost, asset, build_sim, sample_secret
from device_sims.inventory import DISTRICT_ID, sample_devices
from gateway.outbox import StoreEvents
from tests.digest_by_hand import digest_authorization
from tests.fuzz.targets import (
    SEED_TIME,
    TARGETS,
    classify,
    fuzz_authenticator,
    fuzz_gateway_config,
    split_envelope,
)
from tests.test_parsers_property import golden_cases
from uplink.protocol import encode_batch, encode_receipt
from uplink.watchlist_document import FaceSubject, PlateEntry, WatchList, encode_document, encode_embedding


def _envelope(head: str, body: bytes) -> bytes:
    return head.encode("latin-1", errors="replace") + b"\n" + body


def device_seeds() -> dict[str, list[bytes]]:
    """Per dialect: routine, alarm and malformed messages of its simulator, and the golden samples."""
    seeds: dict[str, list[bytes]] = defaultdict(list)
    for dialect in sorted(DIALECTS):
        device = next(d for d in sample_devices() if d.dialect == dialect)
        sim = build_sim(device)
        rng = random.Random(dialect)
        messages = [sim.routine(SEED_TIME + timedelta(minutes=i), rng) for i in range(4)]
        messages += [sim.alarm(SEED_TIME + timedelta(minutes=9), rng), *sim.malformed(rng)]
        for message in messages:
            if isinstance(message, HttpPost):
                seeds[dialect].append(_envelope(message.content_type, message.body))
            else:
                seeds[dialect].append(_envelope(message.topic, message.payload))
        for body, content_type, topic in golden_cases(dialect):
            seeds[dialect].append(_envelope(topic or content_type or "", body))
    return seeds


def auth_seeds(device: dict[str, list[bytes]]) -> dict[str, list[bytes]]:
    """The HTTP dialects' seeds with their sender's credentials, and with wrong ones (header lines)."""
    nonce = fuzz_authenticator().new_nonce()
    stamp = str(int(SEED_TIME.timestamp()))
    seeds: dict[str, list[bytes]] = {}
    for dialect, inputs in device.items():
        transport = DIALECTS[dialect].transport
        if transport is Transport.MQTT:
            continue
        out = seeds[dialect] = []
        for index, data in enumerate(inputs):
            head, body = split_envelope(data)
            if transport is Transport.HTTP_PLATFORM:
                secret = sample_secret(dialect).encode()
                good = hmac.new(secret, stamp.encode() + b"\n" + body, hashlib.sha256).hexdigest()
                lines = [f"X-Cgw-Timestamp: {stamp}", f"X-Cgw-Signature: {good}"]
                wrong = [f"X-Cgw-Timestamp: {int(stamp) - 3600}", f"X-Cgw-Signature: {good[::-1]}"]
            else:
                sender = next(d for d in sample_devices() if d.dialect == dialect)
                other = next(d for d in sample_devices() if d.dialect != dialect and d.ref is None)
                uri = f"/push/{sender.id}"
                algorithm = ("MD5", "SHA-256")[index % 2]
                lines = [
                    f"Authorization: {digest_authorization(sender.id, sender.secret, nonce, uri, 1, algorithm=algorithm)}"
                ]
                wrong = [f"Authorization: {digest_authorization(other.id, other.secret, nonce, uri, 2)}"]
            out.append("\n".join([head, *lines]).encode("latin-1") + b"\n" + body)
            if index < 2:
                out.append("\n".join([head, *wrong]).encode("latin-1") + b"\n" + body)
    return seeds


def uplink_seeds(device: dict[str, list[bytes]]) -> list[bytes]:
    """Batches as a gateway sends them (events from the device seeds), statuses, and a spoofed batch."""
    compound = fuzz_gateway_config().compound.compound_id
    bodies: dict[str, list[bytes]] = defaultdict(list)
    for dialect, inputs in device.items():
        for data in inputs:
            operation = classify(dialect, data).operation
            if isinstance(operation, StoreEvents):
                for row in operation.events:
                    bodies[row.kind].append(row.body)
    prefix = f"cgw/v1/{DISTRICT_ID}/{compound}"
    out = [
        _envelope(f"{prefix}/{kind}", encode_batch(DISTRICT_ID, compound, rows))
        for kind, rows in bodies.items()
    ]
    out.append(_envelope(f"{prefix}/status", b'{"state":"online","at":"2026-06-01T00:30:00+00:00"}'))
    out.append(_envelope(f"{prefix}/status", b'{"state":"offline"}'))
    kind, rows = next(iter(bodies.items()))
    spoofed = f"cgw/v1/{DISTRICT_ID}/36010400012160000102/{kind}"
    out.append(_envelope(spoofed, encode_batch(DISTRICT_ID, compound, rows)))
    return out


def picture_seeds() -> list[bytes]:
    """Small JPEGs (baseline, progressive) and a PNG, and the simulators' own pictures."""
    out = []
    for fmt, options in (("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {})):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 24), (200, 30, 30)).save(buffer, fmt, **options)
        out.append(buffer.getvalue())
    out += [asset("plate.jpg"), asset("vehicle-scene.jpg")]
    return out


def watchlist_seeds() -> list[bytes]:
    """A face list and a plate list as the district publishes them."""
    rng = np.random.default_rng(5)
    face = WatchList(
        district_id=DISTRICT_ID,
        list_id="key-persons",
        version=3,
        kind="face",
        threshold=0.5,
        issued_at=SEED_TIME,
        subjects=(
            FaceSubject(
                subject_id="S-0001",
                label="在逃人员",
                embeddings=(encode_embedding(rng.normal(size=128).astype(np.float32)),),
            ),
        ),
    )
    plates = WatchList(
        district_id=DISTRICT_ID,
        list_id="vehicles",
        version=1,
        kind="plate",
        issued_at=SEED_TIME,
        plates=(PlateEntry(plate="赣A12345", label="布控车辆"),),
    )
    return [encode_document(face), encode_document(plates)]


def write_seeds(corpus: Path) -> dict[str, int]:
    """Write every target's seeds, named by content hash.

    Device seeds are the same on every run; uplink batches carry the time the intake received their
    events, so re-running adds new ones beside the old (delete the old first to replace them).
    """
    device = device_seeds()
    multipart = [d for inputs in device.values() for d in inputs if d.startswith(b"multipart/")]
    seeds: dict[str, list[bytes]] = {f"intake-{dialect}": inputs for dialect, inputs in device.items()}
    for dialect, inputs in auth_seeds(device).items():
        seeds[f"intake-{dialect}"] = seeds[f"intake-{dialect}"] + inputs
    seeds["multipart"] = multipart
    seeds["picture"] = picture_seeds()
    seeds["uplink-message"] = uplink_seeds(device)
    seeds["receipt"] = [encode_receipt(["0123456789abcdef0123456789abcdef"]), b'{"v":1,"event_ids":[]}']
    seeds["watchlist"] = watchlist_seeds()
    assert set(seeds) == set(TARGETS), set(TARGETS) ^ set(seeds)
    counts = {}
    for name, inputs in seeds.items():
        directory = corpus / name
        directory.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            TARGETS[name].run(data)
            (directory / f"seed-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)  # noqa: S324 - a name
        counts[name] = len(inputs)
    return counts
