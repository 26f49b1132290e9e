"""A/B statistics with users as the unit: known answers for intervals, pairing and the verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from movierec.client import abstats
from movierec.client.abstats import (
    Comparison,
    Interval,
    UserErrors,
    decide,
    decide_ranking,
    paired_comparison,
    ranking_comparison,
    split_comparison,
    user_totals,
)


def correlated_squares(rng: np.random.Generator, users: int, m: int, rho: float, sd: float = 0.1) -> np.ndarray:
    """[users, m] squared errors around 1 whose intra-user correlation is `rho`."""
    shared = rng.normal(0, sd * math.sqrt(rho), (users, 1))
    own = rng.normal(0, sd * math.sqrt(1 - rho), (users, m))
    return 1 + shared + own


def width(ci: Interval) -> float:
    return ci.high - ci.low


def one_arm_interval(user_ids: np.ndarray, squares: np.ndarray, seed: int) -> Interval:
    sse, rows = user_totals(user_ids, squares)
    return split_comparison(sse, rows, sse, rows, seed=seed, reps=1000).ci_a


def test_user_totals_agree_with_the_running_sums():
    users = np.array(["7", "3", "7", "9", "3", "7"])
    squares = np.array([[1.0, 2.0], [0.5, 0.0], [4.0, 1.0], [0.25, 0.25], [1.5, 3.0], [0.0, 0.0]])
    sse, rows = user_totals(users, squares)
    running = UserErrors(arms=2)
    for user, (a, b) in zip(users, squares, strict=True):
        running.add(str(user), a, b)
    r_sse, r_rows = running.arrays()
    # Both sort users ("3", "7", "9"), so a seed resamples the same users whatever the row order.
    assert sse.tolist() == [[2.0, 3.0], [5.0, 3.0], [0.25, 0.25]] and rows.tolist() == [2, 3, 1]
    assert r_sse.tolist() == sse.tolist() and r_rows.tolist() == rows.tolist()
    assert (running.users, running.rows) == (3, 6)


@pytest.mark.parametrize("rho", [0.0, 0.3])
def test_user_interval_is_wider_than_the_row_interval_by_the_design_effect(rho):
    """m rows per user with intra-user correlation rho: the variance of a user's mean is
    (1 + (m - 1) rho) times what independent rows would give, so the interval over users is
    sqrt(1 + 19 * 0.3) = 2.59 times as wide as the one over rows (1.0 without correlation)."""
    m, n_users = 20, 600
    squares = correlated_squares(np.random.default_rng(11), n_users, m, rho).ravel()
    by_user = one_arm_interval(np.repeat(np.arange(n_users), m), squares, seed=1)
    by_row = one_arm_interval(np.arange(n_users * m), squares, seed=1)
    expected = math.sqrt(1 + (m - 1) * rho)
    assert width(by_user) / width(by_row) == pytest.approx(expected, rel=0.15)


def test_paired_difference_interval_has_the_design_effect_of_the_differences():
    """B's squared error is A's plus a per-row change whose intra-user correlation is 0.5, so the
    paired interval of B - A over users is sqrt(1 + 9 * 0.5) = 2.35 times the one over rows."""
    rng = np.random.default_rng(5)
    m, n_users = 10, 800
    sq_a = np.full((n_users, m), 1.0)
    sq_b = sq_a + 0.02 + (correlated_squares(rng, n_users, m, 0.5, sd=0.05) - 1)
    squares = np.column_stack([sq_a.ravel(), sq_b.ravel()])
    by_user = paired_comparison(*user_totals(np.repeat(np.arange(n_users), m), squares), seed=2, reps=1000)
    by_row = paired_comparison(*user_totals(np.arange(n_users * m), squares), seed=2, reps=1000)
    assert by_user.diff == pytest.approx(by_row.diff) and by_user.diff == pytest.approx(math.sqrt(1.02) - 1, abs=0.002)
    assert width(by_user.ci_diff) / width(by_row.ci_diff) == pytest.approx(math.sqrt(1 + 9 * 0.5), rel=0.15)


def test_identical_models_give_no_difference():
    rng = np.random.default_rng(3)
    sq = correlated_squares(rng, 300, 8, 0.4).ravel()
    cmp = paired_comparison(*user_totals(np.repeat(np.arange(300), 8), np.column_stack([sq, sq])))
    assert cmp.diff == 0 and (cmp.ci_diff.low, cmp.ci_diff.high) == (0.0, 0.0)
    d = decide(cmp, "1.0", "2.0", min_rows=100)
    assert (d.verdict, d.winner) == ("no-difference", None)


def equally_good_pair(rng: np.random.Generator, n_users: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Two models of equal quality overall: each user is hard or easy for both, each model suits
    some users better than the other does (a per-user factor), plus noise per row."""
    hardness = rng.gamma(2.0, 0.5, (n_users, 1))
    suits_a, suits_b = rng.uniform(0.5, 1.5, (2, n_users, 1))
    sq_a = hardness * suits_a * rng.gamma(5.0, 0.2, (n_users, m))
    sq_b = hardness * suits_b * rng.gamma(5.0, 0.2, (n_users, m))
    return np.repeat(np.arange(n_users), m), np.column_stack([sq_a.ravel(), sq_b.ravel()])


def test_equally_good_models_rarely_differ_over_users_but_often_over_rows():
    """Under the null the 95% interval over users excludes 0 about 5% of the time; resampling rows
    ignores that a user's rows move together and is wrong far more often."""
    rng = np.random.default_rng(8)
    false_by_user = false_by_row = 0
    trials = 100
    for trial in range(trials):
        users, squares = equally_good_pair(rng, 120, 15)
        by_user = paired_comparison(*user_totals(users, squares), seed=trial, reps=400)
        by_row = paired_comparison(*user_totals(np.arange(len(users)), squares), seed=trial, reps=400)
        false_by_user += by_user.ci_diff.excludes_zero()
        false_by_row += by_row.ci_diff.excludes_zero()
        if not by_user.ci_diff.excludes_zero():
            assert decide(by_user, "1.0", "2.0", min_rows=1).verdict == "no-difference"
    assert false_by_user / trials <= 0.12
    assert false_by_row / trials >= 0.25  # measured: 5% over users, 44% over rows


def test_pairing_cancels_what_both_models_share():
    """Both models err alike on each user; B is 2% better everywhere. A split comparison of
    disjoint halves cannot see it through the user-to-user spread; the paired one can."""
    rng = np.random.default_rng(4)
    hardness = rng.gamma(2.0, 0.5, (1000, 1)) * np.ones((1, 10))
    users = np.repeat(np.arange(1000), 10)
    squares = np.column_stack([hardness.ravel(), 0.96 * hardness.ravel()])
    paired = paired_comparison(*user_totals(users, squares))
    half = users < 500
    split = split_comparison(*user_totals(users[half], squares[half, 0]), *user_totals(users[~half], squares[~half, 1]))
    assert paired.diff == pytest.approx(paired.rmse_a * (math.sqrt(0.96) - 1))
    assert paired.ci_diff.high < 0 and not split.ci_diff.excludes_zero()
    assert width(split.ci_diff) > 10 * width(paired.ci_diff)
    assert decide(paired, "1.0", "2.0").winner == "2.0"


def test_seed_is_recorded_and_reproducible(monkeypatch):
    users, squares = equally_good_pair(np.random.default_rng(1), 200, 5)
    totals = user_totals(users, squares)
    one, again, other = (paired_comparison(*totals, seed=s, reps=500) for s in (7, 7, 8))
    assert one == again and one.ci_diff != other.ci_diff and (one.seed, one.reps) == (7, 500)
    assert "seed 7" in one.describe() and "500 resamples" in one.describe()
    # Resampling in small blocks (big inputs) draws from the same distribution.
    monkeypatch.setattr(abstats, "BOOTSTRAP_BLOCK", 1000)
    blocked = paired_comparison(*totals, seed=7, reps=500)
    assert width(blocked.ci_diff) == pytest.approx(width(one.ci_diff), rel=0.2)


def comparison(diff: float, low: float, high: float, rows: int = 1000) -> Comparison:
    ci = Interval(0.8, 1.0)
    return Comparison(True, 0.9, 0.9 + diff, ci, ci, Interval(low, high), 100, 100, rows, rows, 0, 2000, 0.95)


def test_verdict_codes_known_answers():
    assert decide(comparison(-0.02, -0.03, -0.01), "1.0", "2.0") == abstats.Decision(
        "b-better",
        "2.0",
        "2.0 beats 1.0 by 0.0200 RMSE (B - A = -0.0200, 95% interval [-0.0300, -0.0100], excludes 0; gap > 0.005)",
    )
    assert decide(comparison(0.02, 0.01, 0.03), "1.0", "2.0").winner == "1.0"
    assert decide(comparison(-0.02, -0.03, 0.001), "1.0", "2.0").verdict == "no-difference"
    below = decide(comparison(-0.004, -0.006, -0.002), "1.0", "2.0")
    assert below.verdict == "below-minimum" and below.winner is None and "not above the minimum 0.005" in below.reason
    assert decide(comparison(-0.02, -0.03, -0.01), "1.0", "2.0", min_improvement=0.025).verdict == "below-minimum"
    few = decide(comparison(-0.02, -0.03, -0.01, rows=499), "1.0", "2.0")
    assert few.verdict == "too-few-rows" and "1.0 has 499 scored rows, fewer than the 500" in few.reason
    # B wins on RMSE but fails 3% of rows against A's 1%: more than the allowed +1%.
    worse = decide(comparison(-0.02, -0.03, -0.01), "1.0", "2.0", error_rates=(0.01, 0.03))
    assert worse.verdict == "more-errors" and worse.winner is None
    assert decide(comparison(-0.02, -0.03, -0.01), "1.0", "2.0", error_rates=(0.03, 0.01)).winner == "2.0"


def test_empty_arm_gives_nan_and_too_few_rows():
    sse, rows = user_totals(np.array([1, 1, 2]), np.array([1.0, 0.5, 2.0]))
    cmp = split_comparison(sse, rows, np.empty((0, 1)), np.empty(0))
    assert math.isnan(cmp.rmse_b) and math.isnan(cmp.ci_diff.low) and cmp.rows_b == 0
    assert decide(cmp, "1.0", "2.0", min_rows=1).verdict == "too-few-rows"
    assert math.isnan(paired_comparison(np.empty((0, 2)), np.empty(0)).rmse_a)


def test_split_arms_are_resampled_independently():
    """Disjoint arms: Var(B - A) = Var(A) + Var(B), so two arms with equal data give a difference
    interval sqrt(2) times as wide as either arm's."""
    users = np.repeat(np.arange(400), 5)
    sse, rows = user_totals(users, correlated_squares(np.random.default_rng(6), 400, 5, 0.3).ravel())
    cmp = split_comparison(sse, rows, sse, rows, seed=4, reps=2000)
    assert cmp.diff == 0 and width(cmp.ci_a) == pytest.approx(width(cmp.ci_b), rel=0.1)
    assert width(cmp.ci_diff) / width(cmp.ci_a) == pytest.approx(math.sqrt(2), rel=0.1)


# --- top-K lists: per-user recall@K and NDCG@K, users as the unit ---


def test_ranking_b_clearly_better_known_answer():
    """Every user's recall and NDCG are 0.1 higher under B: the paired difference is exactly 0.1 in
    every resample, so its interval is [0.1, 0.1]; each arm's mean is the plain mean over users."""
    rng = np.random.default_rng(12)
    recall_a, ndcg_a = rng.uniform(0, 0.5, (2, 300))
    cmp = ranking_comparison((recall_a, ndcg_a), (recall_a + 0.1, ndcg_a + 0.1), k=10, paired=True, seed=3, reps=500)
    for est, a in ((cmp.recall, recall_a), (cmp.ndcg, ndcg_a)):
        assert est.a == pytest.approx(a.mean()) and est.diff == pytest.approx(0.1)
        assert (est.ci_diff.low, est.ci_diff.high) == (pytest.approx(0.1), pytest.approx(0.1))
        # One arm's interval: mean +- 1.96 standard errors over users.
        se = a.std(ddof=1) / math.sqrt(len(a))
        assert width(est.ci_a) == pytest.approx(2 * 1.96 * se, rel=0.15) and est.ci_a.covers(est.a)
    assert (cmp.users_a, cmp.users_b, cmp.paired, cmp.seed, cmp.reps) == (300, 300, True, 3, 500)
    d = decide_ranking(cmp, "1.0", "2.0")
    assert (d.verdict, d.winner) == ("b-better", "2.0")
    assert d.reason == (
        "2.0 ranks better than 1.0 (recall@10 B - A = +0.1000, 95% interval [+0.1000, +0.1000]; "
        "NDCG@10 B - A = +0.1000, 95% interval [+0.1000, +0.1000])"
    )
    assert "paired: the 300 users both versions judged" in cmp.describe() and "seed 3" in cmp.describe()


def test_ranking_noisy_gain_is_found_and_equal_arms_are_not():
    """Lists that hit a relevant movie with probability 0.2 (A) or 0.35 (B), per user: B's gain shows;
    identical arms give B - A = 0 with [0, 0]; two arms of one quality give an interval covering 0."""
    rng = np.random.default_rng(21)
    n = 400
    hits_a, hits_b, hits_a2 = (rng.binomial(10, p, n) / 10 for p in (0.2, 0.35, 0.2))
    better = ranking_comparison((hits_a, hits_a), (hits_b, hits_b), k=10, paired=True, seed=1, reps=1000)
    assert better.recall.ci_diff.low > 0 and better.recall.ci_diff.covers(0.15)
    assert decide_ranking(better, "1.0", "2.0").verdict == "b-better"
    same = ranking_comparison((hits_a, hits_a), (hits_a, hits_a), k=10, paired=True)
    assert same.recall.diff == 0 and (same.recall.ci_diff.low, same.recall.ci_diff.high) == (0.0, 0.0)
    assert decide_ranking(same, "1.0", "1.0") == abstats.Decision(
        "no-difference",
        None,
        "both intervals include 0 (recall@10 B - A = +0.0000, 95% interval [+0.0000, +0.0000]; "
        "NDCG@10 B - A = +0.0000, 95% interval [+0.0000, +0.0000])",
    )
    alike = ranking_comparison((hits_a, hits_a), (hits_a2, hits_a2), k=10, paired=True, seed=2, reps=1000)
    assert alike.recall.ci_diff.covers(0) and decide_ranking(alike, "1.0", "2.0").verdict == "no-difference"


def test_ranking_split_arms_and_the_other_verdicts():
    rng = np.random.default_rng(5)
    a, b = rng.uniform(0, 0.4, 250), rng.uniform(0.2, 0.6, 150)
    split = ranking_comparison((a, a), (b, b), k=5, paired=False, seed=4, reps=1000)
    assert (split.users_a, split.users_b, split.paired) == (250, 150, False)
    assert split.recall.a == pytest.approx(a.mean()) and split.recall.b == pytest.approx(b.mean())
    # Independent arms: the difference's interval is about as wide as the two arms' added in quadrature.
    quad = math.hypot(width(split.recall.ci_a), width(split.recall.ci_b))
    assert width(split.recall.ci_diff) == pytest.approx(quad, rel=0.15) and split.recall.ci_diff.low > 0
    assert "split: disjoint users per arm" in split.describe() and "recall@5 B - A" in split.describe()
    # B finds more relevant movies but ranks them lower: the metrics disagree, no winner.
    mixed = ranking_comparison((a, b), (b, a), k=5, paired=False, seed=4, reps=1000)
    assert decide_ranking(mixed, "1.0", "2.0").verdict == "mixed" and decide_ranking(mixed, "1", "2").winner is None
    assert decide_ranking(ranking_comparison((b, b), (a, a), k=5, paired=False), "1.0", "2.0").winner == "1.0"
    empty = ranking_comparison((np.empty(0), np.empty(0)), (np.empty(0), np.empty(0)), k=10, paired=True)
    assert math.isnan(empty.recall.a) and decide_ranking(empty, "1.0", "2.0").verdict == "no-users"
