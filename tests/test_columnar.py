"""Columnar bulk scoring in process: CSV/Parquet inputs and outputs, Arrow bodies, resume, parity with JSON."""

from __future__ import annotations

import csv
import io
import random
import threading

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.artifact import load_artifact
from model.core import Recommender
from model.service import RatingService
from movierec.client import columnar
from movierec.client.arrow_scoring import read_answer, request_body, score_file_arrow, score_table, wire_ids
from movierec.client.columnar import ParquetOutput, csv_lines, read_chunks
from movierec.client.scoring import ServerError, score_file

VERSION = "columnar-1.0"


@pytest.fixture(scope="module")
def rec(tiny_artifact) -> Recommender:
    """A recommender over the session's tiny artifact."""
    return Recommender(load_artifact(tiny_artifact))


@pytest.fixture(scope="module")
def arrow_post(rec):
    """The Arrow path of the service, in process: request bytes -> answer bytes."""
    scorer, lock = RatingService(rec, VERSION, max_instances=20_000), threading.Lock()

    def post(body: bytes) -> bytes:
        # One at a time, like a TorchServe worker: the Recommender reuses scratch buffers.
        with lock:
            return scorer.answer_arrow(body)

    return post


@pytest.fixture(scope="module")
def json_chunk(rec):
    """The JSON path of the service, in process, as the JSON scoring job's chunk scorer."""
    service, lock = RatingService(rec, VERSION), threading.Lock()

    def score(instances):
        with lock:
            (reply,) = service.handle_batch([orjson.dumps({"instances": instances})])
        return orjson.loads(reply.body)["predictions"]

    return score


def write_pairs(path, n: int, seed: int = 0, extra: list[str] | None = None) -> list[tuple[str, str]]:
    """A CSV of n pairs, about a tenth of them unknown, plus any `extra` raw lines at the end."""
    rng = random.Random(seed)
    pairs = [(str(rng.randint(1, 66)), str(rng.randint(99, 182))) for _ in range(n)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["userId", "movieId", "timestamp"])
        w.writerows([u, m, i] for i, (u, m) in enumerate(pairs))
        for line in extra or []:
            f.write(line + "\n")
    return pairs


def crashing(post, after: int):
    """A post that fails every call after the first `after` (a server going away mid-job)."""
    calls = [0]

    def send(body):
        calls[0] += 1
        if calls[0] > after:
            raise ServerError(503, "no worker available")
        return post(body)

    return send


def test_wire_ids_send_canonical_decimals_as_int64_and_the_rest_as_written():
    assert wire_ids(pa.array(["196", "-3", "7"])).type == pa.int64()
    for odd in (["196", "007"], ["196", " 7"], ["196", "abc"], ["196", ""]):
        sent = wire_ids(pa.array(odd))
        assert sent.type == pa.string() and sent.to_pylist() == odd
    assert wire_ids(pa.array([1, 2], pa.int32())).type == pa.int64()


def test_csv_chunks_keep_order_ids_as_written_and_resume_skips(tmp_path, monkeypatch):
    monkeypatch.setattr(columnar, "CSV_BLOCK_BYTES", 2048)  # many record batches, so skips cross them
    pairs = write_pairs(tmp_path / "in.csv", 1000, extra=["007,101,1"])
    chunks = list(read_chunks(tmp_path / "in.csv", 300))
    assert [c.num_rows for c in chunks] == [300, 300, 300, 101]
    table = pa.concat_tables(chunks)
    assert list(zip(table["user_id"].to_pylist(), table["movie_id"].to_pylist(), strict=True)) == [
        *pairs,
        ("007", "101"),
    ]
    assert table["problem"].null_count == 1001
    rest = pa.concat_tables(read_chunks(tmp_path / "in.csv", 300, skip=950))
    assert rest["user_id"].to_pylist() == table["user_id"].to_pylist()[950:]


def test_csv_rows_pyarrow_refuses_go_on_through_the_csv_module(tmp_path, monkeypatch):
    monkeypatch.setattr(columnar, "CSV_BLOCK_BYTES", 4096)  # the bad rows come after many good batches
    pairs = write_pairs(tmp_path / "in.csv", 5000, extra=["5", "", "6,150", "7,151,1,extra"])
    table = pa.concat_tables(read_chunks(tmp_path / "in.csv", 700))
    assert table.num_rows == 5003
    assert table["user_id"].to_pylist()[:5000] == [u for u, _ in pairs]
    assert table["problem"].to_pylist()[5000:] == [f"line {5002}: missing movie_id", None, None]
    assert table["user_id"].to_pylist()[5001:] == ["6", "7"]


def test_arrow_job_writes_the_same_csv_as_the_json_job(tmp_path, arrow_post, json_chunk):
    write_pairs(tmp_path / "in.csv", 3000, extra=["5", "8,", '"a,b",101', '"q""x",102'])
    score_file(tmp_path / "in.csv", tmp_path / "json.csv", json_chunk, chunk_size=700, progress=False)
    summary = score_file_arrow(tmp_path / "in.csv", tmp_path / "arrow.csv", arrow_post, chunk_size=700, progress=False)
    arrow = (tmp_path / "arrow.csv").read_text()
    assert arrow == (tmp_path / "json.csv").read_text()
    assert "unknown user_id 66" in arrow and "line 3002: missing movie_id" in arrow
    assert '"unknown user_id a,b"' in arrow and '"unknown user_id q""x"' in arrow
    assert summary.rows_scored == 3004 and 0 < summary.rows_with_errors < 3004


def test_parquet_round_trip_keeps_types_order_and_matches_csv(tmp_path, arrow_post):
    pairs = write_pairs(tmp_path / "in.csv", 2500)
    users, movies = [int(u) for u, _ in pairs], [int(m) for _, m in pairs]
    pq.write_table(pa.table({"user": users, "item": movies}), tmp_path / "in.parquet", row_group_size=999)
    score_file_arrow(tmp_path / "in.parquet", tmp_path / "out.parquet", arrow_post, chunk_size=600, progress=False)
    score_file_arrow(tmp_path / "in.csv", tmp_path / "out.csv", arrow_post, chunk_size=600, progress=False)
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["user_id", "movie_id", "rating", "error"]
    assert out["user_id"].to_pylist() == users and out["movie_id"].type == pa.int64()
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert [r[2] for r in rows] == ["" if r is None else repr(r) for r in out["rating"].to_pylist()]
    assert [r[3] for r in rows] == [e or "" for e in out["error"].to_pylist()]
    assert not (tmp_path / "out.parquet.parts").exists()


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_resume_after_a_crash_gives_one_row_per_input_row(tmp_path, arrow_post, suffix):
    write_pairs(tmp_path / "in.csv", 4000)
    full, out = tmp_path / f"full.{suffix}", tmp_path / f"out.{suffix}"
    score_file_arrow(tmp_path / "in.csv", full, arrow_post, chunk_size=500, progress=False)
    with pytest.raises(ServerError):
        score_file_arrow(
            tmp_path / "in.csv", out, crashing(arrow_post, 3), chunk_size=500, concurrency=1, progress=False
        )
    summary = score_file_arrow(tmp_path / "in.csv", out, arrow_post, chunk_size=500, resume=True, progress=False)
    assert 0 < summary.rows_skipped < 4000 and summary.rows_skipped + summary.rows_scored == 4000
    if suffix == "csv":
        assert out.read_text() == full.read_text()
    else:
        assert pq.read_table(out).equals(pq.read_table(full))


def test_parquet_resume_of_a_finished_output_adds_nothing(tmp_path, arrow_post):
    write_pairs(tmp_path / "in.csv", 800)
    out = tmp_path / "out.parquet"
    score_file_arrow(tmp_path / "in.csv", out, arrow_post, chunk_size=300, progress=False)
    before = pq.read_table(out)
    summary = score_file_arrow(tmp_path / "in.csv", out, arrow_post, chunk_size=300, resume=True, progress=False)
    assert summary.rows_skipped == 800 and summary.rows_scored == 0
    assert pq.read_table(out).equals(before)


def test_parquet_output_drops_a_half_written_part(tmp_path):
    out = ParquetOutput(tmp_path / "o.parquet", resume=False)
    out.write(pa.table({"user_id": ["1"], "movie_id": ["2"], "rating": [3.5], "error": pa.nulls(1, pa.string())}), True)
    (out.parts / "part-000001.tmp").write_bytes(b"PAR1 half")
    again = ParquetOutput(tmp_path / "o.parquet", resume=True)
    assert again.done == 1 and not list(again.parts.glob("*.tmp"))


def test_a_short_answer_is_an_error_not_a_shifted_output(arrow_post):
    chunk = pa.table({"user_id": ["1", "2"], "movie_id": ["101", "102"], "problem": pa.nulls(2, pa.string())})

    def short(body):
        return arrow_post(request_body(pa.array(["1"]), pa.array(["101"])))

    with pytest.raises(ServerError, match="1 ratings for 2 rows"):
        score_table(chunk, short, first_row=7)
    ratings, errors = read_answer(arrow_post(request_body(pa.array(["1"]), pa.array(["101"]))), 1, 1)
    assert errors.null_count == 1 and ratings[0] == round(ratings[0], 4)


def test_csv_lines_are_what_csv_writer_writes():
    ids = ["196", "a,b", 'q"x', "line\nbreak", "cr\rx", " lead", "", "tab\tx", "é", "'single'", "x;y", "#"]
    ratings = [3.1416, 4.0, None, 0.5, 5.5, 1.2, 2.0001, 3.9999, 1.1, None, 2.5, 4.75]
    errors = [None, "unknown user_id a,b", "got str ''", 'q"', None, "x", None, None, None, "no rating", None, "a\tb"]
    records = pa.table(
        {"user_id": ids, "movie_id": ids[::-1], "rating": pa.array(ratings, pa.float64()), "error": errors}
    )
    expected = io.StringIO()
    csv.writer(expected, lineterminator="\n").writerows(zip(ids, ids[::-1], ratings, errors, strict=True))
    assert csv_lines(records) == expected.getvalue().encode()
    tiny = records.set_column(2, "rating", pa.array([1e-5] * 12))  # spelled differently by Arrow and repr()
    expected = io.StringIO()
    csv.writer(expected, lineterminator="\n").writerows(zip(ids, ids[::-1], [1e-5] * 12, errors, strict=True))
    assert csv_lines(tiny) == expected.getvalue().encode()
    assert csv_lines(records.slice(0, 0)) == b""


# -- cold-start fallback flags (an archive built with cold_start: fallback) ---------------------------------


@pytest.fixture(scope="module")
def fallback_post(rec):
    """The Arrow path of a cold_start: fallback service, in process."""
    scorer, lock = RatingService(rec, VERSION, max_instances=20_000, cold_start="fallback"), threading.Lock()

    def post(body: bytes) -> bytes:
        with lock:
            return scorer.answer_arrow(body)

    return post


@pytest.fixture(scope="module")
def fallback_chunk(rec):
    """The JSON path of a cold_start: fallback service, in process, as a chunk scorer."""
    service, lock = RatingService(rec, VERSION, cold_start="fallback"), threading.Lock()

    def score(instances):
        with lock:
            (reply,) = service.handle_batch([orjson.dumps({"instances": instances})])
        return orjson.loads(reply.body)["predictions"]

    return score


def expected_flag(rec, user: str, movie: str) -> str:
    """The fallback a pair of well-formed IDs gets, "" for a personal prediction."""
    unknown_user, unknown_movie = rec.artifact.users.get(user) < 0, rec.artifact.movies.get(movie) < 0
    return {(True, False): "unknown_user", (False, True): "unknown_movie", (True, True): "unknown_both"}.get(
        (unknown_user, unknown_movie), ""
    )


def read_csv(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_fallback_flags_are_written_the_same_over_both_protocols(tmp_path, rec, fallback_post, fallback_chunk):
    pairs = write_pairs(tmp_path / "in.csv", 3000, extra=["5", "8,", '"a,b",101', "9,no-such-movie", "777,zz"])
    common = {"chunk_size": 700, "progress": False}
    by_json = score_file(tmp_path / "in.csv", tmp_path / "json.csv", fallback_chunk, **common)
    by_arrow = score_file_arrow(tmp_path / "in.csv", tmp_path / "arrow.csv", fallback_post, **common)
    assert (tmp_path / "arrow.csv").read_bytes() == (tmp_path / "json.csv").read_bytes()
    header, *rows = read_csv(tmp_path / "arrow.csv")
    assert header == ["user_id", "movie_id", "rating", "error", "fallback"]
    want = [expected_flag(rec, u, m) for u, m in pairs]
    assert [r[4] for r in rows[:3000]] == want and 0 < sum(map(bool, want)) < 3000
    assert [r[3:] for r in rows[3000:]] == [
        ["line 3002: missing movie_id", ""],
        ["'movie_id' must be an integer or a non-empty string, got str ''", ""],
        ["", "unknown_user"],
        ["", "unknown_movie"],
        ["", "unknown_both"],
    ]
    assert all(r[2] and not r[3] for r in rows if r[4])  # a flagged row always has its rating
    assert by_json.rows_fallback == by_arrow.rows_fallback == sum(map(bool, want)) + 3
    assert f"{by_arrow.rows_fallback:,} cold-start fallbacks" in str(by_arrow)
    plain = score_file(tmp_path / "in.csv", tmp_path / "plain.csv", scorer_of_error_mode(rec), **common)
    assert read_csv(tmp_path / "plain.csv")[0] == ["user_id", "movie_id", "rating", "error"]
    assert plain.rows_fallback is None and "fallback" not in str(plain)


def scorer_of_error_mode(rec):
    """The JSON path of a default (cold_start: error) service, in process."""
    service = RatingService(rec, VERSION)
    return lambda instances: orjson.loads(service.handle_batch([orjson.dumps({"instances": instances})])[0].body)[
        "predictions"
    ]


def test_fallback_parquet_output_has_a_string_flag_column_matching_csv(tmp_path, fallback_post):
    write_pairs(tmp_path / "in.csv", 1500)
    score_file_arrow(tmp_path / "in.csv", tmp_path / "out.parquet", fallback_post, chunk_size=400, progress=False)
    score_file_arrow(tmp_path / "in.csv", tmp_path / "out.csv", fallback_post, chunk_size=400, progress=False)
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == ["user_id", "movie_id", "rating", "error", "fallback"]
    assert out.schema.field("fallback").type == pa.string()
    rows = read_csv(tmp_path / "out.csv")[1:]
    assert out["fallback"].to_pylist() == [r[4] or None for r in rows]
    assert out["fallback"].null_count < 1500 and out["rating"].null_count == 0


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_a_resumed_fallback_job_writes_what_a_clean_run_writes(tmp_path, fallback_post, suffix):
    write_pairs(tmp_path / "in.csv", 4000)
    full, out = tmp_path / f"full.{suffix}", tmp_path / f"out.{suffix}"
    score_file_arrow(tmp_path / "in.csv", full, fallback_post, chunk_size=500, progress=False)
    with pytest.raises(ServerError):
        score_file_arrow(
            tmp_path / "in.csv", out, crashing(fallback_post, 4), chunk_size=500, concurrency=1, progress=False
        )
    summary = score_file_arrow(tmp_path / "in.csv", out, fallback_post, chunk_size=500, resume=True, progress=False)
    assert 0 < summary.rows_skipped < 4000 and summary.rows_skipped + summary.rows_scored == 4000
    if suffix == "csv":
        assert out.read_bytes() == full.read_bytes()
    else:
        assert pq.read_table(out).equals(pq.read_table(full))


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_resume_refuses_an_output_written_in_the_other_cold_start_mode(tmp_path, arrow_post, fallback_post, suffix):
    write_pairs(tmp_path / "in.csv", 600)
    out = tmp_path / f"out.{suffix}"
    for first, then in ((arrow_post, fallback_post), (fallback_post, arrow_post)):
        score_file_arrow(tmp_path / "in.csv", out, first, chunk_size=200, progress=False)
        before = out.read_bytes()
        with pytest.raises(columnar.InputError, match="cannot resume"):
            score_file_arrow(tmp_path / "in.csv", out, then, chunk_size=200, resume=True, progress=False)
        assert out.read_bytes() == before


def switching(first, then, after: int):
    """A scorer answering like `first` for `after` calls, then like `then` (a server whose archive changed)."""
    calls = [0]

    def send(body):
        calls[0] += 1
        return (first if calls[0] <= after else then)(body)

    return send


def test_a_cold_start_mode_change_mid_job_stops_it(tmp_path, arrow_post, fallback_post, json_chunk, fallback_chunk):
    write_pairs(tmp_path / "in.csv", 1000)
    common = {"chunk_size": 200, "concurrency": 1, "progress": False}
    with pytest.raises(ServerError, match="has a fallback column: its cold_start mode changed"):
        score_file_arrow(tmp_path / "in.csv", tmp_path / "a.csv", switching(arrow_post, fallback_post, 2), **common)
    with pytest.raises(ServerError, match="lacks a fallback column"):
        score_file_arrow(tmp_path / "in.csv", tmp_path / "b.csv", switching(fallback_post, arrow_post, 2), **common)
    with pytest.raises(ServerError, match="flagged a cold-start fallback"):
        score_file(tmp_path / "in.csv", tmp_path / "c.csv", switching(json_chunk, fallback_chunk, 2), **common)
