"""Measure movierec in-process, through a real TorchServe, and batch CSV scoring; write BENCHMARKS.md.

Method (the serving-performance notes shared with the team): 1 torch thread and gc.freeze() as in the
handler; wrk from Debian with rotating pre-built bodies; a JVM warm-up before any served number;
several interleaved rounds, medians reported; busy CPU from /proc/stat recorded as noise.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import psutil
import requests
import torch

from model.artifact import load_artifact
from model.core import Recommender
from model.service import RatingService
from movierec import torchserve
from movierec.paths import REPO
from movierec.torchserve.archive import build_mar, load_model_config

LUA = Path(__file__).resolve().parent / "post.lua"
MODEL = "movierec"
SEED = 0
SECTIONS = ("inprocess", "served", "csv")
TOP_K = 10
# Version of the archive bench.py builds; its own name keeps `make mar` out of build/mar-1.0.
BENCH_VERSION = "bench"
# The bulk-scoring registration `movierec score` makes through the management API:
# the same archive with 2 workers and no batching (10k-pair requests need no companions).
BULK_MODEL = "movierec-batch"
BULK_REGISTRATION = {"batch_size": 1, "max_batch_delay": 1, "initial_workers": 2}

# Targets on this 2-core machine, checked in the report.
TARGET_BULK_PAIRS_S = 1_000_000
TARGET_SINGLE_C32_REQ_S = 5_000
TARGET_SINGLE_C32_P99_MS = 20.0
TARGET_TOPK_P50_MS = 2.0


@dataclass
class Settings:
    """How long and how often to measure."""

    rounds: int = 3
    duration: int = 10  # s of wrk measurement per served configuration
    warmup: int = 3  # s of wrk traffic per configuration before each measurement
    jvm_warmup: int = 60  # s of mixed traffic after start, before any served number
    inprocess_seconds: float = 1.0  # s of timed calls per in-process configuration
    csv_rows: int = 1_000_000


FULL = Settings()
QUICK = Settings(rounds=1, duration=3, warmup=1, jvm_warmup=12, inprocess_seconds=0.3, csv_rows=1_000_000)


@dataclass(frozen=True)
class Served:
    """One served configuration: which bodies, how many wrk connections, pairs per request."""

    name: str
    bodies: str
    connections: int
    pairs: int
    model: str = "movierec"


SERVED = (
    Served("single pair, c1", "single", 1, 1),
    Served("single pair, c32", "single", 32, 1),
    Served("bulk 1k pairs, c1", "bulk1k", 1, 1_000),
    Served("bulk 10k pairs, c1", "bulk10k", 1, 10_000),
    Served("bulk 10k pairs, c4", "bulk10k", 4, 10_000),
    Served(f"top-{TOP_K}, c1", "topk", 1, 0),
    Served("bulk 10k pairs, c4, bulk registration", "bulk10k", 4, 10_000, BULK_MODEL),
    # The same archive without dynamic batching: what a latency-only registration would give top-K.
    Served(f"top-{TOP_K}, c1, bulk registration", "topk", 1, 0, BULK_MODEL),
)
# (bodies, connections) cycled during the JVM warm-up so every code path gets compiled.
WARMUP_MIX = (("single", 32), ("bulk1k", 2), ("bulk10k", 2), ("topk", 2), ("single", 1))


# -- noise: busy CPU on the machine vs. CPU of our own processes --------------------------------------


def proc_stat() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot, from the first line of /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    total = user + nice + system + idle + iowait + irq + softirq + steal  # guest time is inside user
    return total - idle - iowait, total


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


class CpuMeter:
    """Over one window: busy cores on the machine, CPU of the server tree and of this process + children."""

    def __init__(self, server_pid: int | None = None):
        self.server_pid = server_pid

    def _ours(self) -> float:
        t = os.times()  # children = finished wrk runs, which we wait for inside the window
        return t.user + t.system + t.children_user + t.children_system

    def __enter__(self) -> CpuMeter:
        self._server = cpu_seconds(process_tree(self.server_pid)) if self.server_pid else {}
        self._ours0 = self._ours()
        self._stat = proc_stat()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t0
        busy, total = proc_stat()
        end = cpu_seconds(process_tree(self.server_pid)) if self.server_pid else {}
        self.server_cpu_s = sum(cpu - self._server.get(pid, 0.0) for pid, cpu in end.items())
        # The tree's root is the Java frontend; everything below it is a Python worker.
        self.frontend_cpu_s = end.get(self.server_pid, 0.0) - self._server.get(self.server_pid, 0.0)
        self.client_cpu_s = self._ours() - self._ours0
        cores = os.cpu_count() or 1
        self.busy_cores = (busy - self._stat[0]) / max(total - self._stat[1], 1) * cores
        self.noise_cores = max(0.0, self.busy_cores - (self.server_cpu_s + self.client_cpu_s) / wall)
        self.wall_s = wall


# -- in-process -------------------------------------------------------------------------------------


def load_service(artifacts: Path) -> RatingService:
    """Load the artifact the way the handler does: 1 torch thread, then freeze the GC heap."""
    torch.set_num_threads(1)
    artifact = load_artifact(artifacts)
    options = load_model_config().get("handler", {}) or {}
    rec = Recommender(artifact, min_movie_ratings=int(options.get("min_movie_ratings", 0)))
    service = RatingService(rec, model_version="bench", max_instances=int(options.get("max_instances", 20_000)))
    gc.collect()
    gc.freeze()
    return service


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
    """Throughput and per-call latency of a timed run."""
    return {
        "calls": len(times),
        "pairs_s": pairs * len(times) / times.sum() if pairs else 0.0,
        "calls_s": len(times) / times.sum(),
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
    }


def make_bodies(service: RatingService, rng: np.random.Generator) -> dict[str, list[bytes]]:
    """Pre-built request bodies of each kind, with known IDs sent as JSON numbers like real clients."""
    users = [int(u) for u in service.users.ids]
    movies = [int(m) for m in service.movies.ids]

    def pairs(n: int) -> list[dict]:
        us, ms = rng.integers(0, len(users), n), rng.integers(0, len(movies), n)
        return [{"user_id": users[u], "movie_id": movies[m]} for u, m in zip(us.tolist(), ms.tolist(), strict=True)]

    return {
        "single": [orjson.dumps(p) for p in pairs(1_000)],
        "bulk1k": [orjson.dumps({"instances": pairs(1_000)}) for _ in range(16)],
        "bulk10k": [orjson.dumps({"instances": pairs(10_000)}) for _ in range(8)],
        "topk": [orjson.dumps({"user_id": users[u], "top_k": TOP_K}) for u in rng.integers(0, len(users), 200)],
    }


def bench_inprocess(service: RatingService, bodies: dict[str, list[bytes]], s: Settings) -> dict:
    """Model paths and the whole request pipeline in this process, interleaved over rounds."""
    rec = service.rec
    rng = np.random.default_rng(SEED)
    n_users, n_movies = len(service.users), len(service.movies)

    def index_batches(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        count = 16 if n <= 1_000 else 4
        return [(rng.integers(0, n_users, n), rng.integers(0, n_movies, n)) for _ in range(count)]

    def pipeline_stages(body: bytes) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        jobs = service.parse([body])
        t1 = time.perf_counter()
        service.infer(jobs)
        t2 = time.perf_counter()
        service.render(jobs)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    for kind in ("bulk10k", "topk"):
        reply = service.handle_batch([bodies[kind][0]])[0]
        if reply.status != 200:
            raise RuntimeError(f"in-process {kind} body answered {reply.status}: {reply.body[:200]!r}")

    batch32 = [bodies["single"][i : i + 32] for i in range(0, 32 * 16, 32)]
    users = list(range(n_users))
    rng.shuffle(users)
    configs: list[tuple[str, str, Callable, list, int]] = []
    for n in (1, 1_000, 10_000):
        batches = index_batches(n)
        configs.append(("TorchScript forward (`predict_exact`)", f"{n:,}", lambda b: rec.predict_exact(*b), batches, n))
        configs.append(("factorised `predict`", f"{n:,}", lambda b: rec.predict(*b), batches, n))
    configs += [
        (
            "`handle_batch`, one 10k-pair JSON body",
            "10,000",
            lambda b: service.handle_batch([b]),
            bodies["bulk10k"],
            10_000,
        ),
        ("`handle_batch`, 32 single-pair bodies (one dynamic batch)", "32 x 1", service.handle_batch, batch32, 32),
        (f"`recommend(k={TOP_K})`", "1 user", lambda u: rec.recommend(u, TOP_K), users, 0),
        (f"`handle_batch`, one top-{TOP_K} body", "1 user", lambda b: service.handle_batch([b]), bodies["topk"], 0),
    ]
    results: dict[str, list[dict]] = {}
    stages: list[np.ndarray] = []
    noise = []
    for r in range(s.rounds):
        with CpuMeter() as cpu:
            for name, batch, fn, inputs, pairs in configs:
                times = time_calls(fn, inputs, s.inprocess_seconds)
                results.setdefault(f"{name}|{batch}", []).append(summarize(times, pairs))
            stage_times = []
            deadline = time.perf_counter() + s.inprocess_seconds
            i = 0
            while time.perf_counter() < deadline or i < 20:
                stage_times.append(pipeline_stages(bodies["bulk10k"][i % len(bodies["bulk10k"])]))
                i += 1
            stages.append(np.median(np.array(stage_times), axis=0) * 1e3)
        noise.append(cpu.noise_cores)
        print(f"in-process round {r + 1}/{s.rounds} done (noise {cpu.noise_cores:.2f} cores)", flush=True)
    parse_ms, infer_ms, render_ms = np.median(np.array(stages), axis=0).tolist()
    return {
        "configs": results,
        "stages_10k_ms": {"parse": parse_ms, "infer": infer_ms, "render": render_ms},
        "noise_cores": noise,
    }


# -- served -------------------------------------------------------------------------------------------


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
    """One file per body kind, one compact JSON body per line, for post.lua."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, items in bodies.items():
        files[kind] = directory / f"{kind}.jsonl"
        files[kind].write_bytes(b"\n".join(items) + b"\n")
    return files


def run_wrk(server: torchserve.Server, body_file: Path, connections: int, seconds: int, model: str = MODEL) -> dict:
    """One closed-loop wrk run against /predictions/MODEL; the numbers post.lua printed."""
    url = f"{server.inference_url}/predictions/{model}"
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        str(body_file),
        server.token("inference"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = re.search(r"^WRK_RESULT (.*)$", done.stdout, re.M)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return {k: float(v) for k, v in (item.split("=") for item in found.group(1).split())}


def register_bulk(server: torchserve.Server, mar: str) -> None:
    """Register the archive a second time as the bulk-scoring model, as the scoring client does."""
    params = {"url": mar, "model_name": BULK_MODEL, "synchronous": "true", **BULK_REGISTRATION}
    r = requests.post(f"{server.management_url}/models", params=params, headers=server.auth("management"), timeout=300)
    r.raise_for_status()
    # initial_workers is capped by the archive YAML's maxWorkers: 1, so scale explicitly, as the
    # scoring client does.
    workers = BULK_REGISTRATION["initial_workers"]
    scale = {"min_worker": workers, "max_worker": workers, "synchronous": "true"}
    url = f"{server.management_url}/models/{BULK_MODEL}"
    requests.put(url, params=scale, headers=server.auth("management"), timeout=300).raise_for_status()


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


def check_answers(server: torchserve.Server, service: RatingService, bodies: dict[str, list[bytes]]) -> None:
    """Each kind of body must get 200 and the same answer as the in-process service (same model)."""
    url = f"{server.inference_url}/predictions/{MODEL}"
    headers = {**server.auth("inference"), "Content-Type": "application/json"}
    for kind, items in bodies.items():
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


def bench_served(
    server: torchserve.Server,
    archive: Path,
    service: RatingService,
    bodies: dict[str, list[bytes]],
    files: dict[str, Path],
    s: Settings,
) -> dict:
    """Warm the JVM, then measure every served configuration once per round."""
    check_answers(server, service, bodies)
    register_bulk(server, archive.name)
    warm: list[dict] = []
    step = max(1, round(s.jvm_warmup / len(WARMUP_MIX)))
    print(f"JVM warm-up: {step * len(WARMUP_MIX)} s of mixed traffic", flush=True)
    for kind, connections in WARMUP_MIX:
        res = run_wrk(server, files[kind], connections, step)
        warm.append({"bodies": kind, "connections": connections, **res})
        if res["status_errors"]:
            print(f"WARNING: {res['status_errors']:.0f} non-2xx answers to {kind} bodies during warm-up", flush=True)
    logs_start = log_bytes(server.run_dir)
    requests_sent = 0
    results: dict[str, list[dict]] = {}
    for r in range(s.rounds):
        for cfg in SERVED:
            pre = run_wrk(server, files[cfg.bodies], cfg.connections, s.warmup, cfg.model)
            logs_before = log_bytes(server.run_dir)
            with CpuMeter(server.pid) as cpu:
                res = run_wrk(server, files[cfg.bodies], cfg.connections, s.duration, cfg.model)
            n = max(res["requests"], 1)
            req_s = res["requests"] / (res["duration_us"] / 1e6)
            results.setdefault(cfg.name, []).append(
                {
                    "req_s": req_s,
                    "pairs_s": req_s * cfg.pairs,
                    "p50_ms": res["p50_us"] / 1e3,
                    "p90_ms": res["p90_us"] / 1e3,
                    "p99_ms": res["p99_us"] / 1e3,
                    "max_ms": res["max_us"] / 1e3,
                    "non2xx": res["status_errors"] + pre["status_errors"],
                    "socket_errors": sum(
                        res[k] + pre[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
                    ),
                    "server_cpu_ms_req": cpu.server_cpu_s * 1e3 / n,
                    "frontend_cpu_ms_req": cpu.frontend_cpu_s * 1e3 / n,
                    "client_cores": cpu.client_cpu_s / cpu.wall_s,
                    "log_bytes_req": (log_bytes(server.run_dir) - logs_before) / n,
                    "busy_cores": cpu.busy_cores,
                    "noise_cores": cpu.noise_cores,
                }
            )
            requests_sent += pre["requests"] + res["requests"]
            last = results[cfg.name][-1]
            print(
                f"round {r + 1}/{s.rounds} {cfg.name:<20} {req_s:9,.0f} req/s  p50 {last['p50_ms']:6.2f} ms  "
                f"p99 {last['p99_ms']:6.2f} ms  non-2xx {last['non2xx']:.0f}  noise {cpu.noise_cores:.2f}",
                flush=True,
            )
    return {
        "configs": results,
        "warmup": warm,
        "log_bytes_per_request": (log_bytes(server.run_dir) - logs_start) / max(requests_sent, 1),
        "requests_measured": requests_sent,
        "model_config": {k: v for k, v in load_model_config(archive).items() if k != "handler"},
    }


# -- batch CSV scoring ---------------------------------------------------------------------------------


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


def bench_csv(server: torchserve.Server, service: RatingService, work_dir: Path, rows: int) -> dict:
    """Score a CSV through the client library exactly as `movierec score` would."""
    try:
        from movierec.client.api import MovieRecClient
        from movierec.client.scoring import BatchSettings, score_csv
    except ImportError as exc:
        return {"skipped": f"client library not importable ({exc}); batch CSV scoring not measured"}
    source = write_pairs_csv(work_dir / f"pairs-{rows}.csv", service, rows)
    scored = work_dir / "scored.csv"
    settings = BatchSettings()
    client = MovieRecClient(server.inference_url, server.management_url, server.key_file)
    try:
        with CpuMeter(server.pid) as cpu:
            started = time.perf_counter()
            summary = score_csv(client, source, scored, settings=settings)
            wall = time.perf_counter() - started
    finally:
        client.close()
    with open(scored, "rb") as f:
        lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    return {
        "rows": rows,
        "rows_scored": summary.rows_scored,
        "rows_with_errors": summary.rows_with_errors,
        "output_rows": lines - 1,
        "scoring_s": summary.elapsed_s,
        "wall_s": wall,
        "rows_s": summary.rows_per_s,
        "settings": asdict(settings),
        "server_cpu_s": cpu.server_cpu_s,
        "client_cpu_s": cpu.client_cpu_s,
        "noise_cores": cpu.noise_cores,
        "busy_cores": cpu.busy_cores,
    }


# -- report ----------------------------------------------------------------------------------------------


def machine_info() -> dict:
    """CPU model, cores, RAM and the versions that matter for these numbers."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem_kb = int(re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M).group(1))

    def version_of(cmd: list[str]) -> str:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "not found"
        return ((done.stdout or "") + (done.stderr or "")).strip().splitlines()[0]

    import ts.version

    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "ram_gib": mem_kb / 2**20,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchserve": ts.version.__version__,
        "numpy": np.__version__,
        "orjson": orjson.__version__,
        "java": version_of(["java", "-version"]),
        "wrk": version_of(["wrk", "--version"]).split(" [")[0] if shutil.which("wrk") else "not installed",
        "torch_threads_env": os.environ.get("MOVIEREC_TORCH_THREADS", "unset (handler uses 1)"),
    }


def median(runs: list[dict], key: str) -> float:
    """Median of one field over rounds."""
    return statistics.median(run[key] for run in runs)


def spread(runs: list[dict], key: str, fmt: Callable[[float], str]) -> str:
    """The median, and the min-max over rounds when there was more than one."""
    values = [run[key] for run in runs]
    text = fmt(statistics.median(values))
    return text if len(values) == 1 else f"{text} ({fmt(min(values))}–{fmt(max(values))})"


def rate(x: float) -> str:
    """A throughput with a readable unit."""
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e4:
        return f"{x / 1e3:.0f} k"
    return f"{x:,.0f}"


def ms(x: float) -> str:
    """Milliseconds with precision where it matters."""
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def verdict(ok: bool) -> str:
    """Met / missed, for the targets column."""
    return "met" if ok else "**missed**"


def report(results: dict) -> str:
    """BENCHMARKS.md as Markdown."""
    m, s = results["machine"], Settings(**results["settings"])
    lines = [
        "# movierec benchmarks",
        "",
        f"Generated by `bench/bench.py` on {results['date']}. Mode: **{results['mode']}** ({s.rounds} round(s); "
        f"served: {s.jvm_warmup} s JVM warm-up, then {s.warmup} s warm-up + {s.duration} s measurement per "
        f"configuration and round; in-process: {s.inprocess_seconds} s per configuration and round). "
        "Values are medians over rounds, with the min–max over rounds in parentheses.",
        "",
        "```",
        results["command"],
        "```",
        "",
        "**Machine:** "
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']:.1f} GiB RAM; Python {m['python']}, torch {m['torch']}, "
        f"TorchServe {m['torchserve']}, numpy {m['numpy']}, orjson {m['orjson']}, {m['java']}, {m['wrk']}. "
        f"MOVIEREC_TORCH_THREADS: {m['torch_threads_env']}.",
        "",
        "**Noise:** " + noise_note(results),
        "",
    ]
    if "archive" in results:
        lines += [f"**Served archive:** `{os.path.relpath(results['archive'], REPO)}`.", ""]
    lines += targets_section(results)
    lines += inprocess_section(results.get("inprocess"))
    lines += served_section(results.get("served"))
    lines += csv_section(results.get("csv"))
    lines += [
        "## Method",
        "",
        "- In-process: `torch.set_num_threads(1)` and `gc.freeze()` after loading, as the handler does; "
        "`time.perf_counter` around each call, rotating over pre-generated index batches or request bodies; "
        "the configurations are interleaved within each round.",
        "- Served: `torchserve.start()` on free loopback ports with the repository's `config.properties`, "
        "`log4j2.xml` and the archive's `handler/model-config.yaml`; "
        "`wrk -t1 -cN` with keep-alive, closed loop, `bench/post.lua` rotating pre-built bodies "
        "(1,000 single pairs, 16 bodies of 1k pairs, 8 of 10k pairs, 200 top-K users) and printing exact "
        "percentiles. Before measuring, a few bodies of each kind are checked to get 200 and the same "
        "answer as the in-process service.",
        "- Server CPU per request: psutil over the TorchServe JVM and its workers. Log bytes per request: "
        "growth of `RUN_DIR/logs` during the measurement. Noise cores: busy CPU from `/proc/stat` minus "
        "the CPU of the server, this process and wrk.",
        "- wrk is a closed-loop generator: at saturation its p99 understates open-loop tail latency.",
        "",
    ]
    return "\n".join(lines)


def noise_note(results: dict) -> str:
    """Load averages and the CPU used by other processes while measuring."""
    parts = [f"load average {results['load_start']} at the start and {results['load_end']} at the end."]
    for section, label in (("inprocess", "in-process"), ("served", "served")):
        data = results.get(section)
        if not data or "configs" not in data:
            continue
        if section == "inprocess":
            values = data["noise_cores"]
        else:
            values = [run["noise_cores"] for runs in data["configs"].values() for run in runs]
        parts.append(
            f"Other processes used a median of {statistics.median(values):.2f} cores "
            f"(max {max(values):.2f}) during the {label} measurements."
        )
    if results.get("csv", {}).get("noise_cores") is not None:
        parts.append(f"During CSV scoring: {results['csv']['noise_cores']:.2f} cores.")
    parts.append(
        f"With {results['machine']['cores']} cores, 1 busy core of noise halves what the server "
        "can get; compare runs only at similar noise, and prefer server CPU ms per request."
    )
    return " ".join(parts)


def targets_section(results: dict) -> list[str]:
    """The targets next to the measured numbers."""
    served = (results.get("served") or {}).get("configs", {})
    rows = []
    bulk = [
        c for c in ("bulk 10k pairs, c1", "bulk 10k pairs, c4", "bulk 10k pairs, c4, bulk registration") if c in served
    ]
    if bulk:
        best = max(median(served[c], "pairs_s") for c in bulk)
        text = ", ".join(f"{rate(median(served[c], 'pairs_s'))} pairs/s ({', '.join(c.split(', ')[1:])})" for c in bulk)
        rows.append(
            f"| served 10k-pair bulk ≥ {rate(TARGET_BULK_PAIRS_S)} pairs/s | {text} | "
            f"{verdict(best >= TARGET_BULK_PAIRS_S)} |"
        )
    if "single pair, c32" in served:
        runs = served["single pair, c32"]
        req_s, p99 = median(runs, "req_s"), median(runs, "p99_ms")
        rows.append(
            f"| single pairs at c32 ≥ {TARGET_SINGLE_C32_REQ_S:,} req/s with p99 ≤ "
            f"{TARGET_SINGLE_C32_P99_MS:.0f} ms | {rate(req_s)} req/s, p99 {ms(p99)} ms | "
            f"{verdict(req_s >= TARGET_SINGLE_C32_REQ_S and p99 <= TARGET_SINGLE_C32_P99_MS)} |"
        )
    topk = f"top-{TOP_K}, c1"
    if topk in served:
        p50 = median(served[topk], "p50_ms")
        unbatched = f"{topk}, bulk registration"
        extra = (
            f"; {ms(median(served[unbatched], 'p50_ms'))} ms without dynamic batching" if unbatched in served else ""
        )
        rows.append(
            f"| top-K p50 ≤ {TARGET_TOPK_P50_MS:.0f} ms (served, c1) | {ms(p50)} ms{extra} | "
            f"{verdict(p50 <= TARGET_TOPK_P50_MS)} |"
        )
    if not rows:
        return []
    return ["## Targets", "", "| target (this 2-core machine) | measured (median) | |", "|---|---|---|", *rows, ""]


def inprocess_section(data: dict | None) -> list[str]:
    """Section 1: the model and the request pipeline without a server."""
    if not data:
        return ["## 1. In-process", "", "Not measured in this run.", ""]
    lines = [
        "## 1. In-process (1 torch thread, `gc.freeze()`)",
        "",
        "| path | batch | pairs/s | calls/s | p50 ms per call | p99 ms per call | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, runs in data["configs"].items():
        name, batch = key.split("|")
        pairs = spread(runs, "pairs_s", rate) if runs[0]["pairs_s"] else "–"
        target = ""
        if name.startswith("`recommend"):
            target = f"p50 ≤ {TARGET_TOPK_P50_MS:.0f} ms: {verdict(median(runs, 'p50_ms') <= TARGET_TOPK_P50_MS)}"
        lines.append(
            f"| {name} | {batch} | {pairs} | {spread(runs, 'calls_s', rate)} | "
            f"{spread(runs, 'p50_ms', ms)} | {spread(runs, 'p99_ms', ms)} | {target} |"
        )
    st = data["stages_10k_ms"]
    total = sum(st.values())
    lines += [
        "",
        "Where the time of one 10k-pair JSON body goes (`parse` → `infer` → `render`, p50): "
        + ", ".join(f"{k} {ms(v)} ms ({v / total:.0%})" for k, v in st.items())
        + f"; total {ms(total)} ms.",
        "",
    ]
    return lines


def served_section(data: dict | None) -> list[str]:
    """Section 2: through a real TorchServe with wrk."""
    if not data:
        return ["## 2. Served through TorchServe", "", "Not measured in this run.", ""]
    if "skipped" in data:
        return ["## 2. Served through TorchServe", "", f"**Skipped:** {data['skipped']}", ""]
    config = data["model_config"]
    delay = config.get("maxBatchDelay", 100)
    batching = (
        f"{config.get('minWorkers', 1)} worker, batchSize {config.get('batchSize', 1)}, " f"maxBatchDelay {delay} ms"
    )
    lines = [
        f"## 2. Served through TorchServe ({batching})",
        "",
        "| request, concurrency | req/s | pairs/s | p50 ms | p99 ms | non-2xx | server CPU ms/req (JVM + worker) | "
        "log B/req | noise cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cfg in SERVED:
        runs = data["configs"].get(cfg.name)
        if not runs:
            continue
        pairs = spread(runs, "pairs_s", rate) if cfg.pairs else "–"
        errors = sum(run["non2xx"] + run["socket_errors"] for run in runs)
        lines.append(
            f"| {cfg.name} | {spread(runs, 'req_s', rate)} | {pairs} | {spread(runs, 'p50_ms', ms)} | "
            f"{spread(runs, 'p99_ms', ms)} | {errors:.0f} | {cpu_split(runs)} | "
            f"{median(runs, 'log_bytes_req'):.1f} | {median(runs, 'noise_cores'):.2f} |"
        )
    warm_errors = sum(w["status_errors"] for w in data["warmup"])
    warm_requests = sum(w["requests"] for w in data["warmup"])
    lines += [
        "",
        f"- JVM warm-up: {warm_requests:,.0f} requests, {warm_errors:.0f} non-2xx answers"
        + ("." if not warm_errors else " (**the server refused requests during warm-up**)."),
        "- non-2xx counts HTTP errors (status ≥ 400) and socket errors over the warm-up and measurement of each "
        "configuration, all rounds.",
        f"- Server log growth over all measured traffic: {data['log_bytes_per_request']:.2f} bytes per request "
        f"({data['requests_measured']:,.0f} requests).",
        f"- At c1 every request (single pair or top-K) waits the full maxBatchDelay ({delay} ms) for companions "
        "that never arrive, so its p50 is that delay plus the request cost (compare `recommend` in section 1).",
        "",
    ]
    return lines


def cpu_split(runs: list[dict]) -> str:
    """Server CPU per request, and how it splits between the Java frontend and the Python worker."""
    total, frontend = median(runs, "server_cpu_ms_req"), median(runs, "frontend_cpu_ms_req")
    return f"{ms(total)} ({ms(frontend)} + {ms(total - frontend)})"


def csv_section(data: dict | None) -> list[str]:
    """Section 3: the batch-scoring client over a large CSV."""
    title = "## 3. Batch scoring of a CSV through the client (`client.scoring.score_csv`)"
    if not data:
        return [title, "", "Not measured in this run.", ""]
    if "skipped" in data:
        return [title, "", f"**Skipped:** {data['skipped']}", ""]
    st = data["settings"]
    return [
        title,
        "",
        "| rows | rows/s | scoring s | wall s (incl. registering and scaling `movierec-batch`) | rows with errors | "
        "server CPU s | client CPU s | noise cores |",
        "|---|---|---|---|---|---|---|---|",
        f"| {data['rows']:,} | {rate(data['rows_s'])} | {data['scoring_s']:.1f} | {data['wall_s']:.1f} | "
        f"{data['rows_with_errors']:,} | {data['server_cpu_s']:.1f} | {data['client_cpu_s']:.1f} | "
        f"{data['noise_cores']:.2f} |",
        "",
        f"Client defaults: {st['workers']} batch workers, batch_size {st['batch_size']}, max_batch_delay "
        f"{st['max_batch_delay']} ms; the output had {data['output_rows']:,} rows. One run (not repeated per round). "
        "Server and client CPU cover the whole call, including starting the batch workers.",
        "",
    ]


# -- command line -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The bench.py command line; unset timing options take the --quick or full defaults."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, default=REPO / "artifacts" / "v1.0", help="artifact directory")
    p.add_argument(
        "--mar-store",
        type=Path,
        help="serve an existing archive from this model store (default: "
        "build one from the working tree and --artifacts into WORK_DIR/model_store with `make mar`)",
    )
    p.add_argument("--mar", default="movierec-1.0.mar", help="archive inside --mar-store (only with --mar-store)")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="report to write")
    p.add_argument("--work-dir", type=Path, default=REPO / "bench_out", help="run dir, bodies, CSVs, results.json")
    p.add_argument("--quick", action="store_true", help="one short round: proves the setup, noisy numbers")
    p.add_argument("--rounds", type=int, help=f"rounds (full {FULL.rounds}, quick {QUICK.rounds})")
    p.add_argument(
        "--duration", type=int, help=f"s per served measurement (full {FULL.duration}, quick " f"{QUICK.duration})"
    )
    p.add_argument("--warmup", type=int, help=f"s of traffic before each served measurement (full {FULL.warmup})")
    p.add_argument(
        "--jvm-warmup",
        type=int,
        help=f"s of mixed traffic after start (full {FULL.jvm_warmup}, " f"quick {QUICK.jvm_warmup})",
    )
    p.add_argument("--inprocess-seconds", type=float, help=f"s per in-process config (full {FULL.inprocess_seconds})")
    p.add_argument("--csv-rows", type=int, help=f"rows in the batch-scoring CSV (default {FULL.csv_rows:,})")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections and write the report."""
    args = parse_args(argv)
    base = QUICK if args.quick else FULL
    s = Settings(**{k: getattr(args, k) if getattr(args, k) is not None else v for k, v in asdict(base).items()})
    sections = args.sections.split(",")
    work_dir = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full",
        "command": " ".join([os.path.relpath(sys.executable, Path.cwd()), *sys.argv]),
        "settings": asdict(s),
        "machine": machine_info(),
        "load_start": load_average(),
    }
    print(f"loading {args.artifacts}", flush=True)
    service = load_service(args.artifacts)
    bodies = make_bodies(service, np.random.default_rng(SEED))

    if "inprocess" in sections:
        results["inprocess"] = bench_inprocess(service, bodies, s)
    wrk = ensure_wrk() if "served" in sections else None
    results["machine"]["wrk"] = machine_info()["wrk"]  # it may have just been installed
    if "served" in sections and wrk is None:
        message = "wrk is not installed: run `sudo apt-get install wrk` (Debian/Ubuntu) and rerun."
        print(message, file=sys.stderr)
        results["served"] = {"skipped": message}
    if wrk is not None or "csv" in sections:
        run_dir = work_dir / "ts"
        torchserve.stop(run_dir)  # a previous interrupted run may have left its instance behind
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"starting TorchServe from {run_dir}", flush=True)
        if args.mar_store is None:
            store = work_dir / "model_store"
            print(f"building the archive from the working tree into {store}", flush=True)
            mar = build_mar(args.artifacts, BENCH_VERSION, store).name
        else:
            store, mar = args.mar_store, args.mar
        results["archive"] = str(store / mar)
        server = torchserve.start(run_dir, store, [f"{MODEL}={mar}"], ports=torchserve.Ports.free(), timeout=180)
        try:
            if wrk is not None:
                files = write_body_files(bodies, work_dir / "bodies")
                results["served"] = bench_served(server, store / mar, service, bodies, files, s)
            if "csv" in sections:
                print(f"batch scoring a {s.csv_rows:,}-row CSV through the client", flush=True)
                results["csv"] = bench_csv(server, service, work_dir, s.csv_rows)
        finally:
            torchserve.stop(run_dir)
    results["load_end"] = load_average()
    (work_dir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    args.out.write_text(report(results), encoding="utf-8")
    print(f"wrote {args.out} and {work_dir / 'results.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
