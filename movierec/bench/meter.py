"""Noise meter and timing helpers: busy CPU from /proc/stat against the CPU of our own processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from movierec.bench.timing import percentiles_ms


@dataclass(frozen=True)
class CpuSample:
    """Jiffies over all CPUs since boot: busy (not idle, not waiting on I/O) and total."""

    busy: int
    total: int


def parse_proc_stat(text: str) -> CpuSample:
    """The busy and total jiffies from the first ("cpu") line of /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, text.split()[1:9])
    total = user + nice + system + idle + iowait + irq + softirq + steal  # guest time is inside user
    return CpuSample(total - idle - iowait, total)


def proc_stat() -> CpuSample:
    """The machine's CPU jiffies now."""
    return parse_proc_stat(Path("/proc/stat").read_text())


def busy_cores(start: CpuSample, end: CpuSample, cores: int) -> float:
    """Average number of busy cores between two samples."""
    return (end.busy - start.busy) / max(end.total - start.total, 1) * cores


def noise_cores(busy: float, own_cpu_s: float, wall_s: float) -> float:
    """Busy cores not explained by our own processes (server + this process + wrk) over the window."""
    return max(0.0, busy - own_cpu_s / wall_s)


def load_average() -> str:
    """The 1/5/15-minute load averages as one string."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (TorchServe's JVM and its Python workers)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    """User + system CPU seconds per pid (processes that vanished are skipped)."""
    out = {}
    for proc in procs:
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except psutil.Error:
            continue
    return out


def own_cpu_seconds() -> float:
    """CPU of this process and its finished children (wrk runs, which we wait for inside the window)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """Over one window: busy cores on the machine, CPU of the server tree and of this process + children."""

    def __init__(self, server_pid: int | None = None, stat: Callable[[], CpuSample] = proc_stat):
        self.server_pid = server_pid
        self.stat = stat

    def _server(self) -> dict[int, float]:
        """CPU seconds per process of the server tree (none without a server)."""
        return cpu_seconds(process_tree(self.server_pid)) if self.server_pid else {}

    def __enter__(self) -> CpuMeter:
        self._server0 = self._server()
        self._ours0 = own_cpu_seconds()
        self._stat0 = self.stat()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._t0
        stat = self.stat()
        end = self._server()
        self.server_cpu_s = sum(cpu - self._server0.get(pid, 0.0) for pid, cpu in end.items())
        # The tree's root is the Java frontend; everything below it is a Python worker.
        self.frontend_cpu_s = end.get(self.server_pid, 0.0) - self._server0.get(self.server_pid, 0.0)
        self.client_cpu_s = own_cpu_seconds() - self._ours0
        self.busy_cores = busy_cores(self._stat0, stat, os.cpu_count() or 1)
        self.noise_cores = noise_cores(self.busy_cores, self.server_cpu_s + self.client_cpu_s, self.wall_s)


def time_calls(fn: Callable, inputs: list, seconds: float, min_calls: int = 20) -> np.ndarray:
    """Call fn on each input in rotation for at least `seconds`; the per-call durations in seconds."""
    times = []
    deadline = time.perf_counter() + seconds
    i = 0
    while True:
        t0 = time.perf_counter()
        fn(inputs[i % len(inputs)])
        t1 = time.perf_counter()
        times.append(t1 - t0)
        i += 1
        if t1 >= deadline and i >= min_calls:
            return np.array(times)


def summarize(times: np.ndarray, pairs: int) -> dict:
    """Throughput and per-call latency of a timed run (pairs per call; 0 when calls carry no pairs)."""
    return {
        "calls": len(times),
        "pairs_s": pairs * len(times) / times.sum() if pairs else 0.0,
        "calls_s": len(times) / times.sum(),
        **percentiles_ms(times),
    }
