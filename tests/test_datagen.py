"""The scale data generator: deterministic, MovieLens-shaped, unique pairs, half stars, a correct RMSE floor,
exposure that follows the planted preference, and the planted truth written beside the ratings."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.data import load_ratings, load_titles
from movierec import datagen
from movierec.datagen import (
    GenConfig,
    Taste,
    alias_table,
    expected_rating,
    generate,
    load_planted,
    main,
    parse_args,
    planted_top_k,
    sample_pairs,
    user_counts,
    users_estimated_rmse,
)

SMALL = GenConfig(n_users=400, n_movies=300, n_ratings=30_000, min_per_user=20, chunk_ratings=7_000, seed=3)


def digest(folder: Path) -> tuple[str, str]:
    """sha256 of the two written CSVs."""
    return tuple(hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in ("ratings.csv", "movies.csv"))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict, pd.DataFrame]:
    """SMALL generated once: (folder, generation.json, ratings.csv as read by pandas)."""
    out = tmp_path_factory.mktemp("gen")
    report = generate(SMALL, out, quiet=True)
    return out, report, pd.read_csv(out / "ratings.csv")


def test_same_seed_same_files_other_seed_other_files(tmp_path, small):
    out, _, _ = small
    generate(SMALL, tmp_path / "again", quiet=True)
    generate(replace(SMALL, seed=4), tmp_path / "other", quiet=True)
    assert digest(tmp_path / "again") == digest(out)
    assert digest(tmp_path / "other")[0] != digest(out)[0]


# sha256 of ratings.csv and movies.csv as the generator wrote them before exposure followed preference
# (commit e6c246c): --exposure-strength 0 must still write exactly these files.
POPULARITY_ONLY = {
    "small": (
        "987b84a296f0caef02808b73888e881bc49ad8fcf122909a6bc95ef8e2400fe4",
        "8b4a4b817afa2a3942664d403b1c5187296971bd1f73fb2c287c826737fc7312",
    ),
    "heavy": (
        "6cd1298124358b1f998cf6f0e34a73f4fd772c7d25b54c39640de4de45f2254d",
        "77aff514bce6093882ca48dc857d83dc350207a51eedf8d74810ce4a98fd1e11",
    ),
}
HEAVY = replace(SMALL, n_users=30, n_movies=100, n_ratings=2_700, min_per_user=50)


@pytest.mark.parametrize("name", ["small", "heavy"])
def test_exposure_strength_zero_writes_the_popularity_only_files(tmp_path, name):
    cfg = {"small": SMALL, "heavy": HEAVY}[name]
    generate(replace(cfg, exposure_strength=0.0), tmp_path, quiet=True)
    assert digest(tmp_path) == POPULARITY_ONLY[name]


def rated_affinity(folder: Path) -> float:
    """Mean planted affinity (b_movie + <p, q>) of the pairs in folder/ratings.csv."""
    truth = load_planted(folder)
    frame = pd.read_csv(folder / "ratings.csv")
    users, movies = truth.rows(frame["userId"], "user"), truth.rows(frame["movieId"], "movie")
    dot = np.einsum("ij,ij->i", truth.planted.user_factors[users], truth.planted.movie_factors[movies])
    return float((truth.planted.movie_bias[movies] + dot).mean())


def test_users_rate_more_of_what_they_like(tmp_path):
    # A sparse matrix (2% full), as at scale, where exposure has room to choose.
    cfg = replace(SMALL, n_users=300, n_movies=2_000, n_ratings=12_000)
    shifts = {}
    for strength in (0.0, 0.5, 1.0):
        generate(replace(cfg, exposure_strength=strength), tmp_path / str(strength), quiet=True)
        shifts[strength] = rated_affinity(tmp_path / str(strength))
    # Tilting a Gaussian affinity by exp(strength * affinity) moves its mean by strength * variance (0.56 per
    # unit here); sampling without replacement and popular movies' own biases take some of that back.
    variance = cfg.movie_bias_sd**2 + cfg.interaction_sd**2
    gain_half, gain_full = shifts[0.5] - shifts[0.0], shifts[1.0] - shifts[0.0]
    assert 0.15 * variance < gain_half < gain_full - 0.15 * variance


@pytest.mark.parametrize("n_movies", [12, 6])  # 12: popularity draws and rejection; 6: every user is heavy
def test_exposure_draws_follow_popularity_times_preference(n_movies):
    rng = np.random.default_rng(1)
    movie_factors = rng.normal(0, 0.7, (n_movies, 3)).astype(np.float32)
    user = rng.normal(0, 0.7, 3).astype(np.float32)
    popularity = rng.random(n_movies) ** 3
    cdf = np.cumsum(popularity / popularity.sum())
    cdf /= cdf[-1]
    n_users, strength = 40_000, 1.5
    taste = Taste(np.tile(user, (n_users, 1)), movie_factors, strength, alias_table(cdf))
    _, movies = sample_pairs(rng, np.ones(n_users, dtype=np.int64), cdf, taste)
    want = popularity * np.exp(strength * (movie_factors @ user))
    want /= want.sum()
    got = np.bincount(movies, minlength=n_movies) / n_users
    np.testing.assert_allclose(got, want, atol=4 * np.sqrt(want * (1 - want) / n_users).max())


def test_planted_truth_round_trips(small):
    out, report, frame = small
    assert report["files"]["planted"] == "planted.npz"
    truth = load_planted(out)
    assert truth.rmse_floor == report["rmse_floor"] and truth.mean == SMALL.mean
    assert len(truth.user_ids) == SMALL.n_users and set(frame["userId"]) == set(truth.user_ids)
    assert set(frame["movieId"]) <= set(truth.movie_ids) and len(truth.movie_ids) == SMALL.n_movies
    # The stored model scores the written ratings exactly as the generator did: same rounded-planted RMSE.
    users, movies = truth.rows(frame["userId"], "user"), truth.rows(frame["movieId"], "movie")
    score = truth.planted.score(users, movies, truth.mean).astype(np.float64)
    rounded = np.sqrt(((frame["rating"].to_numpy() - datagen.to_half_stars(score)) ** 2).mean())
    assert round(float(rounded), 5) == report["rmse_planted_rounded"]
    with pytest.raises(ValueError, match="user 0 is not in the generated data"):
        truth.rows(np.array([0]), "user")


def test_planted_top_k_is_the_best_unrated(small):
    out, _, frame = small
    truth = load_planted(out)
    users = np.sort(frame["userId"].unique())[:5]
    best = planted_top_k(out, users, k=10)
    assert list(best) == users.tolist()
    for user in users.tolist():
        rated = frame.loc[frame["userId"] == user, "movieId"].to_numpy()
        row = truth.rows(np.array([user]), "user")
        score = truth.planted.affinity(row)[0]
        unrated = np.setdiff1d(truth.movie_ids, rated)
        order = np.argsort(-score[truth.rows(unrated, "movie")], kind="stable")
        np.testing.assert_array_equal(best[user], unrated[order[:10]])
    # exclude={} ranks the whole catalogue (a benchmark passes its training ratings instead).
    user = int(users[0])
    everything = planted_top_k(out, users[:1], k=3, exclude={})[user]
    score = truth.planted.affinity(truth.rows(users[:1], "user"))[0]
    np.testing.assert_array_equal(everything, truth.movie_ids[np.argsort(-score, kind="stable")[:3]])


def test_ratings_have_the_movielens_shape(small):
    out, report, frame = small
    assert list(frame.columns) == ["userId", "movieId", "rating", "timestamp"]
    assert len(frame) == SMALL.n_ratings == report["counts"]["ratings"]
    assert not frame.duplicated(["userId", "movieId"]).any()
    assert set(frame["rating"].unique()) <= set(np.arange(1, 11) / 2)
    assert frame["rating"].nunique() >= 8  # the whole scale is used, not a few values
    assert frame["timestamp"].between(datagen.FIRST_TS, datagen.LAST_TS).all()
    # Sorted by user, then movie, as MovieLens ships it.
    assert frame.equals(frame.sort_values(["userId", "movieId"]).reset_index(drop=True))
    titles = load_titles(out / "movies.csv")
    assert len(titles) == SMALL.n_movies and set(frame["movieId"].astype(str)) <= set(titles)


def test_ids_are_sparse(small):
    _, _, frame = small
    for column, n in (("userId", SMALL.n_users), ("movieId", SMALL.n_movies)):
        ids = np.sort(frame[column].unique())
        assert ids.min() >= 1 and ids.max() > 1.5 * n, column
        assert np.diff(ids).max() > 1, column


def test_activity_and_popularity_are_skewed(small):
    _, _, frame = small
    per_user = frame.groupby("userId").size()
    assert len(per_user) == SMALL.n_users and per_user.min() >= SMALL.min_per_user
    assert per_user.mean() > 1.2 * per_user.median()  # log-normal: a long right tail
    per_movie = frame.groupby("movieId").size().sort_values(ascending=False)
    top = per_movie.iloc[: SMALL.n_movies // 10].sum() / len(frame)
    assert top > 0.2  # the top 10% of movies hold far more than 10% of the ratings


def test_user_counts_are_exact_and_capped():
    cfg = replace(SMALL, n_users=50, n_movies=100, n_ratings=4_000, min_per_user=5, activity_sigma=2.5)
    counts = user_counts(cfg, np.random.default_rng(0))
    assert counts.sum() == cfg.n_ratings
    assert counts.min() >= 5 and counts.max() == cfg.n_movies  # sigma 2.5 needs the cap


def test_heavy_users_get_unique_movies(tmp_path):
    # 90 of 100 movies per user on average: nearly every user takes the exact (Gumbel top-k) path.
    cfg = replace(SMALL, n_users=30, n_movies=100, n_ratings=2_700, min_per_user=50)
    generate(cfg, tmp_path, quiet=True)
    frame = pd.read_csv(tmp_path / "ratings.csv")
    assert len(frame) == 2_700 and not frame.duplicated(["userId", "movieId"]).any()


def test_floor_matches_a_simulation():
    planted = np.array([-1.0, 0.6, 2.3, 3.74, 4.9, 6.0])
    mean, var = expected_rating(planted, 0.5)
    draws = datagen.to_half_stars(planted[:, None] + np.random.default_rng(0).normal(0, 0.5, (6, 200_000)))
    np.testing.assert_allclose(mean, draws.mean(axis=1), atol=0.005)
    np.testing.assert_allclose(var, draws.var(axis=1), atol=0.005)


def test_floor_is_reported_and_reached_by_the_oracle(small):
    out, report, _ = small
    assert json.loads((out / "generation.json").read_text()) == report
    floor = report["rmse_floor"]
    assert 0.3 < floor < SMALL.noise_sd + 0.05
    # The best predictor's observed error is the floor; the rounded planted rating does worse.
    assert abs(report["rmse_floor_observed"] - floor) < 0.01
    assert report["rmse_planted_rounded"] > floor


def test_learning_users_costs_less_with_more_ratings_each(tmp_path):
    """Movies known, users estimated: above the floor, below a movie-mean guess, closer with more ratings a user."""
    few = replace(SMALL, n_ratings=12_000)
    many = replace(SMALL, n_ratings=60_000)
    gaps = {}
    for name, cfg in (("few", few), ("many", many)):
        report = generate(cfg, tmp_path / name, quiet=True)
        rmse = users_estimated_rmse(tmp_path / name)
        assert report["rmse_floor"] < rmse < report["rating_sd"]
        gaps[name] = rmse - report["rmse_floor"]
    assert gaps["many"] < gaps["few"] / 1.5


def test_floor_shrinks_with_the_noise(tmp_path):
    quiet = generate(replace(SMALL, noise_sd=0.1), tmp_path, quiet=True)["rmse_floor"]
    assert quiet < 0.2


def test_loader_reads_the_generated_file(small):
    out, report, frame = small
    ratings = load_ratings(out / "ratings.csv")
    assert len(ratings.frame) == report["counts"]["ratings"] and ratings.duplicates_dropped == 0
    assert ratings.frame["user_id"].nunique() == SMALL.n_users
    np.testing.assert_array_equal(ratings.frame["rating"].to_numpy(), frame["rating"].to_numpy(np.float32))


def test_cli_writes_files_and_prints_the_floor(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--n-users", "100", "--n-movies", "80", "--n-ratings", "3000", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "generation.json").read_text())
    assert f"RMSE floor {report['rmse_floor']:.4f}" in out
    assert main(["--out", str(tmp_path), "--n-users", "100", "--n-ratings", "10"]) == 2
    assert "error: ratings must be in" in capsys.readouterr().out
    assert main([*argv, "--exposure-strength", "-1"]) == 2
    assert "error: exposure-strength must be >= 0" in capsys.readouterr().out
    assert main([*argv, "--exposure-strength", "0"]) == 0
    assert json.loads((tmp_path / "generation.json").read_text())["config"]["exposure_strength"] == 0


def test_cli_old_count_flags_still_work_with_a_warning(capsys):
    """--users/--movies/--ratings are counts here but files for train.py: the old spellings say so once each."""
    args = parse_args(["--out", "x", "--users", "100", "--movies", "80", "--ratings", "3000"])
    assert (args.n_users, args.n_movies, args.n_ratings) == (100, 80, 3000)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"python -m movierec.datagen: --{n} is deprecated, use --n-{n}" for n in ("users", "movies", "ratings")
    ]


def test_cli_help():
    done = subprocess.run([sys.executable, "-m", "movierec.datagen", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--min-per-user" in done.stdout and "RMSE floor" not in done.stderr
    assert "--exposure-strength" in done.stdout
