"""The sustained-load bench's own checks: which broker settings it keeps, and its event-id guard."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench import sustained_bench
from bench.loadgen import imei


def test_broker_conf_keeps_limits_and_replaces_listeners_auth_and_files(tmp_path: Path) -> None:
    """A shipped broker config's limits are kept; its listener, TLS, auth, file paths and bridges are not.

    Broken on purpose once by emptying ``REPLACED``: the listener and the TLS and auth lines came
    through into the kept settings and this test failed.
    """
    source = tmp_path / "compound.conf"
    source.write_text(
        "# the compound broker\n"
        "per_listener_settings false\n"
        "allow_anonymous false\n"
        "password_file /etc/mosquitto/passwd\n"
        "acl_file /etc/mosquitto/acl\n"
        "max_queued_messages 200000\n"
        "max_queued_bytes 0\n"
        "max_inflight_messages 100\n"
        "persistence true\n"
        "persistence_location /var/lib/mosquitto/\n"
        "log_dest syslog\n"
        "\n"
        "listener 1883 127.0.0.1\n"
        "protocol mqtt\n"
        "listener 8883\n"
        "cafile /etc/mosquitto/ca.pem\n"
        "certfile /etc/mosquitto/broker.pem\n"
        "keyfile /etc/mosquitto/broker.key\n"
        "require_certificate true\n"
        "message_size_limit 4194304\n"
        "connection district\n"
        "address district.example:8883\n"
        "topic cgw/# out 1\n",
        encoding="utf-8",
    )
    text, kept = sustained_bench.broker_conf(source, 18999, tmp_path / "work")
    assert kept == [
        "max_queued_messages 200000",
        "max_queued_bytes 0",
        "max_inflight_messages 100",
        "persistence true",
        "message_size_limit 4194304",
    ]
    lines = text.splitlines()
    assert [line for line in lines if line.split()[0] == "listener"] == ["listener 18999 127.0.0.1"]
    assert "allow_anonymous true" in lines
    assert lines[-len(kept) :] == kept
    assert not any(word in text for word in ("cafile", "password_file", "acl_file", "syslog", "address"))


def test_broker_conf_default_is_mosquittos_defaults(tmp_path: Path) -> None:
    text, kept = sustained_bench.broker_conf(None, 18999, tmp_path)
    assert kept == []
    assert not any(line.startswith("max_") for line in text.splitlines())


def test_event_id_guard_matches_the_adapter_and_notices_a_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bench counts by the adapter's event ids: its formula is checked against the real adapter.

    The drift is made on purpose here (a vendor key without the condition), and the guard must refuse.
    """
    sustained_bench.check_ids()
    monkeypatch.setattr(sustained_bench, "shed_vendor_key", lambda seq, ts_ms: f"{seq}|{ts_ms}")
    with pytest.raises(RuntimeError, match="no longer matches"):
        sustained_bench.check_ids()


def test_with_accounts_the_bench_broker_refuses_anonymous_clients(tmp_path: Path) -> None:
    """``--auth`` (the default): the bench's compound broker gets our generated accounts and ACL.

    One account per simulated sensor (user = its IMEI) and the gateway's two (its intake's, and the
    drop counter's ``-sys``, which ``sys_counter`` reads with); anonymous refused; sessions bound to
    accounts as in the shipped compound.conf.
    Broken on purpose once by making ``broker_conf`` ignore ``accounts``: the config kept
    ``allow_anonymous true`` and no password file was written, and this test failed.
    """
    args = argparse.Namespace(rate=2000.0, devices=3, seconds=1.0)
    accounts = sustained_bench.CompoundGateway().broker_accounts(tmp_path / "gateway", args)
    assert accounts is not None
    text, _ = sustained_bench.broker_conf(None, 18999, tmp_path / "broker", accounts)
    lines = text.splitlines()
    assert "allow_anonymous false" in lines
    assert "allow_anonymous true" not in lines
    assert "use_username_as_clientid true" in lines
    users = {line.split(":", 1)[0] for line in (tmp_path / "broker" / "passwd").read_text().splitlines()}
    assert users == {"compound-gateway", "compound-gateway-sys", *(imei(i) for i in range(3))}
    assert "user compound-gateway" in (tmp_path / "broker" / "acl").read_text()
    assert sustained_bench.CompoundGateway(auth=False).broker_accounts(tmp_path / "off", args) is None
