"""Sticky A/B split, arm statistics and the promotion rule; no server needed."""

from __future__ import annotations

import math

import pytest

from movierec.client.ab import ABRouter, ArmStats, Decision, EvalRow, bucket, decide, read_heldout
from movierec.client.api import MovieRecClient, ServerError
from movierec.client.scoring import InputError


@pytest.fixture
def client(tmp_path) -> MovieRecClient:
    """A client pointed at closed ports: routing never touches the network."""
    return MovieRecClient("http://127.0.0.1:9", "http://127.0.0.1:9", tmp_path / "key_file.json")


def test_bucket_is_stable_across_processes_and_id_types():
    # Pinned values: a change here reshuffles every live user between arms.
    assert bucket(196) == bucket("196") == 7890
    assert bucket(1) == 7284
    assert bucket("alice") == 363


def test_router_sends_one_user_to_one_version(client):
    router = ABRouter(client, a="1.0", b="2.0", percent_b=50)
    for user in range(1, 200):
        assert router.version_for(user) == router.version_for(str(user))
        assert router.version_for(user) == ("2.0" if bucket(user) < 5_000 else "1.0")  # B below the 50% cut


@pytest.mark.parametrize("percent_b", [10, 25, 50, 90])
def test_split_ratio_over_10k_users(client, percent_b):
    router = ABRouter(client, "1.0", "2.0", percent_b=percent_b)
    share_b = sum(router.arm(u) == "b" for u in range(10_000)) / 10_000
    assert abs(share_b - percent_b / 100) < 0.02


def test_split_extremes_and_ramp_only_moves_users_to_b(client):
    users = range(10_000)
    assert all(ABRouter(client, "1.0", "2.0", 0).arm(u) == "a" for u in users)
    assert all(ABRouter(client, "1.0", "2.0", 100).arm(u) == "b" for u in users)
    b10 = {u for u in users if ABRouter(client, "1.0", "2.0", 10).arm(u) == "b"}
    b30 = {u for u in users if ABRouter(client, "1.0", "2.0", 30).arm(u) == "b"}
    assert b10 < b30


def test_salt_gives_an_independent_assignment(client):
    a = ABRouter(client, "1.0", "2.0", 50)
    b = ABRouter(client, "1.0", "2.0", 50, salt="experiment-2")
    agree = sum(a.arm(u) == b.arm(u) for u in range(10_000)) / 10_000
    assert 0.45 < agree < 0.55


def test_router_rejects_bad_settings(client):
    with pytest.raises(ValueError):
        ABRouter(client, "1.0", "2.0", 120)
    with pytest.raises(Exception, match="bad model version"):
        ABRouter(client, "../1.0", "2.0")


def arm(version: str, errors: list[float], row_errors: int = 0) -> ArmStats:
    s = ArmStats(version)
    for e in errors:
        s.rows += 1
        s.scored += 1
        s.sum_sq += e * e
        s.sum_sq2 += e**4
    for _ in range(row_errors):
        s.rows += 1
        s.add_error("unknown user_id 99999")
    return s


def test_arm_stats_rmse_and_latency_percentiles():
    s = arm("1.0", [1.0, -1.0, 2.0, 0.0])
    assert s.rmse == pytest.approx(math.sqrt(6 / 4))
    s.latencies_ms = [float(x) for x in range(1, 101)]
    assert (s.latency(50), s.latency(90), s.latency(99)) == (50.0, 90.0, 99.0)
    assert math.isnan(ArmStats("2.0").rmse) and math.isnan(ArmStats("2.0").latency(50))


def test_rmse_standard_error_known_answer():
    """Errors 1, -1, 2, 0: squares 1, 1, 4, 0 with mean 3/2 and sample variance 9/3 = 3, so
    SE(mean square) = sqrt(3/4) and SE(RMSE) = sqrt(3/4) / (2 sqrt(3/2)) = sqrt(1/8)."""
    assert arm("1.0", [1.0, -1.0, 2.0, 0.0]).rmse_se == pytest.approx(math.sqrt(1 / 8), rel=1e-12)
    # Halved errors: every square / 4, so RMSE and its SE halve.
    assert arm("2.0", [0.5, -0.5, 1.0, 0.0]).rmse_se == pytest.approx(math.sqrt(1 / 8) / 2, rel=1e-12)
    # Twice the rows: sample variance 2.25 * 8/7 over 8 rows, so SE(mean square) = 1.5 / sqrt(7).
    twice = arm("1.0", [1.0, -1.0, 2.0, 0.0] * 2)
    assert twice.rmse_se == pytest.approx(1.5 / math.sqrt(7) / (2 * math.sqrt(1.5)), rel=1e-12)
    assert math.isnan(arm("1.0", [1.0]).rmse_se) and math.isnan(arm("1.0", [0.0, 0.0]).rmse_se)


def test_decide_noise_is_two_standard_errors_of_the_difference_known_answer():
    """RMSE 1.2247 vs 0.6124, gap 0.6124. Four rows each: 2 SE = 2 sqrt(1/8 + 1/32) = 0.7906, too
    noisy. Eight rows each: 2 SE = 2 sqrt(0.375 + 0.09375) / sqrt(7) = 0.5175, so 2.0 wins."""
    a, b = [1.0, -1.0, 2.0, 0.0], [0.5, -0.5, 1.0, 0.0]
    d = decide(arm("1.0", a), arm("2.0", b), min_rows=4)
    assert d == Decision(None, "RMSE gap 0.6124 (2.0 better) is within noise (2 SE = 0.7906)")
    d = decide(arm("1.0", a * 2), arm("2.0", b * 2), min_rows=4)
    assert d == Decision("2.0", "2.0 RMSE 0.6124 beats 1.0 1.2247 by 0.6124 (> 0.005 and > 2 SE = 0.5175)")


def test_add_answer_counts_squared_errors_failures_and_latency():
    rows = [EvalRow(2, "1", "10", 4.0), EvalRow(3, "1", "11", 2.0), EvalRow(4, "2", "10", 5.0)]
    s = ArmStats("1.0")
    answer = {"predictions": [{"rating": 3.0}, {"rating": 2.5}, {"error": "unknown user_id 2"}]}
    s.add_answer(rows, 12.5, answer)
    assert (s.rows, s.scored, s.row_errors, s.request_errors) == (3, 2, 1, 0)
    assert (s.sum_sq, s.sum_sq2, s.latencies_ms) == (1.25, 1.0625, [12.5])  # errors 1 and 0.5
    s.add_answer(rows[:1], 99.0, ServerError(503, "busy"))  # a failed request: no latency, rows fail
    s.add_answer(rows[:2], 7.0, {"predictions": [{"rating": 3.0}]})  # one answer short: both rows fail
    assert (s.rows, s.scored, s.row_errors, s.request_errors) == (6, 2, 4, 2)
    assert s.latencies_ms == [12.5, 7.0] and s.error_examples == [
        "unknown user_id 2",
        str(ServerError(503, "busy")),
        "1 predictions for 2 instances",
    ]


def test_error_examples_are_distinct_and_few():
    s = arm("1.0", [], row_errors=10)
    s.add_error("other")
    assert s.row_errors == 11 and s.error_examples == ["unknown user_id 99999", "other"]


def errors(n: int, scale: float, seed: int) -> list[float]:
    import random

    rng = random.Random(seed)
    return [rng.gauss(0, scale) for _ in range(n)]


def test_decide_promotes_a_clear_winner():
    d = decide(arm("1.0", errors(2000, 1.0, 1)), arm("2.0", errors(2000, 0.8, 2)))
    assert d.winner == "2.0" and "beats" in d.reason


def test_decide_refuses_too_few_rows():
    d = decide(arm("1.0", errors(100, 1.0, 1)), arm("2.0", errors(2000, 0.5, 2)), min_rows=500)
    assert d.winner is None and "fewer than the 500" in d.reason


def test_decide_refuses_gap_within_noise_or_margin():
    d = decide(arm("1.0", errors(600, 1.0, 1)), arm("2.0", errors(600, 0.97, 2)))
    assert d.winner is None and "within noise" in d.reason  # gap 0.011 > 0.005, but 2 SE = 0.082
    d = decide(arm("1.0", [1.0] * 1000), arm("2.0", [0.998] * 1000))
    assert d.winner is None and "minimum improvement" in d.reason


def test_decide_refuses_winner_that_fails_more_rows():
    d = decide(arm("1.0", errors(2000, 1.0, 1)), arm("2.0", errors(2000, 0.8, 2), row_errors=200))
    assert d.winner is None and "fails more rows" in d.reason


def test_read_heldout_reports_bad_rows_by_line(tmp_path):
    path = tmp_path / "heldout.csv"
    path.write_text("user_id,movie_id,rating,timestamp\n196,242,3,1\n7,8,x,1\n22,377,1.5,2\n")
    items = list(read_heldout(path))
    assert [(r.user_id, r.movie_id, r.rating) for r in items if not isinstance(r, str)] == [
        ("196", "242", 3.0),
        ("22", "377", 1.5),
    ]
    assert items[1] == "line 3: column rating: not a number: 'x'"
    (tmp_path / "bad.csv").write_text("user_id,movie_id\n1,2\n")
    with pytest.raises(InputError, match="lacks column rating"):
        list(read_heldout(tmp_path / "bad.csv"))


def test_plot_report_writes_png(tmp_path):
    from movierec.client.ab import plot_report

    a, b = arm("1.0", errors(50, 1.0, 1)), arm("2.0", [])
    a.latencies_ms = [5.0, 7.0, 30.0]
    plot_report(a, b, tmp_path / "ab.png")
    assert (tmp_path / "ab.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_heldout_accepts_movielens_column_names(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,2\n")
    items = list(read_heldout(path))
    assert (items[0].user_id, items[0].movie_id, items[0].rating) == ("1", "31", 2.5)
    assert items[1] == "line 3: expected at least 3 columns, got 2"
