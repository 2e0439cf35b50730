"""A sample compound: the inventory the demo and the tests simulate, written as a gateway config."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import SecretStr

from device_sims.devices import SimDevice, sample_secret
from gateway.broker_accounts import BrokerAccounts, build_broker_accounts
from gateway.config import GatewayConfig
from gateway.device_secrets import GATEWAY_BROKER_USER, DeviceSecrets, write_device_secrets

PLATFORM_DIALECTS = ("ctwing-smoke",)
"""The vendor platforms among the sample devices' dialects (they push for their devices)."""

DISTRICT_ID = "36010400005000000001"  # 南昌市青云谱区 (GB/T 2260 code 360104), district platform (type 500)
COMPOUND_ID = "36010400012160000101"  # compound as a virtual organisation (type 216)

# (id, dialect, ref, name, building/gate) — type codes 124 person gate, 121 tollgate, 132 camera,
# 134 sensor (alarm input), 135 alarm output
SAMPLE_DEVICES: tuple[tuple[str, str, str | None, str, str], ...] = (
    ("36010400011240000001", "hik-isapi-acs", None, "东门人脸门禁1", "东门"),
    ("36010400011240000002", "hik-isapi-acs", None, "东门人脸门禁2", "东门"),
    ("36010400011240000003", "uface-mqtt", "UF20231107A01", "北门人脸门禁", "北门"),
    ("36010400011210000001", "hik-isapi-anpr", None, "东门车辆道闸", "东门"),
    ("36010400011210000002", "vz-lpr-mqtt", "e2e0c7a4-5f0d4a1b", "南门车辆道闸", "南门"),
    ("36010400011320000001", "hightoss-mqtt", "6J0C5A2PAZ0001", "7幢南立面高空抛物", "7幢"),
    ("36010400011340000001", "shed-mqtt", "860812045678901", "1号电瓶车棚烟感", "1号车棚"),
    ("36010400011340000002", "ctwing-smoke", "10009305", "2号电瓶车棚烟感", "2号车棚"),
    ("36010400011350000001", "siren-mqtt", "SR2026A0101", "1号电瓶车棚声光报警器", "1号车棚"),
)


COMPOUND_NAMES = ("青云谱示范小区", "洪都新村", "岱山花园", "京山小区", "三店西路小区")


def compound_id(index: int = 1) -> str:
    """The id of the n-th sample compound (1 is ``COMPOUND_ID``)."""
    return COMPOUND_ID[:-2] + f"{index:02d}"


def compound_name(index: int = 1) -> str:
    """A plausible name for the n-th sample compound."""
    base = COMPOUND_NAMES[(index - 1) % len(COMPOUND_NAMES)]
    return base if index <= len(COMPOUND_NAMES) else f"{base}{index}期"


def _device_id(base: str, index: int) -> str:
    # the n-th compound's devices differ in the serial's hundreds: ...0001 -> ...0101 for compound 2
    return base[:-4] + f"{index - 1:02d}" + base[-2:]


def sample_devices(index: int = 1) -> list[SimDevice]:
    """The simulated devices of the n-th sample compound."""
    return [SimDevice(id=_device_id(i, index), dialect=d, ref=r) for i, d, r, _, _ in SAMPLE_DEVICES]


def sample_device_secrets(index: int = 1) -> DeviceSecrets:
    """The secrets of the n-th sample compound: every device, the platform and the gateway."""
    return DeviceSecrets(
        gateway=SecretStr(sample_secret(GATEWAY_BROKER_USER)),
        devices={
            d.id: SecretStr(d.secret) for d in sample_devices(index) if d.dialect not in PLATFORM_DIALECTS
        },
        platforms={p: SecretStr(sample_secret(p)) for p in PLATFORM_DIALECTS},
    )


def write_sample_config(
    path: Path,
    *,
    state_dir: Path,
    http_port: int,
    mqtt_port: int,
    index: int = 1,
    media_url: str | None = None,
) -> Path:
    """A gateway config for the n-th sample compound (the first by default).

    ``media_url``: the thrown-object camera's download API (``device_sims.media_server``); none:
    its pictures and clips stay on the camera. Its device secrets go to ``<name>-secrets.toml`` beside it (mode 0600), named by ``[trust]
    secrets_file``; the simulators present the same secrets.
    """
    secrets_path = path.parent / f"{path.stem}-secrets.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_device_secrets(secrets_path, sample_device_secrets(index))
    text = _sample_config_text(
        state_dir=state_dir,
        http_port=http_port,
        mqtt_port=mqtt_port,
        index=index,
        secrets_path=secrets_path,
        media_url=media_url,
    )
    path.write_text(text, encoding="utf-8")
    return path


def sample_broker_accounts(index: int = 1) -> BrokerAccounts:
    """The n-th sample compound's accounts on its compound broker (its MQTT devices and the gateway)."""
    text = _sample_config_text(
        state_dir=Path("/nonexistent"),
        http_port=1,
        mqtt_port=1,
        index=index,
        secrets_path=Path("/nonexistent"),
    )
    config = GatewayConfig.model_validate(tomllib.loads(text))
    return build_broker_accounts(config, sample_device_secrets(index))


def _sample_config_text(
    *,
    state_dir: Path,
    http_port: int,
    mqtt_port: int,
    index: int,
    secrets_path: Path,
    media_url: str | None = None,
) -> str:
    lines = [
        "# Sample compound written by compound-gateway (demo / tests).",
        "[compound]",
        f'district_id = "{DISTRICT_ID}"',
        f'compound_id = "{compound_id(index)}"',
        f'name = "{compound_name(index)}"',
        'timezone = "Asia/Shanghai"',
        "",
        "[state]",
        f'dir = "{state_dir}"',
        "",
        "[http]",
        'host = "127.0.0.1"',
        f"port = {http_port}",
        "# the simulators replay hours of a compound's traffic in seconds",
        "device_rate_per_s = 100000.0",
        "platform_rate_per_s = 100000.0",
        "",
        "[trust]",
        f'secrets_file = "{secrets_path}"',
        "",
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {mqtt_port}",
        f'username = "{GATEWAY_BROKER_USER}"',
        "device_rate_per_s = 100000.0",
        "",
    ]
    for device_id, dialect, ref, name, place in SAMPLE_DEVICES:
        lines += [
            "[[devices]]",
            f'id = "{_device_id(device_id, index)}"',
            f'name = "{name}"',
            f'dialect = "{dialect}"',
        ]
        if ref is not None:
            lines.append(f'ref = "{ref}"')
        if dialect == "hightoss-mqtt" and media_url is not None:
            lines.append(f'media_url = "{media_url}"')
        key = "building" if place.endswith("幢") or place.endswith("车棚") else "gate"
        lines += ["[devices.location]", f'{key} = "{place}"', ""]
    return "\n".join(lines)
