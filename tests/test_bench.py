"""movierec-bench without a server: the report from fixed results, the noise meter, timing summaries."""

from __future__ import annotations

import os

import numpy as np
import pytest

from model.artifact import load_artifact
from model.core import Recommender
from model.service import RatingService
from movierec.bench import bench, inprocess, load, report
from movierec.bench.meter import CpuMeter, CpuSample, busy_cores, noise_cores, parse_proc_stat, summarize
from movierec.bench.settings import QUICK, Settings


def served_run(req_s: float, pairs: int, p50: float, p99: float, cpu: float = 1.46, frontend: float = 0.755) -> dict:
    """One round of a served configuration, as load.measure records it."""
    return {
        "req_s": req_s,
        "pairs_s": req_s * pairs,
        "p50_ms": p50,
        "p99_ms": p99,
        "non2xx": 0.0,
        "socket_errors": 0.0,
        "server_cpu_ms_req": cpu,
        "frontend_cpu_ms_req": frontend,
        "log_bytes_req": 0.0,
        "noise_cores": 0.01,
    }


def inprocess_run(calls_s: float, pairs: int, p50: float) -> dict:
    """One round of an in-process configuration, as meter.summarize records it."""
    return {"calls": 100, "pairs_s": calls_s * pairs, "calls_s": calls_s, "p50_ms": p50, "p99_ms": 2 * p50}


@pytest.fixture
def results() -> dict:
    """A small fixed results dict, shaped like the one bench.main writes."""
    return {
        "date": "2026-11-29 10:00 UTC",
        "mode": "quick",
        "command": ".venv/bin/movierec-bench --quick",
        "settings": {**vars(Settings(rounds=2))},
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "ram_gib": 8.0,
            "python": "3.11",
            "torch": "2",
            "torchserve": "0.12.0",
            "numpy": "2",
            "orjson": "3",
            "java": "java 17",
            "wrk": "wrk 4",
            "torch_threads_env": "unset",
        },
        "load_start": "0.1 0.2 0.3",
        "load_end": "0.4 0.5 0.6",
        "inprocess": {
            "configs": {
                "predict_10k": [inprocess_run(900, 10_000, 1.0), inprocess_run(1000, 10_000, 1.2)],
                "recommend": [inprocess_run(4800, 0, 0.185), inprocess_run(5000, 0, 0.19)],
                "new_path": [inprocess_run(10, 1, 0.5)],
            },
            "stages_10k_ms": {"parse": 3.0, "infer": 2.0, "render": 1.0},
            "noise_cores": [0.01, 0.03],
        },
        "served": {
            "configs": {
                "single_c32": [served_run(6155, 1, 4.83, 25.0)],
                "bulk10k_c1": [served_run(71.1, 10_000, 14.7, 18.2)],
                "topk_c1": [served_run(411, 0, 2.36, 4.26)],
                "bulk10k_c4_batchreg": [served_run(182, 10_000, 21.0, 33.2)],
                "topk_c1_batchreg": [served_run(776, 0, 1.22, 2.99)],
                "single_c1": [],  # not measured this time: no row
            },
            "warmup": [{"requests": 1000.0, "status_errors": 0.0}],
            "log_bytes_per_request": 0.07,
            "requests_measured": 32_000.0,
            "model_config": {"minWorkers": 1, "batchSize": 32, "maxBatchDelay": 1},
        },
    }


def rows(markdown: str) -> list[list[str]]:
    """The cells of every Markdown table row."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("|")]


def test_report_checks_targets_and_renders_one_row_per_configuration(results):
    text = report.report(results)
    cells = rows(text)
    targets = {r[0]: r[1:] for r in cells if "≥" in r[0] or "≤" in r[0]}
    assert targets["served 10k-pair bulk ≥ 1.00 M pairs/s"] == [
        "711 k pairs/s (c1), 1.82 M pairs/s (c4, bulk registration)",
        "met",
    ]
    assert targets["single pairs at c32 ≥ 5,000 req/s with p99 ≤ 20 ms"] == ["6,155 req/s, p99 25.0 ms", "**missed**"]
    assert targets["top-K p50 ≤ 2 ms (served, c1)"] == ["2.36 ms; 1.22 ms without dynamic batching", "**missed**"]

    served = [r for r in cells if len(r) == 9 and r[0] != "request, concurrency" and not r[0].startswith("---")]
    assert [r[0] for r in served] == [
        "single pair, c32",
        "bulk 10k pairs, c1",
        "top-10, c1",
        "bulk 10k pairs, c4, bulk registration",
        "top-10, c1, bulk registration",
    ]
    assert served[1][1:3] == ["71", "711 k"] and served[2][2] == "–"
    assert served[0][6] == "1.46 (0.755 + 0.705)"  # server CPU split into JVM + worker

    inproc = {r[0] + " | " + r[1]: r[2:] for r in cells if len(r) == 7}
    # Two rounds: median with the min-max over rounds.
    assert inproc["factorised `predict` | 10,000"][:3] == [
        "9.50 M (9.00 M–10.00 M)",
        "950 (900–1,000)",
        "1.10 (1.00–1.20)",
    ]
    assert inproc["`recommend(k=10)` | 1 user"][-1] == "p50 ≤ 2 ms: met"
    assert "new_path | " in inproc  # an id without a display name still gets its row
    assert "parse 3.00 ms (50%), infer 2.00 ms (33%), render 1.00 ms (17%); total 6.00 ms." in text
    assert "median of 0.02 cores (max 0.03) during the in-process measurements" in text
    assert "## 3. Batch scoring" in text and "Not measured in this run." in text


def test_report_without_served_numbers_has_no_targets(results):
    results["served"] = {"skipped": "wrk is not installed"}
    text = report.report(results)
    assert "## Targets" not in text
    assert "**Skipped:** wrk is not installed" in text


def test_every_configuration_id_has_a_display_name():
    assert len({cfg.id for cfg in load.SERVED}) == len(load.SERVED)
    assert [cfg.id for cfg in load.SERVED] == list(report.SERVED_NAMES)


def test_inprocess_measures_every_named_configuration_on_a_tiny_model(tiny_artifact, results):
    rec = Recommender(load_artifact(tiny_artifact))
    service = RatingService(rec, model_version="bench")
    bodies = inprocess.make_bodies(service, np.random.default_rng(0))
    measured = inprocess.bench_inprocess(service, bodies, Settings(rounds=1, inprocess_seconds=0.001))
    assert list(measured["configs"]) == list(report.INPROCESS_NAMES)
    assert measured["configs"]["predict_10k"][0]["pairs_s"] > 0 and measured["configs"]["recommend"][0]["pairs_s"] == 0
    results["inprocess"] = measured
    text = report.report(results)
    for name, batch in report.INPROCESS_NAMES.values():
        assert f"| {name} | {batch} |" in text


def test_noise_meter_arithmetic_on_fake_proc_stat():
    # user nice system idle iowait irq softirq steal guest guest_nice
    start = parse_proc_stat("cpu  1000 10 300 5000 100 5 5 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    end = parse_proc_stat("cpu  1300 10 400 5450 150 15 15 10 50 0\n")
    assert start == CpuSample(busy=1320, total=6420)
    assert end == CpuSample(busy=1750, total=7350)  # guest time is already inside user
    # 430 busy of 930 jiffies on 2 cores
    assert busy_cores(start, end, cores=2) == pytest.approx(430 / 930 * 2)
    assert noise_cores(0.9, own_cpu_s=1.0, wall_s=2.0) == pytest.approx(0.4)
    assert noise_cores(0.3, own_cpu_s=1.0, wall_s=2.0) == 0.0  # our own CPU is never noise

    samples = iter([start, end])
    with CpuMeter(stat=lambda: next(samples)) as meter:
        pass
    assert meter.busy_cores == pytest.approx(430 / 930 * (os.cpu_count() or 1))
    assert meter.server_cpu_s == 0.0 and meter.noise_cores <= meter.busy_cores


def test_summarize_on_known_times():
    times = np.arange(1, 101) / 1e3  # 1..100 ms, 5.05 s in all
    s = summarize(times, pairs=10)
    assert s["calls"] == 100
    assert s["calls_s"] == pytest.approx(100 / 5.05)
    assert s["pairs_s"] == pytest.approx(1000 / 5.05)
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert summarize(times, pairs=0)["pairs_s"] == 0.0


def test_command_line_quick_defaults_and_overrides():
    args = bench.parse_args(["--quick", "--rounds", "2", "--sections", "inprocess"])
    s = bench.settings_from(args)
    assert s.rounds == 2 and s.duration == QUICK.duration and s.inprocess_seconds == QUICK.inprocess_seconds
    with pytest.raises(SystemExit):
        bench.parse_args(["--sections", "inprocess,gpu"])
