"""The request contract shared by the JSON and Arrow protocols: caps, fields, errors and replies.

Kept free of torch so the client can import the caps (one source for both ends).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    import numpy as np

MAX_INSTANCES = 20_000
MAX_TOP_K = 100
MAX_USERS = 1000
MIN_MOVIE_RATINGS = 20
DEFAULT_TOP_K = 10
COLD_START_MODES = ("error", "fallback")  # unknown IDs: a 404 / an answer from the average user or movie
FALLBACK_KINDS = ("unknown_user", "unknown_movie", "unknown_both")  # the "fallback" field of such an answer

PAIR_FIELDS = frozenset(("user_id", "movie_id"))
RECOMMEND_FIELDS = frozenset(("user_id", "top_k", "exclude_rated"))
BATCH_FIELDS = frozenset(("instances",))
MANY_FIELDS = frozenset(("users", "user_rows", "top_k", "exclude_rated"))

JSON_CONTENT_TYPE = "application/json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"  # model/arrow.py: pairs or users as Arrow IPC

# Ratings and scores in every answer, JSON or Arrow: four decimals is far below the model's error and keeps answers short.
SCORE_DECIMALS = 4

NOT_UTF8 = f"body must be UTF-8 JSON (or an Arrow IPC stream with Content-Type {ARROW_STREAM})"

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
    max_users: int = MAX_USERS  # users per multi-user recommendation request; more gets 413
    min_movie_ratings: int = MIN_MOVIE_RATINGS  # recommend only movies rated at least this often
    worker_metrics: bool = False  # the worker's per-batch PredictionTime gauge (costs throughput)
    cold_start: str = "error"  # unknown IDs: "error" (404) or "fallback" (the average user/movie answers)

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
        lowest = {"max_instances": 1, "max_top_k": 1, "max_users": 1, "min_movie_ratings": 0}
        for name, value in section.items():
            if name == "worker_metrics":
                if type(value) is not bool:
                    raise ValueError(f"model-config.yaml handler: {name} must be true or false, got {value!r}")
            elif name == "cold_start":
                if value not in COLD_START_MODES or type(value) is not str:
                    raise ValueError(
                        f"model-config.yaml handler: {name} must be one of {', '.join(COLD_START_MODES)}, got {value!r}"
                    )
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


@dataclass(frozen=True)
class RefusedBody:
    """A request refused before its body is read (a Content-Type the service does not take): a 400 saying why."""

    message: str


def round_scores(values: np.ndarray) -> np.ndarray:
    """Ratings or scores as answers carry them: float64 rounded to SCORE_DECIMALS (numpy's arithmetic, both protocols)."""
    return values.astype("float64").round(SCORE_DECIMALS)


def is_id(value: object) -> bool:
    """A raw ID as the protocol accepts it: an int, or a non-empty string without surrounding whitespace.

    Never a float or a bool; " 196" is refused rather than read as 196, so one ID has one spelling.
    """
    return type(value) is int or (type(value) is str and value != "" and value.strip() == value)


def id_problem(name: str, value: object) -> str:
    """What is wrong with a raw ID field, phrased for the error answer."""
    if value is None:
        return f"missing field '{name}'"
    if type(value) is str and value.strip() != value:
        return f"'{name}' has surrounding whitespace: {value!r:.40}"
    if type(value) is float and value.is_integer() and abs(value) >= 2**63:
        # orjson reads integers beyond 64 bits as floats: name the real problem, not the float.
        return f"'{name}' is out of range: integer IDs must fit in 64 bits; send larger ones as strings"
    return f"'{name}' must be an integer or a non-empty string, got {type(value).__name__} {value!r:.40}"


def undecodable_body(body: bytes | bytearray | memoryview | str) -> RequestError | None:
    """The 400 for a body that is not UTF-8 text (binary, gzip, another charset), or None if it is."""
    try:
        if isinstance(body, str):
            body.encode("utf-8")  # TorchServe's surrogate-escaped decoding of bad bytes fails here
        else:
            bytes(body).decode("utf-8")
    except UnicodeError:
        return RequestError(400, NOT_UTF8)
    return None


def fallback_kind(unknown_user: bool, unknown_movie: bool) -> str | None:
    """The "fallback" value of a pair answered from the average user and/or movie (None: a personal answer)."""
    if unknown_user:
        return FALLBACK_KINDS[2] if unknown_movie else FALLBACK_KINDS[0]
    return FALLBACK_KINDS[1] if unknown_movie else None


def check_fields(obj: dict, allowed: frozenset, where: str = "") -> None:
    """Refuse a request object with a field the protocol does not know (a 400 naming it)."""
    extra = sorted(set(obj) - allowed)
    if extra:
        raise RequestError(400, f"{where}unknown field '{extra[0]}' (allowed: {', '.join(sorted(allowed))})")


def check_top_k(options: dict, max_top_k: int) -> tuple[int, bool]:
    """The top_k and exclude_rated of a recommendation request, checked; a bad one is a 400 naming it."""
    top_k = options.get("top_k", DEFAULT_TOP_K)
    if type(top_k) is not int or not 1 <= top_k <= max_top_k:
        raise RequestError(400, f"'top_k' must be an integer from 1 to {max_top_k}, got {top_k!r:.40}")
    exclude = options.get("exclude_rated", True)
    if type(exclude) is not bool:
        raise RequestError(400, f"'exclude_rated' must be true or false, got {exclude!r:.40}")
    return top_k, exclude


def check_user_rows(value: object, n_users: int, max_users: int) -> tuple[int, int]:
    """A [start, stop] range of model user rows, stop clipped to the user count; too many is a 413."""
    if (
        not isinstance(value, list)
        or len(value) != 2
        or any(type(v) is not int for v in value)
        or not 0 <= value[0] <= value[1]
    ):
        raise RequestError(400, f"'user_rows' must be [start, stop] with 0 <= start <= stop, got {value!r:.40}")
    start, stop = value[0], min(value[1], n_users)
    if stop - start > max_users:
        raise RequestError(413, f"too many users: {stop - start} > {max_users}; ask for fewer user_rows")
    return min(start, stop), stop


def media_type(content_type: str | None) -> str:
    """A Content-Type without its parameters, in lower case ("" when there is none)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def request_body(body: object, content_type: str | None) -> object:
    """A request's body as the service reads it, by its Content-Type: as it came, an ArrowBody, or a RefusedBody.

    JSON bodies pass as they came. Any other type, or none, is refused rather than guessed at:
    TorchServe decodes form types itself (their body never arrives), and text/plain or no type
    is usually a client that forgot the header.
    """
    kind = media_type(content_type)
    if kind == JSON_CONTENT_TYPE:
        return body
    if kind == ARROW_STREAM:
        return ArrowBody(bytes(body) if isinstance(body, (bytes, bytearray, memoryview)) else b"")
    return RefusedBody(f"Content-Type must be {JSON_CONTENT_TYPE} or {ARROW_STREAM}, got {kind[:80] or 'none'}")


def error_reply(status: int, message: str, model_version: str | None) -> Reply:
    """A JSON error reply outside normal parsing (e.g. an unexpected failure)."""
    return Reply(status, orjson.dumps({"error": message, "model_version": model_version or "unknown"}))
