"""GPU check: train on a device, then compare the serve path there with the CPU one.

This is the one script to run on a machine with CUDA (no TorchServe or Java needed there):

    python -m movierec.bench.gpu_check --device cuda --out gpu_out

It trains with train.py's defaults on the chosen device, loads the artifact through the handler
the way TorchServe does on an assigned GPU (gpu_id 0), and checks that every reply of a mixed
batch (single pairs, instances, top-K, bad requests) matches the CPU handler: same statuses,
ratings within model.core.PARITY_TOL plus the answers' rounding step, the same top-K movies.
It also times in-process scoring on both devices.
With --device cpu it runs the same code end to end, which is how the tests keep it working.
With --scale-ratings N it trains on ML-25M-shaped generated data of N ratings instead (the scale
path: 25000095 is ML-25M's size) and reports the validation RMSE against the data's known floor.
Results go to OUT/gpu_check.json and a Markdown summary to stdout and OUT/gpu_check.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

import train
from handler.movierec_handler import MovierecHandler
from model.artifact import load_artifact
from model.core import PARITY_TOL, Recommender
from model.protocol import SCORE_DECIMALS, ServiceOptions
from movierec.bench.settings import TOP_K
from movierec.bench.timing import p50_ms
from movierec.flags import add_renamed
from movierec.paths import REPO
from movierec.testing import LocalContext
from movierec.torchserve.archive import load_model_config

# Answers carry ratings rounded to SCORE_DECIMALS: rounding moves each by up to half a step, so two within
# PARITY_TOL of each other answer up to PARITY_TOL plus one step apart; 1e-9 is room for binary floats
# (3.1235 - 3.1234 is a little over 0.0001).
ANSWER_TOL = PARITY_TOL + 10.0**-SCORE_DECIMALS + 1e-9

# As TorchServe passes it to the handler: the archive's model-config YAML.
HANDLER_OPTIONS = load_model_config()


def mixed_batch(users: list, movies: list, rng: np.random.Generator) -> list[bytes]:
    """Requests of every kind the endpoint takes, bad ones among them."""
    pick = lambda ids: ids[int(rng.integers(len(ids)))]  # noqa: E731
    bodies: list[object] = [{"user_id": pick(users), "movie_id": pick(movies)} for _ in range(8)]
    bodies.append({"instances": [{"user_id": pick(users), "movie_id": pick(movies)} for _ in range(5000)]})
    bodies += [{"user_id": pick(users), "top_k": TOP_K} for _ in range(8)]
    bodies += [{"user_id": "no-such-user", "movie_id": pick(movies)}, {"top_k": TOP_K}, b"{not json"]
    return [b if isinstance(b, bytes) else json.dumps(b).encode() for b in bodies]


def load_handler(model_dir: Path, gpu_id: int | None) -> MovierecHandler:
    """A handler initialized the way TorchServe does it, on the CPU (gpu_id None) or an assigned GPU."""
    handler = MovierecHandler()
    handler.initialize(LocalContext(model_dir, gpu_id=gpu_id, version="gpu-check", model_yaml_config=HANDLER_OPTIONS))
    return handler


def answers(handler: MovierecHandler, bodies: list[bytes]) -> list[tuple[int, dict]]:
    """(HTTP status, decoded JSON) of each reply to one batch."""
    ctx = LocalContext(".")
    replies = handler.handle([{"body": b} for b in bodies], ctx)
    return [(ctx.status(i), json.loads(r)) for i, r in enumerate(replies)]


def handler_parity(model_dir: Path, gpu_id: int | None, bodies: list[bytes]) -> dict:
    """Load the handler twice, on the CPU and on the device, and compare their answers to the same batch."""
    cpu_handler = load_handler(model_dir, None)
    dev_handler = load_handler(model_dir, gpu_id)
    if dev_handler.service is cpu_handler.service:
        raise RuntimeError("the CPU and device handlers share one model: the parity check would compare it with itself")
    cpu, dev = answers(cpu_handler, bodies), answers(dev_handler, bodies)
    return {**compare(cpu, dev), "requests": len(bodies), "statuses": sorted({s for s, _ in cpu})}


def compare(cpu: list, dev: list) -> dict:
    """Largest rating difference and every mismatch in status, errors, instances or top-K movies."""
    worst, problems = 0.0, []
    for i, ((s1, a1), (s2, a2)) in enumerate(zip(cpu, dev, strict=True)):
        if s1 != s2 or a1.get("error") != a2.get("error"):
            problems.append(f"request {i}: {s1} {a1.get('error')!r} on cpu, {s2} {a2.get('error')!r} on device")
        if "rating" in a1 and "rating" in a2:
            worst = max(worst, abs(a1["rating"] - a2["rating"]))
        worst = max(worst, compare_instances(i, a1.get("predictions", []), a2.get("predictions", []), problems))
        if "recommendations" in a1:
            worst = max(worst, compare_top_k(i, a1["recommendations"], a2.get("recommendations", []), problems))
    if worst > ANSWER_TOL:
        problems.append(f"largest rating difference {worst:.2e} > {ANSWER_TOL:.2g} (rounded answers)")
    return {"max_abs_diff": worst, "problems": problems}


def compare_instances(i: int, cpu: list[dict], dev: list[dict], problems: list[str]) -> float:
    """Largest rating difference over the instances of request i; mismatched counts or errors go to problems."""
    if len(cpu) != len(dev):
        problems.append(f"request {i}: {len(cpu)} predictions on cpu, {len(dev)} on device")
    worst = 0.0
    for j, (p1, p2) in enumerate(zip(cpu, dev, strict=False)):
        if "rating" in p1 and "rating" in p2:
            worst = max(worst, abs(p1["rating"] - p2["rating"]))
        elif p1.get("error") != p2.get("error"):
            problems.append(f"request {i} instance {j}: {p1.get('error')!r} on cpu, {p2.get('error')!r} on device")
    return worst


def compare_top_k(i: int, cpu: list[dict], dev: list[dict], problems: list[str]) -> float:
    """Largest score difference of request i's recommendations; different movies go to problems."""
    m1, m2 = [r["movie_id"] for r in cpu], [r["movie_id"] for r in dev]
    if m1 != m2:
        problems.append(f"request {i}: top-K {m1} on cpu, {m2} on device")
    return max([0.0, *(abs(r1["score"] - r2["score"]) for r1, r2 in zip(cpu, dev, strict=False))])


def timings(rec: Recommender, n_pairs: int, repeat: int, rng: np.random.Generator) -> dict:
    """p50 of factorised scoring of n_pairs random pairs and of one top-10, on the recommender's device."""
    u = rng.integers(len(rec.artifact.users), size=n_pairs)
    m = rng.integers(len(rec.artifact.movies), size=n_pairs)
    score = p50_ms(lambda: rec.predict(u, m), repeat)
    top = p50_ms(lambda: rec.recommend(int(u[0]), TOP_K), repeat)
    return {f"predict_{n_pairs}_pairs_p50_ms": score, "pairs_per_s": n_pairs / score * 1e3, "top10_p50_ms": top}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The gpu_check command line."""
    p = argparse.ArgumentParser(prog="python -m movierec.bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="device to check against the CPU (default cuda)")
    p.add_argument("--out", type=Path, default=REPO / "gpu_out", help="directory for the artifact and results")
    p.add_argument("--ratings", help="ratings file (default: the embedded MovieLens 100K)")
    p.add_argument("--train-args", default="", help="extra train.py arguments, e.g. '--epochs 2'")
    p.add_argument(
        "--scale-ratings",
        type=int,
        metavar="N",
        help="train on generated ML-25M-shaped data of N ratings (movierec.datagen; removed afterwards)",
    )
    p.add_argument("--pairs", type=int, default=100_000, help="pairs per timed predict call")
    p.add_argument("--calls", type=int, default=50, help="timed calls per measurement")
    add_renamed(p, "--repeat", "--calls", type=int)
    return p.parse_args(argv)


def train_on(device: torch.device, artifact_dir: Path, args: argparse.Namespace) -> dict:
    """Train with train.py's defaults (plus --train-args) on the device; its metrics and wall time."""
    train_argv = ["--out", str(artifact_dir), "--device", device.type, "--quiet", *args.train_args.split()]
    if args.ratings:
        train_argv += ["--ratings", args.ratings]
    started = time.perf_counter()
    metrics = train.train(train.parse_args(train_argv))
    wall = time.perf_counter() - started
    return {
        "device": device.type,
        "wall_s": round(wall, 1),
        "fit_s": metrics["train_seconds"],
        "val_rmse": metrics["val_rmse"],
        "epochs": len(metrics.get("history", [])),
    }


def scale_data(n_ratings: int, folder: Path) -> dict:
    """Generate ML-25M-shaped ratings of that size into folder; the generator's report."""
    from movierec.datagen import generate, shape_for

    started = time.perf_counter()
    report = generate(shape_for(n_ratings), folder, quiet=True)
    return {"ratings": n_ratings, "rmse_floor": report["rmse_floor"], "generate_s": time.perf_counter() - started}


def train_maybe_scaled(device: torch.device, artifact_dir: Path, args: argparse.Namespace) -> tuple[dict, dict | None]:
    """train_on, first generating --scale-ratings data when asked; (training result, scale result or None)."""
    if not args.scale_ratings:
        return train_on(device, artifact_dir, args), None
    folder = args.out / "scale_data"
    scale = scale_data(args.scale_ratings, folder)
    args.ratings = str(folder / "ratings.csv")
    try:
        trained = train_on(device, artifact_dir, args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    meta = load_artifact(artifact_dir).metadata
    epoch_s = float(np.median([h["seconds"] for h in meta["metrics"]["history"]]))
    scale.update(gap=trained["val_rmse"] - scale["rmse_floor"], ratings_per_s=meta["counts"]["train"] / epoch_s)
    return trained, scale


def summary(result: dict, args: argparse.Namespace) -> str:
    """The Markdown summary of one check."""
    trained, parity, device = result["train"], result["handler_parity"], args.device
    lines = [
        f"GPU check on {result['device']} (torch {result['torch']}): "
        f"`python -m movierec.bench.gpu_check --device {device}`",
        "",
        f"- training on {trained['device']}: val RMSE {trained['val_rmse']:.4f}, fit {trained['fit_s']:.1f} s "
        f"({trained['wall_s']:.1f} s with loading and export)",
        *scale_lines(result),
        f"- handler on {device} vs CPU over {parity['requests']} mixed requests: max rating diff "
        f"{parity['max_abs_diff']:.1e}, {len(parity['problems'])} problem(s)",
        f"- factorised scoring vs TorchScript at load on {device}: {result['device_load_parity']:.1e}",
    ]
    for name, t in result["timings"].items():
        lines.append(
            f"- {name}: {args.pairs:,} pairs p50 {t[f'predict_{args.pairs}_pairs_p50_ms']:.2f} ms "
            f"({t['pairs_per_s'] / 1e6:.1f} M pairs/s), top-10 p50 {t['top10_p50_ms']:.3f} ms"
        )
    lines += [f"  - {problem}" for problem in parity["problems"]]
    return "\n".join(lines) + "\n"


def scale_lines(result: dict) -> list[str]:
    """The summary lines of a --scale-ratings run (none without)."""
    if "scale" not in result:
        return []
    scale, trained = result["scale"], result["train"]
    return [
        f"- scale path: {scale['ratings']:,} generated ratings ({scale['generate_s']:.1f} s), "
        f"val RMSE {trained['val_rmse']:.4f} vs floor {scale['rmse_floor']:.4f} (gap {scale['gap']:+.4f}), "
        f"{scale['ratings_per_s']:,.0f} ratings/s per epoch"
    ]


def main(argv: list[str] | None = None) -> int:
    """Train on the device, check handler parity with the CPU, time both; 1 when they disagree."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: CUDA is not available here", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # as the handler does
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.out / "mar"
    artifact_dir = model_dir / "artifact"
    trained, scale = train_maybe_scaled(device, artifact_dir, args)

    rng = np.random.default_rng(0)
    art = load_artifact(artifact_dir)
    bodies = mixed_batch(list(art.users.ids), list(art.movies.ids), rng)
    gpu_id = (device.index or 0) if device.type == "cuda" else None
    parity = handler_parity(model_dir, gpu_id, bodies)

    min_ratings = ServiceOptions.from_config(HANDLER_OPTIONS.get("handler")).min_movie_ratings
    cpu_rec = Recommender(art, device="cpu", min_movie_ratings=min_ratings)
    dev_art = load_artifact(artifact_dir, map_location=device)
    dev_rec = Recommender(dev_art, device=device, min_movie_ratings=min_ratings)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "train": trained,
        **({"scale": scale} if scale else {}),
        "handler_parity": parity,
        "device_load_parity": dev_rec.parity,
        "timings": {
            "cpu": timings(cpu_rec, args.pairs, args.calls, rng),
            device.type: timings(dev_rec, args.pairs, args.calls, rng),
        },
    }
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    text = summary(result, args)
    (args.out / "gpu_check.md").write_text(text)
    print(text)
    return 1 if parity["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
