"""Which jobs the Redis broker still holds: waiting in a queue, or reserved by a worker.

The reaper (``api.reaper``) asks this before it re-publishes a queued job: a queued job whose
message is in neither place was lost (Redis restarted without persistence, or was flushed).
It reads kombu's Redis layout: one list per queue (``cpu``; ``cpu\\x06\\x16<n>`` for priorities)
and the ``unacked`` hash of delivered but unacknowledged messages, indexed by delivery time in
``unacked_index``. A reservation older than ``reserved_within_s`` does not count: a live worker
starts what it reserves at once (prefetch 1), so such a message belongs to a dead worker and
would only come back after the visibility timeout. Messages are parsed as JSON, never unpickled.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable
from typing import Any

PRIORITY_SEP = "\x06\x16"  # kombu.transport.redis.Channel.sep
PRIORITY_STEPS = (3, 6, 9)  # kombu's steps besides 0 (which is the plain queue name)
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


def job_id_of(raw: bytes | str, task_name: str) -> str | None:
    """The job ID in one stored message (a queue item, or an ``unacked`` value), else None."""
    try:
        message: Any = json.loads(raw)
        if isinstance(message, list):  # unacked: [message, exchange, routing_key]
            message = message[0]
        if message.get("headers", {}).get("task") != task_name:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]  # protocol 2: [args, kwargs, embed]
        return str(args[0])
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, binascii.Error):
        return None


def held_job_ids(
    client: Any, queues: Iterable[str], task_name: str, *, reserved_within_s: float, now: float | None = None
) -> set[str]:
    """Job IDs with a message waiting in ``queues`` or reserved within the last ``reserved_within_s``."""
    held: set[str] = set()
    names = [name for queue in queues for name in (queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS))]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.lrange(name, 0, -1)
    for items in pipe.execute():
        held.update(job for job in (job_id_of(item, task_name) for item in items) if job)
    since = (time.time() if now is None else now) - reserved_within_s
    tags = client.zrangebyscore(UNACKED_INDEX, since, "+inf")
    if tags:
        values = client.hmget(UNACKED, tags)
        held.update(job for job in (job_id_of(v, task_name) for v in values if v is not None) if job)
    return held
