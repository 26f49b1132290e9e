"""The FastAPI peer of `make bench`: a real uvicorn process answering byte for byte as RatingService does."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from model.protocol import ARROW_STREAM, ArrowBody
from movierec.bench import inprocess, load, peer, pyload
from movierec.bench.settings import ARROW_KIND, Settings
from tests.conftest import needs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(tiny_artifact):
    """The in-process service the peer must match (same artifact, same handler options)."""
    return peer.build_service(tiny_artifact, "1.0")


@pytest.fixture(scope="module")
def running(tiny_artifact, tmp_path_factory):
    """A peer on a free port serving the tiny artifact as version 1.0."""
    p = peer.start_peer(tiny_artifact, tmp_path_factory.mktemp("peer"), "1.0")
    yield p
    p.stop()
    assert p.process.poll() is not None


def post(p: peer.Peer, body: bytes, content_type: str = "application/json", auth: bool = True) -> requests.Response:
    """One POST to the peer's predictions URL, as a TorchServe client would send it."""
    headers = {"Content-Type": content_type, **(p.auth() if auth else {})}
    return requests.post(f"{p.inference_url}/predictions/movierec", data=body, headers=headers, timeout=30)


def test_every_body_kind_gets_the_in_process_answer_byte_for_byte(running, service):
    bodies = inprocess.make_bodies(service, np.random.default_rng(0))
    bad = [b"{not json", b'{"user_id": 1}', b'{"user_id": 1, "movie_id": 2, "x": 3}', b'{"user_id": 1, "top_k": 0}']
    cases = [(kind, items[0]) for kind, items in bodies.items() if kind != ARROW_KIND] + [("bad", b) for b in bad]
    for kind, body in cases:
        local = service.handle_batch([body])[0]
        resp = post(running, body)
        assert (resp.status_code, resp.content) == (local.status, local.body), kind
        assert resp.headers["content-type"].startswith(local.content_type)
    assert {service.handle_batch([b])[0].status for b in bad} == {400}

    arrow = bodies[ARROW_KIND][0]
    resp = post(running, arrow, ARROW_STREAM)
    assert resp.status_code == 200 and resp.headers["content-type"] == ARROW_STREAM
    assert resp.content == service.handle_batch([ArrowBody(arrow)])[0].body


def test_a_request_without_the_token_is_refused(running):
    resp = post(running, b'{"user_id": 1, "movie_id": 2}', auth=False)
    assert resp.status_code == 401 and "token" in resp.json()["error"]


def test_a_peer_that_cannot_load_says_why(tmp_path):
    with pytest.raises(RuntimeError, match="exited"):
        peer.start_peer(tmp_path / "no-such-artifact", tmp_path, "1.0")


@needs("wrk")
def test_the_bench_measures_the_peer_with_its_own_instruments(running, service):
    bodies = inprocess.make_bodies(service, np.random.default_rng(1))
    load.check_answers(running, service, bodies)
    pyload.check_arrow_answer(running, service, bodies[ARROW_KIND][0])
    files = load.write_body_files(bodies, running.run_dir / "bodies")
    settings = Settings(rounds=1, duration=1, warmup=1)  # wrk needs at least 1 s
    single = next(cfg for cfg in load.SERVED if cfg.id == "single_c1")
    run, sent = load.measure(running, single, files["single"], settings)
    arrow = pyload.measure_py(running, pyload.PY_SERVED[0], bodies[ARROW_KIND], settings)
    for r in (run, arrow):
        assert r["non2xx"] == 0 and r["socket_errors"] == 0 and r["req_s"] > 0
        # One process: all of the server CPU is the peer's own, and it is measured.
        assert r["server_cpu_ms_req"] > 0 and r["frontend_cpu_ms_req"] == pytest.approx(r["server_cpu_ms_req"])
    assert sent >= run["req_s"] * 0.5
