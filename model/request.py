"""One request as columns, whichever protocol it came in, and the step that answers it.

A codec (model/json_codec.py, model/arrow.py) decodes a body into a Request: user rows, movie rows
for ratings (none for top-K lists), per-row errors and cold-start kinds. Scorer.settle applies the
cold-start rule to its unknown IDs, Scorer.answer scores or ranks it, and the codec's renderer,
which the Request carries, writes the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from model.protocol import DEFAULT_TOP_K, Reply, fallback_kind, id_problem, is_id, round_scores

if TYPE_CHECKING:
    from model.core import Recommender


@dataclass
class Request:
    """One decoded request: a user row per row and, for ratings, a movie row; -1 where the row failed."""

    render: Callable[[Request], Reply]  # the codec's writer of this request's answer
    users: np.ndarray
    movies: np.ndarray | None = None  # None asks for top-K lists
    errors: dict[int, str] = field(default_factory=dict)  # row -> why it failed
    fallbacks: dict[int, str] = field(default_factory=dict)  # row -> fallback kind (cold_start: fallback)
    top_k: int = DEFAULT_TOP_K
    exclude_rated: bool = True
    sent: object = None  # what the renderer echoes: the JSON object, items or IDs, or Arrow user IDs
    alone: bool = False  # scored in a pass of its own, so its answer never depends on its neighbours
    result: object = None  # rounded ratings (nan where failed), or (movie rows, scores) or None per user


class Scorer:
    """Settles unknown IDs by the archive's cold-start rule, then scores or ranks requests with the core."""

    def __init__(self, rec: Recommender, cold_start: str = "error"):
        self.rec = rec
        self.fallback = cold_start == "fallback"
        if self.fallback and rec.average_user is None:
            raise ValueError(
                f"cold_start: fallback needs the average user and movie that train.py stores in format v2 artifacts; "
                f"{rec.artifact.path} is format {rec.artifact.metadata.get('format_version')}: "
                f"retrain it, or set cold_start: error"
            )

    def settle(self, req: Request, user_ids: Sequence, movie_ids: Sequence | None = None) -> None:
        """Settle each row with a -1: answered from the average user or movie (fallback), else failed with its error.

        `user_ids` and `movie_ids` are the raw IDs the request sent (a list from JSON, an array from Arrow).
        A malformed ID always fails, and the user's problem is named before the movie's.
        """
        users, movies = req.users, req.movies
        missing = users < 0 if movies is None else np.minimum(users, movies) < 0
        rows = [i for i in np.flatnonzero(missing).tolist() if i not in req.errors]
        if not rows:
            return
        columns = [("user_id", _pick(user_ids, rows), users)]
        if movies is not None:
            columns.append(("movie_id", _pick(movie_ids, rows), movies))
        for j, i in enumerate(rows):
            malformed = [id_problem(name, ids[j]) for name, ids, _ in columns if not is_id(ids[j])]
            unknown = [f"unknown {name} {ids[j]}" for name, ids, found in columns if found[i] < 0]
            if malformed or not self.fallback:
                req.errors[i] = (malformed or unknown)[0]
                users[i] = -1
                continue
            unknown_user, unknown_movie = bool(users[i] < 0), movies is not None and bool(movies[i] < 0)
            if unknown_user:
                users[i] = self.rec.average_user
            if unknown_movie:
                movies[i] = self.rec.average_movie
            req.fallbacks[i] = fallback_kind(unknown_user, unknown_movie)

    def answer(self, requests: list) -> None:
        """Rank the top-K requests and score the ratings ones: those not `alone` together, in one pass."""
        shared = []
        for req in requests:
            if type(req) is not Request:
                continue
            if req.movies is None:
                req.result = self._rank(req)
            elif req.alone:
                self._score([req])
            else:
                shared.append(req)
        if shared:
            self._score(shared)

    def _score(self, group: list[Request]) -> None:
        """One forward pass for the rows of these requests; each gets its slice of the rounded ratings."""
        users = np.concatenate([r.users for r in group]) if len(group) > 1 else group[0].users
        movies = np.concatenate([r.movies for r in group]) if len(group) > 1 else group[0].movies
        known = users >= 0
        if known.all():  # the usual case: no copies of the rows
            ratings = self.rec.predict_or_fallback(users, movies)
        else:
            ratings = np.full(len(users), np.nan, dtype=np.float32)
            ratings[known] = self.rec.predict_or_fallback(users[known], movies[known])
        rounded = round_scores(ratings)
        start = 0
        for req in group:
            req.result = rounded[start : start + len(req.users)]
            start += len(req.users)

    def _rank(self, req: Request) -> list:
        """Top-K (movie rows, scores) per user, None for a failed one; a cold-start user gets the average user's list."""
        own = [i for i, row in enumerate(req.users.tolist()) if row >= 0 and i not in req.fallbacks]
        rows = req.users if len(own) == len(req.users) else req.users[own]
        result = [None] * len(req.users)
        for i, movies in zip(own, self.rec.recommend_many(rows, req.top_k, req.exclude_rated), strict=True):
            result[i] = movies
        if req.fallbacks:
            # The average user's list ranks every eligible movie: there is nothing of its own to exclude.
            average = self.rec.recommend(self.rec.average_user, req.top_k, exclude_rated=False)
            for i in req.fallbacks:
                result[i] = average
        return result


def _pick(ids: Sequence, rows: list[int]) -> list:
    """The raw IDs sent at these rows, as Python values."""
    return ids.take(rows).to_pylist() if isinstance(ids, pa.Array) else [ids[i] for i in rows]
