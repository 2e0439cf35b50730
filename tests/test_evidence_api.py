"""Evidence through the operator API and CLI: scope, reasons, audit, the binary route, retention."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import tracemalloc
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from device_sims.broker import Mosquitto, free_port
from district.config import DistrictConfig
from district.evidence_cli import _save, evidence_command
from district.evidence_desk import EvidenceDesk
from district.evidence_store import EvidenceAccess, EvidenceIndex, MediaFiles
from district.operations import OperationsDb
from district.operator_api import openapi_document
from district.operator_cli import add_operator_commands
from district.operator_service import Caller, open_operator_service
from district.queries.evidence import EvidenceStatus, HeldFile
from district.query_backends import open_query_backend
from district.query_model import AlarmState
from foundation.events import EventKind, utc_now
from foundation.health import Health
from tests.evidence_double import (
    C1,
    C2,
    DEVICE,
    E1,
    E2,
    E_B,
    CompoundDouble,
    District,
    alarm,
    chunks,
    item_of,
    picture,
    running_district,
    seed,
    stored_files,
    write_config,
)
from tests.test_evidence_desk import metric
from uplink.evidence import CHUNK, BarrierWindow, EventEvidence, compound_evidence_topic
from uplink.protocol import DEFAULT_PREFIX

OPENAPI_FILE = Path(__file__).resolve().parents[1] / "docs" / "operator-api.openapi.json"
DISTRICT = "36010400005000000001"


async def fetch_media(
    district: District, event_id: str, sha: str, who: str, **params: str
) -> tuple[int, bytes, str]:
    """GET the binary route: (status, body, X-Content-SHA256)."""
    headers = {"Authorization": f"Bearer {district.tokens[who]}"}
    url = f"{district.url}/api/v1/evidence/{event_id}/media/{sha}"
    async with aiohttp.ClientSession() as http, http.get(url, params=params, headers=headers) as response:
        return response.status, await response.read(), response.headers.get("X-Content-SHA256", "")


async def test_a_token_of_compound_a_cannot_ask_for_compound_bs_evidence(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """403 for the request, the status and the file of another compound's event; each refusal audited.

    Broken on purpose: ``event_compound`` without its ``ctx.scope`` check (the request was accepted)
    and ``evidence_media`` without its own (the file was served); ``evidence_media`` looking for
    the file before the scope check (a SHA-256 not held was a 404: an existence oracle).
    """
    config = write_config(tmp_path, district_broker.port)
    await seed(config, [alarm(E1, C1), alarm(E_B, C2)])
    data = picture(20)
    async with running_district(config) as district, CompoundDouble(C2, district_broker.port).online() as c2:
        item = item_of(E_B, "snapshot", data)
        await c2.send_file(item, data, None)
        await district.wait_held(E_B, 1)

        code, body = await district.request(E_B, "operator_a")
        assert (code, body["error"]) == (403, "forbidden")
        audit = (await district.ops.audit_records(limit=1))[0].entry
        assert (audit.actor, audit.action, audit.outcome, audit.status, audit.reason) == (
            "operator_a",
            "evidence_request",
            "forbidden",
            403,
            "case 2026-114",
        )
        assert audit.filters["event_id"] == E_B

        code, _ = await district.call("GET", f"/evidence/{E_B}", "operator_a")
        assert code == 403
        code, _, _ = await fetch_media(district, E_B, item.sha256, "operator_a", reason="case 2026-114")
        assert code == 403
        audit = (await district.ops.audit_records(limit=1))[0].entry
        assert (audit.action, audit.outcome, audit.filters["sha256"]) == (
            "evidence_media",
            "forbidden",
            item.sha256,
        )
        # a SHA-256 the district does not hold for that event: 403 too, not a 404 that would tell
        # a token outside the compound's scope which files of its events exist
        unheld = hashlib.sha256(b"not held").hexdigest()
        code, _, _ = await fetch_media(district, E_B, unheld, "operator_a", reason="case 2026-114")
        assert code == 403

        # the same token may ask about its own compound's event
        code, body = await district.request(E1, "operator_a")
        assert (code, body["compound_id"]) == (200, C1)


async def test_requests_need_the_operator_role_and_a_reason(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """A viewer may see the status but not ask; an operator must say why; unknown events are 404.

    Broken on purpose: ``NeedsReason`` removed from ``REQUEST_SPEC`` and ``reason`` made optional
    (a request without a reason was accepted).
    """
    config = write_config(tmp_path, district_broker.port)
    await seed(config, [alarm(E1, C1)])
    async with running_district(config) as district:
        assert (await district.status(E1, "viewer"))["compound_id"] == C1
        code, body = await district.request(E1, "viewer")
        assert (code, body["error"]) == (403, "forbidden")
        code, body = await district.call("POST", f"/evidence/{E1}/requests", "operator", json={})
        assert (code, body["field"]) == (400, "reason")
        code, body = await district.request("evt-unknown-0001")
        assert (code, body["error"]) == (404, "not_found")
        outcomes = [r.entry.outcome for r in await district.ops.audit_records(limit=4)]
        assert outcomes == ["not_found", "invalid_query", "forbidden", "ok"]


async def test_files_are_served_with_a_reason_and_audited(tmp_path: Path, district_broker: Mosquitto) -> None:
    """The binary route: operator role and a reason; the bytes are the file; the fetch is audited.

    Broken on purpose: the route calling ``handle`` without ``spec=MEDIA_SPEC`` (unknown action, 400).
    """
    config = write_config(tmp_path, district_broker.port)
    await seed(config, [alarm(E1, C1)])
    data = picture(21)
    async with running_district(config) as district, CompoundDouble(C1, district_broker.port).online() as c1:
        item = item_of(E1, "snapshot", data)
        await c1.send_file(item, data, None)
        await district.wait_held(E1, 1)
        assert (await fetch_media(district, E1, item.sha256, "operator"))[0] == 400
        assert (await fetch_media(district, E1, item.sha256, "viewer", reason="case 7"))[0] == 403
        code, body, header = await fetch_media(district, E1, item.sha256, "operator", reason="case 7")
        assert (code, hashlib.sha256(body).hexdigest(), header) == (200, item.sha256, item.sha256)
        missing = "0" * 64
        assert (await fetch_media(district, E1, missing, "operator", reason="case 7"))[0] == 404
        audit = [r.entry for r in await district.ops.audit_records(limit=4)]
        assert [(a.action, a.outcome) for a in audit] == [
            ("evidence_media", o) for o in ("not_found", "ok", "forbidden", "invalid_query")
        ]
        assert audit[1].reason == "case 7"


async def test_a_barrier_window_request_reaches_the_devices_compound(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """The device's compound comes from the store; the compound receives the window and answers.

    Broken on purpose: the desk's ``evidence_request`` always sending ``EventEvidence`` (the
    compound never saw the window).
    """
    config = write_config(tmp_path, district_broker.port)
    await seed(config, [alarm(E1, C1)])
    until = utc_now().replace(microsecond=0)
    since = until - timedelta(hours=1)
    async with running_district(config) as district, CompoundDouble(C1, district_broker.port).online() as c1:
        body = {
            "device": DEVICE,
            "since": since.isoformat(),
            "until": until.isoformat(),
            "reason": "hit and run",
        }
        code, request = await district.call("POST", "/evidence/barrier", "operator", json=body)
        assert (code, request["compound_id"], request["kind"]) == (200, C1, "barrier_window"), request
        code, refused = await district.call(
            "POST",
            "/evidence/barrier",
            "operator_a",
            json={**body, "until": (since + timedelta(days=2)).isoformat()},
        )
        assert (code, "24 hours" in refused["message"]) == (400, True)
        async with asyncio.timeout(10):
            while not c1.requests:
                await asyncio.sleep(0.05)
        assert c1.requests[0].subject == BarrierWindow(device_id=DEVICE, since=since, until=until)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_operator_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def _evidence_args(*flags: str) -> argparse.Namespace:
    """``query evidence E1 --config x.toml --reason "case 9"`` and ``flags``, parsed."""
    return _parse(["query", "evidence", E1, "--config", "x.toml", "--reason", "case 9", *flags])


async def test_cli_fetches_waits_and_saves_through_the_api(
    tmp_path: Path, district_broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    """``query evidence E --fetch --wait --save DIR``: complete, the files written and identical.

    Broken on purpose: ``_save`` writing the body without checking its SHA-256 against the status
    (a double sending other bytes under a listed hash would have been saved: see the mismatch
    branch, exercised by replacing a stored file below).
    """
    config = write_config(tmp_path, district_broker.port)
    await seed(config, [alarm(E1, C1)])
    files = [("snapshot", picture(30)), ("trajectory", picture(31, 1800))]
    out = tmp_path / "saved"
    async with (
        running_district(config) as district,
        CompoundDouble(C1, district_broker.port, files={E1: files}).online(),
    ):
        args = _evidence_args("--fetch", "--wait", "20", "--save", str(out))
        status = await evidence_command(config, args, district.tokens["operator"])
        printed = capsys.readouterr()
        assert status == 0, printed.err
        assert "complete" in printed.out
        assert {p.name: p.read_bytes() for p in out.iterdir()} == {
            f"{role}-{hashlib.sha256(data).hexdigest()[:12]}.jpg": data for role, data in files
        }
        # a file altered on the district's disk is refused by the CLI's own check
        sha = hashlib.sha256(files[0][1]).hexdigest()
        stored = config.evidence_media_dir() / sha[:2] / sha[2:4] / sha
        stored.write_bytes(b"tampered")
        args = _evidence_args("--save", str(tmp_path / "again"), "--format", "json")
        assert await evidence_command(config, args, district.tokens["operator"]) == 1
        assert "does not match its SHA-256" in capsys.readouterr().err
        # a viewer sees the status but cannot fetch
        args = _evidence_args("--fetch")
        assert await evidence_command(config, args, district.tokens["viewer"]) == 1
        assert "403 forbidden" in capsys.readouterr().err


async def _ingest_file(desk: EvidenceDesk, event_id: str, role: str, data: bytes) -> str:
    item = item_of(event_id, role, data)
    topic = compound_evidence_topic(DEFAULT_PREFIX, DISTRICT, C1, CHUNK)
    for body in chunks(item, data, None):
        await desk.handle(topic, body)
    return item.sha256


async def test_retention_deletes_expired_media_and_keeps_confirmed_alarms_longer(tmp_path: Path) -> None:
    """At +40 days the unconfirmed event's files go (a file still referenced stays); at +400 the rest.

    Read back from disk and index; counted by class. Broken on purpose: ``purge`` ignoring
    ``kept_events`` (the confirmed alarm's file went at +40 days) and ``MediaFiles.remove`` given
    every doomed SHA-256 rather than the orphans (the shared file vanished while E1 still listed it).
    """
    config: DistrictConfig = write_config(tmp_path, 1)
    await seed(config, [alarm(E1, C1), alarm(E2, C1)])
    now = utc_now()
    shared, only_e2 = picture(40), picture(41)
    async with (
        EvidenceIndex(config.evidence_index_path()) as index,
        OperationsDb(config.api.ops_db) as ops,
        open_query_backend(config.store) as backend,
    ):
        access = EvidenceAccess(index, MediaFiles(config.evidence_media_dir()), 60)
        desk = EvidenceDesk(config, access, backend, ops)
        sha_shared = await _ingest_file(desk, E1, "snapshot", shared)
        assert await _ingest_file(desk, E2, "snapshot", shared) == sha_shared
        sha_e2 = await _ingest_file(desk, E2, "trajectory", only_e2)
        assert stored_files(config) == {sha_shared, sha_e2}
        kind, at = EventKind.THROWN_OBJECT.value, now - timedelta(hours=1)  # the seeded alarm's
        await ops.move_alarm(E1, C1, AlarmState.ACKNOWLEDGED, "op", "looking", kind=kind, occurred_at=at)
        await ops.move_alarm(E1, C1, AlarmState.CONFIRMED, "op", "real", kind=kind, occurred_at=at)

        health = Health()
        later = EvidenceDesk(config, access, backend, ops, clock=lambda: now + timedelta(days=40))
        later.expose(health)
        assert await later.purge_once() == {"media": 2, "confirmed_alarm": 0}
        assert await index.media_for_event(E2) == []
        assert [m.sha256 for m in await index.media_for_event(E1)] == [sha_shared]
        assert stored_files(config) == {sha_shared}

        much_later = EvidenceDesk(config, access, backend, ops, clock=lambda: now + timedelta(days=400))
        assert await much_later.purge_once() == {"media": 0, "confirmed_alarm": 1}
        assert await index.media_for_event(E1) == []
        assert stored_files(config) == set()
        text = (await health.scrape()).decode()
        assert metric(text, "cgw_district_media_purged_total", **{"class": "media"}) == 2


def test_the_checked_in_openapi_document_describes_the_evidence_routes() -> None:
    """The evidence actions and the binary route are in the checked-in document (regenerated)."""
    document = openapi_document()
    assert json.loads(OPENAPI_FILE.read_text(encoding="utf-8")) == json.loads(json.dumps(document))
    paths = document["paths"]
    assert {
        "/api/v1/evidence/{event_id}",
        "/api/v1/evidence/{event_id}/requests",
        "/api/v1/evidence/barrier",
    } <= set(paths)
    media = paths["/api/v1/evidence/{event_id}/media/{sha256}"]["get"]
    assert "application/octet-stream" in media["responses"]["200"]["content"]
    assert {p["name"]: p["in"] for p in media["parameters"]} == {
        "event_id": "path",
        "sha256": "path",
        "reason": "query",
    }


async def test_a_request_written_by_another_process_is_sent_by_the_apis_desk(
    tmp_path: Path, district_broker: Mosquitto
) -> None:
    """The in-process CLI path (``query evidence-request``): its own service writes the request, the desk finds it.

    Broken on purpose: ``unpublished`` reading only requests already published (it stayed pending).
    """
    config = write_config(tmp_path, district_broker.port)
    await seed(config, [alarm(E1, C1)])
    double = CompoundDouble(C1, district_broker.port, files={E1: [("snapshot", picture(50))]})
    async with running_district(config) as district, double.online():
        async with open_operator_service(config) as cli_service:  # as the CLI's own process opens it
            answer = await cli_service.handle(
                district.tokens["operator"],
                "evidence_request",
                {"event_id": E1, "reason": "case 12", "roles": ["snapshot"]},
                Caller("cli", "tester@host"),
            )
        done = await district.wait_state(E1, answer.result.request_id, {"complete", "failed"})
        assert done["state"] == "complete"
        assert double.requests[0].subject == EventEvidence(event_id=E1, roles=("snapshot",))


async def test_cli_save_streams_a_clip_to_disk_and_leaves_nothing_of_a_corrupt_one(tmp_path: Path) -> None:
    """``--save`` writes a multi-MB clip without holding it in memory; a corrupt body leaves no file.

    A clip is up to ``MAX_TRANSFER_BYTES`` (64 MB): read whole it cost the CLI that much memory.
    The API here is a bare aiohttp app serving files from disk (sendfile: no Python copy), so the
    peak that tracemalloc sees is the CLI's own. Broken on purpose: ``_save`` reading the body with
    ``response.read()`` (peak 12 MB for the 6 MB clip; the limit is 1.5 MB).
    """
    data = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(6 * 1024 * 1024 // 32))
    good, bad = tmp_path / "clip.mp4", tmp_path / "bad.mp4"
    good.write_bytes(data)
    bad.write_bytes(data[:-1] + b"!")
    sha = hashlib.sha256(data).hexdigest()
    sha_bad = hashlib.sha256(b"what the index says").hexdigest()
    served = {sha: good, sha_bad: bad}

    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(served[request.match_info["sha"]])

    app = web.Application()
    app.router.add_get(f"/evidence/{E1}/media/{{sha}}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    def held(digest: str) -> HeldFile:
        return HeldFile(
            sha256=digest,
            role="clip",
            size=len(data),
            content_type="video/mp4",
            verified=True,
            compound_id=C1,
            received_at=utc_now(),
            request_id=None,
        )

    out = tmp_path / "saved"
    base = f"http://127.0.0.1:{port}/evidence/{E1}"
    try:
        async with aiohttp.ClientSession() as http:
            status = EvidenceStatus(event_id=E1, compound_id=C1, held=[held(sha)], listed=[], requests=[])
            tracemalloc.start()
            try:
                saved = await _save(http, base, status, out, "case 9")
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert saved == [out / f"clip-{sha[:12]}.mp4"]
            assert saved[0].read_bytes() == data
            assert peak < 1536 * 1024, peak
            corrupt = EvidenceStatus(
                event_id=E1, compound_id=C1, held=[held(sha_bad)], listed=[], requests=[]
            )
            assert await _save(http, base, corrupt, out, "case 9") is None
            assert {p.name for p in out.iterdir()} == {saved[0].name}
    finally:
        await runner.cleanup()


async def test_a_purge_whose_file_removal_failed_removes_the_files_on_the_next_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose removal failed after its rows were purged is removed on the next pass.

    The index rows go in one transaction, the files after it: a failure (or a crash) between
    must not leave the files on disk for ever, past their retention.

    Broken on purpose: ``purge`` without the ``doomed_files`` table (the second pass found no row
    of the file any more and the file stayed).
    """
    config: DistrictConfig = write_config(tmp_path, 1)
    await seed(config, [alarm(E2, C1)])
    now = utc_now()
    async with (
        EvidenceIndex(config.evidence_index_path()) as index,
        OperationsDb(config.api.ops_db) as ops,
        open_query_backend(config.store) as backend,
    ):
        files = MediaFiles(config.evidence_media_dir())
        access = EvidenceAccess(index, files, 60)
        sha = await _ingest_file(EvidenceDesk(config, access, backend, ops), E2, "snapshot", picture(42))
        later = EvidenceDesk(config, access, backend, ops, clock=lambda: now + timedelta(days=40))
        remove = files.remove

        async def broken(_: object) -> int:
            raise OSError(5, "I/O error")

        monkeypatch.setattr(files, "remove", broken)
        with pytest.raises(OSError):
            await later.purge_once()
        assert await index.media_for_event(E2) == []
        assert stored_files(config) == {sha}  # the rows went, the file is still there
        monkeypatch.setattr(files, "remove", remove)
        await later.purge_once()
        assert stored_files(config) == set()
