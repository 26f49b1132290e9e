"""Shared fixtures: synthetic data and one tiny trained artifact per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests

import train
from movierec import torchserve
from movierec.client.api import MovieRecClient
from movierec.torchserve.archive import build_mar
from tests.synth import write_ratings

REPO = Path(__file__).resolve().parent.parent


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
