"""How soon evidence reaches an operator: an alarm's snapshot unasked, a clip on request.

Everything runs for real on this machine: the compound's Mosquitto (the sample accounts), the
gateway as its own process (``python -m cli run``) with the thrown-object camera's download API
(``device_sims/media_server.py``), the district's Mosquitto, the ingester into the embedded SQLite
store and the operator API with its evidence desk (both in this process). Each round:

- the camera publishes one thrown-object alarm; **snapshot** and **trajectory** are the seconds from
  that publish until the district holds the file, verified (the API's status route, polled every
  10 ms), with nobody asking;
- the operator then asks for the clip over the API; **clip** is the seconds from the request until
  it is ``complete`` (the clip fetched from the camera, sent in chunks, verified at the district).

Baseline, same run, same district broker: the clip's bytes in the same 256 KiB QoS 1 chunks from a
bare publisher (one PUBACK at a time, as the gateway sends) to a bare subscriber: moving the bytes
and nothing else. Targets: snapshot 2 s, clip 5 s for a clip of a few MB.

    .venv/bin/python bench/evidence_bench.py                       # 5 rounds, 4 MiB clip, writes docs
    .venv/bin/python bench/evidence_bench.py --rounds 2 --clip-mib 16 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest_bench import machine, replace_section
from device_sims.broker import Mosquitto, free_port
from device_sims.demo import expected_event_ids
from device_sims.devices import CST, HighTossSim, MqttPublish, build_sim
from device_sims.inventory import DISTRICT_ID, sample_broker_accounts, sample_devices, write_sample_config
from device_sims.media_server import MediaServer, media_bytes
from district.ingester import run_ingester
from district.operations import OperationsDb
from district.operator_cli import serve_api
from district.query_model import Role
from foundation.mqtt import MqttSession, SessionOptions
from gateway.config import GatewayConfig, load_config
from tests.evidence_double import write_config
from tests.processes import GatewayProcess
from uplink.evidence import DEFAULT_CHUNK_BYTES, chunk_spans

POLL_S = 0.01
ROUND_LIMIT_S = 120


def gateway_config(workdir: Path, device_port: int, district_port: int, media_url: str) -> Path:
    """The sample compound, its camera's download API at ``media_url``, uplink to the district broker."""
    path = write_sample_config(
        workdir / "gateway.toml",
        state_dir=workdir / "state",
        http_port=free_port(),
        mqtt_port=device_port,
        media_url=media_url,
    )
    with path.open("a", encoding="utf-8") as handle:
        handle.write(
            f'\n[uplink]\nmode = "mqtt"\n[uplink.broker]\nhost = "127.0.0.1"\nport = {district_port}\n'
        )
    return path


@contextlib.asynccontextmanager
async def background(coro_factory: object, name: str) -> AsyncIterator[None]:
    """Run a daemon's ``run_*`` coroutine until the block ends; wait for its ready event."""
    ready = asyncio.Event()
    task = asyncio.create_task(coro_factory(ready), name=name)  # type: ignore[operator]
    try:
        async with asyncio.timeout(30):
            done, _ = await asyncio.wait(
                {task, asyncio.create_task(ready.wait())}, return_when="FIRST_COMPLETED"
            )
            if task in done:
                task.result()  # raises what stopped it
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Api:
    """The operator API as the bench's operator uses it."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.http = aiohttp.ClientSession()

    async def status(self, event_id: str) -> dict[str, list[dict[str, object]]]:
        async with self.http.get(f"{self.url}/api/v1/evidence/{event_id}", headers=self.headers) as response:
            if response.status == 404:
                return {"held": [], "requests": []}  # the alarm is not in the store yet
            response.raise_for_status()
            body: dict[str, list[dict[str, object]]] = await response.json()
            return body

    async def request_clip(self, event_id: str) -> str:
        async with self.http.post(
            f"{self.url}/api/v1/evidence/{event_id}/requests",
            json={"reason": "benchmark: clip on request", "roles": ["clip"]},
            headers=self.headers,
        ) as response:
            response.raise_for_status()
            return str((await response.json())["request_id"])


async def held_at(api: Api, event_id: str, role: str, sha256: str) -> float:
    """The monotonic time at which the district first holds the verified file."""
    async with asyncio.timeout(ROUND_LIMIT_S):
        while True:
            for entry in (await api.status(event_id))["held"]:
                if entry["role"] == role and entry["verified"]:
                    assert entry["sha256"] == sha256, f"{role}: {entry['sha256']} != the camera's {sha256}"
                    return time.monotonic()
            await asyncio.sleep(POLL_S)


async def complete_at(api: Api, event_id: str, request_id: str) -> float:
    """The monotonic time at which the request is complete (or an error if it ends otherwise)."""
    async with asyncio.timeout(ROUND_LIMIT_S):
        while True:
            for request in (await api.status(event_id))["requests"]:
                if request["request_id"] == request_id and request["state"] != "pending":
                    if request["state"] == "complete":
                        return time.monotonic()
                    if request["state"] not in {"waiting", "sending"}:
                        raise RuntimeError(f"clip request ended {request['state']}: {request}")
            await asyncio.sleep(POLL_S)


async def baseline_seconds(broker_port: int, data: bytes) -> float:
    """The clip's bytes through the district broker, chunked like the gateway sends, bare clients."""
    topic = "bench/evidence/baseline"
    spans = chunk_spans(len(data), DEFAULT_CHUNK_BYTES)
    receiver = MqttSession(SessionOptions("127.0.0.1", broker_port, f"bench-rx-{time.monotonic_ns()}"))
    sender = MqttSession(SessionOptions("127.0.0.1", broker_port, f"bench-tx-{time.monotonic_ns()}"))
    async with receiver, sender:
        await receiver.subscribe(topic, qos=1)

        async def receive() -> float:
            got = 0
            async for _ in receiver.messages():
                got += 1
                if got == len(spans):
                    return time.monotonic()
            raise RuntimeError("the baseline receiver's connection ended")

        waiting = asyncio.create_task(receive())
        started = time.monotonic()
        for offset, length in spans:
            await sender.publish(topic, data[offset : offset + length], qos=1)
        return await waiting - started


async def run(rounds: int, clip_bytes: int) -> list[dict[str, float]]:
    """Every round's figures (seconds)."""
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="cgw-evidence-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "district").mkdir()
        device_broker = Mosquitto(workdir / "device-broker", accounts=sample_broker_accounts()).start()
        district_broker = Mosquitto(workdir / "district-broker").start()
        camera = build_sim(next(d for d in sample_devices() if d.dialect == "hightoss-mqtt"))
        assert isinstance(camera, HighTossSim)
        district = write_config(workdir / "district", district_broker.port, ttl_s=900)
        try:
            async with (
                MediaServer(camera.device, clip_bytes=clip_bytes) as media,
                OperationsDb(district.api.ops_db) as ops,
            ):
                token = await ops.create_token("bench-operator", Role.OPERATOR, DISTRICT_ID, (), "bench")
                config_path = gateway_config(workdir, device_broker.port, district_broker.port, media.url)
                config = load_config(config_path)
                gateway = GatewayProcess(config_path, workdir / "gateway.log")
                async with (
                    background(lambda ready: run_ingester(district, ready=ready), "ingester"),
                    background(lambda ready: serve_api(district, ready=ready), "operator-api"),
                ):
                    await gateway.start_gateway(config)
                    api = Api(f"http://127.0.0.1:{district.api.port}", token)
                    try:
                        for index in range(rounds):
                            results.append(
                                await one_round(index, camera, device_broker, config, api, clip_bytes)
                            )
                            print(", ".join(f"{k} {v:.3f}s" for k, v in results[-1].items()), flush=True)
                    finally:
                        await api.http.close()
                        gateway.stop()
                for result in results:  # the baseline alternates with nothing: the pipeline is idle now
                    data, _ = media_bytes("bench/baseline.mp4", clip_bytes)
                    result["baseline"] = await baseline_seconds(district_broker.port, data)
        finally:
            device_broker.stop()
            district_broker.stop()
    return results


async def one_round(
    index: int, camera: HighTossSim, broker: Mosquitto, config: GatewayConfig, api: Api, clip_bytes: int
) -> dict[str, float]:
    """One alarm: snapshot and trajectory unasked, then the clip on request."""
    at = datetime.now(CST) - timedelta(seconds=rounds_offset(index))
    alarm = camera.alarm(at, random.Random(index))
    assert isinstance(alarm, MqttPublish)
    keys = HighTossSim.media_keys(alarm)
    (event_id,) = expected_event_ids(config, [alarm])

    def sha(role: str) -> str:
        return hashlib.sha256(media_bytes(keys[role], clip_bytes)[0]).hexdigest()

    session = MqttSession(
        SessionOptions(
            "127.0.0.1",
            broker.port,
            f"bench-{camera.device.username}-{index}",
            username=camera.device.username,
            password=camera.device.secret,
        )
    )
    async with session:
        published = time.monotonic()
        await session.publish(alarm.topic, alarm.payload, qos=1)
    snapshot, trajectory = await asyncio.gather(
        held_at(api, event_id, "snapshot", sha("snapshot")),
        held_at(api, event_id, "trajectory", sha("trajectory")),
    )
    asked = time.monotonic()
    request_id = await api.request_clip(event_id)
    await held_at(api, event_id, "clip", sha("clip"))
    done = await complete_at(api, event_id, request_id)
    return {"snapshot": snapshot - published, "trajectory": trajectory - published, "clip": done - asked}


def rounds_offset(index: int) -> int:
    """Alarms a few seconds apart in camera time, so each round's keys and event ids are new."""
    return 10 * index


def write(results: list[dict[str, float]], rounds: int, clip_bytes: int) -> list[str]:
    """The docs section."""

    def figure(name: str) -> tuple[float, float]:
        values = [r[name] for r in results]
        return statistics.median(values), max(values)

    snapshot, trajectory, clip, baseline = (figure(n) for n in ("snapshot", "trajectory", "clip", "baseline"))
    ratio = clip[0] / baseline[0]
    mib = clip_bytes / 2**20
    return [
        f"## Evidence to the operator, {mib:g} MiB clip (issue 14)",
        "",
        f"Command: `.venv/bin/python bench/evidence_bench.py --rounds {rounds} --clip-mib {mib:g}`, run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {machine()}. Everything on this machine: both Mosquittos, the gateway process, the ingester",
        "and the operator API with its evidence desk (one process), the camera's download API.",
        "",
        "Snapshot and trajectory: from the camera's alarm publish until the district holds the verified file,",
        f"unasked. Clip ({mib:g} MiB): from the operator's request until it is complete (fetched from the",
        "camera by the gateway when the alarm came, sent in 256 KiB chunks, verified at the district).",
        "Baseline: the same bytes in the same chunks from a bare publisher to a bare subscriber through the",
        "district broker, same run. Polling the status route every 10 ms adds up to 10 ms to each figure.",
        "",
        "| figure | median s | max s | target |",
        "|---|---:|---:|---:|",
        f"| snapshot after the alarm | {snapshot[0]:.3f} | {snapshot[1]:.3f} | 2 s |",
        f"| trajectory picture after the alarm | {trajectory[0]:.3f} | {trajectory[1]:.3f} | 2 s |",
        f"| clip after the request | {clip[0]:.3f} | {clip[1]:.3f} | 5 s |",
        f"| baseline: the clip's chunks, bare clients | {baseline[0]:.3f} | {baseline[1]:.3f} | |",
        "",
        f"{rounds} rounds. Clip on request / bare transfer: **{ratio:.1f}x** (the request's round trip through",
        "two brokers' worth of hops, the compound's policy and audit, file reads, hashing and the district's",
        "index on top of moving the bytes). Snapshot target "
        + ("met" if snapshot[1] <= 2 else "missed")
        + f" in every round ({snapshot[1]:.2f} s at most); clip target "
        + ("met" if clip[1] <= 5 else "missed")
        + f" ({clip[1]:.2f} s at most).",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clip-mib", type=float, default=4.0, help="size of the camera's clip")
    parser.add_argument(
        "--write", action=argparse.BooleanOptionalAction, default=True, help="update docs/benchmarks.md"
    )
    args = parser.parse_args()
    clip_bytes = int(args.clip_mib * 2**20)
    results = asyncio.run(run(args.rounds, clip_bytes))
    lines = write(results, args.rounds, clip_bytes)
    print("\n".join(lines))
    if args.write:
        replace_section(lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
