"""Fetching the pictures and clips cameras keep on the device (``device:`` references of events).

The intake queues one ``media_fetch`` row per ``device:`` reference of a stored event whose device
has a ``media_url`` (in the event's transaction, ``gateway/outbox/media_index.py``); this task
works the queue with our download API (docs/evidence.md, "Device download API (ours)")::

    GET <media_url>/<key>      HTTP digest, user media_username, the device's secret

* 200: streamed into a temporary file in the media store while hashed (a clip is megabytes: never
  whole in memory), fsynced, renamed to its content-addressed path, then indexed, announced in the
  manifest queue and, for a critical alarm's snapshot/trajectory, queued to go up unasked;
* 404: the device does not have it: given up at once (``failed``, with the reason);
* 401: wrong credentials: logged, counted, retried (an installer may fix the secret);
* 5xx, timeouts, broken connections, short bodies: retried with jittered, capped backoff, up to
  ``attempts`` tries; larger than ``max_file_bytes`` (declared or streamed): refused.

At most ``concurrency`` downloads run at once and at most one per device, so a slow or dead device
holds one slot and never the others' fetches. The rows are durable: a restart resumes the queue.
All file I/O runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import quote

import aiohttp
import structlog

from foundation.cancellation import raise_if_cancelling
from foundation.errors import TransportError
from foundation.health import Health, MetricFamilies
from gateway.config import DeviceConfig, GatewayConfig, MediaFetchConfig
from gateway.device_secrets import DeviceSecrets
from gateway.outbox import OutboxReader
from gateway.outbox.media_index import FetchedFile, FetchJob
from gateway.pipeline import ItemResult

log = structlog.get_logger(__name__)

READ_CHUNK = 256 * 1024
SUFFIXES = {"image/jpeg": ".jpg", "image/png": ".png", "video/mp4": ".mp4"}


class MediaFetchError(TransportError):
    """One download attempt failed; the message is the reason kept in the queue row."""


class _GiveUpError(MediaFetchError):
    """The file cannot be had: no retry."""


class _TryAgainError(MediaFetchError):
    """This attempt failed; a later one may not."""


@dataclass
class _Sink:
    """A temporary file in the media store, hashed as it is written (blocking: call from a thread)."""

    directory: Path
    path: Path = field(init=False)
    handle: IO[bytes] = field(init=False)
    digest: hashlib._Hash = field(init=False, default_factory=hashlib.sha256)
    size: int = 0

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # in the store's top directory: the age purge looks only one level down, never at it
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=".tmp-fetch-")
        self.path = Path(name)
        self.handle = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.handle.write(data)
        self.size += len(data)

    def finish(self, suffix: str) -> str:
        """fsync, rename to ``ab/<sha><suffix>``, fsync the directory; the relative path."""
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        sha = self.digest.hexdigest()
        relative = f"{sha[:2]}/{sha}{suffix}"
        target = self.directory / relative
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            self.path.unlink()  # content-addressed: the same bytes are already stored
            return relative
        self.path.replace(target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return relative

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        self.path.unlink(missing_ok=True)


def _remove_partial_downloads(directory: Path) -> None:
    for partial in directory.glob(".tmp-fetch-*"):
        partial.unlink(missing_ok=True)


def media_key_url(base: str, key: str) -> str:
    """``<media_url>/<key>`` with every path segment of the key URL-quoted; ``_GiveUpError`` for unsafe keys."""
    segments = key.split("/")
    if not key or any(s in ("", ".", "..") for s in segments):
        raise _GiveUpError(f"bad_key: {key[:80]!r} is no relative path on the device")
    return base.rstrip("/") + "/" + "/".join(quote(s, safe="") for s in segments)


class MediaFetcher:
    """The fetch queue's worker, with its counters."""

    def __init__(
        self,
        config: GatewayConfig,
        reader: OutboxReader,
        secrets: DeviceSecrets,
        rng: random.Random | None = None,
    ) -> None:
        self._config: MediaFetchConfig = config.evidence.fetch
        self._devices = {d.id: d for d in config.devices if d.media_url is not None}
        self._secrets = secrets
        self._reader = reader
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._busy: set[str] = set()  # devices with a download in flight
        self._auth: dict[str, aiohttp.DigestAuthMiddleware] = {}
        self._wake = asyncio.Event()
        self.on_fetched: list[Callable[[], None]] = []  # e.g. the evidence service: alarm pictures to send
        self.outcomes: Counter[str] = Counter()  # fetched, failed, retried
        self.unauthorized = 0
        self.bytes = 0
        self.pending = 0

    def wake(self) -> None:
        """Look at the queue now (new rows were committed) instead of at the next poll."""
        self._wake.set()

    def observe(self, results: Sequence[ItemResult]) -> None:
        """A pipeline observer: wake when a committed batch stored events of a camera we fetch from."""
        if any(r.stored and r.device in self._devices for r in results):
            self._wake.set()

    def expose(self, health: Health) -> None:
        """Metrics at every scrape."""
        health.expose(
            "cgw_media_fetch_bytes_total", "bytes of media fetched from devices", lambda: self.bytes
        )
        health.expose(
            "cgw_media_fetch_unauthorized_total",
            "downloads a device refused with 401 (wrong media_username or secret)",
            lambda: self.unauthorized,
        )
        health.writers.append(self.write_metrics)

    def write_metrics(self, families: MetricFamilies) -> None:
        """Outcomes per kind and the queue's depth."""
        families.counter(
            "cgw_media_fetch_total",
            "device media downloads by outcome (fetched, failed: given up, retried: an attempt failed)",
            [({"outcome": o}, float(self.outcomes[o])) for o in ("fetched", "failed", "retried")],
        )
        families.gauge("cgw_media_fetch_pending", "device media files waiting to be fetched", self.pending)

    async def run(self) -> None:
        """Work the queue until cancelled."""
        # no download is in flight now: temporary files left by a crash or a cancelled run go
        await asyncio.to_thread(_remove_partial_downloads, self._reader.media_dir)
        async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as downloads:
            while True:
                raise_if_cancelling()
                self._wake.clear()
                self.pending = await self._reader.pending_fetches()
                free = self._config.concurrency - len(self._busy)
                if free > 0:
                    for job in await self._reader.due_fetches(free * 4, self._busy):
                        if free == 0:
                            break
                        if job.device_id in self._busy:
                            continue  # one download per device at a time
                        self._busy.add(job.device_id)
                        free -= 1
                        downloads.create_task(self._attempt(session, job), name=f"media-fetch-{job.seq}")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._config.poll_s):
                        await self._wake.wait()

    async def _attempt(self, session: aiohttp.ClientSession, job: FetchJob) -> None:
        try:
            stored = await self._download(session, job)
        except _GiveUpError as exc:
            await self._give_up(job, str(exc))
        except _TryAgainError as exc:
            await self._again(job, str(exc))
        except Exception as exc:  # a bug must not stop the other fetches: retried, logged with its trace
            log.exception("media_fetch_crashed", event_id=job.event_id, role=job.role)
            await self._again(job, f"internal error: {type(exc).__name__}")
        else:
            await self._reader.fetch_done(job.seq, stored)
            self.outcomes["fetched"] += 1
            for notify in self.on_fetched:
                notify()
            self.bytes += stored.size
            log.info(
                "media_fetched",
                event_id=job.event_id,
                role=job.role,
                device=job.device_id,
                size=stored.size,
                sha256=stored.sha256,
            )
        finally:
            self._busy.discard(job.device_id)
            self._wake.set()

    async def _give_up(self, job: FetchJob, detail: str) -> None:
        self.outcomes["failed"] += 1
        log.warning(
            "media_fetch_failed", event_id=job.event_id, role=job.role, device=job.device_id, detail=detail
        )
        await self._reader.fetch_failed(job.seq, detail)

    async def _again(self, job: FetchJob, detail: str) -> None:
        tries = job.attempts + 1
        if tries >= self._config.attempts:
            await self._give_up(job, f"gave up after {tries} attempts; last: {detail}")
            return
        self.outcomes["retried"] += 1
        ceiling = min(self._config.retry_max_s, self._config.retry_initial_s * 2 ** (tries - 1))
        delay = max(self._config.retry_initial_s / 10, self._rng.uniform(0, ceiling))
        log.info(
            "media_fetch_retry",
            event_id=job.event_id,
            role=job.role,
            device=job.device_id,
            detail=detail,
            attempt=tries,
            retry_in_s=round(delay, 2),
        )
        await self._reader.fetch_retry(job.seq, delay, detail)

    def _middleware(self, device: DeviceConfig) -> aiohttp.DigestAuthMiddleware:
        auth = self._auth.get(device.id)
        if auth is None:
            secret = self._secrets.device(device.id)
            if secret is None:
                raise _GiveUpError(f"no_secret: device {device.id} has no secret in the device secrets file")
            auth = aiohttp.DigestAuthMiddleware(device.media_username, secret.decode())
            self._auth[device.id] = auth
        return auth

    async def _download(self, session: aiohttp.ClientSession, job: FetchJob) -> FetchedFile:
        device = self._devices.get(job.device_id)
        if device is None or device.media_url is None:
            raise _GiveUpError(f"no_media_url: device {job.device_id} has no media_url (any more)")
        url = media_key_url(str(device.media_url), job.key)
        bound = self._config.max_file_bytes
        timeout = aiohttp.ClientTimeout(total=self._config.timeout_s)
        try:
            async with session.get(
                url, middlewares=(self._middleware(device),), timeout=timeout, allow_redirects=False
            ) as response:
                _check_status(response, job, self)
                declared = response.content_length
                if declared is not None and declared > bound:
                    raise _GiveUpError(f"too_large: the device declares {declared} bytes (at most {bound})")
                sink = await asyncio.to_thread(_Sink, self._reader.media_dir)
                try:
                    path = await _stream_into(response, sink, declared, bound)
                except BaseException:
                    await asyncio.to_thread(sink.discard)
                    raise
                return FetchedFile(path, sink.digest.hexdigest(), sink.size, response.content_type)
        except aiohttp.ClientPayloadError as exc:
            raise _TryAgainError(f"short_body: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _TryAgainError(f"unreachable: {type(exc).__name__} {exc}".strip()) from None


async def _stream_into(
    response: aiohttp.ClientResponse, sink: _Sink, declared: int | None, bound: int
) -> str:
    """Copy the body into ``sink`` (bounded, checked against the declared length); its store path."""
    async for chunk in response.content.iter_chunked(READ_CHUNK):
        if sink.size + len(chunk) > bound:
            raise _GiveUpError(f"too_large: more than {bound} bytes streamed")
        await asyncio.to_thread(sink.write, chunk)
    if declared is not None and sink.size != declared:
        raise _TryAgainError(f"short_body: {sink.size} of {declared} bytes")
    return await asyncio.to_thread(sink.finish, SUFFIXES.get(response.content_type, ".bin"))


def _check_status(response: aiohttp.ClientResponse, job: FetchJob, fetcher: MediaFetcher) -> None:
    status = response.status
    if status == 200:
        return
    if status == 404:
        raise _GiveUpError(f"not_found: the device has no {job.key[:120]!r}")
    if status == 401:
        fetcher.unauthorized += 1
        log.warning(
            "media_fetch_unauthorized",
            device=job.device_id,
            fix="the device's download account must be media_username with the device's secret",
        )
        raise _TryAgainError("unauthorized: the device refused the gateway's credentials (401)")
    if status >= 500 or status in (408, 429):
        raise _TryAgainError(f"http_{status}")
    raise _GiveUpError(f"http_{status}: the device refused the download")
