"""Pure pieces of the runtime: backoff, crash isolation of a parser, outbox inspection from the CLI."""

from __future__ import annotations

import json
import random
import typing
from datetime import timedelta
from pathlib import Path

import pytest

from adapters import DIALECTS
from adapters.base import RawMessage
from cli.main import main
from device_sims.inventory import write_sample_config
from foundation.backoff import Backoff, BackoffConfig
from foundation.identity import Pseudonymizer
from gateway.config import DirectUplinkConfig, MqttUplinkConfig, UplinkConfig, load_config
from gateway.intake import Intake, IntakeItem
from gateway.outbox import DeadLetter, Outbox, StoreEvents
from uplink.stores import SqliteStoreConfig

FACE_RECORD = {
    "msgId": "m1",
    "sn": "UF20231107A01",
    "type": "face_rec",
    "time": "2026-06-01 08:00:00",
    "data": {"recResult": 1},
}


def sample_intake(tmp_path: Path) -> tuple[Path, Intake]:
    path = write_sample_config(tmp_path / "g.toml", state_dir=tmp_path / "s", http_port=1, mqtt_port=2)
    config = load_config(path)
    return path, Intake(config, Pseudonymizer(b"k" * 32, config.compound.compound_id))


def face_item(body: bytes) -> IntakeItem:
    return IntakeItem("mqtt", RawMessage(body, topic="uface/UF20231107A01/event"), 1 << 20)


def test_backoff_is_jittered_capped_and_resets() -> None:
    """Delays grow exponentially up to the cap, vary between attempts, and restart after success."""
    backoff = Backoff(BackoffConfig(initial_s=0.5, max_s=4.0), rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(40)]
    assert all(0.05 <= d <= 4.0 for d in delays)
    assert max(delays[10:]) > 2.0  # reached the capped range
    assert len({round(d, 6) for d in delays}) > 30  # jittered, not lockstep
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_parser_crash_is_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in one dialect's parser becomes a parser_error dead letter; other devices go on."""
    _, intake = sample_intake(tmp_path)
    shed = DIALECTS["shed-mqtt"]

    def broken(self: object, raw: RawMessage, ctx: object) -> object:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(type(shed), "parse", broken)
    crashed = intake.classify(IntakeItem("mqtt", RawMessage(b"{}", topic="shed/860812045678901/up"), 1 << 20))
    assert isinstance(crashed.operation, DeadLetter)
    assert crashed.operation.reason == "parser_error"
    assert "ZeroDivisionError" in crashed.operation.detail
    ok = intake.classify(face_item(json.dumps(FACE_RECORD).encode()))
    assert isinstance(ok.operation, StoreEvents)
    assert len(ok.event_ids) == 1
    assert intake.rejected[("36010400011340000001", "parser_error")] == 1


def test_outbox_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`compound-gateway outbox` shows depth, counters, dead letters and pending events."""
    path, intake = sample_intake(tmp_path)
    config = load_config(path)
    good = intake.classify(face_item(json.dumps(FACE_RECORD).encode()))
    bad = intake.classify(face_item(b"{"))
    with Outbox(config.state.dir / "outbox.db", max_bytes=1 << 20) as box:
        box.commit([good.operation, bad.operation])
    capsys.readouterr()
    assert main(["outbox", "stats", "--config", str(path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["pending"] == 1
    assert {"name": "rejected", "a": "36010400011240000003", "b": "malformed_json", "value": 1} in stats[
        "counters"
    ]
    assert main(["outbox", "dead-letters", "--config", str(path)]) == 0
    (letter,) = json.loads(capsys.readouterr().out)
    assert letter["reason"] == "malformed_json"
    assert letter["payload"] == "{"
    assert main(["outbox", "pending", "--config", str(path)]) == 0
    (event,) = json.loads(capsys.readouterr().out)
    assert event["event_id"] == good.event_ids[0]


class NamingBuilder:
    """Answers each uplink mode with the builder method's own name."""

    def mqtt(self, uplink: MqttUplinkConfig) -> str:
        return "mqtt"

    def direct(self, uplink: DirectUplinkConfig) -> str:
        return "direct"


def test_each_uplink_mode_builds_itself_and_sets_its_pacing(tmp_path: Path) -> None:
    """Every member of ``UplinkConfig`` picks its own builder method; receipts only where the broker carries them.

    Swapping the two ``build`` bodies, or a mode without ``build``, fails here (mypy also names the latter).
    """
    (union, *_) = typing.get_args(UplinkConfig)
    modes = {member.model_fields["mode"].default: member for member in typing.get_args(union)}
    assert set(modes) == {"mqtt", "direct"}
    direct = DirectUplinkConfig(store=SqliteStoreConfig(path=tmp_path / "d.db"))
    configs: dict[str, MqttUplinkConfig | DirectUplinkConfig] = {"mqtt": MqttUplinkConfig(), "direct": direct}
    for mode, config in configs.items():
        assert isinstance(config, modes[mode])
        assert config.build(NamingBuilder()) == mode
    mqtt_pacing = configs["mqtt"].pacing()
    assert mqtt_pacing.receipt_timeout == timedelta(seconds=60)
    assert mqtt_pacing.alarm_receipt_timeout == timedelta(seconds=10)
    assert mqtt_pacing.batch_max_bytes == 256 * 1024
    assert MqttUplinkConfig(receipts=False).pacing().receipt_timeout is None
    direct_pacing = direct.pacing()
    assert (direct_pacing.receipt_timeout, direct_pacing.inflight_batches) == (None, 1)
