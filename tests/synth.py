"""Small synthetic MovieLens-shaped data with a learnable structure, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_ratings(
    folder: Path, n_users: int = 60, n_movies: int = 80, n_ratings: int = 3000, seed: int = 0
) -> tuple[Path, Path]:
    """Write ratings.csv (user/movie biases + a 4-factor interaction) and movies.csv; return both paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ub, mb = rng.normal(0, 0.6, n_users), rng.normal(0, 0.6, n_movies)
    uf, mf = rng.normal(0, 0.5, (n_users, 4)), rng.normal(0, 0.5, (n_movies, 4))
    pairs = rng.choice(n_users * n_movies, size=min(n_ratings, n_users * n_movies), replace=False)
    users, movies = pairs // n_movies, pairs % n_movies
    score = 3.4 + ub[users] + mb[movies] + (uf[users] * mf[movies]).sum(1) + rng.normal(0, 0.3, len(pairs))
    rating = np.clip(np.rint(score), 1, 5)
    ratings = folder / "ratings.csv"
    with open(ratings, "w") as fh:
        fh.write("userId,movieId,rating,timestamp\n")
        for i, (u, m, r) in enumerate(zip(users, movies, rating, strict=False)):
            fh.write(f"{u + 1},{m + 101},{r:.1f},{880000000 + i}\n")
    titles = folder / "movies.csv"
    with open(titles, "w") as fh:
        fh.write("movieId,title,genres\n")
        for m in range(n_movies):
            fh.write(f'{m + 101},"Movie {m + 101}, The ({1950 + m % 50})",Drama\n')
    return ratings, titles
