"""The client against a real TorchServe serving movierec 1.0 (default) and 2.0."""

from __future__ import annotations

import csv
import random

import orjson
import pytest

from model.artifact import load_artifact
from movierec.client import (
    ABRouter,
    AuthError,
    ConfigError,
    MovieRecClient,
    NotFound,
    ServerError,
    decide,
    evaluate,
    list_versions,
    promote,
    rollback,
    score_csv,
)
from movierec.client.ab import bucket
from movierec.client.scoring import BatchSettings
from tests.conftest import needs_java, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(server):
    """A client aimed at the fixture server by constructor arguments only."""
    with MovieRecClient(server.inference_url, server.management_url, server.key_file, retries=2) as c:
        yield c


@pytest.fixture(scope="module")
def ids(tiny_artifact):
    """Known raw user and movie IDs, as the artifact stores them."""
    art = load_artifact(tiny_artifact)
    return list(art.users.ids), list(art.movies.ids)


def test_predict_echoes_ids_and_names_the_version(client, ids):
    users, movies = ids
    one = client.predict(users[0], movies[0])
    assert one["user_id"] == users[0] and one["movie_id"] == movies[0] and one["model_version"] == "1.0"
    many = client.predict_many(
        [{"user_id": users[1], "movie_id": movies[2]}, {"user_id": 99999, "movie_id": movies[0]}]
    )
    assert "rating" in many["predictions"][0] and "99999" in many["predictions"][1]["error"]
    assert client.predict(users[0], movies[0], version="2.0")["model_version"] == "2.0"


def test_errors_carry_the_server_text(client, ids):
    users, movies = ids
    with pytest.raises(NotFound) as nf:
        client.predict(users[0], movies[0], version="9.9")
    assert nf.value.status == 404 and "9.9" in nf.value.message
    with pytest.raises(ServerError) as bad:
        client.infer({"movie_id": movies[0]})
    assert 400 <= bad.value.status < 500 and bad.value.message


def test_a_stale_key_is_reread_once(server, tmp_path, ids):
    users, movies = ids
    keys = orjson.loads(server.key_file.read_bytes())
    stale = {kind: {**entry, "key": "stale"} for kind, entry in keys.items()}
    path = tmp_path / "key_file.json"
    path.write_bytes(orjson.dumps(stale))
    c = MovieRecClient(server.inference_url, server.management_url, path)
    with pytest.raises(AuthError):
        c.predict(users[0], movies[0])
    path.write_bytes(orjson.dumps(keys))  # as when TorchServe rotates the key
    assert c.predict(users[0], movies[0])["model_version"] == "1.0"


def test_versions_and_the_batch_registration_waiting_at_zero_workers(client):
    """movierec-serve registers movierec-batch for each version at start: batch size 1, no workers."""
    infos = {i.version: i for i in list_versions(client)}
    assert infos["1.0"].is_default and not infos["2.0"].is_default
    batch = {i.version: i for i in list_versions(client, model="movierec-batch")}
    assert sorted(batch) == ["1.0", "2.0"] and batch["1.0"].is_default
    for info in batch.values():
        assert (info.min_workers, info.batch_size, info.max_batch_delay) == (0, 1, 1)
        assert info.url == f"movierec-{info.version}.mar"


def test_a_version_missing_from_the_store_cannot_be_scored_and_says_how_to_add_it(client, tmp_path):
    """Nothing registers over the API: the job stops before touching files and names the reload."""
    (tmp_path / "in.csv").write_text("user_id,movie_id\n1,2\n")
    with pytest.raises(ConfigError, match="movierec-9.9.mar there and run movierec-serve reload"):
        score_csv(client, tmp_path / "in.csv", tmp_path / "out.csv", version="9.9", progress=False)
    assert not (tmp_path / "out.csv").exists()


def test_promote_and_rollback(client, tmp_path, ids):
    users, movies = ids
    state = tmp_path / "ab_state.json"
    try:
        promote(client, "2.0", state_file=state)
        assert client.default_version() == "2.0"
        assert client.predict(users[0], movies[0])["model_version"] == "2.0"
        rollback(client, state_file=state)
        assert client.default_version() == "1.0"
    finally:
        client.set_default("1.0")


def test_sticky_router_reports_who_served(client, ids):
    users, movies = ids
    router = ABRouter(client, "1.0", "2.0", percent_b=50)
    for user in users[:20]:
        answer = router.predict(user, movies[0])
        assert answer["served_by"] == answer["model_version"] == router.version_for(user)
        assert answer["arm"] == router.arm(str(user))
    top = router.recommend(users[0], 5)
    assert top["served_by"] == router.version_for(users[0]) and len(top["recommendations"]) <= 5


@pytest.mark.parametrize("protocol", ["arrow", "json"])
def test_score_csv_end_to_end_with_resume(client, ids, tmp_path, protocol):
    users, movies = ids
    rng = random.Random(5)
    pairs = [(str(rng.choice(users)), str(rng.choice(movies))) for _ in range(3000)]
    pairs[10] = ("99999", pairs[10][1])
    with open(tmp_path / "in.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "movie_id", "extra"])
        w.writerows([u, m, "x"] for u, m in pairs)
    settings = BatchSettings(workers=1, idle_workers=0)
    summary = score_csv(
        client,
        tmp_path / "in.csv",
        tmp_path / "out.csv",
        chunk_size=400,
        concurrency=3,
        settings=settings,
        progress=False,
        protocol=protocol,
    )
    assert summary.rows_scored == 3000 and summary.rows_with_errors == 1
    full = (tmp_path / "out.csv").read_bytes()
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert [(r[0], r[1]) for r in rows] == pairs and "99999" in rows[10][3]
    direct = client.predict_many([{"user_id": u, "movie_id": m} for u, m in pairs[:50]], version="1.0")
    assert [float(r[2]) for r in rows[11:50]] == [p["rating"] for p in direct["predictions"][11:50]]
    lines = full.splitlines(keepends=True)
    (tmp_path / "out.csv").write_bytes(b"".join(lines[:1234]) + lines[1234][:3])
    resumed = score_csv(
        client,
        tmp_path / "in.csv",
        tmp_path / "out.csv",
        concurrency=2,
        settings=settings,
        resume=True,
        progress=False,
        protocol=protocol,
    )
    assert resumed.rows_skipped == 1233 and resumed.rows_scored == 3000 - 1233
    assert (tmp_path / "out.csv").read_bytes() == full
    assert all(len(v.get("workers", [])) == 0 for v in client.describe("movierec-batch"))


def test_score_survives_its_workers_being_killed_twice(server, batch_client, ids, tmp_path):
    """SIGKILL the movierec-batch workers twice mid-job: it waits for TorchServe to restart them and its
    output is byte-identical to a clean run's."""
    import threading

    import psutil

    users, movies = ids
    rng = random.Random(11)
    with open(tmp_path / "in.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "movie_id"])
        w.writerows((rng.choice(users), rng.choice(movies)) for _ in range(6000))
    job = {"chunk_size": 10, "concurrency": 2, "settings": BatchSettings(workers=1), "progress": False}
    out, results = tmp_path / "killed.csv", {}

    def run() -> None:
        try:
            results["summary"] = score_csv(batch_client, tmp_path / "in.csv", out, **job)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results["error"] = exc

    def batch_pids() -> list[int]:
        workers = batch_client.describe("movierec-batch", "1.0")[0]["workers"]
        return [w["pid"] for w in workers if w["status"] == "READY"]

    def wait_mid_job(what: str, condition) -> None:
        def running_and() -> bool:
            assert "error" not in results, f"the job failed: {results['error']!r}"
            assert runner.is_alive(), f"the job ended before {what}: make it longer"
            return condition()

        wait_until(running_and, 120, what, interval=0.02)

    runner = threading.Thread(target=run)
    runner.start()
    killed: list[int] = []
    try:
        for kill in (1, 2):
            size = out.stat().st_size if out.exists() else 0
            wait_mid_job(f"rows before kill {kill}", lambda s=size: out.exists() and out.stat().st_size > s + 2_000)
            wait_mid_job(f"a new worker before kill {kill}", lambda: set(batch_pids()) - set(killed))
            for pid in batch_pids():
                psutil.Process(pid).kill()
                killed.append(pid)
    finally:
        runner.join(300)
    assert "error" not in results, results.get("error")
    assert len(killed) >= 2 and results["summary"].rows_scored == 6000
    clean = score_csv(batch_client, tmp_path / "in.csv", tmp_path / "clean.csv", **job)
    assert clean.rows_with_errors == results["summary"].rows_with_errors
    assert out.read_bytes() == (tmp_path / "clean.csv").read_bytes()


def test_concurrent_score_jobs_do_not_scale_each_other_down(server, ids, tmp_path):
    """A short job that ends while a long one runs leaves the long one its workers."""
    import threading

    users, movies = ids
    rng = random.Random(7)

    def write(path, n):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["user_id", "movie_id"])
            w.writerows((rng.choice(users), rng.choice(movies)) for _ in range(n))

    write(tmp_path / "long.csv", 200_000)
    write(tmp_path / "short.csv", 1_000)
    results = {}

    def long_job():
        with MovieRecClient(server.inference_url, server.management_url, server.key_file) as c:
            results["long"] = score_csv(
                c,
                tmp_path / "long.csv",
                tmp_path / "long.out.csv",
                chunk_size=250,  # many small requests: it must outlast the short job by far
                concurrency=2,
                settings=BatchSettings(workers=2),
                progress=False,
            )

    with MovieRecClient(server.inference_url, server.management_url, server.key_file) as c:
        try:
            runner = threading.Thread(target=long_job)
            runner.start()
            out = tmp_path / "long.out.csv"
            wait_until(lambda: out.exists() and out.stat().st_size > 10_000, 120, "the long job's first rows", 0.05)
            short = score_csv(
                c, tmp_path / "short.csv", tmp_path / "short.out.csv", settings=BatchSettings(workers=1), progress=False
            )
            assert short.rows_scored == 1_000 and short.rows_with_errors == 0
            assert runner.is_alive(), "the long job ended before the short one: make it longer"
            workers = c.describe("movierec-batch", "1.0")[0]["workers"]
            assert len(workers) == 2  # the long job's 2, not the short job's idle 0
            runner.join(300)
            assert results["long"].rows_scored == 200_000 and results["long"].rows_with_errors == 0
            assert c.describe("movierec-batch", "1.0")[0]["workers"] == []
        finally:
            runner.join(300)


def test_ab_eval_scores_each_arm(client, ids, synth_data, tmp_path):
    ratings, _ = synth_data
    router = ABRouter(client, "1.0", "2.0", percent_b=50)
    a, b, bad = evaluate(router, ratings, chunk_size=200)
    assert bad == [] and a.scored > 0 and b.scored > 0 and a.request_errors == b.request_errors == 0
    assert 0 < a.rmse < 2 and 0 < b.rmse < 2 and a.latency(50) > 0
    assert decide(a, b, min_rows=10**9).winner is None


def test_cli_reaches_the_server_through_flags(server, client, ids, capsys, tmp_path):
    from movierec.client.cli import main

    users, movies = ids
    flags = ["--inference-url", server.inference_url, "--management-url", server.management_url]
    flags += ["--key-file", str(server.key_file)]
    assert main(["versions", "list", *flags]) == 0
    assert "* 1.0" in capsys.readouterr().out
    assert main(["ab", "--a", "1.0", "--b", "2.0", "--user", str(users[0]), "--movie", str(movies[0]), *flags]) == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert answer["served_by"] == answer["model_version"] == ("2.0" if bucket(users[0]) < 5_000 else "1.0")
    assert answer["rating"] == client.predict(users[0], movies[0], version=answer["served_by"])["rating"]
    (tmp_path / "in.csv").write_text(f"user_id,movie_id\n{users[0]},{movies[0]}\n")
    assert main(["score", str(tmp_path / "in.csv"), str(tmp_path / "out.csv"), "--version", "9.9", *flags]) == 2
    assert "movierec-serve reload" in capsys.readouterr().err


def key_refused(url: str, headers: dict[str, str]) -> bool:
    """Whether TorchServe refuses this key now (it answers an expired key like a wrong one: 400)."""
    import requests

    r = requests.get(url, headers=headers, timeout=10)
    return r.status_code == 400 and r.json().get("type") == "InvalidKeyException"


@needs_java
def test_expired_keys_are_rotated_with_the_api_key(model_store, tmp_path, ids):
    """TorchServe does not renew expired keys; a long job must rotate them and go on."""
    from pathlib import Path

    from movierec import torchserve

    users, movies = ids
    props = torchserve.read_properties(torchserve.DEFAULT_CONFIG)
    # 30 s: long enough for start-up on a busy host (torchserve.start's readiness poll does not renew
    # keys), short enough to wait out below.
    props["token_expiration_min"] = "0.5"
    config = tmp_path / "config.properties"
    torchserve.write_properties(config, props, "short-lived keys for this test")
    (tmp_path / "log4j2.xml").write_bytes((Path(torchserve.DEFAULT_CONFIG).parent / "log4j2.xml").read_bytes())
    run_dir = tmp_path / "run"
    srv = torchserve.start(
        run_dir, model_store, ["movierec=movierec-1.0.mar"], ports=torchserve.Ports.free(), config=config
    )
    try:
        with MovieRecClient(srv.inference_url, srv.management_url, srv.key_file, retries=1) as c:
            first = c.predict(users[0], movies[0])
            old_key = srv.token("inference")
            old_headers = {kind: srv.auth(kind) for kind in ("inference", "management")}
            wait_until(
                lambda: key_refused(srv.inference_url + "/ping", old_headers["inference"])
                and key_refused(srv.management_url + "/models", old_headers["management"]),
                timeout=120,
                what="TorchServe to expire the 30 s keys",
            )
            assert c.predict(users[0], movies[0])["rating"] == first["rating"]
            assert srv.token("inference") != old_key
            assert c.versions() == ["1.0"]  # the management key expired too
    finally:
        torchserve.stop(run_dir)
