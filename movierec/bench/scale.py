"""Scale benchmark: generate -> load -> train -> .mar -> score in process -> (optionally) serve -> recommend-all.

    python -m movierec.bench.scale --sizes 1000000 5000000 25000095 --out bench_scale [--serve] [--train-args '--epochs 5']

Each size gets ML-25M-shaped synthetic data (movierec.datagen: users and movies scaled with the
ratings, so 25,000,095 ratings is ML-25M's shape) with a known RMSE floor. Loading and training run
as child processes, so each has its own peak RSS. Results go to OUT/scale.json, a "Scale" Markdown
section to OUT/scale.md and cost vs data size to OUT/scale.png. Generated data lives in a temporary
folder (--work; training prints to WORK/rN/train.log) that is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from movierec.bench.settings import TOP_K, Settings
from movierec.bench.timing import p50_ms
from movierec.datagen import generate, users_estimated_rmse
from movierec.datagen import shape_for as shape_for  # ML-25M's shape at a size, re-exported for callers
from movierec.defaults import BATCH_MODEL, MODEL, VERSION
from movierec.flags import add_renamed, whole_seconds
from movierec.paths import REPO


def run_child(argv: list[str], log: Path) -> tuple[str, float, float]:
    """Run a Python child to the end, stdout to log (to follow a long run): (stdout, wall s, peak RSS MB)."""
    started = time.perf_counter()
    with open(log, "wb") as out:
        done = subprocess.run([sys.executable, *argv], cwd=REPO, stdout=out, stderr=subprocess.PIPE)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({done.returncode}):\n{done.stderr.decode()[-2000:]}")
    text = log.read_text()
    # RUSAGE_CHILDREN is a maximum over every child so far, so the child reports its own peak.
    peak = json.loads(text.strip().splitlines()[-1])["peak_rss_mb"]
    return text, wall, peak


def child_peak_rss() -> None:
    """Print this process's peak RSS as the last stdout line (read by run_child).

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent, which here holds
    the previous size's model, while VmHWM belongs to the address space exec() gave this process.
    """
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.exists() else []
    kib = next((int(line.split()[1]) for line in lines if line.startswith("VmHWM:")), None)
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mb": round(kib / 1024, 1)}))


def measure_load(ratings: Path) -> dict:
    """load_ratings plus the ID codes train.py uses, in a fresh process: seconds and peak RSS."""
    out, _, peak = run_child(["-m", "movierec.bench.scale", "--load-only", str(ratings)], ratings.parent / "load.log")
    return {"load_s": json.loads(out.splitlines()[0])["load_s"], "load_peak_rss_mb": peak}


def load_only(ratings: Path) -> None:
    """The child side of measure_load."""
    from model.data import load_ratings

    started = time.perf_counter()
    data = load_ratings(ratings)
    data.codes("user_id"), data.codes("movie_id")
    print(json.dumps({"load_s": round(time.perf_counter() - started, 2)}))
    child_peak_rss()


def measure_train(ratings: Path, artifact: Path, train_args: list[str]) -> dict:
    """train.py with its default recipe (plus train_args) in a fresh process: timings, RMSE, peak RSS."""
    argv = ["-c", "import sys, train; from movierec.bench.scale import child_peak_rss; "
            "code = train.main(sys.argv[1:]); child_peak_rss(); sys.exit(code)"]  # fmt: skip
    log = artifact.parent / "train.log"
    _, wall, peak = run_child([*argv, "--ratings", str(ratings), "--out", str(artifact), "--quiet", *train_args], log)
    meta = json.loads((artifact / "metadata.json").read_text())
    metrics, history = meta["metrics"], meta["metrics"]["history"]
    per_epoch = [h["seconds"] for h in history]
    return {
        "train_wall_s": round(wall, 1),
        "train_peak_rss_mb": peak,
        "epochs": len(history),
        "epoch_s": round(float(np.median(per_epoch)), 2),
        "ratings_per_s": round(meta["counts"]["train"] / float(np.median(per_epoch))),
        "val_rmse": metrics["val_rmse"],
        "val_rmse_by_epoch": [round(h["val_rmse"], 4) for h in history],
        "batch_size": meta["train"]["batch_size"],
        "recipe": {k: meta["train"][k] for k in ("epochs", "batch_size", "lr", "wd", "n_factors", "nh", "p1", "p2")},
        "device": metrics["device"],
        "rank_epoch_s": round(float(np.median([h["seconds"] for h in meta["ranker"]["history"]])), 1),
        "rank_plan": meta["ranker"]["plan"],
        "val_recall": metrics["val_recall@10"],
        "popular_recall": metrics["val_recall@10_most_popular"],
    }


def measure_mar(artifact: Path, store: Path) -> dict:
    """build_mar: seconds and archive size."""
    from movierec.torchserve.archive import build_mar

    started = time.perf_counter()
    mar = build_mar(artifact, VERSION, store)
    return {"mar_s": round(time.perf_counter() - started, 2), "mar_mb": round(mar.stat().st_size / 2**20, 1)}


def measure_inprocess(artifact: Path, repeat: int, pairs: int, recommend_all: bool = False) -> dict:
    """Recommender load time, top-10 p50 over all movies, bulk pairs/s (and top-10 for every user), on 1 thread."""
    from model.artifact import load_artifact
    from model.core import Recommender
    from model.protocol import ServiceOptions
    from movierec.torchserve.archive import load_model_config

    torch.set_num_threads(1)
    started = time.perf_counter()
    options = ServiceOptions.from_config(load_model_config().get("handler"))
    rec = Recommender(load_artifact(artifact), min_movie_ratings=options.min_movie_ratings)
    load_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    users = rng.integers(len(rec.artifact.users), size=repeat + 1)
    calls = iter(users.tolist() * 2)
    top = p50_ms(lambda: rec.recommend(next(calls), TOP_K), repeat)
    u, m = rng.integers(len(rec.artifact.users), size=pairs), rng.integers(len(rec.artifact.movies), size=pairs)
    bulk = p50_ms(lambda: rec.predict(u, m), max(3, repeat // 10))
    row = {"recommender_load_s": round(load_s, 2), "top10_p50_ms": top, "pairs_per_s": round(pairs / bulk * 1e3)}
    if recommend_all:  # recommend-all's work without the server: Recommender.recommend_many, no output file
        every = np.arange(len(rec.artifact.users))
        started = time.perf_counter()
        for start in range(0, len(every), 1000):
            rec.recommend_many(every[start : start + 1000], TOP_K)
        wall = time.perf_counter() - started
        row.update(recommend_all_s=round(wall, 4), recommend_all_users_per_s=round(len(every) / wall))
    return row


def measure_served(store: Path, artifact: Path, seconds: int, work: Path, warmup: int | None = None) -> dict:
    """TorchServe on free ports in a temp run dir: one worker of the unbatched registration, then recommend-all.

    That registration (movierec-batch: batch size 1) answers a lone request at once instead of waiting
    maxBatchDelay for companions; its worker's start-up and RSS are measured, then top-10 p50 through it.
    """
    from movierec import torchserve
    from movierec.torchserve.processes import workers

    unbatched = BATCH_MODEL
    users = json.loads((artifact / "users.json").read_text())
    run_dir = Path(tempfile.mkdtemp(prefix="scale-run-", dir="/tmp"))
    server = torchserve.start(run_dir, store, [], ports=torchserve.Ports.free(), timeout=600)
    try:
        started = time.perf_counter()
        with server.client(timeout=600) as api:
            api.scale(VERSION, 1, model=unbatched)
        startup = time.perf_counter() - started
        rss = (
            max(p.memory_info().rss for p in workers(server.pid)) / 2**20
        )  # the served model's worker and this one: alike
        rng = np.random.default_rng(1)
        asked = [{"user_id": users[i], "top_k": TOP_K} for i in rng.integers(len(users), size=500).tolist()]
        row = {"worker_startup_s": round(startup, 1), "worker_rss_mb": round(rss)}
        bodies = [json.dumps(body).encode() for body in asked]
        row.update(served_p50(server, bodies, seconds, work, unbatched, warmup))
        row.update(served_recommend_all(server, work / "recommendations.parquet"))
    finally:
        torchserve.stop(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
    return row


def served_p50(
    server, bodies: list[bytes], seconds: int, work: Path, model: str = MODEL, warmup: int | None = None
) -> dict:
    """Top-10 p50 at concurrency 1 after `warmup` s of the same traffic (default seconds / 3): wrk with
    post.lua, as `make bench`, else Python http.client.
    """
    warm = max(1, seconds // 3) if warmup is None else max(1, warmup)
    from movierec.bench.pyload import closed_loop

    if shutil.which("wrk"):
        from movierec.bench.load import run_wrk

        (work / "top10.jsonl").write_bytes(b"\n".join(bodies) + b"\n")
        run_wrk(server, work / "top10.jsonl", 1, warm, model=model)
        found = run_wrk(server, work / "top10.jsonl", 1, seconds, model=model)
        p50, by = found["p50_us"] / 1e3, "wrk -c1"
    else:
        url = f"{server.inference_url}/predictions/{model}"
        headers = {**server.auth(), "Content-Type": "application/json"}
        closed_loop(url, bodies, headers, 1, warm)
        found = closed_loop(url, bodies, headers, 1, seconds)
        p50, by = found["p50_ms"], "http.client, 1 connection"
    if found["status_errors"]:  # the latency of error answers is not the latency of top-10
        raise RuntimeError(f"served top-10: {found['status_errors']:.0f} error answers from {model}")
    return {"served_top10_p50_ms": round(p50, 2), "served_by": by, "served_warmup_s": warm}


def served_recommend_all(server, output: Path) -> dict:
    """`movierec recommend-all` for every user (the client's recommend_all, movierec-batch workers): time, users/s."""
    from movierec.client.api import MovieRecClient
    from movierec.client.recommend_all import RecommendOptions, recommend_all

    started = time.perf_counter()
    with MovieRecClient(server.inference_url, server.management_url, key_file=server.key_file) as client:
        done = recommend_all(client, output, options=RecommendOptions(top_k=TOP_K), progress=False)
    wall = time.perf_counter() - started
    return {"recommend_all_s": round(wall, 1), "recommend_all_users_per_s": round(done.users_done / wall, 1)}


def measure_size(n_ratings: int, work: Path, args: argparse.Namespace) -> dict:
    """Every stage at one size; the size's folder is removed afterwards unless --keep."""
    folder = work / f"r{n_ratings}"
    cfg = shape_for(n_ratings)
    cfg.seed = args.seed
    print(f"== {n_ratings:,} ratings ({cfg.n_users:,} users, {cfg.n_movies:,} movies)", flush=True)
    started = time.perf_counter()
    gen = generate(cfg, folder / "data", quiet=True)
    row = {"ratings": n_ratings, "users": cfg.n_users, "movies": cfg.n_movies, "rmse_floor": gen["rmse_floor"]}
    row["generate_s"] = round(time.perf_counter() - started, 1)
    row["csv_mb"] = round((folder / "data" / "ratings.csv").stat().st_size / 2**20, 1)
    row.update(measure_load(folder / "data" / "ratings.csv"))
    print(f"   load {row['load_s']} s, peak RSS {row['load_peak_rss_mb']} MB; training", flush=True)
    row.update(measure_train(folder / "data" / "ratings.csv", folder / "artifact", args.train_args.split()))
    row["gap_to_floor"] = round(row["val_rmse"] - row["rmse_floor"], 4)
    row["users_estimated_rmse"] = round(users_estimated_rmse(folder / "data"), 4)
    row["load_avg"] = round(os.getloadavg()[1], 1)  # 5-minute, at the end of training: the CPU is shared
    print(f"   val RMSE {row['val_rmse']:.4f} (floor {row['rmse_floor']:.4f}), {row['epoch_s']} s/epoch", flush=True)
    store = folder / "model_store"
    store.mkdir()
    row.update(measure_mar(folder / "artifact", store))
    row.update(measure_inprocess(folder / "artifact", args.calls, args.pairs, recommend_all=not args.serve))
    if args.serve:
        row.update(measure_served(store, folder / "artifact", args.duration, folder, args.warmup))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return row


COLUMNS = [  # (key, header, format)
    ("ratings", "ratings", "{:,}"),
    ("users", "users", "{:,}"),
    ("movies", "movies", "{:,}"),
    ("generate_s", "generate s", "{:.1f}"),
    ("load_s", "load s", "{:.1f}"),
    ("load_peak_rss_mb", "load peak RSS MB", "{:,.0f}"),
    ("epoch_s", "train s/epoch", "{:.1f}"),
    ("ratings_per_s", "ratings/s", "{:,}"),
    ("train_peak_rss_mb", "train peak RSS MB", "{:,.0f}"),
    ("val_rmse", "val RMSE", "{:.4f}"),
    ("rmse_floor", "floor", "{:.4f}"),
    ("gap_to_floor", "gap", "{:+.4f}"),
    ("users_estimated_rmse", "movies known", "{:.4f}"),
    ("rank_epoch_s", "ranker s/epoch", "{:.1f}"),
    ("val_recall", "val recall@10", "{:.3f}"),
    ("popular_recall", "most popular", "{:.3f}"),
    ("mar_s", ".mar s", "{:.1f}"),
    ("mar_mb", ".mar MB", "{:.1f}"),
    ("top10_p50_ms", "top-10 p50 ms", "{:.2f}"),
    ("pairs_per_s", "pairs/s", "{:,}"),
    ("worker_startup_s", "worker start s", "{:.1f}"),
    ("worker_rss_mb", "worker RSS MB", "{:,}"),
    ("served_top10_p50_ms", "served top-10 p50 ms", "{:.2f}"),
    ("recommend_all_s", "recommend-all s", "{:,.1f}"),
    ("recommend_all_users_per_s", "recommend-all users/s", "{:,}"),
    ("load_avg", "load avg", "{:.1f}"),
]


def render(result: dict) -> str:
    """The "Scale" Markdown section: how it was run, one table row per size, the recipe per size."""
    rows = sorted(result["sizes"], key=lambda r: r["ratings"])
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    lines = [
        "## Scale",
        "",
        f"Synthetic MovieLens-25M-shaped data (movierec.datagen; users and movies scaled with the ratings), "
        f"`{result['command']}` on {result['machine']}, torch {result['torch']}, {result['threads']} torch threads "
        f"for training unless --threads is in the train arguments; load average {result['load_before']} before, {result['load_after']} after. "
        "Training is train.py's default recipe plus the train arguments in the command; `floor` is the generator's best possible RMSE "
        "and `gap` how far the model's validation RMSE is above it; `movies known` is the validation RMSE of the planted movies with "
        "each user estimated from their training ratings (`datagen.users_estimated_rmse`), the nearest to the floor a model that must "
        "learn users from this many ratings can be expected to come. `val recall@10` is train.py's, of the served top-10 lists "
        "(the ranker), next to a most-popular list's. In-process scoring uses the handler's "
        "one thread: top-10 over all movies, and bulk pairs/s of `Recommender.predict`. " + served_text(rows),
        "",
        "| " + " | ".join(c[1] for c in cols) + " |",
        "|" + "|".join("---:" for _ in cols) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[k]) if k in r else "" for k, _, fmt in cols) + " |")
    lines.append("")
    for r in rows:
        by_epoch = ", ".join(f"{v:.4f}" for v in r["val_rmse_by_epoch"])
        recipe = ", ".join(f"{k} {v}" for k, v in r["recipe"].items())
        plan = ", ".join(
            f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.get("rank_plan", {}).items()
        )
        ranker = f"; ranker: {plan}" if plan else ""
        lines.append(f"- {r['ratings']:,} ratings: {recipe}; val RMSE by epoch {by_epoch}{ranker}")
    return "\n".join(lines) + "\n"


def served_text(rows: list[dict]) -> str:
    """How the served figures and recommend-all were measured."""
    if not any("served_by" in r for r in rows):
        return "recommend-all is `Recommender.recommend_many` over every user, in process on one thread."
    warm = f"{rows[0]['served_warmup_s']} s" if "served_warmup_s" in rows[0] else "a third as long"
    return (
        f"Served top-10: one worker of the registration without batching (movierec-batch), p50 by {rows[0]['served_by']} "
        f"(closed loop), after {warm} of the same traffic. recommend-all: `movierec recommend-all` (the client's `recommend_all`, Arrow requests "
        "of 500 users) for every user to Parquet, through the movierec-batch registration's workers; its "
        "seconds include their start."
    )


def plot(rows: list[dict], path: Path) -> None:
    """Cost vs data size (log-log): seconds, memory and latency per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["ratings"] for r in rows]
    panels = [
        ("seconds", [("generate_s", "generate"), ("load_s", "load"), ("epoch_s", "train epoch"), ("mar_s", ".mar")]),
        ("MB", [("load_peak_rss_mb", "load RSS"), ("train_peak_rss_mb", "train RSS"), ("mar_mb", ".mar size"),
                ("worker_rss_mb", "worker RSS")]),
        ("ms", [("top10_p50_ms", "top-10 in process"), ("served_top10_p50_ms", "top-10 served")]),
    ]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (unit, series) in zip(axes, panels, strict=True):
        for key, label in series:
            if all(key in r for r in rows):
                ax.plot(x, [max(r[key], 1e-3) for r in rows], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("ratings")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("movierec cost vs data size")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The bench-scale command line."""
    p = argparse.ArgumentParser(prog="python -m movierec.bench.scale", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 25_000_095], help="ratings per run")
    p.add_argument("--out", type=Path, default=REPO / "bench_scale", help="folder for scale.json/.md/.png")
    p.add_argument("--train-args", default="", help="extra train.py arguments, e.g. '--epochs 3'")
    p.add_argument("--serve", action="store_true", help="also start TorchServe per size (worker start-up, RSS, p50)")
    p.add_argument("--calls", type=int, default=200, help="timed calls per in-process latency measurement")
    p.add_argument("--duration", type=whole_seconds, default=10, help="measured time of served top-10 (after --warmup)")
    add_renamed(p, "--seconds", "--duration", type=int)
    # A fresh worker at 59k movies answered top-10 in 2.9 ms p50 after 4 s of traffic and 2.0 ms after 30 s.
    p.add_argument(
        "--warmup",
        type=whole_seconds,
        default=Settings().jvm_warmup,
        help="seconds of top-10 traffic before the served measurement (default: make bench's JVM warm-up)",
    )
    p.add_argument("--pairs", type=int, default=100_000, help="pairs per bulk predict call")
    p.add_argument("--seed", type=int, default=0, help="datagen seed")
    p.add_argument("--work-dir", type=Path, help="folder for generated data (default: a new one under /tmp)")
    add_renamed(p, "--repeat", "--calls", type=int)
    add_renamed(p, "--work", "--work-dir", type=Path)
    p.add_argument("--keep", action="store_true", help="keep the generated data and artifacts")
    p.add_argument("--load-only", type=Path, help=argparse.SUPPRESS)  # the child of measure_load
    args = p.parse_args(argv)
    if min(args.sizes) < 1000:
        p.error("--sizes: at least 1000 ratings each")
    return args


def write_results(result: dict, out: Path) -> str:
    """OUT/scale.json, scale.md and scale.png from the sizes measured so far; returns the Markdown."""
    result["load_after"] = round(os.getloadavg()[0], 2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(result)
    (out / "scale.md").write_text(text)
    plot(sorted(result["sizes"], key=lambda r: r["ratings"]), out / "scale.png")
    return text


def main(argv: list[str] | None = None) -> int:
    """Measure every size, then write OUT/scale.json, scale.md and scale.png."""
    args = parse_args(argv)
    if args.load_only:
        load_only(args.load_only)
        return 0
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="movierec-scale-", dir="/tmp"))
    result = {
        "command": "python -m movierec.bench.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_before": round(os.getloadavg()[0], 2),
    }
    result["sizes"] = []
    try:
        for n in args.sizes:  # in the order given: the one that matters most can go first
            result["sizes"].append(measure_size(n, work, args))
            write_results(result, args.out)  # after each size, so a long run shows what it has so far
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = write_results(result, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
