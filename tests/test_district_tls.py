"""The district broker as deployed (deploy/mosquitto): TLS, a certificate per compound, per-compound ACLs.

A real Mosquitto runs the shipped configuration and ACL file with certificates from
deploy/make-test-ca.sh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import aiomqtt
import pytest

from device_sims.broker import Mosquitto, free_port, mosquitto_binary, stop_process
from device_sims.inventory import DISTRICT_ID
from foundation.credentials import CREDENTIAL_PLACEHOLDER
from foundation.events import Event, EventKind
from gateway.config import load_config
from gateway.outbox import Outbox
from tests.conftest import sample_config
from tests.processes import GatewayProcess
from tests.test_uplink_e2e import Sent, play
from uplink.protocol import decode_batch, parse_topic

ROOT = Path(__file__).resolve().parents[1]
C1, C2 = "36010400012160000101", "36010400012160000102"
EXPIRED = "36010400012160000199"


@dataclass
class District:
    port: int
    certs: Path
    process: subprocess.Popen[bytes] | None = None  # the broker (SIGHUP reloads its ACL)

    def tls(self, name: str, ca: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(ca or self.certs / "ca.pem"))
        context.load_cert_chain(str(self.certs / f"{name}.pem"), str(self.certs / f"{name}.key"))
        return context

    def gateway_config(
        self,
        tmp_path: Path,
        device_broker: Mosquitto,
        *,
        certificate: str,
        cert_dir: Path | None = None,
        key_credential: str | None = None,
    ) -> Path:
        """The sample compound's config with its uplink to this broker, presenting ``certificate``.

        The key is the file next to the certificate, or the systemd credential ``key_credential``.
        """
        config_path = sample_config(tmp_path, device_broker.port)
        cert_dir = cert_dir or self.certs
        key = (
            f'key_credential = "{key_credential}"'
            if key_credential
            else f'key_file = "{cert_dir / (certificate + ".key")}"'
        )
        with config_path.open("a", encoding="utf-8") as handle:
            handle.write(
                f'\n[uplink]\nmode = "mqtt"\n[uplink.broker]\nhost = "127.0.0.1"\nport = {self.port}\n'
                f'[uplink.broker.tls]\nca_file = "{self.certs / "ca.pem"}"\n'
                f'cert_file = "{cert_dir / (certificate + ".pem")}"\n'
                f"{key}\n"
                "\n[backoff]\ninitial_s = 0.2\nmax_s = 1.0\n"
            )
        return config_path

    def client(self, name: str, **kwargs: object) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=f"t-{name}-{time.monotonic_ns()}",
            tls_context=self.tls(name),
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=5,
            **kwargs,  # type: ignore[arg-type]
        )


async def logged_while_buffering(
    gateway: GatewayProcess, outbox: Path, sent: Sent, logged: Callable[[str], bool]
) -> list[str]:
    """Wait until the gateway's log satisfies ``logged`` and every acknowledged event is pending; its lines."""
    deadline = time.monotonic() + 20
    while True:
        log = gateway.log_path.read_text(encoding="utf-8")
        with Outbox(outbox, max_bytes=1 << 30) as box:
            pending = set(box.event_ids("pending"))
        if logged(log) and sent.expected <= pending:
            return log.splitlines()
        assert time.monotonic() < deadline, log[-3000:]
        await asyncio.sleep(0.2)


def make_certs(out: Path, *names: str, days: int | None = None) -> None:
    env = {**os.environ, **({"DAYS": str(days)} if days is not None else {})}
    subprocess.run(
        [str(ROOT / "deploy" / "make-test-ca.sh"), str(out), *names], check=True, env=env, capture_output=True
    )


@pytest.fixture
def district(tmp_path: Path) -> Iterator[District]:
    # mosquitto reads the certificates after dropping to its own user: a directory it can enter
    certs = Path(tempfile.mkdtemp(prefix="cgw-tls-"))
    certs.chmod(0o755)
    make_certs(certs, C1, C2)
    make_certs(certs, EXPIRED, days=-1)
    for key in certs.glob("*.key"):
        key.chmod(0o644)  # mosquitto drops to its own user and must read the broker key
    port = free_port()
    shipped = (ROOT / "deploy" / "mosquitto" / "district.conf").read_text(encoding="utf-8")
    config = (
        shipped.replace("/etc/mosquitto/district/", f"{certs}/")
        .replace("listener 8883", f"listener {port} 127.0.0.1")
        .replace("persistence true", "persistence false")
        .replace("persistence_location /var/lib/mosquitto/", "")
    )
    (certs / "acl").write_text(
        (ROOT / "deploy" / "mosquitto" / "acl").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (tmp_path / "district.conf").write_text(config, encoding="utf-8")
    process = subprocess.Popen(
        [mosquitto_binary(), "-c", str(tmp_path / "district.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, "mosquitto refused the shipped configuration"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield District(port, certs, process)
    finally:
        stop_process(process)
        shutil.rmtree(certs, ignore_errors=True)


async def received(client: aiomqtt.Client, seconds: float) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                got.append((message.topic.value, bytes(message.payload)))
    return got


async def test_a_compound_writes_only_its_own_topics_and_reads_no_events(district: District) -> None:
    own = f"cgw/v1/{DISTRICT_ID}/{C1}/face_access"
    other = f"cgw/v1/{DISTRICT_ID}/{C2}/face_access"
    async with (
        district.client("ingester") as ingester,
        district.client(C1) as compound,
        district.client(C2) as neighbour,
    ):
        await ingester.subscribe("$share/district-ingesters/cgw/v1/+/+/+", qos=1)
        # Mosquitto grants any subscription and filters every delivery through the ACL
        await compound.subscribe("cgw/v1/#", qos=1)
        await compound.publish(own, b"mine", qos=1)
        await compound.publish(other, b"spoofed", qos=1)  # dropped: C1 may not write as C2
        await neighbour.publish(other, b"theirs", qos=1)
        assert sorted(await received(ingester, 1.5)) == sorted([(own, b"mine"), (other, b"theirs")])
        assert await received(compound, 0.5) == []  # neither its own nor anyone's events come back


async def test_expired_and_unknown_certificates_are_refused(district: District, tmp_path: Path) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with district.client(EXPIRED):
            pass
    stranger = tmp_path / "stranger"
    make_certs(stranger, C1)  # the right name, issued by another CA
    client = aiomqtt.Client(
        "127.0.0.1",
        district.port,
        identifier="t-stranger",
        tls_context=_stranger_context(stranger, district),
        timeout=5,
    )
    with pytest.raises(aiomqtt.MqttError):
        async with client:
            pass


def _stranger_context(stranger: Path, district: District) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(district.certs / "ca.pem"))  # trusts the real broker
    context.load_cert_chain(str(stranger / f"{C1}.pem"), str(stranger / f"{C1}.key"))
    return context


@pytest.mark.parametrize(
    ("problem", "says"),
    [("expired", "expired on"), ("unknown CA", "issued by the district CA")],
)
async def test_gateway_reports_a_refused_certificate_and_keeps_buffering(
    district: District, tmp_path: Path, mosquitto: Mosquitto, problem: str, says: str
) -> None:
    """A compound whose certificate the broker refuses: the uplink says why; nothing is lost meanwhile."""
    if problem == "expired":
        config_path = district.gateway_config(tmp_path, mosquitto, certificate=EXPIRED)
    else:
        make_certs(tmp_path / "stranger", C1)  # the right name, issued by another CA
        config_path = district.gateway_config(
            tmp_path, mosquitto, certificate=C1, cert_dir=tmp_path / "stranger"
        )
    config = load_config(config_path)
    gateway = GatewayProcess(config_path, tmp_path / "gateway.log")
    await gateway.start_gateway(config)
    try:
        sent = await play(config, mosquitto, seed=31, count=40)
        log = await logged_while_buffering(
            gateway,
            config.state.dir / "outbox.db",
            sent,
            lambda log: "transport_connect_failed" in log and "uplink" in log,
        )
        refused = [line for line in log if "transport_connect_failed" in line and "uplink" in line]
        assert says in refused[0]  # the reason names the certificate problem
        assert gateway.process is not None
        assert gateway.process.poll() is None  # still running, still taking device events
    finally:
        gateway.stop()


async def test_gateway_reports_refused_publishes_and_keeps_buffering(
    district: District, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A compound holding another compound's certificate: the broker refuses each publish (v5 reason 0x87).

    The gateway says so with the reason and the certificate's name, counts it, and keeps every
    device event pending; nothing reaches the district.
    """
    config_path = district.gateway_config(tmp_path, mosquitto, certificate=C2)  # the sample compound is C1
    config = load_config(config_path)
    assert config.compound.compound_id == C1
    gateway = GatewayProcess(config_path, tmp_path / "gateway.log")
    async with district.client("ingester") as ingester:
        await ingester.subscribe("$share/district-ingesters/cgw/v1/+/+/+", qos=1)
        await gateway.start_gateway(config)
        try:
            sent = await play(config, mosquitto, seed=37, count=40)
            log = await logged_while_buffering(
                gateway,
                config.state.dir / "outbox.db",
                sent,
                lambda log: "uplink_publish_refused" in log and log.count("refused the publish") >= 2,
            )
            refused = [json.loads(line) for line in log if "uplink_publish_refused" in line]
            retried = [line for line in log if "refused the publish" in line]
            assert refused[0]["level"] == "error"
            assert refused[0]["reason"] == "Not authorized"
            assert f"issued to '{C2}'" in refused[0]["hint"]  # names the mismatch an installer must fix
            assert len(refused) == 1  # logged once, not on every retry
            assert "not revoked" not in retried[0]  # no TLS hint: the handshake was fine
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{config.http.port}/metrics") as response,
            ):
                metrics = await response.text()
            (line,) = [m for m in metrics.splitlines() if m.startswith("cgw_uplink_publish_refused_total ")]
            assert float(line.split()[1]) >= 2
            assert gateway.process is not None
            assert gateway.process.poll() is None
        finally:
            gateway.stop()
        # the status and every batch were refused: the district saw nothing from this gateway
        assert [topic for topic, _ in await received(ingester, 1.0) if f"/{C1}/" in topic] == []


async def test_gateway_takes_its_tls_key_from_a_systemd_credential(
    district: District, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The client key only in ``$CREDENTIALS_DIRECTORY`` (as ``LoadCredential=`` leaves it) carries the uplink.

    The key is moved out of the certificate directory into a credentials directory, and the config
    names the credential, not a file. Every event the devices saw acknowledged reaches the district
    broker over TLS with the compound's certificate. Checked to fail: with ``TlsConfig.key_path()``
    returning ``key_file`` (the credential ignored), the certificate has no key and the gateway
    does not start.
    """
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    (district.certs / f"{C1}.key").rename(credentials / "uplink-tls-key")
    (credentials / "pseudonym-key").write_text("a" * 64, encoding="utf-8")  # the unit passes both
    config_path = district.gateway_config(
        tmp_path, mosquitto, certificate=C1, key_credential="uplink-tls-key"
    )
    config = load_config(config_path)
    gateway = GatewayProcess(
        config_path, tmp_path / "gateway.log", env={**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
    )
    arrived: set[str] = set()
    events: list[Event] = []

    def take(topic: str, body: bytes) -> None:
        address = parse_topic("cgw/v1", topic)
        if address.channel != "status":
            got = decode_batch(address, body).events
            events.extend(got)
            arrived.update(e.event_id for e in got)

    async with district.client("ingester") as ingester:
        await ingester.subscribe("$share/district-ingesters/cgw/v1/+/+/+", qos=1)
        await gateway.start_gateway(config)
        try:
            sent = await play(config, mosquitto, seed=41, count=60)
            assert sent.expected
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    async for message in ingester.messages:
                        take(message.topic.value, bytes(message.payload))
                        if arrived >= sent.expected:
                            break
        finally:
            gateway.stop()
        for topic, body in await received(ingester, 1.0):  # published before the stop
            take(topic, body)
    # besides the devices' events (their births included), only the gateway's own device-status reports
    own = {e.event_id for e in events if e.kind is EventKind.DEVICE_STATUS} - sent.expected
    assert arrived - own == sent.expected
    assert "uplink_connected" in gateway.log_path.read_text(encoding="utf-8")


@pytest.mark.parametrize("case", ["no credentials directory", "not loaded", "placeholder", "wrong key"])
def test_a_missing_tls_credential_stops_the_start_naming_file_field_and_fix(
    tmp_path: Path, case: str
) -> None:
    """``run`` (and ``check-config`` under the unit) refuse a credential they cannot use, with the fix.

    Checked to fail: without the start-up check in ``cli._run`` the gateway starts and only its
    uplink's connects fail (``run`` does not exit within the time limit).
    """
    certs = tmp_path / "certs"
    make_certs(certs, C1, C2)
    config_path = sample_config(tmp_path, free_port())
    with config_path.open("a", encoding="utf-8") as handle:
        handle.write(
            f'\n[uplink]\nmode = "mqtt"\n[uplink.broker]\nhost = "127.0.0.1"\nport = {free_port()}\n'
            f'[uplink.broker.tls]\nca_file = "{certs / "ca.pem"}"\ncert_file = "{certs / (C1 + ".pem")}"\n'
            'key_credential = "uplink-tls-key"\n'
        )
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "pseudonym-key").write_text("a" * 64, encoding="utf-8")  # only the TLS key is wrong
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    if case != "no credentials directory":
        env["CREDENTIALS_DIRECTORY"] = str(credentials)
    if case == "placeholder":
        (credentials / "uplink-tls-key").write_bytes(CREDENTIAL_PLACEHOLDER)
    if case == "wrong key":
        shutil.copy(certs / f"{C2}.key", credentials / "uplink-tls-key")
    says = {
        "no credentials directory": "$CREDENTIALS_DIRECTORY is not set",
        "not loaded": "add LoadCredential=uplink-tls-key:",
        "placeholder": "/etc/compound-gateway/credentials/uplink-tls-key",
        "wrong key": "does not load with the key in credential 'uplink-tls-key'",
    }[case]
    commands = [["run", "--config", str(config_path)]]
    if case != "no credentials directory":  # an operator's shell has no credentials to check
        commands.append(["check-config", str(config_path)])
    for command in commands:
        result = subprocess.run(
            [sys.executable, "-m", "cli", *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert f"{config_path}: uplink.broker.tls.key_credential: " in result.stderr
        assert says in result.stderr
