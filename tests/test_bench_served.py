"""The benchmark's Python load generator and Arrow answer check against a real TorchServe."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model.artifact import load_artifact
from model.core import Recommender
from model.service import RatingService
from movierec.bench import inprocess, pyload
from movierec.bench.settings import ARROW_KIND, Settings


@pytest.fixture(scope="module")
def service(tiny_artifact) -> RatingService:
    """The in-process service of the archive the `server` fixture serves as movierec 1.0 (its default)."""
    return RatingService(Recommender(load_artifact(tiny_artifact)), model_version="1.0")


@pytest.fixture(scope="module")
def bodies(service) -> dict[str, list[bytes]]:
    return inprocess.make_bodies(service, np.random.default_rng(0))


@pytest.mark.integration
def test_arrow_bodies_are_measured_and_checked_on_a_real_server(server, service, bodies):
    pyload.check_arrow_answer(server, service, bodies[ARROW_KIND][0], model="movierec")
    settings = Settings(rounds=1, duration=1, warmup=0)
    for cfg in pyload.PY_SERVED:
        run = pyload.measure_py(server, dataclasses.replace(cfg, model="movierec"), bodies[cfg.bodies], settings)
        assert run["non2xx"] == 0 and run["socket_errors"] == 0
        assert run["req_s"] > 0 and run["pairs_s"] == pytest.approx(run["req_s"] * 10_000)
        assert 0 < run["p50_ms"] <= run["p99_ms"] and run["server_cpu_ms_req"] > 0


@pytest.mark.integration
def test_refusals_are_counted_and_a_wrong_answer_is_caught(server, service, bodies):
    # JSON bodies announced as Arrow are refused: every answer is a non-2xx.
    url = f"{server.inference_url}/predictions/movierec"
    headers = pyload.headers_for(server, pyload.ARROW_STREAM)
    refused = pyload.closed_loop(url, bodies["bulk10k"][:2], headers, connections=2, seconds=0.5)
    assert refused["requests"] > 0 and refused["status_errors"] == refused["requests"]
    with pytest.raises(RuntimeError, match="differ"):
        # movierec 2.0 (another model) answers with other ratings than the 1.0 service.
        pyload.check_arrow_answer(server, service, bodies[ARROW_KIND][0], model="movierec/2.0")


@pytest.mark.integration
def test_the_csv_section_scores_through_the_batch_registration_over_both_protocols(
    server, batch_client, service, tmp_path
):
    """`make bench`'s last section: scale movierec-batch, score one CSV over Arrow and JSON, same file.

    batch_client scales movierec-batch back to 0 afterwards: the section's jobs leave their workers lingering.
    """
    from movierec.bench import load

    found = load.bench_csv(server, service, tmp_path, 3_000)
    assert found["same_output"] and found["rows"] == 3_000
    assert sorted(found["configs"]) == ["score_arrow", "score_json"]
    assert all(run["rows_s"] > 0 for run in found["configs"].values())
    assert load.count_lines(tmp_path / "scored-arrow.csv") == 3_001  # header + one line per row
