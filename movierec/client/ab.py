"""Sticky A/B split between two model versions, and its offline evaluation on held-out ratings."""

from __future__ import annotations

import csv
import hashlib
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from movierec.client.api import DEFAULT_MODEL, MovieRecClient, MovieRecError, check_version
from movierec.client.scoring import InputError, find_columns

BUCKETS = 10_000
DEFAULT_SALT = "movierec-ab"
DEFAULT_EVAL_CHUNK = 500
DEFAULT_EVAL_CONCURRENCY = 4
DEFAULT_MIN_ROWS = 500
DEFAULT_MIN_IMPROVEMENT = 0.005
DEFAULT_MAX_ERROR_RATE_INCREASE = 0.01


def bucket(user_id: int | str, salt: str = DEFAULT_SALT) -> int:
    """Stable bucket 0..9999 of a user; 196 and "196" share one."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class ABRouter:
    """Routes each user to version A or B by a stable hash, so one user always sees one version."""

    def __init__(
        self,
        client: MovieRecClient,
        a: str,
        b: str,
        percent_b: float = 50.0,
        *,
        model: str = DEFAULT_MODEL,
        salt: str = DEFAULT_SALT,
    ) -> None:
        if not 0 <= percent_b <= 100:
            raise ValueError(f"percent_b must be within 0..100, got {percent_b}")
        self.client = client
        self.versions = {"a": check_version(a), "b": check_version(b)}
        self.percent_b = percent_b
        self.model = model
        self.salt = salt

    def arm(self, user_id: int | str) -> str:
        """'a' or 'b'. Buckets below the cut go to B, so raising percent_b only moves users A -> B."""
        return "b" if bucket(user_id, self.salt) < self.percent_b * (BUCKETS // 100) else "a"

    def version_for(self, user_id: int | str) -> str:
        """The model version that serves this user."""
        return self.versions[self.arm(user_id)]

    def _tag(self, answer: dict[str, Any], arm: str) -> dict[str, Any]:
        answer["arm"] = arm
        answer["served_by"] = answer.get("model_version", self.versions[arm])
        return answer

    def predict(self, user_id: int | str, movie_id: int | str) -> dict[str, Any]:
        """Predict a rating with the user's arm; the answer carries "arm" and "served_by"."""
        arm = self.arm(user_id)
        answer = self.client.predict(user_id, movie_id, model=self.model, version=self.versions[arm])
        return self._tag(answer, arm)

    def recommend(self, user_id: int | str, top_k: int = 10, *, exclude_rated: bool = True) -> dict[str, Any]:
        """Top-k recommendations from the user's arm; the answer carries "arm" and "served_by"."""
        arm = self.arm(user_id)
        answer = self.client.recommend(
            user_id,
            top_k,
            exclude_rated=exclude_rated,
            model=self.model,
            version=self.versions[arm],
        )
        return self._tag(answer, arm)


@dataclass
class ArmStats:
    """Running totals of one arm during an evaluation."""

    version: str
    rows: int = 0
    scored: int = 0
    row_errors: int = 0
    request_errors: int = 0
    sum_sq: float = 0.0
    sum_sq2: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    error_examples: list[str] = field(default_factory=list)

    def add_error(self, text: str) -> None:
        """Count one failed row and keep a few messages to show."""
        self.row_errors += 1
        if len(self.error_examples) < 3 and text not in self.error_examples:
            self.error_examples.append(text)

    def add_answer(self, rows: list[EvalRow], ms: float, answer: dict[str, Any] | Exception) -> None:
        """Count one request of `rows`: its latency and squared errors, or why rows got no rating."""
        self.rows += len(rows)
        if isinstance(answer, Exception):
            self.request_errors += 1
            for _ in rows:
                self.add_error(str(answer))
            return
        self.latencies_ms.append(ms)
        predictions = answer.get("predictions", [])
        if len(predictions) != len(rows):
            self.request_errors += 1
            for _ in rows:
                self.add_error(f"{len(predictions)} predictions for {len(rows)} instances")
            return
        for row, p in zip(rows, predictions, strict=False):
            if p.get("rating") is None:
                self.add_error(p.get("error", "no rating in the answer"))
                continue
            sq = (float(p["rating"]) - row.rating) ** 2
            self.scored += 1
            self.sum_sq += sq
            self.sum_sq2 += sq * sq

    @property
    def rmse(self) -> float:
        """Root mean squared error over scored rows (nan if none)."""
        return math.sqrt(self.sum_sq / self.scored) if self.scored else math.nan

    @property
    def rmse_se(self) -> float:
        """Standard error of the RMSE (delta method on the squared errors)."""
        if self.scored < 2 or self.sum_sq == 0:
            return math.nan
        mean = self.sum_sq / self.scored
        var = max(self.sum_sq2 / self.scored - mean * mean, 0.0) * self.scored / (self.scored - 1)
        return math.sqrt(var / self.scored) / (2 * math.sqrt(mean))

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


@dataclass
class Decision:
    """Which version should be the default after an evaluation, and why."""

    winner: str | None
    reason: str


def decide(
    a: ArmStats,
    b: ArmStats,
    *,
    min_rows: int = DEFAULT_MIN_ROWS,
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT,
    max_error_rate_increase: float = DEFAULT_MAX_ERROR_RATE_INCREASE,
) -> Decision:
    """Pick the lower-RMSE version only if the gap is clear of noise and both arms have enough rows.

    A gap counts when it exceeds both `min_improvement` and two standard errors
    of the difference (arms hold disjoint users, so their errors are independent).
    """
    for arm in (a, b):
        if arm.scored < min_rows:
            return Decision(
                None,
                f"{arm.version} has {arm.scored} scored rows, fewer than the {min_rows} required",
            )
    best, other = (a, b) if a.rmse <= b.rmse else (b, a)
    gap = other.rmse - best.rmse
    noise = 2 * math.sqrt(best.rmse_se**2 + other.rmse_se**2)
    if gap <= min_improvement:
        return Decision(
            None,
            f"RMSE gap {gap:.4f} ({best.version} better) is not above the minimum improvement {min_improvement}",
        )
    if not gap > noise:
        return Decision(
            None,
            f"RMSE gap {gap:.4f} ({best.version} better) is within noise (2 SE = {noise:.4f})",
        )
    if best.error_rate > other.error_rate + max_error_rate_increase:
        return Decision(
            None,
            f"{best.version} has lower RMSE but fails more rows "
            f"({best.error_rate:.2%} vs {other.error_rate:.2%}, allowed +{max_error_rate_increase:.2%})",
        )
    return Decision(
        best.version,
        f"{best.version} RMSE {best.rmse:.4f} beats {other.version} {other.rmse:.4f} by {gap:.4f} "
        f"(> {min_improvement} and > 2 SE = {noise:.4f})",
    )


@dataclass
class EvalRow:
    """One held-out rating as read."""

    line: int
    user_id: str
    movie_id: str
    rating: float


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


def evaluate(
    router: ABRouter,
    heldout_path: str | os.PathLike[str],
    *,
    chunk_size: int = DEFAULT_EVAL_CHUNK,
    concurrency: int = DEFAULT_EVAL_CONCURRENCY,
) -> tuple[ArmStats, ArmStats, list[str]]:
    """Score held-out ratings through the live endpoint, each user on its sticky arm.

    Returns the stats of arm A, arm B and the input rows that could not be read.
    """
    stats = {arm: ArmStats(version) for arm, version in router.versions.items()}
    bad_input: list[str] = []
    client = router.client

    def send(arm: str, rows: list[EvalRow]) -> tuple[str, list[EvalRow], float, Any]:
        instances = [{"user_id": r.user_id, "movie_id": r.movie_id} for r in rows]
        t0 = time.perf_counter()
        try:
            answer: Any = client.predict_many(instances, model=router.model, version=router.versions[arm])
        except MovieRecError as exc:
            answer = exc
        return arm, rows, (time.perf_counter() - t0) * 1000, answer

    def record(result: tuple[str, list[EvalRow], float, Any]) -> None:
        arm, rows, ms, answer = result
        stats[arm].add_answer(rows, ms, answer)

    buffers: dict[str, list[EvalRow]] = {"a": [], "b": []}
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ab-eval") as pool:
        futures = []
        for item in read_heldout(heldout_path):
            if isinstance(item, str):
                bad_input.append(item)
                continue
            arm = router.arm(item.user_id)
            buffers[arm].append(item)
            if len(buffers[arm]) == chunk_size:
                futures.append(pool.submit(send, arm, buffers[arm]))
                buffers[arm] = []
            # Record finished requests as we go so memory stays bounded on big files.
            while futures and (futures[0].done() or len(futures) > 4 * concurrency):
                record(futures.pop(0).result())
        for arm, rows in buffers.items():
            if rows:
                futures.append(pool.submit(send, arm, rows))
        for fut in futures:
            record(fut.result())
    return stats["a"], stats["b"], bad_input


def format_report(a: ArmStats, b: ArmStats, percent_b: float) -> str:
    """A text table of RMSE, latency and errors per arm."""
    head = (
        f"{'arm':<4}{'version':<10}{'share':>7}{'rows':>9}{'scored':>9}{'RMSE':>8}{'±2SE':>8}"
        f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'row err':>9}{'req err':>9}"
    )
    lines = [head]
    for name, s, share in (("A", a, 100 - percent_b), ("B", b, percent_b)):
        lines.append(
            f"{name:<4}{s.version:<10}{share:>6.0f}%{s.rows:>9}{s.scored:>9}{s.rmse:>8.4f}{2 * s.rmse_se:>8.4f}"
            f"{s.latency(50):>9.1f}{s.latency(90):>9.1f}{s.latency(99):>9.1f}{s.row_errors:>9}{s.request_errors:>9}"
        )
    for name, s in (("A", a), ("B", b)):
        for example in s.error_examples:
            lines.append(f"  {name} error example: {example}")
    return "\n".join(lines)


def plot_report(a: ArmStats, b: ArmStats, path: str | os.PathLike[str]) -> None:
    """Save a PNG comparing RMSE (with ±2 SE) and latency percentiles of both arms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rmse, ax_lat) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"A {a.version}", f"B {b.version}"]
    rmse = [0.0 if math.isnan(s.rmse) else s.rmse for s in (a, b)]
    err = [0.0 if math.isnan(s.rmse_se) else 2 * s.rmse_se for s in (a, b)]
    ax_rmse.bar(labels, rmse, yerr=err, capsize=6, color=["tab:blue", "tab:orange"])
    ax_rmse.set_title("RMSE on held-out ratings (±2 SE)")
    ax_rmse.set_ylabel("RMSE")
    width = 0.25
    for i, q in enumerate((50, 90, 99)):
        values = [0.0 if math.isnan(s.latency(q)) else s.latency(q) for s in (a, b)]
        ax_lat.bar([x + (i - 1) * width for x in range(2)], values, width, label=f"p{q}")
    ax_lat.set_xticks(range(2), labels)
    ax_lat.set_title("Latency per request")
    ax_lat.set_ylabel("ms")
    ax_lat.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
