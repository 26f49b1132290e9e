"""The JSON protocol: a request body to a columnar Request (model/request.py), its answer back to compact JSON.

Request shapes (raw IDs are ints or strings and are echoed as given):
    {"user_id": U, "movie_id": M}                          one rating
    {"instances": [{"user_id": U, "movie_id": M}, ...]}    many ratings; a bad item fails alone
    {"user_id": U, "top_k": K, "exclude_rated": true}      top-K recommendations
    {"users": [U, ...], "top_k": K, "exclude_rated": true} top-K for many users; an unknown one fails alone
    {"user_rows": [START, STOP], "top_k": K, ...}          top-K for the model's users START..STOP-1, in the
                                                           model's order (answer adds "n_users")
Every answer is a compact JSON object carrying "model_version"; errors are {"error": "..."}
with a 4xx status. A request means one thing: a key repeated within an object, or a string ID
with surrounding whitespace (" 196"), is a 400 naming it. With the archive option cold_start:
fallback, an unknown ID is answered from the model's average user or movie, and that answer (or
instance, or user entry) carries "fallback": "unknown_user" | "unknown_movie" | "unknown_both".
"""

from __future__ import annotations

import json

import numpy as np
import orjson

from model.protocol import (
    BATCH_FIELDS,
    MANY_FIELDS,
    PAIR_FIELDS,
    RECOMMEND_FIELDS,
    RefusedBody,
    Reply,
    RequestError,
    ServiceOptions,
    check_fields,
    check_top_k,
    check_user_rows,
    id_problem,
    is_id,
    round_scores,
    undecodable_body,
)
from model.request import Request, Scorer

SMALL_BODY = 4096  # bytes; a body this small is counted with bytes.count and checked for repeats even when refused


class JsonCodec:
    """Decodes JSON request bodies into Requests and renders their answers."""

    def __init__(self, scorer: Scorer, model_version: str, options: ServiceOptions):
        self.scorer, self.model_version = scorer, model_version
        self.users, self.movies = scorer.rec.artifact.users, scorer.rec.artifact.movies
        self.max_instances, self.max_top_k, self.max_users = options.max_instances, options.max_top_k, options.max_users

    # -- decode ------------------------------------------------------------------------------------

    def decode(self, body: object) -> Request:
        """One body (bytes, str, an already-parsed object, a RefusedBody or None) as a Request; RequestError if refused."""
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
            req, item_keys = self._decode_object(body)
        except RequestError:
            if raw is not None and len(raw) <= SMALL_BODY:
                # The repeat's last value may be what failed here: name the repeat instead.
                refuse_repeated_keys(raw, len(body))
            raise
        if raw is not None:
            kept = len(body) + item_keys
            # Inlined for small bytes (every single-pair request); refuse_repeated_keys explains the count.
            if type(raw) is not bytes or len(raw) > SMALL_BODY or raw.count(b":") > kept:
                refuse_repeated_keys(raw, kept)
        return req

    def _decode_object(self, body: dict) -> tuple[Request, int]:
        """The Request for one JSON object, and how many keys its items hold (for refuse_repeated_keys)."""
        if "instances" in body:
            check_fields(body, BATCH_FIELDS)
            return self._decode_instances(body["instances"])
        if "users" in body or "user_rows" in body:
            check_fields(body, MANY_FIELDS)
            return self._decode_many(body), 0
        if "top_k" in body or ("user_id" in body and "movie_id" not in body and "exclude_rated" in body):
            check_fields(body, RECOMMEND_FIELDS)
            user = body.get("user_id")
            if not is_id(user):
                raise RequestError(400, id_problem("user_id", user))
            top_k, exclude = check_top_k(body, self.max_top_k)
            row = np.array([self.users.get(user)])
            req = Request(self.recommend_answer, row, top_k=top_k, exclude_rated=exclude, sent=body)
            self._settle_one(req, [user])
            return req, 0
        check_fields(body, PAIR_FIELDS)
        user, movie = body.get("user_id"), body.get("movie_id")
        for name, value in (("user_id", user), ("movie_id", movie)):
            if not is_id(value):
                hint = " (or 'top_k' for recommendations, or 'instances' for many pairs)" if value is None else ""
                raise RequestError(400, id_problem(name, value) + hint)
        req = Request(self.pair_answer, np.array([self.users.get(user)]), np.array([self.movies.get(movie)]), sent=body)
        self._settle_one(req, [user], [movie])
        return req, 0

    def _settle_one(self, req: Request, users: list, movies: list | None = None) -> None:
        """Settle a one-row request, whose row's error is the whole request's (a 404)."""
        if req.users[0] < 0 or (movies is not None and req.movies[0] < 0):
            self.scorer.settle(req, users, movies)
            if req.errors:
                raise RequestError(404, req.errors[0])

    def _decode_instances(self, instances: object) -> tuple[Request, int]:
        """{"instances": [...]}: one rating per item, a bad item failing alone."""
        if not isinstance(instances, list):
            raise RequestError(
                400, f"'instances' must be a list of {{user_id, movie_id}} objects, got {type(instances).__name__}"
            )
        if len(instances) > self.max_instances:
            raise RequestError(413, f"too many instances: {len(instances)} > {self.max_instances}; split the request")
        # Column-wise when every item is a plain {user_id, movie_id} object: two comprehensions and a
        # numpy mapping cost about half of a per-item loop at 10k items.
        try:
            users = [item["user_id"] for item in instances]
            movies = [item["movie_id"] for item in instances]
            plain = not set(map(len, instances)) - {2}
        except (KeyError, TypeError):
            plain = False
        errors = {}
        if not plain:
            users, movies, errors = _odd_items(instances)
        req = Request(
            self.instances_answer, self.users.rows_exact(users), self.movies.rows_exact(movies), errors, sent=instances
        )
        self.scorer.settle(req, users, movies)
        return req, 2 * len(instances) if plain else sum(len(item) for item in instances if type(item) is dict)

    def _decode_many(self, body: dict) -> Request:
        """{"users": [...]} or {"user_rows": [start, stop]}: one top-K list per user, a bad user failing alone."""
        top_k, exclude = check_top_k(body, self.max_top_k)
        if "users" in body and "user_rows" in body:
            raise RequestError(400, "send either 'users' or 'user_rows', not both")
        if "user_rows" in body:
            start, stop = check_user_rows(body["user_rows"], len(self.users), self.max_users)
            rows = np.arange(start, stop, dtype=np.int64)
            ids = [_echo_id(self.users.id_of(r)) for r in rows.tolist()]
            return Request(self.page_answer, rows, top_k=top_k, exclude_rated=exclude, sent=ids)
        users = body["users"]
        if not isinstance(users, list):
            raise RequestError(400, f"'users' must be a list of user IDs, got {type(users).__name__}")
        if len(users) > self.max_users:
            raise RequestError(413, f"too many users: {len(users)} > {self.max_users}; split the request")
        req = Request(self.users_answer, self.users.rows_exact(users), top_k=top_k, exclude_rated=exclude, sent=users)
        self.scorer.settle(req, users)
        return req

    # -- render ------------------------------------------------------------------------------------

    def pair_answer(self, req: Request) -> Reply:
        """{"user_id", "movie_id", "rating", ["fallback"], "model_version"}."""
        pair, rating = req.sent, float(req.result[0])
        return self._one(req, {"user_id": pair["user_id"], "movie_id": pair["movie_id"], "rating": rating})

    def instances_answer(self, req: Request) -> Reply:
        """The instances list answered in place: each good item gains "rating", a bad one becomes its error."""
        items, errors, ratings = req.sent, req.errors, req.result.tolist()
        if not errors:  # the usual case, without a check per item
            for item, rating in zip(items, ratings, strict=True):
                item["rating"] = rating
        else:
            for i, item in enumerate(items):
                if i not in errors:
                    item["rating"] = ratings[i]
                    continue
                echo = {k: item[k] for k in ("user_id", "movie_id") if is_id(item.get(k))} if type(item) is dict else {}
                items[i] = {**echo, "error": errors[i]}
        for i, kind in req.fallbacks.items():  # never a failed item
            items[i]["fallback"] = kind
        return Reply(200, orjson.dumps({"predictions": items, "model_version": self.model_version}))

    def recommend_answer(self, req: Request) -> Reply:
        """{"user_id", "recommendations", ["fallback"], "model_version"} for one user."""
        movies = self._recommendations(*req.result[0])
        return self._one(req, {"user_id": req.sent["user_id"], "recommendations": movies})

    def _one(self, req: Request, body: dict) -> Reply:
        """The answer to a one-row request: `body`, its row's fallback kind if any, and the model version."""
        if req.fallbacks:
            body["fallback"] = req.fallbacks[0]
        body["model_version"] = self.model_version
        return Reply(200, orjson.dumps(body))

    def users_answer(self, req: Request) -> Reply:
        """{"recommendations": [one entry per user, in request order], "model_version"}."""
        return Reply(200, orjson.dumps(self._entries(req)))

    def page_answer(self, req: Request) -> Reply:
        """The answer to a user_rows request: users_answer's, plus how many users the model has."""
        return Reply(200, orjson.dumps({**self._entries(req), "n_users": len(self.users)}))

    def _entries(self, req: Request) -> dict:
        """One entry per user of a many-users request, in request order: its list, or its error."""
        entries = []
        for i, (user, result) in enumerate(zip(req.sent, req.result, strict=True)):
            if result is None:
                entry = {"user_id": user, "error": req.errors[i]} if is_id(user) else {"error": req.errors[i]}
            else:
                entry = {"user_id": user, "recommendations": self._recommendations(*result)}
                if i in req.fallbacks:
                    entry["fallback"] = req.fallbacks[i]
            entries.append(entry)
        return {"recommendations": entries, "model_version": self.model_version}

    def _recommendations(self, rows: np.ndarray, scores: np.ndarray) -> list[dict]:
        """One user's list: each movie's ID (a number where numeric), title and rounded score."""
        titles, movie_id = self.scorer.rec.artifact.titles, self.movies.id_of
        return [
            {"movie_id": _echo_id(movie_id(r)), "title": titles[r], "score": s}
            for r, s in zip(rows.tolist(), round_scores(scores).tolist(), strict=False)
        ]


def _odd_items(instances: list) -> tuple[list, list, dict[int, str]]:
    """The ID columns of instances that are not all plain {user_id, movie_id} objects, and each odd item's error."""
    users, movies, errors = [], [], {}
    for i, item in enumerate(instances):
        if not isinstance(item, dict):
            errors[i] = f"instance must be an object with user_id and movie_id, got {type(item).__name__}"
        else:
            try:
                check_fields(item, PAIR_FIELDS)
            except RequestError as exc:
                errors[i] = str(exc)
        # A failed item sends no ID, so it maps to no row.
        users.append(None if i in errors else item.get("user_id"))
        movies.append(None if i in errors else item.get("movie_id"))
    return users, movies, errors


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
