"""Honest cold-start evaluation: hold whole users out of training, then score them with the serving fallback."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from model.artifact import Artifact
from model.core import Recommender
from model.data import Ratings


def hold_out_users(data: Ratings, frac: float, seed: int) -> tuple[Ratings, pd.DataFrame]:
    """A seeded random FRAC of the users, with all their ratings, split off before indexing (the model never sees them)."""
    ids, codes = data.codes("user_id")
    n_cold = min(len(ids) - 1, max(1, round(len(ids) * frac)))
    cold = np.zeros(len(ids), dtype=bool)
    cold[np.random.default_rng(seed).permutation(len(ids))[:n_cold]] = True
    is_cold = cold[codes]
    warm = Ratings(data.frame[~is_cold].reset_index(drop=True), data.source, data.duplicates_dropped)
    return warm, data.frame[is_cold].reset_index(drop=True)


def cold_user_metrics(
    artifact: Artifact, cold: pd.DataFrame, train_movies: np.ndarray, train_ratings: np.ndarray
) -> dict:
    """RMSE on the held-out users: the serving fallback against the global-mean and movie-mean baselines."""
    rec = Recommender(artifact)
    truth = cold["rating"].to_numpy(np.float64)
    movie_rows = artifact.movies.rows(cold["movie_id"])
    known = movie_rows >= 0
    global_mean = artifact.cold_start.global_mean
    counts = np.bincount(train_movies, minlength=len(artifact.movies))
    sums = np.bincount(train_movies, weights=train_ratings, minlength=len(artifact.movies))
    movie_mean = np.where(counts > 0, sums / np.maximum(counts, 1), global_mean)
    users = np.full(len(truth), rec.average_user, dtype=np.int64)
    fallback = rec.predict_or_fallback(users, np.where(known, movie_rows, rec.average_movie))

    def error(pred: np.ndarray) -> float:
        return math.sqrt(float(np.mean((np.asarray(pred, dtype=np.float64) - truth) ** 2)))

    return {
        "users": int(cold["user_id"].nunique()),
        "ratings": len(truth),
        "rmse_fallback": error(fallback),
        "rmse_global_mean": error(np.full(len(truth), global_mean)),
        "rmse_movie_mean": error(np.where(known, movie_mean[np.maximum(movie_rows, 0)], global_mean)),
    }
