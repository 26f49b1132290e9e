"""bench-scale: a tiny end-to-end run renders every stage, and the shapes scale like ML-25M."""

from __future__ import annotations

import json
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from movierec.bench import scale


def test_shapes_scale_with_the_ratings():
    full = scale.shape_for(25_000_095)
    assert (full.n_users, full.n_movies) == (162_541, 59_047)
    tenth = scale.shape_for(2_500_010)
    assert (tenth.n_users, tenth.n_movies) == (16_254, 5_905)
    tiny = scale.shape_for(20_000)
    tiny.check()  # the generator accepts it
    assert tiny.n_users * tiny.min_per_user <= 20_000


@pytest.mark.slow  # generates, trains and archives (about 20 s)
def test_tiny_run_renders_every_stage(tmp_path):
    out = tmp_path / "out"
    argv = ["--sizes", "20000", "--out", str(out), "--train-args", "--epochs 1 --threads 1", "--repeat", "5"]
    assert scale.main([*argv, "--pairs", "1000", "--work-dir", str(tmp_path / "work")]) == 0
    result = json.loads((out / "scale.json").read_text())
    (row,) = result["sizes"]
    assert row["ratings"] == 20_000 and row["epochs"] == 1
    assert 0.3 < row["rmse_floor"] < row["val_rmse"] < 2.0
    assert row["gap_to_floor"] == pytest.approx(row["val_rmse"] - row["rmse_floor"], abs=1e-4)
    assert row["load_peak_rss_mb"] > 50 and row["train_peak_rss_mb"] > row["load_peak_rss_mb"] * 0.5
    assert row["ratings_per_s"] == round(18_000 / row["epoch_s"]) or row["ratings_per_s"] > 0
    assert row["mar_mb"] > 0 and row["top10_p50_ms"] > 0 and row["pairs_per_s"] > 0
    users = scale.shape_for(20_000).n_users  # recommend-all, in process when not serving
    assert row["recommend_all_users_per_s"] * row["recommend_all_s"] == pytest.approx(users, rel=0.05)
    assert not (tmp_path / "work" / "r20000").exists()  # generated data removed unless --keep

    text = (out / "scale.md").read_text()
    assert text.startswith("## Scale\n")
    header = next(line for line in text.splitlines() if line.startswith("| ratings"))
    columns = ("load peak RSS MB", "train s/epoch", "val RMSE", "floor", "gap", ".mar MB", "top-10 p50 ms")
    for column in (*columns, "recommend-all s", "recommend-all users/s"):
        assert f"| {column} |" in header
    assert "served" not in header  # not asked to serve
    data_row = next(line for line in text.splitlines() if line.startswith("| 20,000 |"))
    assert f"| {row['val_rmse']:.4f} | {row['rmse_floor']:.4f} | {row['gap_to_floor']:+.4f} |" in data_row
    assert "val RMSE by epoch" in text
    assert (out / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # generates, trains and loads two handlers (about 20 s)
def test_gpu_check_covers_the_scale_path_on_the_cpu(tmp_path, capsys):
    from movierec.bench import gpu_check

    argv = ["--device", "cpu", "--out", str(tmp_path), "--scale-ratings", "20000", "--pairs", "1000", "--calls", "3"]
    assert gpu_check.main([*argv, "--train-args", "--epochs 1 --threads 1"]) == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    trained, scaled = result["train"], result["scale"]
    assert scaled["ratings"] == 20_000 and trained["epochs"] == 1
    assert scaled["gap"] == pytest.approx(trained["val_rmse"] - scaled["rmse_floor"])
    meta = json.loads((tmp_path / "mar" / "artifact" / "metadata.json").read_text())
    assert meta["counts"]["ratings"] == 20_000  # trained on the generated data, not MovieLens 100K
    assert not (tmp_path / "scale_data").exists()
    assert f"vs floor {scaled['rmse_floor']:.4f}" in capsys.readouterr().out


@pytest.mark.integration  # the session's real TorchServe (tiny artifact): what --serve measures per size
def test_served_top10_p50_and_recommend_all_for_every_user(server, tiny_artifact, tmp_path, monkeypatch):
    users = json.loads((tiny_artifact / "users.json").read_text())
    bodies = [json.dumps({"user_id": user, "top_k": scale.TOP_K}).encode() for user in users[:20]]
    served = scale.served_p50(server, bodies, 2, tmp_path)
    expected = "wrk -c1" if shutil.which("wrk") else "http.client, 1 connection"
    assert 0 < served["served_top10_p50_ms"] < 1000 and served["served_by"] == expected
    with monkeypatch.context() as m:
        m.setattr(scale.shutil, "which", lambda name: None)  # no wrk: Python's http.client
        fallback = scale.served_p50(server, bodies, 2, tmp_path)
    assert 0 < fallback["served_top10_p50_ms"] < 1000 and fallback["served_by"] == "http.client, 1 connection"
    done = scale.served_recommend_all(server, tmp_path / "recommendations.parquet")
    written = pq.read_table(tmp_path / "recommendations.parquet")
    assert written.column("user_id").unique().to_pylist() == users  # every user, in the model's order
    assert written.filter(pc.equal(written.column("rank"), 1)).num_rows == len(users)
    assert done["recommend_all_users_per_s"] * done["recommend_all_s"] == pytest.approx(len(users), rel=0.05)
    assert scale.served_text([served]).startswith(
        f"Served top-10: one worker of the registration without batching (movierec-batch), p50 by {served['served_by']}"
    )
