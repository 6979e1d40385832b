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
) -> list[tuple[float, float]]:
    """:func:`interleaved_medians` for any number of callables (A B C A B C …); for each,
    the median wall-clock seconds and the median CPU seconds of this process.

    On a machine shared with other jobs the wall clock also counts the time the
    process waited for a core; its CPU time does not (it still counts the slowdown
    that the neighbours' memory traffic causes), so a ratio of CPU times is the
    steadier one there.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, w, c in zip(fns, wall, cpu, strict=True):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            w.append(time.perf_counter() - start)
            c.append(time.process_time() - start_cpu)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu, strict=True)]
