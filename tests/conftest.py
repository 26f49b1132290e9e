"""Shared fixtures: synthetic data and one tiny trained artifact per test session.

Also the suite's rules for servers and programs: a test that starts TorchServe (Java) or the
FastAPI peer carries the `integration` marker (checked at collection, enforced at run time), a test
that needs a program (java, wrk, curl) skips with a one-line reason where it is missing, and every
wait on a condition goes through wait_until().
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

import train
from movierec import torchserve
from movierec.client.api import MovieRecClient
from movierec.torchserve.archive import build_mar
from tests.synth import write_ratings

REPO = Path(__file__).resolve().parent.parent

# Fixtures that start a server process, and the program each one needs. A test that uses one, directly
# or through another fixture, must carry the integration marker; `make test-fast` deselects those.
SERVER_FIXTURES = {
    "server": "java",  # the session's TorchServe (conftest) and test_serve_config's echo server
    "fallback_server": "java",  # test_cold_start
    "kserve_ts": "java",  # test_kserve
    "kserve_batch": "java",  # test_kserve
    "served": "java",  # test_security (test_client_ab's `served` wraps `server`)
    "running": None,  # test_peer: the FastAPI peer, a Python process
}
# What a server launch looks like on a command line: TorchServe's launcher, the peer.
SERVER_COMMANDS = {"ts.model_server": "TorchServe", "movierec.bench.peer": "the FastAPI peer"}


def needs(program: str) -> pytest.MarkDecorator:
    """Skip unless `program` is on PATH; README "Two commands" installs it, and .ci/run does."""
    return pytest.mark.skipif(
        shutil.which(program) is None, reason=f"{program} is not installed (README, Two commands)"
    )


needs_java = needs("java")


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what} after {timeout:g} s"
        time.sleep(interval)


def pytest_collection_modifyitems(config, items):
    """Refuse server-starting tests without the integration marker; skip those whose program is missing."""
    unmarked = []
    for item in items:
        uses = [name for name in item.fixturenames if name in SERVER_FIXTURES]
        if uses and item.get_closest_marker("integration") is None:
            unmarked.append(f"{item.nodeid} (uses {', '.join(uses)})")
        for program in sorted({SERVER_FIXTURES[name] for name in uses} - {None}):
            item.add_marker(needs(program))
    if unmarked:
        raise pytest.UsageError(
            "these tests start a server but lack @pytest.mark.integration:\n  " + "\n  ".join(unmarked)
        )


@pytest.fixture(autouse=True)
def _no_server_outside_integration_tests(request, monkeypatch):
    """A test without the integration marker fails if it launches TorchServe or the peer, by any path."""
    if request.node.get_closest_marker("integration") is not None:
        return

    class Popen(subprocess.Popen):  # the same name keeps reprs and messages as they were
        def __init__(self, args, *rest, **kwargs):
            argv = args if isinstance(args, list | tuple) else str(args).split()
            words = [str(word) for word in argv]
            for command, what in SERVER_COMMANDS.items():
                if command in words:
                    pytest.fail(f"{request.node.nodeid} starts {what}: mark it @pytest.mark.integration")
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Popen)


@pytest.fixture(autouse=True, scope="session")
def _private_tmpdir(tmp_path_factory):
    """$TMPDIR is per session (per pytest-xdist worker): torch-model-archiver stages each archive in
    $TMPDIR/MODEL_NAME, so two sessions archiving "movierec" at once would otherwise collide."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TMPDIR", str(tmp_path_factory.mktemp("tmp")))
    mp.setattr(tempfile, "tempdir", None)  # gettempdir() reads $TMPDIR again
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _private_client_state(tmp_path_factory):
    """Scoring-job leases go to a per-session directory, never the user's ~/.cache."""
    from movierec.client.jobs import ENV_STATE_DIR

    mp = pytest.MonkeyPatch()
    mp.setenv(ENV_STATE_DIR, str(tmp_path_factory.mktemp("client-state")))
    yield
    mp.undo()


TINY_TRAIN_ARGS = [
    "--epochs",
    "6",
    "--batch-size",
    "64",
    "--n-factors",
    "8",
    "--nh",
    "16",
    "--lr",
    "1e-2",
    "--wd",
    "0.01",
    "--p1",
    "0.05",
    "--p2",
    "0.1",
    "--seed",
    "1",
    "--quiet",
    "--threads",
    "1",
    "--rank-epochs",
    "10",
    "--rank-factors",
    "8",
    "--rank-users",
    "8",
]


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> tuple[Path, Path]:
    """(ratings.csv, movies.csv) with 60 users x 80 movies and 3000 learnable ratings."""
    return write_ratings(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, synth_data) -> Path:
    """An artifact directory trained once on the synthetic data."""
    out = tmp_path_factory.mktemp("artifact") / "v1"
    ratings, movies = synth_data
    assert train.main(["--ratings", str(ratings), "--movies", str(movies), "--out", str(out), *TINY_TRAIN_ARGS]) == 0
    return out


@pytest.fixture(scope="session")
def model_dir(tiny_artifact, tmp_path_factory) -> Path:
    """A directory laid out like an unpacked .mar: artifact/ next to the handler."""
    d = tmp_path_factory.mktemp("mar")
    shutil.copytree(tiny_artifact, d / "artifact")
    return d


@pytest.fixture(scope="session")
def tiny_artifact_b(tmp_path_factory, synth_data) -> Path:
    """A second, different model of the same data (for A/B tests): other seed and width."""
    out = tmp_path_factory.mktemp("artifact") / "v2"
    ratings, movies = synth_data
    args = list(TINY_TRAIN_ARGS)
    args[args.index("--nh") + 1] = "24"
    args[args.index("--seed") + 1] = "2"
    assert train.main(["--ratings", str(ratings), "--movies", str(movies), "--out", str(out), *args]) == 0
    return out


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, tiny_artifact, tiny_artifact_b) -> Path:
    """A model store holding movierec-1.0.mar and movierec-2.0.mar built by `make mar`."""
    store = tmp_path_factory.mktemp("model_store")
    build_mar(tiny_artifact, "1.0", store)
    build_mar(tiny_artifact_b, "2.0", store)
    return store


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_store):
    """A real TorchServe on free loopback ports serving movierec 1.0 (default) and 2.0."""
    run_dir = tmp_path_factory.mktemp("run")
    srv = torchserve.start(
        run_dir,
        model_store,
        ["movierec=movierec-1.0.mar", "movierec=movierec-2.0.mar"],
        ports=torchserve.Ports.free(),
        timeout=240,
    )
    yield srv
    torchserve.stop(run_dir)


@pytest.fixture(scope="module")
def http(server):
    """A requests session that sends the server's inference token."""
    s = requests.Session()
    s.headers.update(server.auth("inference"))
    return s


@pytest.fixture
def batch_client(server):
    """A client for batch jobs (score, recommend-all); the bulk registration is back at 0 workers afterwards."""
    with MovieRecClient(server.inference_url, server.management_url, server.key_file, retries=2) as c:
        yield c
        # movierec-serve registered it at start with 0 workers; leave it so for the next test.
        for version in c.versions("movierec-batch"):
            c.scale(version, 0, model="movierec-batch")
