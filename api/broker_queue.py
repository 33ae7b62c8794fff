"""Which jobs the Redis broker still holds: waiting in a queue, or reserved by a worker.

The reaper (``api.reaper``) asks this before it re-publishes a queued job: a queued job whose
message is in neither place was lost (Redis restarted without persistence, or was flushed).
It reads kombu's Redis layout: one list per queue (``cpu``; ``cpu\\x06\\x16<n>`` for priorities)
and the ``unacked`` hash of messages delivered to a worker and not yet acknowledged. Every
reservation counts, however old: a worker may hold one behind its running job (after it
reconnected, its prefetch window starts afresh), so age does not tell a dead holder from a busy
one; a message a worker reserved and died on returns after the visibility timeout. Messages are
parsed as JSON, never unpickled.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Any

PRIORITY_SEP = "\x06\x16"  # kombu.transport.redis.Channel.sep
PRIORITY_STEPS = (3, 6, 9)  # kombu's steps besides 0 (which is the plain queue name)
UNACKED = "unacked"


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


def held_job_ids(client: Any, queues: Iterable[str], task_name: str) -> set[str]:
    """Job IDs with a message waiting in ``queues`` or reserved by a worker."""
    names = [name for queue in queues for name in (queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS))]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.lrange(name, 0, -1)
    pipe.hvals(UNACKED)
    held = (job_id_of(item, task_name) for items in pipe.execute() for item in items)
    return {job for job in held if job}
