"""The upper platform's subscriptions: accepted only from it, notified only to configured addresses.

The district side runs for real (``SubscriptionService`` on a real ``CityQueue`` file, fed with
objects built from events by ``district.city.objects``); the upper platform is played here by a
hand-written client whose digest answers are computed from RFC 7616 in this file (never by the code
under test), and the receiver by a small aiohttp server that challenges with its own digest and
records every request that reaches it. Notifier rounds are run by the test (``notifier.round()``),
so "nothing was sent" is a fact after the round, not a wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from device_sims.broker import free_port
from device_sims.inventory import DISTRICT_ID
from district.city.digest import DigestGuard
from district.city.model import Category, CityObject, ObjectResult, Outcome
from district.city.objects import DeviceForCity, ape_object, event_objects
from district.city.queue import CityQueue
from district.city.subscription_book import SubscriptionState, book_path, read_subscriptions
from district.city.subscriptions import SubscriptionService
from district.config import DistrictConfig
from foundation.events import utc_now
from foundation.health import MetricFamilies
from tests.city_events import (
    BARRIER,
    FACE_GATE,
    ORG_CODE,
    ZONE,
    face_access,
    jpeg,
    vehicle_pass,
    watchlist_hit,
)
from tests.viid_double import ViidDouble, ViidDoubleConfig
from tests.viid_double.server import Credentials
from tests.viid_double.upper import LowerPlatform

UPPER_ID = "36000000005030000001"  # the city's view library (its User-Identify)
PLATFORM_ID = "36010400005030000001"  # ours
USER, PASSWORD = "city-viid", "up-secret-4711"  # the upper platform's login at our endpoint
NOTIFY_USER, NOTIFY_PASSWORD = "district-notify", "notify-secret-0815"  # ours at its receivers
CITY_ORG = "360000000000"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - the protocol's hash


def digest_header(challenge: str, method: str, uri: str, username: str, password: str) -> str:
    """RFC 7616 qop=auth MD5, by hand."""
    fields = dict(
        part.strip().split("=", 1) for part in challenge.removeprefix("Digest ").split(",") if "=" in part
    )
    fields = {k.strip(): v.strip().strip('"') for k, v in fields.items()}
    cnonce = secrets.token_hex(8)
    ha1 = _md5(f"{username}:{fields['realm']}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    response = _md5(f"{ha1}:{fields['nonce']}:00000001:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{username}", realm="{fields["realm"]}", nonce="{fields["nonce"]}", uri="{uri}",'
        f' qop=auth, nc=00000001, cnonce="{cnonce}", response="{response}", algorithm=MD5'
    )


@dataclass
class Upper:
    """The upper platform calling the district's subscriptions endpoint."""

    url: str
    identify: str = UPPER_ID
    username: str = USER
    password: str = PASSWORD

    async def call(self, method: str, path_qs: str, body: Any = None) -> tuple[int, Any]:
        """One request, answering one digest challenge; (status, JSON answer)."""
        headers = {"User-Identify": self.identify, "Content-Type": "application/VIID+JSON;charset=UTF-8"}
        data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.request(method, self.url + path_qs, data=data, headers=headers) as response:
                    answer = await response.json(content_type=None)
                    challenge = response.headers.get("WWW-Authenticate")
                    if response.status != 401 or challenge is None or "Authorization" in headers:
                        return response.status, answer
                headers["Authorization"] = digest_header(
                    challenge, method, path_qs, self.username, self.password
                )
        raise AssertionError("unreachable")

    async def subscribe(self, *objects: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
        """POST /VIID/Subscribes; (status, the ResponseStatusObjects)."""
        status, answer = await self.call(
            "POST", "/VIID/Subscribes", {"SubscribeListObject": {"SubscribeObject": list(objects)}}
        )
        return status, answer["ResponseStatusListObject"]["ResponseStatusObject"]


_SUBSCRIBED_AT = f"{utc_now().astimezone(ZONE):%Y%m%d%H%M%S}"


def subscribe_id(seq: int) -> str:
    # one time for the whole module: an id computed again later (to compare) is the same id even
    # when a second has ticked meanwhile (each test has its own subscriptions file)
    return f"{CITY_ORG}03{_SUBSCRIBED_AT}{seq:05d}"


def subscription(
    seq: int, receive_addr: str, begin: datetime, *, detail: str = "12,13", image_declare: str | None = None
) -> dict[str, Any]:
    """A SubscribeObject of the whole view library (ResourceClass 4)."""
    obj: dict[str, Any] = {
        "SubscribeID": subscribe_id(seq),
        "Title": "市级视图库订阅",
        "SubscribeDetail": detail,
        "ResourceURI": PLATFORM_ID,
        "ApplicantName": "市局视图库",
        "ApplicantOrg": "市公安局",
        "BeginTime": f"{begin.astimezone(ZONE):%Y%m%d%H%M%S}",
        "EndTime": f"{(begin + timedelta(days=30)).astimezone(ZONE):%Y%m%d%H%M%S}",
        "ReceiveAddr": receive_addr,
        "ReportInterval": 0,
        "Reason": "测试订阅",
        "OperateType": 0,
        "SubscribeStatus": 0,
        "ResourceClass": 4,
    }
    if image_declare is not None:
        obj["ResultImageDeclare"] = image_declare
    return obj


@dataclass
class Receiver:
    """An upper platform's notification receiver: challenges with digest, records what reaches it."""

    url: str
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every request
    notifications: list[dict[str, Any]] = field(default_factory=list)  # accepted SubscribeNotificationObjects
    nonces: set[str] = field(default_factory=set)

    def info_ids(self, subscribe_id: str | None = None) -> list[str]:
        """Every InfoID notified (of one subscription), in order, duplicates kept."""
        return [
            i
            for n in self.notifications
            if subscribe_id is None or n["SubscribeID"] == subscribe_id
            for i in n["InfoIDs"].split(",")
        ]

    def objects(self, list_name: str, object_name: str) -> list[dict[str, Any]]:
        """Every object of one list notified."""
        return [o for n in self.notifications for o in n.get(list_name, {}).get(object_name, [])]


@contextlib.asynccontextmanager
async def receiver(*, realm: str = "city-receiver") -> AsyncIterator[Receiver]:
    """A receiver on a free port; digest with the upper platform's credentials, checked by hand."""
    port = free_port()
    got = Receiver(f"http://127.0.0.1:{port}")

    async def handle(request: web.Request) -> web.Response:
        got.requests.append((request.method, request.path))
        auth = request.headers.get("Authorization", "")
        fields = {
            k.strip(): v.strip().strip('"')
            for k, v in (p.split("=", 1) for p in auth.removeprefix("Digest ").split(",") if "=" in p)
        }
        if fields.get("nonce") not in got.nonces or request.headers.get("User-Identify") != PLATFORM_ID:
            nonce = secrets.token_hex(12)
            got.nonces.add(nonce)
            return web.Response(
                status=401,
                headers={"WWW-Authenticate": f'Digest realm="{realm}", qop="auth", nonce="{nonce}"'},
            )
        got.nonces.discard(fields["nonce"])
        ha1 = _md5(f"{NOTIFY_USER}:{realm}:{NOTIFY_PASSWORD}")
        ha2 = _md5(f"POST:{fields['uri']}")
        expected = _md5(f"{ha1}:{fields['nonce']}:{fields['nc']}:{fields['cnonce']}:auth:{ha2}")
        if fields.get("response") != expected or fields.get("username") != NOTIFY_USER:
            return web.Response(status=401)
        body = await request.json()
        statuses = []
        for n in body["SubscribeNotificationListObject"]["SubscribeNotificationObject"]:
            got.notifications.append(n)
            statuses.append({"Id": n["NotificationID"], "StatusCode": "0", "StatusString": "OK"})
        return web.json_response({"ResponseStatusListObject": {"ResponseStatusObject": statuses}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield got
    finally:
        await runner.cleanup()


def district_config(
    tmp_path: Path, receive_addresses: list[str], *, port: int | None = None, **subscriptions: Any
) -> DistrictConfig:
    """A district with ``[city]`` and ``[city.subscriptions]`` (the queue in ``tmp_path``)."""
    settings = {
        "enabled": True,
        "listen_port": port or free_port(),
        "upper_platform_id": UPPER_ID,
        "username": USER,
        "password": PASSWORD,
        "receive_addresses": receive_addresses,
        "notify_username": NOTIFY_USER,
        "notify_password": NOTIFY_PASSWORD,
        **subscriptions,
    }
    return DistrictConfig.model_validate(
        {
            "district_id": DISTRICT_ID,
            "store": {"type": "sqlite", "path": str(tmp_path / "district.db")},
            "api": {"timezone": "Asia/Shanghai", "ops_db": str(tmp_path / "operations.db")},
            "city": {
                "server_url": "http://127.0.0.1:9",
                "platform_id": PLATFORM_ID,
                "org_code": ORG_CODE,
                "password": "secret",
                "queue_path": str(tmp_path / "city" / "city-queue.db"),
                "batch_max": 3,  # several notifications per subscription: the cursor moves in steps
                "retry_initial_s": 0.01,
                "retry_max_s": 0.01,
                "privacy": {"face_passes": "records", "watchlist_hits": "crop"},
                "subscriptions": {k: v for k, v in settings.items() if v is not None},
            },
        }
    )


def objects_of(config: DistrictConfig, events: list[Any]) -> list[CityObject]:
    """The objects the ingester would queue for these events (the privacy policy applied)."""
    assert config.city is not None
    return [o for e in events for o in event_objects(e, config.city, ZONE)]


def ape(config: DistrictConfig, online: bool) -> CityObject:
    assert config.city is not None
    device = DeviceForCity(FACE_GATE, "c", "东门人脸门禁", "face_gate", "test", "东门", online)
    return ape_object(device, config.city, ZONE)


@contextlib.asynccontextmanager
async def district(config: DistrictConfig) -> AsyncIterator[tuple[CityQueue, SubscriptionService, Upper]]:
    """The queue and the subscription service (server listening; rounds run by the test)."""
    assert config.city is not None
    assert config.city.subscriptions is not None
    async with (
        CityQueue(config.city.queue_path) as queue,
        SubscriptionService(config, queue, poll_s=3600) as service,
    ):
        yield queue, service, Upper(f"http://127.0.0.1:{config.city.subscriptions.listen_port}")


async def test_a_subscription_gets_exactly_the_new_objects_of_its_categories(tmp_path: Path) -> None:
    """Faces and vehicles captured from BeginTime on are notified, each once; older ones and APEs are not.

    Broken on purpose: ``wanted`` without its time window notified the two objects captured before
    BeginTime, and the exact-set assertion failed.
    """
    now = utc_now().replace(microsecond=0)
    begin = now - timedelta(minutes=10)
    async with receiver() as got:
        config = district_config(tmp_path, [f"{got.url}/VIID/SubscribeNotifications"])
        async with district(config) as (queue, service, upper):
            old = objects_of(
                config, [vehicle_pass(begin - timedelta(hours=1)), face_access(begin - timedelta(hours=1))]
            )
            await queue.add(old)
            status, answers = await upper.subscribe(
                subscription(1, f"{got.url}/VIID/SubscribeNotifications", begin)
            )
            assert status == 200
            assert [(a["StatusCode"], a["Id"]) for a in answers] == [("0", subscribe_id(1))]
            new = objects_of(
                config,
                [vehicle_pass(now - timedelta(minutes=i), plate=f"赣A1234{i}") for i in range(4)]
                + [face_access(now - timedelta(minutes=5)), watchlist_hit(now, crop=jpeg(80, 100))],
            )
            await queue.add([*new, ape(config, online=True)])
            await service.notifier.round()

            expected = {o.object_id for o in new}
            assert len(expected) == 6
            notified = got.info_ids(subscribe_id(1))
            assert set(notified) == expected
            assert len(notified) == len(expected)  # each once
            assert got.objects("DeviceList", "APEObject") == []
            for n in got.notifications:
                assert len(n["NotificationID"]) == 33
                assert n["NotificationID"].startswith(ORG_CODE + "04")
                assert n["ExecuteOperation"] == 1
                assert len(n["TriggerTime"]) == 14
            assert len({n["NotificationID"] for n in got.notifications}) == len(got.notifications) >= 2
            vehicles = {
                o["MotorVehicleID"] for o in got.objects("MotorVehicleObjectList", "MotorVehicleObject")
            }
            faces = {o["FaceID"] for o in got.objects("FaceObjectList", "FaceObject")}
            assert vehicles | faces == expected

            # nothing new: a further round sends nothing
            before = len(got.requests)
            await service.notifier.round()
            assert len(got.requests) == before
            (kept,) = await service.book.all()
            subscribed = {Category.FACE, Category.MOTOR_VEHICLE}
            assert kept.cursor == max(item.seq for item in await queue.objects_after(0, subscribed, 100))


async def test_an_unknown_platform_is_refused(tmp_path: Path) -> None:
    """Another User-Identify (403, no challenge) and wrong credentials (401 again) create nothing.

    Broken on purpose: the door without its User-Identify check let the stranger's subscription in
    (answered StatusCode 0), and this failed.
    """
    async with receiver() as got:
        address = f"{got.url}/VIID/SubscribeNotifications"
        config = district_config(tmp_path, [address])
        async with district(config) as (queue, service, upper):
            begin = utc_now() - timedelta(minutes=1)
            stranger = Upper(upper.url, identify="36000000005030000099")
            status, answer = await stranger.call(
                "POST",
                "/VIID/Subscribes",
                {"SubscribeListObject": {"SubscribeObject": [subscription(1, address, begin)]}},
            )
            assert status == 403
            assert answer["ResponseStatusListObject"]["ResponseStatusObject"][0]["StatusCode"] != "0"
            wrong = Upper(upper.url, password="guessed")
            status, _ = await wrong.call(
                "POST",
                "/VIID/Subscribes",
                {"SubscribeListObject": {"SubscribeObject": [subscription(2, address, begin)]}},
            )
            assert status == 401
            wrong_user = Upper(upper.url, username="someone")
            status, _ = await wrong_user.call("DELETE", f"/VIID/Subscribes?IDList={subscribe_id(3)}")
            assert status == 401
            assert await service.book.all() == []
            assert service.refused.get("unknown_platform") == 1
            assert service.refused.get("bad_credentials") == 2
            await queue.add(objects_of(config, [vehicle_pass(utc_now())]))
            await service.notifier.round()
            assert got.requests == []


async def test_a_receive_address_not_configured_is_refused_and_never_called(tmp_path: Path) -> None:
    """ReceiveAddr must be a configured address: another is refused, and nothing ever reaches it.

    The configured address written differently (upper-case host, explicit default port, trailing
    slash) is the same address, and the notification goes to the configured spelling.

    Broken on purpose: ``parse_subscription`` keeping the subscriber's ReceiveAddr unchecked accepted
    the subscriptions naming the other listener (StatusCode 0), and this failed.
    """
    async with receiver() as got, receiver() as elsewhere:
        configured = f"{got.url}/VIID/SubscribeNotifications"
        config = district_config(tmp_path, [configured])
        async with district(config) as (queue, service, upper):
            begin = utc_now() - timedelta(minutes=1)
            port = got.url.rsplit(":", 1)[1]
            status, answers = await upper.subscribe(
                subscription(1, f"{elsewhere.url}/VIID/SubscribeNotifications", begin),
                subscription(2, f"{elsewhere.url}/", begin),
                subscription(3, f"{configured}?next=http://evil.example/", begin),
                subscription(4, f"HTTP://LOCALHOST:{port}/VIID/SubscribeNotifications", begin),
                subscription(5, f"http://127.0.0.1:{port}/VIID/SubscribeNotifications/", begin),
            )
            assert status == 200
            codes = {a["Id"]: a["StatusCode"] for a in answers}
            assert codes == {
                subscribe_id(1): "4",
                subscribe_id(2): "4",
                subscribe_id(3): "4",
                subscribe_id(4): "4",  # localhost is another host name than 127.0.0.1: not ours
                subscribe_id(5): "0",
            }
            assert all("ReceiveAddr" in a["StatusString"] for a in answers if a["StatusCode"] != "0")
            kept = await service.book.all()
            assert [(s.subscribe_id, s.receive_addr) for s in kept] == [(subscribe_id(5), configured)]
            vehicles = objects_of(config, [vehicle_pass(utc_now())])
            await queue.add(vehicles)
            await service.notifier.round()
            assert elsewhere.requests == []
            assert got.info_ids() == [vehicles[0].object_id]
            assert {path for _, path in got.requests} == {"/VIID/SubscribeNotifications"}


async def test_a_cancelled_subscription_receives_nothing_more(tmp_path: Path) -> None:
    """Cancelled by PUT (OperateType 1) or DELETE (IDList): later objects go to neither; a third goes on.

    Broken on purpose: the notifier taking every subscription (not only active ones) sent the
    later vehicle to both cancelled subscriptions, and this failed.
    """
    async with receiver() as got:
        address = f"{got.url}/VIID/SubscribeNotifications"
        config = district_config(tmp_path, [address])
        async with district(config) as (queue, service, upper):
            begin = utc_now() - timedelta(minutes=1)
            status, answers = await upper.subscribe(
                *(subscription(i, address, begin, detail="13") for i in (1, 2, 3))
            )
            assert [a["StatusCode"] for a in answers] == ["0", "0", "0"]
            first = objects_of(config, [vehicle_pass(utc_now(), plate="赣A00001")])
            await queue.add(first)
            await service.notifier.round()
            for i in (1, 2, 3):
                assert got.info_ids(subscribe_id(i)) == [first[0].object_id]

            status, answer = await upper.call(
                "PUT",
                f"/VIID/Subscribes/{subscribe_id(1)}",
                {"SubscribeObject": {"OperateType": 1, "SubscribeStatus": 1}},
            )
            assert status == 200
            assert answer["ResponseStatusListObject"]["ResponseStatusObject"][0]["StatusCode"] == "0"
            status, answer = await upper.call("DELETE", f"/VIID/Subscribes?IDList={subscribe_id(2)}")
            assert status == 200
            assert answer["ResponseStatusListObject"]["ResponseStatusObject"][0]["StatusCode"] == "0"

            later = objects_of(config, [vehicle_pass(utc_now(), plate="赣A00002")])
            await queue.add(later)
            await service.notifier.round()
            assert got.info_ids(subscribe_id(1)) == [first[0].object_id]
            assert got.info_ids(subscribe_id(2)) == [first[0].object_id]
            assert got.info_ids(subscribe_id(3)) == [first[0].object_id, later[0].object_id]
            states = {s.subscribe_id: s.state for s in await service.book.all()}
            assert states == {
                subscribe_id(1): SubscriptionState.CANCELLED,
                subscribe_id(2): SubscriptionState.CANCELLED,
                subscribe_id(3): SubscriptionState.ACTIVE,
            }


async def test_face_images_leave_only_as_the_queue_holds_them_and_as_declared(tmp_path: Path) -> None:
    """A face pass has no picture (records policy); a hit carries its crop unless ResultImageDeclare is -1.

    Broken on purpose: ``with_images`` returning the body unchanged sent the hit's crop to the
    subscription that declared -1, and this failed.
    """
    async with receiver() as with_pictures, receiver() as without:
        addresses = [
            f"{with_pictures.url}/VIID/SubscribeNotifications",
            f"{without.url}/VIID/SubscribeNotifications",
        ]
        config = district_config(tmp_path, addresses)
        async with district(config) as (queue, service, upper):
            begin = utc_now() - timedelta(minutes=1)
            _status, answers = await upper.subscribe(
                subscription(1, addresses[0], begin, detail="12"),
                subscription(2, addresses[1], begin, detail="12", image_declare="-1"),
            )
            assert [a["StatusCode"] for a in answers] == ["0", "0"]
            passing, hit = (
                objects_of(config, [face_access(utc_now())]),
                objects_of(config, [watchlist_hit(utc_now(), crop=jpeg(80, 100))]),
            )
            assert "SubImageList" not in passing[0].body
            assert "SubImageList" in hit[0].body  # the policy lets the crop leave: the queue holds it
            await queue.add([*passing, *hit])
            await service.notifier.round()

            faces = {f["FaceID"]: f for f in with_pictures.objects("FaceObjectList", "FaceObject")}
            assert set(faces) == {passing[0].object_id, hit[0].object_id}
            assert "SubImageList" not in faces[passing[0].object_id]
            assert faces[hit[0].object_id]["SubImageList"] == hit[0].body["SubImageList"]
            types = {i["Type"] for i in faces[hit[0].object_id]["SubImageList"]["SubImageInfoObject"]}
            assert types == {"11"}  # the crop; never a scene
            stripped = without.objects("FaceObjectList", "FaceObject")
            assert {f["FaceID"] for f in stripped} == {passing[0].object_id, hit[0].object_id}
            assert all("SubImageList" not in f for f in stripped)
            assert "Data" not in json.dumps(without.notifications)


async def test_subscriptions_and_their_cursors_survive_a_restart(tmp_path: Path) -> None:
    """After a restart the subscription is still active and only objects queued since are notified.

    Broken on purpose: the book kept in ``:memory:`` lost the subscription on restart (nothing was
    notified after it), and this failed.
    """
    async with receiver() as got:
        address = f"{got.url}/VIID/SubscribeNotifications"
        config = district_config(tmp_path, [address])
        begin = utc_now() - timedelta(minutes=1)
        async with district(config) as (queue, service, upper):
            _, answers = await upper.subscribe(subscription(1, address, begin, detail="3,12,13"))
            assert answers[0]["StatusCode"] == "0"
            before = [
                *objects_of(config, [vehicle_pass(utc_now(), plate="赣A00001")]),
                ape(config, online=True),
            ]
            await queue.add(before)
            await service.notifier.round()
            assert set(got.info_ids()) == {o.object_id for o in before}
        async with district(config) as (queue, service, upper):
            (kept,) = await service.book.all()
            assert (kept.subscribe_id, kept.state, kept.details) == (
                subscribe_id(1),
                SubscriptionState.ACTIVE,
                (3, 12, 13),
            )
            after = [*objects_of(config, [face_access(utc_now())]), ape(config, online=False)]
            await queue.add(after)
            await service.notifier.round()
            assert sorted(got.info_ids()) == sorted(o.object_id for o in [*before, *after])
            assert {a["ApeID"] for a in got.objects("DeviceList", "APEObject")} == {FACE_GATE}
            assert [a["IsOnline"] for a in got.objects("DeviceList", "APEObject")] == ["1", "0"]


async def test_the_api_reads_the_book_without_creating_or_writing_it(tmp_path: Path) -> None:
    """``read_subscriptions`` (the operator API's city page) reads the book read-only.

    No book: nothing, and none is made. After the service closed it: the subscription, with the
    directory and the files byte for byte as they were (the API's user may not write there).
    Broken on purpose once: reading through ``SubscriptionBook`` (read-write, schema run) made the
    book file where none was, and this failed.
    """
    async with receiver() as got:
        address = f"{got.url}/VIID/SubscribeNotifications"
        config = district_config(tmp_path, [address])
        assert config.city is not None
        path = book_path(config.city.queue_path)
        assert await read_subscriptions(path) == []
        assert not path.exists()
        async with district(config) as (_queue, _service, upper):
            _, answers = await upper.subscribe(subscription(1, address, utc_now(), detail="12"))
            assert answers[0]["StatusCode"] == "0"
        before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
        (found,) = await read_subscriptions(path)
        assert (found.subscribe_id, found.state) == (subscribe_id(1), SubscriptionState.ACTIVE)
        assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before


async def test_a_refused_notification_is_sent_again_and_the_cursor_waits(tmp_path: Path) -> None:
    """A receiver that refuses (StatusCode 1) leaves the cursor; the same batch goes again, same NotificationID.

    Broken on purpose: advancing the cursor whatever the answer lost the refused batch (the second
    round sent nothing), and this failed.
    """
    port = free_port()
    seen: list[dict[str, Any]] = []
    refuse = [True]

    async def handle(request: web.Request) -> web.Response:
        (n,) = (await request.json())["SubscribeNotificationListObject"]["SubscribeNotificationObject"]
        seen.append(n)
        code = "1" if refuse[0] else "0"
        return web.json_response(
            {
                "ResponseStatusListObject": {
                    "ResponseStatusObject": [{"Id": n["NotificationID"], "StatusCode": code}]
                }
            }
        )

    app = web.Application()
    app.router.add_post("/VIID/SubscribeNotifications", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        address = (
            f"http://127.0.0.1:{port}"  # a bare address: notifications go to its /VIID/SubscribeNotifications
        )
        config = district_config(tmp_path, [address])
        async with district(config) as (queue, service, upper):
            _, answers = await upper.subscribe(
                subscription(1, address, utc_now() - timedelta(minutes=1), detail="13")
            )
            assert answers[0]["StatusCode"] == "0"
            vehicles = objects_of(config, [vehicle_pass(utc_now())])
            await queue.add(vehicles)
            await service.notifier.round()
            assert len(seen) == 1
            (kept,) = await service.book.all()
            assert kept.cursor == 0
            assert kept.last_error is not None
            assert "StatusCode 1" in kept.last_error
            refuse[0] = False
            await asyncio.sleep(0.05)  # past the (10 ms) backoff of this config
            await service.notifier.round()
            assert [n["InfoIDs"] for n in seen] == [vehicles[0].object_id] * 2
            assert seen[0]["NotificationID"] == seen[1]["NotificationID"]
            (kept,) = await service.book.all()
            assert kept.cursor > 0
            assert kept.notified == 1
            families = MetricFamilies()
            await service.write_metrics(families)
            samples = {
                (m.name, tuple(sorted(s.labels.items()))): s.value
                for m in families.metrics
                for s in m.samples
            }
            assert samples[("cgw_city_notifications", (("outcome", "ok"),))] == 1
            assert samples[("cgw_city_notifications", (("outcome", "failed"),))] == 1
            assert samples[("cgw_city_subscriptions", (("state", "active"),))] == 1
    finally:
        await runner.cleanup()


async def test_invalid_subscriptions_are_refused_with_a_reason(tmp_path: Path) -> None:
    """Bad ids, times, codes the district does not serve, a lapsed EndTime: refused, each saying why."""
    async with receiver() as got:
        address = f"{got.url}/VIID/SubscribeNotifications"
        config = district_config(tmp_path, [address])
        async with district(config) as (_queue, service, upper):
            begin = utc_now() - timedelta(minutes=1)
            short_id = {**subscription(1, address, begin), "SubscribeID": "12345"}
            bad_time = {**subscription(2, address, begin), "BeginTime": "2026-12-06 10:00"}
            unserved = subscription(3, address, begin, detail="1,12")
            lapsed = {
                **subscription(4, address, begin),
                "EndTime": f"{begin - timedelta(days=1):%Y%m%d%H%M%S}",
            }
            other_library = {**subscription(5, address, begin), "ResourceURI": "36000000005030000042"}
            status, answers = await upper.subscribe(short_id, bad_time, unserved, lapsed, other_library)
            assert status == 200
            reasons = [a["StatusString"] for a in answers]
            assert [a["StatusCode"] for a in answers] == ["8", "8", "4", "8", "4"]
            assert "SubscribeID" in reasons[0]
            assert "BeginTime" in reasons[1]
            assert "serves 3, 4" in reasons[2]
            assert "EndTime" in reasons[3]
            assert "view library" in reasons[4]
            assert await service.book.all() == []
            status, _ = await upper.call("POST", "/VIID/Subscribes", {"nothing": 1})
            assert status == 400


@pytest.fixture
def viid_double_config() -> ViidDoubleConfig:
    """The city double as our upper platform: its id, and our platform as its registered client."""
    return ViidDoubleConfig(
        server_id=UPPER_ID,
        clients={PLATFORM_ID: Credentials(username=NOTIFY_USER, password=NOTIFY_PASSWORD)},
        known_subscriptions_only=True,  # a notification must name a subscription it made and did not cancel
    )


async def test_the_city_double_subscribes_is_notified_and_cancels(
    tmp_path: Path, viid_double: ViidDouble
) -> None:
    """The city double subscribes over digest and gets exactly the new faces and vehicles, then nothing.

    The double (written from the standard) finds every notification valid; the pictures are
    stripped as it declared (-1); after its cancel (DELETE) nothing more is sent.

    Broken on purpose: NotificationIDs built from the platform id instead of ``org_code`` (35
    characters) were refused by the double as invalid, the cursor stayed, and this failed.
    """
    city = viid_double
    address = f"{city.url}/VIID/SubscribeNotifications"
    config = district_config(tmp_path, [address])
    assert config.city is not None
    assert config.city.subscriptions is not None
    async with district(config) as (queue, service, upper):
        # the city service's session registers us with the city (notifications need a registered caller)
        registrar = Upper(city.url, identify=PLATFORM_ID, username=NOTIFY_USER, password=NOTIFY_PASSWORD)
        status, _ = await registrar.call(
            "POST", "/VIID/System/Register", {"RegisterObject": {"DeviceID": PLATFORM_ID}}
        )
        assert status == 200
        lower = LowerPlatform(upper.url, USER, PASSWORD)
        sid, answer = await city.subscribe(lower, resource_uri=PLATFORM_ID, detail="12,13")
        assert answer.status == 200
        assert answer.challenged
        assert [s["StatusCode"] for s in answer.body["ResponseStatusListObject"]["ResponseStatusObject"]] == [
            "0"
        ]

        objects = objects_of(
            config,
            [vehicle_pass(utc_now(), plate=f"赣A5555{i}") for i in range(4)]
            + [face_access(utc_now()), watchlist_hit(utc_now(), crop=jpeg(80, 100))],
        )
        await queue.add([*objects, ape(config, online=True)])
        await service.notifier.round()
        assert city.refusals == []
        notified = set(city.notified["Face"]) | set(city.notified["MotorVehicle"])
        assert notified == {o.object_id for o in objects}
        assert city.notified["APE"] == {}
        assert all("SubImageList" not in face for face in city.notified["Face"].values())
        assert {n["SubscribeID"] for n in city.notifications.values()} == {sid}
        assert sum(city.resends.values()) == 0

        cancelled = await city.cancel_subscription(lower, sid, via="DELETE")
        assert cancelled.status == 200
        posts = len(city.posts_to("/VIID/SubscribeNotifications"))
        await queue.add(objects_of(config, [vehicle_pass(utc_now(), plate="赣A66666")]))
        await service.notifier.round()
        assert len(city.posts_to("/VIID/SubscribeNotifications")) == posts
        (kept,) = await service.book.all()
        assert kept.state is SubscriptionState.CANCELLED


async def test_running_notifier_is_woken_and_polls(tmp_path: Path) -> None:
    """``run``: a new subscription is looked at at once (woken: the poll is an hour), later objects come by the poll.

    Broken on purpose: with ``wake`` doing nothing the first vehicle never came (the run waited
    for its hour-long poll) and the 30 s guard failed this.
    """
    async with receiver() as got:
        address = f"{got.url}/VIID/SubscribeNotifications"
        config = district_config(tmp_path, [address])
        assert config.city is not None
        upper = Upper(f"http://127.0.0.1:{config.city.subscriptions.listen_port}")  # type: ignore[union-attr]
        first = objects_of(config, [vehicle_pass(utc_now(), plate="赣A70001")])
        async with (
            CityQueue(config.city.queue_path) as queue,
            SubscriptionService(config, queue, poll_s=3600) as service,
        ):
            await queue.add(first)
            task = asyncio.create_task(service.run(), name="city-subscriptions")
            try:
                await asyncio.sleep(0.1)  # the run's first round is over: it waits for its poll
                _, answers = await upper.subscribe(
                    subscription(1, address, utc_now() - timedelta(minutes=5), detail="13")
                )
                assert answers[0]["StatusCode"] == "0"
                async with asyncio.timeout(30):
                    while not got.info_ids():
                        await asyncio.sleep(0.02)
                assert got.info_ids() == [first[0].object_id]
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        async with (
            CityQueue(config.city.queue_path) as queue,
            SubscriptionService(config, queue, poll_s=0.05) as service,
        ):
            task = asyncio.create_task(service.run(), name="city-subscriptions")
            try:
                await asyncio.sleep(0.1)
                later = objects_of(config, [vehicle_pass(utc_now(), plate="赣A70002")])
                await queue.add(later)
                async with asyncio.timeout(30):
                    while len(got.info_ids()) < 2:
                        await asyncio.sleep(0.02)
                assert got.info_ids() == [first[0].object_id, later[0].object_id]
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def test_a_subscription_past_its_end_time_expires_and_gets_nothing(tmp_path: Path) -> None:
    """Once EndTime has passed the subscription is ``expired`` and nothing more is sent to it.

    Broken on purpose: without ``book.expire`` in the round the vehicle was notified after the end,
    and this failed.
    """
    now = [utc_now()]
    async with receiver() as got:
        address = f"{got.url}/VIID/SubscribeNotifications"
        config = district_config(tmp_path, [address])
        assert config.city is not None
        async with (
            CityQueue(config.city.queue_path) as queue,
            SubscriptionService(config, queue, poll_s=3600, clock=lambda: now[0]) as service,
        ):
            upper = Upper(f"http://127.0.0.1:{config.city.subscriptions.listen_port}")  # type: ignore[union-attr]
            obj = subscription(1, address, now[0] - timedelta(minutes=5), detail="13")
            obj["EndTime"] = f"{(now[0] + timedelta(hours=1)).astimezone(ZONE):%Y%m%d%H%M%S}"
            _, answers = await upper.subscribe(obj)
            assert answers[0]["StatusCode"] == "0"
            now[0] += timedelta(hours=2)
            await queue.add(objects_of(config, [vehicle_pass(now[0] - timedelta(hours=1, minutes=30))]))
            await service.notifier.round()
            assert got.requests == []
            (kept,) = await service.book.all()
            assert kept.state is SubscriptionState.EXPIRED


async def test_a_replayed_request_and_an_expired_nonce_are_challenged_again(tmp_path: Path) -> None:
    """Our nonces are good once and for five minutes: the same Authorization a second time is refused.

    Broken on purpose: ``DigestGuard.check`` reading the nonce with ``get`` instead of ``pop`` let the
    replayed DELETE through (200), and this failed.
    """
    async with receiver() as got:
        config = district_config(tmp_path, [f"{got.url}/VIID/SubscribeNotifications"])
        async with district(config) as (_queue, service, upper):
            target = f"/VIID/Subscribes?IDList={subscribe_id(1)}"
            headers = {"User-Identify": UPPER_ID}
            async with aiohttp.ClientSession() as http:
                async with http.delete(upper.url + target, headers=headers) as first:
                    assert first.status == 401
                    challenge = first.headers["WWW-Authenticate"]
                headers["Authorization"] = digest_header(challenge, "DELETE", target, USER, PASSWORD)
                async with http.delete(upper.url + target, headers=headers) as answered:
                    assert answered.status == 200  # admitted (there is no such subscription: StatusCode 4)
                async with http.delete(upper.url + target, headers=headers) as replayed:
                    assert replayed.status == 401
                    assert "stale=true" in replayed.headers["WWW-Authenticate"]
            assert service.refused.get("stale_nonce") == 1

    moment = [0.0]
    guard = DigestGuard("realm", USER, PASSWORD, lifetime_s=300, clock=lambda: moment[0])
    challenge = guard.challenge()
    moment[0] = 301.0
    late = digest_header(challenge, "POST", "/VIID/Subscribes", USER, PASSWORD)
    assert guard.check("POST", "/VIID/Subscribes", late) == "stale_nonce"
    fresh = digest_header(guard.challenge(), "POST", "/VIID/Subscribes", USER, PASSWORD)
    assert guard.check("POST", "/VIID/Subscribes?x", fresh) == "wrong_uri"
    fresh = digest_header(guard.challenge(), "POST", "/VIID/Subscribes", USER, PASSWORD)
    assert guard.check("POST", "/VIID/Subscribes", fresh) is None


# -- review fixes ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def answering(
    answer: Callable[[web.Request], Awaitable[web.Response]],
) -> AsyncIterator[str]:
    """A server on a free port answering every request with ``answer``; yields its base URL."""
    port = free_port()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def ahead(seconds: float) -> datetime:
    """A whole second at least ``seconds`` from now (a BeginTime after everything queued so far)."""
    return (utc_now() + timedelta(seconds=seconds + 1)).replace(microsecond=0)


def device_ape(config: DistrictConfig, device_id: str, online: bool) -> CityObject:
    assert config.city is not None
    device = DeviceForCity(device_id, "c", f"设备{device_id[-2:]}", "face_gate", "test", "东门", online)
    return ape_object(device, config.city, ZONE)


async def test_a_directory_subscription_gets_each_devices_latest_state_then_the_changes(
    tmp_path: Path,
) -> None:
    """SubscribeDetail 3,4: each device's latest APE first, however old (even past keep_days), then changes.

    Broken on purpose: (a) without the directory (the cursor starting at BeginTime) nothing of the
    two devices was sent in the first round; (b) ``purge`` without sparing each device's latest APE
    deleted both, the directory was empty, and this failed both times.
    """
    now = [utc_now()]
    async with receiver() as got:
        address = f"{got.url}/VIID/SubscribeNotifications"
        config = district_config(tmp_path, [address])
        assert config.city is not None
        async with (
            CityQueue(config.city.queue_path) as queue,
            SubscriptionService(config, queue, poll_s=3600, clock=lambda: now[0]) as service,
        ):
            gate_online = device_ape(config, FACE_GATE, True)
            gate_offline = device_ape(config, FACE_GATE, False)
            barrier_online = device_ape(config, BARRIER, True)
            vehicle = objects_of(config, [vehicle_pass(utc_now())])
            await queue.add([gate_online, gate_offline, barrier_online, *vehicle])
            queued = await queue.objects_after(0, set(Category), 100)
            await queue.settle([ObjectResult(q.seq, Outcome.ACCEPTED) for q in queued], utc_now())
            purged = await queue.purge(utc_now() + timedelta(days=40))  # all accepted long ago
            assert purged == 2  # the gate's older state and the vehicle; each device's latest stays

            begin = ahead(1)
            now[0] = begin + timedelta(seconds=5)
            upper = Upper(f"http://127.0.0.1:{config.city.subscriptions.listen_port}")  # type: ignore[union-attr]
            _, answers = await upper.subscribe(subscription(1, address, begin, detail="3,4"))
            assert answers[0]["StatusCode"] == "0"
            await service.notifier.round()
            states = [(o["ApeID"], o["IsOnline"]) for o in got.objects("DeviceList", "APEObject")]
            assert states == [(FACE_GATE, "0"), (BARRIER, "1")]

            await queue.add([device_ape(config, FACE_GATE, True)])  # a change, built before BeginTime
            await service.notifier.round()
            await service.notifier.round()  # the directory is not sent again
            states = [(o["ApeID"], o["IsOnline"]) for o in got.objects("DeviceList", "APEObject")]
            assert states == [(FACE_GATE, "0"), (BARRIER, "1"), (FACE_GATE, "1")]
            (kept,) = await service.book.all()
            assert kept.notified == 3


def test_a_flood_of_challenges_does_not_lock_out_the_upper_platform() -> None:
    """Thousands of challenges (anyone may ask) leave the upper platform's nonce good; a full used-set refuses.

    Broken on purpose: with the old table of 1024 issued nonces (oldest evicted), the upper
    platform's nonce was gone after the flood (``stale_nonce``), and this failed.
    """
    moment = [0.0]
    guard = DigestGuard("realm", USER, PASSWORD, lifetime_s=300, max_used=3, clock=lambda: moment[0])
    real = guard.challenge()
    for _ in range(5000):
        guard.challenge()
    assert (
        guard.check(
            "POST", "/VIID/Subscribes", digest_header(real, "POST", "/VIID/Subscribes", USER, PASSWORD)
        )
        is None
    )

    # requests with genuine nonces and wrong passwords fill the used-set: refused, nothing evicted
    wrong = [digest_header(guard.challenge(), "POST", "/x", USER, "guess") for _ in range(3)]
    assert [guard.check("POST", "/x", w) for w in wrong] == ["bad_credentials", "bad_credentials", "busy"]
    assert guard.check("POST", "/x", wrong[0]) == "stale_nonce"  # still known as used: no replay
    moment[0] = 301.0  # the used ones have expired: room again
    fresh = digest_header(guard.challenge(), "POST", "/x", USER, PASSWORD)
    assert guard.check("POST", "/x", fresh) is None
    forged = digest_header(real.replace('nonce="', 'nonce="A'), "POST", "/x", USER, PASSWORD)
    assert guard.check("POST", "/x", forged) == "stale_nonce"


async def test_active_subscriptions_are_capped_and_ended_ones_purged(tmp_path: Path) -> None:
    """``max_subscriptions`` active at most (a renewal still goes); cancelled ones go after ``ended_keep_days``.

    Broken on purpose: ``put`` without ``max_active`` kept the third subscription (StatusCode 0),
    and this failed; the round without ``purge_ended`` kept the cancelled one.
    """
    now = [utc_now()]
    async with receiver() as got:
        address = f"{got.url}/VIID/SubscribeNotifications"
        config = district_config(tmp_path, [address], max_subscriptions=2, ended_keep_days=1)
        assert config.city is not None
        async with (
            CityQueue(config.city.queue_path) as queue,
            SubscriptionService(config, queue, poll_s=3600, clock=lambda: now[0]) as service,
        ):
            upper = Upper(f"http://127.0.0.1:{config.city.subscriptions.listen_port}")  # type: ignore[union-attr]
            begin = utc_now() - timedelta(minutes=1)
            _, answers = await upper.subscribe(
                *(subscription(i, address, begin, detail="13") for i in (1, 2, 3))
            )
            assert [a["StatusCode"] for a in answers] == ["0", "0", "4"]
            assert "max_subscriptions" in answers[2]["StatusString"]
            _, answers = await upper.subscribe(subscription(1, address, begin, detail="12,13"))  # a renewal
            assert [a["StatusCode"] for a in answers] == ["0"]
            status, _ = await upper.call("DELETE", f"/VIID/Subscribes?IDList={subscribe_id(1)}")
            assert status == 200
            _, answers = await upper.subscribe(subscription(3, address, begin, detail="13"))
            assert [a["StatusCode"] for a in answers] == ["0"]
            assert {s.subscribe_id for s in await service.book.all()} == {subscribe_id(i) for i in (1, 2, 3)}

            now[0] += timedelta(hours=23)
            await service.notifier.round()
            assert {s.subscribe_id for s in await service.book.all()} == {subscribe_id(i) for i in (1, 2, 3)}
            now[0] += timedelta(hours=2)
            await service.notifier.round()
            assert {s.subscribe_id for s in await service.book.all()} == {subscribe_id(2), subscribe_id(3)}


async def test_a_new_subscription_starts_at_its_begin_time_not_at_the_queue_start(tmp_path: Path) -> None:
    """The cursor of a new subscription is the last seq queued before BeginTime, not 0.

    Broken on purpose: with ``cursor=0`` kept from ``parse_subscription`` the cursor was 0 and the
    first round paged through the 12 older objects, and this failed.
    """
    now = [utc_now()]
    async with receiver() as got:
        address = f"{got.url}/VIID/SubscribeNotifications"
        config = district_config(tmp_path, [address])
        assert config.city is not None
        async with (
            CityQueue(config.city.queue_path) as queue,
            SubscriptionService(config, queue, poll_s=3600, clock=lambda: now[0]) as service,
        ):
            older = objects_of(config, [vehicle_pass(utc_now(), plate=f"赣A8{i:04d}") for i in range(12)])
            await queue.add(older)
            last_old = max(q.seq for q in await queue.objects_after(0, {Category.MOTOR_VEHICLE}, 100))
            begin = ahead(1)
            now[0] = begin + timedelta(seconds=5)
            upper = Upper(f"http://127.0.0.1:{config.city.subscriptions.listen_port}")  # type: ignore[union-attr]
            _, answers = await upper.subscribe(subscription(1, address, begin, detail="13"))
            assert answers[0]["StatusCode"] == "0"
            (kept,) = await service.book.all()
            assert kept.cursor == last_old
            later = objects_of(config, [vehicle_pass(begin + timedelta(seconds=1), plate="赣A89999")])
            await queue.add(later)
            await service.notifier.round()
            assert got.info_ids() == [later[0].object_id]


async def test_a_catch_up_is_bounded_per_round_and_holds_up_no_other_subscription(tmp_path: Path) -> None:
    """Each round gives a subscription ``batches_per_round`` notifications at most; ``round`` says more is left.

    Broken on purpose: without the budget the first round sent all 8 batches of the vehicles
    subscription, and this failed.
    """
    async with receiver() as got:
        address = f"{got.url}/VIID/SubscribeNotifications"
        config = district_config(tmp_path, [address], batches_per_round=2)
        async with district(config) as (queue, service, upper):
            begin = utc_now() - timedelta(minutes=1)
            _, answers = await upper.subscribe(
                subscription(1, address, begin, detail="13"), subscription(2, address, begin, detail="12")
            )
            assert [a["StatusCode"] for a in answers] == ["0", "0"]
            vehicles = objects_of(config, [vehicle_pass(utc_now(), plate=f"赣B{i:05d}") for i in range(24)])
            face = objects_of(config, [face_access(utc_now())])
            await queue.add([*vehicles, *face])
            assert await service.notifier.round() is True
            assert len(got.info_ids(subscribe_id(1))) == 6  # 2 batches of batch_max 3
            assert got.info_ids(subscribe_id(2)) == [face[0].object_id]
            rounds = 1
            more = True
            while more:
                more = await service.notifier.round()
                rounds += 1
            assert rounds == 4  # 8 batches, 2 a round
            assert got.info_ids(subscribe_id(1)) == [v.object_id for v in vehicles]


async def test_a_subscription_cancelled_or_renewed_during_a_catch_up_is_not_notified_as_it_was(
    tmp_path: Path,
) -> None:
    """The state is read again before each notification: a cancel stops the catch-up, a renewal restarts it.

    Broken on purpose: without ``_current`` before each send, the cancelled subscription got all
    three batches of the round, and this failed.
    """
    seen: dict[str, int] = {}
    upper_box: list[Upper] = []

    async def answer(request: web.Request) -> web.Response:
        (n,) = (await request.json())["SubscribeNotificationListObject"]["SubscribeNotificationObject"]
        sid = n["SubscribeID"]
        seen[sid] = seen.get(sid, 0) + len(n["InfoIDs"].split(","))
        if seen[sid] == 3:  # the first notification: the upper platform cancels or renews meanwhile
            if sid == subscribe_id(1):
                status, _ = await upper_box[0].call("DELETE", f"/VIID/Subscribes?IDList={sid}")
            else:
                status, _ = await upper_box[0].subscribe(subscription(2, url, begin, detail="13"))
            assert status == 200
        statuses = [{"Id": n["NotificationID"], "StatusCode": "0"}]
        return web.json_response({"ResponseStatusListObject": {"ResponseStatusObject": statuses}})

    begin = utc_now() - timedelta(minutes=1)
    async with answering(answer) as url:
        config = district_config(tmp_path, [url])
        async with district(config) as (queue, service, upper):
            upper_box.append(upper)
            _, answers = await upper.subscribe(
                subscription(1, url, begin, detail="13"), subscription(2, url, begin, detail="13")
            )
            assert [a["StatusCode"] for a in answers] == ["0", "0"]
            await queue.add(
                objects_of(config, [vehicle_pass(utc_now(), plate=f"赣C{i:05d}") for i in range(9)])
            )
            await service.notifier.round()
            assert seen == {subscribe_id(1): 3, subscribe_id(2): 3}
            await service.notifier.round()
            assert seen == {subscribe_id(1): 3, subscribe_id(2): 9}  # the renewed one goes on from its cursor


async def test_receivers_challenges_are_answered_only_with_the_notify_credentials(tmp_path: Path) -> None:
    """Without ``notify_username``/``notify_password`` a challenge is a clear failure; never the inbound login.

    The receiver of these tests checks the notify credentials (other tests pass with them), so the
    upper platform's inbound password would not do either. Broken on purpose: answering with
    ``username``/``password`` (the inbound login) sent an Authorization here, and this failed.
    """
    async with receiver() as got:
        address = f"{got.url}/VIID/SubscribeNotifications"
        config = district_config(tmp_path, [address], notify_username=None, notify_password=None)
        async with district(config) as (queue, service, upper):
            await upper.subscribe(subscription(1, address, utc_now() - timedelta(minutes=1), detail="13"))
            await queue.add(objects_of(config, [vehicle_pass(utc_now())]))
            await service.notifier.round()
            assert got.requests == [("POST", "/VIID/SubscribeNotifications")]  # challenged, not answered
            assert got.notifications == []
            (kept,) = await service.book.all()
            assert kept.last_error is not None
            assert "notify_username" in kept.last_error


async def test_an_acceptance_for_another_notification_is_not_an_acceptance(tmp_path: Path) -> None:
    """StatusCode 0 for another Id (alone or beside others) leaves the cursor; one without an Id is taken.

    Broken on purpose: with the old fallback to the first status, the other Id's StatusCode 0
    moved the cursor, and this failed.
    """
    shapes = [
        [{"Id": "another", "StatusCode": "0"}],
        [{"Id": "another", "StatusCode": "0"}, {"Id": "a third", "StatusCode": "0"}],
        [{"StatusCode": "0"}],
    ]

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ResponseStatusListObject": {"ResponseStatusObject": shapes[0]}})

    async with answering(answer) as url:
        config = district_config(tmp_path, [url])
        async with district(config) as (queue, service, upper):
            await upper.subscribe(subscription(1, url, utc_now() - timedelta(minutes=1), detail="13"))
            await queue.add(objects_of(config, [vehicle_pass(utc_now())]))
            for expected_cursor in (0, 0):
                await service.notifier.round()
                (kept,) = await service.book.all()
                assert kept.cursor == expected_cursor
                assert kept.last_error is not None
                assert "no ResponseStatusObject for notification" in kept.last_error
                shapes.pop(0)
                await asyncio.sleep(0.05)  # past the (10 ms) backoff
            await service.notifier.round()
            (kept,) = await service.book.all()
            assert kept.cursor > 0


async def test_a_database_error_ends_a_round_not_the_notifier(tmp_path: Path) -> None:
    """With the subscriptions table gone for a while, ``run`` logs, backs off and goes on afterwards.

    Broken on purpose: without the ``except sqlite3.Error`` in ``run`` the task ended with
    ``OperationalError: no such table``, and this failed.
    """
    async with receiver() as got:
        address = f"{got.url}/VIID/SubscribeNotifications"
        config = district_config(tmp_path, [address])
        assert config.city is not None
        async with (
            CityQueue(config.city.queue_path) as queue,
            SubscriptionService(config, queue, poll_s=0.02) as service,
        ):
            upper = Upper(f"http://127.0.0.1:{config.city.subscriptions.listen_port}")  # type: ignore[union-attr]
            await upper.subscribe(subscription(1, address, utc_now() - timedelta(minutes=1), detail="13"))
            book_file = book_path(config.city.queue_path)
            with contextlib.closing(sqlite3.connect(book_file)) as db:
                db.execute("ALTER TABLE subscriptions RENAME TO away")
                db.commit()
            task = asyncio.create_task(service.run(), name="city-subscriptions")
            try:
                async with asyncio.timeout(30):
                    while service.notifier.db_errors < 2 and not task.done():
                        await asyncio.sleep(0.02)
                assert not task.done()
                with contextlib.closing(sqlite3.connect(book_file)) as db:
                    db.execute("ALTER TABLE away RENAME TO subscriptions")
                    db.commit()
                vehicles = objects_of(config, [vehicle_pass(utc_now())])
                await queue.add(vehicles)
                async with asyncio.timeout(30):
                    while not got.info_ids():
                        await asyncio.sleep(0.02)
                assert got.info_ids() == [vehicles[0].object_id]
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert task.cancelled()  # the cancel went through: not swallowed


def test_urls_with_user_info_are_refused(tmp_path: Path) -> None:
    """``user:pass@`` in ``server_url`` or a receive address is a config error that says so.

    Broken on purpose: with the old pattern (``@`` allowed) both configs were accepted, and this failed.
    """
    with pytest.raises(ValueError, match="user info"):
        district_config(tmp_path, ["http://user:secret@10.0.0.5:8080/VIID/SubscribeNotifications"])
    good = district_config(tmp_path, ["http://10.0.0.5:8080/VIID/SubscribeNotifications"])
    raw = good.model_dump(mode="json")
    raw["city"]["server_url"] = "http://viid:secret@10.0.0.5:8080"
    raw["city"]["password"] = "secret"
    raw["city"]["subscriptions"]["password"] = PASSWORD
    raw["city"]["subscriptions"]["notify_password"] = NOTIFY_PASSWORD
    with pytest.raises(ValueError, match="user info"):
        DistrictConfig.model_validate(raw)


async def test_a_receiver_answering_a_redirect_is_not_followed(tmp_path: Path) -> None:
    """A 302 is a failed notification; nothing reaches the address it points to.

    Broken on purpose: ``allow_redirects=True`` in ``_send`` delivered to the redirect target, and
    this failed.
    """
    reached: list[str] = []

    async def target(request: web.Request) -> web.Response:
        reached.append(request.path)
        (n,) = (await request.json())["SubscribeNotificationListObject"]["SubscribeNotificationObject"]
        statuses = [{"Id": n["NotificationID"], "StatusCode": "0"}]
        return web.json_response({"ResponseStatusListObject": {"ResponseStatusObject": statuses}})

    async with answering(target) as elsewhere:

        async def redirect(request: web.Request) -> web.Response:
            await request.read()
            raise web.HTTPFound(f"{elsewhere}/VIID/SubscribeNotifications")

        async with answering(redirect) as url:
            config = district_config(tmp_path, [url])
            async with district(config) as (queue, service, upper):
                await upper.subscribe(subscription(1, url, utc_now() - timedelta(minutes=1), detail="13"))
                await queue.add(objects_of(config, [vehicle_pass(utc_now())]))
                await service.notifier.round()
                assert reached == []
                (kept,) = await service.book.all()
                assert kept.cursor == 0
                assert kept.last_error is not None
                assert "HTTP 302" in kept.last_error


async def test_the_queue_finds_the_first_seq_at_or_after_a_time_across_gaps(tmp_path: Path) -> None:
    """``CityQueue.first_seq_at_or_after`` agrees with a scan of the file, with purged gaps in seq.

    Broken on purpose: ``high = middle - 1`` in the search answered one seq too early for some
    moments, and this failed.
    """
    config = district_config(tmp_path, ["http://127.0.0.1:9/VIID/SubscribeNotifications"])
    assert config.city is not None
    async with CityQueue(config.city.queue_path) as queue:
        assert await queue.first_seq_at_or_after(utc_now()) == 1  # empty: the first seq to come
        for round_ in range(5):
            await queue.add(
                objects_of(config, [vehicle_pass(utc_now(), plate=f"赣D{round_}{i:04d}") for i in range(4)])
            )
        queued = await queue.objects_after(0, {Category.MOTOR_VEHICLE}, 100)
        gone = [q.seq for q in queued if q.seq % 3 == 0]
        await queue.settle([ObjectResult(seq, Outcome.ACCEPTED) for seq in gone], utc_now())
        assert await queue.purge(utc_now() + timedelta(days=1)) == len(gone)
        with contextlib.closing(sqlite3.connect(config.city.queue_path)) as db:
            rows = db.execute("SELECT seq, queued_at FROM objects ORDER BY seq").fetchall()
        times = sorted({datetime.fromisoformat(t) for _, t in rows})
        moments = [times[0] - timedelta(seconds=1), *times, *(t + timedelta(microseconds=1) for t in times)]
        for moment in moments:
            expected = next((seq for seq, t in rows if datetime.fromisoformat(t) >= moment), rows[-1][0] + 1)
            assert await queue.first_seq_at_or_after(moment) == expected


async def test_a_full_used_nonce_table_is_answered_503_not_with_a_challenge(tmp_path: Path) -> None:
    """Past ``max_used`` used nonces the door answers 503 with Retry-After (a flood delays, never replays).

    Broken on purpose: with ``busy`` going down the 401 path the answer was a new challenge, and
    this failed.
    """
    async with receiver() as got:
        config = district_config(tmp_path, [f"{got.url}/VIID/SubscribeNotifications"])
        async with district(config) as (_queue, service, upper):
            service._guard = DigestGuard(PLATFORM_ID, USER, PASSWORD, max_used=1)  # a table of one
            target = f"/VIID/Subscribes?IDList={subscribe_id(1)}"
            status, _ = await upper.call("DELETE", target)
            assert status == 200  # admitted: its nonce is the one the table holds
            status, answer = await upper.call("DELETE", target)
            assert status == 503
            assert answer["ResponseStatusListObject"]["ResponseStatusObject"][0]["StatusCode"] == "4"
            assert service.refused.get("busy") == 1


def test_notify_credentials_go_together(tmp_path: Path) -> None:
    """A notify user name without a password (or the reverse) is a config error."""
    address = ["http://10.0.0.5:8080/VIID/SubscribeNotifications"]
    with pytest.raises(ValueError, match="go together"):
        district_config(tmp_path, address, notify_password=None)
    with pytest.raises(ValueError, match="go together"):
        district_config(tmp_path, address, notify_username=None)
    with pytest.raises(ValueError, match="keep one"):
        district_config(tmp_path, address, notify_password_credential="city-notify-password")


async def test_no_directory_leaves_when_devices_are_withheld(tmp_path: Path) -> None:
    """``[city.privacy] devices = false``: a directory subscription is sent no APE, queued before or after.

    Broken on purpose: without the privacy check before the directory the gate's APE was sent, and
    this failed; so did the change when ``categories`` kept APE.
    """
    now = [utc_now()]
    async with receiver() as got:
        address = f"{got.url}/VIID/SubscribeNotifications"
        raw = district_config(tmp_path, [address]).model_dump(mode="json")
        raw["city"]["privacy"]["devices"] = False
        raw["city"]["password"] = "secret"
        raw["city"]["subscriptions"]["password"] = PASSWORD
        raw["city"]["subscriptions"]["notify_password"] = NOTIFY_PASSWORD
        config = DistrictConfig.model_validate(raw)
        assert config.city is not None
        async with (
            CityQueue(config.city.queue_path) as queue,
            SubscriptionService(config, queue, poll_s=3600, clock=lambda: now[0]) as service,
        ):
            await queue.add([device_ape(config, FACE_GATE, True)])  # queued while devices were allowed
            begin = ahead(1)
            now[0] = begin + timedelta(seconds=5)
            upper = Upper(f"http://127.0.0.1:{config.city.subscriptions.listen_port}")  # type: ignore[union-attr]
            _, answers = await upper.subscribe(subscription(1, address, begin, detail="3"))
            assert answers[0]["StatusCode"] == "0"
            await service.notifier.round()
            await queue.add([device_ape(config, FACE_GATE, False)])  # nor a change queued after
            await service.notifier.round()
            assert got.requests == []
            assert await service.book.directory(subscribe_id(1)) is None
