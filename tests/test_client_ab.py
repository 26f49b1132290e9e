"""Sticky A/B split, arm statistics, the promotion rule; ab-eval, ab and ab-report against a real TorchServe."""

from __future__ import annotations

import csv
import math
import random

import orjson
import pytest

from movierec.client.ab import (
    ABRouter,
    ArmLists,
    ArmStats,
    EvalRow,
    RankingEval,
    bucket,
    decide,
    evaluate,
    evaluate_paired,
    evaluate_ranking,
    read_heldout,
)
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


def arm(version: str, errors_by_user: dict[str, list[float]], row_errors: int = 0) -> ArmStats:
    """An arm whose scored rows have these prediction errors, user by user."""
    s = ArmStats(version)
    for user, errors in errors_by_user.items():
        for e in errors:
            s.rows += 1
            s.users.add(user, e * e)
    for _ in range(row_errors):
        s.rows += 1
        s.add_error("unknown user_id 99999")
    return s


def users_with_errors(n_users: int, rows_each: int, scale: float, seed: int, spread: float = 0.0) -> dict:
    """Gaussian prediction errors; with `spread`, each user's own error scale varies around `scale`."""
    rng = random.Random(seed)
    out = {}
    for u in range(n_users):
        own = scale * math.exp(rng.gauss(0, spread))
        out[f"{seed}-{u}"] = [rng.gauss(0, own) for _ in range(rows_each)]
    return out


def test_arm_stats_rmse_and_latency_percentiles():
    s = arm("1.0", {"1": [1.0, -1.0], "2": [2.0, 0.0]})
    assert s.rmse == pytest.approx(math.sqrt(6 / 4)) and s.scored == 4 and s.users.users == 2
    s.latencies_ms = [float(x) for x in range(1, 101)]
    assert (s.latency(50), s.latency(90), s.latency(99)) == (50.0, 90.0, 99.0)
    assert math.isnan(ArmStats("2.0").rmse) and math.isnan(ArmStats("2.0").latency(50))


def test_add_answer_returns_squared_errors_and_counts_failures_and_latency():
    rows = [EvalRow(2, "1", "10", 4.0), EvalRow(3, "1", "11", 2.0), EvalRow(4, "2", "10", 5.0)]
    s = ArmStats("1.0")
    answer = {"predictions": [{"rating": 3.0}, {"rating": 2.5}, {"error": "unknown user_id 2"}]}
    assert s.add_answer(rows, 12.5, answer) == [1.0, 0.25, None]
    assert (s.rows, s.scored, s.row_errors, s.request_errors, s.latencies_ms) == (3, 2, 1, 0, [12.5])
    sse, n = s.users.arrays()
    assert (sse.tolist(), n.tolist()) == ([[1.25]], [2])  # both scored rows are user 1's
    assert s.add_answer(rows[:1], 99.0, ServerError(503, "busy")) == [None]  # no latency, rows fail
    assert s.add_answer(rows[:2], 7.0, {"predictions": [{"rating": 3.0}]}) == [None, None]  # one answer short
    assert (s.rows, s.scored, s.row_errors, s.request_errors) == (6, 2, 4, 2)
    assert s.latencies_ms == [12.5, 7.0] and s.error_examples == [
        "unknown user_id 2",
        str(ServerError(503, "busy")),
        "1 predictions for 2 instances",
    ]


def test_error_examples_are_distinct_and_few():
    s = arm("1.0", {}, row_errors=10)
    s.add_error("other")
    assert s.row_errors == 11 and s.error_examples == ["unknown user_id 99999", "other"]


def test_decide_on_split_arms_promotes_a_clear_winner():
    d = decide(arm("1.0", users_with_errors(200, 10, 1.0, 1)), arm("2.0", users_with_errors(200, 10, 0.8, 2)))
    assert (d.verdict, d.winner) == ("b-better", "2.0") and "2.0 beats 1.0" in d.reason


def test_decide_on_split_arms_counts_users_not_rows():
    """Two arms of equal quality whose users differ in how well they are predicted. Grouped by
    user, the verdict rarely names a winner; the same errors with every row its own "user"
    (rows taken as independent) name one half of the time."""
    winners_by_user = winners_by_row = 0
    for trial in range(12):
        a = users_with_errors(30, 50, 1.0, 2 * trial + 1, spread=0.3)
        b = users_with_errors(30, 50, 1.0, 2 * trial + 2, spread=0.3)
        winners_by_user += decide(arm("1.0", a), arm("2.0", b)).winner is not None
        winners_by_row += decide(arm("1.0", one_user_per_row(a)), arm("2.0", one_user_per_row(b))).winner is not None
    assert winners_by_user <= 2 and winners_by_row >= 5  # measured 1 and 6; 5% of 12 expected by chance


def one_user_per_row(errors_by_user: dict[str, list[float]]) -> dict[str, list[float]]:
    """The same errors, each row under a user of its own."""
    return {f"{user}-{i}": [e] for user, errors in errors_by_user.items() for i, e in enumerate(errors)}


def test_decide_refuses_too_few_rows_and_a_winner_that_fails_more_rows():
    d = decide(arm("1.0", users_with_errors(10, 10, 1.0, 1)), arm("2.0", users_with_errors(200, 10, 0.5, 2)))
    assert d.verdict == "too-few-rows" and "1.0 has 100 scored rows, fewer than the 500" in d.reason
    a = arm("1.0", users_with_errors(200, 10, 1.0, 1))
    d = decide(a, arm("2.0", users_with_errors(200, 10, 0.8, 2), row_errors=200))
    assert d.verdict == "more-errors" and "fails more rows" in d.reason


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


def test_read_heldout_accepts_movielens_column_names(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,2\n")
    items = list(read_heldout(path))
    assert (items[0].user_id, items[0].movie_id, items[0].rating) == ("1", "31", 2.5)
    assert items[1] == "line 3: expected at least 3 columns, got 2"


def test_report_table_and_png_show_the_difference_and_its_interval(tmp_path):
    from movierec.client.ab import compare_split
    from movierec.client.cli_ab import format_report, plot_report

    a, b = arm("1.0", users_with_errors(50, 4, 1.0, 1)), arm("2.0", {})
    a.latencies_ms = [5.0, 7.0, 30.0]
    cmp = compare_split(a, b, seed=5, reps=200)
    plot_report(cmp, ("A 1.0", "B 2.0"), tmp_path / "ab.png", latency=(a, b))
    assert (tmp_path / "ab.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    a2 = arm("2.0", users_with_errors(50, 4, 0.9, 2))
    cmp = compare_split(a, a2, seed=5, reps=200)
    table = format_report(a, a2, cmp, ("50%", "50%")).splitlines()
    assert table[0].split()[:8] == ["arm", "version", "share", "rows", "scored", "users", "RMSE", "95%"]
    assert table[1].split()[:7] == ["A", "1.0", "50%", "200", "200", "50", f"{a.rmse:.4f}"]
    assert f"[{cmp.ci_a.low:.4f}, {cmp.ci_a.high:.4f}]" in table[1]
    assert table[3] == cmp.describe() and f"{cmp.diff:+.4f}" in table[3] and "seed 5, " not in table[3]
    assert "200 resamples, seed 5)" in table[3] and "split: disjoint users per arm" in table[3]


def test_arm_lists_keep_lists_as_strings_and_count_users_without_one():
    lists = ArmLists("1.0")
    answer = {
        "recommendations": [
            {"user_id": "1", "recommendations": [{"movie_id": 10, "score": 0.9}, {"movie_id": "x7", "score": 0.5}]},
            {"user_id": "99", "error": "unknown user_id 99"},
            {"user_id": "2", "recommendations": []},
        ]
    }
    lists.add_answer(["1", "99", "2"], answer)
    lists.add_answer(["3", "4"], ServerError(503, "busy"))
    lists.add_answer(["5"], {"recommendations": []})
    assert lists.lists == {"1": ["10", "x7"], "2": []} and (lists.asked, lists.not_judged) == (6, 4)
    assert lists.error_examples == ["unknown user_id 99", str(ServerError(503, "busy")), "0 lists for 1 users"]


def ranking_eval(paired: bool) -> RankingEval:
    """Held-out: user 1 likes movies 10 and 20 (and not 30), user 2 likes 30, user 3 likes 40.
    A lists 20 first for user 1 and misses user 2's movie; B finds both users' movies first; user 3 is
    unknown to B."""
    result = RankingEval(2, paired, ArmLists("1.0"), ArmLists("2.0"))
    result.users, result.movies, result.ratings = (
        ["1", "1", "1", "2", "3"],
        ["10", "20", "30", "30", "40"],
        [5, 4, 2, 4, 4],
    )
    result.a.add_answer(
        ["1", "2", "3"],
        {
            "recommendations": [
                {"recommendations": [{"movie_id": 30}, {"movie_id": 20}]},
                {"recommendations": [{"movie_id": 10}, {"movie_id": 20}]},
                {"recommendations": [{"movie_id": 40}]},
            ]
        },
    )
    result.b.add_answer(
        ["1", "2", "3"],
        {
            "recommendations": [
                {"recommendations": [{"movie_id": 10}, {"movie_id": 20}]},
                {"recommendations": [{"movie_id": 30}]},
                {"error": "unknown user_id 3"},
            ]
        },
    )
    return result


def test_ranking_eval_scores_each_users_list_at_k():
    result = ranking_eval(paired=True)
    ideal = 1 + 1 / math.log2(3)
    assert result.quality(result.a) == {
        "1": (0.5, pytest.approx(1 / math.log2(3) / ideal)),  # one of two found, at rank 2
        "2": (0.0, 0.0),
        "3": (1.0, 1.0),
    }
    assert result.quality(result.b) == {"1": (1.0, 1.0), "2": (1.0, 1.0)}
    assert result.relevant_users == 3 and (result.a.not_judged, result.b.not_judged) == (0, 1)
    paired = result.comparison(seed=1, reps=200)  # over users 1 and 2, judged by both
    assert (paired.users_a, paired.recall.a, paired.recall.b) == (2, 0.25, 1.0)
    split = ranking_eval(paired=False).comparison(seed=1, reps=200)
    assert (split.users_a, split.users_b, split.recall.a) == (3, 2, pytest.approx(0.5))


def test_ranking_table_shows_both_arms_and_the_difference():
    from movierec.client.cli_ab import format_ranking

    result = ranking_eval(paired=True)
    cmp = result.comparison(seed=1, reps=200)
    table = format_ranking(result, cmp).splitlines()
    assert table[0].startswith("top-2 lists of the 3 users with a held-out rating >= 4 (rated movies excluded)")
    assert table[1].split() == [
        "arm",
        "version",
        "asked",
        "judged",
        "not",
        "judged",
        "recall@2",
        "95%",
        "CI",
        "NDCG@2",
        "95%",
        "CI",
    ]
    assert table[2].split()[:6] == ["A", "1.0", "3", "3", "0", "0.2500"]
    assert table[3].split()[:6] == ["B", "2.0", "3", "2", "1", "1.0000"]
    assert table[4] == cmp.describe() and "recall@2 B - A = +0.7500" in table[4]
    assert table[5] == "  B top-2 error example: unknown user_id 3"
    # Lists that never hold a relevant movie (the file's ratings were training data): the table says why.
    result.a.lists = result.b.lists = {"1": ["30"], "2": ["10"]}
    assert "no list holds a relevant held-out movie" in format_ranking(result, result.comparison(reps=200))
    assert "no list holds" not in "\n".join(table)


# --- against a real TorchServe serving 1.0 (default) and 2.0 ---


@pytest.fixture(scope="module")
def served(server):
    """A client of the fixture server, and the CLI flags that reach it."""
    flags = ["--inference-url", server.inference_url, "--management-url", server.management_url]
    flags += ["--key-file", str(server.key_file)]
    with MovieRecClient(server.inference_url, server.management_url, server.key_file, retries=2) as c:
        yield c, flags


@pytest.fixture(scope="module")
def later_ratings(synth_data, tmp_path_factory):
    """Ratings given after training: 12 movies each user had not rated (some >= 4, some not), and one user
    no version knows. Unrated movies can be in the top-K lists (rated ones are excluded)."""
    ratings, _ = synth_data
    rated: dict[str, set[str]] = {}
    for r in read_heldout(ratings):
        rated.setdefault(r.user_id, set()).add(r.movie_id)
    movies = sorted({m for seen in rated.values() for m in seen})
    rng = random.Random(3)
    lines = ["userId,movieId,rating"]
    for user, seen in rated.items():
        for i, movie in enumerate(rng.sample([m for m in movies if m not in seen], 12)):
            lines.append(f"{user},{movie},{(5.0, 4.0, 2.0, 3.0)[i % 4]}")
    lines.append(f"99999,{movies[0]},5.0")
    path = tmp_path_factory.mktemp("later") / "later.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def served_rmse(client: MovieRecClient, path, version: str) -> float:
    """RMSE of one version on a ratings file, straight from predict_many."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    answer = client.predict_many([{"user_id": r["userId"], "movie_id": r["movieId"]} for r in rows], version=version)
    errors = [(p["rating"] - float(r["rating"])) ** 2 for p, r in zip(answer["predictions"], rows, strict=True)]
    return math.sqrt(sum(errors) / len(errors))


@pytest.mark.integration
def test_paired_eval_scores_every_row_with_both_versions(served, synth_data, later_ratings):
    client, _ = served
    ratings, _ = synth_data
    result = evaluate_paired(ABRouter(client, "1.0", "2.0", percent_b=10), ratings, chunk_size=700)
    cmp = result.comparison(seed=1, reps=500)
    assert result.bad_input == [] and result.a.scored == result.b.scored == result.pairs.rows == 3000
    assert (result.a.request_errors, len(result.a.latencies_ms), len(result.b.latencies_ms)) == (0, 5, 5)
    assert (cmp.rows_a, cmp.users_a, cmp.paired) == (3000, 60, True)
    assert cmp.rmse_a == pytest.approx(served_rmse(client, ratings, "1.0"), rel=1e-6)
    assert cmp.rmse_b == pytest.approx(served_rmse(client, ratings, "2.0"), rel=1e-6)
    assert cmp.ci_diff.covers(cmp.diff) and cmp.ci_diff.low < cmp.ci_diff.high
    # Top-10 lists of the users with a later rating >= 4, 25 users a request: what one-user requests serve.
    ranking = evaluate_ranking(ABRouter(client, "1.0", "2.0"), later_ratings, users_per_request=25)
    relevant: dict[str, set[str]] = {}
    for r in read_heldout(later_ratings):
        if r.rating >= 4:
            relevant.setdefault(r.user_id, set()).add(r.movie_id)
    assert ranking.relevant_users == len(relevant) == 61 and ranking.a.asked == ranking.b.asked == 61
    assert ranking.a.not_judged == ranking.b.not_judged == 1 and "unknown user_id 99999" in ranking.a.error_examples
    for version, arm in (("1.0", ranking.a), ("2.0", ranking.b)):
        quality = ranking.quality(arm)
        assert len(quality) == 60 and "99999" not in quality and any(r > 0 for r, _ in quality.values())
        for user in sorted(relevant)[:3]:
            served = [str(m["movie_id"]) for m in client.recommend(user, 10, version=version)["recommendations"]]
            hits = [m in relevant[user] for m in served]
            cap = min(len(relevant[user]), 10)
            ndcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits)) / sum(1 / math.log2(i + 2) for i in range(cap))
            assert quality[user] == (pytest.approx(sum(hits) / cap), pytest.approx(ndcg))
    ranked = ranking.comparison(seed=1, reps=500)
    assert ranked.users_a == 60 and 0 < ranked.recall.a < 1 and 0 < ranked.ndcg.b < 1
    assert ranked.recall.ci_diff.covers(ranked.recall.diff)


@pytest.mark.integration
def test_ab_eval_cli_paired_null_case_and_promote_gate(served, later_ratings, tmp_path, capsys):
    from movierec.client.cli import main

    client, flags = served
    ratings = later_ratings
    png = tmp_path / "ab.png"
    assert main(["ab-eval", str(ratings), "--a", "1.0", "--b", "1.0", "--promote", "--plot", str(png), *flags]) == 0
    out = capsys.readouterr().out
    assert "RMSE B - A = +0.0000, 95% interval [+0.0000, +0.0000] (paired" in out
    assert "verdict: no-difference" in out and "not promoting: default stays 1.0" in out
    # The top-10 rows: both arms are 1.0, so their lists, means and intervals agree and B - A is 0.
    lines = out.splitlines()
    top = lines.index(next(line for line in lines if line.startswith("top-10 lists of the ")))
    assert lines[top + 1].split()[:7] == ["arm", "version", "asked", "judged", "not", "judged", "recall@10"]
    rows = [lines[top + 2].split(), lines[top + 3].split()]
    assert rows[0][0] == "A" and rows[1][0] == "B" and rows[0][2:] == rows[1][2:]
    ranked = evaluate_ranking(ABRouter(client, "1.0", "1.0"), ratings).comparison()
    assert rows[0][5] == f"{ranked.recall.a:.4f}" and rows[0][8] == f"{ranked.ndcg.a:.4f}"
    assert 0 < ranked.recall.a < 1 and 0 < ranked.ndcg.a < 1 and rows[0][2:5] == ["61", "60", "1"]
    assert lines[top + 4].startswith("recall@10 B - A = +0.0000, 95% interval [+0.0000, +0.0000]; NDCG@10 B - A")
    assert "top-10 verdict: no-difference: both intervals include 0" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and client.default_version() == "1.0"
    assert main(["ab-eval", str(ratings), "--a", "1.0", "--b", "2.0", "--split", "--promote", *flags]) == 2
    assert "--promote needs the paired comparison" in capsys.readouterr().err
    assert main(["ab-eval", str(ratings), "--a", "1.0", "--b", "2.0", "--top-k", "101", *flags]) == 2
    assert "--top-k must be at most 100, got 101" in capsys.readouterr().err


@pytest.mark.integration
def test_ab_eval_cli_split_keeps_sticky_routing(served, synth_data, capsys):
    from movierec.client.cli import main

    client, flags = served
    ratings, _ = synth_data
    router = ABRouter(client, "1.0", "2.0", percent_b=30)
    a, b, bad = evaluate(router, ratings, chunk_size=200)
    users_b = {r.user_id for r in read_heldout(ratings) if router.arm(r.user_id) == "b"}
    assert bad == [] and a.scored + b.scored == 3000 and b.users.users == len(users_b) > 0
    argv = ["ab-eval", str(ratings), "--a", "1.0", "--b", "2.0", "--split", "30", "--seed", "9", *flags]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:5] == ["A", "1.0", "70%", str(a.rows), str(a.scored)]
    assert lines[2].split()[:6] == ["B", "2.0", "30%", str(b.rows), str(b.scored), str(len(users_b))]
    assert "split: disjoint users per arm" in lines[3] and "seed 9" in lines[3]
    verdicts = [line for line in lines if "verdict: " in line]
    assert verdicts[0].startswith("verdict: ") and verdicts[1].startswith("top-10 verdict: ")
    # These ratings are the training data: every relevant movie is excluded as rated, and the report says so.
    assert "(split: disjoint users per arm;" in lines[lines.index(verdicts[0]) - 2]
    assert lines[lines.index(verdicts[0]) - 1].startswith("  no list holds a relevant held-out movie")


@pytest.mark.integration
def test_ab_logs_exposures_that_ab_report_joins_to_later_ratings(served, tiny_artifact, tmp_path, capsys):
    from model.artifact import load_artifact
    from movierec.client.cli import main

    client, flags = served
    art = load_artifact(tiny_artifact)
    users, movies = list(art.users.ids)[:12], list(art.movies.ids)
    log = tmp_path / "exposures.jsonl"
    answers = []
    for i, user in enumerate(users):
        what = ["--movie", str(movies[i])] if i % 4 else ["--top-k", "5"]
        assert (
            main(["ab", "--a", "1.0", "--b", "2.0", "--user", str(user), *what, "--exposures", str(log), *flags]) == 0
        )
        answers.append(orjson.loads(capsys.readouterr().out))
    with ABRouter(client, "1.0", "2.0", exposures=log) as router:  # the library path: a log named by the caller
        answers.append(router.predict(users[1], movies[20]))
    logged = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert [(e["user_id"], e["arm"], e["version"]) for e in logged] == [
        (a["user_id"], a["arm"], a["served_by"]) for a in answers
    ]
    # Later, every user rates one movie they were shown: one point above the prediction (or the score).
    lines, expected = ["userId,movieId,rating"], {"a": [], "b": []}
    for a in answers:
        shown = a["recommendations"][1] if "recommendations" in a else a
        predicted = shown["score"] if "recommendations" in a else a["rating"]
        lines.append(f"{a['user_id']},{shown['movie_id']},{predicted + 1.0}")
        expected[a["arm"]].append(1.0)
    (tmp_path / "later.csv").write_text("\n".join(lines) + "\n")
    argv = ["ab-report", "--exposures", str(log), "--outcomes", str(tmp_path / "later.csv"), "--min-rows", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "13 outcome rows read, 13 matched an exposure" in out
    for name, arm_letter in (("A", "a"), ("B", "b")):
        row = next(line.split() for line in out.splitlines() if line.startswith(f"{name} "))
        n = len(expected[arm_letter])
        if n:  # every matched outcome is off by exactly 1.0: RMSE 1
            assert row[4] == row[5] == str(n) and row[7] == "1.0000"
    assert "verdict: no-difference" in out
