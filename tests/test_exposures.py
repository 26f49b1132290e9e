"""The exposure log (concurrent appends, buffering) and its join to later ratings in `ab-report`."""

from __future__ import annotations

import math
import multiprocessing
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import orjson
import pytest

from movierec.client.cli import main
from movierec.client.exposures import ExposureLog, join_outcomes, read_exposures


def predicted(movie: int | str, rating: float, version: str = "1.0") -> dict:
    """A predict answer as the server sends it."""
    return {"user_id": 0, "movie_id": movie, "rating": rating, "model_version": version}


def recommended(movies: list[int], scores: list[float], version: str = "1.0") -> dict:
    """A recommend answer as the server sends it."""
    recs = [{"movie_id": m, "title": f"t{m}", "score": s} for m, s in zip(movies, scores, strict=True)]
    return {"user_id": 0, "recommendations": recs, "model_version": version}


def write_many(path: str, writer: int, records: int) -> None:
    """One process's share of the concurrent test: long lines, flushed in uneven batches."""
    log = ExposureLog(path, flush_records=7, flush_seconds=3600)
    movies = list(range(writer * 1000, writer * 1000 + 400))  # ~4 KB per line: more than one pipe buffer
    for i in range(records):
        log.record(f"w{writer}", "a", "1.0", recommended(movies, [float(i)] * len(movies)), model="movierec")
    log.close()


def test_concurrent_writers_never_interleave_lines(tmp_path):
    path = str(tmp_path / "exposures.jsonl")
    writers, records = 6, 60
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=write_many, args=(path, w, records)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = open(path, "rb").read().split(b"\n")
    assert lines[-1] == b""  # the file ends with a whole line
    entries = [orjson.loads(line) for line in lines[:-1]]  # every line parses
    assert Counter(e["user_id"] for e in entries) == {f"w{w}": records for w in range(writers)}
    for e in entries:
        writer = int(e["user_id"][1:])
        assert e["movie_ids"] == list(range(writer * 1000, writer * 1000 + 400))
    # Each writer's own records stay in order.
    for w in range(writers):
        assert [e["scores"][0] for e in entries if e["user_id"] == f"w{w}"] == [float(i) for i in range(records)]


def test_records_are_buffered_then_flushed(tmp_path):
    path = tmp_path / "exposures.jsonl"
    log = ExposureLog(path, flush_records=3, flush_seconds=3600)
    log.record(196, "a", "1.0", predicted(242, 3.5), model="movierec")
    log.record(196, "a", "1.0", recommended([1, 2], [4.5, 4.0]), model="movierec")
    assert path.read_bytes() == b""
    log.record(7, "b", "2.0", predicted("m9", 2.0, "2.0"), model="movierec")
    first, second, third = (orjson.loads(line) for line in path.read_bytes().splitlines())
    assert {k: first[k] for k in ("user_id", "arm", "version", "kind", "movie_id", "prediction", "model")} == {
        "user_id": 196,
        "arm": "a",
        "version": "1.0",
        "kind": "predict",
        "movie_id": 242,
        "prediction": 3.5,
        "model": "movierec",
    }
    assert (second["kind"], second["movie_ids"], second["scores"]) == ("recommend", [1, 2], [4.5, 4.0])
    assert third["movie_id"] == "m9" and abs(third["time"] - time.time()) < 60
    log.record(8, "b", "2.0", predicted(1, 1.0, "2.0"), model="movierec")
    log.close()
    assert len(path.read_bytes().splitlines()) == 4


def test_buffered_records_reach_the_file_when_the_program_exits(tmp_path):
    path = tmp_path / "exposures.jsonl"
    code = (
        "from movierec.client.exposures import ExposureLog\n"
        f"log = ExposureLog({str(path)!r}, flush_records=100)\n"
        "log.record(1, 'a', '1.0', {'movie_id': 2, 'rating': 3.0}, model='movierec')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert orjson.loads(path.read_bytes())["prediction"] == 3.0


def write_log(path, entries: list[tuple[float, str, str, str, dict]]) -> None:
    """Write exposure lines with chosen times: (time, user, arm, version, answer)."""
    with ExposureLog(path) as log:
        for _when, user, arm, version, answer in entries:
            log.record(user, arm, version, answer, model="movierec")
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    for line, entry in zip(lines, entries, strict=True):
        line["time"] = entry[0]
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))


def test_join_matches_ratings_to_the_latest_earlier_exposure(tmp_path):
    log = tmp_path / "exposures.jsonl"
    write_log(
        log,
        [
            (1000.0, "196", "a", "1.0", predicted(242, 3.0)),
            (2000.0, "196", "a", "1.0", predicted(242, 3.5)),  # the later prediction of the same pair
            (1000.0, "7", "b", "2.0", recommended([10, 11, 12], [4.0, 3.0, 2.0], "2.0")),
            (5000.0, "8", "b", "2.0", predicted(5, 4.0, "2.0")),
        ],
    )
    with open(log, "ab") as f:
        f.write(b'{"time": 3000, "user_id": 9, "ar')  # a torn last line after a crash
    outcomes = tmp_path / "ratings.csv"
    outcomes.write_text(
        "userId,movieId,rating,timestamp\n"
        "196,242,4.5,2500\n"  # after both exposures: the 2000 one (3.5) counts -> error 1.0
        "7,11,5,1200\n"  # a recommended movie, score 3.0 -> error 2.0
        "7,13,5,1200\n"  # rated but never shown
        "8,5,3,4000\n"  # rated before it was shown
        "196,242,x,2600\n"
    )
    exposures = read_exposures(log)
    assert len(exposures.bad_lines) == 1 and exposures.bad_lines[0].startswith("line 5:")
    result = join_outcomes(exposures, outcomes)
    assert (result.outcomes_read, result.matched, result.before_exposure) == (4, {"a": 1, "b": 1}, 1)
    assert len(result.bad_outcomes) == 1 and "line 6" in result.bad_outcomes[0]
    (sse_a, rows_a), (sse_b, rows_b) = result.errors["a"].arrays(), result.errors["b"].arrays()
    assert (sse_a.tolist(), rows_a.tolist(), sse_b.tolist(), rows_b.tolist()) == ([[1.0]], [1], [[4.0]], [1])
    # Without timestamps every rating counts and meets the latest exposure.
    (tmp_path / "plain.csv").write_text("user_id,item_id,rating\n196,242,4.5\n8,5,3\n")
    plain = join_outcomes(exposures, tmp_path / "plain.csv")
    assert plain.matched == {"a": 1, "b": 1} and plain.errors["b"].arrays()[0].tolist() == [[1.0]]


def test_one_arm_serving_two_versions_is_refused(tmp_path):
    log = tmp_path / "exposures.jsonl"
    write_log(log, [(1.0, "1", "a", "1.0", predicted(1, 3.0)), (2.0, "2", "a", "3.0", predicted(1, 3.0, "3.0"))])
    with pytest.raises(Exception, match="arm a served versions 1.0 and 3.0"):
        read_exposures(log)


TRUE_RMSE_A = math.sqrt(0.3**2 + 1.0**2)  # per-user bias sd 0.3, per-row noise sd 1.0
TRUE_RMSE_B = math.sqrt(0.3**2 + 0.8**2)


def synthetic_experiment(tmp_path, n_users: int = 1600, seed: int = 21):
    """Users alternate arms; each sees 12 movies (pairs or one top-12 list) and rates 8 of them later.
    A's predictions miss by a per-user bias (sd 0.3) plus noise (sd 1.0); B's noise is 0.8."""
    rng = np.random.default_rng(seed)
    log, outcomes = tmp_path / "exposures.jsonl", tmp_path / "ratings.csv"
    rows = ["userId,movieId,rating,timestamp"]
    now = int(time.time())
    with ExposureLog(log) as exposures:
        for user in range(n_users):
            arm, version = ("b", "2.0") if user % 2 else ("a", "1.0")
            noise = 0.8 if arm == "b" else 1.0
            movies = rng.choice(5000, 12, replace=False)
            truth = rng.uniform(1, 5, 12)
            guess = truth + rng.normal(0, 0.3) + rng.normal(0, noise, 12)
            if user % 3:
                for movie, g in zip(movies.tolist(), guess.tolist(), strict=True):
                    exposures.record(user, arm, version, predicted(movie, g, version), model="movierec")
            else:
                exposures.record(
                    user, arm, version, recommended(movies.tolist(), guess.tolist(), version), model="movierec"
                )
            rows += [
                f"{user},{m},{t!r},{now + 60}" for m, t in zip(movies[:8].tolist(), truth[:8].tolist(), strict=True)
            ]
    outcomes.write_text("\n".join(rows) + "\n")
    return log, outcomes


def test_ab_report_finds_the_better_arm_of_a_synthetic_experiment(tmp_path, capsys):
    log, outcomes = synthetic_experiment(tmp_path)
    png = tmp_path / "online.png"
    argv = ["ab-report", "--exposures", str(log), "--outcomes", str(outcomes), "--plot", str(png), "--seed", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "verdict: b-better: 2.0 beats 1.0" in out and "seed 3" in out
    assert "12800 matched an exposure" in out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = join_outcomes(read_exposures(log), outcomes)
    cmp = result.comparison(seed=3)
    assert result.matched == {"a": 6400, "b": 6400} and (cmp.users_a, cmp.users_b) == (800, 800)
    assert cmp.ci_a.covers(TRUE_RMSE_A) and cmp.ci_b.covers(TRUE_RMSE_B)
    assert cmp.ci_diff.covers(TRUE_RMSE_B - TRUE_RMSE_A) and cmp.ci_diff.high < 0
    assert f"{cmp.diff:+.4f}" in out


def test_ab_report_with_equal_arms_finds_no_difference(tmp_path, capsys):
    log, outcomes = synthetic_experiment(tmp_path, n_users=400)
    # The same log with B's predictions swapped for A-quality ones: arms of equal quality.
    rng = np.random.default_rng(2)
    entries = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    truth = {tuple(r.split(",")[:2]): float(r.split(",")[2]) for r in outcomes.read_text().splitlines()[1:]}
    for e in entries:
        movies = e["movie_ids"] if e["kind"] == "recommend" else [e["movie_id"]]
        guesses = [truth.get((str(e["user_id"]), str(m)), 3.0) + rng.normal(0, 1.0) for m in movies]
        if e["kind"] == "recommend":
            e["scores"] = guesses
        else:
            e["prediction"] = guesses[0]
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    assert main(["ab-report", "--exposures", str(log), "--outcomes", str(outcomes), "--min-rows", "100"]) == 0
    assert "verdict: no-difference" in capsys.readouterr().out
