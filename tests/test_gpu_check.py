"""movierec.bench.gpu_check: its parity check must find real differences, and run end to end on the CPU."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from model.artifact import load_artifact
from model.core import PARITY_TOL
from model.protocol import SCORE_DECIMALS
from movierec.bench import gpu_check
from tests.conftest import TINY_TRAIN_ARGS


@pytest.fixture(scope="module")
def bodies(tiny_artifact):
    art = load_artifact(tiny_artifact)
    return gpu_check.mixed_batch(list(art.users.ids), list(art.movies.ids), np.random.default_rng(0))


@pytest.fixture(scope="module")
def real_answers(model_dir, bodies):
    """What the CPU handler answers to the mixed batch."""
    return gpu_check.answers(gpu_check.load_handler(model_dir, None), bodies)


def first(answers, key):
    """Index of the first answer carrying `key`."""
    return next(i for i, (_, a) in enumerate(answers) if key in a)


def test_the_mixed_batch_covers_every_kind_of_answer(real_answers):
    statuses = {s for s, _ in real_answers}
    assert {200, 400, 404} <= statuses
    for key in ("rating", "predictions", "recommendations", "error"):
        first(real_answers, key)


def test_compare_finds_differences_injected_into_real_handler_output(real_answers):
    assert gpu_check.compare(real_answers, copy.deepcopy(real_answers))["problems"] == []

    within = copy.deepcopy(real_answers)
    within[first(within, "rating")][1]["rating"] += PARITY_TOL / 2
    assert gpu_check.compare(real_answers, within)["problems"] == []

    # Within PARITY_TOL before rounding, one rounding step apart after: seen on an H200 at 25M ratings.
    rounded = copy.deepcopy(real_answers)
    i = first(rounded, "rating")
    rounded[i][1]["rating"] = round(rounded[i][1]["rating"] + 10.0**-SCORE_DECIMALS, SCORE_DECIMALS)
    assert gpu_check.compare(real_answers, rounded)["problems"] == []

    rating = copy.deepcopy(real_answers)
    rating[first(rating, "rating")][1]["rating"] += 3 * PARITY_TOL
    [problem] = gpu_check.compare(real_answers, rating)["problems"]
    assert problem.startswith("largest rating difference 3.00e-04")

    instance = copy.deepcopy(real_answers)
    i = first(instance, "predictions")
    instance[i][1]["predictions"][-1]["rating"] -= 1.0
    assert gpu_check.compare(real_answers, instance)["max_abs_diff"] == pytest.approx(1.0, abs=1e-6)

    top_k = copy.deepcopy(real_answers)
    i = first(top_k, "recommendations")
    recs = top_k[i][1]["recommendations"]
    recs[0]["movie_id"], recs[1]["movie_id"] = recs[1]["movie_id"], recs[0]["movie_id"]
    assert [p for p in gpu_check.compare(real_answers, top_k)["problems"] if p.startswith(f"request {i}: top-K")]

    status = copy.deepcopy(real_answers)
    i = first(status, "error")
    status[i] = (200, {"rating": 3.0})
    assert any(p.startswith(f"request {i}: ") for p in gpu_check.compare(real_answers, status)["problems"])


def test_handler_parity_loads_two_handlers_and_catches_a_drifting_device(model_dir, bodies, monkeypatch):
    loaded = []

    def load_drifting(model_dir, gpu_id):
        handler = real_load(model_dir, gpu_id)
        loaded.append((gpu_id, handler))
        if len(loaded) == 2:  # the "device" handler scores 1e-3 too high
            rec = handler.service.rec
            exact = rec.predict
            monkeypatch.setattr(rec, "predict", lambda u, m: exact(u, m) + 1e-3)
        return handler

    real_load = gpu_check.load_handler
    monkeypatch.setattr(gpu_check, "load_handler", load_drifting)
    parity = gpu_check.handler_parity(model_dir, None, bodies)
    assert [gpu_id for gpu_id, _ in loaded] == [None, None]
    assert loaded[0][1].service.rec is not loaded[1][1].service.rec
    assert parity["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert parity["problems"] == ["largest rating difference 1.00e-03 > 0.0002 (rounded answers)"]


def test_gpu_check_runs_end_to_end_on_the_cpu(synth_data, tmp_path, capsys, monkeypatch):
    loads = []
    real_load = gpu_check.load_handler
    monkeypatch.setattr(gpu_check, "load_handler", lambda *a: loads.append(real_load(*a)) or loads[-1])
    ratings, _ = synth_data
    train_args = " ".join(a for a in TINY_TRAIN_ARGS if a != "--quiet")
    code = gpu_check.main(
        ["--device", "cpu", "--out", str(tmp_path), "--ratings", str(ratings), "--train-args", train_args]
        + ["--pairs", "2000", "--repeat", "3"]
    )
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 0, result["handler_parity"]["problems"]
    assert len(loads) == 2 and loads[0].service is not loads[1].service
    parity = result["handler_parity"]
    assert parity["requests"] == 20 and {200, 400, 404} <= set(parity["statuses"])
    assert parity["max_abs_diff"] <= gpu_check.ANSWER_TOL
    assert 0 < result["train"]["val_rmse"] < 1.0
    assert result["timings"]["cpu"]["pairs_per_s"] > 0
    assert "handler on cpu vs CPU over 20 mixed requests" in capsys.readouterr().out


def test_compare_reports_every_kind_of_mismatch():
    cpu = [(200, {"rating": 3.0}), (200, {"recommendations": [{"movie_id": 1, "score": 4.0}]}), (404, {"error": "x"})]
    dev = [(200, {"rating": 3.1}), (200, {"recommendations": [{"movie_id": 2, "score": 4.0}]}), (200, {"rating": 1.0})]
    cpu.append((200, {"predictions": [{"rating": 2.0}, {"rating": 2.5}]}))
    dev.append((400, {"error": "too many"}))
    cpu.append((200, {"predictions": [{"rating": 2.0}, {"error": "unknown user_id 7"}]}))
    dev.append((200, {"predictions": [{"rating": 2.0}, {"rating": 4.0}]}))
    problems = gpu_check.compare(cpu, dev)["problems"]
    assert any("top-K [1] on cpu, [2]" in p for p in problems)
    assert any("request 2: 404 'x' on cpu, 200 None" in p for p in problems)
    assert any("largest rating difference 1.00e-01" in p for p in problems)
    assert any("request 3: 200 None on cpu, 400 'too many'" in p for p in problems)
    assert any("request 3: 2 predictions on cpu, 0 on device" in p for p in problems)
    assert any("request 4 instance 1: 'unknown user_id 7' on cpu, None on device" in p for p in problems)
