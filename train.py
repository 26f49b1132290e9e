"""Train the EmbeddingNet on MovieLens ratings and export a servable artifact directory.

    python train.py --out artifacts/v1                      # MovieLens 100K (downloaded once)
    python train.py --ratings ratings.csv --movies movies.csv --out artifacts/v2 --epochs 10
    python train.py --resume artifacts/v2                   # continue a killed run from its last epoch
    python train.py --out artifacts/cold --cold-users 0.05  # measure the cold-start fallback on unseen users

Defaults were tuned on a validation slice of MovieLens 100K (see README, "Training"); from 1M
ratings, --recipe auto switches to a recipe measured on ML-25M-shaped data (see SCALE_RECIPE).
Each epoch saves a checkpoint in OUT/checkpoint/, removed once the artifact is written.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from model.artifact import Artifact, ColdStart, load_artifact, rated_csr, save_artifact
from model.cold_start import cold_user_metrics, hold_out_users
from model.core import PARITY_TOL, Recommender
from model.data import (
    DATASETS,
    DEFAULT_SCALE,
    DataError,
    Ratings,
    dataset,
    load_ratings,
    load_titles,
    split_indices,
)
from model.fit import (
    ARGS_FILE,
    CHECKPOINT_DIR,
    FUSED_N_DOT,
    SCALE_FROM,
    SCALE_RECIPE,
    STEPS_PER_EPOCH,
    TrainConfig,
    fit,
    pick_device,
    predict_all,
    recipe_for,
    rmse,
)
from model.index import IdIndex
from model.metrics import RELEVANT_RATING, K, popular_top_k, top_k_metrics
from model.net import ARCHS, EmbeddingNet, NetConfig
from model.protocol import MIN_MOVIE_RATINGS
from model.ranking import ENCODE_USERS, USER_FACTORS, RankTrainConfig, fit_ranker
from movierec.flags import add_retired


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; every default comes from TrainConfig."""
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratings", help="ratings file (ratings.csv, ratings.dat, u.data or .inter); default: --dataset")
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        help="a dataset downloaded once into the user cache, instead of --ratings (default: ml-100k)",
    )
    p.add_argument("--movies", help="titles file (movies.csv, movies.dat, u.item or .item); default: the dataset's own")
    p.add_argument("--out", help="artifact directory to write (required unless --resume)")
    p.add_argument(
        "--resume",
        metavar="OUT",
        help="continue the killed run that was writing OUT, from its last finished epoch, with its options",
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument(
        "--recipe",
        choices=("auto", "ml100k", "scale"),
        default="auto",
        help="defaults of the seven options below (batch, lr, wd, n-factors, nh, p1, p2): ml100k "
        f"({d.batch_size}, {d.lr}, {d.wd}, {d.n_factors}, {d.nh}, {d.p1}, {d.p2}), scale (batch for "
        f"{STEPS_PER_EPOCH} steps/epoch, then {', '.join(map(str, SCALE_RECIPE.values()))}), "
        f"auto: scale from {SCALE_FROM:,} ratings (default auto)",
    )
    p.add_argument("--batch-size", type=int, help="default: from --recipe")
    p.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule (default: from --recipe)")
    p.add_argument("--wd", type=float, help="AdamW decoupled weight decay (default: from --recipe)")
    p.add_argument("--n-factors", type=int, help="embedding width (default: from --recipe)")
    p.add_argument("--nh", type=int, help="hidden layer width (default: from --recipe)")
    p.add_argument("--p1", type=float, help="dropout on the concatenated embeddings (default: from --recipe)")
    p.add_argument("--p2", type=float, help="dropout after the hidden layer (default: from --recipe)")
    p.add_argument("--no-bias", dest="bias", action="store_false", help="no per-user/per-movie bias terms")
    p.add_argument(
        "--arch",
        choices=ARCHS,
        help=f"rating model: embedding-net (the lesson's) or fused (plus a dot product at the logit) "
        f"(default: from --recipe: {d.arch}, scale: {SCALE_RECIPE['arch']}; --n-dot alone means fused)",
    )
    p.add_argument(
        "--n-dot", type=int, help=f"dot-product factors of --arch fused (default {FUSED_N_DOT}; 0 for embedding-net)"
    )
    r = RankTrainConfig()
    p.add_argument(
        "--rank-epochs",
        type=int,
        help="the ranker's epochs (top-K lists; default: 60, or 10 when users are encoded from their movies)",
    )
    p.add_argument(
        "--rank-factors",
        type=int,
        help="the ranker's factors per user and movie (default: 128, fewer for a catalogue over 32k movies)",
    )
    p.add_argument("--rank-lr", type=float, default=r.lr, help="the ranker's peak learning rate")
    p.add_argument("--rank-wd", type=float, default=r.wd, help="the ranker's L2 on the factors of each example")
    p.add_argument(
        "--rank-users",
        type=int,
        default=r.users_per_step,
        help="the ranker's users per step (at least; more on larger data, see model/ranking.py step_plan)",
    )
    p.add_argument(
        "--rank-user-factors",
        choices=USER_FACTORS,
        default=r.user_factors,
        help="the ranker's user factors: free rows, or encoded from the movies each user rated "
        f"(default auto: encoded from {ENCODE_USERS:,} users on)",
    )
    add_retired(p, "--rank-batch", "the ranker steps over users (--rank-users)", type=int)
    p.add_argument("--val-frac", type=float, default=d.val_frac, help="random validation fraction (0 < f < 1)")
    p.add_argument(
        "--cold-users",
        type=float,
        default=0.0,
        metavar="FRAC",
        help="hold out this fraction of users with all their ratings, and report the cold-start fallback's "
        "RMSE on them against the global-mean and movie-mean baselines (default 0: train on every user)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch default)")
    p.add_argument(
        "--rating-scale",
        type=float,
        nargs=2,
        default=DEFAULT_SCALE,
        metavar=("MIN", "MAX"),
        help="allowed rating values; rows outside are an error (default: 0.5 5)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training forward/backward (CPU: ~20%% faster steps after ~30 s of compiling)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.resume:
        args = resumed_args(p, args)
    elif not args.out:
        p.error("--out is required (or --resume OUT)")
    if args.ratings and getattr(args, "dataset", None):
        p.error("--ratings and --dataset exclude each other")
    for name in ("epochs", "batch_size", "n_factors", "nh", "rank_epochs", "rank_factors", "rank_users"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    n_dot = getattr(args, "n_dot", None)
    if n_dot is not None and args.arch is not None and (args.arch == "fused") != (n_dot > 0):
        p.error(f"--arch {args.arch} with --n-dot {n_dot}: fused needs at least 1, embedding-net takes 0")
    if not 0 < args.val_frac < 1:
        p.error("--val-frac must be between 0 and 1")
    if not 0 <= getattr(args, "cold_users", 0.0) < 1:
        p.error("--cold-users must be at least 0 and below 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


def resumed_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The options the run being resumed was started with (only --quiet may change)."""
    saved = Path(args.resume) / CHECKPOINT_DIR / ARGS_FILE
    if not saved.exists():
        parser.error(f"--resume {args.resume}: no checkpoint there ({saved} is missing)")
    options = json.loads(saved.read_text())
    return argparse.Namespace(**{**options, "out": args.resume, "resume": args.resume, "quiet": args.quiet})


def plot_history(history: list[dict], path: Path) -> None:
    """Write train/validation loss (MSE) per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train (with dropout)")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE")
    ax.set_title("EmbeddingNet training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def export(model: torch.nn.Module, val_u: torch.Tensor, val_m: torch.Tensor) -> tuple[torch.jit.ScriptModule, float]:
    """Script the model on CPU and return it with its max |scripted - eager| on the validation pairs."""
    model = model.cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
    u, m = val_u.cpu(), val_m.cpu()
    with torch.no_grad():
        diff = (predict_all(scripted, u, m) - predict_all(model, u, m)).abs().max().item() if len(u) else 0.0
    return scripted, diff


def build_titles(
    movies: IdIndex, ratings_path: Path | None, movies_path: str | None, default_titles: Path | None
) -> list:
    """Titles aligned with the movie index (None where the titles file lacks a movie)."""
    source = movies_path or default_titles
    if source is None and ratings_path is not None:
        for name in ("movies.csv", "u.item", "movies.dat"):
            if (ratings_path.parent / name).exists():
                source = ratings_path.parent / name
                break
    titles = load_titles(source) if source else {}
    return [titles.get(raw) for raw in movies.ids]


def id_rows(data: Ratings, column: str, index: IdIndex) -> np.ndarray:
    """Each rating's embedding row for user_id or movie_id: one lookup per distinct ID, then a gather."""
    ids, codes = data.codes(column)
    return index.rows(ids)[codes]


def load_data(
    args: argparse.Namespace,
) -> tuple[Ratings, str, IdIndex, IdIndex, list[str | None], pd.DataFrame | None]:
    """The ratings (from --ratings or MovieLens 100K), their source name, the ID indexes, titles and cold users."""
    default_titles = None
    if args.ratings:
        ratings_path = Path(args.ratings)
        data: Ratings = load_ratings(ratings_path, scale=tuple(args.rating_scale))
        source = str(ratings_path)
    else:
        name = getattr(args, "dataset", None) or "ml-100k"  # runs resumed from before --dataset have none
        ratings_path, default_titles = dataset(name)
        data = load_ratings(ratings_path, scale=tuple(args.rating_scale))
        source = DATASETS[name]
    frame = data.frame
    if len(frame) < 10:
        raise DataError(f"{data.source}: only {len(frame)} ratings; need at least 10 to train and validate")
    n_users, n_movies = len(data.codes("user_id")[0]), len(data.codes("movie_id")[0])
    if n_users < 2 or n_movies < 2:
        raise DataError(
            f"{data.source}: {n_users} user(s) and {n_movies} movie(s); need at least 2 of each to learn a model"
        )
    if data.duplicates_dropped:
        print(f"note: {data.duplicates_dropped} duplicate (user, movie) rows dropped, kept the latest by timestamp")
    cold = None
    if getattr(args, "cold_users", 0.0) > 0:
        data, cold = hold_out_users(data, args.cold_users, args.seed)
        print(f"cold users: {cold['user_id'].nunique():,} users ({len(cold):,} ratings) held out of training")
    users, movies = IdIndex.from_ids(data.codes("user_id")[0]), IdIndex.from_ids(data.codes("movie_id")[0])
    titles = build_titles(movies, ratings_path if args.ratings else None, args.movies, default_titles)
    return data, source, users, movies, titles, cold


def evaluate_and_export(model: torch.nn.Module, train_t: tuple, val_t: tuple) -> tuple[dict, torch.jit.ScriptModule]:
    """RMSE metrics and the TorchScript export, refused unless it matches the eager model within PARITY_TOL."""
    model.eval()
    val_pred = predict_all(model, val_t[0], val_t[1])
    global_mean = float(train_t[2].mean())
    metrics = {
        "val_rmse": rmse(val_pred, val_t[2]),
        "val_rmse_global_mean": rmse(torch.full_like(val_t[2], global_mean), val_t[2]),
        "train_rmse": rmse(predict_all(model, train_t[0], train_t[1]), train_t[2]),
        "global_mean": global_mean,
    }
    scripted, diff = export(model, val_t[0], val_t[1])
    if diff > PARITY_TOL:
        raise RuntimeError(f"TorchScript export differs from the eager model by {diff:.2e} (> {PARITY_TOL})")
    metrics["export_max_abs_diff"] = diff
    return metrics, scripted


def artifact_metadata(
    cfg: TrainConfig, net: NetConfig, data: Ratings, source: str, split: tuple[int, int], metrics: dict
) -> dict:
    """metadata.json's content beyond the format fields: what was trained on what, and how well."""
    n_train, n_val = split
    return {
        "rating_range": [net.y_min, net.y_max],
        "counts": {
            "users": net.n_users,
            "movies": net.n_movies,
            "ratings": len(data.frame),
            "train": n_train,
            "val": n_val,
        },
        "net": net.to_dict(),
        "train": asdict(cfg),
        "metrics": metrics,
        "data": {
            "source": source,
            "fingerprint": data.fingerprint(),
            "duplicates_dropped": data.duplicates_dropped,
            "split": "random",
            "val_frac": cfg.val_frac,
        },
    }


def make_config(args: argparse.Namespace, n_ratings: int, n_train: int) -> tuple[TrainConfig, str]:
    """The TrainConfig of this run: the options given, the recipe's values for the ones left out."""
    name, recipe = recipe_for(n_ratings, n_train, getattr(args, "recipe", "auto"))
    given = {k: getattr(args, k) for k in asdict(TrainConfig()) if getattr(args, k, None) is not None}
    if "n_dot" in given and "arch" not in given:
        given["arch"] = "fused" if given["n_dot"] > 0 else "embedding-net"
    cfg = TrainConfig(**{**recipe, **given})
    if "n_dot" not in given:
        cfg.n_dot = FUSED_N_DOT if cfg.arch == "fused" else 0
    print(
        f"recipe: {name}: {cfg.arch}{f' ({cfg.n_dot} dot factors)' if cfg.n_dot else ''}, batch {cfg.batch_size:,} "
        f"({math.ceil(n_train / cfg.batch_size):,} steps/epoch), lr {cfg.lr:g}, wd {cfg.wd:g}, "
        f"dropout {cfg.p1:g}/{cfg.p2:g}, {cfg.n_factors} factors, {cfg.nh} hidden, {cfg.epochs} epochs"
    )
    return cfg, name


def start_checkpoint(args: argparse.Namespace) -> Path:
    """OUT/checkpoint/: kept as is to resume, else emptied and given this run's options."""
    checkpoint = Path(args.out) / CHECKPOINT_DIR
    if not args.resume:
        shutil.rmtree(checkpoint, ignore_errors=True)  # a stale state from another run must not be continued
        checkpoint.mkdir(parents=True)
        options = {k: v for k, v in vars(args).items() if k not in ("out", "resume", "quiet")}
        (checkpoint / ARGS_FILE).write_text(json.dumps(options, indent=1) + "\n")
    return checkpoint


def train(args: argparse.Namespace) -> dict:
    """Load, fit, evaluate, export and validate; returns the metrics."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    data, source, users, movies, titles, cold = load_data(args)
    frame = data.frame
    urows, mrows = id_rows(data, "user_id", users), id_rows(data, "movie_id", movies)
    ratings = frame["rating"].to_numpy(np.float32)
    y_min, y_max = float(ratings.min()), float(ratings.max())
    print(
        f"data: {source}: {len(frame):,} ratings, {len(users):,} users, {len(movies):,} movies, "
        f"ratings {y_min:g}..{y_max:g}; device {device}"
    )

    tr_idx, va_idx = split_indices(len(frame), args.val_frac, args.seed)
    cfg, recipe = make_config(args, len(frame), len(tr_idx))

    def tensors(idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        return (
            torch.from_numpy(urows[idx]).to(device),
            torch.from_numpy(mrows[idx]).to(device),
            torch.from_numpy(ratings[idx]).to(device),
        )

    train_t, val_t = tensors(tr_idx), tensors(va_idx)
    net_cfg = NetConfig(
        len(users), len(movies), cfg.n_factors, cfg.nh, cfg.p1, cfg.p2, y_min, y_max, cfg.bias, cfg.arch, cfg.n_dot
    )
    model = EmbeddingNet(net_cfg).to(device)
    out, checkpoint = Path(args.out), start_checkpoint(args)
    history = fit(model, train_t, val_t, cfg, device, quiet=args.quiet, checkpoint=checkpoint)
    train_seconds = sum(h["seconds"] for h in history)  # a resumed run counts its earlier epochs too

    metrics, scripted = evaluate_and_export(model, train_t, val_t)
    rank_cfg = rank_config(args)
    ranker, rank_history, rank_plan = fit_ranker(
        urows[tr_idx], mrows[tr_idx], ratings[tr_idx], len(users), len(movies), rank_cfg, device, args.seed, args.quiet
    )
    scripted_ranker, ranker_diff = export(ranker, val_t[0], val_t[1])
    if ranker_diff > PARITY_TOL:
        raise RuntimeError(f"TorchScript export of the ranker differs by {ranker_diff:.2e} (> {PARITY_TOL})")
    # Same key order in metadata.json as before: timings and history, then the export parity.
    metrics.update(train_seconds=round(train_seconds, 2), device=str(device), recipe=recipe, history=history)
    metrics.update(export_max_abs_diff=metrics.pop("export_max_abs_diff"), beats_global_mean=check_beats_mean(metrics))
    meta = artifact_metadata(cfg, net_cfg, data, source, (len(tr_idx), len(va_idx)), metrics)
    meta["data"]["cold_users"] = getattr(args, "cold_users", 0.0)
    meta["cold_start"] = ColdStart.average_of(model.state_dict(), metrics["global_mean"]).to_dict()
    meta["ranker"] = {
        "arch": "dot",
        "net": {"n_users": len(users), "n_movies": len(movies), "n_factors": rank_plan.n_factors},
        "train": rank_cfg.to_dict(),
        "loss": "softmax",
        "plan": asdict(rank_plan),
        "history": rank_history,
        "export_max_abs_diff": ranker_diff,
    }
    # Judged as served: the serving core's top-K over what the user had rated in training only.
    seen = Artifact(out, scripted, users, movies, titles, *rated_csr(urows[tr_idx], mrows[tr_idx], len(users)), meta)
    seen.ranker = scripted_ranker
    metrics.update(
        ranking_metrics(seen, (urows[tr_idx], mrows[tr_idx]), (urows[va_idx], mrows[va_idx], ratings[va_idx]))
    )
    metrics["ranker_beats_popular"] = check_beats_popular(metrics)
    rated = rated_csr(urows, mrows, len(users))
    if cold is not None:
        # Scored by the serving core on the artifact about to be written: what clients will get.
        served = Artifact(out, scripted, users, movies, titles, *rated, meta)
        metrics["cold_users"] = cold_user_metrics(served, cold, mrows[tr_idx], ratings[tr_idx])
    save_artifact(out, scripted, users, movies, titles, rated, meta, scripted_ranker)
    plot_history(history, out / "loss.png")
    # The held-out rows, for `movierec ab-eval`: comparing two versions on rows
    # neither saw in training (same --seed and --val-frac give the same rows).
    frame.iloc[va_idx][["user_id", "movie_id", "rating"]].to_csv(out / "validation.csv", index=False)
    load_artifact(out)  # what we wrote must pass the same validation the server runs
    shutil.rmtree(checkpoint)
    print(
        f"validation RMSE {metrics['val_rmse']:.4f} (global mean {metrics['val_rmse_global_mean']:.4f}); "
        f"trained in {train_seconds:.1f}s; TorchScript parity {metrics['export_max_abs_diff']:.1e}"
    )
    print(
        f"validation top-{K} (served lists, {metrics['val_rank_users']:,} users): recall@{K} {metrics[f'val_recall@{K}']:.4f}, "
        f"NDCG@{K} {metrics[f'val_ndcg@{K}']:.4f} (most popular: {metrics[f'val_recall@{K}_most_popular']:.4f}, "
        f"{metrics[f'val_ndcg@{K}_most_popular']:.4f})"
    )
    if cold is not None:
        c = metrics["cold_users"]
        print(
            f"cold users ({c['users']:,} users, {c['ratings']:,} ratings): fallback RMSE {c['rmse_fallback']:.4f} "
            f"(global mean {c['rmse_global_mean']:.4f}, movie mean {c['rmse_movie_mean']:.4f})"
        )
    print(f"artifacts: {out}/ (model.pt, index maps, metadata.json, loss.png, validation.csv)")
    return metrics


def rank_config(args: argparse.Namespace) -> RankTrainConfig:
    """The ranker's recipe from the command line (a run resumed from before the ranker takes the defaults)."""
    d = RankTrainConfig()
    return RankTrainConfig(
        epochs=getattr(args, "rank_epochs", None) or d.epochs,
        users_per_step=getattr(args, "rank_users", d.users_per_step),
        lr=getattr(args, "rank_lr", d.lr),
        wd=getattr(args, "rank_wd", d.wd),
        n_factors=getattr(args, "rank_factors", None) or d.n_factors,
        user_factors=getattr(args, "rank_user_factors", d.user_factors),
    )


EVAL_USERS = 10_000  # users whose served lists are judged; a seeded sample above this keeps 25M runs short


def ranking_metrics(artifact: Artifact, train_pairs: tuple, val: tuple, seed: int = 0) -> dict:
    """recall@K / NDCG@K of the served top-K on the validation ratings, and of the most-popular list beside it."""
    users, movies, ratings = val
    candidates = np.unique(users[ratings >= RELEVANT_RATING])
    if len(candidates) > EVAL_USERS:
        candidates = np.sort(np.random.default_rng(seed).choice(candidates, EVAL_USERS, replace=False))
    rec = Recommender(artifact, min_movie_ratings=MIN_MOVIE_RATINGS)
    served = dict(zip(candidates.tolist(), (rows for rows, _ in rec.recommend_many(candidates, K)), strict=True))
    popular = popular_top_k(*train_pairs, len(artifact.movies), candidates, K, MIN_MOVIE_RATINGS)
    ours, reference = top_k_metrics(served, users, movies, ratings), top_k_metrics(popular, users, movies, ratings)
    return {
        f"val_recall@{K}": ours[f"recall@{K}"],
        f"val_ndcg@{K}": ours[f"ndcg@{K}"],
        "val_rank_users": ours["users"],
        f"val_recall@{K}_most_popular": reference[f"recall@{K}"],
        f"val_ndcg@{K}_most_popular": reference[f"ndcg@{K}"],
    }


def check_beats_popular(metrics: dict) -> bool:
    """Whether the served lists' validation recall@K beats a most-popular list's; warns on stderr if not."""
    # Lists no better than the most popular movies are not worth serving, however well the run went otherwise.
    ours, popular = metrics[f"val_recall@{K}"], metrics[f"val_recall@{K}_most_popular"]
    if ours <= popular:
        print(
            f"warning: the ranker's validation recall@{K} {ours:.4f} is not better than a most-popular list's "
            f"({popular:.4f}); see metrics.ranker_beats_popular",
            file=sys.stderr,
        )
    return ours > popular


def check_beats_mean(metrics: dict) -> bool:
    """Whether validation RMSE beats predicting the training mean everywhere; warns on stderr if not."""
    # A model no better than the training mean is a failed run, however it was configured.
    beats = metrics["val_rmse"] < metrics["val_rmse_global_mean"]
    if not beats:
        print(
            f"warning: validation RMSE {metrics['val_rmse']:.4f} is not better than predicting the training mean "
            f"for every rating ({metrics['val_rmse_global_mean']:.4f}); see metrics.beats_global_mean",
            file=sys.stderr,
        )
    return beats


def out_problem(out: str) -> str | None:
    """Why the artifact directory OUT cannot be written (None if it can), found before any loading or training."""
    path = Path(out).absolute()
    if path.exists() and not path.is_dir():
        return f"--out {out}: exists and is not a directory"
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"--out {out}: {parent} is a file, not a directory"
    # A real probe rather than os.access: /proc, read-only mounts and ACLs all say no only when tried.
    try:
        tempfile.TemporaryDirectory(dir=parent, prefix=".movierec-probe-").cleanup()
    except OSError as exc:
        return f"--out {out}: cannot create files in {parent} ({exc.strerror or exc})"
    return None


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit 2 with a one-line message on a bad output location or bad data."""
    args = parse_args(argv)
    problem = out_problem(args.out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        train(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
