"""Versions change without taking serving versions down or failing bulk jobs (README, "A/B tests").

Against a real TorchServe: a reload with a broken archive in the store is refused while 1.0 and 2.0
go on answering, one that TorchServe itself cannot load is rolled back, and `score` and `recommend-all`
jobs that meet a restart bring their workers back and write the same bytes as an undisturbed run.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
import requests

from movierec import torchserve
from movierec.client import recommend_all as recommend_all_module
from movierec.client.api import MovieRecClient
from movierec.client.recommend_all import recommend_all
from movierec.client.scoring import BatchSettings, score_csv
from movierec.client.versions import promote, rollback
from movierec.torchserve import errors
from movierec.torchserve.archive import MANIFEST
from movierec.torchserve.errors import is_no_worker
from tests.conftest import needs_java, wait_until
from tests.test_archive_vetting import flip_last_byte, rewrite_mar

pytestmark = [pytest.mark.integration, needs_java]


@pytest.fixture(scope="module")
def served(model_store, tmp_path_factory):
    """A TorchServe of its own (it is restarted here) serving movierec 1.0 and 2.0 from a store of its own."""
    store = tmp_path_factory.mktemp("reload-store")
    for name in ("movierec-1.0.mar", "movierec-2.0.mar"):
        shutil.copy(model_store / name, store)
    run_dir = tmp_path_factory.mktemp("reload-run")
    torchserve.start(run_dir, store, None, torchserve.Ports.free(), timeout=240)
    yield run_dir, store
    torchserve.stop(run_dir)


def with_version(version: str):
    """A MANIFEST.json rewrite that gives the archive another model version."""

    def change(data: bytes) -> bytes:
        manifest = json.loads(data)
        manifest["model"]["modelVersion"] = version
        return json.dumps(manifest).encode()

    return change


class Poller(threading.Thread):
    """Sends predictions to each version in turn until stopped, counting answers by status."""

    def __init__(self, server: torchserve.Server, versions: list[str]) -> None:
        super().__init__(daemon=True)
        self.server, self.versions = server, versions
        self.statuses: dict[str, list[int | str]] = {v: [] for v in versions}
        self.seconds: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        with requests.Session() as http:
            http.headers.update(self.server.auth("inference"))
            while not self.done.is_set():
                for version in self.versions:
                    url = f"{self.server.inference_url}/predictions/movierec/{version}".rstrip("/")
                    sent = time.perf_counter()
                    try:
                        status = http.post(url, json={"user_id": "39", "movie_id": "162"}, timeout=10).status_code
                    except requests.RequestException as exc:
                        status = type(exc).__name__
                    self.seconds.append(time.perf_counter() - sent)
                    self.statuses[version].append(status)


def reload_into(run_dir, outcome: dict) -> None:
    """movierec-serve reload, for a thread: its exception, if any, goes into outcome["reload"]."""
    try:
        torchserve.reload(run_dir, timeout=240)
    except BaseException as exc:
        outcome["reload"] = exc


def test_a_broken_archive_is_refused_and_the_serving_versions_keep_answering(served, capsys):
    """reload exits 1 within 60 s naming the file and reason; 1.0 and 2.0 answer 200 throughout; status lists it."""
    run_dir, store = served
    before = torchserve.running(run_dir)
    bad = rewrite_mar(
        store / "movierec-1.0.mar",
        store / "movierec-3.0.mar",
        {"artifact/model.pt": flip_last_byte, MANIFEST: with_version("3.0")},
    )
    poller = Poller(before, ["1.0", "2.0"])
    poller.start()
    try:
        wait_until(lambda: all(len(s) >= 3 for s in poller.statuses.values()), 60, "predictions before the reload")
        started = time.monotonic()
        assert torchserve.main(["reload", "--run-dir", str(run_dir)]) == 1
        took = time.monotonic() - started
        seen = {v: len(s) for v, s in poller.statuses.items()}
        wait_until(lambda: all(len(s) > seen[v] + 3 for v, s in poller.statuses.items()), 60, "predictions after")
    finally:
        poller.done.set()
        poller.join(30)
    err = capsys.readouterr().err
    with capsys.disabled():
        print(f"\nrefused in {took:.1f} s; answers meanwhile: { {v: len(s) for v, s in poller.statuses.items()} }")
    assert took < 60
    assert err.count("\n") == 1 and "refused movierec-3.0.mar: artifact/model.pt: checksum does not match" in err
    assert {status for answers in poller.statuses.values() for status in answers} == {200}
    assert torchserve.running(run_dir).pid == before.pid
    assert torchserve.main(["status", "--run-dir", str(run_dir)]) == 0
    assert "refused movierec-3.0.mar at " in capsys.readouterr().out

    # A stop and start with the archive still there serves the good versions and leaves it out.
    torchserve.stop(run_dir)
    again = torchserve.start(run_dir, store, None, before.ports, timeout=240)
    assert sorted(d["modelVersion"] for d in again.describe("movierec")) == ["1.0", "2.0"]
    assert torchserve.main(["status", "--run-dir", str(run_dir)]) == 0
    assert "refused movierec-3.0.mar" in capsys.readouterr().out
    bad.unlink()


def test_an_archive_torchserve_cannot_load_is_refused_and_the_previous_versions_come_back(served, capsys):
    """A handler that fails only at import passes the checks; reload then serves 1.0 and 2.0 again and exits 1."""
    run_dir, store = served

    def fails_at_import(code: bytes) -> bytes:
        return code + b"\nraise RuntimeError('broken on purpose')\n"

    bad = rewrite_mar(
        store / "movierec-1.0.mar",
        store / "movierec-4.0.mar",
        {"movierec_handler.py": fails_at_import, MANIFEST: with_version("4.0")},
    )
    started = time.monotonic()
    assert torchserve.main(["reload", "--run-dir", str(run_dir)]) == 1
    took = time.monotonic() - started
    err = capsys.readouterr().err
    with capsys.disabled():
        print(f"\nrolled back in {took:.1f} s: {err.strip()}")
    assert err.count("\n") == 1
    assert (
        "refused movierec-4.0.mar: TorchServe could not load movierec version 4.0 (2 tries): broken on purpose" in err
    )
    assert "the versions that served before serve again" in err
    assert torchserve.health(run_dir) == ""
    assert sorted(d["modelVersion"] for d in torchserve.running(run_dir).describe("movierec")) == ["1.0", "2.0"]
    # Still in the store unchanged, it is refused at once by the next reload, which stops nothing.
    pid = torchserve.running(run_dir).pid
    assert torchserve.main(["reload", "--run-dir", str(run_dir)]) == 1
    assert "refused movierec-4.0.mar: TorchServe could not load movierec version 4.0" in capsys.readouterr().err
    assert torchserve.running(run_dir).pid == pid
    assert torchserve.main(["status", "--run-dir", str(run_dir)]) == 0
    assert "refused movierec-4.0.mar" in capsys.readouterr().out
    bad.unlink()


def test_a_rollout_under_traffic_fails_no_request(served, tmp_path, capsys):
    """Promote 2.0, offer a corrupted 3.0, roll back: every prediction to the default, 1.0 and 2.0 answers 200."""
    run_dir, store = served
    server = torchserve.running(run_dir)
    client = MovieRecClient(server.inference_url, server.management_url, server.key_file)
    state = tmp_path / "ab_state.json"
    poller = Poller(server, ["", "1.0", "2.0"])
    poller.start()
    try:
        wait_until(lambda: all(len(s) >= 3 for s in poller.statuses.values()), 60, "predictions before the rollout")
        assert "was 1.0" in promote(client, "2.0", state_file=state)
        bad = rewrite_mar(
            store / "movierec-2.0.mar",
            store / "movierec-3.0.mar",
            {"artifact/model.pt": flip_last_byte, MANIFEST: with_version("3.0")},
        )
        assert torchserve.main(["reload", "--run-dir", str(run_dir)]) == 1
        bad.unlink()
        assert client.default_version() == "2.0"
        assert "1.0" in rollback(client, state_file=state)
        seen = len(poller.seconds)
        wait_until(lambda: len(poller.seconds) > seen + 9, 60, "predictions after the rollout")
    finally:
        poller.done.set()
        poller.join(30)
        client.close()
    p99 = float(np.percentile(poller.seconds, 99)) * 1000
    with capsys.disabled():
        print(f"\nrollout: {len(poller.seconds)} predictions, p99 {p99:.1f} ms")
    assert {status for answers in poller.statuses.values() for status in answers} == {200}
    assert client.default_version() == "1.0" and torchserve.running(run_dir).pid == server.pid


@pytest.fixture
def no_worker_answers(monkeypatch) -> list[bool]:
    """Whether each error answer the clients read was TorchServe's "has no worker" 503."""
    seen: list[bool] = []

    def counted(status, body):
        seen.append(found := is_no_worker(status, body))
        return found

    monkeypatch.setattr(errors, "is_no_worker", counted)
    return seen


def test_a_score_job_survives_a_restart_with_the_same_output(served, synth_data, tmp_path, no_worker_answers, capsys):
    """The job's input pauses mid-file while the server reloads; the job brings its workers back and finishes."""
    run_dir, _ = served
    server = torchserve.running(run_dir)
    ratings, _ = synth_data
    lines = ratings.read_text().splitlines(keepends=True)
    job = {"protocol": "json", "chunk_size": 50, "concurrency": 2, "progress": False}
    job["settings"] = BatchSettings(workers=1, idle_workers=0)
    with MovieRecClient(server.inference_url, server.management_url, server.key_file, retries=2) as client:
        score_csv(client, ratings, tmp_path / "undisturbed.csv", **job)
    expected = (tmp_path / "undisturbed.csv").read_bytes()

    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    out = tmp_path / "restarted.csv"
    outcome: dict[str, object] = {}

    def score() -> None:
        try:
            with MovieRecClient(server.inference_url, server.management_url, server.key_file, retries=2) as client:
                outcome["summary"] = score_csv(client, fifo, out, **job)
        except BaseException as exc:
            outcome["error"] = exc

    reload = functools.partial(reload_into, run_dir, outcome)

    scoring = threading.Thread(target=score, daemon=True)
    scoring.start()
    half = len(lines) // 2
    with open(fifo, "w") as rows:
        rows.writelines(lines[:half])
        rows.flush()
        wait_until(lambda: out.exists() and out.read_bytes().count(b"\n") >= half // 2, 60, "half the rows scored")
        restarting = threading.Thread(target=reload, daemon=True)
        restarting.start()
        wait_until(lambda: (now := torchserve.running(run_dir)) is None or now.pid != server.pid, 120, "a restart")
        rows.writelines(lines[half:])  # sent while the server restarts: refused connections, then no workers
    restarting.join(300)
    scoring.join(300)
    with capsys.disabled():
        print(f"\nrestarted job: {outcome.get('summary')}; 'has no worker' answers: {sum(no_worker_answers)}")
    assert "reload" not in outcome and "error" not in outcome, outcome
    assert outcome["summary"].rows_scored == len(lines) - 1
    assert out.read_bytes() == expected
    assert any(no_worker_answers)  # the restart left movierec-batch at 0 workers and the job scaled it back


def test_a_recommend_all_job_survives_a_restart_with_the_same_output(served, tmp_path, monkeypatch, no_worker_answers):
    """A request held back until the server has gone down for a reload; the job scales back up and finishes."""
    run_dir, _ = served
    server = torchserve.running(run_dir)
    job = {"per_request": 5, "concurrency": 1, "progress": False}
    job["settings"] = BatchSettings(workers=1, idle_workers=0)
    with MovieRecClient(server.inference_url, server.management_url, server.key_file, retries=2) as client:
        recommend_all(client, tmp_path / "undisturbed.csv", **job)
    expected = (tmp_path / "undisturbed.csv").read_bytes()

    sent, halfway, restarted = [], threading.Event(), threading.Event()
    real_post = recommend_all_module.post_arrow

    def held_post(*args, **kwargs):
        sent.append(1)
        if len(sent) == 4:  # the 4th request goes out only once the old server is gone
            halfway.set()
            restarted.wait(120)
        return real_post(*args, **kwargs)

    monkeypatch.setattr(recommend_all_module, "post_arrow", held_post)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            with MovieRecClient(server.inference_url, server.management_url, server.key_file, retries=2) as client:
                outcome["summary"] = recommend_all(client, tmp_path / "restarted.csv", **job)
        except BaseException as exc:
            outcome["error"] = exc

    reload = functools.partial(reload_into, run_dir, outcome)

    job_thread = threading.Thread(target=run, daemon=True)
    job_thread.start()
    wait_until(halfway.is_set, 60, "three requests answered")
    restarting = threading.Thread(target=reload, daemon=True)
    restarting.start()
    wait_until(lambda: (now := torchserve.running(run_dir)) is None or now.pid != server.pid, 120, "a restart")
    restarted.set()
    restarting.join(300)
    job_thread.join(300)
    assert "reload" not in outcome and "error" not in outcome, outcome
    assert (tmp_path / "restarted.csv").read_bytes() == expected
    assert any(no_worker_answers)
