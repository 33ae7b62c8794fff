"""Admission to the database pool: at most ``db_pool_size`` requests hold a session at once.

Why a gate in front of the pool: sync endpoints run in AnyIO's thread pool (40 threads). Without
it, 200 concurrent requests fill every thread with a request blocked inside the pool's checkout,
while the requests that hold the connections wait for a free thread to finish and give them back:
the API wedges until the pool timeout. Waiting here is asynchronous (no thread is held), so a
thread that runs a request always finds a connection, and a request that cannot get in within
``db_pool_timeout_s`` is answered 503 with Retry-After at once instead of queueing.
"""

from __future__ import annotations

import math

import anyio

from acttail.errors import ActTailError


class PoolSaturatedError(ActTailError):
    """Every database connection this process may give to requests is busy (retry shortly)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"the service is saturated: no database connection within {timeout_s:g} s; retry shortly")
        self.retry_after_s = max(1, math.ceil(timeout_s))


class DbGate:
    """A semaphore with a deadline; built lazily, inside the event loop that serves the requests."""

    def __init__(self, capacity: int, timeout_s: float) -> None:
        self.capacity, self.timeout_s = capacity, timeout_s
        self._semaphore: anyio.Semaphore | None = None

    @property
    def semaphore(self) -> anyio.Semaphore:
        if self._semaphore is None:
            self._semaphore = anyio.Semaphore(self.capacity)
        return self._semaphore

    async def acquire(self) -> None:
        try:
            with anyio.fail_after(self.timeout_s):
                await self.semaphore.acquire()
        except TimeoutError:
            raise PoolSaturatedError(self.timeout_s) from None

    def release(self) -> None:
        self.semaphore.release()
