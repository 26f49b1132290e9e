"""The batch workers a `movierec score` job leaves up for --linger seconds, on a real TorchServe."""

from __future__ import annotations

import csv
import random
import time

import psutil
import pytest

from model.artifact import load_artifact
from movierec.client.api import MovieRecClient
from movierec.client.jobs import JobLeases
from movierec.client.scoring import BatchSettings, score_csv
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

LINGER_S = 6.0
TARGET = "movierec-batch/1.0"


@pytest.fixture
def client(server):
    with MovieRecClient(server.inference_url, server.management_url, server.key_file) as c:
        yield c


def write_pairs(path, tiny_artifact, n: int) -> None:
    art = load_artifact(tiny_artifact)
    rng = random.Random(3)
    users, movies = [str(u) for u in art.users.ids], [str(m) for m in art.movies.ids]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "movie_id"])
        w.writerows((rng.choice(users), rng.choice(movies)) for _ in range(n))


def batch_workers(client) -> list[dict]:
    return client.describe("movierec-batch", "1.0")[0]["workers"]


def lingering(token: str) -> bool:
    """Whether the lingerer process holding `token` still runs (it exits once its linger is over)."""
    for proc in psutil.process_iter(["cmdline", "status"]):
        if token in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            return True
    return False


def test_a_second_job_within_the_linger_finds_the_workers_ready_and_they_go_down_after(
    client, server, tiny_artifact, tmp_path
):
    write_pairs(tmp_path / "in.csv", tiny_artifact, 2000)
    jobs = JobLeases.for_server(server.management_url, tmp_path / "state")
    settings = BatchSettings(workers=2, linger_s=LINGER_S)
    common = {"settings": settings, "jobs": jobs, "progress": False}
    try:
        score_csv(client, tmp_path / "in.csv", tmp_path / "a.csv", **common)
        first_end, first_linger = time.monotonic(), jobs.linger_token(TARGET)
        up = batch_workers(client)
        assert len(up) == 2 and {w["status"] for w in up} == {"READY"} and lingering(first_linger)
        # The second job comes well inside the first one's linger, so its own linger ends clearly later.
        time.sleep(max(0.0, first_end + LINGER_S / 3 - time.monotonic()))
        second = score_csv(client, tmp_path / "in.csv", tmp_path / "b.csv", **common)
        assert second.rows_scored == 2000 and second.rows_with_errors == 0
        # The same worker processes served the second job: none was started for it.
        assert sorted(w["pid"] for w in batch_workers(client)) == sorted(w["pid"] for w in up)
        assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
        # Once the first job's lingerer is done, the second job's (newer) linger still holds the workers up.
        assert jobs.linger_token(TARGET) != first_linger
        wait_until(lambda: not lingering(first_linger), LINGER_S + 30, "the first job's lingerer to end")
        assert len(batch_workers(client)) == 2
        wait_until(lambda: not batch_workers(client), LINGER_S + 60, "the second linger to scale the workers down")
        assert batch_workers(client) == []
    finally:
        client.scale("1.0", 0, model="movierec-batch")
