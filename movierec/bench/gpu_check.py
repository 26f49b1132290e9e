"""GPU check: train on a device, then compare the serve path there with the CPU one.

This is the one script to run on a machine with CUDA (no TorchServe or Java needed there):

    python bench/gpu_check.py --device cuda --out gpu_out

It trains with train.py's defaults on the chosen device, loads the artifact through the handler
the way TorchServe does on an assigned GPU (gpu_id 0), and checks that every reply of a mixed
batch (single pairs, instances, top-K, bad requests) matches the CPU handler: same statuses,
ratings within 1e-4, the same top-K movies. It also times in-process scoring on both devices.
With --device cpu it runs the same code end to end, which is how the tests keep it working.
Results go to OUT/gpu_check.json and a Markdown summary to stdout and OUT/gpu_check.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import train
from handler.movierec_handler import MovierecHandler
from model.artifact import load_artifact
from model.core import Recommender
from movierec.paths import REPO

RATING_TOL = 1e-4


class Context:
    """The parts of TorchServe's context the handler reads, with a GPU id like TorchServe's."""

    def __init__(self, model_dir: Path, gpu_id: int | None):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id, "batch_size": 32}
        self.manifest = {"model": {"modelName": "movierec", "modelVersion": "gpu-check"}}
        self.model_yaml_config = {"handler": {"min_movie_ratings": 20}}
        self.statuses: dict[int, int] = {}

    def set_response_status(self, code=200, phrase="", idx=0):
        self.statuses[idx] = code

    def set_response_content_type(self, idx, value):
        pass


def mixed_batch(users: list, movies: list, rng: np.random.Generator) -> list[bytes]:
    """Requests of every kind the endpoint takes, bad ones among them."""
    pick = lambda ids: ids[int(rng.integers(len(ids)))]  # noqa: E731
    bodies: list[object] = [{"user_id": pick(users), "movie_id": pick(movies)} for _ in range(8)]
    bodies.append({"instances": [{"user_id": pick(users), "movie_id": pick(movies)} for _ in range(5000)]})
    bodies += [{"user_id": pick(users), "top_k": 10} for _ in range(8)]
    bodies += [{"user_id": "no-such-user", "movie_id": pick(movies)}, {"top_k": 10}, b"{not json"]
    return [b if isinstance(b, bytes) else json.dumps(b).encode() for b in bodies]


def answers(handler: MovierecHandler, model_dir: Path, gpu_id: int | None, bodies: list[bytes]):
    ctx = Context(model_dir, gpu_id)
    replies = handler.handle([{"body": b} for b in bodies], ctx)
    return [(ctx.statuses.get(i, 200), json.loads(r)) for i, r in enumerate(replies)]


def compare(cpu: list, dev: list) -> dict:
    """Largest rating difference and every mismatch in status, errors or top-K movies."""
    worst, problems = 0.0, []
    for i, ((s1, a1), (s2, a2)) in enumerate(zip(cpu, dev, strict=True)):
        if s1 != s2 or a1.get("error") != a2.get("error"):
            problems.append(f"request {i}: {s1} {a1.get('error')!r} on cpu, {s2} {a2.get('error')!r} on device")
        pairs = [(a1, a2)] + list(zip(a1.get("predictions", []), a2.get("predictions", []), strict=False))
        for p1, p2 in pairs:
            if "rating" in p1:
                worst = max(worst, abs(p1["rating"] - p2["rating"]))
        if "recommendations" in a1:
            m1 = [r["movie_id"] for r in a1["recommendations"]]
            m2 = [r["movie_id"] for r in a2["recommendations"]]
            scores = [
                abs(r1["score"] - r2["score"])
                for r1, r2 in zip(a1["recommendations"], a2["recommendations"], strict=False)
            ]
            worst = max([worst, *scores])
            if m1 != m2:
                problems.append(f"request {i}: top-K {m1} on cpu, {m2} on device")
    if worst > RATING_TOL:
        problems.append(f"largest rating difference {worst:.2e} > {RATING_TOL:g}")
    return {"max_abs_diff": worst, "problems": problems}


def p50_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def timings(rec: Recommender, n_pairs: int, repeat: int, rng: np.random.Generator) -> dict:
    u = rng.integers(len(rec.artifact.users), size=n_pairs)
    m = rng.integers(len(rec.artifact.movies), size=n_pairs)
    score = p50_ms(lambda: rec.predict(u, m), repeat)
    top = p50_ms(lambda: rec.recommend(int(u[0]), 10), repeat)
    return {f"predict_{n_pairs}_pairs_p50_ms": score, "pairs_per_s": n_pairs / score * 1e3, "top10_p50_ms": top}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="device to check against the CPU (default cuda)")
    p.add_argument("--out", type=Path, default=REPO / "gpu_out", help="directory for the artifact and results")
    p.add_argument("--ratings", help="ratings file (default: the embedded MovieLens 100K)")
    p.add_argument("--train-args", default="", help="extra train.py arguments, e.g. '--epochs 2'")
    p.add_argument("--pairs", type=int, default=100_000, help="pairs per timed predict call")
    p.add_argument("--repeat", type=int, default=50, help="timed calls per measurement")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: CUDA is not available here", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # as the handler does
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.out / "mar"
    artifact_dir = model_dir / "artifact"

    train_argv = ["--out", str(artifact_dir), "--device", device.type, "--quiet", *args.train_args.split()]
    if args.ratings:
        train_argv += ["--ratings", args.ratings]
    started = time.perf_counter()
    metrics = train.train(train.parse_args(train_argv))
    train_wall = time.perf_counter() - started

    rng = np.random.default_rng(0)
    art = load_artifact(artifact_dir)
    bodies = mixed_batch(list(art.users.ids), list(art.movies.ids), rng)
    cpu_handler, dev_handler = MovierecHandler(), MovierecHandler()
    cpu_handler.initialize(Context(model_dir, None))
    gpu_id = (device.index or 0) if device.type == "cuda" else None
    dev_handler.initialize(Context(model_dir, gpu_id))
    parity = compare(answers(cpu_handler, model_dir, None, bodies), answers(dev_handler, model_dir, gpu_id, bodies))

    cpu_rec = Recommender(art, device="cpu", min_movie_ratings=20)
    dev_rec = Recommender(load_artifact(artifact_dir, map_location=device), device=device, min_movie_ratings=20)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "train": {
            "device": device.type,
            "wall_s": round(train_wall, 1),
            "fit_s": metrics["train_seconds"],
            "val_rmse": metrics["val_rmse"],
            "epochs": len(metrics.get("history", [])),
        },
        "handler_parity": parity,
        "device_load_parity": dev_rec.parity,
        "timings": {
            "cpu": timings(cpu_rec, args.pairs, args.repeat, rng),
            device.type: timings(dev_rec, args.pairs, args.repeat, rng),
        },
    }
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"GPU check on {result['device']} (torch {result['torch']}): `python bench/gpu_check.py --device {args.device}`",
        "",
        f"- training on {device.type}: val RMSE {metrics['val_rmse']:.4f}, fit {metrics['train_seconds']:.1f} s "
        f"({train_wall:.1f} s with loading and export)",
        f"- handler on {device} vs CPU over {len(bodies)} mixed requests: max rating diff "
        f"{parity['max_abs_diff']:.1e}, {len(parity['problems'])} problem(s)",
        f"- factorised scoring vs TorchScript at load on {device}: {dev_rec.parity:.1e}",
    ]
    for name, t in result["timings"].items():
        lines.append(
            f"- {name}: {args.pairs:,} pairs p50 {t[f'predict_{args.pairs}_pairs_p50_ms']:.2f} ms "
            f"({t['pairs_per_s'] / 1e6:.1f} M pairs/s), top-10 p50 {t['top10_p50_ms']:.3f} ms"
        )
    lines += [f"  - {problem}" for problem in parity["problems"]]
    report = "\n".join(lines) + "\n"
    (args.out / "gpu_check.md").write_text(report)
    print(report)
    return 1 if parity["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
