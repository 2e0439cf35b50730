"""Every adapter module is registered, and every dialect has a simulator and golden payloads."""

from __future__ import annotations

import importlib
import pkgutil

import adapters
from adapters import COMMAND_ENCODERS, DEVICE_KINDS, DIALECTS
from adapters.base import Transport
from adapters.commands import CommandAction
from device_sims.devices import SIMULATORS

HELPER_MODULES = {"base", "commands", "isapi", "multipart", "pictures", "plates"}


def test_every_adapter_module_is_registered_and_simulated() -> None:
    """A dialect module that is not in the registry, or has no simulator, fails here."""
    modules = {m.name for m in pkgutil.iter_modules(adapters.__path__)} - HELPER_MODULES
    registered = set()
    for name in modules:
        module = importlib.import_module(f"adapters.{name}")
        dialect = module.DIALECT
        assert DIALECTS[dialect.name] is dialect
        registered.add(dialect.name)
    assert registered == set(DIALECTS)
    assert set(SIMULATORS) == set(DIALECTS)


def test_issue_dialect_coverage() -> None:
    """Two face gates (HTTP + MQTT), two barriers (HTTP XML + MQTT), a thrown-object camera, two shed sensors, a siren."""
    by_kind: dict[str, set[Transport]] = {}
    for dialect in DIALECTS.values():
        by_kind.setdefault(dialect.kind.value, set()).add(dialect.transport)
    assert by_kind["face_access"] == {Transport.HTTP_DEVICE, Transport.MQTT}
    assert by_kind["vehicle_pass"] == {Transport.HTTP_DEVICE, Transport.MQTT}
    assert by_kind["thrown_object"] == {Transport.MQTT}
    assert by_kind["ebike_shed"] == {Transport.HTTP_PLATFORM, Transport.MQTT}
    assert by_kind["device_status"] == {Transport.MQTT}  # the alarm output reports only its faults


def test_mqtt_dialects_have_distinct_topic_prefixes() -> None:
    """The first topic segment routes a message to its dialect, so prefixes must not collide."""
    prefixes = [d.topic_filter.split("/")[0] for d in DIALECTS.values() if d.topic_filter]
    assert len(prefixes) == len(set(prefixes))


def test_registry_names_exactly_the_dialects_that_take_commands() -> None:
    """Barriers, doors and the alarm output take commands; every other dialect says ``commands is None``."""
    assert set(COMMAND_ENCODERS) == {
        "vz-lpr-mqtt",
        "hik-isapi-anpr",
        "hik-isapi-acs",
        "uface-mqtt",
        "siren-mqtt",
    }
    for name, dialect in DIALECTS.items():
        assert (dialect.commands is not None) == (name in COMMAND_ENCODERS)
        if dialect.commands is not None:
            assert COMMAND_ENCODERS[name] is dialect.commands
    barrier = {CommandAction.BARRIER_OPEN, CommandAction.BARRIER_CLOSE}
    assert COMMAND_ENCODERS["vz-lpr-mqtt"].actions == barrier
    assert COMMAND_ENCODERS["hik-isapi-anpr"].actions == barrier | {
        CommandAction.BARRIER_HOLD_OPEN,
        CommandAction.BARRIER_RELEASE,
    }
    assert COMMAND_ENCODERS["hik-isapi-acs"].actions == {CommandAction.DOOR_OPEN}
    assert COMMAND_ENCODERS["uface-mqtt"].actions == {CommandAction.DOOR_OPEN}
    assert COMMAND_ENCODERS["siren-mqtt"].actions == {
        CommandAction.SIREN_ON,
        CommandAction.SIREN_OFF,
        CommandAction.BROADCAST,
    }
    # every action is spoken by some device
    assert set().union(*(encoder.actions for encoder in COMMAND_ENCODERS.values())) == set(CommandAction)


def test_every_dialect_has_a_device_kind() -> None:
    """The device registry's kind table names every dialect, and nothing else (a new dialect without one fails)."""
    assert set(DEVICE_KINDS) == set(DIALECTS)
    assert set(DEVICE_KINDS.values()) == {
        "face_gate",
        "lpr_camera",
        "thrown_object_camera",
        "smoke_detector",
        "shed_sensor",
        "siren",
    }
