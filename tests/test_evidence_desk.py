"""The evidence desk against a real Mosquitto: files verified by SHA-256, request states, refusals.

The district is the real one (``serve_api``: the operator API with the desk inside it, an embedded
store, the evidence index); the compound is a double speaking ``uplink/evidence.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

from device_sims.broker import Mosquitto, free_port
from district.ingester import IngestState
from tests.evidence_double import (
    C1,
    C2,
    E1,
    E_B,
    CompoundDouble,
    alarm,
    chunks,
    item_of,
    partial_files,
    picture,
    running_district,
    seed,
    stored_files,
    write_config,
)
from uplink.evidence import AnswerStatus, EvidenceRequest


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from an exposition (0 when absent)."""
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name + (f"{{{label_text}}}" if labels else "")) + r" ([0-9.e+]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found[1]) if found else 0.0


async def test_a_proactive_file_arrives_verified_with_its_exact_sha256(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """A compound's unasked alarm snapshot is kept under its SHA-256, byte for byte, and counted.

    Broken on purpose: ``MediaFiles.path`` without its two-level fan-out (the file was not where
    its SHA-256 says).
    """
    config = write_config(tmp_path, district_broker.port)
    await seed(config, [alarm(E1, C1)])
    data = picture(1)
    async with running_district(config) as district, CompoundDouble(C1, district_broker.port).online() as c1:
        item = item_of(E1, "snapshot", data)
        await c1.send_file(item, data, None)
        held = await district.wait_held(E1, 1)
        assert [(h["sha256"], h["role"], h["size"], h["verified"], h["request_id"]) for h in held] == [
            (hashlib.sha256(data).hexdigest(), "snapshot", len(data), True, None)
        ]
        path = config.evidence_media_dir() / item.sha256[:2] / item.sha256[2:4] / item.sha256
        assert hashlib.sha256(path.read_bytes()).hexdigest() == item.sha256
        assert stored_files(config) == {item.sha256}
        assert partial_files(config) == set()
        text = await district.metrics()
        assert metric(text, "cgw_district_evidence_files_total", outcome="verified") == 1
        assert metric(text, "cgw_district_evidence_bytes_total") == len(data)
        assert metric(text, "cgw_transport_up", transport="evidence_desk") == 1


async def test_a_request_goes_pending_sending_complete(tmp_path: Path, district_broker: Mosquitto) -> None:
    """Pending until the compound answers, sending with 0/2 files, complete with 2/2, files verified.

    Broken on purpose: ``_complete_if_done`` comparing with ``>`` (it stayed sending).
    """
    config = write_config(tmp_path, district_broker.port)
    await seed(config, [alarm(E1, C1)])
    files = [("snapshot", picture(2)), ("trajectory", picture(3, 2500))]
    double = CompoundDouble(
        C1, district_broker.port, files={E1: files}, gate_answer=asyncio.Event(), gate_chunks=asyncio.Event()
    )
    async with running_district(config) as district, double.online():
        code, request = await district.request(E1)
        assert (code, request["state"]) == (200, "pending"), request
        rid = request["request_id"]
        pending = await district.wait_state(E1, rid, {"pending"})
        assert pending["items_received"] == 0
        assert double.gate_answer is not None
        assert double.gate_chunks is not None
        async with asyncio.timeout(10):
            while not double.requests:
                await asyncio.sleep(0.05)
        sent: EvidenceRequest = double.requests[0]
        assert (sent.request_id, sent.operator, sent.reason) == (rid, "operator", "case 2026-114")
        double.gate_answer.set()
        sending = await district.wait_state(E1, rid, {"sending"})
        assert (sending["items_expected"], sending["items_received"]) == (2, 0)
        listed = (await district.status(E1))["listed"]
        assert {(f["role"], f["source"]) for f in listed} == {("snapshot", rid), ("trajectory", rid)}
        double.gate_chunks.set()
        complete = await district.wait_state(E1, rid, {"complete"})
        assert (complete["items_expected"], complete["items_received"]) == (2, 2)
        held = (await district.status(E1))["held"]
        assert {(h["role"], h["sha256"], h["request_id"]) for h in held} == {
            (role, hashlib.sha256(data).hexdigest(), rid) for role, data in files
        }
        text = await district.metrics()
        assert metric(text, "cgw_district_evidence_requests", state="complete") == 1
        assert metric(text, "cgw_district_evidence_requests", state="pending") == 0


async def test_a_corrupted_chunk_is_a_hash_mismatch_and_nothing_is_kept(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """One flipped byte: the file is discarded, the request fails saying why, the mismatch is counted.

    Broken on purpose: ``_verify_and_keep`` returning True without comparing (the file was kept and
    the request completed).
    """
    config = write_config(tmp_path, district_broker.port)
    await seed(config, [alarm(E1, C1)])
    double = CompoundDouble(C1, district_broker.port, files={E1: [("snapshot", picture(4))]}, corrupt_index=2)
    async with running_district(config) as district, double.online():
        _, request = await district.request(E1)
        failed = await district.wait_state(E1, request["request_id"], {"failed", "complete"})
        assert failed["state"] == "failed"
        assert "SHA-256" in failed["detail"]
        assert (await district.status(E1))["held"] == []
        assert stored_files(config) == set()
        assert partial_files(config) == set()
        text = await district.metrics()
        assert metric(text, "cgw_district_evidence_files_total", outcome="hash_mismatch") == 1
        assert metric(text, "cgw_district_evidence_files_total", outcome="verified") == 0


async def test_redelivered_and_reordered_chunks_are_idempotent(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """Every chunk twice, last first, then the whole file again: one file, one row, verified once.

    Broken on purpose: the desk's held-file check removed (the repeats after completion started
    new transfers instead of counting as duplicates).
    """
    config = write_config(tmp_path, district_broker.port)
    await seed(config, [alarm(E1, C1)])
    data = picture(5, 7300)
    double = CompoundDouble(C1, district_broker.port, files={E1: [("clip", data)]}, repeat=True)
    async with running_district(config) as district, double.online():
        _, request = await district.request(E1)
        complete = await district.wait_state(E1, request["request_id"], {"complete", "failed"})
        assert complete["state"] == "complete"
        # the repeats after completion land too; wait for the last of them
        async with asyncio.timeout(10):
            while metric(await district.metrics(), "cgw_district_evidence_duplicate_chunks_total") < 8:
                await asyncio.sleep(0.1)
        held = (await district.status(E1))["held"]
        assert [(h["sha256"], h["size"]) for h in held] == [(hashlib.sha256(data).hexdigest(), len(data))]
        assert stored_files(config) == {hashlib.sha256(data).hexdigest()}
        text = await district.metrics()
        assert metric(text, "cgw_district_evidence_files_total", outcome="verified") == 1
        assert metric(text, "cgw_district_evidence_files_total", outcome="hash_mismatch") == 0


async def test_an_offline_compound_leaves_the_request_pending_until_it_expires(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """Nobody answers: pending (published: the broker has it; the compound shown offline), then expired.

    Broken on purpose: ``expire_requests`` comparing ``expires_at >= now`` (it expired at once).
    """
    config = write_config(tmp_path, district_broker.port, ttl_s=3)
    await seed(config, [alarm(E1, C1)])
    async with IngestState(config.ingest.dead_letter_path, 10) as ingest:  # the compound's last will
        await ingest.record([], [(C1, "offline", None)])
    async with running_district(config) as district:
        _, request = await district.request(E1)
        assert (await district.status(E1))["compound_status"] == "offline"
        rid = request["request_id"]
        published = await district.wait_state(E1, rid, {"pending"})
        async with asyncio.timeout(10):
            while not published["published"]:
                published = await district.wait_state(E1, rid, {"pending"})
                await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        assert (await district.wait_state(E1, rid, {"pending", "expired"}))["state"] == "pending"
        expired = await district.wait_state(E1, rid, {"expired"}, timeout=15)
        assert expired["items_received"] == 0
        assert "expired" in expired["detail"]


async def test_a_refused_answer_shows_the_rule(tmp_path: Path, district_broker: Mosquitto) -> None:
    """The compound's policy says no: refused, with the rule it named, and nothing sent.

    Broken on purpose: ``ANSWER_STATES`` mapping refused to failed (the state read failed).
    """

    def refuse(_: EvidenceRequest) -> tuple[AnswerStatus, str | None]:
        return AnswerStatus.REFUSED, "faces_need_a_case_number"

    config = write_config(tmp_path, district_broker.port)
    await seed(config, [alarm(E1, C1)])
    double = CompoundDouble(C1, district_broker.port, files={E1: [("face", picture(6))]}, policy=refuse)
    async with running_district(config) as district, double.online():
        _, request = await district.request(E1, roles=["face"])
        refused = await district.wait_state(E1, request["request_id"], {"refused", "failed", "complete"})
        assert (refused["state"], refused["rule"]) == ("refused", "faces_need_a_case_number")
        assert double.requests[0].subject.roles == ("face",)  # type: ignore[union-attr]
        assert (await district.status(E1))["held"] == []


async def test_a_compound_cannot_deliver_for_another_compounds_event(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """Compound 2 sends a file and a manifest for compound 1's event: refused, counted, nothing kept.

    Broken on purpose: ``_check_items`` skipped (compound 2's file was held for compound 1's event).
    """
    config = write_config(tmp_path, district_broker.port)
    await seed(config, [alarm(E1, C1), alarm(E_B, C2)])
    data = picture(7)
    async with running_district(config) as district, CompoundDouble(C2, district_broker.port).online() as c2:
        item = item_of(E1, "snapshot", data)
        await c2.send_manifest((item,))
        await c2.send_file(item, data, None)
        own = item_of(E_B, "snapshot", picture(8))
        await c2.send_file(own, picture(8), None)  # its own event's file still arrives
        await district.wait_held(E_B, 1)
        status = await district.status(E1)
        assert (status["held"], status["listed"]) == ([], [])
        assert stored_files(config) == {own.sha256}
        text = await district.metrics()
        assert metric(text, "cgw_district_evidence_rejected_total", reason="foreign_event") == 1 + 5
        assert metric(text, "cgw_district_evidence_files_total", outcome="verified") == 1


async def test_the_api_serves_while_the_broker_is_down_and_publishes_once_it_is_up(tmp_path: Path) -> None:
    """No broker: the API answers and the request waits unpublished; a broker appears: it goes out.

    Broken on purpose: ``_publish`` not marking the request published (it read unpublished after
    the compound's answer).
    """
    port = free_port()
    config = write_config(tmp_path, port)
    await seed(config, [alarm(E1, C1)])
    async with running_district(config, desk_up=False) as district:
        code, request = await district.request(E1)
        assert (code, request["state"], request["published"]) == (200, "pending", False)
        assert metric(await district.metrics(), "cgw_transport_up", transport="evidence_desk") == 0
        broker = Mosquitto(tmp_path / "late-broker", port).start()
        try:
            double = CompoundDouble(C1, port, files={E1: [("snapshot", picture(9))]})
            async with double.online():
                done = await district.wait_state(E1, request["request_id"], {"complete"}, timeout=60)
                assert done["published"] is True
        finally:
            broker.stop()


async def test_only_an_alarms_pictures_are_kept_unasked(tmp_path: Path, district_broker: Mosquitto) -> None:
    """A clip or a face sent without a request is refused at the district too, whatever the compound.

    The compound's policy sends only snapshot and trajectory pictures unasked; the district does not
    keep anything else on a compound's word. Broken on purpose: the ``UNASKED_ROLES`` check removed
    (the face and the clip were held).
    """
    config = write_config(tmp_path, district_broker.port)
    await seed(config, [alarm(E1, C1)])
    face, clip, snapshot = picture(11), picture(12, 9000), picture(13)
    async with running_district(config) as district, CompoundDouble(C1, district_broker.port).online() as c1:
        await c1.send_file(item_of(E1, "face", face), face, None)
        await c1.send_file(item_of(E1, "clip", clip, "video/mp4"), clip, None)
        await c1.send_file(item_of(E1, "snapshot", snapshot), snapshot, None)
        held = await district.wait_held(E1, 1)
        assert [(f["role"], f["sha256"]) for f in held] == [
            ("snapshot", item_of(E1, "snapshot", snapshot).sha256)
        ]
        assert stored_files(config) == {item_of(E1, "snapshot", snapshot).sha256}
        text = await district.metrics()
        refused_chunks = len(chunks(item_of(E1, "face", face), face, None)) + len(
            chunks(item_of(E1, "clip", clip, "video/mp4"), clip, None)
        )
        assert metric(text, "cgw_district_evidence_rejected_total", reason="unasked_role") == refused_chunks
