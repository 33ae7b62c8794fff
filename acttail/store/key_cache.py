"""A short-lived, process-wide cache of verified API keys, so a request does not cost a database
round trip to authenticate.

An entry maps a key's lookup prefix to its team and the sha256 of the whole key, and is only
written after the database confirmed the key. A hit still compares the presented key's hash in
constant time, so a cached prefix never lets a different secret in. Revoking a key through
``acttail.store.teams.revoke_api_key`` drops its entry in this process at once; another process
(a second uvicorn worker, ``acttail admin revoke-key``) cannot reach this cache, so there a revoked
key keeps working for at most the TTL (``ACTTAIL_AUTH_CACHE_TTL_S``, default 5 s; 0 turns the cache
off). Unknown or wrong keys are never cached: a flood of bad keys cannot grow it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class TeamRef:
    """The authenticated caller's team: all a request needs, detached from any session."""

    id: int
    name: str


@dataclass(frozen=True)
class _Entry:
    team: TeamRef
    key_hash: str
    expires_at: float


class VerifiedKeyCache:
    """Bounded LRU of (database, prefix) -> verified key, each entry valid for ``ttl_s`` seconds."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, database: str, prefix: str) -> tuple[TeamRef, str] | None:
        """(team, key hash) of an unexpired entry, else None."""
        with self._lock:
            entry = self._entries.get((database, prefix))
            if entry is None:
                return None
            if entry.expires_at <= time.monotonic():
                del self._entries[(database, prefix)]
                return None
            self._entries.move_to_end((database, prefix))
            return entry.team, entry.key_hash

    def put(self, database: str, prefix: str, team: TeamRef, key_hash: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        with self._lock:
            self._entries[(database, prefix)] = _Entry(team, key_hash, time.monotonic() + ttl_s)
            self._entries.move_to_end((database, prefix))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def invalidate(self, prefix: str) -> None:
        """Forget the key with this prefix in every database (prefixes are random: no collateral)."""
        with self._lock:
            for cache_key in [k for k in self._entries if k[1] == prefix]:
                del self._entries[cache_key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


VERIFIED_KEYS = VerifiedKeyCache()
