"""Secrets never show: not in the logs of a full simulator run, not in metrics or health answers, not in check-config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp

from device_sims.broker import Mosquitto
from device_sims.influx import InfluxServer
from device_sims.inventory import sample_device_secrets
from tests.processes import GatewayProcess, IngesterProcess
from tests.test_uplink_e2e import district_config, play

HEALTH_ROUTES = ("/metrics", "/healthz", "/readyz")
SECRETS = {
    "mqtt": "mqtt-Pa55-7f3a9c1e",
    "uplink": "uplink-Pa55-b81d4e2f",
    "district": "district-Pa55-0c9e5a77",
    "influx": "influx-Pa55-5d2b8e10",
    "key": "pseudonym-key-4a1f9b3c8e2d7f6a5b4c3d2e1f0a9b8c",
}


def gateway_toml(tmp_path: Path, device_broker: Mosquitto, district: Mosquitto) -> Path:
    from tests.conftest import sample_config  # noqa: PLC0415

    key_file = tmp_path / "credentials" / "pseudonym-key"
    key_file.parent.mkdir()
    key_file.write_text(SECRETS["key"], encoding="utf-8")
    path = sample_config(
        tmp_path,
        device_broker.port,
        mqtt=f'password = "{SECRETS["mqtt"]}"',
    )
    with path.open("a", encoding="utf-8") as handle:
        handle.write(
            '\n[uplink]\nmode = "mqtt"\nbatch_max_delay_ms = 20\n[uplink.broker]\nhost = "127.0.0.1"\n'
            f'port = {district.port}\nusername = "compound-1"\npassword = "{SECRETS["uplink"]}"\n'
            f'\n[privacy]\nkey_file = "{key_file}"\n'
        )
    return path


async def test_no_secret_in_logs_metrics_or_check_config(
    tmp_path: Path,
    mosquitto: Mosquitto,
    district_broker: Mosquitto,
    influx: InfluxServer,
) -> None:
    """A simulator run through the gateway and the ingester as daemons (logs, /metrics, /healthz, /readyz of both)."""
    from gateway.broker_accounts import build_broker_accounts  # noqa: PLC0415
    from gateway.config import load_config  # noqa: PLC0415
    from gateway.device_secrets import load_device_secrets  # noqa: PLC0415

    path = gateway_toml(tmp_path, mosquitto, district_broker)
    text = path.read_text(encoding="utf-8")
    config = load_config(path)
    # the broker's accounts as 'devices credentials' writes them for this config: [mqtt] password
    # (an older installation's) is the gateway's password on the compound broker
    mosquitto.admit(build_broker_accounts(config, load_device_secrets(config)))
    district_config(
        tmp_path,
        district_broker,
        f'type = "influx_v1"\nurl = "{influx.url}"\ndatabase = "secrets"\nusername = "ingest"\n'
        f'password = "{SECRETS["influx"]}"',
    )
    district_path = tmp_path / "district-i1.toml"
    district_path.write_text(
        district_path.read_text(encoding="utf-8").replace(
            "[broker]\n", f'[broker]\nusername = "ingester"\npassword = "{SECRETS["district"]}"\n', 1
        ),
        encoding="utf-8",
    )
    from district.config import load_district_config  # noqa: PLC0415

    district = load_district_config(district_path)
    assert district.broker.password is not None
    ingester = IngesterProcess(district_path, tmp_path / "ingester.log")
    gateway = GatewayProcess(path, tmp_path / "gateway.log")
    await ingester.start()
    try:
        await gateway.start_gateway(config)
        try:
            sent = await play(config, mosquitto, seed=21, count=80)
            assert sent.expected
            url = f"http://127.0.0.1:{config.http.port}"

            ingester_url = f"http://127.0.0.1:{district.ingest.http_port}"

            async def fetch(route: str, base: str = url) -> str:
                async with aiohttp.ClientSession() as session, session.get(base + route) as response:
                    return await response.text()

            pages = [await fetch(route, base) for base in (url, ingester_url) for route in HEALTH_ROUTES]
            assert "cgw_ingest_events_stored_total" in pages[3]  # the ingester's own metrics were read
        finally:
            gateway.stop()
    finally:
        ingester.stop()
    checks = [
        subprocess.run(
            [sys.executable, "-m", "cli", "check-config", str(p)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        for p in (path, district_path)
    ]
    broken = tmp_path / "broken.toml"
    broken.write_text(
        text.replace(f'password = "{SECRETS["mqtt"]}"', f'password = ["{SECRETS["mqtt"]}"]'), "utf-8"
    )
    checks.append(
        subprocess.run(
            [sys.executable, "-m", "cli", "check-config", str(broken)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )
    assert [c.returncode for c in checks] == [0, 0, 2]
    assert "mqtt.password" in checks[2].stderr
    logs = gateway.log_path.read_text(encoding="utf-8") + ingester.log_path.read_text(encoding="utf-8")
    assert "ingester_connected" in logs
    assert "gateway_started" in logs  # the logs were captured
    assert "uplink_connected" in logs
    everything = "\n".join([logs, *pages, *(c.stdout + c.stderr for c in checks)])
    for name, secret in SECRETS.items():
        assert secret not in everything, f"the {name} secret leaked"
    # the device secrets the simulators presented (digest, basic, signatures, broker logins)
    device_secrets = sample_device_secrets()
    for name, value in [*device_secrets.devices.items(), *device_secrets.platforms.items()]:
        assert value.get_secret_value() not in everything, f"the secret of {name} leaked"
    assert repr(config.mqtt.password) == "SecretStr('**********')"
    assert config.privacy.key_file is not None
