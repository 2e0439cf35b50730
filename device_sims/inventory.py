"""A sample compound: the inventory the demo and the tests simulate, written as a gateway config."""

from __future__ import annotations

from pathlib import Path

from device_sims.devices import SimDevice

DISTRICT_ID = "36010400005000000001"  # 南昌市青云谱区 (GB/T 2260 code 360104), district platform (type 500)
COMPOUND_ID = "36010400012160000101"  # compound as a virtual organisation (type 216)

# (id, dialect, ref, name, building/gate) — type codes 124 person gate, 121 tollgate, 132 camera, 134 sensor
SAMPLE_DEVICES: tuple[tuple[str, str, str | None, str, str], ...] = (
    ("36010400011240000001", "hik-isapi-acs", None, "东门人脸门禁1", "东门"),
    ("36010400011240000002", "hik-isapi-acs", None, "东门人脸门禁2", "东门"),
    ("36010400011240000003", "uface-mqtt", "UF20231107A01", "北门人脸门禁", "北门"),
    ("36010400011210000001", "hik-isapi-anpr", None, "东门车辆道闸", "东门"),
    ("36010400011210000002", "vz-lpr-mqtt", "e2e0c7a4-5f0d4a1b", "南门车辆道闸", "南门"),
    ("36010400011320000001", "hightoss-mqtt", "6J0C5A2PAZ0001", "7幢南立面高空抛物", "7幢"),
    ("36010400011340000001", "shed-mqtt", "860812045678901", "1号电瓶车棚烟感", "1号车棚"),
    ("36010400011340000002", "ctwing-smoke", "10009305", "2号电瓶车棚烟感", "2号车棚"),
)


def sample_devices() -> list[SimDevice]:
    """The simulated devices of the sample compound."""
    return [SimDevice(id=i, dialect=d, ref=r) for i, d, r, _, _ in SAMPLE_DEVICES]


def write_sample_config(path: Path, *, state_dir: Path, http_port: int, mqtt_port: int) -> Path:
    """A gateway config for the sample compound."""
    lines = [
        "# Sample compound written by compound-gateway (demo / tests).",
        "[compound]",
        f'district_id = "{DISTRICT_ID}"',
        f'compound_id = "{COMPOUND_ID}"',
        'name = "青云谱示范小区"',
        'timezone = "Asia/Shanghai"',
        "",
        "[state]",
        f'dir = "{state_dir}"',
        "",
        "[http]",
        'host = "127.0.0.1"',
        f"port = {http_port}",
        "",
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {mqtt_port}",
        "",
    ]
    for device_id, dialect, ref, name, place in SAMPLE_DEVICES:
        lines += ["[[devices]]", f'id = "{device_id}"', f'name = "{name}"', f'dialect = "{dialect}"']
        if ref is not None:
            lines.append(f'ref = "{ref}"')
        key = "building" if place.endswith("幢") or place.endswith("车棚") else "gate"
        lines += ["[devices.location]", f'{key} = "{place}"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
