"""Generate MovieLens-25M-shaped ratings.csv + movies.csv with a planted structure and a known RMSE floor.

Each rating is `clip(round_half(mean + b_user + b_movie + <p_user, q_movie> + noise), 0.5, 5.0)`:
user/movie biases and a rank-k interaction (the planted, learnable part) plus Gaussian noise, put on
the half-star scale. Movie popularity is Zipf-Mandelbrot (p ~ 1/(rank + head * movies)^exponent), user
activity is log-normal with a minimum, and IDs are sparse, like ML-25M's. Users rate more of what they like:
the movies a user rates are drawn with probability ~ popularity * exp(strength * affinity), affinity =
b_movie + <p_user, q_movie> (the planted rating less the user's mean and bias; --exposure-strength, 0 =
popularity alone, the files of before). The noise makes some error unavoidable; `generation.json`
records that floor so a trained model can be judged against it:

- rmse_floor: sqrt(E[Var(y | planted)]), the RMSE of the best possible predictor E[y | planted],
  computed exactly per row from the Gaussian noise (no predictor can beat it in expectation);
- rmse_planted_rounded: the planted rating rounded/clipped like the data, against the written rating;
- rmse_planted: the planted rating, clipped to the scale only, against the written rating.

`planted.npz` (NumPy arrays, no pickle) holds the planted model and the IDs its rows stand for, so a ranking
can be scored against the truth: `load_planted(folder)`, and `planted_top_k(folder, users, k)` for each
user's true best movies among those they did not rate.

    python -m movierec.datagen --out /tmp/ml25m                 # full size, about 25M rows
    python -m movierec.datagen --out /tmp/small --n-users 1000 --n-movies 500 --n-ratings 50000
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from movierec.flags import add_renamed

HALF_STARS = np.arange(1, 11) / 2  # 0.5 .. 5.0
FIRST_TS, LAST_TS = 789_652_009, 1_574_327_703  # ML-25M's first and last rating times
GENRES = (
    "Action Adventure Animation Children Comedy Crime Documentary Drama Fantasy Film-Noir Horror IMAX "
    "Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
HEAVY_SHARE = 8  # a user rating more than 1/8 of the catalogue is sampled exactly (Gumbel top-k)
MAX_DRAWS = 4_000_000  # popularity draws held at once while exposure rejects some (bounds memory)
EXACT_MOVIES = 1024  # movies whose <p, q> bounds the exposure rejection exactly (the rest: Cauchy-Schwarz)


@dataclass
class GenConfig:
    """Sizes and shape of the generated data; the defaults are ML-25M's sizes."""

    n_users: int = 162_541
    n_movies: int = 59_047
    n_ratings: int = 25_000_095
    min_per_user: int = 20
    activity_sigma: float = 1.1  # log-normal sigma of the per-user rating counts
    zipf_exponent: float = 1.4
    zipf_head: float = 0.0034  # popularity offset as a share of the catalogue: 200 ranks of ML-25M's 59k
    rank: int = 8
    mean: float = 3.5
    user_bias_sd: float = 0.5
    movie_bias_sd: float = 0.45
    interaction_sd: float = 0.6  # standard deviation of <p_user, q_movie>
    noise_sd: float = 0.5
    exposure_strength: float = 0.5  # users rate movies ~ popularity * exp(this * affinity); 0: popularity alone
    id_spread: float = 3.0  # IDs are drawn from 1 .. id_spread * n without replacement
    seed: int = 0
    chunk_ratings: int = 2_000_000  # rows generated per step; part of the stream, like the seed

    def check(self) -> None:
        """Raise ValueError when the sizes cannot be met."""
        if min(self.n_users, self.n_movies, self.min_per_user, self.rank) < 1:
            raise ValueError("users, movies, min-per-user and rank must be >= 1")
        if not self.min_per_user <= self.n_movies:
            raise ValueError(f"min-per-user {self.min_per_user} exceeds the {self.n_movies} movies")
        lo, hi = self.n_users * self.min_per_user, self.n_users * self.n_movies
        if not lo <= self.n_ratings <= hi:
            raise ValueError(f"ratings must be in [{lo:,}, {hi:,}] for these users/movies/min-per-user")
        if self.id_spread < 1:
            raise ValueError("id-spread must be >= 1")
        if not self.exposure_strength >= 0:
            raise ValueError("exposure-strength must be >= 0")


def shape_for(n_ratings: int) -> GenConfig:
    """ML-25M's shape scaled to n_ratings: users and movies in proportion, the matrix at most 1/4 full."""
    full = GenConfig()
    share = n_ratings / full.n_ratings
    n_users = max(2, min(round(full.n_users * share), n_ratings // full.min_per_user))
    n_movies = max(full.min_per_user * 2, round(full.n_movies * share), -(-4 * n_ratings // n_users))
    return GenConfig(n_users=n_users, n_movies=n_movies, n_ratings=n_ratings)


@dataclass
class Planted:
    """The hidden model behind the ratings: biases, factors and movie popularity."""

    user_bias: np.ndarray
    movie_bias: np.ndarray
    user_factors: np.ndarray
    movie_factors: np.ndarray
    popularity_cdf: np.ndarray

    def score(self, users: np.ndarray, movies: np.ndarray, mean: float) -> np.ndarray:
        """The noiseless planted rating of each (user row, movie row)."""
        dot = np.einsum("ij,ij->i", self.user_factors[users], self.movie_factors[movies])
        return mean + self.user_bias[users] + self.movie_bias[movies] + dot

    def affinity(self, users: np.ndarray) -> np.ndarray:
        """How much each user (row) likes every movie beyond their own mean: b_movie + <p_user, q_movie>, users x movies."""
        return self.movie_bias[None, :] + self.user_factors[users] @ self.movie_factors.T

    def exposure_cdf(self, strength: float) -> np.ndarray:
        """Cumulative popularity * exp(strength * b_movie): the user-independent part of exposure."""
        if not strength:
            return self.popularity_cdf
        tilt = np.exp(strength * (self.movie_bias.astype(np.float64) - self.movie_bias.max()))
        cdf = np.cumsum(np.diff(np.r_[0.0, self.popularity_cdf]) * tilt)
        return cdf / cdf[-1]


def alias_table(cdf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table (Vose) of the weights whose cumulative sum is cdf: O(1) draws instead of a search."""
    n = len(cdf)
    prob = (np.diff(np.r_[0.0, cdf]) / cdf[-1] * n).tolist()
    alias = list(range(n))
    small = [i for i, p in enumerate(prob) if p < 1.0]
    large = [i for i, p in enumerate(prob) if p >= 1.0]
    while small and large:
        lo, hi = small.pop(), large[-1]
        alias[lo] = hi
        prob[hi] -= 1.0 - prob[lo]
        if prob[hi] < 1.0:
            small.append(large.pop())
    for i in small + large:  # what is left is 1 up to rounding
        prob[i] = 1.0
    return np.array(prob), np.array(alias, dtype=np.int64)


@dataclass
class Taste:
    """The user-dependent part of exposure for a block of users: exp(strength * <p_user, q_movie>).

    A popularity draw is kept with probability exp(strength * (<p, q> - bound)), bound >= max <p, q> over the
    movies, so the kept draws are exact draws from popularity * exp(strength * affinity). The bound is the
    exact maximum over the EXACT_MOVIES longest q and Cauchy-Schwarz (|p| |q|) over the shorter rest.
    """

    user_factors: np.ndarray  # the block's users, in row order
    movie_factors: np.ndarray
    strength: float
    alias: tuple[np.ndarray, np.ndarray]  # alias_table of the user-independent part (Planted.exposure_cdf)

    def __post_init__(self) -> None:
        """Per-user bound and expected acceptance (Gaussian factors), to size the draws."""
        users = self.user_factors.astype(np.float64)
        norm = np.sqrt((users**2).sum(axis=1))
        q_sq = (self.movie_factors.astype(np.float64) ** 2).sum(axis=1)
        longest = np.argsort(-q_sq, kind="stable")
        head, rest = longest[:EXACT_MOVIES], np.sqrt(q_sq[longest[EXACT_MOVIES:]].max(initial=0.0))
        exact = (users @ self.movie_factors[head].T.astype(np.float64)).max(axis=1)
        self.bound = np.maximum(exact, norm * rest)
        var = q_sq.mean() / self.movie_factors.shape[1]
        self.rate = np.clip(np.exp(self.strength**2 * norm**2 * var / 2 - self.strength * self.bound), 1e-3, 1.0)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n movie rows from the user-independent part, by the alias table."""
        prob, alias = self.alias
        spot = rng.random(n) * len(prob)
        movie = spot.astype(np.int64)
        return np.where(spot - movie < prob[movie], movie, alias[movie])

    def keep(self, rng: np.random.Generator, users: np.ndarray, movies: np.ndarray) -> np.ndarray:
        """Accept or reject each (block row, movie row) popularity draw."""
        chance = rng.random(len(users))
        kept = np.empty(len(users), dtype=bool)
        for lo in range(0, len(users), 1 << 20):  # the gathered factors stay small
            u, m = users[lo : lo + (1 << 20)], movies[lo : lo + (1 << 20)]
            dot = np.einsum("ij,ij->i", self.user_factors[u], self.movie_factors[m]).astype(np.float64)
            kept[lo : lo + len(u)] = chance[lo : lo + len(u)] < np.exp(self.strength * (dot - self.bound[u]))
        return kept

    def logits(self, row: int) -> np.ndarray:
        """strength * <p, q> of one block row against every movie (the exact path for heavy users)."""
        return self.strength * (self.movie_factors @ self.user_factors[row]).astype(np.float64)


def user_counts(cfg: GenConfig, rng: np.random.Generator) -> np.ndarray:
    """Per-user rating counts: log-normal shares above the minimum, summing to n_ratings, <= n_movies."""
    weight = rng.lognormal(0.0, cfg.activity_sigma, cfg.n_users)
    counts = np.full(cfg.n_users, cfg.min_per_user, dtype=np.int64)
    extra = cfg.n_ratings - counts.sum()
    while extra > 0:  # more than one pass only when some user hits the catalogue size
        room = cfg.n_movies - counts
        share = np.where(room > 0, weight, 0.0)
        ideal = extra * share / share.sum()
        add = np.minimum(np.floor(ideal).astype(np.int64), room)
        left = extra - add.sum()
        # Largest fractional parts take the remainder, so the total is exact.
        order = np.argsort(-(ideal - np.floor(ideal)), kind="stable")
        order = order[(room - add)[order] > 0][:left]
        add[order] += 1
        counts += add
        extra = cfg.n_ratings - counts.sum()
    return counts


def plant(cfg: GenConfig, rng: np.random.Generator) -> Planted:
    """Draw biases, rank-k factors and a Zipf popularity over a shuffled catalogue."""
    factor_sd = (cfg.interaction_sd**2 / cfg.rank) ** 0.25  # Var<p, q> = rank * sd^4
    rank_of = rng.permutation(cfg.n_movies)  # popular movies are spread over the ID range
    weight = 1.0 / (rank_of + 1.0 + cfg.zipf_head * cfg.n_movies) ** cfg.zipf_exponent
    cdf = np.cumsum(weight / weight.sum())
    return Planted(
        rng.normal(0, cfg.user_bias_sd, cfg.n_users).astype(np.float32),
        rng.normal(0, cfg.movie_bias_sd, cfg.n_movies).astype(np.float32),
        rng.normal(0, factor_sd, (cfg.n_users, cfg.rank)).astype(np.float32),
        rng.normal(0, factor_sd, (cfg.n_movies, cfg.rank)).astype(np.float32),
        cdf / cdf[-1],
    )


def sparse_ids(rng: np.random.Generator, n: int, spread: float) -> np.ndarray:
    """n distinct ascending IDs drawn from 1 .. spread * n (not 0..n-1 contiguous)."""
    return np.sort(rng.choice(int(n * spread), size=n, replace=False)).astype(np.int64) + 1


def _sample_light(
    rng: np.random.Generator, counts: np.ndarray, cdf: np.ndarray, taste: Taste | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct movies per user by weighted draws (cdf, then taste), discarding repeats (sampling without replacement)."""
    n_movies = len(cdf)
    need = counts.astype(np.int64).copy()
    taken = np.zeros(0, dtype=np.int64)  # user * n_movies + movie, sorted
    boost = np.full(len(need), 1.15)  # doubled for a user each pass it falls short (tilted draws repeat more)
    while need.sum() > 0:
        users = np.flatnonzero(need)
        if taste is None:
            draws = np.ceil(need[users] * 1.15).astype(np.int64) + 4
        else:  # more draws where fewer are kept; the rest of the users wait for the next pass
            draws = np.minimum(np.ceil(need[users] * boost[users] / taste.rate[users]).astype(np.int64) + 16, MAX_DRAWS)
            fits = max(1, int(np.searchsorted(np.cumsum(draws), MAX_DRAWS, side="right")))
            users, draws = users[:fits], draws[:fits]
        u = np.repeat(users, draws)
        if taste is None:
            m = np.minimum(np.searchsorted(cdf, rng.random(len(u)), side="right"), n_movies - 1)
        else:
            m = taste.draw(rng, len(u))
            kept = taste.keep(rng, u, m)
            u, m = u[kept], m[kept]
        key = u * n_movies + m
        if len(taken):
            key = key[taken[np.minimum(np.searchsorted(taken, key), len(taken) - 1)] != key]
        _, first = np.unique(key, return_index=True)
        key = key[np.sort(first)]  # first draws of each pair, still grouped by user in draw order
        u = key // n_movies
        starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
        rank = np.arange(len(u)) - np.repeat(starts, np.diff(np.r_[starts, len(u)]))
        key = key[rank < need[u]]
        taken = np.sort(np.concatenate([taken, np.sort(key)]), kind="stable")  # a merge of two sorted runs
        need -= np.bincount(key // n_movies, minlength=len(need))
        if taste is not None:
            boost[users[need[users] > 0]] *= 2
    return taken // n_movies, taken % n_movies


def _sample_heavy(
    rng: np.random.Generator, rows: np.ndarray, counts: np.ndarray, cdf: np.ndarray, taste: Taste | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct movies per user by Gumbel top-k on log weight (exact sampling without replacement)."""
    log_p = np.log(np.diff(np.r_[0.0, cdf]) + 1e-300)
    users, movies = [], []
    for row, count in zip(rows.tolist(), counts.tolist(), strict=True):
        logit = log_p if taste is None else log_p + taste.logits(row)
        keys = logit - np.log(-np.log(rng.random(len(cdf))))
        top = np.sort(np.argpartition(-keys, count - 1)[:count])
        users.append(np.full(count, row, dtype=np.int64))
        movies.append(top.astype(np.int64))
    return np.concatenate(users), np.concatenate(movies)


def sample_pairs(
    rng: np.random.Generator, counts: np.ndarray, cdf: np.ndarray, taste: Taste | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Unique (user row, movie row) pairs, counts[u] per user, sorted by user then movie.

    Drawn ~ the weights whose cumulative sum is cdf, times exp(strength * <p, q>) when a taste is given.
    """
    heavy = counts * HEAVY_SHARE > len(cdf)
    lu, lm = _sample_light(rng, np.where(heavy, 0, counts), cdf, taste)
    if not heavy.any():
        return lu, lm
    hrows = np.flatnonzero(heavy)
    hu, hm = _sample_heavy(rng, hrows, counts[hrows], cdf, taste)
    u, m = np.concatenate([lu, hu]), np.concatenate([lm, hm])
    order = np.lexsort((m, u))
    return u[order], m[order]


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF, vectorised (Abramowitz-Stegun 7.1.26 erf, error < 1.5e-7)."""
    z = np.abs(x) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-z * z)
    return 0.5 * (1.0 + np.sign(x) * erf)


def expected_rating(planted: np.ndarray, noise_sd: float) -> tuple[np.ndarray, np.ndarray]:
    """E[y | planted] and Var[y | planted] for y = clip(round_half(planted + noise)), exactly per row."""
    edges = (HALF_STARS[:-1] + 0.25)[None, :]  # y = 0.5 below 0.75, ..., 5.0 above 4.75
    below = _normal_cdf((edges - planted[:, None].astype(np.float64)) / noise_sd)
    prob = np.diff(np.concatenate([np.zeros((len(planted), 1)), below, np.ones((len(planted), 1))], axis=1), axis=1)
    mean = prob @ HALF_STARS
    var = prob @ HALF_STARS**2 - mean**2
    return mean, np.maximum(var, 0.0)


def to_half_stars(score: np.ndarray) -> np.ndarray:
    """Round to the nearest half star and clip to 0.5..5.0."""
    return np.clip(np.round(score * 2) / 2, 0.5, 5.0)


def _chunks(counts: np.ndarray, rows_per_chunk: int) -> list[tuple[int, int]]:
    """User ranges [start, stop) holding about rows_per_chunk ratings each."""
    ends = np.cumsum(counts)
    cuts = np.searchsorted(ends, np.arange(rows_per_chunk, ends[-1], rows_per_chunk), side="right")
    bounds = np.unique(np.r_[0, cuts, len(counts)])
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


@dataclass
class FloorStats:
    """Running sums for the RMSE floors and the rating distribution."""

    n: int = 0
    expected_var: float = 0.0
    bayes_sq: float = 0.0
    rounded_sq: float = 0.0
    planted_sq: float = 0.0
    rating_sum: float = 0.0
    rating_sq: float = 0.0

    def add(self, planted: np.ndarray, rating: np.ndarray, noise_sd: float) -> None:
        """Fold one chunk of planted scores and written ratings into the sums."""
        mean, var = expected_rating(planted, noise_sd)
        self.n += len(rating)
        self.expected_var += float(var.sum())
        self.bayes_sq += float(((rating - mean) ** 2).sum())
        self.rounded_sq += float(((rating - to_half_stars(planted)) ** 2).sum())
        self.planted_sq += float(((rating - np.clip(planted, 0.5, 5.0)) ** 2).sum())
        self.rating_sum += float(rating.sum())
        self.rating_sq += float((rating.astype(np.float64) ** 2).sum())

    def report(self) -> dict:
        """RMSE floors and rating mean/sd, rounded for the JSON."""
        n = max(self.n, 1)
        mean = self.rating_sum / n
        return {
            "rmse_floor": round(float(np.sqrt(self.expected_var / n)), 5),
            "rmse_floor_observed": round(float(np.sqrt(self.bayes_sq / n)), 5),
            "rmse_planted_rounded": round(float(np.sqrt(self.rounded_sq / n)), 5),
            "rmse_planted": round(float(np.sqrt(self.planted_sq / n)), 5),
            "rating_mean": round(mean, 4),
            "rating_sd": round(float(np.sqrt(max(self.rating_sq / n - mean**2, 0.0))), 4),
        }


RATING_SCHEMA = pa.schema(
    [("userId", pa.int64()), ("movieId", pa.int64()), ("rating", pa.string()), ("timestamp", pa.int64())]
)
RATING_TEXT = pa.array([f"{v:.1f}" for v in HALF_STARS])  # "4.0", as MovieLens writes it


def write_movies(path: Path, movie_ids: np.ndarray, rng: np.random.Generator) -> None:
    """Write movies.csv: movieId,title,genres with a year in the title and 1-3 genres."""
    years = rng.integers(1915, 2020, len(movie_ids))
    n_genres = rng.integers(1, 4, len(movie_ids))
    picks = rng.random((len(movie_ids), len(GENRES))).argsort(axis=1)
    genres = ["|".join(GENRES[g] for g in row[:k]) for row, k in zip(picks, n_genres, strict=True)]
    titles = [f"Synthetic Movie {m} ({y})" for m, y in zip(movie_ids.tolist(), years.tolist(), strict=True)]
    table = pa.table({"movieId": pa.array(movie_ids), "title": titles, "genres": genres})
    with open(path, "wb") as fh:
        fh.write(b"movieId,title,genres\n")
        pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=False, quoting_style="none"))


def write_planted(path: Path, planted: Planted, user_ids: np.ndarray, movie_ids: np.ndarray) -> None:
    """Write planted.npz: the planted model's arrays and the user/movie IDs their rows stand for."""
    np.savez(path, user_id=user_ids, movie_id=movie_ids, **asdict(planted))


@dataclass
class Truth:
    """What generated a folder: the planted model, the IDs of its rows, the mean and the RMSE floor."""

    planted: Planted
    user_ids: np.ndarray  # ascending; row i of the user arrays is user user_ids[i]
    movie_ids: np.ndarray
    mean: float
    rmse_floor: float

    def rows(self, ids: np.ndarray, of: str) -> np.ndarray:
        """Rows of the given user or movie IDs; ValueError naming the first unknown one."""
        known = self.user_ids if of == "user" else self.movie_ids
        ids = np.asarray(ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(known, ids), len(known) - 1)
        bad = known[at] != ids
        if bad.any():
            raise ValueError(f"{of} {int(ids[bad][0])} is not in the generated data")
        return at


def load_planted(folder: Path) -> Truth:
    """Read planted.npz and generation.json of a generated folder."""
    report = json.loads((Path(folder) / "generation.json").read_text())
    with np.load(Path(folder) / report["files"]["planted"], allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    user_ids, movie_ids = arrays.pop("user_id"), arrays.pop("movie_id")
    return Truth(Planted(**arrays), user_ids, movie_ids, report["config"]["mean"], report["rmse_floor"])


def users_estimated_rmse(folder: Path, val_frac: float = 0.1, seed: int = 0) -> float:
    """Validation RMSE of the planted movies with each user learned from that user's training rows.

    The split is model.data.split_indices(rows, val_frac, seed), as train.py's. Each user's bias and
    factors are the posterior mean under the generator's priors (half-star rounding counted as noise),
    so this is what a model that knew every movie exactly could reach: a model that must also learn
    the movies should not be expected to come closer to rmse_floor than this.
    """
    from model.data import split_indices

    truth, cfg = load_planted(folder), json.loads((Path(folder) / "generation.json").read_text())["config"]
    planted = truth.planted
    read = pacsv.ConvertOptions(include_columns=["userId", "movieId", "rating"])
    table = pacsv.read_csv(Path(folder) / "ratings.csv", convert_options=read)
    users = truth.rows(table["userId"].to_numpy(), "user")
    movies = truth.rows(table["movieId"].to_numpy(), "movie")
    y = table["rating"].to_numpy().astype(np.float64)
    train, val = split_indices(len(y), val_frac, seed)
    x = np.hstack(
        [np.ones((len(planted.movie_bias), 1)), planted.movie_factors]
    )  # what a user's bias and factors weigh
    noise = cfg["noise_sd"] ** 2 + 0.5**2 / 12
    factor_var = np.sqrt(cfg["interaction_sd"] ** 2 / cfg["rank"])  # of each factor: Var<p, q> = rank * var^2
    prior = np.diag([noise / cfg["user_bias_sd"] ** 2] + [noise / factor_var] * (x.shape[1] - 1))
    residual = y - truth.mean - planted.movie_bias[movies]
    order = train[np.argsort(users[train], kind="stable")]
    cuts = np.searchsorted(users[order], np.arange(len(truth.user_ids) + 1))
    weights = np.zeros((len(truth.user_ids), x.shape[1]))
    for user in range(len(weights)):
        rows = order[cuts[user] : cuts[user + 1]]
        xu = x[movies[rows]]
        weights[user] = np.linalg.solve(xu.T @ xu + prior, xu.T @ residual[rows])
    score = truth.mean + planted.movie_bias[movies[val]] + np.einsum("ij,ij->i", weights[users[val]], x[movies[val]])
    return float(np.sqrt(np.mean((expected_rating(score, cfg["noise_sd"])[0] - y[val]) ** 2)))


def _rated_by(folder: Path, users: np.ndarray) -> dict[int, np.ndarray]:
    """Movie IDs each of the given users rated in folder/ratings.csv."""
    read = pacsv.ConvertOptions(include_columns=["userId", "movieId"])
    table = pacsv.read_csv(Path(folder) / "ratings.csv", convert_options=read)
    table = table.filter(pc.is_in(table["userId"], pa.array(users, type=pa.int64())))
    u, m = table["userId"].to_numpy(), table["movieId"].to_numpy()
    order = np.argsort(u, kind="stable")
    u, m = u[order], m[order]
    cuts = np.searchsorted(u, users), np.searchsorted(u, users, side="right")
    return {user: m[a:b] for user, a, b in zip(users.tolist(), *cuts, strict=True)}


def planted_top_k(
    folder: Path, users: np.ndarray, k: int = 10, exclude: dict | None = None, block: int = 256
) -> dict[int, np.ndarray]:
    """Each user's k truly best movies (highest planted rating) that they did not rate, best first, as movie IDs.

    users are user IDs. exclude maps a user ID to the movie IDs to leave out (say, a model's training
    ratings); by default every movie the user rated in folder/ratings.csv.
    """
    truth = load_planted(folder)
    users = np.asarray(users, dtype=np.int64)
    rows = truth.rows(users, "user")
    exclude = _rated_by(folder, users) if exclude is None else exclude
    k = min(k, len(truth.movie_ids))
    best: dict[int, np.ndarray] = {}
    for lo in range(0, len(users), block):  # users x movies scores one block at a time
        score = truth.planted.affinity(rows[lo : lo + block])
        for i, user in enumerate(users[lo : lo + block].tolist()):
            seen = exclude.get(user, ())
            if len(seen):
                score[i, truth.rows(seen, "movie")] = -np.inf
            top = np.argpartition(-score[i], k - 1)[:k]
            top = top[np.argsort(-score[i, top], kind="stable")]
            best[user] = truth.movie_ids[top[np.isfinite(score[i, top])]]
    return best


def generate(cfg: GenConfig, out: Path, quiet: bool = False) -> dict:
    """Write ratings.csv, movies.csv, planted.npz and generation.json into out; return the JSON's content."""
    cfg.check()
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(cfg.seed).spawn(3)
    rng = np.random.default_rng(seeds[0])
    counts = user_counts(cfg, rng)
    planted = plant(cfg, rng)
    user_ids, movie_ids = sparse_ids(rng, cfg.n_users, cfg.id_spread), sparse_ids(rng, cfg.n_movies, cfg.id_spread)
    start = rng.integers(FIRST_TS, LAST_TS, cfg.n_users)
    span = np.minimum(rng.lognormal(np.log(30 * 86400), 2.0, cfg.n_users), LAST_TS - start).astype(np.int64) + 1
    write_movies(out / "movies.csv", movie_ids, np.random.default_rng(seeds[1]))
    write_planted(out / "planted.npz", planted, user_ids, movie_ids)
    cdf = planted.exposure_cdf(cfg.exposure_strength)
    alias = alias_table(cdf) if cfg.exposure_strength else None

    chunks = _chunks(counts, cfg.chunk_ratings)
    chunk_seeds = seeds[2].spawn(len(chunks))
    stats, rated = FloorStats(), np.zeros(cfg.n_movies, dtype=bool)
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with (
        open(out / "ratings.csv", "wb") as fh,
        tqdm(total=cfg.n_ratings, unit=" ratings", unit_scale=True, disable=quiet, desc="ratings.csv") as bar,
    ):
        fh.write(b"userId,movieId,rating,timestamp\n")
        writer = pacsv.CSVWriter(fh, RATING_SCHEMA, write_options=options)
        for (lo, hi), seed in zip(chunks, chunk_seeds, strict=True):
            crng = np.random.default_rng(seed)
            taste = None
            if cfg.exposure_strength:
                taste = Taste(planted.user_factors[lo:hi], planted.movie_factors, cfg.exposure_strength, alias)
            users, movies = sample_pairs(crng, counts[lo:hi], cdf, taste)
            users += lo
            score = planted.score(users, movies, cfg.mean).astype(np.float64)
            rating = to_half_stars(score + crng.normal(0, cfg.noise_sd, len(score)))
            stats.add(score, rating, cfg.noise_sd)
            rated[movies] = True
            stamp = start[users] + (crng.random(len(users)) * span[users]).astype(np.int64)
            star = RATING_TEXT.take(pa.array(np.rint(rating * 2).astype(np.int32) - 1))
            batch = pa.record_batch([user_ids[users], movie_ids[movies], star, stamp], schema=RATING_SCHEMA)
            writer.write_batch(batch)
            bar.update(len(users))
        writer.close()
    report = {
        "files": {"ratings": "ratings.csv", "movies": "movies.csv", "planted": "planted.npz"},
        "counts": {
            "ratings": int(counts.sum()),
            "users": cfg.n_users,
            "movies": cfg.n_movies,
            "movies_rated": int(rated.sum()),
            "max_per_user": int(counts.max()),
            "median_per_user": float(np.median(counts)),
        },
        **stats.report(),
        "seconds": round(time.perf_counter() - started, 1),
        "config": asdict(cfg),
    }
    (out / "generation.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; every size and shape parameter of GenConfig."""
    d = GenConfig()
    p = argparse.ArgumentParser(prog="python -m movierec.datagen", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", required=True, type=Path, help="folder for ratings.csv, movies.csv, planted.npz, generation.json"
    )
    p.add_argument("--n-users", type=int, default=d.n_users, help="number of users (default %(default)s)")
    p.add_argument("--n-movies", type=int, default=d.n_movies, help="catalogue size (default %(default)s)")
    p.add_argument("--n-ratings", type=int, default=d.n_ratings, help="number of ratings (default %(default)s)")
    # The old spellings: elsewhere (train.py) --ratings/--movies name files, so counts say n-.
    for name in ("users", "movies", "ratings"):
        add_renamed(p, f"--{name}", f"--n-{name}", type=int)
    p.add_argument("--min-per-user", type=int, default=d.min_per_user, help="default %(default)s, as ML-25M")
    p.add_argument("--activity-sigma", type=float, default=d.activity_sigma, help="log-normal sigma of user counts")
    p.add_argument("--zipf-exponent", type=float, default=d.zipf_exponent, help="popularity ~ 1/(rank+offset)^this")
    p.add_argument("--zipf-head", type=float, default=d.zipf_head, help="offset / movies: flattens the head")
    p.add_argument("--rank", type=int, default=d.rank, help="rank of the planted user x movie interaction")
    p.add_argument("--noise-sd", type=float, default=d.noise_sd, help="Gaussian noise before rounding")
    p.add_argument(
        "--exposure-strength",
        type=float,
        default=d.exposure_strength,
        help="users rate movies ~ popularity * exp(this * planted affinity); 0: popularity alone (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="same seed and sizes give the same files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generate the files and print the summary with the RMSE floor."""
    args = parse_args(argv)
    cfg = GenConfig(
        n_users=args.n_users,
        n_movies=args.n_movies,
        n_ratings=args.n_ratings,
        min_per_user=args.min_per_user,
        activity_sigma=args.activity_sigma,
        zipf_exponent=args.zipf_exponent,
        zipf_head=args.zipf_head,
        rank=args.rank,
        noise_sd=args.noise_sd,
        exposure_strength=args.exposure_strength,
        seed=args.seed,
    )
    try:
        cfg.check()
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    report = generate(cfg, args.out, quiet=args.quiet)
    c = report["counts"]
    print(
        f"wrote {args.out}/ratings.csv: {c['ratings']:,} ratings, {c['users']:,} users, "
        f"{c['movies_rated']:,} of {c['movies']:,} movies rated, in {report['seconds']}s"
    )
    print(
        f"RMSE floor {report['rmse_floor']:.4f} (best possible predictor); planted rating rounded "
        f"{report['rmse_planted_rounded']:.4f}, unrounded {report['rmse_planted']:.4f}; "
        f"see {args.out}/generation.json"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
