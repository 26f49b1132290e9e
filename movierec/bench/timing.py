"""Latency percentiles of timed calls: the one way every benchmark turns durations into p50/p99 milliseconds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np


def percentiles_ms(seconds: Iterable[float] | np.ndarray, qs: Iterable[int] = (50, 99)) -> dict[str, float]:
    """{"p50_ms": ..., "p99_ms": ...} of durations given in seconds (linear interpolation, as np.percentile)."""
    times = np.asarray(seconds, dtype=float)
    return {f"p{q}_ms": float(np.percentile(times, q) * 1e3) for q in qs}


def p50_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median ms of `repeat` calls after one untimed call."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return percentiles_ms(times, (50,))["p50_ms"]
