"""A/B statistics with users as the unit: RMSE from per-user error sums, recall@K and NDCG@K from per-user
values, user bootstrap intervals, the verdicts.

Pure numpy, no server. Rows of one user share that user's taste and the model's bias about them, so
they are not independent; resampling whole users gives intervals that hold for correlated rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


def _mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (summed values, summed weights) -> the statistic


@dataclass(frozen=True)
class Estimates:
    """A statistic of arms A and B and the difference B - A, with user-bootstrap intervals."""

    a: float
    b: float
    ci_a: Interval
    ci_b: Interval
    ci_diff: Interval

    @property
    def diff(self) -> float:
        """B - A."""
        return self.b - self.a


NAN_ESTIMATES = Estimates(math.nan, math.nan, NAN_INTERVAL, NAN_INTERVAL, NAN_INTERVAL)


def paired_estimates(
    values: np.ndarray,
    weights: np.ndarray,
    statistic: Statistic,
    *,
    seed: int = DEFAULT_SEED,
    reps: int = DEFAULT_REPS,
    level: float = DEFAULT_LEVEL,
) -> Estimates:
    """Both arms on the same users: `values` [users, 2] under A and B, `weights` [users] shared.

    One resample of users moves both statistics together, so B - A keeps their correlation.
    """
    if len(weights) == 0:
        return NAN_ESTIMATES
    boot = bootstrap_totals(np.column_stack([values, weights]), reps, np.random.default_rng(seed))
    a, b = statistic(boot[:, 0], boot[:, 2]), statistic(boot[:, 1], boot[:, 2])
    totals, n = values.sum(axis=0), weights.sum()
    return Estimates(
        float(statistic(totals[0], n)),
        float(statistic(totals[1], n)),
        _interval(a, level),
        _interval(b, level),
        _interval(b - a, level),
    )


def split_estimates(
    arms: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    statistic: Statistic,
    *,
    seed: int = DEFAULT_SEED,
    reps: int = DEFAULT_REPS,
    level: float = DEFAULT_LEVEL,
) -> Estimates:
    """Disjoint users per arm, `arms` = ((values, weights) of A, of B): resample within each arm independently."""
    rng = np.random.default_rng(seed)
    draws, cis, point = [], [], []
    for values, weights in arms:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(weights) == 0:
            draws.append(np.full(reps, math.nan))
            cis.append(NAN_INTERVAL)
            point.append(math.nan)
            continue
        boot = bootstrap_totals(np.column_stack([values, weights]), reps, rng)
        draws.append(statistic(boot[:, 0], boot[:, 1]))
        cis.append(_interval(draws[-1], level))
        point.append(float(statistic(values.sum(), np.sum(weights))))
    diff = draws[1] - draws[0]
    ci_diff = NAN_INTERVAL if np.isnan(diff).any() else _interval(diff, level)
    return Estimates(point[0], point[1], cis[0], cis[1], ci_diff)


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
    est = paired_estimates(sse, rows, _rmse, seed=seed, reps=reps, level=level)
    n_users, n_rows = len(rows), int(np.sum(rows))
    return Comparison(
        True, est.a, est.b, est.ci_a, est.ci_b, est.ci_diff, n_users, n_users, n_rows, n_rows, seed, reps, level
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
    est = split_estimates(((sse_a, rows_a), (sse_b, rows_b)), _rmse, seed=seed, reps=reps, level=level)
    return Comparison(
        paired=False,
        rmse_a=est.a,
        rmse_b=est.b,
        ci_a=est.ci_a,
        ci_b=est.ci_b,
        ci_diff=est.ci_diff,
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


@dataclass(frozen=True)
class RankingComparison:
    """recall@k and NDCG@k of A's and B's top-k lists, averaged over users, and B - A, with user-bootstrap intervals."""

    k: int
    paired: bool
    recall: Estimates
    ndcg: Estimates
    users_a: int  # the users each arm's means are over (paired: the users both arms judged)
    users_b: int
    seed: int
    reps: int
    level: float

    def differences(self) -> str:
        """B - A of both metrics with their intervals."""
        return "; ".join(
            f"{name}@{self.k} B - A = {est.diff:+.4f}, {self.level:.0%} interval "
            f"[{est.ci_diff.low:+.4f}, {est.ci_diff.high:+.4f}]"
            for name, est in (("recall", self.recall), ("NDCG", self.ndcg))
        )

    def describe(self) -> str:
        """One line: both differences, their intervals, and how the intervals were made."""
        design = (
            f"paired: the {self.users_a} users both versions judged" if self.paired else "split: disjoint users per arm"
        )
        return f"{self.differences()} ({design}; bootstrap over users, {self.reps} resamples, seed {self.seed})"


def ranking_comparison(
    quality_a: tuple[np.ndarray, np.ndarray],
    quality_b: tuple[np.ndarray, np.ndarray],
    *,
    k: int,
    paired: bool,
    seed: int = DEFAULT_SEED,
    reps: int = DEFAULT_REPS,
    level: float = DEFAULT_LEVEL,
) -> RankingComparison:
    """Compare per-user (recall, NDCG) arrays of A and B; paired, both arrays hold the same users in one order."""
    options = {"seed": seed, "reps": reps, "level": level}
    metrics = []
    for a, b in zip(quality_a, quality_b, strict=True):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if paired:
            metrics.append(paired_estimates(np.column_stack([a, b]), np.ones(len(a)), _mean, **options))
        else:
            metrics.append(split_estimates(((a, np.ones(len(a))), (b, np.ones(len(b)))), _mean, **options))
    users_a, users_b = len(quality_a[0]), len(quality_b[0])
    return RankingComparison(k, paired, metrics[0], metrics[1], users_a, users_b, seed, reps, level)


RANKING_VERDICTS = ("a-better", "b-better", "no-difference", "mixed", "no-users")


def decide_ranking(cmp: RankingComparison, version_a: str, version_b: str) -> Decision:
    """The top-k verdict: a version ranks better when the interval of B - A excludes 0 in its favour for
    recall@k or NDCG@k and the other metric's interval does not point the other way."""
    if cmp.users_a == 0 or cmp.users_b == 0:
        return Decision("no-users", None, "no user was judged in both arms" if cmp.paired else "an arm judged no user")
    signs = {(est.ci_diff.low > 0) - (est.ci_diff.high < 0) for est in (cmp.recall, cmp.ndcg)}  # +1: B higher
    intervals = f"({cmp.differences()})"
    if signs == {0}:
        return Decision("no-difference", None, f"both intervals include 0 {intervals}")
    if {-1, 1} <= signs:
        return Decision("mixed", None, f"the metrics disagree {intervals}")
    b_wins = 1 in signs
    best, other = (version_b, version_a) if b_wins else (version_a, version_b)
    return Decision("b-better" if b_wins else "a-better", best, f"{best} ranks better than {other} {intervals}")
