"""A lean QoS 1 load generator for bench/sustained_bench.py: simulated shed sensors, one process of many.

Each process owns a share of the devices, one MQTT connection per device (plain paho, no threads,
no asyncio: one ``select`` loop drives every socket of the process), and publishes the shed
simulator's heartbeat reports (``device_sims.devices.ShedSim.routine``) on an even schedule at its
share of the offered rate. Every message carries the device's sequence number and its publish time
(``seq``, ``ts`` in epoch ms), which the adapter turns into the event id; the generator keeps
(device, seq, ts) of every message the broker acknowledged (PUBACK), so the bench can count each
event by id at the uplink.

Protocol with the bench (stdin/stdout, one line each): the process connects its devices and prints
``ready``; the bench answers ``go <epoch seconds>`` (a common start time for all processes); after
the run the process writes the acknowledged records to ``--out`` (int64 triples) and prints one JSON
line with its counts and its own CPU time during the publishing window.

When the process falls behind its schedule it publishes as fast as it can and never skips a
message, so ``sent / seconds`` is the rate it really reached, reported next to the offered one.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import selectors
import sys
import time
from array import array
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_sims.devices import MqttPublish, ShedSim, SimDevice

TICK_S = 0.002  # messages due within one tick go out together; their ts is their real publish time
ACK_WAIT_S = 15.0  # after the window, how long to wait for outstanding PUBACKs


def imei(index: int) -> str:
    """The IMEI of simulated shed sensor ``index`` (0-based); the same in the bench's gateway config."""
    return f"8608120456{index:05d}"


def device_id(index: int) -> str:
    """The 20-digit inventory id of simulated shed sensor ``index`` (type 134: sensor)."""
    return f"3601040001134{index + 1:07d}"


class Device:
    """One simulated sensor: its simulator, its MQTT connection and its unacknowledged messages."""

    def __init__(self, index: int, host: str, port: int, acked: array[int], tag: str) -> None:
        self.index = index
        self.sim = ShedSim(SimDevice(id=device_id(index), dialect="shed-mqtt", ref=imei(index)))
        self.acked = acked
        self.pending: dict[int, tuple[int, int]] = {}  # mid -> (seq, ts ms)
        self.connected = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{tag}-shed-{imei(index)}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        # logged in like a real sensor: user = its IMEI, password = its secret (the sample's)
        self.client.username_pw_set(self.sim.device.username, self.sim.device.secret)
        self.client.max_inflight_messages_set(200)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.connect(host, port, keepalive=60)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected = not reason.is_failure

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        record = self.pending.pop(mid, None)
        if record is not None:
            self.acked.extend((self.index, record[0], record[1]))

    def publish(self, rng: random.Random) -> None:
        """One heartbeat report, stamped with the current time."""
        at = datetime.now(UTC)
        message = self.sim.routine(at, rng)
        assert isinstance(message, MqttPublish)
        info = self.client.publish(message.topic, message.payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish of device {self.index} failed: {mqtt.error_string(info.rc)}")
        # the simulator stamps ts = int(at.timestamp() * 1000) and bumps seq before building the report
        self.pending[info.mid] = (self.sim.seq, int(at.timestamp() * 1000))


def pump(devices: list[Device], selector: selectors.BaseSelector, timeout: float) -> None:
    """Read what arrived (PUBACKs), write what is pending, for every socket of this process."""
    for key, _ in selector.select(timeout):
        device: Device = key.data
        rc = device.client.loop_read(100)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"device {device.index} lost its connection: {mqtt.error_string(rc)}")
    for device in devices:
        if device.client.want_write():
            device.client.loop_write()


def run(args: argparse.Namespace) -> int:
    acked: array[int] = array("q")
    indexes = [int(i) for i in args.devices.split(",")]
    devices = [Device(i, args.host, args.port, acked, args.tag) for i in indexes]
    selector = selectors.DefaultSelector()
    for device in devices:
        sock = device.client.socket()
        assert sock is not None
        selector.register(sock, selectors.EVENT_READ, device)
    deadline = time.monotonic() + 30
    while not all(d.connected for d in devices):
        if time.monotonic() > deadline:
            raise RuntimeError("devices did not connect within 30 s")
        pump(devices, selector, 0.05)
    print("ready", flush=True)
    command = sys.stdin.readline().split()
    if len(command) != 2 or command[0] != "go":
        raise RuntimeError(f"expected 'go <epoch seconds>', got {command!r}")
    start = float(command[1])
    rng = random.Random(args.seed)
    # this process's share of the schedule: message k of the process is due at start + (k + phase) / rate
    interval = 1.0 / args.rate
    phase = args.phase * interval
    end = start + args.seconds
    total = round(args.seconds * args.rate)  # this process's slots in the window
    misc_at = time.time() + 1
    while time.time() < start:
        pump(devices, selector, min(0.05, max(0.0, start - time.time())))
    cpu0 = time.process_time()
    t0 = time.time()
    sent = 0
    now = t0
    while now < end:
        due = min(math.floor((now - start) / interval - args.phase) + 1, total)
        while sent < due:
            devices[sent % len(devices)].publish(rng)
            sent += 1
        if now >= misc_at:
            for device in devices:
                device.client.loop_misc()
            misc_at = now + 1
        next_due = start + sent * interval + phase
        pump(devices, selector, min(TICK_S, max(0.0, next_due - time.time())))
        now = time.time()
    # slots of the window the last tick did not reach yet (the loop wakes up at or after the end)
    while sent < min(math.ceil(args.seconds * args.rate - args.phase - 1e-9), total):
        devices[sent % len(devices)].publish(rng)
        sent += 1
    t_last = time.time()
    cpu_window = time.process_time() - cpu0
    # the window is over; collect the PUBACKs still on their way
    ack_deadline = time.monotonic() + ACK_WAIT_S
    while any(d.pending for d in devices) and time.monotonic() < ack_deadline:
        pump(devices, selector, 0.05)
    unacked = sum(len(d.pending) for d in devices)
    for device in devices:
        device.client.disconnect()
    Path(args.out).write_bytes(acked.tobytes())
    summary = {
        "devices": len(devices),
        "offered": total,
        "sent": sent,
        "acked": len(acked) // 3,
        "unacked": unacked,
        "first_publish": t0,
        "last_publish": t_last,
        "cpu_s": cpu_window,
        "cpu_total_s": time.process_time(),
    }
    print(json.dumps(summary), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", required=True, help="comma-separated device indexes of this process")
    parser.add_argument("--rate", type=float, required=True, help="this process's messages per second")
    parser.add_argument("--phase", type=float, default=0.0, help="schedule offset, in messages (0..1)")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tag", default="gen", help="client id prefix")
    parser.add_argument("--out", required=True, help="file for the acknowledged (device, seq, ts) records")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
