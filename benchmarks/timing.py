"""Interleaved A/B timing: ratios against a peer, never absolute thresholds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(
    a: Callable[[], object], b: Callable[[], object], repeats: int = 5, warmup: int = 1
) -> tuple[float, float]:
    """Run A B A B … after ``warmup`` rounds; return the median seconds of each."""
    for _ in range(warmup):
        a()
        b()
    times_a, times_b = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        a()
        times_a.append(time.perf_counter() - start)
        start = time.perf_counter()
        b()
        times_b.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def interleaved_medians_n(
    fns: list[Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> list[float]:
    """:func:`interleaved_medians` for any number of callables (A B C A B C …)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]
