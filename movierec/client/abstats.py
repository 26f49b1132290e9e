"""A/B statistics on RMSE with users as the unit: per-user error sums, user bootstrap intervals, the verdict.

Pure numpy, no server. Rows of one user share that user's taste and the model's bias about them, so
they are not independent; resampling whole users gives intervals that hold for correlated rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from movierec.client.settings import (
    DEFAULT_LEVEL,
    DEFAULT_MAX_ERROR_RATE_INCREASE,
    DEFAULT_MIN_IMPROVEMENT,
    DEFAULT_MIN_ROWS,
    DEFAULT_REPS,
    DEFAULT_SEED,
)

# Resampled users held at once (replicates x users x columns), so 160k users stay within ~100 MB.
BOOTSTRAP_BLOCK = 4_000_000


class UserErrors:
    """Running per-user sums of squared errors for one arm, or two arms on the same rows (paired)."""

    def __init__(self, arms: int = 1) -> None:
        self.arms = arms
        self._sums: dict[str, list[float]] = {}

    def add(self, user_id: str, *squared_errors: float) -> None:
        """Add one row: its squared error under each arm."""
        sums = self._sums.get(user_id)
        if sums is None:
            sums = self._sums[user_id] = [0.0] * (self.arms + 1)
        for i, sq in enumerate(squared_errors):
            sums[i] += sq
        sums[-1] += 1

    @property
    def users(self) -> int:
        """Users with at least one row."""
        return len(self._sums)

    @property
    def rows(self) -> int:
        """Rows added."""
        return int(sum(s[-1] for s in self._sums.values()))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(sum of squared errors [users, arms], rows [users]), users sorted by ID.

        Sorted, so a seed gives the same interval whatever order the rows came in.
        """
        table = np.array([self._sums[u] for u in sorted(self._sums)], dtype=np.float64).reshape(-1, self.arms + 1)
        return table[:, :-1], table[:, -1]


def user_totals(user_ids: np.ndarray, squared_errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised UserErrors: per-user sums of `squared_errors` [rows] or [rows, arms] and row counts."""
    sq = np.asarray(squared_errors, dtype=np.float64)
    sq = sq[:, None] if sq.ndim == 1 else sq
    _, owner = np.unique(np.asarray(user_ids), return_inverse=True)
    owner = owner.ravel()
    n_users = int(owner.max(initial=-1)) + 1
    sums = np.stack([np.bincount(owner, weights=sq[:, j], minlength=n_users) for j in range(sq.shape[1])], axis=1)
    return sums, np.bincount(owner, minlength=n_users).astype(np.float64)


def bootstrap_totals(columns: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """Column totals of `reps` resamples of the rows (users) of `columns` [users, k], drawn with replacement."""
    n_users, k = columns.shape
    out = np.empty((reps, k))
    block = max(1, BOOTSTRAP_BLOCK // max(1, n_users * k))
    for start in range(0, reps, block):
        picks = rng.integers(0, n_users, size=(min(block, reps - start), n_users))
        out[start : start + len(picks)] = columns[picks].sum(axis=1)
    return out


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval."""

    low: float
    high: float

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of zero."""
        return self.low > 0 or self.high < 0

    def covers(self, value: float) -> bool:
        """True when `value` lies within the interval."""
        return self.low <= value <= self.high


NAN_INTERVAL = Interval(math.nan, math.nan)


def _interval(draws: np.ndarray, level: float) -> Interval:
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(low), float(high))


@dataclass(frozen=True)
class Comparison:
    """RMSE of A and B, the difference B - A, and their user-bootstrap intervals."""

    paired: bool
    rmse_a: float
    rmse_b: float
    ci_a: Interval
    ci_b: Interval
    ci_diff: Interval
    users_a: int
    users_b: int
    rows_a: int
    rows_b: int
    seed: int
    reps: int
    level: float

    @property
    def diff(self) -> float:
        """RMSE(B) - RMSE(A): negative when B predicts better."""
        return self.rmse_b - self.rmse_a

    def describe(self) -> str:
        """One line: the difference, its interval, and how the interval was made."""
        design = "paired: both versions on every row" if self.paired else "split: disjoint users per arm"
        return (
            f"RMSE B - A = {self.diff:+.4f}, {self.level:.0%} interval [{self.ci_diff.low:+.4f}, "
            f"{self.ci_diff.high:+.4f}] ({design}; bootstrap over users, {self.reps} resamples, seed {self.seed})"
        )


def _rmse(sse: np.ndarray, rows: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(sse / rows)


def paired_comparison(
    sse: np.ndarray,
    rows: np.ndarray,
    *,
    seed: int = DEFAULT_SEED,
    reps: int = DEFAULT_REPS,
    level: float = DEFAULT_LEVEL,
) -> Comparison:
    """Both arms scored the same rows: `sse` [users, 2] holds each user's sums under A and B.

    One resample of users moves both RMSEs together, so the difference keeps their correlation
    and its interval is far narrower than that of two independent arms.
    """
    n_rows = int(rows.sum())
    if len(rows) == 0:
        return Comparison(
            True, math.nan, math.nan, NAN_INTERVAL, NAN_INTERVAL, NAN_INTERVAL, 0, 0, 0, 0, seed, reps, level
        )
    boot = bootstrap_totals(np.column_stack([sse, rows]), reps, np.random.default_rng(seed))
    a, b = _rmse(boot[:, 0], boot[:, 2]), _rmse(boot[:, 1], boot[:, 2])
    totals = sse.sum(axis=0)
    return Comparison(
        paired=True,
        rmse_a=math.sqrt(totals[0] / n_rows),
        rmse_b=math.sqrt(totals[1] / n_rows),
        ci_a=_interval(a, level),
        ci_b=_interval(b, level),
        ci_diff=_interval(b - a, level),
        users_a=len(rows),
        users_b=len(rows),
        rows_a=n_rows,
        rows_b=n_rows,
        seed=seed,
        reps=reps,
        level=level,
    )


def split_comparison(
    sse_a: np.ndarray,
    rows_a: np.ndarray,
    sse_b: np.ndarray,
    rows_b: np.ndarray,
    *,
    seed: int = DEFAULT_SEED,
    reps: int = DEFAULT_REPS,
    level: float = DEFAULT_LEVEL,
) -> Comparison:
    """Arms hold disjoint users (a sticky split): resample users within each arm independently."""
    rng = np.random.default_rng(seed)
    draws, cis, point = [], [], []
    for sse, rows in ((sse_a, rows_a), (sse_b, rows_b)):
        sse = np.asarray(sse, dtype=np.float64).reshape(-1)
        if len(rows) == 0:
            draws.append(np.full(reps, math.nan))
            cis.append(NAN_INTERVAL)
            point.append(math.nan)
            continue
        boot = bootstrap_totals(np.column_stack([sse, rows]), reps, rng)
        draws.append(_rmse(boot[:, 0], boot[:, 1]))
        cis.append(_interval(draws[-1], level))
        point.append(math.sqrt(sse.sum() / rows.sum()))
    diff = draws[1] - draws[0]
    return Comparison(
        paired=False,
        rmse_a=point[0],
        rmse_b=point[1],
        ci_a=cis[0],
        ci_b=cis[1],
        ci_diff=NAN_INTERVAL if np.isnan(diff).any() else _interval(diff, level),
        users_a=len(rows_a),
        users_b=len(rows_b),
        rows_a=int(np.sum(rows_a)),
        rows_b=int(np.sum(rows_b)),
        seed=seed,
        reps=reps,
        level=level,
    )


@dataclass(frozen=True)
class Decision:
    """The verdict of a comparison: a code, the version to make default (or None), and why."""

    verdict: str  # one of VERDICTS
    winner: str | None
    reason: str


VERDICTS = ("a-better", "b-better", "no-difference", "below-minimum", "too-few-rows", "more-errors")


def decide(
    cmp: Comparison,
    version_a: str,
    version_b: str,
    *,
    min_rows: int = DEFAULT_MIN_ROWS,
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT,
    error_rates: tuple[float, float] | None = None,
    max_error_rate_increase: float = DEFAULT_MAX_ERROR_RATE_INCREASE,
) -> Decision:
    """Name a winner only if both arms have enough rows, the interval of B - A excludes zero,
    the gap exceeds `min_improvement`, and the winner does not fail more rows than allowed."""
    for version, rows in ((version_a, cmp.rows_a), (version_b, cmp.rows_b)):
        if rows < min_rows:
            return Decision(
                "too-few-rows", None, f"{version} has {rows} scored rows, fewer than the {min_rows} required"
            )
    b_wins = cmp.diff < 0
    best, other = (version_b, version_a) if b_wins else (version_a, version_b)
    gap, ci = abs(cmp.diff), cmp.ci_diff
    interval = f"B - A = {cmp.diff:+.4f}, {cmp.level:.0%} interval [{ci.low:+.4f}, {ci.high:+.4f}]"
    if not ci.excludes_zero():
        return Decision("no-difference", None, f"the interval of {interval} includes 0")
    if gap <= min_improvement:
        return Decision(
            "below-minimum",
            None,
            f"{best} is better ({interval}) but the gap {gap:.4f} is not above the minimum {min_improvement}",
        )
    if error_rates is not None:
        rate_best, rate_other = error_rates[::-1] if b_wins else error_rates
        if rate_best > rate_other + max_error_rate_increase:
            return Decision(
                "more-errors",
                None,
                f"{best} has lower RMSE but fails more rows "
                f"({rate_best:.2%} vs {rate_other:.2%}, allowed +{max_error_rate_increase:.2%})",
            )
    return Decision(
        "b-better" if b_wins else "a-better",
        best,
        f"{best} beats {other} by {gap:.4f} RMSE ({interval}, excludes 0; gap > {min_improvement})",
    )
