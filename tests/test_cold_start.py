"""Cold start (cold_start: fallback): the average user and movie, from train.py through the artifact to answers."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import torch

import train
from model.arrow import ARROW_STREAM, read_answer
from model.artifact import FORMAT_VERSION, ArtifactError, ColdStart, load_artifact
from model.core import PARITY_TOL, Recommender
from model.data import load_ratings, split_indices
from model.net import EmbeddingNet
from model.protocol import ServiceOptions
from model.service import RatingService
from movierec import torchserve
from movierec.client.api import MovieRecClient, NotFound
from movierec.client.columnar import InputError
from movierec.client.scoring import score_csv
from movierec.torchserve.archive import ArchiveError, archive_file, build_mar, load_model_config
from tests.conftest import TINY_TRAIN_ARGS

VERSION = "cold-1.0"
GHOST_USER, GHOST_MOVIE = 987654, "no-such-movie"


@pytest.fixture(scope="module")
def artifact(tiny_artifact):
    """The session's tiny artifact (format v2), loaded."""
    return load_artifact(tiny_artifact)


@pytest.fixture(scope="module")
def rec(artifact) -> Recommender:
    """The serving core over it, with the average rows appended."""
    return Recommender(artifact)


@pytest.fixture(scope="module")
def service(rec) -> RatingService:
    """The JSON service in fallback mode."""
    return RatingService(rec, VERSION, cold_start="fallback")


@pytest.fixture(scope="module")
def extended_module(artifact):
    """The artifact's network scripted again with one more user and movie row: the stored averages.

    The reference for the fallback: what TorchScript itself predicts for a user/movie with the mean embeddings.
    """
    cold, net = artifact.cold_start, artifact.net
    state = {k: v.clone() for k, v in artifact.module.state_dict().items()}
    for name, vector in (("u", cold.user_embedding), ("m", cold.movie_embedding)):
        state[f"{name}.weight"] = torch.cat([state[f"{name}.weight"], torch.from_numpy(vector)[None]])
    for name, bias in (("ub", cold.user_bias), ("mb", cold.movie_bias)):
        state[f"{name}.weight"] = torch.cat([state[f"{name}.weight"], torch.tensor([[bias]])])
    for name in ("ud", "md"):  # the fused net's dot-product factors: their plain means, taken at load
        state[f"{name}.weight"] = torch.cat([state[f"{name}.weight"], state[f"{name}.weight"].mean(0, keepdim=True)])
    net.n_users, net.n_movies = net.n_users + 1, net.n_movies + 1
    model = EmbeddingNet(net)
    model.load_state_dict(state)
    return torch.jit.script(model.eval())


def v1_copy(tiny_artifact, tmp_path) -> Path:
    """A copy of the artifact as format v1 wrote it: no cold_start entry, no ranker."""
    copy = Path(shutil.copytree(tiny_artifact, tmp_path / "v1"))
    meta = json.loads((copy / "metadata.json").read_text())
    del meta["cold_start"], meta["ranker"], meta["files"]["ranker.pt"]
    (copy / "ranker.pt").unlink()
    meta["format_version"] = 1
    (copy / "metadata.json").write_text(json.dumps(meta))
    return copy


def ask(service: RatingService, body: object) -> tuple[int, dict]:
    """One JSON body through the service: (status, decoded answer)."""
    (reply,) = service.handle_batch([orjson.dumps(body)])
    return reply.status, orjson.loads(reply.body)


# -- artifact ------------------------------------------------------------------------------------------------


def test_artifact_stores_the_plain_means_of_the_learned_rows(artifact):
    cold, state = artifact.cold_start, artifact.module.state_dict()
    assert artifact.metadata["format_version"] == FORMAT_VERSION
    np.testing.assert_allclose(cold.user_embedding, state["u.weight"].mean(0).numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cold.movie_embedding, state["m.weight"].mean(0).numpy(), rtol=1e-6, atol=1e-7)
    assert cold.user_bias == pytest.approx(float(state["ub.weight"].mean()), abs=1e-7)
    assert cold.movie_bias == pytest.approx(float(state["mb.weight"].mean()), abs=1e-7)
    assert cold.global_mean == artifact.metadata["metrics"]["global_mean"]


def test_cold_start_entry_round_trips_exactly(artifact):
    cold = artifact.cold_start
    again = ColdStart.from_dict(json.loads(json.dumps(cold.to_dict())), artifact.net.n_factors)
    assert np.array_equal(again.user_embedding, cold.user_embedding)
    assert np.array_equal(again.movie_embedding, cold.movie_embedding)
    assert (again.user_bias, again.movie_bias, again.global_mean) == (cold.user_bias, cold.movie_bias, cold.global_mean)


def test_a_format_v1_artifact_still_loads_without_averages(tiny_artifact, tmp_path):
    art = load_artifact(v1_copy(tiny_artifact, tmp_path))
    assert art.cold_start is None
    rec = Recommender(art)
    assert rec.average_user is None and rec.average_movie is None
    assert RatingService(rec, VERSION).handle_batch([b'{"user_id": 987654, "movie_id": 101}'])[0].status == 404


def test_a_v1_artifact_with_fallback_fails_at_load_saying_why(tiny_artifact, tmp_path):
    rec = Recommender(load_artifact(v1_copy(tiny_artifact, tmp_path)))
    with pytest.raises(ValueError, match="format 1.*retrain"):
        RatingService(rec, VERSION, cold_start="fallback")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda meta: meta.pop("cold_start"), "'cold_start'"),
        (lambda meta: meta["cold_start"]["user"]["embedding"].pop(), "cold_start.user"),
        (lambda meta: meta["cold_start"]["movie"].update(bias=None), "cold_start is malformed"),
        (lambda meta: meta["cold_start"].update(global_mean=float("nan")), "global_mean"),
    ],
)
def test_a_damaged_cold_start_entry_fails_the_load(tiny_artifact, tmp_path, edit, named):
    copy = Path(shutil.copytree(tiny_artifact, tmp_path / "bad"))
    meta = json.loads((copy / "metadata.json").read_text())
    edit(meta)
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="metadata.json") as info:
        load_artifact(copy)
    assert named in str(info.value)


# -- core ----------------------------------------------------------------------------------------------------


def test_fallback_ratings_are_the_torchscript_net_with_the_average_rows(rec, artifact, extended_module):
    n_users, n_movies = len(artifact.users), len(artifact.movies)
    assert (rec.average_user, rec.average_movie) == (n_users, n_movies)
    movies, users = np.arange(n_movies), np.arange(n_users)
    pairs = [  # (user rows, movie rows): unknown user x every movie, every user x unknown movie
        (np.full(n_movies, n_users), movies),
        (users, np.full(n_users, n_movies)),
    ]
    for urows, mrows in pairs:
        with torch.no_grad():
            want = extended_module(torch.from_numpy(urows), torch.from_numpy(mrows)).numpy()
        assert np.abs(rec.predict_or_fallback(urows, mrows) - want).max() < PARITY_TOL
    both = rec.predict_or_fallback(np.array([n_users, 0]), np.array([n_movies, 0]))
    assert both[0] == np.float32(artifact.cold_start.global_mean)
    assert both[1] == pytest.approx(float(rec.predict_exact(np.array([0]), np.array([0]))[0]), abs=PARITY_TOL)


def test_the_average_movie_is_never_recommended(artifact):
    rec = Recommender(artifact, min_movie_ratings=0)
    rows, _ = rec.recommend(0, len(artifact.movies) + 5, exclude_rated=False)
    assert len(rows) == len(artifact.movies) and rows.max() < len(artifact.movies)
    rows, scores = rec.recommend(rec.average_user, 5, exclude_rated=False)
    # The unknown user's list is the ranker's average user: the mean of its user factors.
    state = artifact.ranker.state_dict()
    with torch.no_grad():
        every = (state["m.weight"] @ state["u.weight"].mean(0) + state["mb.weight"][:, 0]).numpy()
    assert np.array_equal(np.sort(rows), np.sort(np.argsort(-every)[:5]))


# -- JSON service --------------------------------------------------------------------------------------------


def test_unknown_ids_are_answered_and_flagged(service, rec, artifact):
    user, movie = int(artifact.users.ids[2]), int(artifact.movies.ids[4])
    status, known = ask(service, {"user_id": user, "movie_id": movie})
    assert status == 200 and "fallback" not in known
    cases = [
        ({"user_id": GHOST_USER, "movie_id": movie}, "unknown_user", (rec.average_user, 4)),
        ({"user_id": user, "movie_id": GHOST_MOVIE}, "unknown_movie", (2, rec.average_movie)),
        ({"user_id": GHOST_USER, "movie_id": GHOST_MOVIE}, "unknown_both", None),
    ]
    for body, kind, rows in cases:
        status, answer = ask(service, body)
        assert status == 200 and answer["fallback"] == kind, answer
        want = (
            artifact.cold_start.global_mean
            if rows is None
            else rec.predict(np.array([rows[0]]), np.array([rows[1]]))[0]
        )
        assert answer["rating"] == round(float(want), 4)
        assert answer["user_id"] == body["user_id"] and answer["movie_id"] == body["movie_id"]


def test_instances_flag_each_fallback_and_bad_ids_still_fail(service, artifact):
    user, movie = artifact.users.ids[0], artifact.movies.ids[0]
    instances = [
        {"user_id": user, "movie_id": movie},
        {"user_id": GHOST_USER, "movie_id": movie},
        {"user_id": 1.5, "movie_id": movie},
        {"user_id": user, "movie_id": GHOST_MOVIE},
        {"user_id": "", "movie_id": GHOST_MOVIE},
    ]
    status, answer = ask(service, {"instances": instances})
    preds = answer["predictions"]
    assert status == 200
    assert [p.get("fallback") for p in preds] == [None, "unknown_user", None, "unknown_movie", None]
    assert "rating" in preds[1] and "rating" in preds[3]
    assert "'user_id' must be" in preds[2]["error"] and "'user_id' must be" in preds[4]["error"]


def test_an_unknown_user_gets_the_average_users_list(service, rec, artifact):
    rows, scores = rec.recommend(rec.average_user, 5, exclude_rated=False)
    want = [(int(artifact.movies.ids[r]), round(float(s), 4)) for r, s in zip(rows, scores, strict=True)]
    status, answer = ask(service, {"user_id": GHOST_USER, "top_k": 5})
    assert status == 200 and answer["fallback"] == "unknown_user"
    assert [(r["movie_id"], r["score"]) for r in answer["recommendations"]] == want
    known = artifact.users.ids[1]
    status, answer = ask(service, {"users": [known, GHOST_USER, None], "top_k": 5})
    entries = answer["recommendations"]
    assert status == 200 and "fallback" not in entries[0] and entries[1]["fallback"] == "unknown_user"
    assert [(r["movie_id"], r["score"]) for r in entries[1]["recommendations"]] == want
    assert "error" in entries[2]


def test_error_mode_is_unchanged(rec):
    service = RatingService(rec, VERSION)
    assert ask(service, {"user_id": GHOST_USER, "movie_id": 101}) == (
        404,
        {"error": f"unknown user_id {GHOST_USER}", "model_version": VERSION},
    )
    status, answer = ask(service, {"user_id": GHOST_USER, "top_k": 3})
    assert status == 404 and "fallback" not in answer


# -- Arrow ---------------------------------------------------------------------------------------------------


def arrow_body(columns: dict, **meta: str) -> bytes:
    """An IPC stream of `columns` with `meta` as schema metadata."""
    table = pa.table(columns).replace_schema_metadata(meta or None)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_arrow_pairs_carry_a_fallback_column_matching_json(rec, service, artifact):
    users = [artifact.users.ids[0], str(GHOST_USER), artifact.users.ids[1], str(GHOST_USER), None]
    movies = [artifact.movies.ids[0], artifact.movies.ids[1], GHOST_MOVIE, GHOST_MOVIE, artifact.movies.ids[0]]
    answer = read_answer(
        RatingService(rec, VERSION, 100, cold_start="fallback").answer_arrow(
            arrow_body({"user_id": users, "movie_id": movies})
        )
    )
    assert answer["fallback"].to_pylist() == [None, "unknown_user", "unknown_movie", "unknown_both", None]
    _, json_answer = ask(
        service, {"instances": [{"user_id": u, "movie_id": m} for u, m in zip(users, movies, strict=True)]}
    )
    for rating, p in zip(answer["rating"].to_pylist(), json_answer["predictions"], strict=True):
        assert (rating is None) == ("rating" not in p)
        if rating is not None:
            assert rating == pytest.approx(p["rating"], abs=1e-6)
    plain = read_answer(
        RatingService(rec, VERSION, 100).answer_arrow(arrow_body({"user_id": users, "movie_id": movies}))
    )
    assert plain.column_names == ["rating", "error"]


def test_arrow_recommendations_carry_a_fallback_column(rec, artifact):
    scorer = RatingService(rec, VERSION, 100, cold_start="fallback")
    users = [artifact.users.ids[0], str(GHOST_USER)]
    answer = read_answer(scorer.answer_arrow(arrow_body({"user_id": users}, top_k="3"))).to_pylist()
    assert [row["fallback"] for row in answer] == [None] * 3 + ["unknown_user"] * 3
    rows, scores = rec.recommend(rec.average_user, 3, exclude_rated=False)
    want = [(artifact.movies.ids[r], round(float(s), 4)) for r, s in zip(rows, scores, strict=True)]
    assert [(row["movie_id"], row["score"]) for row in answer[3:]] == want


# -- options, archive ----------------------------------------------------------------------------------------


def test_cold_start_option_is_validated():
    assert ServiceOptions().cold_start == "error"
    assert ServiceOptions.from_config({"cold_start": "fallback"}).cold_start == "fallback"
    for bad in ("Fallback", "none", True, ["fallback"]):
        with pytest.raises(ValueError, match="cold_start must be one of error, fallback"):
            ServiceOptions.from_config({"cold_start": bad})


def test_build_mar_sets_cold_start_in_the_archive_only(tiny_artifact, tmp_path):
    mar = build_mar(tiny_artifact, "7.0", tmp_path, cold_start="fallback")
    config = load_model_config(mar)
    assert config["handler"]["cold_start"] == "fallback"
    assert {k: v for k, v in config["handler"].items() if k != "cold_start"} == {
        k: v for k, v in load_model_config()["handler"].items() if k != "cold_start"
    }
    assert config["batchSize"] == load_model_config()["batchSize"]
    assert load_model_config(build_mar(tiny_artifact, "7.1", tmp_path))["handler"]["cold_start"] == "error"
    with pytest.raises(ValueError, match="cold_start"):
        build_mar(tiny_artifact, "7.2", tmp_path, cold_start="maybe")


def test_build_mar_sets_the_batch_size_in_the_archive_only(tiny_artifact, tmp_path):
    config = load_model_config(build_mar(tiny_artifact, "7.4", tmp_path, batch_size=1))
    shipped = load_model_config()
    assert config["batchSize"] == 1 and shipped["batchSize"] == 32
    assert {k: v for k, v in config.items() if k != "batchSize"} == {
        k: v for k, v in shipped.items() if k != "batchSize"
    }
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="batch size"):
            build_mar(tiny_artifact, "7.5", tmp_path, batch_size=bad)


def test_build_mar_refuses_fallback_for_a_v1_artifact(tiny_artifact, tmp_path):
    with pytest.raises(ArchiveError, match="format v1"):
        build_mar(v1_copy(tiny_artifact, tmp_path), "7.3", tmp_path / "store", cold_start="fallback")


# -- train.py --cold-users -----------------------------------------------------------------------------------


def test_cold_users_are_held_out_and_the_fallback_is_measured_honestly(tmp_path, synth_data):
    out = tmp_path / "cold"
    ratings_csv = synth_data[0]
    assert train.main(["--ratings", str(ratings_csv), "--out", str(out), "--cold-users", "0.1", *TINY_TRAIN_ARGS]) == 0
    art = load_artifact(out)
    frame = load_ratings(ratings_csv).frame
    all_users = set(frame["user_id"])
    cold_users = all_users - set(art.users.ids)
    assert len(cold_users) == round(0.1 * len(all_users))
    meta = art.metadata
    c = meta["metrics"]["cold_users"]
    cold = frame[frame["user_id"].isin(cold_users)]
    assert (c["users"], c["ratings"], meta["data"]["cold_users"]) == (len(cold_users), len(cold), 0.1)

    # Recompute all three RMSEs from the files: the warm split as train.py made it, the served fallback.
    warm = frame[~frame["user_id"].isin(cold_users)].reset_index(drop=True)
    tr, _ = split_indices(len(warm), meta["train"]["val_frac"], meta["train"]["seed"])
    train_rows = warm.iloc[tr]
    mean = float(train_rows["rating"].mean())
    movie_mean = train_rows.groupby("movie_id")["rating"].mean()
    truth = cold["rating"].to_numpy(np.float64)
    baseline = cold["movie_id"].map(movie_mean).fillna(mean).to_numpy(np.float64)
    served_by = RatingService(Recommender(art), VERSION, cold_start="fallback")
    instances = [{"user_id": u, "movie_id": m} for u, m in zip(cold["user_id"], cold["movie_id"], strict=True)]
    _, answer = ask(served_by, {"instances": instances})
    served = np.array([p["rating"] for p in answer["predictions"]])
    assert {p["fallback"] for p in answer["predictions"]} <= {"unknown_user", "unknown_both"}

    def rmse(pred):
        return math.sqrt(np.mean((pred - truth) ** 2))

    assert c["rmse_global_mean"] == pytest.approx(rmse(np.full(len(truth), mean)), abs=1e-5)
    assert c["rmse_movie_mean"] == pytest.approx(rmse(baseline), abs=1e-5)
    assert c["rmse_fallback"] == pytest.approx(rmse(served), abs=1e-3)  # served ratings are rounded
    assert c["rmse_fallback"] < c["rmse_global_mean"]


def test_cold_users_must_be_a_fraction_below_one(tmp_path, capsys):
    for bad in ("1", "-0.1"):
        with pytest.raises(SystemExit):
            train.parse_args(["--out", str(tmp_path / "x"), "--cold-users", bad])
        assert "--cold-users" in capsys.readouterr().err


# -- a real TorchServe serving a fallback archive ------------------------------------------------------------


@pytest.fixture(scope="module")
def fallback_server(tmp_path_factory, tiny_artifact):
    """A real TorchServe on free ports serving movierec 5.0 (default), built with cold_start="fallback",
    and 5.1, the same artifact built with the default cold_start: error."""
    store = tmp_path_factory.mktemp("cold-store")
    build_mar(tiny_artifact, "5.0", store, cold_start="fallback")
    build_mar(tiny_artifact, "5.1", store)
    run_dir = tmp_path_factory.mktemp("cold-run")
    models = [f"movierec={archive_file('5.0')}", f"movierec={archive_file('5.1')}"]
    srv = torchserve.start(run_dir, store, models, ports=torchserve.Ports.free(), timeout=240)
    yield srv
    torchserve.stop(run_dir)


@pytest.mark.integration
def test_a_fallback_archive_answers_unknown_ids_over_http(fallback_server, rec, artifact):
    http = requests.Session()
    http.headers.update(fallback_server.auth("inference"))
    url = fallback_server.inference_url + "/predictions/movierec"
    movie = int(artifact.movies.ids[3])

    def post(body: bytes, content_type: str = "application/json") -> requests.Response:
        return http.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)

    r = post(orjson.dumps({"user_id": GHOST_USER, "movie_id": movie}))
    assert r.status_code == 200, r.text
    want = rec.predict(np.array([rec.average_user]), np.array([3]))[0]
    assert r.json()["fallback"] == "unknown_user" and r.json()["rating"] == pytest.approx(float(want), abs=1e-4)
    r = post(orjson.dumps({"user_id": GHOST_USER, "movie_id": GHOST_MOVIE}))
    assert r.json()["fallback"] == "unknown_both"
    assert r.json()["rating"] == round(artifact.cold_start.global_mean, 4)
    r = post(orjson.dumps({"user_id": GHOST_USER, "top_k": 4}))
    assert r.status_code == 200 and r.json()["fallback"] == "unknown_user" and len(r.json()["recommendations"]) == 4
    r = post(arrow_body({"user_id": [str(GHOST_USER)], "movie_id": [str(movie)]}), ARROW_STREAM)
    assert r.status_code == 200, r.text
    assert read_answer(r.content)["fallback"].to_pylist() == ["unknown_user"]


# -- `movierec score` against the real server: the fallback flag reaches the output ---------------------------


@pytest.fixture(scope="module")
def cold_client(fallback_server):
    """A client for the fallback server."""
    with MovieRecClient(
        fallback_server.inference_url, fallback_server.management_url, fallback_server.key_file, retries=2
    ) as c:
        yield c


@pytest.fixture(scope="module")
def cold_pairs(artifact, tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    """A scoring input mixing known pairs with unknown users, unknown movies and both, and one short row."""
    users, movies = artifact.users.ids, artifact.movies.ids
    pairs = [(str(users[i % len(users)]), str(movies[(3 * i) % len(movies)])) for i in range(40)]
    pairs[3], pairs[11] = (str(GHOST_USER), pairs[3][1]), (pairs[11][0], GHOST_MOVIE)
    pairs[12] = (str(GHOST_USER), GHOST_MOVIE)
    pairs[30] = (str(GHOST_USER), pairs[30][1])
    path = tmp_path_factory.mktemp("cold-score") / "in.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["user_id", "movie_id"])
        w.writerows(pairs)
        f.write("5\n")  # a short row: a local error, never sent
    return path, pairs


def run_score(client: MovieRecClient, source: Path, out: Path, version: str, protocol: str, **kw):
    """`movierec score --batch-model movierec --no-manage`: the version's own workers, 7 rows per request."""
    common = {"model": "movierec", "batch_model": "movierec", "manage": False, "chunk_size": 7, "progress": False}
    return score_csv(client, source, out, version=version, protocol=protocol, **common, **kw)


@pytest.mark.integration
def test_score_keeps_the_fallback_flag_over_both_protocols(cold_client, cold_pairs, tmp_path):
    source, pairs = cold_pairs
    summaries = {p: run_score(cold_client, source, tmp_path / f"{p}.csv", "5.0", p) for p in ("arrow", "json")}
    assert (tmp_path / "arrow.csv").read_bytes() == (tmp_path / "json.csv").read_bytes()
    with open(tmp_path / "arrow.csv", newline="") as f:
        header, *rows = csv.reader(f)
    assert header == ["user_id", "movie_id", "rating", "error", "fallback"]
    flags = {3: "unknown_user", 11: "unknown_movie", 12: "unknown_both", 30: "unknown_user"}
    assert [r[4] for r in rows] == [flags.get(i, "") for i in range(40)] + [""]
    assert rows[40][2:4] == ["", "line 42: missing movie_id"]
    for (user, movie), row in zip(pairs, rows, strict=False):
        single = cold_client.predict(user, movie, version="5.0")  # the server's own answer for the pair
        assert (float(row[2]), row[4]) == (single["rating"], single.get("fallback", "")), row
    for summary in summaries.values():
        assert (summary.rows_scored, summary.rows_with_errors, summary.rows_fallback) == (41, 1, 4)
        assert "4 cold-start fallbacks" in str(summary)

    # Parquet gets the same flags (null for personal predictions); a resumed CSV job the same bytes.
    run_score(cold_client, source, tmp_path / "out.parquet", "5.0", "arrow")
    out = pq.read_table(tmp_path / "out.parquet")
    assert out["fallback"].to_pylist() == [r[4] or None for r in rows]
    assert out["rating"].to_pylist()[:40] == [float(r[2]) for r in rows[:40]]
    full = (tmp_path / "json.csv").read_bytes()
    lines = full.splitlines(keepends=True)
    (tmp_path / "json.csv").write_bytes(b"".join(lines[:13]) + lines[13][:5])
    resumed = run_score(cold_client, source, tmp_path / "json.csv", "5.0", "json", resume=True)
    assert resumed.rows_skipped == 12 and resumed.rows_fallback == 2
    assert (tmp_path / "json.csv").read_bytes() == full


@pytest.mark.integration
def test_score_against_an_error_mode_archive_has_no_fallback_column(cold_client, cold_pairs, tmp_path):
    source, _ = cold_pairs
    for protocol in ("arrow", "json"):
        summary = run_score(cold_client, source, tmp_path / f"{protocol}.csv", "5.1", protocol)
        assert summary.rows_fallback is None and "fallback" not in str(summary)
        assert summary.rows_with_errors == 5
    assert (tmp_path / "arrow.csv").read_bytes() == (tmp_path / "json.csv").read_bytes()
    with open(tmp_path / "arrow.csv", newline="") as f:
        header, *rows = csv.reader(f)
    assert header == ["user_id", "movie_id", "rating", "error"]
    assert rows[3][2:] == ["", f"unknown user_id {GHOST_USER}"]
    assert rows[11][2:] == ["", f"unknown movie_id {GHOST_MOVIE}"]
    with pytest.raises(NotFound):
        cold_client.predict(GHOST_USER, int(rows[3][1]), version="5.1")
    run_score(cold_client, source, tmp_path / "out.parquet", "5.1", "arrow")
    assert pq.read_table(tmp_path / "out.parquet").column_names == ["user_id", "movie_id", "rating", "error"]
    # Resuming it against the fallback version would mix flagged and unflagged rows: refused, file untouched.
    before = (tmp_path / "json.csv").read_bytes()
    with pytest.raises(InputError, match="cannot resume"):
        run_score(cold_client, source, tmp_path / "json.csv", "5.0", "json", resume=True)
    assert (tmp_path / "json.csv").read_bytes() == before
