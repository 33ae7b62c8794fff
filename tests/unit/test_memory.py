"""Peak memory of a stage: the reset makes each reading cover that stage only."""

from __future__ import annotations

import mmap

from acttail.evaluate.memory import PeakMemory


def test_cpu_peak_sees_a_transient_allocation_and_resets() -> None:
    peak = PeakMemory("cpu")
    before = peak.read()
    block = mmap.mmap(-1, 64 * 2**20)  # fresh anonymous pages, never memory the allocator kept
    block.write(b"\x01" * len(block))  # touched: resident
    block.close()
    during = peak.read()
    assert during.measure == "rss" and during.reset
    assert during.bytes >= before.bytes + 60 * 2**20
    peak.reset()
    assert peak.read().bytes < during.bytes - 60 * 2**20
    assert set(during.as_dict()) == {
        "peak_memory_bytes",
        "peak_memory_measure",
        "peak_memory_device",
        "peak_memory_reset",
    }
