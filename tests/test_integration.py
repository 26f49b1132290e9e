"""A real TorchServe serving real .mar archives built by the Makefile, over real HTTP."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from model.artifact import load_artifact
from model.core import Recommender
from model.protocol import ServiceOptions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ref(tiny_artifact):
    """The in-process reference: the same artifact's TorchScript forward."""
    art = load_artifact(tiny_artifact)
    return art, Recommender(art)


PAIR = b'{"user_id": 1, "movie_id": 101}'


def post(http, server, body, path="/predictions/movierec"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return http.post(server.inference_url + path, data=data, headers={"Content-Type": "application/json"}, timeout=30)


def test_single_pair_matches_torchscript(http, server, ref):
    art, rec = ref
    r = post(http, server, {"user_id": int(art.users.ids[5]), "movie_id": art.movies.ids[9]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == int(art.users.ids[5]) and body["movie_id"] == art.movies.ids[9]
    assert body["rating"] == pytest.approx(float(rec.predict_exact(np.array([5]), np.array([9]))[0]), abs=1e-4)
    assert body["model_version"] == "1.0"


def test_many_pairs_keep_order_and_fail_alone_on_both_routes(http, server, ref):
    art, rec = ref
    rng = np.random.default_rng(3)
    urows, mrows = rng.integers(0, len(art.users), 500), rng.integers(0, len(art.movies), 500)
    instances = [
        {"user_id": art.users.ids[u], "movie_id": int(art.movies.ids[m])} for u, m in zip(urows, mrows, strict=False)
    ]
    instances[17] = {"user_id": 99999, "movie_id": 101}
    instances[18] = {"user_id": art.users.ids[0]}
    expected = rec.predict_exact(urows, mrows)
    for path in ("/predictions/movierec", "/v1/models/movierec:predict"):
        r = post(http, server, {"instances": instances}, path)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert len(preds) == 500
        assert preds[17] == {"user_id": 99999, "movie_id": 101, "error": "unknown user_id 99999"}
        assert "movie_id" in preds[18]["error"]
        good = [i for i in range(500) if i not in (17, 18)]
        got = np.array([preds[i]["rating"] for i in good])
        assert np.abs(got - expected[good]).max() < 1e-4
        assert [preds[i]["user_id"] for i in good] == [instances[i]["user_id"] for i in good]


def test_recommendations_exclude_rated_and_carry_titles(http, server, ref):
    art, rec = ref
    user = art.users.ids[2]
    r = post(http, server, {"user_id": user, "top_k": 5})
    assert r.status_code == 200, r.text
    recs = r.json()["recommendations"]
    rated = {art.movies.ids[m] for m in art.rated_by(2)}
    assert len(recs) == 5 and not {str(x["movie_id"]) for x in recs} & rated
    assert all(x["title"].startswith("Movie ") for x in recs)
    scores = [x["score"] for x in recs]
    assert scores == sorted(scores, reverse=True)
    # The served list is the in-process one exactly: the ranker's, over the same eligible movies.
    served = Recommender(art, min_movie_ratings=ServiceOptions().min_movie_ratings)
    rows, want = served.recommend(2, 5)
    assert [str(x["movie_id"]) for x in recs] == [art.movies.ids[m] for m in rows]
    assert scores == [round(s, 4) for s in want.astype(float).tolist()]
    r = post(http, server, {"user_id": user, "top_k": 80, "exclude_rated": False})
    assert len(r.json()["recommendations"]) == len(art.movies)  # all movies, the rated included


def test_versioned_route_and_unknown_version(http, server):
    r = post(http, server, {"user_id": 1, "movie_id": 101}, "/predictions/movierec/2.0")
    assert r.status_code == 200 and r.json()["model_version"] == "2.0"
    r = post(http, server, {"user_id": 1, "movie_id": 101}, "/predictions/movierec/9.9")
    assert r.status_code == 404


def test_requests_without_or_with_wrong_token_are_refused(server):
    body = json.dumps({"user_id": 1, "movie_id": 101})
    url = server.inference_url + "/predictions/movierec"
    wrong = {"Authorization": "Bearer not-the-key"}
    refused = [
        requests.post(url, data=body, timeout=10),
        requests.post(url, data=body, headers=wrong, timeout=10),
        requests.get(server.management_url + "/models", timeout=10),
    ]
    for r in refused:
        # TorchServe 0.12 answers a missing or wrong key with 400, not 401 (shared/notes/torchserve-0.12.md).
        assert (r.status_code, r.json().get("type")) == (400, "InvalidKeyException"), r.text


MALFORMED = [
    b"",
    b"{",
    b"[1, 2]",
    b"42",
    b"null",
    b'"text"',
    b'{"user_id": 1.5, "movie_id": 101}',
    b'{"user_id": true, "movie_id": 101}',
    b'{"user_id": [1], "movie_id": 101}',
    b'{"user_id": null, "movie_id": 101}',
    b'{"user_id": 1}',
    b'{"movie_id": 101}',
    b'{"user_id": 1, "movie_id": 101, "extra": 1}',
    b'{"instances": {"user_id": 1}}',
    b'{"instances": "all"}',
    b'{"user_id": 1, "top_k": "ten"}',
    b'{"user_id": 1, "top_k": 0}',
    b'{"user_id": 1, "top_k": 10, "exclude_rated": "no"}',
    b'{"user_id": 424242, "top_k": 3}',
    b'{"user_id": 1, "movie_id": 424242}',
    b"\xff\xfe\x00garbage",
    b'{"user_id": "", "movie_id": 101}',
    b'{"user_id": 1, "user_id": 2, "movie_id": 101}',
    b'{"user_id": " 1", "movie_id": 101}',
]


def test_malformed_bodies_get_json_4xx_and_the_server_stays_healthy(http, server):
    for body in MALFORMED:
        r = post(http, server, body)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        assert isinstance(r.json()["error"], str) and r.json()["error"], body
    assert http.get(server.inference_url + "/ping", timeout=10).json()["status"] == "Healthy"
    assert post(http, server, {"user_id": 1, "movie_id": 101}).status_code == 200


def test_concurrent_mixed_requests_are_batched_without_hurting_good_ones(http, server, ref):
    art, rec = ref
    rng = np.random.default_rng(7)
    jobs = []
    for i in range(200):
        u, m = int(rng.integers(len(art.users))), int(rng.integers(len(art.movies)))
        if i % 4 == 3:
            jobs.append((MALFORMED[i % len(MALFORMED)], None))
        else:
            jobs.append(({"user_id": art.users.ids[u], "movie_id": art.movies.ids[m]}, (u, m)))

    def call(job):
        return post(http, server, job[0])

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(call, jobs))
    for (_body, pair), r in zip(jobs, answers, strict=True):
        if pair is None:
            assert 400 <= r.status_code < 500, r.text
        else:
            assert r.status_code == 200, r.text
            want = float(rec.predict_exact(np.array([pair[0]]), np.array([pair[1]]))[0])
            assert r.json()["rating"] == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize(
    ("sent", "got"),
    [
        ({"headers": {"Content-Type": "application/x-www-form-urlencoded"}}, "application/x-www-form-urlencoded"),
        ({"headers": {"Content-Type": "text/plain"}}, "text/plain"),
        ({}, "none"),  # requests sends bytes without a Content-Type
        ({"files": {"data": ("pair.json", PAIR, "application/json")}}, "multipart/form-data"),
    ],
)
def test_a_body_that_is_not_json_typed_gets_a_400_naming_its_content_type(http, server, sent, got):
    """curl -d without -H, text/plain, no type, a multipart form: a JSON 400 naming what came, never a guess."""
    url = server.inference_url + "/predictions/movierec"
    body = {} if "files" in sent else {"data": PAIR}
    r = http.post(url, **body, **sent, timeout=30)
    want = f"Content-Type must be application/json or application/vnd.apache.arrow.stream, got {got}"
    assert (r.status_code, r.json()) == (400, {"error": want, "model_version": "1.0"})
    assert r.request.headers.get("Content-Type", "none").split(";")[0] == got  # sent as the case says
    ok = http.post(url, data=PAIR, headers={"Content-Type": "application/json; charset=utf-8"}, timeout=30)
    assert ok.status_code == 200


def test_a_repeated_key_and_a_padded_id_are_400s_naming_them_over_http(http, server):
    r = post(http, server, b'{"user_id": 1, "user_id": 2, "movie_id": 101}')
    assert (r.status_code, r.json()["error"]) == (400, "duplicate key 'user_id' in the request body")
    r = post(http, server, b'{"user_id": " 1", "movie_id": 101}')
    assert (r.status_code, r.json()["error"]) == (400, "'user_id' has surrounding whitespace: ' 1'")


def test_instances_cap_comes_from_the_archive_config(http, server, model_store):
    """The archive's handler section sets the cap: exactly that many are answered, one more gets 413."""
    from model.protocol import ServiceOptions
    from movierec.torchserve.archive import archive_file, load_model_config

    config = load_model_config(model_store / archive_file("1.0"))
    cap = ServiceOptions.from_config(config["handler"]).max_instances
    r = post(http, server, {"instances": [{"user_id": 1, "movie_id": 101}] * cap})
    assert r.status_code == 200 and len(r.json()["predictions"]) == cap
    r = post(http, server, {"instances": [{"user_id": 1, "movie_id": 101}] * (cap + 1)})
    assert r.status_code == 413 and f"{cap + 1} > {cap}" in r.json()["error"]


def test_prometheus_metrics_are_exported(server):
    text = requests.get(server.metrics_url + "/metrics", timeout=10).text
    assert "ts_inference_requests_total" in text


def test_a_huge_integer_id_and_a_non_utf8_body_get_clear_400s(http, server):
    """Issue 10: 2**70 is out of range (not "float 1.18e+21"); gzip or Latin-1 bytes are not UTF-8 JSON."""
    import gzip

    from model.protocol import NOT_UTF8

    r = post(http, server, {"user_id": 2**70, "movie_id": 101})  # json.dumps writes the integer literal
    assert r.status_code == 400 and "'user_id' is out of range" in r.json()["error"], r.text
    for body in (gzip.compress(b'{"user_id": 1, "movie_id": 101}'), '{"user_id": "Jos\u00e9"}'.encode("latin-1")):
        r = post(http, server, body)
        assert r.status_code == 400 and r.json()["error"] == NOT_UTF8, r.text
