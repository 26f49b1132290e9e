"""Served bulk measurements with a Python closed-loop load generator: Arrow bodies, which wrk's Lua cannot send.

Each of N threads holds one keep-alive http.client connection and posts pre-built bodies in
rotation, waiting for each whole answer before the next request (closed loop, like `wrk -cN`).
The same generator also sends the JSON 10k-pair bodies, so the two protocols are compared by one
instrument on the bulk registration. Threads wait on sockets with the GIL released; the client CPU
they use is recorded next to the numbers.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa

from model.arrow import ARROW_STREAM
from model.protocol import ArrowBody
from model.service import RatingService
from movierec import torchserve
from movierec.bench.meter import CpuMeter
from movierec.bench.peer import Peer
from movierec.bench.settings import ARROW_KIND, BULK_MODEL, Settings
from movierec.bench.timing import percentiles_ms


@dataclass(frozen=True)
class PyServed:
    """One configuration of the Python generator: a stable id, which bodies, connections, pairs per request."""

    id: str
    bodies: str
    connections: int
    pairs: int
    content_type: str
    model: str = BULK_MODEL


PY_SERVED = (
    PyServed("arrow10k_c4_batchreg", ARROW_KIND, 4, 10_000, ARROW_STREAM),
    PyServed("json10k_c4_batchreg_py", "bulk10k", 4, 10_000, "application/json"),
)


def closed_loop(url: str, bodies: list[bytes], headers: dict[str, str], connections: int, seconds: float) -> dict:
    """`connections` threads posting bodies in rotation for `seconds`: requests, latencies and errors."""
    parts = urlsplit(url)
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = {"status_errors": 0, "socket_errors": 0}
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def run(slot: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        i = slot
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                conn.request("POST", parts.path, bodies[i % len(bodies)], headers)
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                with lock:
                    errors["socket_errors"] += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                continue
            latencies[slot].append(time.perf_counter() - t0)
            if resp.status >= 400:
                with lock:
                    errors["status_errors"] += 1
            i += connections
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    times = np.array([x for slot in latencies for x in slot]) if any(latencies) else np.zeros(1)
    return {
        "requests": float(sum(len(slot) for slot in latencies)),
        "duration_s": wall,
        **percentiles_ms(times, (50, 90, 99)),
        "max_ms": float(times.max() * 1e3),
        **{k: float(v) for k, v in errors.items()},
    }


def headers_for(server: torchserve.Server | Peer, content_type: str) -> dict[str, str]:
    """Auth and content negotiation for one protocol."""
    return {**server.auth("inference"), "Content-Type": content_type, "Accept": content_type}


def measure_py(server: torchserve.Server | Peer, cfg: PyServed, bodies: list[bytes], s: Settings) -> dict:
    """One warm-up and one measured run of a configuration, in the shape load.measure records."""
    url = f"{server.inference_url}/predictions/{cfg.model}"
    headers = headers_for(server, cfg.content_type)
    pre = closed_loop(url, bodies, headers, cfg.connections, s.warmup)
    with CpuMeter(server.pid) as cpu:
        res = closed_loop(url, bodies, headers, cfg.connections, s.duration)
    n = max(res["requests"], 1)
    req_s = res["requests"] / res["duration_s"]
    return {
        "req_s": req_s,
        "pairs_s": req_s * cfg.pairs,
        **{k: res[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")},
        "non2xx": res["status_errors"] + pre["status_errors"],
        "socket_errors": res["socket_errors"] + pre["socket_errors"],
        "server_cpu_ms_req": cpu.server_cpu_s * 1e3 / n,
        "frontend_cpu_ms_req": cpu.frontend_cpu_s * 1e3 / n,
        "client_cores": cpu.client_cpu_s / cpu.wall_s,
        "log_bytes_req": 0.0,  # not measured here
        "busy_cores": cpu.busy_cores,
        "noise_cores": cpu.noise_cores,
    }


def check_arrow_answer(
    server: torchserve.Server | Peer, service: RatingService, body: bytes, model: str = BULK_MODEL
) -> None:
    """An Arrow body on the bulk registration must get the in-process service's ratings, digit for digit."""
    conn_url = f"{server.inference_url}/predictions/{model}"
    parts = urlsplit(conn_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("POST", parts.path, body, headers_for(server, ARROW_STREAM))
        resp = conn.getresponse()
        served = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"served Arrow body answered {resp.status}: {served[:300]!r}")
    local = service.handle_batch([ArrowBody(body)])[0].body
    ratings = [pa.ipc.open_stream(pa.py_buffer(b)).read_all().column("rating").to_pylist() for b in (served, local)]
    if ratings[0] != ratings[1]:
        raise RuntimeError("served Arrow ratings differ from the in-process service's: is the archive up to date?")
