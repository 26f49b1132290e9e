"""The request protocol: parse a batch of request bodies, score them together, render answers.

Request shapes (raw IDs are ints or strings and are echoed as given):
    {"user_id": U, "movie_id": M}                          one rating
    {"instances": [{"user_id": U, "movie_id": M}, ...]}    many ratings; a bad item fails alone
    {"user_id": U, "top_k": K, "exclude_rated": true}      top-K recommendations
Every answer is a compact JSON object carrying "model_version"; errors are {"error": "..."}
with a 4xx status. One bad request never affects the others in its batch. Bodies sent with
Content-Type application/vnd.apache.arrow.stream take the columnar protocol of model/arrow.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np
import orjson

if TYPE_CHECKING:  # the client imports the caps below without loading torch
    from model.core import Recommender

MAX_INSTANCES = 20_000
MAX_TOP_K = 100
MIN_MOVIE_RATINGS = 20
DEFAULT_TOP_K = 10

PAIR_FIELDS = frozenset(("user_id", "movie_id"))
RECOMMEND_FIELDS = frozenset(("user_id", "top_k", "exclude_rated"))
BATCH_FIELDS = frozenset(("instances",))

JSON_CONTENT_TYPE = "application/json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"  # model/arrow.py: many pairs as Arrow IPC

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    413: "Payload Too Large",
    500: "Internal Server Error",
    507: "Insufficient Storage",
}


@dataclass(frozen=True)
class ServiceOptions:
    """The serving settings of an archive's model-config.yaml `handler:` section, with their defaults."""

    max_instances: int = MAX_INSTANCES  # pairs per {"instances": [...]} request; more gets 413
    max_top_k: int = MAX_TOP_K  # largest top_k for recommendations; more gets 400
    min_movie_ratings: int = MIN_MOVIE_RATINGS  # recommend only movies rated at least this often
    worker_metrics: bool = False  # the worker's per-batch PredictionTime gauge (costs throughput)

    @classmethod
    def from_config(cls, handler_section: dict | None) -> ServiceOptions:
        """Validate a `handler:` section (None or {} means all defaults); a bad key or value raises ValueError."""
        section = handler_section or {}
        if not isinstance(section, dict):
            raise ValueError(f"model-config.yaml 'handler' must be a mapping, got {type(section).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(
                f"model-config.yaml handler: unknown setting '{unknown[0]}' (known: {', '.join(sorted(known))})"
            )
        lowest = {"max_instances": 1, "max_top_k": 1, "min_movie_ratings": 0}
        for name, value in section.items():
            if name == "worker_metrics":
                if type(value) is not bool:
                    raise ValueError(f"model-config.yaml handler: {name} must be true or false, got {value!r}")
            elif type(value) is not int or value < lowest[name]:
                raise ValueError(
                    f"model-config.yaml handler: {name} must be an integer >= {lowest[name]}, got {value!r}"
                )
        return cls(**section)


class RequestError(Exception):
    """A request the service refuses, with the HTTP status to send."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Reply:
    """One answer: HTTP status, serialized body and its content type (JSON, or Arrow for Arrow requests)."""

    status: int
    body: bytes
    content_type: str = JSON_CONTENT_TYPE

    @property
    def reason(self) -> str:
        """The HTTP reason phrase for the status."""
        return REASONS.get(self.status, "Error")


@dataclass(frozen=True)
class ArrowBody:
    """A request body sent as an Arrow IPC stream (Content-Type application/vnd.apache.arrow.stream)."""

    data: bytes


@dataclass
class Job:
    """One parsed request and, after inference, its results."""

    kind: str  # "pair" | "instances" | "recommend" | "error"
    items: list = field(default_factory=list)  # the request's own objects, answered in place
    errors: dict[int, str] = field(default_factory=dict)  # item index -> per-item error
    user_rows: np.ndarray | None = None
    movie_rows: np.ndarray | None = None
    start: int = 0  # offset of this job's pairs in the batch-wide arrays
    top_k: int = DEFAULT_TOP_K
    exclude_rated: bool = True
    error: RequestError | None = None
    result: object = None


def _is_id(value: object) -> bool:
    return type(value) is int or (type(value) is str and value != "")


def _id_problem(name: str, value: object) -> str:
    if value is None:
        return f"missing field '{name}'"
    return f"'{name}' must be an integer or a non-empty string, got {type(value).__name__} {value!r:.40}"


def _check_fields(obj: dict, allowed: frozenset, where: str = "") -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise RequestError(400, f"{where}unknown field '{extra[0]}' (allowed: {', '.join(sorted(allowed))})")


class RatingService:
    """Turns a batch of raw request bodies into replies, scoring every pair in one forward pass."""

    def __init__(
        self,
        recommender: Recommender,
        model_version: str,
        max_instances: int = MAX_INSTANCES,
        max_top_k: int = MAX_TOP_K,
    ):
        self.rec = recommender
        self.users = recommender.artifact.users
        self.movies = recommender.artifact.movies
        self.titles = recommender.artifact.titles
        self.model_version = model_version
        self.max_instances = max_instances
        self.max_top_k = max_top_k
        # Imported here: model.arrow builds on this module's errors and ID checks.
        from model.arrow import ArrowScorer

        self.arrow = ArrowScorer(recommender, model_version, max_instances)

    def handle_batch(self, bodies: list[object]) -> list[Reply]:
        """Answer every request body of a batch (JSON, or an ArrowBody); never raises for a bad request.

        JSON bodies are scored together in one pass; each Arrow body (typically thousands of rows) in its own.
        """
        arrow = [i for i, body in enumerate(bodies) if type(body) is ArrowBody]
        if not arrow:
            return self._handle_json(bodies)
        rest = [i for i in range(len(bodies)) if type(bodies[i]) is not ArrowBody]
        replies = dict(zip(rest, self._handle_json([bodies[i] for i in rest]), strict=True))
        for i in arrow:
            try:
                replies[i] = Reply(200, self.arrow.answer(bodies[i].data), ARROW_STREAM)
            except RequestError as exc:
                # Refusals stay JSON, so every client can read why.
                replies[i] = error_reply(exc.status, str(exc), self.model_version)
        return [replies[i] for i in range(len(bodies))]

    def _handle_json(self, bodies: list[object]) -> list[Reply]:
        jobs = self.parse(bodies)
        self.infer(jobs)
        return self.render(jobs)

    # -- parse -------------------------------------------------------------------------------------

    def parse(self, bodies: list[object]) -> list[Job]:
        """Decode and validate each body into a Job; a bad body becomes an error Job."""
        jobs = []
        for body in bodies:
            try:
                jobs.append(self._parse_one(body))
            except RequestError as exc:
                jobs.append(Job("error", error=exc))
        return jobs

    def _parse_one(self, body: object) -> Job:
        if body is None:
            # TorchServe hands over no body when it decoded one as a form (curl -d without a JSON
            # Content-Type); the raw bytes are gone by then.
            raise RequestError(400, "no JSON request body; send a JSON object with Content-Type: application/json")
        if isinstance(body, (bytes, bytearray, memoryview, str)):
            if not body or (isinstance(body, str) and not body.strip()):
                raise RequestError(400, "empty request body; send a JSON object")
            try:
                body = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise RequestError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(400, f"request body must be a JSON object, got {type(body).__name__}")
        if "instances" in body:
            _check_fields(body, BATCH_FIELDS)
            return self._parse_instances(body["instances"])
        if "top_k" in body or ("user_id" in body and "movie_id" not in body and "exclude_rated" in body):
            _check_fields(body, RECOMMEND_FIELDS)
            return self._parse_recommend(body)
        _check_fields(body, PAIR_FIELDS)
        user, movie = body.get("user_id"), body.get("movie_id")
        for name, value in (("user_id", user), ("movie_id", movie)):
            if not _is_id(value):
                hint = " (or 'top_k' for recommendations, or 'instances' for many pairs)" if value is None else ""
                raise RequestError(400, _id_problem(name, value) + hint)
        u, m, problem = self._slow_item(body)
        if problem:
            raise RequestError(404, problem)
        return Job("pair", items=[body], user_rows=np.array([u]), movie_rows=np.array([m]))

    def _parse_instances(self, instances: object) -> Job:
        if not isinstance(instances, list):
            raise RequestError(
                400, f"'instances' must be a list of {{user_id, movie_id}} objects, got {type(instances).__name__}"
            )
        if len(instances) > self.max_instances:
            raise RequestError(413, f"too many instances: {len(instances)} > {self.max_instances}; split the request")
        job = self._instances_fast(instances)
        if job is not None:
            return job
        # Some item is not a plain {user_id, movie_id} object: check each one on its own.
        urows, mrows, errors = [], [], {}
        for i, item in enumerate(instances):
            u, m, problem = self._slow_item(item)
            urows.append(u)
            mrows.append(m)
            if problem:
                errors[i] = problem
        return Job(
            "instances",
            items=instances,
            errors=errors,
            user_rows=np.array(urows, dtype=np.int64),
            movie_rows=np.array(mrows, dtype=np.int64),
        )

    def _instances_fast(self, instances: list) -> Job | None:
        """Column-wise mapping when every item is a {user_id, movie_id} object; None to fall back.

        Pulling each column out with one comprehension and mapping it with numpy costs about half
        of a per-item loop at 10k items; only items that did not map are looked at one by one.
        """
        try:
            users = [item["user_id"] for item in instances]
            movies = [item["movie_id"] for item in instances]
        except (KeyError, TypeError):
            return None
        if set(map(len, instances)) - {2}:
            return None
        urows, mrows = self.users.rows_exact(users), self.movies.rows_exact(movies)
        if urows is None or mrows is None:
            return None
        errors = {}
        for i in np.flatnonzero((urows < 0) | (mrows < 0)).tolist():
            urows[i], mrows[i], problem = self._slow_item(instances[i])
            if problem:
                errors[i] = problem
        return Job("instances", items=instances, errors=errors, user_rows=urows, movie_rows=mrows)

    def _slow_item(self, item: object) -> tuple[int, int, str | None]:
        """Rows of an item the hot path did not take, or the reason it cannot be scored."""
        if not isinstance(item, dict):
            return -1, -1, f"instance must be an object with user_id and movie_id, got {type(item).__name__}"
        try:
            _check_fields(item, PAIR_FIELDS)
        except RequestError as exc:
            return -1, -1, str(exc)
        user, movie = item.get("user_id"), item.get("movie_id")
        for name, value in (("user_id", user), ("movie_id", movie)):
            if not _is_id(value):
                return -1, -1, _id_problem(name, value)
        u, m = self.users.get(user), self.movies.get(movie)
        if u < 0:
            return -1, -1, f"unknown user_id {user}"
        if m < 0:
            return -1, -1, f"unknown movie_id {movie}"
        return u, m, None

    def _parse_recommend(self, body: dict) -> Job:
        user = body.get("user_id")
        if not _is_id(user):
            raise RequestError(400, _id_problem("user_id", user))
        top_k = body.get("top_k", DEFAULT_TOP_K)
        if type(top_k) is not int or not 1 <= top_k <= self.max_top_k:
            raise RequestError(400, f"'top_k' must be an integer from 1 to {self.max_top_k}, got {top_k!r:.40}")
        exclude = body.get("exclude_rated", True)
        if type(exclude) is not bool:
            raise RequestError(400, f"'exclude_rated' must be true or false, got {exclude!r:.40}")
        row = self.users.get(user)
        if row < 0:
            raise RequestError(404, f"unknown user_id {user}")
        return Job("recommend", items=[body], user_rows=np.array([row]), top_k=top_k, exclude_rated=exclude)

    # -- infer -------------------------------------------------------------------------------------

    def infer(self, jobs: list[Job]) -> None:
        """One forward pass for all pairs of all requests; top-K per recommendation request."""
        scored = [j for j in jobs if j.kind in ("pair", "instances")]
        offset = 0
        for job in scored:
            job.start = offset
            offset += len(job.items)
        if scored:
            urows = np.concatenate([j.user_rows for j in scored])
            mrows = np.concatenate([j.movie_rows for j in scored])
            known = urows >= 0
            ratings = np.full(len(urows), np.nan, dtype=np.float32)
            ratings[known] = self.rec.predict(urows[known], mrows[known])
            # Four decimals is far below the model's error and keeps answers short.
            rounded = np.round(ratings.astype(np.float64), 4).tolist()
            for job in scored:
                job.result = rounded[job.start : job.start + len(job.items)]
        for job in jobs:
            if job.kind == "recommend":
                job.result = self.rec.recommend(int(job.user_rows[0]), job.top_k, job.exclude_rated)

    # -- render ------------------------------------------------------------------------------------

    def render(self, jobs: list[Job]) -> list[Reply]:
        """Serialize each job's answer as compact JSON."""
        version = self.model_version
        replies = []
        for job in jobs:
            if job.kind == "error":
                body = {"error": str(job.error), "model_version": version}
                replies.append(Reply(job.error.status, orjson.dumps(body)))
            elif job.kind == "pair":
                pair = job.items[0]
                body = {
                    "user_id": pair["user_id"],
                    "movie_id": pair["movie_id"],
                    "rating": job.result[0],
                    "model_version": version,
                }
                replies.append(Reply(200, orjson.dumps(body)))
            elif job.kind == "instances":
                replies.append(
                    Reply(200, orjson.dumps({"predictions": self._predictions(job), "model_version": version}))
                )
            else:
                rows, scores = job.result
                titles, movie_id = self.titles, self.movies.id_of
                recs = [
                    {"movie_id": _echo_id(movie_id(r)), "title": titles[r], "score": round(s, 4)}
                    for r, s in zip(rows.tolist(), scores.tolist(), strict=False)
                ]
                body = {"user_id": job.items[0]["user_id"], "recommendations": recs, "model_version": version}
                replies.append(Reply(200, orjson.dumps(body)))
        return replies

    @staticmethod
    def _predictions(job: Job) -> list:
        """The instances list, answered in place: each good item gains "rating", a bad one becomes its error."""
        items, errors = job.items, job.errors
        if not errors:
            for item, rating in zip(items, job.result, strict=False):
                item["rating"] = rating
            return items
        for i, (item, rating) in enumerate(zip(items, job.result, strict=False)):
            if i in errors:
                echo = (
                    {k: item[k] for k in ("user_id", "movie_id") if _is_id(item.get(k))} if type(item) is dict else {}
                )
                items[i] = {**echo, "error": errors[i]}
            else:
                item["rating"] = rating
        return items


def _echo_id(raw: str) -> int | str:
    """Movie IDs from the catalogue: numeric ones are sent as JSON numbers, like users send them."""
    return int(raw) if raw.isdigit() and str(int(raw)) == raw else raw


def is_arrow(content_type: str | None) -> bool:
    """Whether a request's Content-Type asks for the Arrow protocol (parameters and case ignored)."""
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() == ARROW_STREAM


def error_reply(status: int, message: str, model_version: str | None) -> Reply:
    """A JSON error reply outside normal parsing (e.g. an unexpected failure)."""
    return Reply(status, orjson.dumps({"error": message, "model_version": model_version or "unknown"}))
