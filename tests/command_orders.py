"""Command orders as the district issues them, for the command tests."""

from __future__ import annotations

from datetime import datetime, timedelta

from foundation.commands import CommandAction
from foundation.events import utc_now
from uplink.commands import CommandOrder

BARRIER = "36010400011210000002"  # the sample compound's vz-lpr-mqtt barrier camera


def barrier_open(
    command_id: str,
    *,
    issued: datetime | None = None,
    lifetime: timedelta = timedelta(minutes=2),
    device: str = BARRIER,
) -> CommandOrder:
    """A remote barrier open by an operator, issued at ``issued`` (default: now)."""
    at = issued or utc_now()
    return CommandOrder(
        command_id=command_id,
        device_id=device,
        action=CommandAction.BARRIER_OPEN,
        issued_by="op-wang",
        role="operator",
        reason="救护车进入小区",
        issued_at=at,
        expires_at=at + lifetime,
    )
