"""The ranker that top-K lists are served from (the measure of those lists is model/metrics.py).

A rating model answers "how much would this user like this movie, having seen it"; a top-K list
must answer "which unseen movies will this user watch and like". The ranker learns the second from
who-rated-what: a dot product of user and movie factors plus a movie bias,

    score(u, m) = u_factors[u] . m_factors[m] + m_bias[m]

trained with a softmax over the whole catalogue: each training rating is one draw of "the movie this
user picked", weighted by its rating (mapped onto 1..5) ** rating_power, so that a movie rated 5
counts more than one rated 1 (on a MovieLens 100K split, recall@10 0.359 unweighted, 0.387 with power
1, 0.389 with power 2). A step takes a batch of users, not of ratings: all of a user's ratings share
one row of logits over the catalogue, so an epoch costs users x movies, not ratings x movies (on
MovieLens 100K 5 s instead of about 30 s, with the same recall@10; at ML-25M's shape 10x fewer
operations than 4,096 sampled negatives per rating). Serving ranks all movies for a user as one
matrix-vector product.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

# Steps per epoch of the MovieLens 100K recipe (943 users, 32 a step), which a larger data set keeps
# by taking more users a step, with the learning rate scaled in proportion: at 1M synthetic ratings
# (217 users a step) validation recall@10 0.328 at lr 0.034, 0.318 at the square-root-scaled 0.013,
# against 0.317 for the per-rating softmax this replaced (20x the time).
STEPS_PER_EPOCH = 30
MAX_LOGITS = 1 << 25  # users x movies scored in one step: 128 MB of float32 logits, and as much for their gradient
MIN_EPOCHS = 10
# Factors when the recipe leaves them to the plan: on the accuracy bench's training files (train.py's
# validation, 3 seeds) 128 factors gave recall@10 0.239 against 0.229 for 64 on ml-latest-small (9k
# movies; 192: 0.231) and 0.329 for both on MovieLens 100K (256: 0.324). A served top-K scores
# movies x factors, so a large catalogue gets fewer: TOPK_PRODUCTS keeps ML-25M's 59k movies at 64,
# whose top-10 takes about 1 ms on one core.
MAX_FACTORS = 128
TOPK_PRODUCTS = 1 << 22


@dataclass
class RankerConfig:
    """The ranker's shape; saved in the artifact's metadata."""

    n_users: int
    n_movies: int
    n_factors: int = 64

    def to_dict(self) -> dict:
        """Plain-JSON form for metadata.json."""
        return asdict(self)


@dataclass
class RankTrainConfig:
    """The ranker's training recipe; the defaults were chosen on a validation split of MovieLens 100K."""

    epochs: int = 60
    users_per_step: int = 32  # at least; more on larger data sets (see step_plan)
    # On the accuracy bench's MovieLens 100K training file (3 seeds, train.py's validation recall@10):
    # lr 5e-3 0.329, 1e-2 0.319, 3e-3 0.305; 80 epochs 0.329, 40 0.311; wd 0.06 0.328, 0.04 0.308.
    lr: float = 5e-3
    wd: float = 5e-2  # L2 on the factors of each rating's user and movie, per rating
    n_factors: int = 0  # 0: chosen by step_plan from the catalogue's size
    rating_power: float = 1.0  # a rating weighs (its value mapped onto 1..5) ** this (0: every rating alike)

    def to_dict(self) -> dict:
        """Plain-JSON form for metadata.json."""
        return asdict(self)


@dataclass(frozen=True)
class StepPlan:
    """How fit_ranker steps through a data set of a given size."""

    users_per_step: int
    epochs: int
    lr: float
    n_factors: int


def step_plan(n_users: int, n_movies: int, cfg: RankTrainConfig) -> StepPlan:
    """STEPS_PER_EPOCH steps an epoch where MAX_LOGITS allows; else more steps and fewer epochs.

    When the logits cap forces more steps an epoch, the epochs shrink to keep the recipe's number of
    steps, down to MIN_EPOCHS passes over the data. Factors left to the plan are MAX_FACTORS, fewer (in
    steps of 16) where a top-K over the catalogue would score more than TOPK_PRODUCTS.
    """
    per_step = max(cfg.users_per_step, math.ceil(n_users / STEPS_PER_EPOCH))
    per_step = max(1, min(per_step, MAX_LOGITS // max(1, n_movies)))
    lr = cfg.lr * max(1.0, per_step / cfg.users_per_step)
    steps = math.ceil(n_users / per_step)
    epochs = cfg.epochs
    if steps > STEPS_PER_EPOCH:
        epochs = min(cfg.epochs, max(MIN_EPOCHS, round(cfg.epochs * STEPS_PER_EPOCH / steps)))
    factors = cfg.n_factors or max(16, min(MAX_FACTORS, TOPK_PRODUCTS // max(1, n_movies) // 16 * 16))
    return StepPlan(int(per_step), int(epochs), float(lr), int(factors))


class DotRanker(nn.Module):
    """Relevance of (user, movie) pairs: a dot product of their factors plus the movie's bias."""

    def __init__(self, cfg: RankerConfig):
        super().__init__()
        self.u = nn.Embedding(cfg.n_users, cfg.n_factors)
        self.m = nn.Embedding(cfg.n_movies, cfg.n_factors)
        self.mb = nn.Embedding(cfg.n_movies, 1)
        for emb in (self.u, self.m):
            nn.init.normal_(emb.weight, std=0.01)
        nn.init.zeros_(self.mb.weight)

    def forward(self, users: Tensor, movies: Tensor) -> Tensor:
        """Scores, shape [batch]: higher means more likely to be picked, and liked."""
        return (self.u(users) * self.m(movies)).sum(1) + self.mb(movies).squeeze(1)


def _user_rows(indptr: Tensor, users: Tensor) -> tuple[Tensor, Tensor]:
    """The rating rows of a batch of users (sorted by user) and each row's position in the batch."""
    starts, lens = indptr[users], indptr[users + 1] - indptr[users]
    local = torch.repeat_interleave(torch.arange(len(users), device=users.device), lens)
    offsets = torch.arange(len(local), device=users.device) - (torch.cumsum(lens, 0) - lens)[local]
    return starts[local] + offsets, local


def softmax_loss(model: DotRanker, users: Tensor, local: Tensor, movies: Tensor, weight: Tensor) -> Tensor:
    """Weighted mean of -log softmax(score(u, .))[m] over the batch's ratings, each user's logits computed once."""
    logits = model.u(users) @ model.m.weight.T + model.mb.weight.T
    picked = logits[local, movies]
    return ((torch.logsumexp(logits, 1)[local] - picked) * weight).sum() / weight.sum()


def fit_ranker(
    users: np.ndarray,
    movies: np.ndarray,
    ratings: np.ndarray,
    n_users: int,
    n_movies: int,
    cfg: RankTrainConfig,
    device: torch.device,
    seed: int = 0,
    quiet: bool = False,
) -> tuple[DotRanker, list[dict], StepPlan]:
    """Fit a DotRanker on (user row, movie row, rating) rows with Adam and one-cycle.

    Returns the ranker, its per-epoch history and the step plan it ran.
    """
    order = np.argsort(np.asarray(users), kind="stable")
    counts = np.bincount(np.asarray(users, dtype=np.int64), minlength=n_users)
    indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)])).to(device)
    tm = torch.from_numpy(np.asarray(movies, dtype=np.int64)[order]).to(device)
    r = np.asarray(ratings, dtype=np.float32)[order]
    low, span = (float(r.min()), float(np.ptp(r))) if len(r) else (0.0, 0.0)
    liking = 1 + 4 * (r - low) / span if span > 0 else np.ones_like(r)
    weight = torch.from_numpy(liking).to(device) ** cfg.rating_power
    active = torch.from_numpy(np.flatnonzero(counts)).to(device)
    plan = step_plan(len(active), n_movies, cfg)
    torch.manual_seed(seed)
    model = DotRanker(RankerConfig(n_users, n_movies, plan.n_factors)).to(device)
    per_step, epochs = plan.users_per_step, plan.epochs
    steps = math.ceil(len(active) / per_step)
    opt = torch.optim.Adam(model.parameters(), lr=plan.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=plan.lr, total_steps=max(1, epochs * steps))
    gen = torch.Generator(device=device).manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        t0, total = time.perf_counter(), torch.zeros((), device=device)
        model.train()
        perm = active[torch.randperm(len(active), device=device, generator=gen)]
        for start in range(0, len(perm), per_step):
            batch = perm[start : start + per_step]
            rows, local = _user_rows(indptr, batch)
            m, w = tm[rows], weight[rows]
            loss = softmax_loss(model, batch, local, m, w)
            # Per rating, as a step over ratings would: a user's factors count once for each of its ratings.
            u_sq = model.u(batch).pow(2).sum(1)[local]
            penalty = cfg.wd * (u_sq.sum() + model.m(m).pow(2).sum()) / len(rows)
            opt.zero_grad(set_to_none=True)
            (loss + penalty).backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(rows)
        row = {"epoch": epoch, "train_loss": total.item() / max(1, len(r)), "seconds": time.perf_counter() - t0}
        history.append(row)
        if not quiet:
            print(f"ranker epoch {epoch:3d}/{epochs}  softmax loss {row['train_loss']:.4f}  ({row['seconds']:.1f}s)")
    return model.eval(), history, plan
