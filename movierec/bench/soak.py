"""`make soak`: mixed traffic at fixed concurrency against a real TorchServe while sampling its memory.

N threads, each with one keep-alive connection, send single pairs, 1k-pair bodies, top-K requests
and some bad requests in a fixed shuffled order (closed loop). Every --sample-every the RSS of the Java
frontend and of every worker is sampled. The report counts unexpected statuses (anything but 200 for
a good body, anything but the in-process service's 4xx for a bad one), gives p50/p99 per kind and the
RSS growth after the warm-up (samples before --warmup are excluded). It writes soak.json,
a PNG of the memory curve, and the `## Soak` section of BENCHMARKS.md (only that section).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sys
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psutil

from model.service import RatingService
from movierec import torchserve
from movierec.bench.inprocess import load_service, make_bodies
from movierec.bench.markdown import put_section
from movierec.bench.meter import load_average
from movierec.bench.settings import BENCH_VERSION, MODEL, SEED
from movierec.bench.timing import percentiles_ms
from movierec.flags import add_renamed, duration, minutes
from movierec.paths import REPO
from movierec.torchserve.archive import build_mar
from movierec.torchserve.processes import is_frontend, workers

# Share of requests per kind: mostly single pairs and top-K, some bulk bodies, some bad requests.
MIX = {"single": 60, "bulk1k": 10, "topk": 20, "bad": 10}
SCHEDULE_LEN = 1000
# Bodies a careless or hostile client sends; each must get the 4xx the in-process service gives it.
BAD_BODIES = (
    b"{not json",
    b'{"user_id": 1}',
    b'{"user_id": 1, "movie_id": 2, "rating": 3}',
    b'{"user_id": 1, "top_k": 0}',
    b'{"instances": 7}',
    b"[1, 2, 3]",
)


@dataclass
class Tally:
    """What the load threads saw: latencies per kind, status counts per kind, unexpected ones, socket errors."""

    latencies: dict[str, array] = field(default_factory=lambda: {k: array("d") for k in MIX})
    statuses: Counter = field(default_factory=Counter)  # (kind, status) -> count
    unexpected: Counter = field(default_factory=Counter)  # (kind, status) -> count
    socket_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def soak_requests(service: RatingService, rng: np.random.Generator) -> dict[str, list[tuple[bytes, int]]]:
    """(body, expected status) per kind: good bodies expect 200, bad ones the service's own 4xx."""
    bodies = make_bodies(service, rng)
    out = {kind: [(body, 200) for body in bodies[kind]] for kind in MIX if kind != "bad"}
    out["bad"] = [(body, service.handle_batch([body])[0].status) for body in BAD_BODIES]
    wrong = [(body, status) for body, status in out["bad"] if not 400 <= status < 500]
    if wrong:
        raise RuntimeError(f"a bad soak body is not refused with a 4xx in-process: {wrong[0]}")
    return out


def schedule(rng: np.random.Generator) -> list[str]:
    """The kinds in the order the threads send them (each thread starts at its own offset)."""
    kinds = list(MIX)
    weights = np.array([MIX[k] for k in kinds], dtype=float)
    return [kinds[i] for i in rng.choice(len(kinds), SCHEDULE_LEN, p=weights / weights.sum())]


def load_thread(url: str, token: str, reqs: dict, order: list[str], slot: int, stop: threading.Event, tally: Tally):
    """One closed-loop connection: send the next request of the schedule, check its status, repeat."""
    parts = urlsplit(url)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    i = slot * 37
    while not stop.is_set():
        kind = order[i % len(order)]
        body, expected = reqs[kind][i % len(reqs[kind])]
        i += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", parts.path, body, headers)
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            with tally.lock:
                tally.socket_errors += 1
            conn.close()
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            continue
        elapsed = time.perf_counter() - t0
        with tally.lock:
            tally.latencies[kind].append(elapsed)
            tally.statuses[(kind, resp.status)] += 1
            if resp.status != expected:
                tally.unexpected[(kind, resp.status)] += 1
    conn.close()


def rss_sample(server_pid: int) -> dict[str, int]:
    """RSS bytes of the frontend ("frontend") and of each model worker ("worker PID")."""
    try:
        frontend = psutil.Process(server_pid) if is_frontend(server_pid) else None
    except psutil.Error:
        frontend = None
    if frontend is None:
        return {}
    procs = {"frontend": frontend, **{f"worker {p.pid}": p for p in workers(server_pid)}}
    out = {}
    for name, proc in procs.items():
        try:
            out[name] = proc.memory_info().rss
        except psutil.Error:
            continue
    return out


def run_soak(server, service: RatingService, seconds: float, sample_s: float, connections: int) -> dict:
    """Drive the mixed traffic for `seconds`, sampling RSS every `sample_s`; the raw tally and samples."""
    rng = np.random.default_rng(SEED)
    reqs, order = soak_requests(service, rng), schedule(rng)
    url = f"{server.inference_url}/predictions/{MODEL}"
    tally, stop = Tally(), threading.Event()
    args = (url, server.token("inference"), reqs, order)
    threads = [threading.Thread(target=load_thread, args=(*args, n, stop, tally)) for n in range(connections)]
    started = time.perf_counter()
    samples = [{"t_s": 0.0, "load": load_average(), "rss": rss_sample(server.pid)}]
    for t in threads:
        t.start()
    try:
        while (now := time.perf_counter() - started) < seconds:
            time.sleep(min(sample_s - now % sample_s, seconds - now))
            samples.append(
                {"t_s": time.perf_counter() - started, "load": load_average(), "rss": rss_sample(server.pid)}
            )
    finally:
        stop.set()
        for t in threads:
            t.join()
    return {"tally": tally, "samples": samples, "wall_s": time.perf_counter() - started}


def growth(samples: list[dict], warmup_s: float) -> dict[str, dict]:
    """Per process: RSS at the first and last sample after the warm-up, growth in %, and the peak."""
    after = [s for s in samples if s["t_s"] >= warmup_s]
    out = {}
    for name in sorted({name for s in samples for name in s["rss"]}):
        series = [s["rss"][name] for s in after if name in s["rss"]]
        if len(series) < 2:
            out[name] = {"first_mb": None, "last_mb": None, "growth_pct": None, "peak_mb": None}
            continue
        out[name] = {
            "first_mb": series[0] / 2**20,
            "last_mb": series[-1] / 2**20,
            "growth_pct": (series[-1] - series[0]) / series[0] * 100,
            "peak_mb": max(series) / 2**20,
        }
    return out


def summarize(raw: dict, warmup_s: float, connections: int) -> dict:
    """The report's numbers: counts, unexpected statuses, p50/p99 per kind, RSS growth after the warm-up."""
    tally: Tally = raw["tally"]
    kinds = {}
    for kind, lat in tally.latencies.items():
        times = np.frombuffer(lat, dtype=float) if len(lat) else np.zeros(1)
        kinds[kind] = {
            "requests": len(lat),
            **percentiles_ms(times),
            "statuses": {str(s): n for (k, s), n in sorted(tally.statuses.items()) if k == kind},
        }
    every = np.concatenate([np.frombuffer(lat, dtype=float) for lat in tally.latencies.values()] + [np.zeros(0)])
    every = every if len(every) else np.zeros(1)
    return {
        "connections": connections,
        "wall_s": raw["wall_s"],
        "warmup_s": warmup_s,
        "requests": sum(k["requests"] for k in kinds.values()),
        **percentiles_ms(every),
        "kinds": kinds,
        "unexpected": {f"{k} {s}": n for (k, s), n in sorted(tally.unexpected.items())},
        "socket_errors": tally.socket_errors,
        "samples": raw["samples"],
        "growth": growth(raw["samples"], warmup_s),
    }


def plot(summary: dict, png: Path) -> None:
    """The RSS of each process over time, with the warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name in summary["growth"]:
        points = [(s["t_s"] / 60, s["rss"][name] / 2**20) for s in summary["samples"] if name in s["rss"]]
        ax.plot(*zip(*points, strict=True), marker=".", label=name)
    ax.axvspan(0, summary["warmup_s"] / 60, color="0.9", label="warm-up (excluded)")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"movierec soak: RSS at concurrency {summary['connections']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def section(summary: dict, png_name: str) -> str:
    """The `## Soak` Markdown section."""
    minutes, warm = summary["wall_s"] / 60, summary["warmup_s"] / 60
    unexpected = sum(summary["unexpected"].values())
    lines = [
        "## Soak",
        "",
        f"Generated by `make soak` on {summary['date']}: {minutes:.1f} minutes of mixed traffic at concurrency "
        f"{summary['connections']} ({', '.join(f'{k} {v}%' for k, v in MIX.items())}) against {summary['server']}. "
        f"Load average {summary['load_start']} at the start, {summary['load_end']} at the end.",
        "",
        f"- {summary['requests']:,} requests, p50 {summary['p50_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms; "
        f"**{unexpected} unexpected statuses**{' (' + str(summary['unexpected']) + ')' if unexpected else ''}, "
        f"{summary['socket_errors']} socket errors.",
        "",
        "| kind | requests | p50 ms | p99 ms | statuses |",
        "|---|---|---|---|---|",
    ]
    for kind, k in summary["kinds"].items():
        statuses = ", ".join(f"{s}: {n:,}" for s, n in k["statuses"].items())
        lines.append(f"| {kind} | {k['requests']:,} | {k['p50_ms']:.2f} | {k['p99_ms']:.2f} | {statuses} |")
    lines += [
        "",
        f"RSS after the {warm:.1f}-minute warm-up (growth from the first to the last sample after it):",
        "",
        "| process | first MiB | last MiB | growth | peak MiB |",
        "|---|---|---|---|---|",
    ]
    for name, g in summary["growth"].items():
        if g["growth_pct"] is None:
            lines.append(f"| {name} | – | – | too few samples after the warm-up | – |")
            continue
        lines.append(
            f"| {name} | {g['first_mb']:.0f} | {g['last_mb']:.0f} | {g['growth_pct']:+.1f}% | {g['peak_mb']:.0f} |"
        )
    lines += ["", f"![RSS over the soak]({png_name})", ""]
    return "\n".join(lines)


def start_server(args: argparse.Namespace) -> tuple[torchserve.Server, Path | None]:
    """A running server: the one in --run-dir, or a fresh one on the archive of --artifacts (then its run dir)."""
    if args.run_dir:
        server = torchserve.running(args.run_dir)
        if server is None:
            raise SystemExit(f"no TorchServe is running from {args.run_dir}: start it with `make serve`")
        return server, None
    work_dir = args.work_dir.resolve()
    run_dir = work_dir / "ts"
    torchserve.stop(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    mar = build_mar(args.artifacts, BENCH_VERSION, work_dir / "model_store")
    print(f"starting TorchServe from {run_dir} on {mar.name}", flush=True)
    server = torchserve.start(run_dir, mar.parent, [f"{MODEL}={mar.name}"], ports=torchserve.Ports.free())
    return server, run_dir


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The soak's command line."""
    p = argparse.ArgumentParser(prog="python -m movierec.bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, default=REPO / "artifacts" / "v1.0", help="artifact the server serves")
    p.add_argument("--run-dir", type=Path, help="soak the TorchServe running from this dir (default: start one)")
    p.add_argument("--duration", type=duration, default=20 * 60, help="length of the soak: 90s, 20m, 1h (default 20m)")
    add_renamed(p, "--minutes", "--duration", type=minutes)
    p.add_argument(
        "--warmup", type=duration, default=5 * 60, help="first part excluded from the RSS growth (default 5m)"
    )
    add_renamed(p, "--warmup-minutes", "--warmup", type=minutes)
    p.add_argument("--sample-every", type=duration, default=30.0, help="time between RSS samples (default 30s)")
    add_renamed(p, "--sample-s", "--sample-every", type=float)
    p.add_argument("--connections", type=int, default=16, help="concurrent keep-alive connections")
    p.add_argument("--work-dir", type=Path, default=REPO / "bench_out" / "soak", help="soak.json and the run dir")
    p.add_argument(
        "--report", type=Path, default=REPO / "BENCHMARKS.md", help="report whose `## Soak` section to write"
    )
    add_renamed(p, "--out", "--report", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Soak, then write soak.json, the PNG and the `## Soak` section; exit 1 on any unexpected status."""
    args = parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    service = load_service(args.artifacts)
    server, own_run_dir = start_server(args)
    load_start = load_average()
    try:
        print(f"soaking {server.inference_url} for {args.duration / 60:g} min at c{args.connections}", flush=True)
        raw = run_soak(server, service, args.duration, args.sample_every, args.connections)
    finally:
        if own_run_dir is not None:
            torchserve.stop(own_run_dir)
    summary = summarize(raw, args.warmup, args.connections)
    summary.update(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        server="a fresh TorchServe started as `make serve` does" if own_run_dir else f"the server in {args.run_dir}",
        load_start=load_start,
        load_end=load_average(),
    )
    (args.work_dir / "soak.json").write_text(json.dumps(summary, indent=1) + "\n")
    png = args.report.with_name(f"{args.report.stem}-soak.png")
    plot(summary, png)
    old = args.report.read_text(encoding="utf-8") if args.report.exists() else ""
    args.report.write_text(put_section(old, section(summary, png.name)), encoding="utf-8")
    unexpected = sum(summary["unexpected"].values()) + summary["socket_errors"]
    print(f"wrote {args.report}, {png} and {args.work_dir / 'soak.json'}; {unexpected} unexpected answers", flush=True)
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
