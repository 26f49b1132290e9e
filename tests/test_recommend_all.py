"""`movierec recommend-all` through a real TorchServe: equal to per-user requests, listed users, resume, Parquet."""

from __future__ import annotations

import csv
import random
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from model.artifact import load_artifact
from model.core import Recommender
from model.protocol import ArrowBody
from model.service import RatingService
from movierec.client import MovieRecClient
from movierec.client.arrow_scoring import post_arrow
from movierec.client.cli import main
from movierec.client.recommend_all import NOTHING_LEFT, OUTPUT_HEADER, RecommendOptions, recommend_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def user_ids(tiny_artifact) -> list[str]:
    """The model's user IDs in its own order."""
    return list(load_artifact(tiny_artifact).users.ids)


def read_csv(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(OUTPUT_HEADER)
    return rows[1:]


def served_post(batch_client: MovieRecClient):
    """Arrow bodies to the default registration of movierec 1.0."""
    return lambda body: post_arrow(batch_client, body, model="movierec", version="1.0")


def test_all_users_equal_per_user_recommend_requests(batch_client, server, user_ids, tmp_path, capsys):
    out = tmp_path / "all.csv"
    argv = ["recommend-all", str(out), "--top-k", "5", "--users-per-request", "17", "--concurrency", "3"]
    argv += ["--workers", "1", "--quiet"]
    argv += ["--inference-url", server.inference_url, "--management-url", server.management_url]
    assert main([*argv, "--key-file", str(server.key_file)]) == 0
    assert f"recommended for {len(user_ids)} users (0 with errors)" in capsys.readouterr().out
    rows = read_csv(out)
    by_user: dict[str, list[list[str]]] = {}
    for row in rows:
        by_user.setdefault(row[0], []).append(row)
    assert list(by_user) == user_ids  # every user once, in the model's order
    for user in random.Random(3).sample(user_ids, 12):
        want = batch_client.recommend(int(user), 5, version="1.0")["recommendations"]
        got = [(r[1], r[2], r[3], r[4], r[5]) for r in by_user[user]]
        assert got == [(str(i), str(w["movie_id"]), w["title"], repr(w["score"]), "") for i, w in enumerate(want, 1)]


def test_listed_users_keep_their_spelling_and_unknown_ones_get_an_error_row(batch_client, user_ids, tmp_path):
    listed = [user_ids[4], "99999", f" {user_ids[0]}", "", user_ids[4], user_ids[7]]
    with open(tmp_path / "users.csv", "w", newline="") as f:
        csv.writer(f).writerows([("userId", "note"), *((u, "x") for u in listed)])
    common = {"users_path": tmp_path / "users.csv", "options": RecommendOptions(3, False), "per_request": 2}
    summary = recommend_file(tmp_path / "out.csv", served_post(batch_client), progress=False, **common)
    assert (summary.users_done, summary.users_with_errors) == (6, 3)
    rows = read_csv(tmp_path / "out.csv")
    assert [r[0] for r in rows] == [listed[0]] * 3 + [listed[1], listed[2], ""] + [listed[4]] * 3 + [listed[5]] * 3
    assert rows[3] == ["99999", "", "", "", "", "unknown user_id 99999"]
    # An ID with surrounding whitespace is not that user: the server names the field (README, API).
    assert rows[4][5] == f"'user_id' has surrounding whitespace: '{listed[2]}'"
    assert rows[5][5].startswith("'user_id' must be an integer or a non-empty string")
    want = batch_client.recommend(int(user_ids[4]), 3, exclude_rated=False, version="1.0")["recommendations"]
    assert [r[2] for r in rows[:3]] == [str(w["movie_id"]) for w in want] == [r[2] for r in rows[6:9]]
    recommend_file(tmp_path / "out.parquet", served_post(batch_client), progress=False, **common)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == list(OUTPUT_HEADER)
    as_text = [
        ["" if v is None else (repr(v) if k == "score" else str(v)) for k, v in r.items()] for r in table.to_pylist()
    ]
    assert as_text == rows


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_an_interrupted_job_resumes_to_an_identical_file(batch_client, user_ids, tmp_path, suffix):
    post = served_post(batch_client)
    common = {"options": RecommendOptions(4), "per_request": 7, "concurrency": 2, "progress": False}
    full = tmp_path / f"full{suffix}"
    recommend_file(full, post, **common)
    written = pq.read_table(full)["user_id"].to_pylist() if suffix == ".parquet" else [r[0] for r in read_csv(full)]
    assert list(dict.fromkeys(written)) == user_ids
    calls = 0

    def failing_post(body: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt
        return post(body)

    out = tmp_path / f"out{suffix}"
    with pytest.raises(KeyboardInterrupt):
        recommend_file(out, failing_post, **{**common, "concurrency": 1})
    if suffix == ".csv":
        written = out.read_bytes()
        assert written.count(b"\n") > 1
        # As a crash leaves it: the last user's rows cut short, mid-line.
        out.write_bytes(written[: written.rindex(b"\n", 0, len(written) - 1) - 9])
    resumed = recommend_file(out, post, resume=True, **common)
    assert resumed.users_skipped > 0 and resumed.users_skipped + resumed.users_done == len(user_ids)
    if suffix == ".csv":
        assert out.read_bytes() == (tmp_path / "full.csv").read_bytes()
    else:
        assert pq.read_table(out).equals(pq.read_table(tmp_path / "full.parquet"))
    again = recommend_file(out, post, resume=True, **common)
    assert again.users_done <= 1 and (suffix == ".parquet" or out.read_bytes() == (tmp_path / "full.csv").read_bytes())


def test_a_user_with_no_movie_left_gets_one_error_row(tiny_artifact, user_ids, tmp_path):
    """In process: the answer's row without a movie becomes the user's error row in the output."""
    artifact = load_artifact(tiny_artifact)
    counts = np.bincount(artifact.rated_indices, minlength=len(artifact.movies))
    # Too rare to recommend: every movie but the most rated one, which some users have all rated.
    service = RatingService(Recommender(artifact, min_movie_ratings=int(counts.max())), "1.0")
    lock = threading.Lock()

    def post(body: bytes) -> bytes:
        with lock:
            (reply,) = service.handle_batch([ArrowBody(body)])
        assert reply.status == 200
        return reply.body

    summary = recommend_file(tmp_path / "out.csv", post, per_request=9, progress=False)
    rows = read_csv(tmp_path / "out.csv")
    assert list(dict.fromkeys(r[0] for r in rows)) == user_ids
    popular = {artifact.movies.id_of(m) for m in np.flatnonzero(counts == counts.max()).tolist()}
    for user, user_id in enumerate(user_ids):
        left = popular - {artifact.movies.id_of(m) for m in artifact.rated_by(user).tolist()}
        got = [r[1:] for r in rows if r[0] == user_id]
        if left:
            assert {r[1] for r in got} == left and [r[0] for r in got] == [str(i) for i in range(1, len(left) + 1)]
        else:
            assert got == [["", "", "", "", NOTHING_LEFT]]
    assert summary.users_with_errors == sum(r[5] == NOTHING_LEFT for r in rows) > 0
