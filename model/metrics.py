"""What a served top-K list is worth: recall@K and NDCG@K against held-out ratings (numpy only).

The protocol (the same in train.py, `make bench-accuracy` and `movierec ab-eval`):
- relevant = a held-out rating of at least RELEVANT_RATING;
- the lists are what the endpoint serves: movies the user did not rate in training, minus movies with
  fewer than min_movie_ratings training ratings;
- recall@K = hits / min(#relevant, K), averaged over users with a list and at least one relevant
  rating; NDCG@K caps its ideal DCG the same way.
"""

from __future__ import annotations

import numpy as np

RELEVANT_RATING = 4.0  # a held-out rating at least this high is a movie the list should have found
K = 10


def per_user_quality(
    top_k: dict, users: np.ndarray, movies: np.ndarray, ratings: np.ndarray, k: int = K
) -> tuple[list, np.ndarray, np.ndarray]:
    """(users judged, recall@k of each, NDCG@k of each) for the users that have a list and a relevant rating.

    top_k maps a user (a row, or a raw ID: any key that `users` holds) to its served list of movies,
    best first. A relevant movie the model never saw counts, and can never be found.
    """
    keep = np.asarray(ratings) >= RELEVANT_RATING
    relevant: dict = {}
    for u, m in zip(np.asarray(users)[keep].tolist(), np.asarray(movies)[keep].tolist(), strict=True):
        if u in top_k:
            relevant.setdefault(u, []).append(m)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    judged, recall, ndcg = list(relevant), np.zeros(len(relevant)), np.zeros(len(relevant))
    for i, u in enumerate(judged):
        found = set(relevant[u])
        served = list(top_k[u])[:k]
        hits = np.array([m in found for m in served] + [False] * (k - len(served)))
        cap = min(len(relevant[u]), k)
        recall[i] = hits.sum() / cap
        ndcg[i] = (hits * discount).sum() / discount[:cap].sum()
    return judged, recall, ndcg


def top_k_metrics(top_k: dict, users: np.ndarray, movies: np.ndarray, ratings: np.ndarray, k: int = K) -> dict:
    """recall@k and NDCG@k of served lists against held-out ratings, averaged over the users judged."""
    judged, recall, ndcg = per_user_quality(top_k, users, movies, ratings, k)
    return {
        f"recall@{k}": float(recall.mean()) if judged else 0.0,
        f"ndcg@{k}": float(ndcg.mean()) if judged else 0.0,
        "users": len(judged),
    }


def popular_top_k(
    train_users: np.ndarray, train_movies: np.ndarray, n_movies: int, users: np.ndarray, k: int, min_count: int
) -> dict[int, np.ndarray]:
    """The most-popular reference: each user's k most-rated movies they have not rated (same exclusions as serving)."""
    counts = np.bincount(train_movies, minlength=n_movies)
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] >= min_count]
    rated: dict[int, set[int]] = {}
    wanted = set(np.asarray(users).tolist())
    for u, m in zip(np.asarray(train_users).tolist(), np.asarray(train_movies).tolist(), strict=True):
        if u in wanted:
            rated.setdefault(u, set()).add(m)
    lists = {}
    for u in wanted:
        seen = rated.get(u, set())
        lists[u] = np.array([m for m in order[: k + len(seen)].tolist() if m not in seen][:k], dtype=np.int64)
    return lists
