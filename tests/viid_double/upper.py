"""The city's upper-platform role in a cascade (§5.8): it subscribes on a LOWER VIID and cancels.

A ``SubscribeObject`` goes to ``POST <lower>/VIID/Subscribes`` inside a ``SubscribeListObject``; the
lower platform then POSTs ``SubscribeNotificationListObject`` batches to the ``ReceiveAddr`` (by
default the double's own ``/VIID/SubscribeNotifications``). Cancelling is either
``PUT <lower>/VIID/Subscribes/{id}`` with ``OperateType 1`` (and ``SubscribeStatus 1``) or
``DELETE <lower>/VIID/Subscribes?IDList={id}``, both named in GA/T 1400.4 (§5.1).

Each request carries ``User-Identify: <our VIIDServerID>``; a 401 with a digest challenge is answered
once (RFC 7616 MD5, qop=auth, computed by ``tests/digest_by_hand.py``) and the request re-sent.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import aiohttp

from tests.digest_by_hand import digest_authorization
from tests.viid_double.validation import Obj, subscribe_reasons

ORG_CODE = "330100000000"  # the city's 12-digit 公安机关机构代码 (first part of a 33-char id)


@dataclass(frozen=True)
class LowerPlatform:
    """Where the lower VIID listens and the digest credentials it gave the city."""

    url: str  # http://host:port, no trailing slash
    username: str
    password: str


@dataclass(frozen=True)
class UpperAnswer:
    """What the lower platform answered (after at most one digest round)."""

    status: int
    body: Any
    challenged: bool  # a 401 digest challenge came first


def new_subscribe_id(now: datetime, seq: int, org_code: str = ORG_CODE) -> str:
    """A 33-char SubscribeID: org code (12) + 03 + yyyyMMddHHmmss + 5-digit seq (§5.5)."""
    return f"{org_code}03{now:%Y%m%d%H%M%S}{seq:05d}"


def subscribe_object(
    subscribe_id: str,
    *,
    receive_addr: str,
    resource_uri: str,
    now: datetime,
    detail: str = "12,13",
    resource_class: str = "4",
    title: str = "市级视图库订阅",
    report_interval: int = 0,
    result_image_declare: str = "-1",
    days: int = 30,
) -> Obj:
    """A SubscribeObject with every §5.8 field (OperateType 0, SubscribeStatus 0)."""
    obj: Obj = {
        "SubscribeID": subscribe_id,
        "Title": title,
        "SubscribeDetail": detail,
        "ResourceURI": resource_uri,
        "ApplicantName": "市局视图库",
        "ApplicantOrg": "市公安局",
        "BeginTime": f"{now:%Y%m%d%H%M%S}",
        "EndTime": f"{now + timedelta(days=days):%Y%m%d%H%M%S}",
        "ReceiveAddr": receive_addr,
        "ReportInterval": report_interval,
        "Reason": "测试订阅",
        "OperateType": 0,
        "SubscribeStatus": 0,
        "ResourceClass": resource_class,
        "ResultImageDeclare": result_image_declare,
        "ResultFeatureDeclare": -1,
    }
    reasons = subscribe_reasons(obj)
    if reasons:
        raise ValueError(f"the double built an invalid SubscribeObject: {reasons}")
    return obj


def parse_digest(header: str) -> dict[str, str]:
    """The key=value pairs of a ``Digest ...`` header (quoted or bare values; keys lower-cased)."""
    if not header.startswith("Digest "):
        return {}
    pairs = re.findall(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))', header[len("Digest ") :])
    return {key.lower(): quoted or bare for key, quoted, bare in pairs}


async def call_lower(
    lower: LowerPlatform,
    method: Literal["POST", "PUT", "DELETE"],
    path_qs: str,
    *,
    identify: str,
    body: Obj | None = None,
) -> UpperAnswer:
    """One request to the lower platform, answering a digest challenge once."""
    headers = {"User-Identify": identify, "Content-Type": "application/VIID+JSON;charset=UTF-8"}
    challenged = False
    async with aiohttp.ClientSession() as session:
        for _attempt in range(2):
            async with session.request(method, lower.url + path_qs, json=body, headers=headers) as response:
                text = await response.text()
                challenge = parse_digest(response.headers.get("WWW-Authenticate", ""))
                if response.status != 401 or not challenge or challenged:
                    try:
                        parsed: Any = await response.json(content_type=None) if text else None
                    except ValueError:
                        parsed = text
                    return UpperAnswer(response.status, parsed, challenged)
            challenged = True
            headers["Authorization"] = digest_authorization(
                lower.username,
                lower.password,
                challenge["nonce"],
                path_qs,
                1,
                cnonce=secrets.token_hex(8),
                realm=challenge.get("realm", ""),
                method=method,
                opaque=challenge.get("opaque"),
            )
    raise AssertionError("unreachable: the loop returns on its second pass")
