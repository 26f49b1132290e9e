"""Accuracy of movierec against reference recommenders on one held-out split; writes `## Accuracy` of BENCHMARKS.md.

    python -m movierec.bench.accuracy                         # ml-100k and ml-latest-small (make bench-accuracy)
    python -m movierec.bench.accuracy --datasets ml-100k --no-surprise
    python -m movierec.bench.accuracy --ratings ratings.csv --movies movies.csv --quick

Per dataset: a seeded random 10 % of the rating rows is held out and every model fits the other 90 %.
Rows: the global mean, the most popular movies, EASE^R, Surprise SVD and SVD++ (in their own venv,
movierec/bench/surprise_fit.py), and movierec trained by train.py with three recipes. Each gets the
RMSE over all held-out rows and recall@10 / NDCG@10 of its top-10 lists (model.metrics.top_k_metrics),
with the serving exclusions: movies the user rated in training, and movies with fewer than
MIN_MOVIE_RATINGS training ratings.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from model.metrics import RELEVANT_RATING, K, per_user_quality, popular_top_k, top_k_metrics
from model.protocol import MIN_MOVIE_RATINGS
from movierec.bench.markdown import put_section
from movierec.flags import add_renamed
from movierec.paths import REPO

DATASETS = ("ml-100k", "ml-latest-small")
TITLES = {"ml-100k": "MovieLens 100K", "ml-latest-small": "ml-latest-small (2016)"}
HOLD_OUT = 0.1
EASE_LAMBDAS = (50, 100, 200, 500, 1000)
SURPRISE_PYTHON = REPO / ".venv-surprise" / "bin" / "python"
SURPRISE_SCRIPT = Path(__file__).with_name("surprise_fit.py")
# The lesson's recipe; train.py's optimizer is AdamW with a one-cycle schedule where the lesson used plain Adam.
LESSON = "--n-factors 50 --nh 10 --p1 0.05 --p2 0.5 --wd 1e-5 --lr 1e-3 --batch-size 64 --epochs 3 --no-bias".split()
# train.py always fits a ranker too; the lesson's and the previous default's lists rank by rating, so their
# rankers get one epoch and are unused. The previous default is today's recipe with the lesson's architecture.
TRAIN_RUNS = {
    "lesson": [*LESSON, "--arch", "embedding-net", "--rank-epochs", "1"],
    "previous": ["--arch", "embedding-net", "--wd", "0.3", "--rank-epochs", "1"],
    "default": [],
}
QUICK = {"--epochs": "1", "--rank-epochs": "1"}  # --quick: these replace a recipe's own values
# Row id -> display name, in table order.
ROWS = {
    "global_mean": "global mean",
    "popular": "most popular",
    "ease": "EASE^R",
    "svd": "Surprise SVD",
    "svdpp": "Surprise SVD++",
    "lesson": "movierec, the lesson's recipe",
    "previous": "movierec, previous default (embedding-net, top-K by predicted rating)",
    "default": "movierec, new default (fused net; top-K by the ranker)",
}


@dataclass
class Split:
    """One dataset's held-out split, as integer codes of the IDs in the training part (-1: unknown there)."""

    name: str
    source: str
    user_ids: np.ndarray  # raw IDs, code order
    movie_ids: np.ndarray
    train_u: np.ndarray
    train_m: np.ndarray
    train_r: np.ndarray
    test_u: np.ndarray
    test_m: np.ndarray
    test_r: np.ndarray
    train_csv: Path
    test_csv: Path
    titles: Path | None

    @property
    def mean(self) -> float:
        """The training mean rating: the answer for unknown users and movies."""
        return float(self.train_r.mean())

    @property
    def scale(self) -> tuple[float, float]:
        """The rating range predictions are clipped to."""
        return float(self.train_r.min()), float(self.train_r.max())

    @property
    def known(self) -> np.ndarray:
        """Held-out rows whose user and movie are both in the training part."""
        return (self.test_u >= 0) & (self.test_m >= 0)

    @property
    def eval_users(self) -> np.ndarray:
        """Users whose lists are judged: known, with at least one relevant held-out rating."""

        return np.unique(self.test_u[(self.test_r >= RELEVANT_RATING) & (self.test_u >= 0)])


def make_split(name: str, ratings_path: Path, titles: Path | None, work: Path, seed: int) -> Split:
    """Load a ratings file, hold out HOLD_OUT of its rows, write train.csv and test.csv under work/name."""
    import pandas as pd

    from model.data import load_ratings, split_indices

    frame = load_ratings(ratings_path).frame
    tr, te = split_indices(len(frame), HOLD_OUT, seed)
    train, test = frame.iloc[tr], frame.iloc[te]
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    columns = ["user_id", "movie_id", "rating", "timestamp"]
    train_csv, test_csv = folder / "train.csv", folder / "test.csv"
    train[columns].to_csv(train_csv, index=False)
    test[columns].to_csv(test_csv, index=False)
    train_u, user_ids = pd.factorize(train["user_id"])
    train_m, movie_ids = pd.factorize(train["movie_id"])
    return Split(
        name=name,
        source=str(ratings_path),
        user_ids=np.asarray(user_ids, dtype=object),
        movie_ids=np.asarray(movie_ids, dtype=object),
        train_u=train_u.astype(np.int64),
        train_m=train_m.astype(np.int64),
        train_r=train["rating"].to_numpy(np.float64),
        test_u=user_ids.get_indexer(test["user_id"]).astype(np.int64),
        test_m=movie_ids.get_indexer(test["movie_id"]).astype(np.int64),
        test_r=test["rating"].to_numpy(np.float64),
        train_csv=train_csv,
        test_csv=test_csv,
        titles=titles,
    )


def held_out_rmse(split: Split, known_predictions: np.ndarray) -> float:
    """RMSE over all held-out rows: predictions for the known rows, the training mean elsewhere, clipped."""
    pred = np.full(len(split.test_r), split.mean)
    pred[split.known] = known_predictions
    pred = np.clip(pred, *split.scale)
    return float(np.sqrt(np.mean((pred - split.test_r) ** 2)))


def lists_from_scores(
    scores: np.ndarray, users: np.ndarray, seen: np.ndarray, eligible: np.ndarray, k: int
) -> dict[int, np.ndarray]:
    """Each user's k best-scored movies among the eligible ones they have not seen (scores: [users, movies])."""
    scores = np.where(seen[users] | ~eligible[None, :], -np.inf, scores)
    k = min(k, scores.shape[1])
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    lists = {}
    for i, u in enumerate(users.tolist()):
        row = best[i][np.argsort(-scores[i, best[i]], kind="stable")]
        lists[u] = row[np.isfinite(scores[i, row])]
    return lists


def rated_matrix(users: np.ndarray, movies: np.ndarray, n_users: int, n_movies: int) -> np.ndarray:
    """X: the dense binary user x movie matrix of who rated what (float32)."""
    x = np.zeros((n_users, n_movies), dtype=np.float32)
    x[users, movies] = 1.0
    return x


def ease_weights(x: np.ndarray, lam: float) -> np.ndarray:
    """EASE^R's item x item B: G = XᵀX + λI, P = G⁻¹, B = −P / diag(P) by column, diag(B) = 0."""
    g = x.T @ x
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = p / -np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    return b


def ease_lists(x: np.ndarray, lam: float, users: np.ndarray, eligible: np.ndarray, k: int) -> dict[int, np.ndarray]:
    """Top-k lists of EASE^R fitted on X with λ."""
    b = ease_weights(x, lam)
    return lists_from_scores(x[users] @ b, users, x > 0, eligible, k)


def eligible_movies(movies: np.ndarray, n_movies: int) -> np.ndarray:
    """Movies a list may hold: rated at least MIN_MOVIE_RATINGS times in training (the serving floor)."""

    return np.bincount(movies, minlength=n_movies) >= MIN_MOVIE_RATINGS


def ranking(split: Split, lists: dict[int, np.ndarray]) -> dict:
    """recall@K and NDCG@K of lists (user code -> movie codes) against the held-out ratings.

    "per_user" (user -> (recall, NDCG)) is for paired comparisons and is dropped before the JSON is written.
    """
    judged, recall, ndcg = per_user_quality(lists, split.test_u, split.test_m, split.test_r)
    per_user = dict(zip(judged, zip(recall.tolist(), ndcg.tolist(), strict=True), strict=True))
    return {**top_k_metrics(lists, split.test_u, split.test_m, split.test_r), "per_user": per_user}


def paired_gap(rows: dict, a: str, b: str) -> dict | None:
    """B - A in recall@K and NDCG@K over the users both judged, with 95 % user-bootstrap intervals (as ab-eval)."""
    from movierec.client.abstats import ranking_comparison

    if "per_user" not in rows.get(a, {}) or "per_user" not in rows.get(b, {}):
        return None
    users = sorted(rows[a]["per_user"].keys() & rows[b]["per_user"].keys())
    quality = [np.array([rows[name]["per_user"][u] for u in users]).reshape(-1, 2).T for name in (a, b)]
    cmp = ranking_comparison(tuple(quality[0]), tuple(quality[1]), k=K, paired=True)
    gap = {"users": len(users)}
    for metric, est in (("recall", cmp.recall), ("ndcg", cmp.ndcg)):
        gap[metric] = [round(est.diff, 4), round(est.ci_diff.low, 4), round(est.ci_diff.high, 4)]
    return gap


def reference_rows(split: Split, seed: int) -> dict[str, dict]:
    """Global mean, most popular and EASE^R (λ chosen on a validation slice of the training part)."""
    from model.data import split_indices

    n_users, n_movies, users = len(split.user_ids), len(split.movie_ids), split.eval_users
    rows = {"global_mean": {"rmse": held_out_rmse(split, np.full(split.known.sum(), split.mean)), "fit_s": 0.0}}
    t0 = time.perf_counter()
    popular = popular_top_k(split.train_u, split.train_m, n_movies, users, K, MIN_MOVIE_RATINGS)
    rows["popular"] = {**ranking(split, popular), "fit_s": time.perf_counter() - t0}

    # λ on a validation slice carved from the training part, judged by the same protocol.
    fit, val = split_indices(len(split.train_u), HOLD_OUT, seed)
    x_fit = rated_matrix(split.train_u[fit], split.train_m[fit], n_users, n_movies)
    eligible_fit = eligible_movies(split.train_m[fit], n_movies)
    val_u, val_m, val_r = split.train_u[val], split.train_m[val], split.train_r[val]
    val_users = np.unique(val_u[val_r >= RELEVANT_RATING])
    t0 = time.perf_counter()
    search = {}
    for lam in EASE_LAMBDAS:
        search[lam] = top_k_metrics(ease_lists(x_fit, lam, val_users, eligible_fit, K), val_u, val_m, val_r)[
            f"recall@{K}"
        ]
        print(f"  EASE^R λ {lam}: validation recall@{K} {search[lam]:.4f}", flush=True)
    search_s = time.perf_counter() - t0
    lam = max(search, key=search.get)
    t0 = time.perf_counter()
    x = rated_matrix(split.train_u, split.train_m, n_users, n_movies)
    lists = ease_lists(x, lam, users, eligible_movies(split.train_m, n_movies), K)
    rows["ease"] = {
        **ranking(split, lists),
        "fit_s": time.perf_counter() - t0,
        "lambda": lam,
        "search": {str(k): v for k, v in search.items()},
        "search_s": search_s,
    }
    return rows


def surprise_rows(split: Split, python: Path) -> dict[str, dict]:
    """Surprise SVD and SVD++ through movierec/bench/surprise_fit.py in its venv; {"error": ...} rows if it fails."""
    out = split.train_csv.parent / "surprise"
    cmd = [str(python), str(SURPRISE_SCRIPT), "--train", str(split.train_csv), "--test", str(split.test_csv)]
    cmd += ["--scale", *map(str, split.scale), "--out", str(out)]
    if not python.exists():
        error = f"{python} not found (make install-surprise)"
    else:
        done = subprocess.run(cmd, capture_output=True, text=True)
        error = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
    if error:
        print(f"  Surprise not run: {error}", file=sys.stderr, flush=True)
        return {name: {"error": error} for name in ("svd", "svdpp")}
    import pandas as pd

    summary = json.loads((out / "surprise.json").read_text())
    users, eligible = split.eval_users, eligible_movies(split.train_m, len(split.movie_ids))
    seen = rated_matrix(split.train_u, split.train_m, len(split.user_ids), len(split.movie_ids)) > 0
    rows = {}
    for name, model in summary["models"].items():
        f = np.load(out / f"{name}.npz", allow_pickle=False)
        # Surprise's inner order -> ours; every training user and movie is in its trainset.
        u_at = pd.Index(f["user_ids"]).get_indexer(split.user_ids.astype(str))
        m_at = pd.Index(f["movie_ids"]).get_indexer(split.movie_ids.astype(str))
        scores = f["user_vec"][u_at[users]] @ f["movie_vec"][m_at].T + f["movie_bias"][m_at]
        predictions = np.asarray(model["predictions"])[split.known]
        rows[name] = {
            "rmse": held_out_rmse(split, predictions),
            **ranking(split, lists_from_scores(scores, users, seen, eligible, K)),
            "fit_s": model["fit_s"],
            "surprise": summary["surprise"],
        }
    return rows


def train_command(split: Split, run: str, quick: bool) -> list[str]:
    """train.py's command line for one recipe on the training part."""
    cmd = [sys.executable, str(REPO / "train.py"), "--ratings", str(split.train_csv)]
    if split.titles is not None:
        cmd += ["--movies", str(split.titles)]
    flags = TRAIN_RUNS[run]
    if quick:  # drop the recipe's own epochs (each flag and its value), then add QUICK's
        flags = [f for i, f in enumerate(flags) if f not in QUICK and (i == 0 or flags[i - 1] not in QUICK)]
        flags += [x for pair in QUICK.items() for x in pair]
    return cmd + ["--out", str(split.train_csv.parent / run), "--quiet", *flags]


def shown(cmd: list[str]) -> str:
    """A command line as a reader would retype it from the repository root."""

    def short(arg: str) -> str:
        path = Path(arg)
        if path.is_absolute() and path.is_relative_to(REPO):
            return shlex.quote(str(path.relative_to(REPO)))
        if path.is_absolute() and path.is_relative_to(Path.home()):
            return "~/" + shlex.quote(str(path.relative_to(Path.home())))
        return shlex.quote(arg)

    return " ".join(short(a) for a in cmd)


def movierec_row(split: Split, folder: Path, by_rating: bool) -> dict:
    """RMSE from Recommender.predict and lists from Recommender.recommend_many of an artifact (by rating: no ranker)."""
    import dataclasses

    from model.artifact import load_artifact
    from model.core import Recommender

    artifact = load_artifact(folder)
    if by_rating:
        artifact = dataclasses.replace(artifact, ranker=None)
    rec = Recommender(artifact, min_movie_ratings=MIN_MOVIE_RATINGS)
    user_row, movie_row = artifact.users.rows(split.user_ids), artifact.movies.rows(split.movie_ids)
    if (user_row < 0).any() or (movie_row < 0).any() or len(artifact.movies) != len(split.movie_ids):
        raise RuntimeError(f"{folder}: the artifact's IDs are not the training part's")
    code_of_movie = np.empty(len(movie_row), dtype=np.int64)
    code_of_movie[movie_row] = np.arange(len(movie_row))
    known = split.known
    predictions = rec.predict(user_row[split.test_u[known]], movie_row[split.test_m[known]])
    users = split.eval_users
    answers = rec.recommend_many(user_row[users], K, exclude_rated=True)
    lists = {u: code_of_movie[rows] for u, (rows, _) in zip(users.tolist(), answers, strict=True)}
    meta = artifact.metadata
    fit_s = meta["metrics"]["train_seconds"]
    if not by_rating and artifact.ranker is not None:
        fit_s += sum(h["seconds"] for h in meta["ranker"]["history"])
    return {"rmse": held_out_rmse(split, predictions), **ranking(split, lists), "fit_s": fit_s}


def movierec_rows(split: Split, quick: bool) -> dict[str, dict]:
    """Train the lesson's recipe, the previous default and the new default with train.py, then judge the artifacts."""
    rows = {}
    for run in TRAIN_RUNS:
        cmd = train_command(split, run, quick)
        log = split.train_csv.parent / f"{run}.log"
        print(f"  {shown(cmd)}  (log: {log})", flush=True)
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        wall = time.perf_counter() - t0
        names = (run,)
        if done.returncode != 0:
            tail = log.read_text().strip().splitlines()[-3:]
            for name in names:
                rows[name] = {"error": f"train.py exit {done.returncode}: {' / '.join(tail)[-300:]}"}
            continue
        for name in names:
            try:
                rows[name] = movierec_row(split, Path(cmd[cmd.index("--out") + 1]), by_rating=name != "default")
            except Exception as exc:  # one row that cannot be judged must not lose the others
                rows[name] = {"error": f"judging the artifact failed: {type(exc).__name__}: {exc}"[:300]}
                continue
            rows[name].update(command=shown(cmd), wall_s=wall)
        print(f"  trained in {wall:.0f}s wall", flush=True)
    return rows


def measure(split: Split, args: argparse.Namespace) -> dict:
    """Every row of one dataset's table."""
    print(f"{split.name}: {len(split.train_r):,} training rows, {len(split.test_r):,} held out", flush=True)
    rows = reference_rows(split, args.seed)
    if not args.no_surprise:
        rows.update(surprise_rows(split, args.surprise_python))
    rows.update(movierec_rows(split, args.quick))
    for name, row in rows.items():
        if "error" not in row:
            shown_metrics = ", ".join(f"{k} {row[k]:.4f}" for k in ("rmse", "recall@10", "ndcg@10") if k in row)
            print(f"  {ROWS[name]}: {shown_metrics}, fit {row['fit_s']:.1f}s", flush=True)
    versus_ease = paired_gap(rows, "ease", "default")
    for row in rows.values():
        row.pop("per_user", None)
    return {
        "default_vs_ease": versus_ease,
        "title": TITLES.get(split.name, split.name),
        "source": split.source,
        "ratings": len(split.train_r) + len(split.test_r),
        "users": len(split.user_ids),
        "movies": len(split.movie_ids),
        "held_out": len(split.test_r),
        "unknown_rows": int((~split.known).sum()),
        "judged_users": len(split.eval_users),
        "rows": rows,
    }


def row_label(name: str, row: dict) -> str:
    """A row's name in the table and the plot (EASE^R with its λ)."""
    return ROWS[name] + (f" (λ {row['lambda']})" if "lambda" in row else "")


def percent(fraction: float) -> str:
    """A fraction as the report writes it: 10 %."""
    return f"{fraction * 100:.0f} %"


def cell(row: dict, key: str, digits: int = 4) -> str:
    """A table cell: the value, or – when the row has none."""
    return f"{row[key]:.{digits}f}" if row.get(key) is not None else "–"


def section(results: dict, png_name: str) -> str:
    """The `## Accuracy` Markdown section."""

    m = results["machine"]
    lines = [
        "## Accuracy",
        "",
        f"Generated by `make bench-accuracy` on {results['date']}{' with `--quick`' if results['quick'] else ''}: "
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']:.1f} GiB RAM; torch {m['torch']}, numpy {m['numpy']}, "
        f"{results['surprise']}. Load average {results['load_start']} at the start, "
        f"{results.get('load_end', '?')} at the end (other jobs share the 2 cores, so fit seconds are rough).",
        "",
        f"- Split: per dataset, one seeded random {percent(HOLD_OUT)} of the rating rows is held out "
        f"(`model.data.split_indices`, seed {results['seed']}); every model fits the other {percent(1 - HOLD_OUT)} "
        "(train.py keeps 10 % of that for its own validation).",
        "- RMSE over all held-out rows, clipped to the rating range; a row whose user or movie is not in the "
        "training part gets the training mean.",
        f"- recall@10 / NDCG@10 (`model.metrics.top_k_metrics`): relevant = held-out rating ≥ {RELEVANT_RATING:g}; "
        f"candidates = movies the user did not rate in training, minus movies with < {MIN_MOVIE_RATINGS} training "
        "ratings (what the endpoint excludes); averaged over users with ≥ 1 relevant held-out row.",
        "- fit s: seconds spent fitting (movierec: the epochs of the rating model, plus the ranker's for the new "
        "default).",
    ]
    for data in results["datasets"].values():
        lines += [
            "",
            f"### {data['title']}",
            "",
            f"{data['ratings']:,} ratings; {data['users']:,} users and {data['movies']:,} movies in the training part; "
            f"{data['held_out']:,} held out ({data['unknown_rows']:,} with an unknown user or movie), "
            f"{data['judged_users']:,} users judged.",
            "",
            "| model | RMSE | recall@10 | NDCG@10 | fit s |",
            "|---|---|---|---|---|",
        ]
        for name, row in data["rows"].items():
            label = row_label(name, row)
            if "error" in row:
                lines.append(f"| {label} | not run | – | – | – |")
                continue
            lines.append(
                f"| {label} | {cell(row, 'rmse')} | {cell(row, 'recall@10', 3)} | {cell(row, 'ndcg@10', 3)} "
                f"| {row['fit_s']:.1f} |"
            )
        if gap := data.get("default_vs_ease"):
            lines += [
                "",
                f"New default − EASE^R, paired over the {gap['users']:,} users both judged (95 % intervals, bootstrap "
                f"over users, as `movierec ab-eval`): recall@10 {gap['recall'][0]:+.3f} [{gap['recall'][1]:+.3f}, "
                f"{gap['recall'][2]:+.3f}], NDCG@10 {gap['ndcg'][0]:+.3f} [{gap['ndcg'][1]:+.3f}, {gap['ndcg'][2]:+.3f}].",
            ]
    lines += ["", f"![recall@10 by model]({png_name})", "", "Notes:", ""]
    lines += notes(results)
    return "\n".join(lines) + "\n"


def notes(results: dict) -> list[str]:
    """What each row is, the command lines, and anything not run."""
    lines = [
        "- Global mean: RMSE only. It gives every movie the same score, so it has no ranking of its own.",
        "- Most popular: `model.metrics.popular_top_k`, the user's most-rated unseen movies.",
        f"- EASE^R: numpy closed form on the binary user × movie matrix; λ from {', '.join(map(str, EASE_LAMBDAS))} "
        f"by recall@10 on a {percent(HOLD_OUT)} validation slice of the training part, then refitted on all of it "
        "(fit s: the refit; the search took "
        + ", ".join(f"{d['rows']['ease']['search_s']:.0f} s ({key})" for key, d in results["datasets"].items())
        + "). Ranking only.",
        "- Surprise SVD / SVD++: default settings (`random_state=0`), `movierec/bench/surprise_fit.py` in "
        "`.venv-surprise`; their lists rank every candidate by the fitted biases and factors.",
        "- movierec, the lesson's recipe: AdamW with a one-cycle schedule (train.py's optimizer) where the lesson "
        "used plain Adam, and 10 % validation where it used 20 %; its lists rank by predicted rating (the lesson "
        "has no ranker; the one train.py fits alongside gets one epoch and is not used).",
        "- movierec, previous default: `--arch embedding-net --wd 0.3` (the lesson's network with the previous "
        "release's recipe), served with `ranker=None`, so top-K ranks by predicted rating as the "
        "endpoint did before the ranker.",
        "- movierec, new default: `train.py` with no recipe flags: the fused net for ratings, the ranker for top-K.",
        "- train.py's command lines (for the other datasets only the paths differ):",
    ]
    key, data = next(iter(results["datasets"].items()))
    for name in TRAIN_RUNS:
        if "command" in data["rows"].get(name, {}):
            lines.append(f"  - {key}, {name}: `{data['rows'][name]['command']}`")
    for key, data in results["datasets"].items():
        for name, row in data["rows"].items():
            if "error" in row:
                lines.append(f"- Not run on {key}: {ROWS[name]}: {row['error']}")
    return lines


def plot(results: dict, png: Path) -> None:
    """Horizontal bars of recall@10 by model, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(results["datasets"].values())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, data in zip(axes[0], datasets, strict=True):
        ranked = [(row_label(n, r), r["recall@10"]) for n, r in data["rows"].items() if r.get("recall@10") is not None]
        labels, values = zip(*reversed(ranked), strict=True) if ranked else ((), ())
        colors = ["tab:orange" if label.startswith("movierec") else "tab:gray" for label in labels]
        ax.barh(range(len(values)), values, color=colors)
        ax.set_yticks(range(len(values)), [label.replace(" (", "\n(") for label in labels], fontsize=7)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.3f}", va="center", fontsize=7)
        ax.set_title(data["title"], fontsize=10)
        ax.set_xlabel("recall@10")
        ax.set_xlim(0, max(values, default=0) * 1.2 or 1)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The harness's command line."""
    p = argparse.ArgumentParser(
        prog="python -m movierec.bench.accuracy",
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS), help="downloaded once")
    p.add_argument("--ratings", type=Path, help="a ratings file instead of --datasets (its table is named after it)")
    p.add_argument("--movies", type=Path, help="titles file for --ratings (optional)")
    p.add_argument("--work-dir", type=Path, default=REPO / "bench_accuracy", help="split CSVs, artifacts, logs, JSON")
    p.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md", help="report whose `## Accuracy` to write")
    add_renamed(p, "--work", "--work-dir", type=Path)
    add_renamed(p, "--out", "--report", type=Path)
    p.add_argument("--quick", action="store_true", help="one epoch per movierec model (for tests)")
    p.add_argument("--no-surprise", action="store_true", help="leave out the Surprise SVD / SVD++ rows")
    p.add_argument("--surprise-python", type=Path, default=SURPRISE_PYTHON, help="python of the Surprise venv")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split and the EASE^R slice")
    p.add_argument("--report-only", action="store_true", help="rewrite the section and PNG from WORK/accuracy.json")
    args = p.parse_args(argv)
    if args.movies and not args.ratings:
        p.error("--movies goes with --ratings")
    return args


def surprise_version(python: Path) -> str:
    """scikit-surprise's version in its venv, for the report."""
    if not python.exists():
        return "scikit-surprise not installed"
    done = subprocess.run(
        [str(python), "-c", "import surprise; print(surprise.__version__)"], capture_output=True, text=True
    )
    return f"scikit-surprise {done.stdout.strip()}" if done.returncode == 0 else "scikit-surprise not importable"


def measure_all(args: argparse.Namespace, work: Path) -> dict:
    """The machine, then every dataset's rows."""
    from model.data import dataset
    from movierec.bench.bench import machine_info
    from movierec.bench.meter import load_average

    if args.ratings:
        inputs = {args.ratings.stem: (args.ratings.resolve(), args.movies.resolve() if args.movies else None)}
    else:
        inputs = {name: dataset(name) for name in args.datasets}
    results = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "load_start": load_average(),
        "quick": args.quick,
        "seed": args.seed,
        "surprise": "Surprise not run (--no-surprise)" if args.no_surprise else surprise_version(args.surprise_python),
        "datasets": {},
    }
    for name, (ratings_path, titles) in inputs.items():
        split = make_split(name, ratings_path, titles, work, args.seed)
        results["datasets"][name] = measure(split, args)
        results["load_end"] = load_average()
        # Written after each dataset, so a failure later keeps what was measured (see --report-only).
        (work / "accuracy.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    return results


def main(argv: list[str] | None = None) -> int:
    """Measure every dataset (or reread WORK/accuracy.json), then write the PNG and the `## Accuracy` section."""
    args = parse_args(argv)
    work = args.work_dir.resolve()
    results = json.loads((work / "accuracy.json").read_text()) if args.report_only else measure_all(args, work)
    png = args.report.with_name(f"{args.report.stem}-accuracy.png")
    plot(results, png)
    old = args.report.read_text(encoding="utf-8") if args.report.exists() else ""
    args.report.write_text(put_section(old, section(results, png.name)), encoding="utf-8")
    print(f"wrote {args.report} and {png}" + ("" if args.report_only else f" and {work / 'accuracy.json'}"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
