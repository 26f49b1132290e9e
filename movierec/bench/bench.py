"""Measure movierec in-process, through a real TorchServe, and batch CSV scoring; write BENCHMARKS.md.

Method (the serving-performance notes shared with the team): 1 torch thread and gc.freeze() as in the
handler; wrk from Debian with rotating pre-built bodies; a JVM warm-up before any served number;
several interleaved rounds, medians reported; busy CPU from /proc/stat recorded as noise.
The measuring lives in inprocess.py, load.py (wrk) and pyload.py (Arrow bodies), the noise meter in meter.py,
the Markdown in report.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import torch

from model.service import RatingService
from movierec import torchserve
from movierec.bench import load
from movierec.bench.inprocess import bench_inprocess, load_service, make_bodies
from movierec.bench.markdown import keep_others
from movierec.bench.meter import load_average
from movierec.bench.peer import Peer, start_peer
from movierec.bench.report import owns, report
from movierec.bench.settings import BENCH_VERSION, FULL, MODEL, QUICK, SECTIONS, SEED, Settings
from movierec.defaults import VERSION, archive_file
from movierec.flags import add_renamed, duration, whole_seconds
from movierec.paths import REPO
from movierec.torchserve.archive import build_mar


def version_of(cmd: list[str]) -> str:
    """First line a program prints about its version, or "not found"."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return ((done.stdout or "") + (done.stderr or "")).strip().splitlines()[0]


def machine_info() -> dict:
    """CPU model, cores, RAM and the versions that matter for these numbers."""
    import ts.version

    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem_kb = int(re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M).group(1))
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
        "wrk": wrk_version(),
        "torch_threads_env": os.environ.get("MOVIEREC_TORCH_THREADS", "unset (handler uses 1)"),
    }


def wrk_version() -> str:
    """The wrk version, or "not installed"."""
    return version_of(["wrk", "--version"]).split(" [")[0] if shutil.which("wrk") else "not installed"


def command_line() -> str:
    """How this run was started, as a user would retype it."""
    program = os.path.relpath(sys.argv[0])
    # A console script runs as itself; a plain file needs the interpreter in front.
    if program.endswith(".py"):
        program = f"{os.path.relpath(sys.executable)} {program}"
    return " ".join([program, *sys.argv[1:]])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The movierec-bench command line; unset timing options take the --quick or full defaults."""
    p = argparse.ArgumentParser(prog="movierec-bench", description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, default=REPO / "artifacts" / f"v{VERSION}", help="artifact directory")
    p.add_argument(
        "--mar-store",
        type=Path,
        help="serve an existing archive from this model store (default: build one from the working tree "
        "and --artifacts into WORK_DIR/model_store)",
    )
    p.add_argument("--mar", default=archive_file(VERSION), help="archive inside --mar-store (only with --mar-store)")
    p.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md", help="report to write")
    add_renamed(p, "--out", "--report", type=Path)
    p.add_argument("--work-dir", type=Path, default=REPO / "bench_out", help="run dir, bodies, CSVs, results.json")
    p.add_argument("--quick", action="store_true", help="one short round: proves the setup, noisy numbers")
    p.add_argument("--rounds", type=int, help=f"rounds (full {FULL.rounds}, quick {QUICK.rounds})")
    p.add_argument(
        "--duration",
        type=whole_seconds,
        help=f"s per served measurement (full {FULL.duration}, quick {QUICK.duration})",
    )
    p.add_argument(
        "--warmup", type=whole_seconds, help=f"s of traffic before each served measurement (full {FULL.warmup})"
    )
    p.add_argument(
        "--jvm-warmup",
        type=whole_seconds,
        help=f"s of mixed traffic after start (full {FULL.jvm_warmup}, quick {QUICK.jvm_warmup})",
    )
    p.add_argument(
        "--inprocess-seconds", type=duration, help=f"s per in-process config (full {FULL.inprocess_seconds})"
    )
    p.add_argument("--csv-rows", type=int, help=f"rows in the batch-scoring CSV (default {FULL.csv_rows:,})")
    p.add_argument("--no-peer", action="store_true", help="do not run the FastAPI peer next to TorchServe")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    """The --quick or full defaults, overridden by the timing options given."""
    base = QUICK if args.quick else FULL
    return Settings(**{k: v if getattr(args, k) is None else getattr(args, k) for k, v in asdict(base).items()})


def run_served(
    args: argparse.Namespace, results: dict, service: RatingService, bodies: dict, s: Settings, wrk: bool
) -> None:
    """Start TorchServe on the archive, run the served and CSV sections asked for, and stop it."""
    work_dir = args.work_dir.resolve()
    run_dir = work_dir / "ts"
    torchserve.stop(run_dir)  # a previous interrupted run may have left its instance behind
    shutil.rmtree(run_dir, ignore_errors=True)
    if args.mar_store is None:
        store = work_dir / "model_store"
        print(f"building the archive from the working tree into {store}", flush=True)
        mar = build_mar(args.artifacts, BENCH_VERSION, store).name
    else:
        store, mar = args.mar_store, args.mar
    results["archive"] = str(store / mar)
    print(f"starting TorchServe from {run_dir}", flush=True)
    server = torchserve.start(run_dir, store, [f"{MODEL}={mar}"], ports=torchserve.Ports.free(), timeout=180)
    peer = None
    try:
        if wrk:
            peer, why_not = start_peer_or_explain(args, work_dir, results)
            files = load.write_body_files(bodies, work_dir / "bodies")
            results["served"] = load.bench_served(server, store / mar, service, bodies, files, s, peer)
            results["served"]["peer_skipped"] = why_not
            # Kept now: the served rounds take a quarter of an hour, and a later failure must not lose them.
            save_results(work_dir, results)
            if peer is not None:
                peer.stop()  # before the CSV jobs, which are TorchServe's alone
        if "csv" in args.sections.split(","):
            print(f"batch scoring a {s.csv_rows:,}-row CSV through the client", flush=True)
            results["csv"] = load.bench_csv(server, service, work_dir, s.csv_rows)
    finally:
        if peer is not None:
            peer.stop()
        torchserve.stop(run_dir)


def save_results(work_dir: Path, results: dict) -> None:
    """WORK_DIR/results.json, the raw figures the report is rendered from."""
    (work_dir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")


def start_peer_or_explain(args: argparse.Namespace, work_dir: Path, results: dict) -> tuple[Peer | None, str | None]:
    """The FastAPI peer on the same artifact, or None and why it does not run."""
    if args.no_peer:
        return None, "--no-peer was given."
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        message = "fastapi/uvicorn are not installed: run `make install-bench` (requirements-bench.txt) and rerun."
        print(message, file=sys.stderr)
        return None, message
    print("starting the FastAPI peer on the same artifact", flush=True)
    results["machine"]["peer"] = peer_versions()
    return start_peer(args.artifacts.resolve(), work_dir / "peer", BENCH_VERSION), None


def peer_versions() -> str:
    """FastAPI, uvicorn, uvloop and httptools versions, as one string."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("fastapi", "uvicorn", "uvloop", "httptools"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} missing")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections and write the report."""
    args = parse_args(argv)
    s = settings_from(args)
    sections = args.sections.split(",")
    work_dir = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full",
        "command": command_line(),
        "settings": asdict(s),
        "machine": machine_info(),
        "load_start": load_average(),
    }
    print(f"loading {args.artifacts}", flush=True)
    service = load_service(args.artifacts)
    bodies = make_bodies(service, np.random.default_rng(SEED))
    if "inprocess" in sections:
        results["inprocess"] = bench_inprocess(service, bodies, s)
    wrk = "served" in sections and load.ensure_wrk() is not None
    results["machine"]["wrk"] = wrk_version()  # it may have just been installed
    if "served" in sections and not wrk:
        message = "wrk is not installed: run `sudo apt-get install wrk` (Debian/Ubuntu) and rerun."
        print(message, file=sys.stderr)
        results["served"] = {"skipped": message}
    if wrk or "csv" in sections:
        run_served(args, results, service, bodies, s, wrk)
    results["load_end"] = load_average()
    save_results(work_dir, results)
    # Only our own sections: `## Scale` (make bench-scale) and `## Soak` (make soak) are kept as they are.
    old = args.report.read_text(encoding="utf-8") if args.report.exists() else ""
    args.report.write_text(keep_others(old, report(results), owns), encoding="utf-8")
    print(f"wrote {args.report} and {work_dir / 'results.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
