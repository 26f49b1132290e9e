"""CSV streaming, in-order chunk writing and resume bookkeeping, with an injected chunk scorer."""

from __future__ import annotations

import csv
import random
import threading
import time

import pytest

from model.protocol import ServiceOptions
from movierec.client.api import MovieRecClient, ServerError
from movierec.client.jobs import JobLeases
from movierec.client.scoring import (
    PROBE_ID,
    BatchSettings,
    InputError,
    completed_rows,
    read_rows,
    score_csv,
    score_file,
)


def fake_rating(user_id: str, movie_id: str) -> float:
    return 1 + (int(user_id) * 7 + int(movie_id)) % 40 / 10


def scorer(delay: float = 0.0, fail_after: int | None = None, calls: list | None = None):
    """A chunk scorer with the server's answer shape: users above 900 are unknown."""
    lock = threading.Lock()
    count = [0]

    def score(instances):
        if instances[0]["user_id"] == PROBE_ID:  # the job's cold-start probe: an error-mode server's answer
            return [{**instances[0], "error": f"unknown user_id {PROBE_ID}"}]
        with lock:
            count[0] += 1
            n = count[0]
            if calls is not None:
                calls.append([(i["user_id"], i["movie_id"]) for i in instances])
        if fail_after is not None and n > fail_after:
            raise ServerError(503, "no worker available")
        if delay:
            time.sleep(random.random() * delay)
        out = []
        for i in instances:
            if not i["user_id"].isdigit() or int(i["user_id"]) > 900:
                out.append({**i, "error": f"unknown user_id {i['user_id']}"})
            else:
                out.append({**i, "rating": fake_rating(i["user_id"], i["movie_id"])})
        return out

    return score


def write_input(path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = [(str(rng.randint(1, 1000)), str(rng.randint(1, 1682))) for _ in range(n)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "movie_id", "timestamp"])
        for i, (u, m) in enumerate(pairs):
            w.writerow([u, m, i])
    return pairs


def read_output(path) -> list[list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["user_id", "movie_id", "rating", "error"]
    return rows[1:]


def test_output_keeps_input_order_under_concurrency(tmp_path):
    pairs = write_input(tmp_path / "in.csv", 2345)
    summary = score_file(
        tmp_path / "in.csv", tmp_path / "out.csv", scorer(delay=0.01), chunk_size=50, concurrency=8, progress=False
    )
    rows = read_output(tmp_path / "out.csv")
    assert [(r[0], r[1]) for r in rows] == pairs
    bad = [r for r in rows if r[3]]
    assert all(r[2] == "" and r[3] == f"unknown user_id {r[0]}" for r in bad)
    assert all(float(r[2]) == fake_rating(r[0], r[1]) for r in rows if not r[3])
    assert summary.rows_scored == 2345 and summary.rows_with_errors == len(bad) > 0
    assert summary.rows_skipped == 0 and summary.rows_per_s > 0


def test_progress_in_a_log_file_is_plain_lines_not_a_redrawn_bar(tmp_path, capsys, monkeypatch):
    import movierec.client.progress as progress

    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    write_input(tmp_path / "in.csv", 300)
    score_file(tmp_path / "in.csv", tmp_path / "out.csv", scorer(), chunk_size=100, concurrency=1)
    err = capsys.readouterr().err  # not a terminal, as in a log file
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("progress: ")]
    assert lines[-1].startswith("progress: 300/300 rows (100.0%), ") and lines[-1].endswith(" rows/s")
    assert len(lines) == 3


def test_ids_are_echoed_as_written_and_extra_columns_ignored(tmp_path):
    (tmp_path / "in.csv").write_text("movie_id,title,user_id\n0242,Kolya,196\n\n50, Star Wars ,7\n")
    calls: list = []
    score_file(tmp_path / "in.csv", tmp_path / "out.csv", scorer(calls=calls), progress=False)
    assert calls == [[("196", "0242"), ("7", "50")]]
    assert [r[:2] for r in read_output(tmp_path / "out.csv")] == [["196", "0242"], ["7", "50"]]


def test_short_rows_get_a_local_error_naming_the_line(tmp_path):
    (tmp_path / "in.csv").write_text("user_id,movie_id\n1,2\n3\n4,5\n")
    calls: list = []
    summary = score_file(tmp_path / "in.csv", tmp_path / "out.csv", scorer(calls=calls), progress=False)
    rows = read_output(tmp_path / "out.csv")
    assert rows[1] == ["", "", "", "line 3: missing movie_id"]
    assert calls == [[("1", "2"), ("4", "5")]] and summary.rows_with_errors == 1


def test_bad_header_and_settings_are_refused(tmp_path):
    (tmp_path / "in.csv").write_text("customer,movie_id\n1,2\n")
    with pytest.raises(InputError, match="lacks column user_id"):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", scorer(), progress=False)
    cap = ServiceOptions().max_instances  # the server's default cap: a bigger chunk would only get 413s
    with pytest.raises(InputError, match=f"chunk size must be 1..{cap}, got {cap + 1}"):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", scorer(), chunk_size=cap + 1, progress=False)
    with pytest.raises(InputError, match="same file"):
        score_file(tmp_path / "in.csv", tmp_path / "in.csv", scorer(), progress=False)


def test_wrong_number_of_predictions_stops_the_job(tmp_path):
    write_input(tmp_path / "in.csv", 10)
    with pytest.raises(ServerError, match="9 predictions for 10"):
        score_file(
            tmp_path / "in.csv", tmp_path / "out.csv", lambda inst: scorer()(inst)[:-1], progress=False, fallback=False
        )


def test_resume_after_failure_loses_and_duplicates_nothing(tmp_path):
    pairs = write_input(tmp_path / "in.csv", 1000)
    with pytest.raises(ServerError, match="no worker"):
        score_file(
            tmp_path / "in.csv",
            tmp_path / "out.csv",
            scorer(delay=0.005, fail_after=7),
            chunk_size=40,
            concurrency=3,
            progress=False,
        )
    done = len(read_output(tmp_path / "out.csv"))
    assert done % 40 == 0 and 0 < done < 1000
    calls: list = []
    summary = score_file(
        tmp_path / "in.csv", tmp_path / "out.csv", scorer(calls=calls), chunk_size=64, resume=True, progress=False
    )
    assert summary.rows_skipped == done and summary.rows_scored == 1000 - done
    assert [p for chunk in calls for p in chunk] == pairs[done:]
    score_file(tmp_path / "in.csv", tmp_path / "ref.csv", scorer(), progress=False)
    assert (tmp_path / "out.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()


def test_resume_truncates_a_partial_trailing_line(tmp_path):
    pairs = write_input(tmp_path / "in.csv", 30)
    score_file(tmp_path / "in.csv", tmp_path / "ref.csv", scorer(), progress=False)
    full = (tmp_path / "ref.csv").read_bytes()
    lines = full.splitlines(keepends=True)
    # Cut in the middle of the 13th data row, as a crash during a write would.
    (tmp_path / "out.csv").write_bytes(b"".join(lines[:13]) + lines[13][:5])
    assert completed_rows(tmp_path / "out.csv") == (12, len(b"".join(lines[:13])))
    summary = score_file(tmp_path / "in.csv", tmp_path / "out.csv", scorer(), resume=True, progress=False)
    assert summary.rows_skipped == 12 and summary.rows_scored == 18
    assert (tmp_path / "out.csv").read_bytes() == full
    assert [tuple(r[:2]) for r in read_output(tmp_path / "out.csv")] == pairs


def test_resume_of_a_finished_job_does_nothing(tmp_path):
    write_input(tmp_path / "in.csv", 25)
    score_file(tmp_path / "in.csv", tmp_path / "out.csv", scorer(), progress=False)
    before = (tmp_path / "out.csv").read_bytes()
    calls: list = []
    summary = score_file(tmp_path / "in.csv", tmp_path / "out.csv", scorer(calls=calls), resume=True, progress=False)
    assert summary.rows_scored == 0 and summary.rows_skipped == 25 and calls == []
    assert (tmp_path / "out.csv").read_bytes() == before


def test_resume_without_output_or_with_partial_header_starts_over(tmp_path):
    write_input(tmp_path / "in.csv", 5)
    summary = score_file(tmp_path / "in.csv", tmp_path / "out.csv", scorer(), resume=True, progress=False)
    assert summary.rows_scored == 5
    (tmp_path / "out2.csv").write_text("user_id,mov")
    summary = score_file(tmp_path / "in.csv", tmp_path / "out2.csv", scorer(), resume=True, progress=False)
    assert summary.rows_scored == 5 and len(read_output(tmp_path / "out2.csv")) == 5


def test_resume_refuses_a_foreign_output_file(tmp_path):
    write_input(tmp_path / "in.csv", 5)
    (tmp_path / "out.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="cannot resume"):
        score_file(tmp_path / "in.csv", tmp_path / "out.csv", scorer(), resume=True, progress=False)


def test_completed_rows_counts_records_with_quoted_newlines(tmp_path):
    path = tmp_path / "out.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["user_id", "movie_id", "rating", "error"])
        w.writerow(['a "quoted"\nid', "1", "", "unknown user_id, with comma"])
        w.writerow(["2", "3", "4.5", ""])
    complete = path.read_bytes()
    with open(path, "a", newline="") as f:
        f.write('"half\nopen')
    assert completed_rows(path) == (2, len(complete))


def test_read_rows_is_lazy(tmp_path):
    """The first row arrives before the reader reaches a trap far down the file (a reader that reads
    the whole file first, or decodes it all, fails here)."""
    pairs = write_input(tmp_path / "in.csv", 100_000)
    with open(tmp_path / "in.csv", "ab") as f:
        f.write(b"\xff\xfe,not utf-8\n")  # about 1.5 MB in: far beyond any read-ahead buffer
    rows = read_rows(tmp_path / "in.csv")
    assert next(rows) == (*pairs[0], "")
    assert next(rows) == (*pairs[1], "")
    with pytest.raises(UnicodeDecodeError):
        list(rows)  # the trap is real: reading on does reach it


class RecordingClient(MovieRecClient):
    """A client whose management and JSON inference calls are recorded instead of sent.

    Leases and scaling do not depend on the protocol, so the jobs below score over JSON.
    """

    def __init__(self, tmp_path, fail: bool = False) -> None:
        super().__init__("http://127.0.0.1:9", "http://127.0.0.1:9", tmp_path / "key_file.json")
        self.calls: list[tuple] = []
        self.fail = fail

    def default_version(self, model=None):
        return "1.0"

    def versions(self, model=None):
        # movierec-serve registers movierec-batch for every version of movierec at start.
        return ["1.0"] if model in ("movierec", "movierec-batch") else []

    def scale(self, version, min_worker, max_worker=None, *, model=None):
        self.calls.append(("scale", version, min_worker, model))

    def predict_many(self, instances, *, model=None, version=None):
        if self.fail:
            raise ServerError(400, "bad request")
        self.calls.append(("predict", model, version))
        return {"predictions": scorer()(instances), "model_version": version}


def test_score_csv_scales_the_batch_registration_up_and_back_down(tmp_path):
    write_input(tmp_path / "in.csv", 10)
    client = RecordingClient(tmp_path)
    settings = BatchSettings(workers=3, idle_workers=0)
    score_csv(client, tmp_path / "in.csv", tmp_path / "out.csv", settings=settings, progress=False, protocol="json")
    assert client.calls == [
        ("scale", "1.0", 3, "movierec-batch"),
        ("predict", "movierec-batch", "1.0"),  # the cold-start probe, once workers are up
        ("predict", "movierec-batch", "1.0"),
        ("scale", "1.0", 0, "movierec-batch"),
    ]


def test_overlapping_jobs_keep_each_others_workers_and_the_last_scales_down(tmp_path):
    """Job B starts and ends inside job A: B must not take A's workers away when it ends."""
    write_input(tmp_path / "a.csv", 10)
    write_input(tmp_path / "b.csv", 10)
    jobs = JobLeases(tmp_path / "jobs")
    inner_done = []

    class OverlappingClient(RecordingClient):
        def predict_many(self, instances, *, model=None, version=None):
            if not inner_done:
                inner_done.append(True)
                score_csv(
                    self,
                    tmp_path / "b.csv",
                    tmp_path / "b.out.csv",
                    settings=BatchSettings(workers=4),
                    progress=False,
                    jobs=jobs,
                    protocol="json",
                )
            return super().predict_many(instances, model=model, version=version)

    client = OverlappingClient(tmp_path)
    score_csv(
        client,
        tmp_path / "a.csv",
        tmp_path / "a.out.csv",
        settings=BatchSettings(workers=2),
        progress=False,
        jobs=jobs,
        protocol="json",
    )
    scales = [c[2] for c in client.calls if c[0] == "scale"]
    # A up to 2; B up to max(2, 4); B ends and leaves A's 2; A ends, last, and scales to 0.
    assert scales == [2, 4, 2, 0]
    assert jobs.workers("movierec-batch/1.0") == 0
    assert list((tmp_path / "jobs").glob("*.json")) == []


def test_leases_of_dead_jobs_do_not_pin_workers(tmp_path):
    """A job killed with SIGKILL leaves its lease file; the next job ignores and removes it."""
    import json
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    jobs = JobLeases(tmp_path / "jobs")
    jobs.directory.mkdir(parents=True)
    stale = jobs.directory / "stale.json"
    stale.write_text(json.dumps({"pid": int(dead.stdout), "target": "movierec-batch/1.0", "workers": 8}))
    (jobs.directory / "torn.json").write_text('{"pid": ')
    write_input(tmp_path / "in.csv", 10)
    client = RecordingClient(tmp_path)
    score_csv(
        client,
        tmp_path / "in.csv",
        tmp_path / "out.csv",
        settings=BatchSettings(workers=3),
        progress=False,
        jobs=jobs,
        protocol="json",
    )
    assert [c[2] for c in client.calls if c[0] == "scale"] == [3, 0]
    assert not stale.exists() and not (jobs.directory / "torn.json").exists()


def test_unwritable_lease_directory_is_a_clear_config_error(tmp_path):
    from movierec.client.api import ConfigError

    (tmp_path / "file").write_text("not a directory")
    jobs = JobLeases(tmp_path / "file" / "jobs")
    with pytest.raises(ConfigError, match="MOVIEREC_STATE_DIR"):
        with jobs.locked():
            pass


def test_leases_are_per_server_and_per_version(tmp_path):
    a = JobLeases.for_server("http://127.0.0.1:8081", tmp_path)
    b = JobLeases.for_server("http://127.0.0.1:9081", tmp_path)
    assert a.directory != b.directory and a.directory.parent == b.directory.parent
    with a.locked():
        lease = a.add("movierec-batch/1.0", 3)
        a.add("movierec-batch/2.0", 5)
    assert a.workers("movierec-batch/1.0") == 3 and a.workers("movierec-batch/2.0") == 5
    assert b.workers("movierec-batch/1.0") == 0
    a.remove(lease)
    assert a.workers("movierec-batch/1.0") == 0


def test_score_csv_scales_down_even_when_the_job_fails(tmp_path):
    write_input(tmp_path / "in.csv", 10)
    client = RecordingClient(tmp_path, fail=True)
    with pytest.raises(ServerError):
        score_csv(client, tmp_path / "in.csv", tmp_path / "out.csv", version="1.0", progress=False, protocol="json")
    assert client.calls[-1] == ("scale", "1.0", 0, "movierec-batch")


@pytest.mark.parametrize("header", ["user,item", "userId,movieId", "\ufeffuser_id,movie_id", "User ID,Movie_ID:token"])
def test_scoring_accepts_every_header_training_accepts(header, tmp_path):
    from model.data import load_ratings

    (tmp_path / "in.csv").write_text(f"{header},rating\n1,2,3\n", encoding="utf-8")
    assert load_ratings(tmp_path / "in.csv").frame[["user_id", "movie_id"]].values.tolist() == [["1", "2"]]
    assert [(r[0], r[1]) for r in read_rows(tmp_path / "in.csv")] == [("1", "2")]


@pytest.mark.parametrize(
    ("protocol", "paths", "named"),
    [
        ("json", ("in.parquet", "out.csv"), "in.parquet: Parquet needs the arrow protocol"),
        ("json", ("in.csv", "out.PQ"), "out.PQ: Parquet needs the arrow protocol"),
        ("grpc", ("in.csv", "out.csv"), "protocol must be one of arrow, json"),
    ],
)
def test_a_protocol_that_cannot_do_the_job_is_refused_before_registering(tmp_path, protocol, paths, named):
    client = RecordingClient(tmp_path)
    with pytest.raises(InputError, match=named):
        score_csv(client, *(tmp_path / p for p in paths), progress=False, protocol=protocol)
    assert client.calls == []


def test_the_last_job_leaves_idle_workers_up_for_the_next(tmp_path):
    """--idle-workers N: a fixed number of workers stays after the last job, so the next one finds them."""
    write_input(tmp_path / "in.csv", 10)
    client = RecordingClient(tmp_path)
    settings = BatchSettings(workers=3, idle_workers=2)
    score_csv(client, tmp_path / "in.csv", tmp_path / "out.csv", settings=settings, progress=False, protocol="json")
    assert [c[2] for c in client.calls if c[0] == "scale"] == [3, 2]


def test_the_old_linger_flag_still_parses_and_points_to_idle_workers(capsys):
    from movierec.client.cli import build_parser
    from movierec.client.cli_score import batch_job

    args = build_parser().parse_args(["score", "in.csv", "out.csv", "--linger", "120", "--idle-workers", "1"])
    job = batch_job(args)
    assert (job.settings.workers, job.settings.idle_workers) == (2, 1)
    assert "--linger is no longer used: keep workers up with --idle-workers N" in capsys.readouterr().err


def test_default_chunk_is_the_server_cap_for_arrow_and_5000_for_json(tmp_path):
    import numpy as np
    import pyarrow as pa

    from model.arrow import ARROW_STREAM
    from movierec.client.scoring import MAX_INSTANCES

    sizes: list[tuple[str, int]] = []

    class ArrowClient(RecordingClient):
        def predict_many(self, instances, *, model=None, version=None):
            sizes.append(("json", len(instances)))
            return super().predict_many(instances, model=model, version=version)

        def send(self, method, api, path, *, data=None, headers=None, **kw):
            assert headers["Content-Type"] == ARROW_STREAM
            table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
            sizes.append(("arrow", table.num_rows))
            answer = pa.table({"rating": np.full(table.num_rows, 3.0), "error": pa.nulls(table.num_rows, pa.string())})
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, answer.schema) as writer:
                writer.write_table(answer)

            class Answer:
                content = sink.getvalue().to_pybytes()

            return Answer()

    n = MAX_INSTANCES + 7000
    write_input(tmp_path / "in.csv", n)
    for protocol in ("arrow", "json"):
        score_csv(
            ArrowClient(tmp_path), tmp_path / "in.csv", tmp_path / f"{protocol}.csv", progress=False, protocol=protocol
        )
    # Each job's first request is its one-pair cold-start probe.
    assert sorted(s for p, s in sizes if p == "arrow") == [1, 7000, MAX_INSTANCES]
    assert sorted(s for p, s in sizes if p == "json") == sorted([1] + [5000] * (n // 5000) + [n % 5000])


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"route": "v2"}, "route must be one of predictions, v1"),
        ({"route": "v1"}, "the v1 route needs --no-manage"),
        ({"route": "v1", "manage": False, "version": "1.0"}, "the v1 route has no version"),
    ],
)
def test_the_v1_route_refuses_what_it_cannot_do_before_any_call(tmp_path, kwargs, named):
    write_input(tmp_path / "in.csv", 3)
    client = RecordingClient(tmp_path)
    with pytest.raises(InputError, match=named):
        score_csv(client, tmp_path / "in.csv", tmp_path / "out.csv", progress=False, **kwargs)
    assert client.calls == []
