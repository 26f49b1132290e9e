"""Served measurements: wrk runs against a real TorchServe (Arrow ones in pyload.py), and batch CSV scoring."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
import requests

from model.service import RatingService
from movierec import torchserve
from movierec.bench.meter import CpuMeter
from movierec.bench.peer import Peer
from movierec.bench.pyload import PY_SERVED, check_arrow_answer, measure_py
from movierec.bench.settings import ARROW_KIND, BULK_MODEL, MODEL, SEED, Settings
from movierec.client.api import MovieRecClient
from movierec.client.scoring import (
    BatchSettings,
    default_chunk,
    ensure_batch_registration,
    score_csv,
)
from movierec.torchserve.archive import load_model_config

LUA = Path(__file__).resolve().parent / "post.lua"
# The CSV jobs leave their workers up for the next one: each job's wall is then its own, not the start-up's.
KEEP_UP = BatchSettings(idle_workers=BatchSettings().workers)
SOCKET_ERRORS = ("connect_errors", "read_errors", "write_errors", "timeouts")


@dataclass(frozen=True)
class Served:
    """One served configuration: a stable id, which bodies, how many wrk connections, pairs per request."""

    id: str
    bodies: str
    connections: int
    pairs: int
    model: str = MODEL


SERVED = (
    Served("single_c1", "single", 1, 1),
    Served("single_c32", "single", 32, 1),
    Served("bulk1k_c1", "bulk1k", 1, 1_000),
    Served("bulk10k_c1", "bulk10k", 1, 10_000),
    Served("bulk10k_c4", "bulk10k", 4, 10_000),
    Served("topk_c1", "topk", 1, 0),
    Served("bulk10k_c4_batchreg", "bulk10k", 4, 10_000, BULK_MODEL),
    # The same archive without dynamic batching (batchSize 1, as `make mar BATCH_SIZE=1` builds it): the
    # low-load choice for single pairs and top-K.
    Served("single_c1_batchreg", "single", 1, 1, BULK_MODEL),
    Served("topk_c1_batchreg", "topk", 1, 0, BULK_MODEL),
)
# (bodies, connections) cycled during the JVM warm-up so every code path gets compiled.
WARMUP_MIX = (("single", 32), ("bulk1k", 2), ("bulk10k", 2), ("topk", 2), ("single", 1))


def ensure_wrk() -> str | None:
    """Path to wrk; installs Debian's package only when missing and running as root, else None."""
    path = shutil.which("wrk")
    if path or os.geteuid() != 0 or not shutil.which("apt-get"):
        return path
    print("wrk not found; installing the Debian package with apt-get (running as root)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        # A fresh image has no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True)
    return shutil.which("wrk")


def write_body_files(bodies: dict[str, list[bytes]], directory: Path) -> dict[str, Path]:
    """One file per JSON body kind, one compact body per line, for post.lua (Arrow bodies go through pyload)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, items in json_bodies(bodies).items():
        files[kind] = directory / f"{kind}.jsonl"
        files[kind].write_bytes(b"\n".join(items) + b"\n")
    return files


def json_bodies(bodies: dict[str, list[bytes]]) -> dict[str, list[bytes]]:
    """The body kinds wrk sends: all but the Arrow ones."""
    return {kind: items for kind, items in bodies.items() if kind != ARROW_KIND}


def run_wrk(
    server: torchserve.Server | Peer, body_file: Path, connections: int, seconds: int, model: str = MODEL
) -> dict:
    """One closed-loop wrk run against /predictions/MODEL; the numbers post.lua printed."""
    url = f"{server.inference_url}/predictions/{model}"
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url]
    cmd += ["--", str(body_file), server.token("inference")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = re.search(r"^WRK_RESULT (.*)$", done.stdout, re.M)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return {k: float(v) for k, v in (item.split("=") for item in found.group(1).split())}


def register_bulk(server: torchserve.Server, archive: str) -> None:
    """Start the bulk-scoring workers: movierec-serve registers BULK_MODEL for every archive, with 0 workers."""
    with MovieRecClient(server.inference_url, server.management_url, key_file=server.key_file) as client:
        client.scale(client.default_version(MODEL), BatchSettings().workers, model=BULK_MODEL)


def log_bytes(run_dir: Path) -> int:
    """Total size of everything TorchServe wrote under RUN_DIR/logs."""
    return sum(p.stat().st_size for p in (run_dir / "logs").rglob("*") if p.is_file())


def approx_equal(a: object, b: object, tol: float = 1e-3) -> bool:
    """Structural equality with a tolerance on floats (batch composition may move the last digit)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and abs(a - b) <= tol
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(approx_equal(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(approx_equal(x, y, tol) for x, y in zip(a, b, strict=True))
    return a == b


def check_answers(server: torchserve.Server | Peer, service: RatingService, bodies: dict[str, list[bytes]]) -> None:
    """Each kind of body must get 200 and the same answer as the in-process service (same model)."""
    url = f"{server.inference_url}/predictions/{MODEL}"
    headers = {**server.auth("inference"), "Content-Type": "application/json"}
    for kind, items in json_bodies(bodies).items():
        for body in items[:3]:
            resp = requests.post(url, data=body, headers=headers, timeout=30)
            if resp.status_code != 200:
                raise RuntimeError(f"served {kind} body answered {resp.status_code}: {resp.text[:300]}")
            served = orjson.loads(resp.content)
            local = orjson.loads(service.handle_batch([body])[0].body)
            served.pop("model_version", None)
            local.pop("model_version", None)
            if not approx_equal(served, local):
                raise RuntimeError(
                    f"served {kind} answer differs from the in-process service: is the archive built from "
                    f"--artifacts and the current model/ and handler/?\n"
                    f"served: {str(served)[:300]}\nlocal:  {str(local)[:300]}"
                )


def warm_jvm(server: torchserve.Server | Peer, files: dict[str, Path], seconds: int) -> list[dict]:
    """Mixed traffic so the JVM has compiled every path before any served number is taken."""
    step = max(1, round(seconds / len(WARMUP_MIX)))
    print(f"warm-up of {server.inference_url}: {step * len(WARMUP_MIX)} s of mixed traffic", flush=True)
    warm = []
    for kind, connections in WARMUP_MIX:
        res = run_wrk(server, files[kind], connections, step)
        warm.append({"bodies": kind, "connections": connections, **res})
        if res["status_errors"]:
            print(f"WARNING: {res['status_errors']:.0f} non-2xx answers to {kind} bodies during warm-up", flush=True)
    return warm


def measure(server: torchserve.Server | Peer, cfg: Served, body_file: Path, s: Settings) -> tuple[dict, float]:
    """One warm-up and one measured wrk run of a configuration: its numbers, and the requests both sent."""
    pre = run_wrk(server, body_file, cfg.connections, s.warmup, cfg.model)
    logs_before = log_bytes(server.run_dir)
    with CpuMeter(server.pid) as cpu:
        res = run_wrk(server, body_file, cfg.connections, s.duration, cfg.model)
    n = max(res["requests"], 1)
    req_s = res["requests"] / (res["duration_us"] / 1e6)
    run = {
        "req_s": req_s,
        "pairs_s": req_s * cfg.pairs,
        "p50_ms": res["p50_us"] / 1e3,
        "p90_ms": res["p90_us"] / 1e3,
        "p99_ms": res["p99_us"] / 1e3,
        "max_ms": res["max_us"] / 1e3,
        "non2xx": res["status_errors"] + pre["status_errors"],
        "socket_errors": sum(res[k] + pre[k] for k in SOCKET_ERRORS),
        "server_cpu_ms_req": cpu.server_cpu_s * 1e3 / n,
        "frontend_cpu_ms_req": cpu.frontend_cpu_s * 1e3 / n,
        "client_cores": cpu.client_cpu_s / cpu.wall_s,
        "log_bytes_req": (log_bytes(server.run_dir) - logs_before) / n,
        "busy_cores": cpu.busy_cores,
        "noise_cores": cpu.noise_cores,
    }
    return run, pre["requests"] + res["requests"]


def bench_served(
    server: torchserve.Server,
    archive: Path,
    service: RatingService,
    bodies: dict[str, list[bytes]],
    files: dict[str, Path],
    s: Settings,
    peer: Peer | None = None,
) -> dict:
    """Warm the JVM, then measure every served configuration once per round, the peer right after TorchServe.

    The peer (FastAPI, same service code) runs each configuration in the same round as TorchServe, so a
    ratio is taken between two runs seconds apart; its warm-up is the same traffic, sent to it.
    """
    check_answers(server, service, bodies)
    register_bulk(server, archive.name)
    check_arrow_answer(server, service, bodies[ARROW_KIND][0])
    targets = {"torchserve": server}
    if peer is not None:
        check_answers(peer, service, bodies)
        check_arrow_answer(peer, service, bodies[ARROW_KIND][0])
        targets["peer"] = peer
    warm = warm_jvm(server, files, s.jvm_warmup)
    if peer is not None:
        warm_jvm(peer, files, max(len(WARMUP_MIX), s.jvm_warmup // 4))
    logs_start = log_bytes(server.run_dir)
    requests_sent = 0.0
    results = {name: {cfg.id: [] for cfg in (*SERVED, *PY_SERVED)} for name in targets}
    for r in range(s.rounds):
        for cfg in (*SERVED, *PY_SERVED):
            for name, target in targets.items():
                if isinstance(cfg, Served):
                    run, sent = measure(target, cfg, files[cfg.bodies], s)
                else:
                    run, sent = measure_py(target, cfg, bodies[cfg.bodies], s), 0.0
                results[name][cfg.id].append(run)
                requests_sent += sent if name == "torchserve" else 0.0
                print(
                    f"round {r + 1}/{s.rounds} {name:<10} {cfg.id:<22} {run['req_s']:9,.0f} req/s  "
                    f"p50 {run['p50_ms']:6.2f} ms  p99 {run['p99_ms']:6.2f} ms  non-2xx {run['non2xx']:.0f}  "
                    f"CPU {run['server_cpu_ms_req']:.3f} ms/req  noise {run['noise_cores']:.2f}",
                    flush=True,
                )
    return {
        "configs": results["torchserve"],
        "peer": results.get("peer"),
        "warmup": warm,
        "log_bytes_per_request": (log_bytes(server.run_dir) - logs_start) / max(requests_sent, 1),
        "requests_measured": requests_sent,
        "model_config": {k: v for k, v in load_model_config(archive).items() if k != "handler"},
    }


def write_pairs_csv(path: Path, service: RatingService, rows: int) -> Path:
    """A user_id,movie_id CSV of random known pairs (written once per row count)."""
    if path.exists():
        return path
    rng = np.random.default_rng(SEED)
    users = np.array(service.users.ids)[rng.integers(0, len(service.users), rows)]
    movies = np.array(service.movies.ids)[rng.integers(0, len(service.movies), rows)]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("user_id,movie_id\n")
        for start in range(0, rows, 100_000):
            block = zip(users[start : start + 100_000], movies[start : start + 100_000], strict=True)
            f.write("".join(f"{u},{m}\n" for u, m in block))
    tmp.replace(path)
    return path


def count_lines(path: Path) -> int:
    """Newlines in a file, read in blocks."""
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def bench_csv(server: torchserve.Server, service: RatingService, work_dir: Path, rows: int) -> dict:
    """Score one CSV through the client library as `movierec score` does, over Arrow and over JSON.

    The batch workers are started first and timed on their own: with --idle-workers as many as a job
    asks for, a job that follows another finds them up, so each job's wall is its own lease, scaling
    check and scoring.
    """
    source = write_pairs_csv(work_dir / f"pairs-{rows}.csv", service, rows)
    settings = KEEP_UP
    configs = {}
    with MovieRecClient(server.inference_url, server.management_url, key_file=server.key_file) as client:
        started = time.perf_counter()
        version = ensure_batch_registration(client, model=MODEL)
        client.scale(version, settings.workers, model=BULK_MODEL)
        startup_s = time.perf_counter() - started
        for protocol in ("arrow", "json"):
            scored = work_dir / f"scored-{protocol}.csv"
            configs[f"score_{protocol}"] = score_once(server, client, source, scored, protocol)
    same = (work_dir / "scored-arrow.csv").read_bytes() == (work_dir / "scored-json.csv").read_bytes()
    return {
        "rows": rows,
        "configs": configs,
        "same_output": same,
        "startup_s": startup_s,
        "settings": asdict(settings),
    }


def score_once(server: torchserve.Server, client: MovieRecClient, source: Path, scored: Path, protocol: str) -> dict:
    """One `score_csv` run over one protocol, timed end to end, with CPU and noise."""
    with CpuMeter(server.pid) as cpu:
        started = time.perf_counter()
        summary = score_csv(client, source, scored, settings=KEEP_UP, protocol=protocol, progress=False)
        wall = time.perf_counter() - started
    return {
        "protocol": protocol,
        "chunk": default_chunk(protocol),
        "rows_scored": summary.rows_scored,
        "rows_with_errors": summary.rows_with_errors,
        "output_rows": count_lines(scored) - 1,
        "scoring_s": summary.elapsed_s,
        "wall_s": wall,
        "rows_s": summary.rows_scored / wall if wall > 0 else 0.0,
        "server_cpu_s": cpu.server_cpu_s,
        "client_cpu_s": cpu.client_cpu_s,
        "noise_cores": cpu.noise_cores,
        "busy_cores": cpu.busy_cores,
    }
