"""bench/gpu_check.py, the script for machines with CUDA, run end to end on the CPU."""

from __future__ import annotations

import json

from movierec.bench import gpu_check
from tests.conftest import TINY_TRAIN_ARGS


def test_gpu_check_runs_the_serve_path_and_finds_cpu_parity(synth_data, tmp_path, capsys):
    ratings, _ = synth_data
    train_args = " ".join(a for a in TINY_TRAIN_ARGS if a != "--quiet")
    code = gpu_check.main(
        ["--device", "cpu", "--out", str(tmp_path), "--ratings", str(ratings), "--train-args", train_args]
        + ["--pairs", "2000", "--repeat", "3"]
    )
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 0, result["handler_parity"]["problems"]
    assert result["handler_parity"]["max_abs_diff"] == 0.0  # same device, same code: identical
    assert 0 < result["train"]["val_rmse"] < 1.0
    assert result["timings"]["cpu"]["pairs_per_s"] > 0
    assert "handler on cpu vs CPU over 20 mixed requests" in capsys.readouterr().out


def test_compare_reports_every_kind_of_mismatch():
    cpu = [(200, {"rating": 3.0}), (200, {"recommendations": [{"movie_id": 1, "score": 4.0}]}), (404, {"error": "x"})]
    dev = [(200, {"rating": 3.1}), (200, {"recommendations": [{"movie_id": 2, "score": 4.0}]}), (200, {"rating": 1.0})]
    cpu.append((200, {"predictions": [{"rating": 2.0}, {"rating": 2.5}]}))
    dev.append((400, {"error": "too many"}))
    problems = gpu_check.compare(cpu, dev)["problems"]
    assert any("top-K [1] on cpu, [2]" in p for p in problems)
    assert any("request 2: 404 'x' on cpu, 200 None" in p for p in problems)
    assert any("largest rating difference 1.00e-01" in p for p in problems)
    assert any("request 3: 200 None on cpu, 400 'too many'" in p for p in problems)
