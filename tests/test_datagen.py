"""The scale data generator: deterministic, MovieLens-shaped, unique pairs, half stars, a correct RMSE floor."""

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
from movierec.datagen import GenConfig, expected_rating, generate, main, parse_args, user_counts

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
