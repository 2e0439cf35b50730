"""The compound's command gate: policy rules by name, and rate limits kept apart per origin."""

from __future__ import annotations

from foundation.commands import CommandAction
from gateway.command_policy import RATE_LIMIT_RULE, CommandGate, CommandPolicyRule, CommandsConfig
from tests.command_orders import BARRIER, barrier_open
from uplink.commands import CommandOrigin


def test_a_district_burst_leaves_the_compounds_own_rules_their_commands() -> None:
    """Two a minute per device: the district's third is refused, the local rule's first still goes.

    Broken on purpose once: with one bucket per device for every origin the rule's command was
    refused ``rate_limit`` (a stolen district token could silence the fire rule's siren).
    """
    now = [0.0]
    gate = CommandGate(CommandsConfig(per_device_per_minute=2), clock=lambda: now[0])
    district = [gate.judge(barrier_open(f"d-{n}"), CommandOrigin.DISTRICT) for n in range(3)]
    assert [r.rule if r else None for r in district] == [None, None, RATE_LIMIT_RULE]
    assert gate.judge(barrier_open("rule-1"), CommandOrigin.RULE) is None
    now[0] += 30.0  # half a minute: one more token for the district
    assert gate.judge(barrier_open("d-later"), CommandOrigin.DISTRICT) is None


def test_a_policy_rule_refuses_by_name_and_only_its_origins() -> None:
    """The rule names the device and action and refuses the district; the compound's own rules pass."""
    rule = CommandPolicyRule(
        name="south-gate-no-remote-open", devices=(BARRIER,), actions=(CommandAction.BARRIER_OPEN,)
    )
    gate = CommandGate(CommandsConfig(policy=(rule,)))
    refused = gate.judge(barrier_open("d-1"), CommandOrigin.DISTRICT)
    assert refused is not None
    assert refused.rule == "south-gate-no-remote-open"
    assert gate.judge(barrier_open("r-1"), CommandOrigin.RULE) is None
