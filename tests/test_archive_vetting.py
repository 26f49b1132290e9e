"""A store archive TorchServe could not load is refused before a restart, outside the server (README, "A/B tests").

Without Java: vetting.vet loads each new archive in a child process with our model/ code. The
reload itself against a real TorchServe is in test_reload_safety.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from movierec.torchserve import vetting
from movierec.torchserve.errors import NoWorker, ServerError, is_no_worker, raise_for_response
from movierec.torchserve.management import recovering


def rewrite_mar(source: Path, target: Path, change: dict[str, bytes]) -> Path:
    """A copy of the archive `source` with some members' bytes replaced (a member mapped to b"" keeps its name)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, change[info.filename](data) if info.filename in change else data)
    return target


def flip_last_byte(data: bytes) -> bytes:
    """The same bytes with the last one changed (a corrupted file of the same size)."""
    return data[:-1] + bytes([data[-1] ^ 0xFF])


@pytest.fixture
def store(model_store, tmp_path) -> Path:
    """A store with the good movierec-1.0.mar and four broken archives."""
    own = tmp_path / "store"
    own.mkdir()
    good = shutil.copy(model_store / "movierec-1.0.mar", own)
    rewrite_mar(good, own / "movierec-3.0.mar", {"artifact/model.pt": flip_last_byte})
    rewrite_mar(good, own / "movierec-4.0.mar", {"movierec_handler.py": lambda code: code + b"\ndef broken(:\n"})

    def bad_option(config: bytes) -> bytes:
        return config.replace(b"max_top_k: 100", b"max_topk: 100")

    rewrite_mar(good, own / "movierec-5.0.mar", {"model-config.yaml": bad_option})
    (own / "movierec-6.0.mar").write_bytes(b"not a zip")
    return own


def test_a_broken_archive_is_refused_with_its_reason_and_good_ones_pass(store, tmp_path):
    """A corrupted model.pt, a handler that does not parse, a bad handler option, a non-zip: each refused, named."""
    files = sorted(p.name for p in store.iterdir())
    started = time.monotonic()
    refused = vetting.vet(tmp_path / "run", store, files)
    took = time.monotonic() - started
    assert sorted(refused) == ["movierec-3.0.mar", "movierec-4.0.mar", "movierec-5.0.mar", "movierec-6.0.mar"]
    assert (
        refused["movierec-3.0.mar"]
        == "artifact/model.pt: checksum does not match metadata.json (corrupted or replaced)"
    )
    assert "SyntaxError" in refused["movierec-4.0.mar"] or "invalid syntax" in refused["movierec-4.0.mar"]
    assert "unknown setting 'max_topk'" in refused["movierec-5.0.mar"]
    assert "not a zip file" in refused["movierec-6.0.mar"]
    assert all("\n" not in reason for reason in refused.values())
    assert took < vetting.CHECK_S
    listed = {r.file: r for r in vetting.refusals(tmp_path / "run")}
    assert listed.keys() == refused.keys() and listed["movierec-3.0.mar"].reason == refused["movierec-3.0.mar"]
    state = json.loads((tmp_path / "run" / vetting.STATE_FILE).read_text())
    assert list(state["accepted"]) == ["movierec-1.0.mar"]


def test_an_unchanged_archive_is_not_checked_again_and_a_removed_one_is_forgotten(store, tmp_path, monkeypatch):
    """The second vet of a good archive runs no child; deleting a refused archive clears its refusal."""
    run_dir = tmp_path / "run"
    assert vetting.vet(run_dir, store, ["movierec-1.0.mar", "movierec-3.0.mar"]).keys() == {"movierec-3.0.mar"}

    def no_child(*args, **kwargs):
        raise AssertionError(f"checked again: {args}")

    monkeypatch.setattr(subprocess, "run", no_child)
    assert vetting.vet(run_dir, store, ["movierec-1.0.mar"]) == {}
    assert vetting.refusals(run_dir) == []


def test_a_hanging_check_is_blamed_on_its_archive_in_time(store, tmp_path, monkeypatch):
    """A child that never answers refuses the archive it was on, within the deadline."""
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    monkeypatch.setattr(vetting.sys, "executable", str(hang))
    started = time.monotonic()
    refused = vetting.vet(tmp_path / "run", store, ["movierec-1.0.mar"], deadline_s=2)
    assert refused == {"movierec-1.0.mar": "the check did not finish within 2 s"}
    assert time.monotonic() - started < 10
    assert vetting.refusals(tmp_path / "run")[0].final is False  # checked again next time
    monkeypatch.undo()
    assert vetting.vet(tmp_path / "run", store, ["movierec-1.0.mar"]) == {}


def test_a_refusal_holds_until_the_archive_changes(store, tmp_path, monkeypatch):
    """A refused archive is not checked again while unchanged; rebuilt (other bytes), it is."""
    run_dir = tmp_path / "run"
    assert vetting.vet(run_dir, store, ["movierec-6.0.mar"]).keys() == {"movierec-6.0.mar"}
    real_run = subprocess.run
    children = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: children.append(a) or real_run(*a, **kw))
    assert vetting.vet(run_dir, store, ["movierec-6.0.mar"]).keys() == {"movierec-6.0.mar"}
    assert children == []
    shutil.copy(store / "movierec-1.0.mar", store / "movierec-6.0.mar")
    assert vetting.vet(run_dir, store, ["movierec-6.0.mar"]) == {}
    assert len(children) == 1


def test_no_worker_503_is_told_apart_and_revives_the_job():
    """TorchServe's "has no worker" 503 becomes NoWorker; recovering runs the job's scale-up, then resends."""
    body = {"code": 503, "type": "ServiceUnavailableException", "message": 'Model "movierec-batch" Version 1.0 has no worker to serve inference request. Please use scale workers API to add workers.'}  # fmt: skip
    assert is_no_worker(503, body)
    assert not is_no_worker(503, {**body, "message": "Model movierec-batch has reached its job queue limit"})
    assert not is_no_worker(503, {"error": "has no worker", "model_version": "1.0"})

    class Answer:
        status_code, url = 503, "http://x/predictions/movierec-batch/1.0"
        content = json.dumps(body).encode()

    with pytest.raises(NoWorker):
        raise_for_response(Answer())
    events: list[str] = []
    answers = iter([NoWorker(503, "no worker"), NoWorker(503, "no worker"), "scored"])

    def call():
        answer = next(answers)
        events.append("sent")
        if isinstance(answer, Exception):
            raise answer
        return answer

    def revive():
        events.append("scaled")
        if events.count("scaled") == 1:
            raise ServerError(503, "still starting")  # a failed scale-up is waited out like the rest

    assert recovering(call, sleep=lambda s: events.append(f"wait {s}"), revive=revive) == "scored"
    assert events == ["sent", "scaled", "wait 0.5", "sent", "scaled", "wait 1.0", "sent"]


def test_a_start_gives_up_on_a_version_whose_worker_failed_to_load_twice(tmp_path):
    """load_failure reads the model log from the start's offset and names the version and the exception."""
    from movierec.torchserve.instance import load_failure

    line = "2026-12-03T17:20:05,015 [INFO ] W-9002-movierec_4.0-stdout MODEL_LOG - Failed to load model movierec, exception broken on purpose\n"  # fmt: skip
    log = tmp_path / "model_log.log"
    log.write_text(line * 2)
    expected = {"movierec": ["1.0", "4.0"]}
    assert load_failure(log, log.stat().st_size, expected) == ""  # before this start
    log.write_text(line * 3)
    offset = len(line)
    assert load_failure(log, offset, expected) == "TorchServe could not load movierec version 4.0 (2 tries): broken on purpose"  # fmt: skip
    assert load_failure(log, 2 * offset, expected) == ""  # once is not enough
    assert load_failure(log, 0, {"movierec": ["1.0"]}) == ""
    assert load_failure(tmp_path / "none.log", 0, expected) == ""
