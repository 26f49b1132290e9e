"""`make soak` at a fraction of a minute against a real TorchServe, and its growth arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from movierec.bench import soak
from movierec.torchserve.processes import WORKER_MAIN, workers

SCALE = "## Scale\n\nPasted from `make bench-scale`; the soak must leave it alone.\n"


def sample(t_s: float, frontend_mb: float, worker_mb: float) -> dict:
    """One RSS sample as run_soak records it."""
    return {"t_s": t_s, "load": "0 0 0", "rss": {"frontend": frontend_mb * 2**20, "worker 7": worker_mb * 2**20}}


def test_growth_counts_only_samples_after_the_warm_up():
    samples = [sample(0, 100, 300), sample(30, 100, 400), sample(60, 101, 410), sample(90, 102, 451)]
    g = soak.growth(samples, warmup_s=60)
    assert g["worker 7"] == {"first_mb": 410, "last_mb": 451, "growth_pct": pytest.approx(10.0), "peak_mb": 451}
    assert g["frontend"]["growth_pct"] == pytest.approx(100 * 1 / 101)
    # A worker that restarted after the warm-up has one sample: no growth figure rather than a wrong one.
    samples[-1]["rss"]["worker 9"] = 200 * 2**20
    assert soak.growth(samples, warmup_s=60)["worker 9"]["growth_pct"] is None


def test_only_model_workers_count_as_workers_not_other_children():
    # The frontend's once-a-minute metrics collector is a child too; sampled once, it had no growth figure.
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    worker = subprocess.Popen([*sleep, f"ts/{WORKER_MAIN}.py"])
    other = subprocess.Popen([*sleep, "ts/metrics/metric_collector.py"])
    try:
        assert [p.pid for p in workers(os.getpid())] == [worker.pid]
    finally:
        for proc in (worker, other):
            proc.kill()
            proc.wait()


@pytest.mark.integration
def test_a_short_soak_reports_every_kind_with_no_unexpected_status(server, tiny_artifact, tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# movierec benchmarks\n\n" + SCALE)
    argv = ["--artifacts", str(tiny_artifact), "--run-dir", str(server.run_dir), "--report", str(out)]
    argv += ["--work-dir", str(tmp_path / "soak"), "--duration", "15s", "--warmup", "3s"]
    argv += ["--sample-every", "3s", "--connections", "8"]
    assert soak.main(argv) == 0

    summary = json.loads((tmp_path / "soak" / "soak.json").read_text())
    assert summary["unexpected"] == {} and summary["socket_errors"] == 0
    assert set(summary["kinds"]) == set(soak.MIX)
    for kind, k in summary["kinds"].items():
        assert k["requests"] > 0 and 0 < k["p50_ms"] <= k["p99_ms"], kind
        codes = {int(s) for s in k["statuses"]}
        assert codes == {200} if kind != "bad" else codes and all(400 <= c < 500 for c in codes), (kind, codes)
    assert summary["requests"] == sum(k["requests"] for k in summary["kinds"].values())
    assert 14 <= summary["wall_s"] <= 30 and len(summary["samples"]) >= 5
    assert "frontend" in summary["growth"] and any(name.startswith("worker ") for name in summary["growth"])
    assert all(g["growth_pct"] is not None for g in summary["growth"].values())

    text = out.read_text()
    assert text.index("## Scale") < text.index("## Soak") and SCALE.strip() in text
    assert "**0 unexpected statuses**" in text and "![RSS over the soak](BENCHMARKS-soak.png)" in text
    assert (tmp_path / "BENCHMARKS-soak.png").stat().st_size > 1000
    # A second soak replaces its section instead of adding one.
    assert soak.main([*argv[:-6], "--duration", "3s", "--warmup", "0", "--sample-every", "1s"]) == 0
    assert out.read_text().count("## Soak") == 1
