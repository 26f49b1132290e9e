"""The request protocol: parse a batch of request bodies, score them together, render answers.

Request shapes (raw IDs are ints or strings and are echoed as given):
    {"user_id": U, "movie_id": M}                          one rating
    {"instances": [{"user_id": U, "movie_id": M}, ...]}    many ratings; a bad item fails alone
    {"user_id": U, "top_k": K, "exclude_rated": true}      top-K recommendations
    {"users": [U, ...], "top_k": K, "exclude_rated": true} top-K for many users; an unknown one fails alone
    {"user_rows": [START, STOP], "top_k": K, ...}          top-K for the model's users START..STOP-1, in the
                                                           model's order (answer adds "n_users")
Every answer is a compact JSON object carrying "model_version"; errors are {"error": "..."}
with a 4xx status. One bad request never affects the others in its batch. Bodies sent with
Content-Type application/vnd.apache.arrow.stream take the columnar protocol of model/arrow.py;
the handler refuses other types (a RefusedBody here). A request means one thing: a key repeated
within an object, or a string ID with surrounding whitespace (" 196"), is a 400 naming it.
With the archive option cold_start: fallback, an unknown ID is answered from the model's average
user or movie, and that answer (or instance, or user entry) carries
"fallback": "unknown_user" | "unknown_movie" | "unknown_both".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import orjson

from model.protocol import (
    ARROW_STREAM,
    BATCH_FIELDS,
    DEFAULT_TOP_K,
    MANY_FIELDS,
    MAX_INSTANCES,
    MAX_TOP_K,
    MAX_USERS,
    PAIR_FIELDS,
    RECOMMEND_FIELDS,
    ArrowBody,
    RefusedBody,
    Reply,
    RequestError,
    check_fields,
    check_top_k,
    check_user_rows,
    error_reply,
    fallback_kind,
    id_error,
    id_problem,
    is_id,
    round_scores,
    undecodable_body,
)

if TYPE_CHECKING:  # the client imports the caps below without loading torch
    from model.core import Recommender

SMALL_BODY = 4096  # bytes; a body this small is counted with bytes.count and checked for repeats even when refused


@dataclass
class Job:
    """One parsed request and, after inference, its results."""

    kind: str  # "pair" | "instances" | "recommend" | "users" | "error"
    items: list = field(default_factory=list)  # the request's own objects, answered in place
    errors: dict[int, str] = field(default_factory=dict)  # item index -> per-item error
    fallbacks: dict[int, str] = field(default_factory=dict)  # item index -> fallback kind (cold_start: fallback)
    user_rows: np.ndarray | None = None
    movie_rows: np.ndarray | None = None
    start: int = 0  # offset of this job's pairs in the batch-wide arrays
    top_k: int = DEFAULT_TOP_K
    exclude_rated: bool = True
    paged: bool = False  # a user_rows request: its answer says how many users the model has
    item_keys: int = 0  # object keys kept in the items of an instances request (for refuse_repeated_keys)
    error: RequestError | None = None
    result: object = None


class RatingService:
    """Turns a batch of raw request bodies into replies, scoring every pair in one forward pass."""

    def __init__(
        self,
        recommender: Recommender,
        model_version: str,
        max_instances: int = MAX_INSTANCES,
        max_top_k: int = MAX_TOP_K,
        max_users: int = MAX_USERS,
        cold_start: str = "error",
    ):
        self.rec = recommender
        self.fallback = cold_start == "fallback"
        if self.fallback and recommender.average_user is None:
            raise ValueError(
                f"cold_start: fallback needs the average user and movie that train.py stores in format v2 artifacts; "
                f"{recommender.artifact.path} is format {recommender.artifact.metadata.get('format_version')}: "
                f"retrain it, or set cold_start: error"
            )
        self.users = recommender.artifact.users
        self.movies = recommender.artifact.movies
        self.titles = recommender.artifact.titles
        self.model_version = model_version
        self.max_instances = max_instances
        self.max_top_k = max_top_k
        self.max_users = max_users
        # Imported here: model.arrow builds on this module's errors and ID checks.
        from model.arrow import ArrowScorer

        self.arrow = ArrowScorer(
            recommender, model_version, max_instances, max_top_k=max_top_k, max_users=max_users, cold_start=cold_start
        )

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
                # A fresh error, not the caught one: its traceback holds this frame, whose locals hold
                # the batch's bodies, and that cycle waited for a full GC (rare after gc.freeze()): the
                # worker grew by ~4 KB per refused request under the soak.
                jobs.append(Job("error", error=RequestError(exc.status, str(exc))))
        return jobs

    def _parse_one(self, body: object) -> Job:
        raw = None
        if isinstance(body, (bytes, bytearray, memoryview, str)):
            if not body or (isinstance(body, str) and not body.strip()):
                raise RequestError(400, "empty request body; send a JSON object")
            try:
                raw, body = body, orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise undecodable_body(body) or RequestError(400, f"request body is not valid JSON: {exc}") from None
        elif type(body) is RefusedBody:
            raise RequestError(400, body.message)
        elif body is None:
            # TorchServe hands over no body when it decoded one as a form; the handler refuses those
            # by their Content-Type first, so this is a caller that passed none.
            raise RequestError(400, "no JSON request body; send a JSON object with Content-Type: application/json")
        if not isinstance(body, dict):
            raise RequestError(400, f"request body must be a JSON object, got {type(body).__name__}")
        try:
            job = self._parse_object(body)
        except RequestError:
            if raw is not None and len(raw) <= SMALL_BODY:
                # The repeat's last value may be what failed here: name the repeat instead.
                refuse_repeated_keys(raw, len(body))
            raise
        if raw is not None:
            kept = len(body) + job.item_keys
            # Inlined for small bytes (every single-pair request); refuse_repeated_keys explains the count.
            if type(raw) is not bytes or len(raw) > SMALL_BODY or raw.count(b":") > kept:
                refuse_repeated_keys(raw, kept)
        return job

    def _parse_object(self, body: dict) -> Job:
        if "instances" in body:
            check_fields(body, BATCH_FIELDS)
            return self._parse_instances(body["instances"])
        if "users" in body or "user_rows" in body:
            check_fields(body, MANY_FIELDS)
            return self._parse_many(body)
        if "top_k" in body or ("user_id" in body and "movie_id" not in body and "exclude_rated" in body):
            check_fields(body, RECOMMEND_FIELDS)
            return self._parse_recommend(body)
        check_fields(body, PAIR_FIELDS)
        user, movie = body.get("user_id"), body.get("movie_id")
        for name, value in (("user_id", user), ("movie_id", movie)):
            if not is_id(value):
                hint = " (or 'top_k' for recommendations, or 'instances' for many pairs)" if value is None else ""
                raise RequestError(400, id_problem(name, value) + hint)
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
            job.item_keys = 2 * len(instances)  # every item is a {user_id, movie_id} object
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
            item_keys=sum(len(item) for item in instances if type(item) is dict),
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
            check_fields(item, PAIR_FIELDS)
        except RequestError as exc:
            return -1, -1, str(exc)
        user, movie = item.get("user_id"), item.get("movie_id")
        for name, value in (("user_id", user), ("movie_id", movie)):
            if not is_id(value):
                return -1, -1, id_problem(name, value)
        u, m = self.users.get(user), self.movies.get(movie)
        if self.fallback:
            return (u if u >= 0 else self.rec.average_user), (m if m >= 0 else self.rec.average_movie), None
        if u < 0:
            return -1, -1, f"unknown user_id {user}"
        if m < 0:
            return -1, -1, f"unknown movie_id {movie}"
        return u, m, None

    def _parse_recommend(self, body: dict) -> Job:
        user = body.get("user_id")
        if not is_id(user):
            raise RequestError(400, id_problem("user_id", user))
        top_k, exclude = check_top_k(body, self.max_top_k)
        row = self.users.get(user)
        if row < 0 and not self.fallback:
            raise RequestError(404, f"unknown user_id {user}")
        job = Job("recommend", items=[body], user_rows=np.array([row]), top_k=top_k, exclude_rated=exclude)
        if row < 0:
            job.user_rows[0], job.exclude_rated, job.fallbacks = self.rec.average_user, False, {0: "unknown_user"}
        return job

    def _parse_many(self, body: dict) -> Job:
        """{"users": [...]} or {"user_rows": [start, stop]}: one top-K list per user, a bad user failing alone."""
        top_k, exclude = check_top_k(body, self.max_top_k)
        if "users" in body and "user_rows" in body:
            raise RequestError(400, "send either 'users' or 'user_rows', not both")
        if "user_rows" in body:
            start, stop = check_user_rows(body["user_rows"], len(self.users), self.max_users)
            rows = np.arange(start, stop, dtype=np.int64)
            ids = [_echo_id(self.users.id_of(r)) for r in rows.tolist()]
            return Job("users", items=ids, user_rows=rows, top_k=top_k, exclude_rated=exclude, paged=True)
        users = body["users"]
        if not isinstance(users, list):
            raise RequestError(400, f"'users' must be a list of user IDs, got {type(users).__name__}")
        if len(users) > self.max_users:
            raise RequestError(413, f"too many users: {len(users)} > {self.max_users}; split the request")
        rows = self.users.rows_exact(users)
        if rows is None:
            rows = np.full(len(users), -1, dtype=np.int64)
        errors, fallbacks = {}, {}
        for i in np.flatnonzero(rows < 0).tolist():
            user = users[i]
            rows[i] = self.users.get(user) if is_id(user) else -1
            if rows[i] < 0 and is_id(user) and self.fallback:
                fallbacks[i] = "unknown_user"
            elif rows[i] < 0:
                errors[i] = id_error("user_id", user)
        return Job(
            "users", items=users, errors=errors, fallbacks=fallbacks, user_rows=rows, top_k=top_k, exclude_rated=exclude
        )

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
            ratings[known] = self.rec.predict_or_fallback(urows[known], mrows[known])
            rounded = round_scores(ratings).tolist()
            for job in scored:
                job.result = rounded[job.start : job.start + len(job.items)]
                if self.fallback:
                    job.fallbacks = self._fallback_kinds(job.user_rows, job.movie_rows)
        for job in jobs:
            if job.kind == "recommend":
                job.result = self.rec.recommend(int(job.user_rows[0]), job.top_k, job.exclude_rated)
            elif job.kind == "users":
                known = job.user_rows >= 0
                answers = iter(self.rec.recommend_many(job.user_rows[known], job.top_k, job.exclude_rated))
                job.result = [next(answers) if ok else None for ok in known.tolist()]
                if job.fallbacks:
                    # Every unknown user gets the average user's list, which ranks all eligible movies.
                    average = self.rec.recommend(self.rec.average_user, job.top_k, exclude_rated=False)
                    for i in job.fallbacks:
                        job.result[i] = average

    def _fallback_kinds(self, user_rows: np.ndarray, movie_rows: np.ndarray) -> dict[int, str]:
        """Item index -> fallback kind, for the pairs scored with the average user and/or movie."""
        unknown_user, unknown_movie = user_rows == self.rec.average_user, movie_rows == self.rec.average_movie
        flagged = np.flatnonzero(unknown_user | unknown_movie).tolist()
        return {i: fallback_kind(bool(unknown_user[i]), bool(unknown_movie[i])) for i in flagged}

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
                body = {"user_id": pair["user_id"], "movie_id": pair["movie_id"], "rating": job.result[0]}
                if job.fallbacks:
                    body["fallback"] = job.fallbacks[0]
                body["model_version"] = version
                replies.append(Reply(200, orjson.dumps(body)))
            elif job.kind == "instances":
                replies.append(
                    Reply(200, orjson.dumps({"predictions": self._predictions(job), "model_version": version}))
                )
            elif job.kind == "users":
                replies.append(Reply(200, orjson.dumps(self._many_answer(job))))
            else:
                recs = self._recommendations(*job.result)
                body = {"user_id": job.items[0]["user_id"], "recommendations": recs}
                if job.fallbacks:
                    body["fallback"] = job.fallbacks[0]
                body["model_version"] = version
                replies.append(Reply(200, orjson.dumps(body)))
        return replies

    def _recommendations(self, rows: np.ndarray, scores: np.ndarray) -> list[dict]:
        titles, movie_id = self.titles, self.movies.id_of
        return [
            {"movie_id": _echo_id(movie_id(r)), "title": titles[r], "score": s}
            for r, s in zip(rows.tolist(), round_scores(scores).tolist(), strict=False)
        ]

    def _many_answer(self, job: Job) -> dict:
        """{"recommendations": [one entry per user, in request order], "model_version", ["n_users"]}."""
        entries = []
        for i, (user, result) in enumerate(zip(job.items, job.result, strict=True)):
            if result is None:
                entry = {"user_id": user, "error": job.errors[i]} if is_id(user) else {"error": job.errors[i]}
            else:
                entry = {"user_id": user, "recommendations": self._recommendations(*result)}
                if i in job.fallbacks:
                    entry["fallback"] = job.fallbacks[i]
            entries.append(entry)
        body = {"recommendations": entries, "model_version": self.model_version}
        if job.paged:
            body["n_users"] = len(self.users)
        return body

    @staticmethod
    def _predictions(job: Job) -> list:
        """The instances list, answered in place: each good item gains "rating", a bad one becomes its error."""
        items, errors = job.items, job.errors
        if not errors:
            for item, rating in zip(items, job.result, strict=False):
                item["rating"] = rating
            for i, kind in job.fallbacks.items():
                items[i]["fallback"] = kind
            return items
        for i, (item, rating) in enumerate(zip(items, job.result, strict=False)):
            if i in errors:
                echo = {k: item[k] for k in ("user_id", "movie_id") if is_id(item.get(k))} if type(item) is dict else {}
                items[i] = {**echo, "error": errors[i]}
            else:
                item["rating"] = rating
                if i in job.fallbacks:
                    item["fallback"] = job.fallbacks[i]
        return items


class _RepeatedKey(Exception):
    """Stops the exact parse of refuse_repeated_keys at the first repeated key."""


def _no_repeats(pairs: list[tuple[str, object]]) -> None:
    """json.loads object hook: raise _RepeatedKey at a key the object already has (values are not kept)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen.add(key)


def refuse_repeated_keys(raw: bytes | bytearray | memoryview | str, kept: int) -> None:
    """Refuse (400) a JSON text with a key repeated within one object, which orjson reads as its last value.

    `kept` is how many keys the parse kept (a lower bound is fine). Each key in the text has a ':' after
    it, so a text with no more ':'s than that repeats nothing: one count, about 0.05 ms for a 10k-pair
    body. Otherwise (a repeat, a nested object, a ':' inside a string) the text is parsed again to be sure.
    """
    if type(raw) is bytes and len(raw) <= SMALL_BODY:
        colons = raw.count(b":")
    elif isinstance(raw, str):
        colons = raw.count(":")
    else:
        raw = bytes(raw) if isinstance(raw, memoryview) else raw
        colons = int(np.count_nonzero(np.frombuffer(raw, dtype=np.uint8) == ord(":")))
    if colons <= kept:
        return
    try:
        json.loads(raw, object_pairs_hook=_no_repeats)
    except _RepeatedKey as repeat:
        raise RequestError(400, f"duplicate key {repeat.args[0]!r:.60} in the request body") from None
    except (ValueError, RecursionError):
        pass  # orjson read it but the exact parser cannot (e.g. an integer of 5,000 digits): nothing to name


def _echo_id(raw: str) -> int | str:
    """Movie IDs from the catalogue: numeric ones are sent as JSON numbers, like users send them."""
    return int(raw) if raw.isdigit() and str(int(raw)) == raw else raw
