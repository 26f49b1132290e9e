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

A user's factors are either a free row of their own, or (on data with many users) encoded from the
movies the user rated: the rating-weighted sum of a second per-movie embedding, with half of the
user's movies dropped at random in each step (as in Mult-DAE, Liang et al. 2018). A free row moves
once an epoch, so when an epoch is long the rows stay near where they started; the encoder's
embedding moves at every step, for every user. The artifact holds the encoded rows, so serving is
the same for both.
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
# The scaled learning rate stops here: at 5M synthetic ratings (1,084 users a step, 10 epochs, users
# encoded) recall@10 0.161 at lr 0.02, 0.182 at 0.04, 0.155 at 0.085; free user rows at 0.169 fell to
# 0.077, below a most-popular list's 0.131.
MAX_LR = 0.04
MAX_LOGITS = 1 << 25  # users x movies scored in one step: 128 MB of float32 logits, and as much for their gradient
MIN_EPOCHS = 10
# Factors when the recipe leaves them to the plan: on the accuracy bench's training files (train.py's
# validation, 3 seeds) 128 factors gave recall@10 0.239 against 0.229 for 64 on ml-latest-small (9k
# movies; 192: 0.231) and 0.329 for both on MovieLens 100K (256: 0.324). A served top-K scores
# movies x factors, so a large catalogue gets fewer: TOPK_PRODUCTS keeps ML-25M's 59k movies at 64,
# whose top-10 takes about 1 ms on one core.
MAX_FACTORS = 128
TOPK_PRODUCTS = 1 << 22
# Users from which the plan encodes users' factors from their movies, and the epochs it gives the
# encoder (train.py's validation recall@10, 10 % of the ratings held out): ml-latest-small (671 users)
# free rows 0.239 (60 epochs) against encoded 0.225 (60) and 0.211 (20); 1M synthetic ratings (6.5k
# users) encoded 0.329 in 10 epochs against free 0.326 in 60 and 0.306 in 10, and 0.311 encoded in 60;
# 5M (32.5k users, 10 epochs at the same learning rate) encoded 0.182 against free 0.147.
ENCODE_USERS = 5_000
ENCODED_EPOCHS = 10
FREE_EPOCHS = 60
USER_FACTORS = ("auto", "free", "movies")


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

    epochs: int = 0  # 0: chosen by step_plan (FREE_EPOCHS, or ENCODED_EPOCHS when users are encoded)
    users_per_step: int = 32  # at least; more on larger data sets (see step_plan)
    # On the accuracy bench's MovieLens 100K training file (3 seeds, train.py's validation recall@10):
    # lr 5e-3 0.329, 1e-2 0.319, 3e-3 0.305; 80 epochs 0.329, 40 0.311; wd 0.06 0.328, 0.04 0.308.
    lr: float = 5e-3
    wd: float = 5e-2  # L2 on the factors of each rating's user and movie, per rating
    n_factors: int = 0  # 0: chosen by step_plan from the catalogue's size
    rating_power: float = 1.0  # a rating weighs (its value mapped onto 1..5) ** this (0: every rating alike)
    user_factors: str = "auto"  # "free" rows, "movies" (encoded from the user's movies), "auto": by step_plan
    input_drop: float = 0.5  # share of a user's movies the encoder leaves out in each step

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
    user_factors: str = "free"


def step_plan(n_users: int, n_movies: int, cfg: RankTrainConfig) -> StepPlan:
    """STEPS_PER_EPOCH steps an epoch where MAX_LOGITS allows; else more steps and fewer epochs.

    When the logits cap forces more steps an epoch, the epochs shrink to keep the recipe's number of
    steps, down to MIN_EPOCHS passes over the data. Factors left to the plan are MAX_FACTORS, fewer (in
    steps of 16) where a top-K over the catalogue would score more than TOPK_PRODUCTS. The learning rate
    scales with the users a step, up to MAX_LR (or the recipe's own, if higher). Users' factors
    left to the plan are encoded from their movies from ENCODE_USERS users on, free rows below.
    """
    if cfg.user_factors not in USER_FACTORS:
        raise ValueError(f"user_factors must be one of {', '.join(USER_FACTORS)}, not {cfg.user_factors!r}")
    user_factors = cfg.user_factors
    if user_factors == "auto":
        user_factors = "movies" if n_users >= ENCODE_USERS else "free"
    wanted = cfg.epochs or (ENCODED_EPOCHS if user_factors == "movies" else FREE_EPOCHS)
    per_step = max(cfg.users_per_step, math.ceil(n_users / STEPS_PER_EPOCH))
    per_step = max(1, min(per_step, MAX_LOGITS // max(1, n_movies)))
    lr = min(cfg.lr * max(1.0, per_step / cfg.users_per_step), max(cfg.lr, MAX_LR))
    steps = math.ceil(n_users / per_step)
    epochs = wanted
    if steps > STEPS_PER_EPOCH:
        epochs = min(wanted, max(MIN_EPOCHS, round(wanted * STEPS_PER_EPOCH / steps)))
    factors = cfg.n_factors or max(16, min(MAX_FACTORS, TOPK_PRODUCTS // max(1, n_movies) // 16 * 16))
    return StepPlan(int(per_step), int(epochs), float(lr), int(factors), user_factors)


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


class MovieEncoder(nn.Module):
    """Users' factors from the movies they rated: the rating-weighted sum of the movies' embeddings.

    Divided by the L2 norm of the weights, so that a user with many ratings gets factors on the same
    scale as one with few.
    """

    def __init__(self, n_movies: int, n_factors: int):
        super().__init__()
        self.e = nn.Embedding(n_movies, n_factors)
        nn.init.normal_(self.e.weight, std=0.01)

    def forward(self, n_users: int, local: Tensor, movies: Tensor, weight: Tensor) -> Tensor:
        """[n_users, factors] from each rating's user position (local), movie and weight."""
        e = self.e.weight
        total = e.new_zeros(n_users, e.shape[1]).index_add_(0, local, self.e(movies) * weight[:, None])
        norm = e.new_zeros(n_users).index_add_(0, local, weight * weight).sqrt().clamp_min(1e-6)
        return total / norm[:, None]


def _user_rows(indptr: Tensor, users: Tensor) -> tuple[Tensor, Tensor]:
    """The rating rows of a batch of users (sorted by user) and each row's position in the batch."""
    starts, lens = indptr[users], indptr[users + 1] - indptr[users]
    local = torch.repeat_interleave(torch.arange(len(users), device=users.device), lens)
    offsets = torch.arange(len(local), device=users.device) - (torch.cumsum(lens, 0) - lens)[local]
    return starts[local] + offsets, local


def softmax_loss(model: DotRanker, user_factors: Tensor, local: Tensor, movies: Tensor, weight: Tensor) -> Tensor:
    """Weighted mean of -log softmax(score(u, .))[m] over the batch's ratings, each user's logits computed once."""
    logits = user_factors @ model.m.weight.T + model.mb.weight.T
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
    encoder = MovieEncoder(n_movies, plan.n_factors).to(device) if plan.user_factors == "movies" else None
    per_step, epochs = plan.users_per_step, plan.epochs
    steps = math.ceil(len(active) / per_step)
    params = [model.m.weight, model.mb.weight, *(encoder.parameters() if encoder else [model.u.weight])]
    opt = torch.optim.Adam(params, lr=plan.lr)
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
            # Per rating, as a step over ratings would: a user's factors count once for each of its ratings.
            if encoder is None:
                u = model.u(batch)
                u_sq = u.pow(2).sum(1)[local].sum()
            else:
                keep = torch.rand(len(rows), device=device, generator=gen) >= cfg.input_drop
                u = encoder(len(batch), local[keep], m[keep], w[keep])
                u_sq = encoder.e(m[keep]).pow(2).sum()
            loss = softmax_loss(model, u, local, m, w)
            penalty = cfg.wd * (u_sq + model.m(m).pow(2).sum()) / len(rows)
            opt.zero_grad(set_to_none=True)
            (loss + penalty).backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(rows)
        row = {"epoch": epoch, "train_loss": total.item() / max(1, len(r)), "seconds": time.perf_counter() - t0}
        history.append(row)
        if not quiet:
            print(f"ranker epoch {epoch:3d}/{epochs}  softmax loss {row['train_loss']:.4f}  ({row['seconds']:.1f}s)")
    if encoder is not None:
        _encode_users(model, encoder, indptr, tm, weight, active, per_step)
    return model.eval(), history, plan


@torch.no_grad()
def _encode_users(
    model: DotRanker,
    encoder: MovieEncoder,
    indptr: Tensor,
    movies: Tensor,
    weight: Tensor,
    active: Tensor,
    per_step: int,
) -> None:
    """Write every user's encoding from all their movies (none dropped) into the ranker's user rows."""
    for start in range(0, len(active), per_step):
        batch = active[start : start + per_step]
        rows, local = _user_rows(indptr, batch)
        model.u.weight[batch] = encoder(len(batch), local, movies[rows], weight[rows])
