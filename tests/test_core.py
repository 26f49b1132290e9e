"""The serving core: factorised scoring and top-K (model/core.py) and the JSON protocol (model/service.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import orjson
import pytest
import torch

import model.core as core
from model.artifact import load_artifact
from model.core import PARITY_TOL, Recommender
from model.protocol import ServiceOptions
from model.service import RatingService

VERSION = "test-1.0"


@pytest.fixture(scope="module")
def rec(tiny_artifact) -> Recommender:
    """A recommender over the session's tiny artifact."""
    return Recommender(load_artifact(tiny_artifact))


@pytest.fixture(scope="module")
def service(rec) -> RatingService:
    """The JSON service with default limits."""
    return RatingService(rec, VERSION)


def exact_row(rec: Recommender, user_row: int) -> np.ndarray:
    """What top-K ranks one user's movies by, from TorchScript: the ranker's scores, or predicted ratings without one."""
    n_movies = len(rec.artifact.movies)
    if rec.ranker is None:
        return rec.predict_exact(np.full(n_movies, user_row), np.arange(n_movies))
    with torch.no_grad():
        return rec.ranker(torch.full((n_movies,), user_row), torch.arange(n_movies)).numpy()


def ask(service: RatingService, *bodies) -> list[tuple[int, dict]]:
    """Send bodies (objects are JSON-encoded to bytes) as one batch; return (status, decoded JSON) each."""
    raw = [b if isinstance(b, bytes | str) else orjson.dumps(b) for b in bodies]
    replies = service.handle_batch(raw)
    assert len(replies) == len(bodies)
    answers = []
    for reply in replies:
        body = orjson.loads(reply.body)
        assert body["model_version"] == VERSION
        answers.append((reply.status, body))
    return answers


def ask_one(service: RatingService, body) -> tuple[int, dict]:
    """Send one body as a batch of one."""
    return ask(service, body)[0]


# -- Recommender ---------------------------------------------------------------------------------------


def test_predict_matches_torchscript_on_all_pairs(rec):
    n_users, n_movies = len(rec.artifact.users), len(rec.artifact.movies)
    users = np.repeat(np.arange(n_users), n_movies)
    movies = np.tile(np.arange(n_movies), n_users)
    fast, exact = rec.predict(users, movies), rec.predict_exact(users, movies)
    assert fast.shape == exact.shape == (n_users * n_movies,)
    np.testing.assert_allclose(fast, exact, atol=1e-5, rtol=0)
    assert exact.std() > 0.1  # a trained model, not a constant


class ShiftedModule(torch.nn.Module):
    """The TorchScript model with ratings of odd movie rows moved by `shift`; its weights are unchanged."""

    def __init__(self, inner: torch.nn.Module, shift: float):
        super().__init__()
        self.inner, self.shift = inner, shift

    def forward(self, users: torch.Tensor, movies: torch.Tensor) -> torch.Tensor:
        """The inner model's ratings, shifted for odd movie rows."""
        return self.inner(users, movies) + self.shift * (movies % 2)

    def state_dict(self, *args, **kwargs):
        """The inner model's weights, which the factorisation is built from."""
        return self.inner.state_dict(*args, **kwargs)


def corrupted_recommender(rec: Recommender, where: str, shift: float, monkeypatch) -> Recommender:
    """A Recommender whose factorised path and TorchScript forward differ by `shift` on odd movie rows."""
    if where == "torchscript":
        return Recommender(dataclasses.replace(rec.artifact, module=ShiftedModule(rec.artifact.module, shift)))
    factorised = Recommender._factorised

    def shifted(self, user_rows, movie_rows):
        return factorised(self, user_rows, movie_rows) + np.float32(shift) * (np.asarray(movie_rows) % 2)

    monkeypatch.setattr(Recommender, "_factorised", shifted)
    return Recommender(rec.artifact)


@pytest.mark.parametrize("where", ["factorised", "torchscript"])
def test_recommender_refuses_a_factorisation_that_differs_from_torchscript(rec, where, monkeypatch):
    with pytest.raises(ValueError, match=r"factorised scoring differs from the TorchScript model by 1\.0\de-03"):
        corrupted_recommender(rec, where, 1e-3, monkeypatch)


@pytest.mark.parametrize("where", ["factorised", "torchscript"])
def test_recorded_parity_is_the_max_diff_between_the_two_paths(rec, where, monkeypatch):
    """A difference within PARITY_TOL is accepted and recorded as the largest one, not a mean."""
    shift = PARITY_TOL / 2
    shifted = corrupted_recommender(rec, where, shift, monkeypatch)
    n_users, n_movies = len(rec.artifact.users), len(rec.artifact.movies)
    users, movies = np.repeat(np.arange(n_users), n_movies), np.tile(np.arange(n_movies), n_users)
    diff = np.abs(shifted.predict(users, movies) - shifted.predict_exact(users, movies)).max()
    assert diff == pytest.approx(shift, abs=3e-6)  # float32 ratings near 5 round by ~5e-7
    assert shifted.parity == pytest.approx(diff, abs=3e-6)


def test_predict_empty(rec):
    assert rec.predict(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).shape == (0,)


@pytest.mark.parametrize("user_row", [0, 17, 59])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_recommend_is_top_k_of_exact_over_unrated(rec, user_row, k):
    exact = exact_row(rec, user_row)
    rated = set(rec.artifact.rated_by(user_row).tolist())
    assert rated
    unrated = np.array([m for m in range(len(exact)) if m not in rated])
    rows, scores = rec.recommend(user_row, k)
    assert len(rows) == len(scores) == k and len(set(rows.tolist())) == k
    assert not set(rows.tolist()) & rated
    assert np.all(np.diff(scores) <= 0)
    np.testing.assert_allclose(scores, exact[rows], atol=1e-5, rtol=0)
    np.testing.assert_allclose(scores, np.sort(exact[unrated])[::-1][:k], atol=1e-5, rtol=0)
    left_out = np.setdiff1d(unrated, rows)
    assert exact[left_out].max() <= scores[-1] + 1e-5


def test_recommend_may_include_rated_when_asked(rec):
    n_movies = len(rec.artifact.movies)
    hits = 0
    for user_row in range(len(rec.artifact.users)):
        exact = exact_row(rec, user_row)
        rows, scores = rec.recommend(user_row, n_movies, exclude_rated=False)
        assert len(rows) == n_movies
        np.testing.assert_allclose(scores, np.sort(exact)[::-1], atol=1e-5, rtol=0)
        top, _ = rec.recommend(user_row, 5, exclude_rated=False)
        hits += bool(set(top.tolist()) & set(rec.artifact.rated_by(user_row).tolist()))
    assert hits > 0  # with ~60% of movies rated, some top-5 list contains a rated movie


def test_k_beyond_the_unrated_movies_returns_only_unrated(rec):
    user_row = 3
    n_movies = len(rec.artifact.movies)
    rated = set(rec.artifact.rated_by(user_row).tolist())
    rows, scores = rec.recommend(user_row, n_movies + 10)
    assert sorted(rows.tolist()) == sorted(set(range(n_movies)) - rated)
    assert np.isfinite(scores).all()


def test_min_movie_ratings_skips_rare_movies(tiny_artifact, rec):
    counts = np.bincount(rec.artifact.rated_indices, minlength=len(rec.artifact.movies))
    threshold = int(np.median(counts))
    strict = Recommender(rec.artifact, min_movie_ratings=threshold)
    for user_row in (0, 9):
        rated = set(rec.artifact.rated_by(user_row).tolist())
        eligible = {m for m in range(len(counts)) if counts[m] >= threshold and m not in rated}
        rows, _ = strict.recommend(user_row, len(counts))
        assert set(rows.tolist()) == eligible
    users = np.zeros(len(counts), dtype=np.int64)
    np.testing.assert_array_equal(
        strict.predict(users, np.arange(len(counts))), rec.predict(users, np.arange(len(counts)))
    )


# -- RatingService: single pairs and instances -------------------------------------------------------------


@pytest.mark.parametrize(("user", "movie"), [(1, 101), ("1", "101"), (60, "150")])
def test_single_pair_echoes_ids_and_rates(service, rec, user, movie):
    status, body = ask_one(service, {"user_id": user, "movie_id": movie})
    assert status == 200
    assert body["user_id"] == user and body["movie_id"] == movie
    assert set(body) == {"user_id", "movie_id", "rating", "model_version"}
    u, m = rec.artifact.users.get(user), rec.artifact.movies.get(movie)
    assert u >= 0 and m >= 0
    assert abs(body["rating"] - float(rec.predict_exact(np.array([u]), np.array([m]))[0])) < 1e-4


@pytest.mark.parametrize("padded", [" 7", "7 ", "\t7\n", "\u00a07", " "])
def test_an_id_with_surrounding_whitespace_is_a_400_naming_the_field(service, padded):
    """' 7' is not user 7: one ID has one spelling, in every request shape (a bad item or user fails alone)."""
    named = f"'user_id' has surrounding whitespace: {padded!r}"
    for body in ({"user_id": padded, "movie_id": 101}, {"user_id": padded, "top_k": 3}):
        assert ask_one(service, body) == (400, {"error": named, "model_version": VERSION})
    status, answer = ask_one(service, {"user_id": 7, "movie_id": padded.replace("7", "101")})
    assert status == 400 and "'movie_id' has surrounding whitespace" in answer["error"]
    status, answer = ask_one(
        service, {"instances": [{"user_id": 7, "movie_id": 101}, {"user_id": padded, "movie_id": 101}]}
    )
    assert status == 200 and "rating" in answer["predictions"][0]
    assert answer["predictions"][1] == {"movie_id": 101, "error": named}
    status, answer = ask_one(service, {"users": [7, padded], "top_k": 2})
    assert status == 200 and len(answer["recommendations"][0]["recommendations"]) == 2
    assert answer["recommendations"][1] == {"error": named}


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b'{"user_id": 1, "user_id": 2, "movie_id": 101}', "user_id"),
        (b'{"user_id": 1, "movie_id": 101, "movie_id": 101}', "movie_id"),
        (b'{"user_id": 1, "top_k": 3, "top_k": 5}', "top_k"),
        (b'{"user_id": 1, "user\\u005fid": 2, "movie_id": 101}', "user_id"),  # the same key, escaped
        (b'{"user_id": 99999, "user_id": 1, "movie_id": 101}', "user_id"),  # named even if the last one is fine
        (b'{"user_id": 1, "user_id": 99999, "movie_id": 101}', "user_id"),  # and before the 404 of the last one
        (b'{"instances": [{"user_id": 1, "movie_id": 101}, {"user_id": 1, "movie_id": 101, "user_id": 2}]}', "user_id"),
        (b'{"instances": [{"user_id": 1, "movie_id": 101}], "instances": []}', "instances"),
        (b'{"users": [1, 2], "top_k": 2, "users": [3]}', "users"),
    ],
)
def test_a_repeated_key_is_a_400_naming_it(service, raw, named):
    """orjson keeps a repeated key's last value silently; the service refuses the ambiguous body instead."""
    assert ask_one(service, raw) == (
        400,
        {"error": f"duplicate key '{named}' in the request body", "model_version": VERSION},
    )


def test_the_repeated_key_check_passes_colons_in_ids_and_big_bodies(service, rec):
    """':' inside string IDs and nested objects only make the check parse again; a big body uses the numpy count."""
    ids = rec.artifact.users.ids
    assert ask_one(service, {"user_id": "a:b", "movie_id": 101}) == (
        404,
        {"error": "unknown user_id a:b", "model_version": VERSION},
    )
    many = [{"user_id": ids[i % len(ids)], "movie_id": 101} for i in range(500)]
    status, answer = ask_one(service, {"instances": [*many, {"user_id": "x:y", "movie_id": {"a": 1}}]})
    assert status == 200 and len(answer["predictions"]) == 501 and "error" in answer["predictions"][-1]
    raw = orjson.dumps({"instances": many})
    assert len(raw) > 4096 and ask_one(service, raw)[0] == 200
    repeated = raw[:-3] + b', "user_id": 1}]}'
    assert ask_one(service, repeated)[1]["error"] == "duplicate key 'user_id' in the request body"


def test_a_refused_content_type_is_answered_alone_in_its_batch(service):
    """The handler hands a body sent with another Content-Type as a RefusedBody; the rest of the batch is answered."""
    from model.protocol import RefusedBody, request_body

    refused = request_body(b'{"user_id": 1, "movie_id": 101}', "text/plain; charset=utf-8")
    assert refused == RefusedBody(
        "Content-Type must be application/json or application/vnd.apache.arrow.stream, got text/plain"
    )
    good = request_body(b'{"user_id": 1, "movie_id": 101}', "Application/JSON; charset=utf-8")
    first, second = service.handle_batch([refused, good])
    assert (first.status, orjson.loads(first.body)["error"]) == (400, refused.message)
    assert second.status == 200 and orjson.loads(second.body)["user_id"] == 1
    assert request_body(b"{}", None).message.endswith("got none")
    assert request_body(b"--x", "multipart/form-data; boundary=x").message.endswith("got multipart/form-data")


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"user_id": 99999, "movie_id": 101}, 404, "user_id 99999"),
        ({"user_id": 1, "movie_id": "nope"}, 404, "movie_id nope"),
    ],
)
def test_single_pair_unknown_ids(service, body, status, named):
    got, answer = ask_one(service, body)
    assert got == status and named in answer["error"]


def test_instances_mixed_items_keep_order(service, rec):
    items = [
        {"user_id": 1, "movie_id": 101},
        {"user_id": 99999, "movie_id": 101},
        {"user_id": "2", "movie_id": "102"},
        {"user_id": 1, "movie_id": 1.5},
        "not an object",
        {"user_id": 3},
        {"user_id": 3, "movie_id": 777},
        {"user_id": 3, "movie_id": 103, "extra": 1},
        {"user_id": True, "movie_id": 103},
        {"user_id": "", "movie_id": 103},
        {"user_id": 4, "movie_id": 104},
    ]
    status, body = ask_one(service, {"instances": items})
    assert status == 200
    preds = body["predictions"]
    assert len(preds) == len(items)
    good = {0: (1, 101), 2: ("2", "102"), 10: (4, 104)}
    for i, (user, movie) in good.items():
        assert "error" not in preds[i]
        assert preds[i]["user_id"] == user and preds[i]["movie_id"] == movie
        u, m = rec.artifact.users.get(user), rec.artifact.movies.get(movie)
        assert abs(preds[i]["rating"] - float(rec.predict_exact(np.array([u]), np.array([m]))[0])) < 1e-4
    expected_errors = {
        1: "user_id 99999",
        3: "movie_id",
        4: "instance must be an object",
        5: "missing field 'movie_id'",
        6: "movie_id 777",
        7: "unknown field 'extra'",
        8: "user_id",
        9: "user_id",
    }
    for i, named in expected_errors.items():
        assert "rating" not in preds[i], i
        assert named in preds[i]["error"], (i, preds[i])
    assert preds[1]["user_id"] == 99999 and preds[6]["movie_id"] == 777


def test_instances_empty_list(service):
    assert ask_one(service, {"instances": []}) == (200, {"predictions": [], "model_version": VERSION})


def test_large_instances_request(rec):
    """A request of exactly the default cap is answered in full."""
    service = RatingService(rec, VERSION)
    n_users, n_movies, n = len(rec.artifact.users), len(rec.artifact.movies), ServiceOptions().max_instances
    rng = np.random.default_rng(0)
    users, movies = rng.integers(0, n_users, n), rng.integers(0, n_movies, n)
    items = [
        {"user_id": int(service.users.id_of(u)), "movie_id": service.movies.id_of(m)}
        for u, m in zip(users, movies, strict=True)
    ]
    status, body = ask_one(service, {"instances": items})
    assert status == 200 and len(body["predictions"]) == n
    got = np.array([p["rating"] for p in body["predictions"]])
    np.testing.assert_allclose(got, rec.predict_exact(users, movies), atol=1e-4, rtol=0)


# -- RatingService: recommendations ---------------------------------------------------------------------


def test_recommendations(service, rec):
    status, body = ask_one(service, {"user_id": 5, "top_k": 7})
    assert status == 200 and body["user_id"] == 5
    recs = body["recommendations"]
    assert len(recs) == 7
    rows, scores = rec.recommend(rec.artifact.users.get(5), 7)
    assert [r["movie_id"] for r in recs] == [int(rec.artifact.movies.id_of(m)) for m in rows]
    np.testing.assert_allclose([r["score"] for r in recs], scores, atol=1e-4)
    for r in recs:
        assert r["title"] == rec.artifact.titles[rec.artifact.movies.get(r["movie_id"])]
        assert r["title"].startswith("Movie ")


def test_recommendations_exclude_rated_by_default(service, rec):
    user_row = rec.artifact.users.get(8)
    rated = {rec.artifact.movies.id_of(m) for m in rec.artifact.rated_by(user_row)}
    n_movies = len(rec.artifact.movies)
    _, default = ask_one(service, {"user_id": 8, "top_k": 100})
    ids = {str(r["movie_id"]) for r in default["recommendations"]}
    assert not ids & rated and len(ids) == n_movies - len(rated)
    _, included = ask_one(service, {"user_id": 8, "top_k": 100, "exclude_rated": False})
    assert len(included["recommendations"]) == n_movies
    _, explicit = ask_one(service, {"user_id": "8", "exclude_rated": True})
    assert explicit["user_id"] == "8" and len(explicit["recommendations"]) == 10


@pytest.mark.parametrize("top_k", [0, -1, ServiceOptions().max_top_k + 1, True, 2.0, "5", None])
def test_top_k_bounds(service, top_k):
    status, body = ask_one(service, {"user_id": 1, "top_k": top_k})
    assert status == 400 and "top_k" in body["error"]


def test_top_k_cap_is_configurable(rec):
    service = RatingService(rec, VERSION, max_top_k=5)
    assert ask_one(service, {"user_id": 1, "top_k": 5})[0] == 200
    status, body = ask_one(service, {"user_id": 1, "top_k": 6})
    assert status == 400 and "1 to 5" in body["error"]


def test_recommendations_unknown_user(service):
    status, body = ask_one(service, {"user_id": "ghost", "top_k": 3})
    assert status == 404 and "user_id ghost" in body["error"]


# -- RatingService: malformed bodies -----------------------------------------------------------------------

MALFORMED = {
    "not_json": (b"{user_id: 1", 400, "not valid JSON"),
    "empty": (b"", 400, "empty"),
    "blank_str": ("   ", 400, "empty"),
    "array": (b"[1, 2]", 400, "JSON object"),
    "number": (b"42", 400, "JSON object"),
    "null": (b"null", 400, "JSON object"),
    "string": (b'"hello"', 400, "JSON object"),
    "user_float": ({"user_id": 1.0, "movie_id": 101}, 400, "'user_id'"),
    "user_bool": ({"user_id": True, "movie_id": 101}, 400, "'user_id'"),
    "user_list": ({"user_id": [1], "movie_id": 101}, 400, "'user_id'"),
    "user_dict": ({"user_id": {"id": 1}, "movie_id": 101}, 400, "'user_id'"),
    "user_null": ({"user_id": None, "movie_id": 101}, 400, "'user_id'"),
    "user_empty": ({"user_id": "", "movie_id": 101}, 400, "'user_id'"),
    "movie_float": ({"user_id": 1, "movie_id": 101.0}, 400, "'movie_id'"),
    "movie_missing": ({"user_id": 1}, 400, "'movie_id'"),
    "no_fields": ({}, 400, "'user_id'"),
    "extra_field": ({"user_id": 1, "movie_id": 101, "bogus": 1}, 400, "'bogus'"),
    "extra_with_instances": ({"instances": [], "user_id": 1}, 400, "'user_id'"),
    "extra_with_top_k": ({"user_id": 1, "top_k": 3, "movie_id": 101}, 400, "'movie_id'"),
    "recommend_user_float": ({"user_id": 1.5, "top_k": 3}, 400, "'user_id'"),
    "exclude_rated_not_bool": ({"user_id": 1, "top_k": 3, "exclude_rated": "yes"}, 400, "exclude_rated"),
    "instances_dict": ({"instances": {"user_id": 1, "movie_id": 101}}, 400, "'instances'"),
    "instances_null": ({"instances": None}, 400, "'instances'"),
    "instances_string": ({"instances": "many"}, 400, "'instances'"),
    "too_many_instances": ({"instances": [{"user_id": 1, "movie_id": 101}] * 6}, 413, "too many instances"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_bodies(rec, name):
    body, status, named = MALFORMED[name]
    service = RatingService(rec, VERSION, max_instances=5)
    got, answer = ask_one(service, body)
    assert got == status, answer
    assert set(answer) == {"error", "model_version"}
    assert named in answer["error"], answer["error"]


def test_max_instances_boundary(rec):
    service = RatingService(rec, VERSION, max_instances=5)
    status, body = ask_one(service, {"instances": [{"user_id": 1, "movie_id": 101}] * 5})
    assert status == 200 and len(body["predictions"]) == 5


# -- ServiceOptions: the model-config.yaml `handler:` section ----------------------------------------------


def test_shipped_handler_settings_are_the_code_defaults_and_fit_the_client():
    """handler/model-config.yaml restates the defaults; the client's chunk cap must stay within the server's."""
    from movierec.client.scoring import MAX_INSTANCES as CLIENT_CHUNK_CAP
    from movierec.torchserve.archive import load_model_config

    shipped = ServiceOptions.from_config(load_model_config()["handler"])
    assert shipped == ServiceOptions(), "change ServiceOptions' defaults and the YAML together"
    assert CLIENT_CHUNK_CAP <= shipped.max_instances  # else every full client chunk gets 413


def test_handler_settings_override_defaults_one_by_one():
    assert ServiceOptions.from_config(None) == ServiceOptions.from_config({}) == ServiceOptions()
    options = ServiceOptions.from_config({"max_top_k": 7, "worker_metrics": True})
    assert (options.max_top_k, options.worker_metrics) == (7, True)
    defaults = ServiceOptions()
    assert (options.max_instances, options.min_movie_ratings) == (defaults.max_instances, defaults.min_movie_ratings)


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"max_instance": 5}, "unknown setting 'max_instance'"),
        ({"max_instances": 0}, "max_instances must be an integer >= 1, got 0"),
        ({"max_instances": "20000"}, "max_instances must be an integer >= 1, got '20000'"),
        ({"max_top_k": 2.5}, "max_top_k must be an integer >= 1, got 2.5"),
        ({"min_movie_ratings": -1}, "min_movie_ratings must be an integer >= 0, got -1"),
        ({"max_users": 0}, "max_users must be an integer >= 1, got 0"),
        ({"min_movie_ratings": True}, "min_movie_ratings must be an integer >= 0, got True"),
        ({"worker_metrics": "yes"}, "worker_metrics must be true or false, got 'yes'"),
        (["max_top_k"], "'handler' must be a mapping, got list"),
    ],
)
def test_bad_handler_settings_are_refused_by_name(section, named):
    with pytest.raises(ValueError) as info:
        ServiceOptions.from_config(section)
    assert named in str(info.value)


def test_reply_reason_phrases(service):
    replies = service.handle_batch([b"{}", orjson.dumps({"user_id": 1, "movie_id": 101})])
    assert [r.reason for r in replies] == ["Bad Request", "OK"]


def test_batch_mixing_good_and_bad_bodies(service, rec):
    bodies = [
        {"user_id": 1, "movie_id": 101},
        b"garbage",
        {"instances": [{"user_id": 2, "movie_id": 102}, {"user_id": 2, "movie_id": 0}]},
        {"user_id": 1.0, "movie_id": 101},
        {"user_id": 3, "top_k": 2},
        {"user_id": 99999, "movie_id": 101},
        {"user_id": "4", "movie_id": "104"},
    ]
    answers = ask(service, *bodies)
    assert [status for status, _ in answers] == [200, 400, 200, 400, 200, 404, 200]

    def exact(user, movie) -> float:
        u, m = rec.artifact.users.get(user), rec.artifact.movies.get(movie)
        return float(rec.predict_exact(np.array([u]), np.array([m]))[0])

    assert abs(answers[0][1]["rating"] - exact(1, 101)) < 1e-4
    preds = answers[2][1]["predictions"]
    assert abs(preds[0]["rating"] - exact(2, 102)) < 1e-4 and "movie_id 0" in preds[1]["error"]
    assert len(answers[4][1]["recommendations"]) == 2
    assert abs(answers[6][1]["rating"] - exact("4", "104")) < 1e-4
    alone = [ask_one(service, bodies[i])[1] for i in (0, 2, 4, 6)]
    assert alone == [answers[i][1] for i in (0, 2, 4, 6)]  # neighbours in a batch change nothing


# -- RatingService: the column-wise fast path must answer exactly like the per-item path -------------


@pytest.mark.parametrize(
    "odd",
    [
        {"user_id": " 1", "movie_id": 101},  # whitespace around a known ID still maps
        {"user_id": True, "movie_id": 101},  # a bool among ints is not an ID
        {"user_id": 2**63 + 5, "movie_id": 101},  # beyond int64
        {"user_id": -5, "movie_id": 101},  # below the ID table
        {"user_id": 10**9, "movie_id": 101},  # above the ID table
        {"user_id": 1, "movie_id": "101"},  # str spelling in an otherwise int column
        {"user_id": 1, "movie_id": 1.0},  # float
        {"user_id": "", "movie_id": 101},
        {"user_id": 1, "movie_id": 101, "x": 0},
        [1, 101],
    ],
)
def test_fast_path_agrees_with_per_item_answers(service, odd):
    good = [{"user_id": int(service.users.ids[i % 5]), "movie_id": int(service.movies.ids[i])} for i in range(6)]
    [(status, batch)] = ask(service, {"instances": [*good[:3], odd, *good[3:]]})
    assert status == 200
    preds = batch["predictions"]
    assert len(preds) == 7
    for item, got in zip([*good[:3], *good[3:]], preds[:3] + preds[4:], strict=True):
        status, single = ask_one(service, item)
        assert status == 200 and got["rating"] == single["rating"]
    status, single = ask_one(service, odd) if isinstance(odd, dict) else (400, {"error": "x"})
    if status == 200:
        assert preds[3]["rating"] == single["rating"]
    else:
        assert "error" in preds[3] and "rating" not in preds[3]


# -- Many users per request: Recommender.recommend_many and {"users": [...]} ------------------------------------


@pytest.mark.parametrize(("k", "exclude"), [(5, True), (100, True), (7, False)])
def test_recommend_many_equals_recommend_bit_for_bit(rec, k, exclude):
    """Same movies, same order, same float32 scores as one user at a time, whatever the block holds."""
    users = np.arange(len(rec.artifact.users))
    many = rec.recommend_many(users, k, exclude)
    assert len(many) == len(users)
    shuffled = np.random.default_rng(0).permutation(users)
    reordered = dict(zip(shuffled.tolist(), rec.recommend_many(shuffled, k, exclude), strict=True))
    for user, (rows, scores) in zip(users.tolist(), many, strict=True):
        single_rows, single_scores = rec.recommend(user, k, exclude)
        np.testing.assert_array_equal(rows, single_rows)
        np.testing.assert_array_equal(scores, single_scores)
        np.testing.assert_array_equal(reordered[user][0], rows)
        np.testing.assert_array_equal(reordered[user][1], scores)


def test_recommend_many_is_top_k_of_the_exact_model(tiny_artifact, rec):
    """Against the TorchScript forward, with rated and rare movies left out per user."""
    counts = np.bincount(rec.artifact.rated_indices, minlength=len(rec.artifact.movies))
    strict = Recommender(rec.artifact, min_movie_ratings=int(np.median(counts)))
    users = np.arange(len(rec.artifact.users))
    for user, (rows, scores) in zip(users.tolist(), strict.recommend_many(users, 8), strict=True):
        exact = exact_row(rec, user)
        rated = set(rec.artifact.rated_by(user).tolist())
        eligible = [m for m in range(len(exact)) if m not in rated and counts[m] >= strict.min_movie_ratings]
        assert len(rows) == min(8, len(eligible)) and set(rows.tolist()) <= set(eligible)
        np.testing.assert_allclose(scores, np.sort(exact[eligible])[::-1][: len(rows)], atol=1e-5, rtol=0)


def test_top_k_over_many_movie_slices_and_user_blocks(rec, monkeypatch):
    """Catalogue in slices of 3 movies and blocks of 2 users (as at 59k movies): same bits, exact model's ranks."""
    monkeypatch.setattr(core, "TOPK_ELEMENTS", 3 * rec.artifact.net.nh)
    monkeypatch.setattr(core, "TOPK_LOGITS", 2 * len(rec.artifact.movies))
    rec = Recommender(dataclasses.replace(rec.artifact, ranker=None))  # slices are the rating model's top-K path
    sliced = Recommender(rec.artifact)
    users = np.arange(len(rec.artifact.users))
    for user, (rows, scores) in zip(users.tolist(), sliced.recommend_many(users, 6), strict=True):
        single_rows, single_scores = sliced.recommend(user, 6)
        np.testing.assert_array_equal(rows, single_rows)
        np.testing.assert_array_equal(scores, single_scores)
        exact = exact_row(rec, user)
        exact[rec.artifact.rated_by(user)] = -np.inf
        np.testing.assert_allclose(scores, exact[rows], atol=1e-5, rtol=0)
        np.testing.assert_allclose(scores, np.sort(exact)[::-1][: len(rows)], atol=1e-5, rtol=0)


def test_recommend_many_of_no_users(rec):
    assert rec.recommend_many(np.array([], dtype=np.int64), 5) == []


def test_many_users_answer_each_user_like_a_single_request_and_bad_ones_fail_alone(service, rec):
    known = [int(u) if u.isdigit() else u for u in rec.artifact.users.ids[:3]]
    users = [known[0], "nobody", str(known[1]), None, known[2], True]
    status, body = ask_one(service, {"users": users, "top_k": 4, "exclude_rated": False})
    assert status == 200
    entries = body["recommendations"]
    assert len(entries) == len(users) and "n_users" not in body
    for i in (0, 2, 4):
        single = ask_one(service, {"user_id": users[i], "top_k": 4, "exclude_rated": False})[1]
        assert entries[i] == {"user_id": users[i], "recommendations": single["recommendations"]}
    assert entries[1] == {"user_id": "nobody", "error": "unknown user_id nobody"}
    assert entries[3] == {"error": "missing field 'user_id'"}
    assert "must be an integer or a non-empty string" in entries[5]["error"]


def test_user_rows_page_through_the_models_users_in_order(service, rec):
    n_users = len(rec.artifact.users)
    pages = [ask_one(service, {"user_rows": [start, start + 25], "top_k": 3}) for start in range(0, n_users, 25)]
    assert all(status == 200 and body["n_users"] == n_users for status, body in pages)
    entries = [entry for _, body in pages for entry in body["recommendations"]]
    assert [str(e["user_id"]) for e in entries] == list(rec.artifact.users.ids)
    listed = ask_one(service, {"users": [e["user_id"] for e in entries[:5]], "top_k": 3})[1]
    assert listed["recommendations"] == entries[:5]


def test_many_users_caps(rec):
    service = RatingService(rec, VERSION, max_users=4, max_top_k=6)
    users = [int(u) for u in rec.artifact.users.ids[:5]]
    assert ask_one(service, {"users": users[:4], "top_k": 6})[0] == 200
    assert ask_one(service, {"user_rows": [0, 4], "top_k": 2})[0] == 200
    status, body = ask_one(service, {"users": users, "top_k": 2})
    assert status == 413 and "too many users: 5 > 4" in body["error"]
    assert ask_one(service, {"user_rows": [1, 6], "top_k": 2})[0] == 413
    assert ask_one(service, {"users": users[:2], "top_k": 7})[0] == 400
    for bad in ({"users": 3}, {"user_rows": [2, 1]}, {"user_rows": [0]}, {"users": [], "user_rows": [0, 1]}):
        status, body = ask_one(service, {**bad, "top_k": 2})
        assert status == 400, bad
    assert ask_one(service, {"users": [], "top_k": 2}) == (200, {"recommendations": [], "model_version": VERSION})
