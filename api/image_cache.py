"""Rendered plot images: content-addressed ETags, conditional GETs (304) and an in-process LRU.

The ETag is sha256 of everything a picture is drawn from (figure kind, image format, the plot
input read from the database, the title, and the matplotlib/acttail versions), so equal inputs
share one cache entry across teams and any change to a stored row that shows in the picture
changes the tag. ``acttail.plots`` draws byte-identical images for identical input, so the tag
is also honest across processes and restarts.

Authorisation happens before any of this: the caller reads only rows the team may see, so a
cached image is never served to a team that could not have drawn it itself.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import Response

from acttail import __version__ as acttail_version

MEDIA_TYPES = {"svg": "image/svg+xml", "png": "image/png"}
# private: the image shows data behind a key or a session; no-cache: revalidate every use (a 304
# costs the same database reads as authorising the request, and a sweep gains points over time).
CACHE_CONTROL = "private, no-cache"
# An SVG opened directly is a document: forbid scripts in it whatever it contains.
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'"


def _matplotlib_version() -> str:
    import matplotlib

    return str(matplotlib.__version__)


def etag_for(figure: str, fmt: str, payload: Any) -> str:
    """A strong ETag (quoted hex) over the figure kind, format, plot input and library versions."""
    document = {
        "figure": figure, "fmt": fmt, "input": payload,
        "versions": {"acttail": acttail_version, "matplotlib": _matplotlib_version()},
    }  # fmt: skip
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.sha256(text.encode("utf-8")).hexdigest()[:40] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: weak comparison against a comma-separated list, or ``*``."""
    if not if_none_match:
        return False
    candidates = [part.strip() for part in if_none_match.split(",")]
    return "*" in candidates or any(c.removeprefix("W/") == etag for c in candidates)


class ImageCache:
    """A thread-safe LRU of rendered images keyed by ETag, bounded by entries and total bytes."""

    def __init__(self, max_entries: int = 256, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= len(old) if old is not None else 0
            self._items[key] = data
            self._bytes += len(data)
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted)

    def __len__(self) -> int:
        return len(self._items)


def image_response(
    cache: ImageCache,
    *,
    figure: str,
    fmt: str,
    payload: Any,
    render: Callable[[], bytes],
    if_none_match: str | None,
) -> Response:
    """304 when the client holds this exact image, else the cached or freshly rendered bytes.

    ``render`` runs matplotlib (CPU-bound, seconds for large heatmaps); callers are plain ``def``
    endpoints, so it runs on Starlette's thread pool, not on the event loop.
    """
    etag = etag_for(figure, fmt, payload)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": "Authorization, Cookie"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    data = cache.get(etag)
    if data is None:
        data = render()
        cache.put(etag, data)
    headers["X-Content-Type-Options"] = "nosniff"
    if fmt == "svg":
        headers["Content-Security-Policy"] = SVG_CSP
    return Response(data, media_type=MEDIA_TYPES[fmt], headers=headers)
