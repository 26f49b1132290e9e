"""Train the EmbeddingNet on MovieLens ratings and export a servable artifact directory.

    python train.py --out artifacts/v1                      # MovieLens 100K (downloaded once)
    python train.py --ratings ratings.csv --movies movies.csv --out artifacts/v2 --epochs 10

Defaults were tuned on a validation slice of MovieLens 100K (see README, "Training").
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.artifact import load_artifact, rated_csr, save_artifact
from model.core import PARITY_TOL
from model.data import (
    DEFAULT_NAME,
    DEFAULT_SCALE,
    DataError,
    Ratings,
    default_dataset,
    load_ratings,
    load_titles,
    split_indices,
)
from model.index import IdIndex
from model.net import EmbeddingNet, NetConfig


@dataclass
class TrainConfig:
    """Training hyperparameters; the defaults are the tuned recipe."""

    epochs: int = 20
    batch_size: int = 256
    lr: float = 3e-3
    wd: float = 0.3
    n_factors: int = 64
    nh: int = 128
    p1: float = 0.4
    p2: float = 0.5
    bias: bool = True
    val_frac: float = 0.1
    seed: int = 0
    device: str = "auto"
    threads: int = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; every default comes from TrainConfig."""
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratings", help="ratings file (ratings.csv, u.data or .inter); default: MovieLens 100K")
    p.add_argument("--movies", help="titles file (movies.csv, u.item or .item); default: the dataset's own")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--wd", type=float, default=d.wd, help="AdamW decoupled weight decay")
    p.add_argument("--n-factors", type=int, default=d.n_factors, help="embedding width")
    p.add_argument("--nh", type=int, default=d.nh, help="hidden layer width")
    p.add_argument("--p1", type=float, default=d.p1, help="dropout on the concatenated embeddings")
    p.add_argument("--p2", type=float, default=d.p2, help="dropout after the hidden layer")
    p.add_argument("--no-bias", dest="bias", action="store_false", help="no per-user/per-movie bias terms")
    p.add_argument("--val-frac", type=float, default=d.val_frac, help="random validation fraction (0 < f < 1)")
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
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "n_factors", "nh"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.val_frac < 1:
        p.error("--val-frac must be between 0 and 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


def pick_device(name: str) -> torch.device:
    """`auto` means CUDA when present, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def rmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Root mean squared error as a float."""
    return math.sqrt(torch.mean((pred.float() - target.float()) ** 2).item())


@torch.no_grad()
def predict_all(model: torch.nn.Module, users: torch.Tensor, movies: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Predictions for many pairs, in chunks to bound memory."""
    return torch.cat([model(users[i : i + chunk], movies[i : i + chunk]) for i in range(0, len(users), chunk)])


def fit(model, train, val, cfg: TrainConfig, device: torch.device, quiet: bool = False) -> list[dict]:
    """AdamW + one-cycle over shuffled index slices of device-resident tensors; returns per-epoch history."""
    (tu, tm, tr), (vu, vm, vr) = train, val
    n = len(tr)
    steps = math.ceil(n / cfg.batch_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.25, div_factor=25, final_div_factor=1e4
    )
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=device, generator=gen)
        total = torch.zeros((), device=device)
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=quiet or None, unit="batch")
        for step in bar:
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            loss = torch.nn.functional.mse_loss(model(tu[idx], tm[idx]), tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(idx)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        model.eval()
        row = {
            "epoch": epoch,
            "train_loss": total.item() / n,
            "val_loss": rmse(predict_all(model, vu, vm), vr) ** 2,
            "seconds": time.perf_counter() - t0,
        }
        row["val_rmse"] = math.sqrt(row["val_loss"])
        history.append(row)
        print(
            f"epoch {epoch:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f}  "
            f"val RMSE {row['val_rmse']:.4f}  ({row['seconds']:.1f}s)",
            flush=True,
        )
    return history


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
        for name in ("movies.csv", "u.item"):
            if (ratings_path.parent / name).exists():
                source = ratings_path.parent / name
                break
    titles = load_titles(source) if source else {}
    return [titles.get(raw) for raw in movies.ids]


def load_data(args: argparse.Namespace) -> tuple[Ratings, str, IdIndex, IdIndex, list[str | None]]:
    """The ratings (from --ratings or MovieLens 100K), their source name, the ID indexes and titles."""
    default_titles = None
    if args.ratings:
        ratings_path = Path(args.ratings)
        data: Ratings = load_ratings(ratings_path, scale=tuple(args.rating_scale))
        source = str(ratings_path)
    else:
        ratings_path, default_titles = default_dataset()
        data = load_ratings(ratings_path, scale=tuple(args.rating_scale))
        source = DEFAULT_NAME
    frame = data.frame
    if len(frame) < 10:
        raise DataError(f"{data.source}: only {len(frame)} ratings; need at least 10 to train and validate")
    if data.duplicates_dropped:
        print(f"note: {data.duplicates_dropped} duplicate (user, movie) rows dropped, kept the latest by timestamp")
    users, movies = IdIndex.from_ids(frame["user_id"]), IdIndex.from_ids(frame["movie_id"])
    titles = build_titles(movies, ratings_path if args.ratings else None, args.movies, default_titles)
    return data, source, users, movies, titles


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


def train(args: argparse.Namespace) -> dict:
    """Load, fit, evaluate, export and validate; returns the metrics."""
    cfg = TrainConfig(**{k: getattr(args, k) for k in asdict(TrainConfig()) if hasattr(args, k)})
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    data, source, users, movies, titles = load_data(args)
    frame = data.frame
    urows, mrows = users.rows(frame["user_id"]), movies.rows(frame["movie_id"])
    ratings = frame["rating"].to_numpy(np.float32)
    y_min, y_max = float(ratings.min()), float(ratings.max())
    print(
        f"data: {source}: {len(frame):,} ratings, {len(users):,} users, {len(movies):,} movies, "
        f"ratings {y_min:g}..{y_max:g}; device {device}"
    )

    tr_idx, va_idx = split_indices(len(frame), cfg.val_frac, cfg.seed)

    def tensors(idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        return (
            torch.from_numpy(urows[idx]).to(device),
            torch.from_numpy(mrows[idx]).to(device),
            torch.from_numpy(ratings[idx]).to(device),
        )

    train_t, val_t = tensors(tr_idx), tensors(va_idx)
    net_cfg = NetConfig(len(users), len(movies), cfg.n_factors, cfg.nh, cfg.p1, cfg.p2, y_min, y_max, cfg.bias)
    model = EmbeddingNet(net_cfg).to(device)
    t0 = time.perf_counter()
    history = fit(model, train_t, val_t, cfg, device, quiet=args.quiet)
    train_seconds = time.perf_counter() - t0

    metrics, scripted = evaluate_and_export(model, train_t, val_t)
    diff = metrics.pop("export_max_abs_diff")
    # Same key order in metadata.json as before: timings and history, then the export parity.
    metrics.update(train_seconds=round(train_seconds, 2), device=str(device), history=history)
    metrics["export_max_abs_diff"] = diff

    out = Path(args.out)
    save_artifact(
        out,
        scripted,
        users,
        movies,
        titles,
        rated_csr(urows, mrows, len(users)),
        artifact_metadata(cfg, net_cfg, data, source, (len(tr_idx), len(va_idx)), metrics),
    )
    plot_history(history, out / "loss.png")
    # The held-out rows, for `movierec ab-eval`: comparing two versions on rows
    # neither saw in training (same --seed and --val-frac give the same rows).
    frame.iloc[va_idx][["user_id", "movie_id", "rating"]].to_csv(out / "validation.csv", index=False)
    load_artifact(out)  # what we wrote must pass the same validation the server runs
    print(
        f"validation RMSE {metrics['val_rmse']:.4f} (global mean {metrics['val_rmse_global_mean']:.4f}); "
        f"trained in {train_seconds:.1f}s; TorchScript parity {diff:.1e}\n"
        f"artifacts: {out}/ (model.pt, index maps, metadata.json, loss.png, validation.csv)"
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit 2 with a one-line message on bad data."""
    args = parse_args(argv)
    try:
        train(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
