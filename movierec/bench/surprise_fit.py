"""Fit Surprise SVD and SVD++ (defaults) on a training CSV; write held-out predictions and user/movie factors.

Runs in its own venv (`make install-surprise`: scikit-surprise builds from source and needs numpy<2),
so it imports only the standard library, numpy and surprise; movierec/bench/accuracy.py runs it as a
subprocess and applies the protocol (unknown IDs, clipping, top-K exclusions) to what it writes:

    OUT/surprise.json   {"surprise": version, "models": {name: {"fit_s", "predictions": [per test row]}}}
    OUT/NAME.npz        user_ids, movie_ids (raw), user_vec, user_bias, movie_vec, movie_bias: a movie's
                        score for a user is user_bias + movie_bias + user_vec . movie_vec (SVD++: user_vec
                        includes the implicit term |N(u)|^-1/2 * sum of y_j over the movies u rated)
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np


def read_rows(path: Path) -> list[tuple[str, str, float]]:
    """(user id, movie id, rating) of a user_id,movie_id,rating[,...] CSV with a header."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        return [(u, m, float(r)) for u, m, r, *_ in reader]


def factors(algo, trainset, implicit: bool) -> dict[str, np.ndarray]:
    """The fitted model as raw IDs and arrays (inner order), SVD++'s implicit term folded into user_vec."""
    user_vec = np.array(algo.pu, dtype=np.float64)
    if implicit:
        for u in range(trainset.n_users):
            rated = [j for j, _ in trainset.ur[u]]
            user_vec[u] += np.asarray(algo.yj)[rated].sum(0) / np.sqrt(len(rated))
    return {
        "user_ids": np.array([trainset.to_raw_uid(u) for u in range(trainset.n_users)]),
        "movie_ids": np.array([trainset.to_raw_iid(i) for i in range(trainset.n_items)]),
        "user_vec": user_vec,
        "user_bias": np.asarray(algo.bu, dtype=np.float64),
        "movie_vec": np.asarray(algo.qi, dtype=np.float64),
        "movie_bias": np.asarray(algo.bi, dtype=np.float64),
    }


def main(argv: list[str] | None = None) -> int:
    """Fit each model, predict every test row, write surprise.json and one .npz per model."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=Path, required=True, help="training CSV (user_id,movie_id,rating[,timestamp])")
    p.add_argument("--test", type=Path, required=True, help="held-out CSV, same columns")
    p.add_argument("--scale", type=float, nargs=2, required=True, metavar=("MIN", "MAX"), help="rating range")
    p.add_argument("--models", nargs="+", default=["svd", "svdpp"], choices=("svd", "svdpp"))
    p.add_argument("--out", type=Path, required=True, help="folder for surprise.json and the .npz files")
    args = p.parse_args(argv)

    import surprise

    reader = surprise.Reader(line_format="user item rating", sep=",", skip_lines=1, rating_scale=tuple(args.scale))
    trainset = surprise.Dataset.load_from_file(str(args.train), reader).build_full_trainset()
    test = read_rows(args.test)
    args.out.mkdir(parents=True, exist_ok=True)
    models = {}
    for name in args.models:
        algo = surprise.SVD(random_state=0) if name == "svd" else surprise.SVDpp(random_state=0)
        t0 = time.perf_counter()
        algo.fit(trainset)
        fit_s = time.perf_counter() - t0
        predictions = [algo.predict(u, m).est for u, m, _ in test]
        np.savez(args.out / f"{name}.npz", **factors(algo, trainset, implicit=name == "svdpp"))
        models[name] = {"fit_s": fit_s, "predictions": predictions}
        print(f"surprise {name}: fitted in {fit_s:.1f}s", flush=True)
    summary = {"surprise": surprise.__version__, "numpy": np.__version__, "models": models}
    (args.out / "surprise.json").write_text(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
