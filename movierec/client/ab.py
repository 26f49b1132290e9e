"""Sticky A/B split between two model versions, and its offline evaluation on held-out ratings: RMSE of the
predicted ratings, and recall@K and NDCG@K of the top-K lists."""

from __future__ import annotations

import csv
import functools
import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.metrics import RELEVANT_RATING, K, per_user_quality
from model.protocol import DEFAULT_TOP_K
from movierec.client import abstats
from movierec.client.abstats import (
    DEFAULT_MAX_ERROR_RATE_INCREASE,
    DEFAULT_MIN_IMPROVEMENT,
    DEFAULT_MIN_ROWS,
    DEFAULT_REPS,
    DEFAULT_SEED,
    Comparison,
    RankingComparison,
    UserErrors,
)
from movierec.client.abstats import Decision as Decision  # the verdict type, re-exported for callers
from movierec.client.api import DEFAULT_MODEL, MovieRecClient, MovieRecError, check_version
from movierec.client.columnar import InputError, find_columns
from movierec.client.exposures import ExposureLog
from movierec.client.runner import in_order
from movierec.client.settings import DEFAULT_EVAL_CHUNK, DEFAULT_EVAL_CONCURRENCY, DEFAULT_USERS_PER_REQUEST

BUCKETS = 10_000
DEFAULT_SALT = "movierec-ab"


def bucket(user_id: int | str, salt: str = DEFAULT_SALT) -> int:
    """Stable bucket 0..9999 of a user; 196 and "196" share one."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class ABRouter:
    """Routes each user to version A or B by a stable hash, so one user always sees one version.

    With `exposures` (a path or an ExposureLog) every answered request is logged for `ab-report`.
    """

    def __init__(
        self,
        client: MovieRecClient,
        a: str,
        b: str,
        percent_b: float = 50.0,
        *,
        model: str = DEFAULT_MODEL,
        salt: str = DEFAULT_SALT,
        exposures: ExposureLog | str | os.PathLike[str] | None = None,
    ) -> None:
        if not 0 <= percent_b <= 100:
            raise ValueError(f"percent_b must be within 0..100, got {percent_b}")
        self.client = client
        self.versions = {"a": check_version(a), "b": check_version(b)}
        self.percent_b = percent_b
        self.model = model
        self.salt = salt
        self._owns_log = exposures is not None and not isinstance(exposures, ExposureLog)
        self.exposures = ExposureLog(exposures) if self._owns_log else exposures

    def arm(self, user_id: int | str) -> str:
        """'a' or 'b'. Buckets below the cut go to B, so raising percent_b only moves users A -> B."""
        return "b" if bucket(user_id, self.salt) < self.percent_b * (BUCKETS // 100) else "a"

    def version_for(self, user_id: int | str) -> str:
        """The model version that serves this user."""
        return self.versions[self.arm(user_id)]

    def _served(self, user_id: int | str, answer: dict[str, Any], arm: str) -> dict[str, Any]:
        answer["arm"] = arm
        answer["served_by"] = answer.get("model_version", self.versions[arm])
        if self.exposures is not None:
            self.exposures.record(user_id, arm, answer["served_by"], answer, model=self.model)
        return answer

    def predict(self, user_id: int | str, movie_id: int | str) -> dict[str, Any]:
        """Predict a rating with the user's arm; the answer carries "arm" and "served_by"."""
        arm = self.arm(user_id)
        answer = self.client.predict(user_id, movie_id, model=self.model, version=self.versions[arm])
        return self._served(user_id, answer, arm)

    def recommend(
        self, user_id: int | str, top_k: int = DEFAULT_TOP_K, *, exclude_rated: bool = True
    ) -> dict[str, Any]:
        """Top-k recommendations from the user's arm; the answer carries "arm" and "served_by"."""
        arm = self.arm(user_id)
        answer = self.client.recommend(
            user_id, top_k, exclude_rated=exclude_rated, model=self.model, version=self.versions[arm]
        )
        return self._served(user_id, answer, arm)

    def close(self) -> None:
        """Flush the exposure log, and close it if the router opened it."""
        if self.exposures is None:
            return
        if self._owns_log:
            self.exposures.close()
        else:
            self.exposures.flush()

    def __enter__(self) -> ABRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class EvalRow:
    """One held-out rating as read."""

    line: int
    user_id: str
    movie_id: str
    rating: float


def _keep_example(examples: list[str], text: str) -> None:
    """Keep a few distinct error messages to show."""
    if len(examples) < 3 and text not in examples:
        examples.append(text)


@dataclass
class ArmStats:
    """Running totals of one arm during an evaluation: rows, per-user squared errors, latency, failures."""

    version: str
    rows: int = 0
    row_errors: int = 0
    request_errors: int = 0
    users: UserErrors = field(default_factory=UserErrors)
    latencies_ms: list[float] = field(default_factory=list)
    error_examples: list[str] = field(default_factory=list)

    def add_error(self, text: str) -> None:
        """Count one failed row and keep a few messages to show."""
        self.row_errors += 1
        _keep_example(self.error_examples, text)

    def add_answer(self, rows: list[EvalRow], ms: float, answer: dict[str, Any] | Exception) -> list[float | None]:
        """Count one request of `rows`; returns each row's squared error, None where it got no rating."""
        self.rows += len(rows)
        failed = None
        if isinstance(answer, Exception):
            failed = str(answer)
        else:
            self.latencies_ms.append(ms)
            predictions = answer.get("predictions", [])
            if len(predictions) != len(rows):
                failed = f"{len(predictions)} predictions for {len(rows)} instances"
        if failed is not None:
            self.request_errors += 1
            for _ in rows:
                self.add_error(failed)
            return [None] * len(rows)
        squared: list[float | None] = []
        for row, p in zip(rows, predictions, strict=True):
            if p.get("rating") is None:
                self.add_error(p.get("error", "no rating in the answer"))
                squared.append(None)
                continue
            sq = (float(p["rating"]) - row.rating) ** 2
            self.users.add(row.user_id, sq)
            squared.append(sq)
        return squared

    @property
    def scored(self) -> int:
        """Rows that got a rating."""
        return self.users.rows

    @property
    def rmse(self) -> float:
        """Root mean squared error over scored rows (nan if none)."""
        sse, rows = self.users.arrays()
        return math.sqrt(sse.sum() / rows.sum()) if len(rows) else math.nan

    @property
    def error_rate(self) -> float:
        """Share of routed rows that got no rating."""
        return self.row_errors / self.rows if self.rows else 0.0

    def latency(self, q: float) -> float:
        """Per-request latency percentile in ms (nearest rank)."""
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def compare_split(a: ArmStats, b: ArmStats, *, seed: int = DEFAULT_SEED, reps: int = DEFAULT_REPS) -> Comparison:
    """RMSE of two arms with disjoint users, with intervals from resampling users within each arm."""
    (sse_a, rows_a), (sse_b, rows_b) = a.users.arrays(), b.users.arrays()
    return abstats.split_comparison(sse_a, rows_a, sse_b, rows_b, seed=seed, reps=reps)


def decide(
    a: ArmStats,
    b: ArmStats,
    *,
    comparison: Comparison | None = None,
    min_rows: int = DEFAULT_MIN_ROWS,
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT,
    max_error_rate_increase: float = DEFAULT_MAX_ERROR_RATE_INCREASE,
) -> Decision:
    """The verdict on two evaluated arms: on `comparison` (paired or split), else on a split comparison of them."""
    return abstats.decide(
        comparison if comparison is not None else compare_split(a, b),
        a.version,
        b.version,
        min_rows=min_rows,
        min_improvement=min_improvement,
        error_rates=(a.error_rate, b.error_rate),
        max_error_rate_increase=max_error_rate_increase,
    )


def read_heldout(path: str | os.PathLike[str]) -> Iterator[EvalRow | str]:
    """Stream a user_id,movie_id,rating CSV; yields an error string for each unreadable row."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty file, expected a header with user_id,movie_id,rating")
        u, m, r = find_columns(header, ("user_id", "movie_id", "rating"), path)
        need = max(u, m, r) + 1
        for fields in reader:
            if not fields:
                continue
            if len(fields) < need:
                yield f"line {reader.line_num}: expected at least {need} columns, got {len(fields)}"
                continue
            try:
                rating = float(fields[r])
            except ValueError:
                yield f"line {reader.line_num}: column rating: not a number: {fields[r]!r}"
                continue
            yield EvalRow(reader.line_num, fields[u], fields[m], rating)


Sent = tuple[str, list[Any], float, Any]  # arm, items (rows or users), latency ms, answer or MovieRecError
Request = Callable[[ABRouter, str, list[Any]], Any]  # (router, arm, items) -> the answer


def _predict_rows(router: ABRouter, arm: str, rows: list[EvalRow]) -> dict[str, Any]:
    """One {"instances": [...]} request of held-out rows to the arm's version."""
    instances = [{"user_id": r.user_id, "movie_id": r.movie_id} for r in rows]
    return router.client.predict_many(instances, model=router.model, version=router.versions[arm])


def _send_all(
    router: ABRouter,
    jobs: Iterator[list[tuple[str, list[Any]]]],
    record: Callable[[list[Sent]], None],
    concurrency: int,
    request: Request = _predict_rows,
) -> None:
    """Send each job's (arm, items) requests, one after another on one of `concurrency` threads; hand a job's
    answers (or MovieRecErrors) to `record` together, in job order."""

    def send(job: list[tuple[str, list[Any]]]) -> list[Sent]:
        sent = []
        for arm, items in job:
            t0 = time.perf_counter()
            try:
                answer: Any = request(router, arm, items)
            except MovieRecError as exc:
                answer = exc
            sent.append((arm, items, (time.perf_counter() - t0) * 1000, answer))
        return sent

    in_order((functools.partial(send, job) for job in jobs), record, concurrency, "ab-eval")


def evaluate(
    router: ABRouter,
    heldout_path: str | os.PathLike[str],
    *,
    chunk_size: int = DEFAULT_EVAL_CHUNK,
    concurrency: int = DEFAULT_EVAL_CONCURRENCY,
) -> tuple[ArmStats, ArmStats, list[str]]:
    """Split evaluation: score held-out ratings through the live endpoint, each user on its sticky arm.

    Returns the stats of arm A, arm B and the input rows that could not be read.
    """
    stats = {arm: ArmStats(version) for arm, version in router.versions.items()}
    bad_input: list[str] = []

    def jobs() -> Iterator[list[tuple[str, list[EvalRow]]]]:
        buffers: dict[str, list[EvalRow]] = {"a": [], "b": []}
        for item in read_heldout(heldout_path):
            if isinstance(item, str):
                bad_input.append(item)
                continue
            arm = router.arm(item.user_id)
            buffers[arm].append(item)
            if len(buffers[arm]) == chunk_size:
                yield [(arm, buffers[arm])]
                buffers[arm] = []
        yield from ([(arm, rows)] for arm, rows in buffers.items() if rows)

    def record(sent: list[Sent]) -> None:
        for arm, rows, ms, answer in sent:
            stats[arm].add_answer(rows, ms, answer)

    _send_all(router, jobs(), record, concurrency)
    return stats["a"], stats["b"], bad_input


@dataclass
class PairedEval:
    """Both versions on every held-out row: per-arm request stats and per-user paired squared errors."""

    a: ArmStats
    b: ArmStats
    pairs: UserErrors = field(default_factory=lambda: UserErrors(arms=2))
    bad_input: list[str] = field(default_factory=list)

    def comparison(self, *, seed: int = DEFAULT_SEED, reps: int = DEFAULT_REPS) -> Comparison:
        """RMSE of A and B on the rows both scored, and B - A with a paired user-bootstrap interval."""
        sse, rows = self.pairs.arrays()
        return abstats.paired_comparison(sse, rows, seed=seed, reps=reps)


def evaluate_paired(
    router: ABRouter,
    heldout_path: str | os.PathLike[str],
    *,
    chunk_size: int = DEFAULT_EVAL_CHUNK,
    concurrency: int = DEFAULT_EVAL_CONCURRENCY,
) -> PairedEval:
    """Paired evaluation: every held-out row is scored by both versions (the split is ignored)."""
    result = PairedEval(ArmStats(router.versions["a"]), ArmStats(router.versions["b"]))

    def jobs() -> Iterator[list[tuple[str, list[EvalRow]]]]:
        chunk: list[EvalRow] = []
        for item in read_heldout(heldout_path):
            if isinstance(item, str):
                result.bad_input.append(item)
                continue
            chunk.append(item)
            if len(chunk) == chunk_size:
                yield [("a", chunk), ("b", chunk)]
                chunk = []
        if chunk:
            yield [("a", chunk), ("b", chunk)]

    def record(sent: list[Sent]) -> None:
        (_, rows, ms_a, answer_a), (_, _, ms_b, answer_b) = sent
        sq_a = result.a.add_answer(rows, ms_a, answer_a)
        sq_b = result.b.add_answer(rows, ms_b, answer_b)
        for row, ea, eb in zip(rows, sq_a, sq_b, strict=True):
            if ea is not None and eb is not None:
                result.pairs.add(row.user_id, ea, eb)

    _send_all(router, jobs(), record, concurrency)
    return result


# --- top-K lists: recall@K and NDCG@K of each version on the held-out ratings (model/metrics.py) ---


@dataclass
class ArmLists:
    """One arm's top-K lists during an evaluation: each judged user's list, and the users who got none."""

    version: str
    asked: int = 0
    lists: dict[str, list[str]] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)

    @property
    def not_judged(self) -> int:
        """Users asked who got no list (unknown to the version, or a failed request)."""
        return self.asked - len(self.lists)

    def add_answer(self, users: list[str], answer: dict[str, Any] | Exception) -> None:
        """Count one multi-user request: keep each listed user's movie IDs (as strings), best first."""
        self.asked += len(users)
        if isinstance(answer, Exception):
            _keep_example(self.error_examples, str(answer))
            return
        entries = answer.get("recommendations", [])
        if len(entries) != len(users):
            _keep_example(self.error_examples, f"{len(entries)} lists for {len(users)} users")
            return
        for user, entry in zip(users, entries, strict=True):
            if "recommendations" in entry:
                self.lists[user] = [str(r["movie_id"]) for r in entry["recommendations"]]
            else:
                _keep_example(self.error_examples, entry.get("error", "no list in the answer"))


@dataclass
class RankingEval:
    """The top-K lists of both arms for the held-out users with a relevant rating, and those ratings."""

    k: int
    paired: bool
    a: ArmLists
    b: ArmLists
    users: list[str] = field(default_factory=list)  # of each relevant held-out rating, as in the file
    movies: list[str] = field(default_factory=list)
    ratings: list[float] = field(default_factory=list)

    @property
    def relevant_users(self) -> int:
        """Users with at least one relevant held-out rating: the users whose lists are asked for."""
        return len(set(self.users))

    def quality(self, arm: ArmLists) -> dict[str, tuple[float, float]]:
        """User -> (recall@k, NDCG@k) of each user the arm judged (got a list and has a relevant rating)."""
        judged, recall, ndcg = per_user_quality(
            arm.lists, np.array(self.users), np.array(self.movies), np.array(self.ratings), self.k
        )
        return {u: (r, n) for u, r, n in zip(judged, recall.tolist(), ndcg.tolist(), strict=True)}

    def comparison(self, *, seed: int = DEFAULT_SEED, reps: int = DEFAULT_REPS) -> RankingComparison:
        """Mean recall@k and NDCG@k per arm and B - A, over users; paired, over the users both arms judged."""
        qa, qb = self.quality(self.a), self.quality(self.b)
        users_a, users_b = (sorted(qa.keys() & qb.keys()),) * 2 if self.paired else (sorted(qa), sorted(qb))

        def columns(q: dict[str, tuple[float, float]], users: list[str]) -> tuple[np.ndarray, np.ndarray]:
            return np.array([q[u][0] for u in users]), np.array([q[u][1] for u in users])

        return abstats.ranking_comparison(
            columns(qa, users_a), columns(qb, users_b), k=self.k, paired=self.paired, seed=seed, reps=reps
        )


def evaluate_ranking(
    router: ABRouter,
    heldout_path: str | os.PathLike[str],
    *,
    paired: bool = True,
    top_k: int = K,
    users_per_request: int = DEFAULT_USERS_PER_REQUEST,
    concurrency: int = DEFAULT_EVAL_CONCURRENCY,
) -> RankingEval:
    """Ask for the top-k lists (rated movies excluded) of the held-out users with a rating >= RELEVANT_RATING:
    from both versions (paired), or from each user's sticky arm (split)."""
    result = RankingEval(top_k, paired, ArmLists(router.versions["a"]), ArmLists(router.versions["b"]))
    for item in read_heldout(heldout_path):
        if not isinstance(item, str) and item.rating >= RELEVANT_RATING:
            result.users.append(item.user_id)
            result.movies.append(item.movie_id)
            result.ratings.append(item.rating)
    users = list(dict.fromkeys(result.users))
    arms = {"a": users, "b": users} if paired else {"a": [], "b": []}
    if not paired:
        for user in users:
            arms[router.arm(user)].append(user)

    def jobs() -> Iterator[list[tuple[str, list[str]]]]:
        for start in range(0, len(users), users_per_request):
            job = [(arm, listed[start : start + users_per_request]) for arm, listed in arms.items()]
            job = [(arm, chunk) for arm, chunk in job if chunk]
            if job:
                yield job

    def request(router: ABRouter, arm: str, chunk: list[str]) -> dict[str, Any]:
        version = router.versions[arm]
        return router.client.recommend_many(chunk, top_k, exclude_rated=True, model=router.model, version=version)

    def record(sent: list[Sent]) -> None:
        for arm, chunk, _, answer in sent:
            (result.a if arm == "a" else result.b).add_answer(chunk, answer)

    _send_all(router, jobs(), record, concurrency, request)
    return result
