"""The online A/B loop's records: an exposure log written as requests are served, and its join to later ratings."""

from __future__ import annotations

import csv
import fcntl
import math
import os
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from model.data import canonical_column
from movierec.client import abstats
from movierec.client.columnar import InputError, find_columns

DEFAULT_FLUSH_RECORDS = 100
DEFAULT_FLUSH_SECONDS = 1.0


def _write_lines(fd: int, data: bytes) -> None:
    """Append whole lines under an exclusive lock, so other writers' lines never land inside ours."""
    if not data:
        return
    # O_APPEND alone keeps one write() whole on a local file, but write() may stop short (disk
    # full, a signal); the lock keeps the rest of the batch next to its start.
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _flush_and_close(fd: int, buffer: list[bytes], lock: threading.Lock) -> None:
    with lock:
        data = b"".join(buffer)
        buffer.clear()
        try:
            _write_lines(fd, data)
        finally:
            os.close(fd)


class ExposureLog:
    """Appends one JSON line per served A/B request to a file that many processes may share.

    Records are buffered and written in whole-line batches every `flush_records` records or
    `flush_seconds` (checked on each record), on flush(), on close(), and when the program exits.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_records: int = DEFAULT_FLUSH_RECORDS,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
    ) -> None:
        self.path = os.fspath(path)
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._buffer: list[bytes] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        # Buffered records reach the file at interpreter exit too, not only on close().
        self._finalizer = weakref.finalize(self, _flush_and_close, self._fd, self._buffer, self._lock)

    def record(self, user_id: Any, arm: str, version: str, answer: dict[str, Any], *, model: str) -> None:
        """Log one served answer: a predicted rating, or the recommended movie IDs and their scores."""
        entry: dict[str, Any] = {
            "time": round(time.time(), 3),
            "user_id": user_id,
            "arm": arm,
            "version": version,
            "model": model,
        }
        if "recommendations" in answer:
            recs = answer["recommendations"]
            entry["kind"] = "recommend"
            entry["movie_ids"] = [r["movie_id"] for r in recs]
            entry["scores"] = [r.get("score") for r in recs]
        else:
            entry["kind"] = "predict"
            entry["movie_id"] = answer.get("movie_id")
            entry["prediction"] = answer.get("rating")
        line = orjson.dumps(entry) + b"\n"
        with self._lock:
            self._buffer.append(line)
            due = time.monotonic() - self._last_flush >= self.flush_seconds
            if len(self._buffer) < self.flush_records and not due:
                return
            self._flush_locked()

    def _flush_locked(self) -> None:
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._last_flush = time.monotonic()
        _write_lines(self._fd, data)

    def flush(self) -> None:
        """Write the buffered records now."""
        with self._lock:
            self._flush_locked()

    def close(self) -> None:
        """Write the buffered records and close the file."""
        self._finalizer()

    def __enter__(self) -> ExposureLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Exposure:
    """One movie a user was shown by an arm, with the rating the arm predicted for it (if any)."""

    time: float
    arm: str
    prediction: float | None


@dataclass
class Exposures:
    """An exposure log indexed by (user, movie), with counts per arm."""

    by_pair: dict[tuple[str, str], list[Exposure]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=lambda: {"a": 0, "b": 0})
    users: dict[str, set[str]] = field(default_factory=lambda: {"a": set(), "b": set()})
    bad_lines: list[str] = field(default_factory=list)

    def add(self, entry: dict[str, Any]) -> None:
        """Index one log record; each of its movies becomes an exposure."""
        arm, user = entry["arm"], str(entry["user_id"])
        known = self.versions.setdefault(arm, str(entry["version"]))
        if known != str(entry["version"]):
            raise InputError(f"arm {arm} served versions {known} and {entry['version']}: keep one log per experiment")
        self.requests[arm] += 1
        self.users[arm].add(user)
        if entry["kind"] == "recommend":
            shown = zip(entry["movie_ids"], entry.get("scores") or [None] * len(entry["movie_ids"]), strict=True)
        else:
            shown = [(entry["movie_id"], entry.get("prediction"))]
        for movie, prediction in shown:
            self.by_pair.setdefault((user, str(movie)), []).append(Exposure(float(entry["time"]), arm, prediction))


def read_exposures(path: str | os.PathLike[str]) -> Exposures:
    """Index an exposure log; an unreadable line (a torn last line after a crash) is kept as a message."""
    log = Exposures()
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                entry = orjson.loads(line)
                if entry["arm"] not in ("a", "b"):
                    raise ValueError(f"arm {entry['arm']!r}")
                log.add(entry)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                log.bad_lines.append(f"line {number}: {exc!r}")
    return log


@dataclass
class Outcome:
    """One later rating of a user and movie."""

    line: int
    user_id: str
    movie_id: str
    rating: float
    time: float | None


def read_outcomes(path: str | os.PathLike[str], bad: list[str]) -> Iterator[Outcome]:
    """Stream a ratings CSV (any header the training data accepts); unreadable rows go to `bad`."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty file, expected a header with user_id,movie_id,rating")
        u, m, r = find_columns(header, ("user_id", "movie_id", "rating"), path)
        names = [canonical_column(name) for name in header]
        t = names.index("timestamp") if "timestamp" in names else None
        for fields in reader:
            if not fields:
                continue
            try:
                when = float(fields[t]) if t is not None else None
                yield Outcome(reader.line_num, fields[u], fields[m], float(fields[r]), when)
            except (IndexError, ValueError) as exc:
                bad.append(f"line {reader.line_num}: {exc}")


@dataclass
class OnlineResult:
    """Exposures joined to outcomes: per-arm squared errors by user, and what did not match."""

    exposures: Exposures
    errors: dict[str, abstats.UserErrors] = field(
        default_factory=lambda: {"a": abstats.UserErrors(), "b": abstats.UserErrors()}
    )
    matched: dict[str, int] = field(default_factory=lambda: {"a": 0, "b": 0})
    outcomes_read: int = 0
    before_exposure: int = 0
    bad_outcomes: list[str] = field(default_factory=list)

    def comparison(self, *, seed: int = abstats.DEFAULT_SEED, reps: int = abstats.DEFAULT_REPS) -> abstats.Comparison:
        """Online RMSE per arm and B - A, with intervals from resampling users within each arm."""
        (sse_a, rows_a), (sse_b, rows_b) = self.errors["a"].arrays(), self.errors["b"].arrays()
        return abstats.split_comparison(sse_a, rows_a, sse_b, rows_b, seed=seed, reps=reps)


def join_outcomes(exposures: Exposures, outcomes_path: str | os.PathLike[str]) -> OnlineResult:
    """Match each rating to the exposure of its user and movie: the latest one not after the rating.

    Without a timestamp column every rating counts and matches the latest exposure.
    """
    result = OnlineResult(exposures)
    for outcome in read_outcomes(outcomes_path, result.bad_outcomes):
        result.outcomes_read += 1
        shown = exposures.by_pair.get((outcome.user_id, outcome.movie_id))
        if not shown:
            continue
        # Ratings carry whole seconds; an exposure in the same second still counts as before it.
        eligible = [e for e in shown if outcome.time is None or math.floor(e.time) <= outcome.time]
        if not eligible:
            result.before_exposure += 1
            continue
        exposure = max(eligible, key=lambda e: e.time)
        result.matched[exposure.arm] += 1
        if exposure.prediction is not None:
            result.errors[exposure.arm].add(outcome.user_id, (float(exposure.prediction) - outcome.rating) ** 2)
    return result


def format_online_report(result: OnlineResult, cmp: abstats.Comparison) -> str:
    """A text table per arm: exposures, matched outcomes, online RMSE and its interval."""
    level = f"{cmp.level:.0%} CI"
    head = (
        f"{'arm':<4}{'version':<10}{'requests':>10}{'users':>8}{'matched':>9}{'scored':>8}{'raters':>8}"
        f"{'RMSE':>8}{level:>20}"
    )
    lines = [head]
    for arm, rmse, ci, users in (("a", cmp.rmse_a, cmp.ci_a, cmp.users_a), ("b", cmp.rmse_b, cmp.ci_b, cmp.users_b)):
        ex = result.exposures
        lines.append(
            f"{arm.upper():<4}{ex.versions.get(arm, '-'):<10}{ex.requests[arm]:>10}{len(ex.users[arm]):>8}"
            f"{result.matched[arm]:>9}{result.errors[arm].rows:>8}{users:>8}{rmse:>8.4f}"
            f"{f'[{ci.low:.4f}, {ci.high:.4f}]':>20}"
        )
    lines.append(cmp.describe())
    lines.append(
        f"{result.outcomes_read} outcome rows read, {sum(result.matched.values())} matched an exposure, "
        f"{result.before_exposure} came before their exposure"
    )
    for what, messages in (("exposure log", result.exposures.bad_lines), ("outcome", result.bad_outcomes)):
        if messages:
            lines.append(f"{len(messages)} unreadable {what} lines, e.g. {messages[0]}")
    return "\n".join(lines)
