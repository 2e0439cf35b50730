"""What the watch-list matcher looks at: which events, and which picture or plate of each.

The outbox queues this work in the same transaction as its event (``gateway/outbox/watch_queue.py``)
but does not decide what is worth matching: that is the watch side's knowledge, kept here so that
the intake (which builds the outbox rows, possibly in a parser process) and the matcher agree on it.

* A face-gate event with a stored face or scene picture: the picture is analysed for faces.
* A vehicle pass with a plate read: the plate is looked up.

Pictures are costly to analyse, so their backlog is bounded (``PICTURE_BACKLOG_COUNTER`` counts what
is dropped); plates are cheap and never shed.
"""

from __future__ import annotations

from foundation.events import Event, FaceAccessPayload, VehiclePassPayload
from gateway.outbox import WatchWork

FACE_WORK = "face"
PLATE_WORK = "plate"
PICTURE_BACKLOG_COUNTER = "pictures_shed"

# a gate's face crop, or its whole scene when the device sends no crop
FACE_MEDIA_ROLES = frozenset({"face", "scene"})
LOCAL_MEDIA = "local:"  # pictures in the gateway's media store (not a device URL we never fetched)


def watch_work_for(event: Event) -> WatchWork | None:
    """The work to queue with ``event``, or None when the matcher has nothing to look at."""
    payload = event.payload
    if isinstance(payload, FaceAccessPayload):
        for media in event.media:
            if media.role in FACE_MEDIA_ROLES and media.ref.startswith(LOCAL_MEDIA):
                return WatchWork(FACE_WORK, media.ref.removeprefix(LOCAL_MEDIA), payload.direction.value)
    elif isinstance(payload, VehiclePassPayload) and payload.plate:
        return WatchWork(PLATE_WORK, payload.plate, payload.direction.value)
    return None
