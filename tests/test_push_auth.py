"""Only a device's (or platform's) own credentials make its events: HTTP push authentication.

Against the running gateway (real HTTP, real outbox): forged pushes are refused with 401, counted in
``/metrics`` and never stored; digest replays and stale nonces; the HTTPS listener; a trusted LAN.
The digest bookkeeping (nonce counts, lifetime, the bounded table) also has unit tests with a clock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import ssl
import subprocess
import tracemalloc
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from urllib.request import parse_http_list, parse_keqv_list

import aiohttp
import pytest

from device_sims.broker import Mosquitto, free_port
from device_sims.devices import CST, CtwingSim, HttpPost, PushCredentials, SimDevice, build_sim, sample_secret
from device_sims.inventory import sample_device_secrets, sample_devices
from device_sims.push_client import PushAuth, post, signature_headers
from device_sims.runner import Runner
from device_sims.scenarios import Step
from foundation.errors import ConfigError
from gateway.config import HttpsConfig, load_config
from gateway.device_secrets import DeviceSecrets, write_device_secrets
from gateway.outbox import Outbox
from gateway.push_auth import NonceCounts, PushAuthenticator, Refusal
from tests.conftest import RunningGateway, gateway_in_process, sample_config
from tests.digest_by_hand import digest_authorization
from tests.metrics import samples
from tests.processes import GatewayProcess

ROOT = Path(__file__).resolve().parents[1]
GATE_1, GATE_2 = "36010400011240000001", "36010400011240000002"
SHED_SENSOR = "36010400011340000002"  # the ctwing-smoke sensor in shed 2
DEVICES = {d.id: d for d in sample_devices()}
AT = datetime(2026, 6, 1, 22, 40, tzinfo=CST)


def _shed_alarm() -> HttpPost:
    """A fire alarm of the shed-2 smoke sensor, as its platform pushes it (correctly signed)."""
    message = CtwingSim(DEVICES[SHED_SENSOR]).alarm(AT, random.Random(13))
    assert isinstance(message, HttpPost)
    return message


def _gate_pushes(device_id: str, count: int) -> list[HttpPost]:
    """Distinct events of one face gate (one simulator: its serial numbers go up)."""
    sim, rng = build_sim(DEVICES[device_id]), random.Random(device_id)
    messages = []
    for _ in range(count):
        message = sim.routine(AT, rng)
        assert isinstance(message, HttpPost)
        messages.append(message)
    return messages


def _gate_push(device_id: str = GATE_1) -> HttpPost:
    return _gate_pushes(device_id, 1)[0]


async def _raw_post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str]
) -> tuple[int, dict[str, object], list[str]]:
    """One POST exactly as given (no client-side authentication): status, JSON, WWW-Authenticate values."""
    async with session.post(url, data=body, headers=dict(headers)) as response:
        return (
            response.status,
            await response.json(content_type=None),
            response.headers.getall("WWW-Authenticate", []),
        )


def _challenge(values: list[str], algorithm: str = "MD5") -> dict[str, str]:
    for value in values:
        scheme, _, params = value.partition(" ")
        fields = parse_keqv_list(parse_http_list(params))
        if scheme == "Digest" and fields.get("algorithm") == algorithm:
            return fields
    raise AssertionError(f"no {algorithm} digest challenge in {values}")


async def _metrics(session: aiohttp.ClientSession, base: str) -> str:
    async with session.get(base + "/metrics") as response:
        return await response.text()


def _refusals(metrics: str) -> dict[tuple[str, str], float]:
    return {
        (s.labels["peer"], s.labels["reason"]): s.value
        for s in samples(metrics, "cgw_http_auth_refused_total")
    }


def _stored(answer: Mapping[str, object]) -> set[str]:
    """The event ids a 200 answer says were stored."""
    stored = answer["stored"]
    assert isinstance(stored, list)
    return {str(i) for i in stored}


def _outbox_contents(gateway: RunningGateway) -> tuple[set[str], list[tuple[object, object]]]:
    with gateway.outbox() as box:
        return set(box.event_ids()), [(d["reason"], d["device"]) for d in box.dead_letters()]


async def test_forged_pushes_are_refused_counted_and_never_stored(gateway: RunningGateway) -> None:
    """A forged shed fire alarm and forged gate events: 401 each, counted per peer, and nothing in the outbox.

    Checked to fail: with the signature check in ``check_body`` returning None, the forged alarm was
    stored (200) and the outbox comparison failed; with the ``wrong_device`` branch removed, gate 2's
    credentials on gate 1's path were accepted.
    """
    alarm = _shed_alarm()
    platform_secret = sample_secret("ctwing-smoke")
    url = gateway.http + alarm.path
    ctype = {"Content-Type": alarm.content_type}
    gate = _gate_push(GATE_1)
    gate_url = gateway.http + gate.path
    async with aiohttp.ClientSession() as session:
        refused = [
            # the alarm without credentials, signed with a device's secret, and signed long ago
            await _raw_post(session, url, alarm.body, ctype),
            await _raw_post(
                session, url, alarm.body, ctype | signature_headers(DEVICES[SHED_SENSOR].secret, alarm.body)
            ),
            await _raw_post(
                session,
                url,
                alarm.body,
                ctype | signature_headers(platform_secret, alarm.body, timestamp=1_000_000),
            ),
            # a correct signature of another body: the alarm's signature does not cover a changed body
            await _raw_post(
                session,
                url,
                alarm.body.replace(b'"cmdValue": "1"', b'"cmdValue": "2"'),
                ctype | signature_headers(platform_secret, alarm.body),
            ),
        ]
        # a gate's push without credentials, with gate 2's own (valid) credentials, a wrong password, and basic
        gate_auth = PushAuth()
        status_other, body_other = await post(
            session,
            gateway.http,
            HttpPost(gate.path, gate.body, gate.content_type, DEVICES[GATE_2].credentials),
            gate_auth,
        )
        status_wrong, body_wrong = await post(
            session,
            gateway.http,
            HttpPost(
                gate.path, gate.body, gate.content_type, PushCredentials("digest", GATE_1, "not-the-password")
            ),
            gate_auth,
        )
        status_basic, body_basic = await post(
            session,
            gateway.http,
            HttpPost(
                gate.path,
                gate.body,
                gate.content_type,
                PushCredentials("basic", GATE_1, DEVICES[GATE_1].secret),
            ),
        )
        no_credentials = await _raw_post(session, gate_url, gate.body, {"Content-Type": gate.content_type})
        metrics = await _metrics(session, gateway.http)

    assert [(status, body) for status, body, _ in refused] == [
        (401, {"error": "unauthorized", "reason": "no_credentials"}),
        (401, {"error": "unauthorized", "reason": "bad_signature"}),
        (401, {"error": "unauthorized", "reason": "stale_signature"}),
        (401, {"error": "unauthorized", "reason": "bad_signature"}),
    ]
    assert all(
        challenges == ['Cgw-HMAC-SHA256 realm="compound-gateway", headers="X-Cgw-Timestamp X-Cgw-Signature"']
        for _, _, challenges in refused
    )
    assert (status_other, body_other) == (401, {"error": "unauthorized", "reason": "wrong_device"})
    assert (status_wrong, body_wrong) == (401, {"error": "unauthorized", "reason": "bad_credentials"})
    assert (status_basic, body_basic) == (401, {"error": "unauthorized", "reason": "wrong_scheme"})
    assert no_credentials[:2] == (401, {"error": "unauthorized", "reason": "no_credentials"})
    assert {c.split(",")[2].strip() for c in no_credentials[2]} == {"algorithm=MD5", "algorithm=SHA-256"}
    # the digest client answers each 401 once more with the new challenge: two refusals per post
    assert _refusals(metrics) == {
        ("platform:ctwing-smoke", "no_credentials"): 1,
        ("platform:ctwing-smoke", "bad_signature"): 2,
        ("platform:ctwing-smoke", "stale_signature"): 1,
        (GATE_1, "no_credentials"): 3,  # the first post of each digest client, and the bare one
        (GATE_1, "wrong_device"): 1,
        (GATE_1, "bad_credentials"): 1,
        (GATE_1, "wrong_scheme"): 1,
    }
    assert _outbox_contents(gateway) == (set(), [])

    # the same alarm, pushed by its platform with the platform's secret: stored
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, gateway.http, alarm)
    assert status == 200
    assert _outbox_contents(gateway) == (_stored(body), [])


async def test_source_outside_allowed_range(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Right credentials from outside ``allowed_sources``: 401 ``source_not_allowed``, nothing stored.

    Checked to fail: with ``_source_allowed`` returning True, both pushes were stored.
    """
    path = sample_config(tmp_path, mosquitto.port)
    text = path.read_text(encoding="utf-8").replace(
        f'id = "{GATE_1}"\n', f'id = "{GATE_1}"\nallowed_sources = ["10.9.9.0/24"]\n'
    )
    text += '\n[platforms.ctwing-smoke]\nallowed_sources = ["10.9.9.0/24", "fd00:9::/32"]\n'
    path.write_text(text, encoding="utf-8")
    async with gateway_in_process(path, mosquitto) as gateway, aiohttp.ClientSession() as session:
        alarm_status, alarm_body = await post(session, gateway.http, _shed_alarm())
        gate_status, gate_body = await post(session, gateway.http, _gate_push(GATE_1))
        other_status, _ = await post(session, gateway.http, _gate_push(GATE_2))  # no range: as before
        metrics = await _metrics(session, gateway.http)
        assert (alarm_status, alarm_body) == (401, {"error": "unauthorized", "reason": "source_not_allowed"})
        assert (gate_status, gate_body) == (401, {"error": "unauthorized", "reason": "source_not_allowed"})
        assert other_status == 200
        refusals = _refusals(metrics)
        assert refusals[("platform:ctwing-smoke", "source_not_allowed")] == 1
        assert refusals[(GATE_1, "source_not_allowed")] == 2  # the digest client tried twice
        events, letters = _outbox_contents(gateway)
        assert len(events) == 1  # gate 2's
        assert letters == []


async def test_digest_replay_and_uri_are_checked(gateway: RunningGateway) -> None:
    """A captured Authorization header is good once; counts may arrive out of order; the uri is bound.

    Checked to fail: with ``NonceCounts.use`` always answering "ok", the replayed header was stored
    as a duplicate (200) instead of refused.
    """
    secret = DEVICES[GATE_1].secret
    pushes = _gate_pushes(GATE_1, 5)
    path = pushes[0].path
    async with aiohttp.ClientSession() as session:
        status, _, challenges = await _raw_post(session, gateway.http + path, b"", {})
        assert status == 401
        nonce = _challenge(challenges)["nonce"]

        async def send(
            message: HttpPost, authorization: str, target: str = path
        ) -> tuple[int, dict[str, object]]:
            headers = {"Content-Type": message.content_type, "Authorization": authorization}
            status, body, _ = await _raw_post(session, gateway.http + target, message.body, headers)
            return status, body

        captured = digest_authorization(GATE_1, secret, nonce, path, 3)
        first = await send(pushes[0], captured)
        replay = await send(pushes[1], captured)  # a forged event under the captured header
        earlier = await send(
            pushes[2], digest_authorization(GATE_1, secret, nonce, path, 2)
        )  # out of order: fine
        earlier_again = await send(
            pushes[3], digest_authorization(GATE_1, secret, nonce, path, 2, cnonce="other")
        )
        elsewhere = await send(
            pushes[3], digest_authorization(GATE_1, secret, nonce, path, 4), target=path + "?x=1"
        )
        sha256 = await send(
            pushes[4], digest_authorization(GATE_1, secret, nonce, path, 5, algorithm="SHA-256")
        )
    assert first[0] == 200
    assert replay == (401, {"error": "unauthorized", "reason": "replayed"})
    assert earlier[0] == 200
    assert earlier_again == (401, {"error": "unauthorized", "reason": "replayed"})
    assert elsewhere == (401, {"error": "unauthorized", "reason": "wrong_uri"})
    assert sha256[0] == 200
    stored = _stored(first[1]) | _stored(earlier[1]) | _stored(sha256[1])
    assert len(stored) == 3
    assert _outbox_contents(gateway) == (stored, [])


async def test_stale_nonce_after_restart_and_the_client_recovers(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A nonce of an earlier run is stale (``stale=true``); the device's digest client retries and is stored.

    Checked to fail: with ``_nonce_issued_ms`` failures answered ``bad_credentials`` (no stale), the
    challenge had no ``stale=true``.
    """
    path = sample_config(tmp_path, mosquitto.port)
    secret = DEVICES[GATE_1].secret
    auth = PushAuth()  # the camera's digest state, kept across the gateway's restart
    stored: set[str] = set()
    first, message = _gate_pushes(GATE_1, 2)
    async with gateway_in_process(path, mosquitto) as gateway, aiohttp.ClientSession() as session:
        status, body = await post(session, gateway.http, first, auth)
        assert status == 200
        stored |= _stored(body)
        status, _, challenges = await _raw_post(session, gateway.http + _gate_push().path, b"", {})
        old_nonce = _challenge(challenges)["nonce"]
    async with gateway_in_process(path, mosquitto) as gateway, aiohttp.ClientSession() as session:
        headers = {
            "Content-Type": message.content_type,
            "Authorization": digest_authorization(GATE_1, secret, old_nonce, message.path, 1),
        }
        status, body, challenges = await _raw_post(
            session, gateway.http + message.path, message.body, headers
        )
        assert (status, body) == (401, {"error": "unauthorized", "reason": "stale_nonce"})
        assert all(c.endswith("stale=true") for c in challenges)
        assert len(challenges) == 2
        status, body = await post(
            session, gateway.http, message, auth
        )  # the middleware's old nonce: stale, retried
        assert status == 200
        stored |= _stored(body)
        refusals = _refusals(await _metrics(session, gateway.http))
        assert refusals == {(GATE_1, "stale_nonce"): 2}
        assert _outbox_contents(gateway) == (stored, [])
    assert len(stored) == 2


async def test_simulated_devices_push_with_their_credentials(gateway: RunningGateway) -> None:
    """Every HTTP simulator (digest gates and barrier, signing platform) is stored, with no 401 left over."""
    sims = [
        build_sim(d)
        for d in sample_devices()
        if d.dialect in {"hik-isapi-acs", "hik-isapi-anpr", "ctwing-smoke"}
    ]
    rng = random.Random(5)
    steps = [Step(sim, sim.routine(AT.replace(minute=m), rng)) for m in range(3) for sim in sims]
    steps += [Step(sim, sim.alarm(AT.replace(minute=9), rng)) for sim in sims]
    report = await Runner(gateway.http, "127.0.0.1", gateway.broker.port, workers=4).run(steps)
    assert (report.unauthorized, report.rejected, report.failed) == (0, 0, 0)
    assert len(report.acked) == len(steps)
    assert _outbox_contents(gateway) == (report.http_stored, [])
    async with aiohttp.ClientSession() as session:
        refusals = _refusals(await _metrics(session, gateway.http))
    # one challenge per digest client (each worker's first push of a device may race: at most workers)
    assert set(refusals) <= {
        (GATE_1, "no_credentials"),
        (GATE_2, "no_credentials"),
        ("36010400011210000001", "no_credentials"),
    }
    assert all(n <= 4 for n in refusals.values())


async def test_refusal_labels_stay_bounded(gateway: RunningGateway) -> None:
    """Hundreds of made-up device ids and platforms: one ``unknown`` series per reason, nothing stored.

    Checked to fail: labelling refusals with the path's id made 300 series.
    """
    async with aiohttp.ClientSession() as session:
        for n in range(300):
            status, body, challenges = await _raw_post(
                session, f"{gateway.http}/push/36010400011249{n:06d}", b"{}", {}
            )
            # the answer a configured device's bare push gets: the inventory is not revealed
            assert (status, body) == (401, {"error": "unauthorized", "reason": "no_credentials"})
            assert (
                len(challenges) == 2
            )  # the same challenge as a real device's: the inventory is not revealed
        for n in range(20):
            status, _, _ = await _raw_post(session, f"{gateway.http}/platform/made-up-{n}", b"{}", {})
            assert status == 401
        metrics = await _metrics(session, gateway.http)
    assert _refusals(metrics) == {("unknown", "unknown_device"): 300, ("unknown", "unknown_platform"): 20}
    assert _outbox_contents(gateway) == (set(), [])


def _test_certificate(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The test CA's server certificate (CN and SAN 127.0.0.1), its key, and the CA."""
    out = tmp_path / "ca"
    subprocess.run([str(ROOT / "deploy" / "make-test-ca.sh"), str(out)], check=True, capture_output=True)
    return out / "broker.pem", out / "broker.key", out / "ca.pem"


async def test_https_listener(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """HTTPS only (plain = false): a device pushing over TLS is stored; the plain port does not answer."""
    cert, key, ca = _test_certificate(tmp_path)
    tls_port = free_port()
    path = sample_config(tmp_path, mosquitto.port, http="plain = false")
    text = path.read_text(encoding="utf-8")
    text += f'\n[http.tls]\nport = {tls_port}\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    path.write_text(text, encoding="utf-8")
    client_tls = ssl.create_default_context(cafile=str(ca))
    async with gateway_in_process(path, mosquitto) as gateway:
        connector = aiohttp.TCPConnector(ssl=client_tls)
        async with aiohttp.ClientSession(connector=connector) as session:
            status, body = await post(session, f"https://127.0.0.1:{tls_port}", _gate_push(GATE_1))
            alarm_status, alarm_body = await post(session, f"https://127.0.0.1:{tls_port}", _shed_alarm())
            with pytest.raises(aiohttp.ClientConnectionError):
                await post(session, gateway.http, _gate_push(GATE_2))
        assert (status, alarm_status) == (200, 200)
        stored = _stored(body) | _stored(alarm_body)
        assert len(stored) == 2
        assert _outbox_contents(gateway) == (stored, [])


async def test_trusted_lan_accepts_devices_without_a_secret(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """``lan_trusted``: gate 2 (no secret) pushes without credentials; gate 1 (with one) is still checked.

    Checked to fail: with the ``lan_trusted`` branch removed, gate 2 was refused (no_credentials).
    """
    path = sample_config(tmp_path, mosquitto.port, trust="lan_trusted = true")
    full = sample_device_secrets()
    devices = {k: v for k, v in full.devices.items() if k != GATE_2}
    write_device_secrets(
        tmp_path / "gateway-secrets.toml", DeviceSecrets(None, full.gateway, devices, full.platforms)
    )
    async with gateway_in_process(path, mosquitto) as gateway, aiohttp.ClientSession() as session:
        bare_2 = _gate_push(GATE_2)
        bare_1 = _gate_push(GATE_1)
        status_2, body_2 = await post(
            session, gateway.http, HttpPost(bare_2.path, bare_2.body, bare_2.content_type)
        )
        status_1, body_1 = await post(
            session, gateway.http, HttpPost(bare_1.path, bare_1.body, bare_1.content_type)
        )
        assert status_2 == 200
        assert (status_1, body_1) == (401, {"error": "unauthorized", "reason": "no_credentials"})
        assert _outbox_contents(gateway) == (_stored(body_2), [])


# -- the digest bookkeeping, with a clock -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now


def _authenticator(tmp_path: Path, clock: Clock) -> PushAuthenticator:
    config = load_config(sample_config(tmp_path, 1883))
    return PushAuthenticator(config, sample_device_secrets(), clock=clock, nonce_clock=clock)


def _check(auth: PushAuthenticator, authorization: str, path: str = f"/push/{GATE_1}") -> str | None:
    verdict = auth.check("http_device", GATE_1, "127.0.0.1", path, {"Authorization": authorization})
    return verdict.reason if isinstance(verdict, Refusal) else None


def test_nonce_lifetime(tmp_path: Path) -> None:
    """Within ``nonce_lifetime_s`` a nonce works; after it (or from the future) the answer is stale."""
    clock = Clock()
    auth = _authenticator(tmp_path, clock)
    secret = DEVICES[GATE_1].secret
    nonce = auth.new_nonce()
    path = f"/push/{GATE_1}"
    clock.now += 299
    assert _check(auth, digest_authorization(GATE_1, secret, nonce, path, 1)) is None
    clock.now += 2
    assert _check(auth, digest_authorization(GATE_1, secret, nonce, path, 2)) == "stale_nonce"
    clock.now -= 400  # a clock stepped back: the nonce is "from the future", not accepted either
    assert _check(auth, digest_authorization(GATE_1, secret, nonce, path, 3)) == "stale_nonce"
    forged = nonce[:-4] + ("AAAA" if not nonce.endswith("AAAA") else "BBBB")
    clock.now += 100
    assert _check(auth, digest_authorization(GATE_1, secret, forged, path, 1)) == "stale_nonce"
    assert (
        _check(auth, digest_authorization(GATE_1, "a-guessed-password", nonce, path, 9)) == "bad_credentials"
    )
    assert _check(
        auth, digest_authorization(GATE_1, secret, nonce, path, 4).replace("qop=auth", "qop=auth-int")
    ) == ("malformed_credentials")
    assert _check(auth, "Digest username") == "malformed_credentials"
    assert _check(auth, 'Digest username="x", algorithm=, qop=auth') == "malformed_credentials"
    assert _check(auth, "Digest \udcff=1") == "malformed_credentials"


def test_nonce_counts_window_and_bound() -> None:
    """Counts out of order within the window once each; the full table forgets the oldest, which then are stale.

    Checked to fail: without the floor (``forgotten``), a forgotten nonce's used count was accepted again.
    """
    counts = NonceCounts(max_nonces=3, window=8)
    assert [counts.use(b"a", 1, nc) for nc in (5, 3, 5, 4, 3, 13, 6, 5, 14)] == [
        "ok",
        "ok",
        "replayed",
        "ok",
        "replayed",
        "ok",
        "ok",
        "replayed",
        "ok",
    ]  # 6 (unused) is still within the window of 8 below 13; 5 fell out of it
    assert [counts.use(nonce, issued, 1) for nonce, issued in ((b"b", 2), (b"c", 3), (b"d", 4))] == ["ok"] * 3
    assert len(counts) == 3  # "a" (the oldest) was forgotten
    assert counts.use(b"a", 1, 5) == "forgotten"  # its counts are gone: stale, never accepted again
    assert counts.use(b"e", 1, 1) == "forgotten"  # issued before the forgotten one, unknown: stale too
    counts.expire(before_ms=4)
    assert len(counts) == 1


def test_a_huge_nonce_count_costs_nothing() -> None:
    """A count jumping to ffffffff is one more use, not an integer of 2^32 bits.

    Checked to fail: with the old shift, the jump allocated about half a gigabyte (tracemalloc's
    peak) and took seconds.
    """
    counts = NonceCounts()
    assert counts.use(b"a", 1, 1) == "ok"
    tracemalloc.start()
    try:
        assert counts.use(b"a", 1, 0xFFFFFFFF) == "ok"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert counts.use(b"a", 1, 0xFFFFFFFF) == "replayed"
    assert counts.use(b"a", 1, 0xFFFFFFFE) == "ok"  # within the window below the new highest
    assert counts.use(b"a", 1, 1) == "replayed"  # far below: out of the window, never again


def test_expired_nonces_stay_stale() -> None:
    """A nonce forgotten because it expired counts as stale if it ever looks fresh again.

    Checked to fail: without raising the floor in ``expire``, the nonce's used count was accepted
    again (a wall clock stepped back made expired nonces fresh).
    """
    counts = NonceCounts()
    assert counts.use(b"a", 1, 1) == "ok"
    counts.expire(before_ms=2)
    assert counts.use(b"a", 1, 1) == "forgotten"


async def test_pushes_only_to_push_devices(gateway: RunningGateway) -> None:
    """``/push/<id>`` of an MQTT device, with that device's own (broker) secret: refused as unknown.

    Credentials of a real device on a made-up id are refused under the bounded ``unknown`` label.
    Checked to fail: with every inventory device in the authenticator's map, the MQTT sensor's
    digest passed and its push became a dead letter.
    """
    mqtt_sensor = next(d for d in sample_devices() if d.dialect == "shed-mqtt")
    made_up = "36010400011249999999"
    async with aiohttp.ClientSession() as session:
        for target, username, secret in (
            (mqtt_sensor.id, mqtt_sensor.id, mqtt_sensor.secret),
            (made_up, GATE_2, DEVICES[GATE_2].secret),
        ):
            url = f"{gateway.http}/push/{target}"
            _, _, challenges = await _raw_post(session, url, b"{}", {})
            nonce = _challenge(challenges)["nonce"]
            header = digest_authorization(username, secret, nonce, f"/push/{target}", 1)
            status, body, _ = await _raw_post(session, url, b"{}", {"Authorization": header})
            assert status == 401
            assert body["reason"] == "bad_credentials"
        metrics = await _metrics(session, gateway.http)
    assert _refusals(metrics) == {("unknown", "unknown_device"): 4}
    assert _outbox_contents(gateway) == (set(), [])


def _request_handlers() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if "RequestHandler.start" in repr(t.get_coro()) and not t.done()]


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_expect_100_continue_is_answered_after_authentication(gateway: RunningGateway) -> None:
    """A client that waits for ``100 Continue`` gets its 401 instead, and never has to send the body.

    An authenticated one gets 100 Continue, sends the body, and its push is stored.
    Checked to fail: with aiohttp's default expect handler the refused client got 100 Continue.
    """
    port = gateway.config.http.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST /push/{GATE_1} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 10\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        # a client that gives up on 401 closes; this one sends the body anyway (as some do after a
        # timeout), so that the gateway's connection ends cleanly within the test
        writer.write(b"0123456789")
        await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()
    await _until(lambda: not _request_handlers())
    assert status_line.startswith(b"HTTP/1.1 401"), status_line
    message = _gate_push()
    async with aiohttp.ClientSession() as session:
        _, _, challenges = await _raw_post(session, f"{gateway.http}/push/{GATE_1}", b"{}", {})
        nonce = _challenge(challenges)["nonce"]
        header = digest_authorization(GATE_1, DEVICES[GATE_1].secret, nonce, f"/push/{GATE_1}", 1)
        async with session.post(
            f"{gateway.http}{message.path}",
            data=message.body,
            headers={"Content-Type": message.content_type, "Authorization": header},
            expect100=True,
        ) as response:
            assert response.status == 200
            stored = (await response.json())["stored"]
    assert len(stored) == 1
    assert _outbox_contents(gateway)[0] == set(stored)


async def test_an_oversized_signed_push_is_counted(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A signed platform push over the size limit cannot be verified: 413, counted as refused, not kept.

    Checked to fail: before, it was answered 413 and counted nowhere.
    """
    config_path = sample_config(tmp_path, mosquitto.port, http="max_body_bytes = 2048")
    async with gateway_in_process(config_path, mosquitto) as gateway, aiohttp.ClientSession() as session:
        body = b"{" + b" " * 4096 + b"}"
        headers = signature_headers(sample_secret("ctwing-smoke"), body)
        status, _, _ = await _raw_post(session, f"{gateway.http}/platform/ctwing-smoke", body, headers)
        assert status == 413
        metrics = await _metrics(session, gateway.http)
        assert _refusals(metrics) == {("platform:ctwing-smoke", "unverifiable_body"): 1}
        assert _outbox_contents(gateway) == (set(), [])


def test_basic_and_signature_edges(tmp_path: Path) -> None:
    """Basic with garbage, another device's password; a signature timestamp that is not a number."""
    clock = Clock()
    config = load_config(sample_config(tmp_path, 1883))
    devices = tuple(
        d.model_copy(update={"push_auth": "basic"}) if d.id == GATE_1 else d for d in config.devices
    )
    auth = PushAuthenticator(
        config.model_copy(update={"devices": devices}),
        sample_device_secrets(),
        clock=clock,
        nonce_clock=clock,
    )

    def basic(value: str) -> str | None:
        return _check(auth, value)

    def b64(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert basic(b64(f"{GATE_1}:{DEVICES[GATE_1].secret}")) is None
    assert basic(b64(f"{GATE_2}:{DEVICES[GATE_2].secret}")) == "wrong_device"
    assert basic(b64(f"{GATE_1}:{DEVICES[GATE_2].secret}")) == "bad_credentials"
    assert basic(b64("nobody:x")) == "bad_credentials"
    assert basic("Basic !!!") == "malformed_credentials"
    assert basic("Basic \u00e9") == "malformed_credentials"  # was a 500: b64decode's plain ValueError
    assert basic(b64("no-colon")) == "malformed_credentials"
    assert basic(digest_authorization(GATE_1, "x", "n", "/", 1)) == "wrong_scheme"

    def platform(headers: dict[str, str]) -> str | None:
        verdict = auth.check("http_platform", "ctwing-smoke", "127.0.0.1", "/platform/ctwing-smoke", headers)
        return verdict.reason if isinstance(verdict, Refusal) else None

    now = str(int(clock.now))
    assert platform({"X-Cgw-Timestamp": "１２３", "X-Cgw-Signature": "00"}) == "malformed_credentials"
    assert (
        platform({"X-Cgw-Timestamp": str(int(clock.now) - 301), "X-Cgw-Signature": "00"}) == "stale_signature"
    )
    assert platform({"X-Cgw-Signature": "00"}) == "no_credentials"
    verdict = auth.check(
        "http_platform",
        "ctwing-smoke",
        "127.0.0.1",
        "/platform/ctwing-smoke",
        {"X-Cgw-Timestamp": now, "X-Cgw-Signature": "\u00e9" * 64},
    )
    assert not isinstance(verdict, Refusal)
    refusal = auth.check_body(verdict, b"{}", None)
    assert refusal is not None
    assert refusal.reason == "bad_signature"
    good = hmac.new(
        sample_secret("ctwing-smoke").encode(), now.encode() + b"\n{}", hashlib.sha256
    ).hexdigest()
    verdict = auth.check(
        "http_platform",
        "ctwing-smoke",
        "127.0.0.1",
        "/platform/ctwing-smoke",
        {"X-Cgw-Timestamp": now, "X-Cgw-Signature": good.upper()},
    )
    assert not isinstance(verdict, Refusal)
    assert auth.check_body(verdict, b"{}", None) is None


async def test_basic_device_over_plain_http_is_warned_and_works(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A device set to basic pushes with basic (stored); with no HTTPS listener the start warns about it."""
    path = sample_config(tmp_path, mosquitto.port)
    text = path.read_text(encoding="utf-8").replace(
        f'id = "{GATE_2}"\n', f'id = "{GATE_2}"\npush_auth = "basic"\n'
    )
    path.write_text(text, encoding="utf-8")
    gate_2 = DEVICES[GATE_2]
    basic_gate = build_sim(SimDevice(gate_2.id, gate_2.dialect, push_auth="basic"))
    message = basic_gate.routine(AT, random.Random(2))
    assert isinstance(message, HttpPost)
    # the daemon itself (its own process and log): the warning is read where an operator reads it
    config = load_config(path)
    daemon = GatewayProcess(path, tmp_path / "gateway.log")
    await daemon.start_gateway(config)
    try:
        base = f"http://127.0.0.1:{config.http.port}"
        async with aiohttp.ClientSession() as session:
            status, body = await post(session, base, message)
            bare = await _raw_post(session, base + message.path, b"{}", {})
    finally:
        daemon.stop()
    assert status == 200
    assert bare == (
        401,
        {"error": "unauthorized", "reason": "no_credentials"},
        ['Basic realm="compound-gateway", charset="UTF-8"'],
    )
    with Outbox(config.state.dir / "outbox.db", max_bytes=config.state.outbox_max_bytes) as box:
        assert (set(box.event_ids()), box.dead_letters()) == (_stored(body), [])
    warnings = [
        line
        for line in daemon.log_path.read_text(encoding="utf-8").splitlines()
        if "push_basic_over_plain_http" in line
    ]
    assert len(warnings) == 1
    assert GATE_2 in warnings[0]
    assert GATE_1 not in warnings[0]


def test_https_key_of_another_certificate_is_a_config_error(tmp_path: Path) -> None:
    """A key that does not belong to the certificate stops the start, naming the field and the fix."""
    cert, _, _ = _test_certificate(tmp_path)
    tls = HttpsConfig(cert_file=cert, key_file=cert.parent / "ca.key")
    with pytest.raises(ConfigError, match=r"gateway\.toml: http\.tls\.key_file: .* -> fix: "):
        tls.server_context(Path("gateway.toml"))
