"""The Arrow protocol through a real TorchServe: content-type dispatch, answers, errors, bulk scoring."""

from __future__ import annotations

import csv
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from model.arrow import ARROW_STREAM, read_answer
from model.artifact import load_artifact
from movierec.client.scoring import BatchSettings, score_csv

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ids(tiny_artifact):
    """Known raw user and movie IDs, as the artifact stores them."""
    art = load_artifact(tiny_artifact)
    return list(art.users.ids), list(art.movies.ids)


def arrow_body(columns: dict) -> bytes:
    """One IPC stream of `columns`."""
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def post_arrow(http, server, body: bytes, path: str = "/predictions/movierec") -> requests.Response:
    headers = {"Content-Type": ARROW_STREAM}
    return http.post(server.inference_url + path, data=body, headers=headers, timeout=30)


def post_json(http, server, body: dict, path: str = "/predictions/movierec") -> requests.Response:
    return http.post(server.inference_url + path, json=body, timeout=30)


def sample_pairs(ids, n: int, seed: int) -> tuple[list[int], list[int]]:
    users, movies = ids
    rng = random.Random(seed)
    return [int(rng.choice(users)) for _ in range(n)], [int(rng.choice(movies)) for _ in range(n)]


def assert_same(answer: pa.Table, predictions: list[dict]) -> None:
    """Row by row, the JSON answer's rating (as float32) or error text."""
    assert answer.num_rows == len(predictions)
    for rating, error, p in zip(answer["rating"].to_pylist(), answer["error"].to_pylist(), predictions, strict=True):
        assert (rating, error) == ((np.float32(p["rating"]), None) if "rating" in p else (None, p["error"]))


@pytest.mark.parametrize("path", ["/predictions/movierec", "/v1/models/movierec:predict"])
def test_arrow_and_json_answers_are_identical(http, server, ids, path):
    users, movies = sample_pairs(ids, 600, seed=1)
    users[5], movies[9], users[10] = 99999, 77777, None
    r = post_arrow(http, server, arrow_body({"user_id": pa.array(users, pa.int64()), "movie_id": movies}), path)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == ARROW_STREAM
    answer = read_answer(r.content)
    assert answer.schema.metadata[b"model_version"] == b"1.0"
    instances = [{"user_id": u, "movie_id": m} for u, m in zip(users, movies, strict=True)]
    expected = post_json(http, server, {"instances": instances}, path).json()["predictions"]
    assert_same(answer, expected)
    assert answer["error"].to_pylist()[5] == "unknown user_id 99999"
    assert answer["error"].to_pylist()[10] == "missing field 'user_id'"
    assert answer["rating"].null_count == 3


def test_string_ids_get_the_ratings_of_their_int_spelling(http, server, ids):
    users, movies = sample_pairs(ids, 200, seed=2)
    as_int = read_answer(post_arrow(http, server, arrow_body({"user_id": users, "movie_id": movies})).content)
    strings = {"user_id": [str(u) for u in users], "movie_id": [str(m) for m in movies]}
    as_str = read_answer(post_arrow(http, server, arrow_body(strings)).content)
    assert as_str["error"].null_count == 200 and as_str["rating"].equals(as_int["rating"])
    strings["movie_id"][0] = f" {movies[0]}"  # not movie movies[0]: a bad row, failing alone
    padded = read_answer(post_arrow(http, server, arrow_body(strings)).content)
    assert padded["error"].to_pylist()[:2] == [f"'movie_id' has surrounding whitespace: ' {movies[0]}'", None]
    assert padded["rating"][1:].equals(as_int["rating"][1:])


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"not an arrow stream", "not a valid Arrow IPC stream"),
        (arrow_body({"user_id": [1]}), "missing column 'movie_id'"),
        (arrow_body({"user_id": [1.5], "movie_id": [101]}), "must have an integer or string type"),
    ],
)
def test_a_malformed_arrow_body_is_a_json_400_naming_the_problem(http, server, body, named):
    r = post_arrow(http, server, body)
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/json")
    assert named in r.json()["error"] and r.json()["model_version"] == "1.0"


def test_too_many_rows_is_a_json_413(http, server):
    r = post_arrow(http, server, arrow_body({"user_id": [1] * 20_001, "movie_id": [101] * 20_001}))
    assert r.status_code == 413 and "20000" in r.json()["error"]


def test_arrow_and_json_requests_batched_together_each_get_their_own_answer(http, server, ids):
    users, movies = sample_pairs(ids, 64, seed=3)
    expected = post_json(
        http, server, {"instances": [{"user_id": u, "movie_id": m} for u, m in zip(users, movies, strict=False)]}
    )
    ratings = [p["rating"] for p in expected.json()["predictions"]]

    def ask(i: int) -> float:
        if i % 2:
            r = post_arrow(http, server, arrow_body({"user_id": [users[i]], "movie_id": [movies[i]]}))
            assert r.headers["Content-Type"] == ARROW_STREAM
            return read_answer(r.content)["rating"][0].as_py()
        r = post_json(http, server, {"user_id": users[i], "movie_id": movies[i]})
        assert r.headers["Content-Type"].startswith("application/json")
        return np.float32(r.json()["rating"])

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, range(64)))
    assert got == [np.float32(r) for r in ratings]


def test_score_parquet_round_trip_and_csv_equal_to_the_json_protocol(batch_client, ids, tmp_path):
    users, movies = sample_pairs(ids, 2500, seed=4)
    users[7] = 99999
    pq.write_table(pa.table({"userId": users, "movieId": movies}), tmp_path / "in.parquet", row_group_size=700)
    with open(tmp_path / "in.csv", "w", newline="") as f:
        csv.writer(f).writerows([("user_id", "movie_id"), *zip(users, movies, strict=True)])
    settings = BatchSettings(workers=1, idle_workers=0)
    common = {"chunk_size": 600, "concurrency": 3, "settings": settings, "progress": False}
    summary = score_csv(batch_client, tmp_path / "in.parquet", tmp_path / "out.parquet", **common)
    assert summary.rows_scored == 2500 and summary.rows_with_errors == 1
    out = pq.read_table(tmp_path / "out.parquet")
    assert out["user_id"].to_pylist() == users and out["movie_id"].to_pylist() == movies
    assert out["error"].to_pylist()[7] == "unknown user_id 99999" and out["rating"].null_count == 1
    score_csv(batch_client, tmp_path / "in.csv", tmp_path / "arrow.csv", protocol="arrow", **common)
    score_csv(batch_client, tmp_path / "in.csv", tmp_path / "json.csv", protocol="json", **common)
    assert (tmp_path / "arrow.csv").read_bytes() == (tmp_path / "json.csv").read_bytes()
    with open(tmp_path / "arrow.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert [r[2] for r in rows] == ["" if r is None else repr(r) for r in out["rating"].to_pylist()]


def test_score_resumes_a_parquet_job_on_the_arrow_path(batch_client, ids, tmp_path):
    users, movies = sample_pairs(ids, 3000, seed=5)
    with open(tmp_path / "in.csv", "w", newline="") as f:
        csv.writer(f).writerows([("user_id", "movie_id"), *zip(users, movies, strict=True)])
    settings = BatchSettings(workers=1, idle_workers=0)
    common = {"chunk_size": 400, "concurrency": 2, "settings": settings, "progress": False}
    score_csv(batch_client, tmp_path / "in.csv", tmp_path / "full.parquet", **common)
    # As a crash leaves it: two finished part files and a half-written one, no merged output.
    parts = tmp_path / "out.parquet.parts"
    parts.mkdir()
    full = pq.read_table(tmp_path / "full.parquet")
    pq.write_table(full.slice(0, 800), parts / "part-000000.parquet")
    pq.write_table(full.slice(800, 1000), parts / "part-000001.parquet")
    (parts / "part-000002.tmp").write_bytes(b"PAR1")
    resumed = score_csv(batch_client, tmp_path / "in.csv", tmp_path / "out.parquet", resume=True, **common)
    assert resumed.rows_skipped == 1800 and resumed.rows_scored == 1200
    assert pq.read_table(tmp_path / "out.parquet").equals(full) and not parts.exists()
