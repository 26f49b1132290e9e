"""The Arrow protocol in process: ID mapping, parsing, scoring, rendering (model/arrow.py) and its dispatch."""

from __future__ import annotations

import shutil

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from handler.movierec_handler import MovierecHandler
from model.arrow import ARROW_STREAM, read_answer, read_table
from model.artifact import load_artifact
from model.core import Recommender
from model.index import IdIndex
from model.protocol import ArrowBody, RequestError
from model.service import RatingService
from movierec.testing import LocalContext

VERSION = "arrow-1.0"


@pytest.fixture(scope="module")
def rec(tiny_artifact) -> Recommender:
    """A recommender over the session's tiny artifact."""
    return Recommender(load_artifact(tiny_artifact))


@pytest.fixture(scope="module")
def scorer(rec) -> RatingService:
    """The Arrow scorer with a small cap, to test the 413."""
    return RatingService(rec, VERSION, max_instances=50)


def arrow_body(columns: dict, batches: int = 1) -> bytes:
    """An IPC stream of `columns`, split into `batches` record batches."""
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        step = max(1, -(-table.num_rows // batches))
        for start in range(0, max(table.num_rows, 1), step):
            writer.write_table(table.slice(start, step))
    return sink.getvalue().to_pybytes()


def json_predictions(rec: Recommender, users: list, movies: list) -> list[dict]:
    """The JSON path's answer to the same pairs as one instances request."""
    service = RatingService(rec, VERSION)
    instances = [{"user_id": u, "movie_id": m} for u, m in zip(users, movies, strict=True)]
    (reply,) = service.handle_batch([orjson.dumps({"instances": instances})])
    assert reply.status == 200
    return orjson.loads(reply.body)["predictions"]


def assert_same_as_json(answer: pa.Table, predictions: list[dict]) -> None:
    """Row by row: the same rating (as float32) or the same error text as the JSON path."""
    assert answer.num_rows == len(predictions)
    for rating, error, p in zip(answer["rating"].to_pylist(), answer["error"].to_pylist(), predictions, strict=True):
        if "rating" in p:
            assert error is None and rating == np.float32(p["rating"])
        else:
            assert rating is None and error == p["error"]


def test_ids_map_ints_and_both_spellings_of_strings():
    ids = IdIndex(["-5", "1", "abc", "007", "20", "0"])
    ints = pa.array([1, 20, -5, 7, 2, None, (1 << 63) - 1, 0, -(1 << 63)], type=pa.int64())
    assert ids.column_rows(ints).tolist() == [1, 4, 0, -1, -1, -1, -1, 5, -1]
    strings = pa.array(["1", " 20 ", "abc", "007", "7", "", None, "ABC", "0"])
    assert ids.column_rows(strings).tolist() == [1, -1, 2, 3, -1, -1, -1, -1, 5]  # " 20 " is a bad row, not 20


def test_ids_of_a_sparse_index_map_by_search():
    ids = IdIndex(["3", str(1 << 40), "x", "-7"])
    ints = pa.array([1 << 40, 3, -7, 4, (1 << 40) + 1, None, (1 << 63) - 1], type=pa.int64())
    assert ids.column_rows(ints).tolist() == [1, 0, 3, -1, -1, -1, -1]


def test_ids_of_an_index_without_numeric_ids():
    ids = IdIndex(["a", "b"])
    assert ids.column_rows(pa.array([1, 2], type=pa.int64())).tolist() == [-1, -1]
    assert ids.column_rows(pa.array(["b", "a"])).tolist() == [1, 0]


def test_int_mapping_agrees_with_the_index_on_every_id(rec):
    users = rec.artifact.users
    raw = np.arange(-3, 200, dtype=np.int64)
    expected = [users.get(int(r)) for r in raw]
    assert users.column_rows(pa.array(raw)).tolist() == expected


@pytest.mark.parametrize("batches", [1, 3])
@pytest.mark.parametrize("kind", ["int64", "string", "int32", "large_string"])
def test_answers_equal_the_json_path(rec, scorer, kind, batches):
    gen = np.random.default_rng(1)
    users, movies = gen.integers(1, 61, 40).tolist(), gen.integers(101, 181, 40).tolist()
    typ = {"int64": pa.int64(), "string": pa.string(), "int32": pa.int32(), "large_string": pa.large_string()}[kind]
    as_type = (lambda xs: [str(x) for x in xs]) if "string" in kind else (lambda xs: xs)
    body = arrow_body(
        {"user_id": pa.array(as_type(users), typ), "movie_id": pa.array(as_type(movies), typ)}, batches=batches
    )
    answer = read_answer(scorer.answer_arrow(body))
    assert answer.schema.metadata[b"model_version"] == VERSION.encode()
    assert answer["error"].null_count == 40
    assert_same_as_json(answer, json_predictions(rec, users, movies))
    exact = rec.predict_exact(rec.artifact.users.rows(users), rec.artifact.movies.rows(movies))
    np.testing.assert_allclose(answer["rating"].to_numpy(), exact, atol=1e-4)


def test_mixed_good_and_bad_rows_fail_alone_in_order(rec, scorer):
    users = [1, 999, 2, None, 3, 5]
    movies = [101, 101, 9999, 102, None, 150]
    body = arrow_body({"user_id": pa.array(users, pa.int64()), "movie_id": pa.array(movies, pa.int64())})
    answer = read_answer(scorer.answer_arrow(body))
    assert answer["error"].to_pylist() == [
        None,
        "unknown user_id 999",
        "unknown movie_id 9999",
        "missing field 'user_id'",
        "missing field 'movie_id'",
        None,
    ]
    assert_same_as_json(answer, json_predictions(rec, users, movies))


def test_string_rows_with_blanks_and_spaces_match_json(rec, scorer):
    users = ["1", "", " 2 ", "x1", "3", "4", "5"]
    movies = ["101", "102", "103", "104", "", "0105", "\t106\n"]
    answer = read_answer(scorer.answer_arrow(arrow_body({"user_id": users, "movie_id": movies})))
    assert answer["rating"].to_pylist()[0] is not None and answer["rating"].to_pylist()[2] is None
    errors = answer["error"].to_pylist()
    assert errors[1] == "'user_id' must be an integer or a non-empty string, got str ''"
    assert errors[2] == "'user_id' has surrounding whitespace: ' 2 '"  # not user 2: a bad row, alone
    assert errors[6] == "'movie_id' has surrounding whitespace: '\\t106\\n'"
    assert_same_as_json(answer, json_predictions(rec, users, movies))


def test_arrow_and_python_agree_on_what_whitespace_is():
    """_valid_ids trims with Arrow, protocol.is_id with str.strip(): the same characters (all up to U+3000), one rule."""
    chars = [chr(c) for c in range(0x3001)]
    trimmed = pc.utf8_trim_whitespace(pa.array([f"{c}7{c}" for c in chars])).to_pylist()
    assert [t == "7" for t in trimmed] == [c.isspace() for c in chars]
    assert sum(c.isspace() for c in chars) == sum(chr(c).isspace() for c in range(0x110000)) == 29


def test_empty_request_gives_an_empty_answer(scorer):
    body = arrow_body({"user_id": pa.array([], pa.int64()), "movie_id": pa.array([], pa.int64())})
    answer = read_answer(scorer.answer_arrow(body))
    assert answer.num_rows == 0 and answer.column_names == ["rating", "error"]


def test_row_cap_is_a_413_and_the_cap_itself_is_fine(scorer):
    ok = arrow_body({"user_id": [1] * 50, "movie_id": [101] * 50}, batches=4)
    assert read_answer(scorer.answer_arrow(ok)).num_rows == 50
    with pytest.raises(RequestError) as caught:
        scorer.answer_arrow(arrow_body({"user_id": [1] * 51, "movie_id": [101] * 51}, batches=4))
    assert caught.value.status == 413 and "50" in str(caught.value)


def repeated_column(*names: str, **meta: str) -> bytes:
    """A stream whose columns are `names` (repeats allowed), with `meta` as schema metadata."""
    table = pa.Table.from_arrays([pa.array([1], pa.int64()) for _ in names], names=list(names))
    table = table.replace_schema_metadata(meta or None)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def repeated_metadata(pairs: list[tuple[str, str]]) -> bytes:
    """A user_id stream whose schema metadata holds `pairs` in order, repeats kept (pyarrow's dict would drop them)."""
    schema = pa.schema([pa.field("user_id", pa.int64())], metadata=pa.KeyValueMetadata(pairs))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(pa.record_batch([pa.array([1], pa.int64())], schema=schema))
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"", "empty request body"),
        (b'{"instances": []}', "not a valid Arrow IPC stream"),
        (b"\xff\xff\xff\xff\x10\x00\x00\x00garbage", "not a valid Arrow IPC stream"),
        (arrow_body({"user_id": [1]}), "missing column 'movie_id'"),
        (arrow_body({"user_id": [1], "movie_id": [101], "rating": [4.0]}), "unknown column 'rating'"),
        (arrow_body({"user_id": [1.5], "movie_id": [101]}), "column 'user_id' must have an integer or string type"),
        (arrow_body({"user_id": [1], "movie_id": [True]}), "column 'movie_id' must have an integer or string type"),
        (repeated_column("user_id", "movie_id", "user_id"), "duplicate column 'user_id' in the request body"),
        (repeated_column("user_id", "user_id", top_k="5"), "duplicate column 'user_id' in the request body"),
        (
            repeated_metadata([("top_k", "5"), ("exclude_rated", "true"), ("top_k", "7")]),
            "duplicate schema metadata key 'top_k' in the request body",
        ),
    ],
)
def test_malformed_bodies_are_400_naming_the_problem(scorer, body, named):
    with pytest.raises(RequestError) as caught:
        scorer.answer_arrow(body)
    assert caught.value.status == 400 and named in str(caught.value)


def test_truncated_stream_is_a_400(scorer):
    body = arrow_body({"user_id": [1, 2, 3], "movie_id": [101, 102, 103]})
    with pytest.raises(RequestError) as caught:
        read_table(body[: len(body) // 2], 10)
    assert caught.value.status == 400


def test_service_answers_arrow_and_json_bodies_of_one_batch_each_in_kind(rec):
    service = RatingService(rec, VERSION, max_instances=50)
    body = arrow_body({"user_id": [1, 2, 999], "movie_id": [101, 102, 103]})
    replies = service.handle_batch(
        [
            ArrowBody(body),
            orjson.dumps({"user_id": 1, "movie_id": 101}),
            ArrowBody(b"garbage"),
            orjson.dumps({"instances": [{"user_id": 2, "movie_id": 102}]}),
            ArrowBody(arrow_body({"user_id": [1] * 51, "movie_id": [101] * 51})),
        ]
    )
    assert [(r.status, r.content_type) for r in replies] == [
        (200, ARROW_STREAM),
        (200, "application/json"),
        (400, "application/json"),
        (200, "application/json"),
        (413, "application/json"),
    ]
    answer = read_answer(replies[0].body)
    assert answer["rating"][0].as_py() == np.float32(orjson.loads(replies[1].body)["rating"])
    assert answer["rating"][1].as_py() == np.float32(orjson.loads(replies[3].body)["predictions"][0]["rating"])
    assert answer["error"].to_pylist() == [None, None, "unknown user_id 999"]
    assert "not a valid Arrow IPC stream" in orjson.loads(replies[2].body)["error"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": ARROW_STREAM},
        {"content-type": ARROW_STREAM + "; charset=binary"},
        {"body": {"content-type": ARROW_STREAM}},
    ],
)
def test_handler_picks_arrow_by_content_type(tiny_artifact, tmp_path, headers):
    shutil.copytree(tiny_artifact, tmp_path / "artifact")
    handler = MovierecHandler()
    handler.initialize(LocalContext(tmp_path))
    arrow = arrow_body({"user_id": [1], "movie_id": [101]})
    ctx = LocalContext(
        ".",
        request_headers=[headers, {"Content-Type": "application/json"}, {"body": {"content-type": "application/json"}}],
    )
    json_pair = orjson.dumps({"user_id": 1, "movie_id": 101})
    out = handler.handle([{"body": arrow}, {"body": json_pair}, {"body": json_pair}], ctx)
    assert ctx.content_types == {0: ARROW_STREAM, 1: "application/json", 2: "application/json"}
    assert read_answer(out[0])["rating"][0].as_py() == np.float32(orjson.loads(out[1])["rating"])
    assert out[1] == out[2]


@pytest.mark.parametrize(
    ("headers", "got"),
    [
        ({}, "none"),
        ({"body": {"content-type": ""}}, "none"),  # what TorchServe passes for a body sent without one
        ({"Content-Type": "text/plain"}, "text/plain"),
        (
            {"content-type": "multipart/form-data; boundary=x", "data": {"content-type": "application/json"}},
            "multipart/form-data",
        ),
        ({"Content-Type": "application/x-www-form-urlencoded"}, "application/x-www-form-urlencoded"),
    ],
)
def test_handler_refuses_other_content_types_alone_in_the_batch(tiny_artifact, tmp_path, headers, got):
    """Neither JSON nor Arrow, or none at all: a JSON 400 naming what came, even for a body that would parse."""
    shutil.copytree(tiny_artifact, tmp_path / "artifact")
    handler = MovierecHandler()
    handler.initialize(LocalContext(tmp_path))
    json_pair = orjson.dumps({"user_id": 1, "movie_id": 101})
    ctx = LocalContext(".", request_headers=[headers, {"Content-Type": "application/json"}, headers])
    out = handler.handle([{"body": json_pair}, {"body": json_pair}, {"data": json_pair}], ctx)
    want = f"Content-Type must be application/json or application/vnd.apache.arrow.stream, got {got}"
    for idx in (0, 2):
        assert ctx.status(idx) == 400 and orjson.loads(out[idx])["error"] == want
    assert ctx.status(1) == 200 and orjson.loads(out[1])["user_id"] == 1


# -- Recommendations for many users ----------------------------------------------------------------------------


def recommend_body(columns: dict | None, **meta: str) -> bytes:
    """A multi-user recommendation stream: `columns` (or none) with `meta` as schema metadata."""
    schema = pa.table(columns).schema if columns else pa.schema([])
    schema = schema.with_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        if columns:
            writer.write_table(pa.table(columns).replace_schema_metadata(meta))
    return sink.getvalue().to_pybytes()


def as_json_entries(answer: pa.Table, sent: list) -> list[dict]:
    """The long Arrow answer regrouped into the JSON path's per-user entries (IDs compared as text)."""
    entries = [{"recommendations": []} for _ in sent]
    for row in answer.to_pylist():
        entry = entries[row["user"]]
        if row["rank"] is None and row["error"] is None:
            assert row["movie_id"] is row["score"] is None and entry == {"recommendations": []}
        elif row["error"] is not None:
            assert row["rank"] is row["movie_id"] is row["score"] is None
            entries[row["user"]] = {"error": row["error"]}
        else:
            assert row["rank"] == len(entry["recommendations"]) + 1
            entry["recommendations"].append({"movie_id": row["movie_id"], "title": row["title"], "score": row["score"]})
    return entries


def json_entries(body: dict, service: RatingService) -> list[dict]:
    (reply,) = service.handle_batch([orjson.dumps(body)])
    assert reply.status == 200
    entries = orjson.loads(reply.body)["recommendations"]
    for entry in entries:
        entry.pop("user_id", None)
        for rec in entry.get("recommendations", []):
            rec["movie_id"] = str(rec["movie_id"])
    return entries


@pytest.mark.parametrize(("top_k", "exclude"), [(3, True), (40, False)])
def test_many_users_answers_equal_the_json_path(rec, top_k, exclude):
    service = RatingService(rec, VERSION)
    users = [int(u) for u in rec.artifact.users.ids[:20]]
    sent = [*users[:5], 99999, *users[5:]]
    body = recommend_body({"user_id": sent}, top_k=str(top_k), exclude_rated=str(exclude).lower())
    (reply,) = service.handle_batch([ArrowBody(body)])
    assert reply.status == 200 and reply.content_type == ARROW_STREAM
    answer = read_answer(reply.body)
    assert answer.schema.metadata[b"model_version"] == VERSION.encode()
    want = json_entries({"users": sent, "top_k": top_k, "exclude_rated": exclude}, service)
    assert as_json_entries(answer, sent) == want and want[5] == {"error": "unknown user_id 99999"}
    assert answer["user_id"].to_pylist()[: top_k + 1] == ["1"] * top_k + ["2"]


def test_many_users_by_rows_equal_the_json_path_and_say_how_many_users(rec):
    service = RatingService(rec, VERSION)
    n_users = len(rec.artifact.users)
    (reply,) = service.handle_batch([ArrowBody(recommend_body(None, top_k="2", user_rows=f"10:{n_users + 5}"))])
    answer = read_answer(reply.body)
    assert answer.schema.metadata[b"n_users"] == str(n_users).encode()
    sent = list(range(10, n_users))
    assert as_json_entries(answer, sent) == json_entries({"user_rows": [10, n_users + 5], "top_k": 2}, service)
    assert sorted(set(answer["user_id"].to_pylist())) == sorted(rec.artifact.users.ids[10:])


def test_many_users_caps_and_bad_options_are_json_errors(rec):
    service = RatingService(rec, VERSION, max_users=4, max_top_k=5)
    users = [int(u) for u in rec.artifact.users.ids[:5]]
    cases = [
        (recommend_body({"user_id": users[:4]}, top_k="5"), 200, None),
        (recommend_body({"user_id": users}, top_k="5"), 413, "too many users: 5 > 4"),
        (recommend_body(None, top_k="1", user_rows="0:5"), 413, "too many users: 5 > 4"),
        (recommend_body({"user_id": users[:2]}, top_k="6"), 400, "'top_k' must be an integer from 1 to 5"),
        (recommend_body({"user_id": users[:2]}, top_k="02"), 400, "'top_k' must be an integer"),
        (recommend_body({"user_id": users[:2]}, top_k="2", exclude_rated="no"), 400, "'exclude_rated'"),
        (recommend_body(None, top_k="1", user_rows="3"), 400, "'user_rows' must be [start, stop]"),
        (recommend_body({"user_id": users[:1], "movie_id": [1]}, top_k="2"), 400, "unknown column 'movie_id'"),
        (recommend_body({"user_id": users[:1]}, top_k="2", user_rows="0:1"), 400, "not both"),
    ]
    for body, status, named in cases:
        (reply,) = service.handle_batch([ArrowBody(body)])
        assert reply.status == status, named
        if named:
            assert named in orjson.loads(reply.body)["error"]


def test_a_user_with_no_movie_left_has_one_row_without_a_movie(rec):
    counts = np.bincount(rec.artifact.rated_indices, minlength=len(rec.artifact.movies))
    # The user whose unrated movies are the least popular: with every one of them too rare to
    # recommend, it has none left while the most popular movies stay for others.
    thresholds = [
        int(counts[np.setdiff1d(np.arange(len(counts)), rec.artifact.rated_by(u))].max()) + 1
        for u in range(len(rec.artifact.users))
    ]
    heavy = int(np.argmin(thresholds))
    picky = Recommender(rec.artifact, min_movie_ratings=thresholds[heavy])
    service = RatingService(picky, VERSION)
    users = [int(u) for u in rec.artifact.users.ids]
    (reply,) = service.handle_batch([ArrowBody(recommend_body({"user_id": users}, top_k="5"))])
    answer = read_answer(reply.body)
    want = json_entries({"users": users, "top_k": 5}, service)
    assert as_json_entries(answer, users) == want
    assert want[heavy] == {"recommendations": []} and any(entry["recommendations"] for entry in want)
    assert sorted(set(answer["user"].to_pylist())) == list(range(len(users)))


@pytest.mark.parametrize("cold_start", ["error", "fallback"])
def test_padded_ids_fail_alone_and_never_fall_back(rec, cold_start):
    """' 1' is a bad row or user (the JSON path's 400 text), not user 1 and not an unknown user to fall back for."""
    scorer = RatingService(rec, VERSION, max_instances=50, cold_start=cold_start)
    users, movies = ["1", " 1", "1", "nobody"], ["101", "101", "101\n", "101"]
    answer = read_answer(scorer.answer_arrow(arrow_body({"user_id": users, "movie_id": movies})))
    errors = answer["error"].to_pylist()
    assert errors[:3] == [
        None,
        "'user_id' has surrounding whitespace: ' 1'",
        "'movie_id' has surrounding whitespace: '101\\n'",
    ]
    assert errors[3] == (None if cold_start == "fallback" else "unknown user_id nobody")
    if cold_start == "error":
        assert_same_as_json(answer, json_predictions(rec, users, movies))
    many = read_answer(scorer.answer_arrow(recommend_body({"user_id": ["1", "1 "]}, top_k="2")))
    assert many.filter(pc.equal(many["user"], 1))["error"].to_pylist() == ["'user_id' has surrounding whitespace: '1 '"]
    assert many.filter(pc.equal(many["user"], 0))["error"].null_count == 2
