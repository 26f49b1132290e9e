"""train.py: a short run really learns, exports a faithful TorchScript model, and is reproducible."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train
from model import fit
from model.artifact import load_artifact
from model.core import PARITY_TOL, Recommender
from model.data import load_ratings, split_indices
from model.index import IdIndex
from model.net import EmbeddingNet

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "2", "--batch-size", "256", "--n-factors", "4", "--nh", "8", "--quiet", "--threads", "1"]
QUICK += ["--rank-epochs", "2", "--rank-factors", "4"]


def all_predictions(folder: Path) -> torch.Tensor:
    """The artifact model's rating for every (user row, movie row) pair."""
    art = load_artifact(folder)
    users = torch.arange(len(art.users)).repeat_interleave(len(art.movies))
    movies = torch.arange(len(art.movies)).repeat(len(art.users))
    with torch.no_grad():
        return art.module(users, movies)


def quick_run(ratings: Path, out: Path, *extra: str) -> Path:
    """A few-second training run into out."""
    assert train.main(["--ratings", str(ratings), "--out", str(out), *QUICK, *extra]) == 0
    return out


def test_training_learns(tiny_artifact, synth_data):
    meta = json.loads((tiny_artifact / "metadata.json").read_text())
    cfg = meta["train"]
    frame = load_ratings(synth_data[0]).frame
    tr, va = split_indices(len(frame), cfg["val_frac"], cfg["seed"])
    ratings = frame["rating"].to_numpy(np.float64)
    baseline = math.sqrt(np.mean((ratings[va] - ratings[tr].mean()) ** 2))

    # Recompute the validation RMSE from the exported model, independently of train.py's bookkeeping.
    art = load_artifact(tiny_artifact)
    users = torch.from_numpy(art.users.rows(frame["user_id"].iloc[va]))
    movies = torch.from_numpy(art.movies.rows(frame["movie_id"].iloc[va]))
    with torch.no_grad():
        pred = art.module(users, movies).double().numpy()
    val_rmse = math.sqrt(np.mean((pred - ratings[va]) ** 2))

    assert meta["metrics"]["val_rmse"] == pytest.approx(val_rmse, abs=1e-4)
    assert meta["metrics"]["val_rmse_global_mean"] == pytest.approx(baseline, abs=1e-4)
    assert val_rmse < 0.8 * baseline, (val_rmse, baseline)
    assert meta["counts"]["val"] == len(va) and meta["counts"]["train"] == len(tr)
    history = meta["metrics"]["history"]
    assert [h["epoch"] for h in history] == list(range(1, cfg["epochs"] + 1))
    assert history[-1]["val_rmse"] < history[0]["val_rmse"]


def nudge_export(monkeypatch, shift: float) -> dict:
    """Make train's TorchScript export differ from the eager model: its output bias moves by `shift`."""
    script, captured = torch.jit.script, {}

    def nudged(model, *args, **kwargs):
        if not isinstance(model, EmbeddingNet):  # torch.jit.script calls itself for what the net uses
            return script(model, *args, **kwargs)
        captured["eager"] = model
        scripted = copy.deepcopy(script(model))  # a copy, so the eager weights stay as they are
        with torch.no_grad():
            scripted.lin2.bias += shift
        return scripted

    monkeypatch.setattr(torch.jit, "script", nudged)
    return captured


def test_export_that_differs_from_the_eager_model_is_refused(tmp_path, synth_data, monkeypatch):
    nudge_export(monkeypatch, 0.05)
    with pytest.raises(RuntimeError, match="TorchScript export differs from the eager model"):
        train.main(["--ratings", str(synth_data[0]), "--out", str(tmp_path / "out"), *QUICK])
    assert not (tmp_path / "out" / "metadata.json").exists()


def test_recorded_export_parity_is_the_max_diff_on_validation_pairs(tmp_path, synth_data, monkeypatch):
    """A small nudge (within PARITY_TOL) is accepted, and metadata records exactly its effect."""
    captured = nudge_export(monkeypatch, 4e-5)
    folder = quick_run(synth_data[0], tmp_path / "out")
    meta = json.loads((folder / "metadata.json").read_text())
    frame = load_ratings(synth_data[0]).frame
    _, va = split_indices(len(frame), meta["train"]["val_frac"], meta["train"]["seed"])
    art = load_artifact(folder)
    users = torch.from_numpy(art.users.rows(frame["user_id"].iloc[va]))
    movies = torch.from_numpy(art.movies.rows(frame["movie_id"].iloc[va]))
    with torch.no_grad():
        diff = (art.module(users, movies) - captured["eager"](users, movies)).abs().max().item()
    assert 0 < diff <= train.PARITY_TOL
    assert meta["metrics"]["export_max_abs_diff"] == pytest.approx(diff, rel=1e-6)


def test_loss_plot_is_a_png(tiny_artifact):
    data = (tiny_artifact / "loss.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_same_seed_same_model(tmp_path, synth_data):
    a = quick_run(synth_data[0], tmp_path / "a", "--seed", "7")
    b = quick_run(synth_data[0], tmp_path / "b", "--seed", "7")
    c = quick_run(synth_data[0], tmp_path / "c", "--seed", "8")
    pa, pb, pc = all_predictions(a), all_predictions(b), all_predictions(c)
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)
    meta_a, meta_b = (json.loads((p / "metadata.json").read_text()) for p in (a, b))
    assert meta_a["metrics"]["val_rmse"] == meta_b["metrics"]["val_rmse"]
    assert meta_a["files"]["users.json"] == meta_b["files"]["users.json"]


def test_no_bias_run(tmp_path, synth_data):
    out = quick_run(synth_data[0], tmp_path / "nobias", "--no-bias")
    art = load_artifact(out)
    assert art.net.bias is False and art.metadata["train"]["bias"] is False
    state = art.module.state_dict()
    assert torch.count_nonzero(state["ub.weight"]) == 0 and torch.count_nonzero(state["mb.weight"]) == 0


def test_the_fused_arch_is_recorded_and_served_by_the_factorised_core(tmp_path, synth_data):
    art = load_artifact(quick_run(synth_data[0], tmp_path / "fused", "--arch", "fused", "--n-dot", "4"))
    assert (art.net.arch, art.net.n_dot) == ("fused", 4) and art.metadata["train"]["arch"] == "fused"
    rec = Recommender(art)  # refuses a factorisation that differs from TorchScript
    users, movies = np.repeat(np.arange(len(art.users)), 3), np.tile(np.arange(3), len(art.users))
    np.testing.assert_allclose(rec.predict(users, movies), rec.predict_exact(users, movies), atol=PARITY_TOL, rtol=0)
    lesson = load_artifact(quick_run(synth_data[0], tmp_path / "lesson", "--arch", "embedding-net"))
    assert (lesson.net.arch, lesson.net.n_dot) == ("embedding-net", 0)


def test_titles_found_beside_the_ratings(tmp_path, synth_data):
    # No --movies: movies.csv next to ratings.csv is used.
    art = load_artifact(quick_run(synth_data[0], tmp_path / "t"))
    assert all(t is not None and t.startswith("Movie ") for t in art.titles)


@pytest.mark.parametrize(
    "bad",
    [
        ["--epochs", "0"],
        ["--val-frac", "1"],
        ["--val-frac", "0"],
        ["--nh", "-3"],
        ["--arch", "embedding-net", "--n-dot", "8"],
        ["--arch", "fused", "--n-dot", "0"],
        ["--rank-epochs", "0"],
    ],
)
def test_bad_options_are_usage_errors(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as info:
        train.parse_args(["--out", str(tmp_path / "x"), *bad])
    assert info.value.code == 2
    assert bad[0] in capsys.readouterr().err


def test_too_few_ratings(tmp_path, capsys):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n" + "".join(f"1,{m},4,{m}\n" for m in range(5)))
    assert train.main(["--ratings", str(path), "--out", str(tmp_path / "out"), *QUICK]) == 2
    assert "need at least 10" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "rows, named",
    [
        ([f"1,{m},4,{m}" for m in range(20)], "1 user(s) and 20 movie(s)"),
        ([f"{u},7,4,{u}" for u in range(20)], "20 user(s) and 1 movie(s)"),
    ],
)
def test_a_file_with_one_user_or_one_movie_is_refused_in_one_line(tmp_path, capsys, rows, named):
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{r}\n" for r in rows))
    assert train.main(["--ratings", str(path), "--out", str(tmp_path / "out"), *QUICK]) == 2
    err = capsys.readouterr().err
    assert named in err and "need at least 2 of each" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a Python + torch start-up
def test_help():
    done = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for option in ("--ratings", "--movies", "--out", "--seed", "--epochs", "--no-bias"):
        assert option in done.stdout
    assert done.stderr == ""


def test_validation_csv_holds_exactly_the_held_out_rows(tiny_artifact, synth_data):
    """ab-eval compares versions on these rows, so they must be the split's validation rows."""
    import pandas as pd

    from model.data import load_ratings, split_indices

    meta = json.loads((tiny_artifact / "metadata.json").read_text())
    data = load_ratings(synth_data[0])
    _, val = split_indices(len(data.frame), meta["train"]["val_frac"], meta["train"]["seed"])
    held = pd.read_csv(tiny_artifact / "validation.csv", dtype=str)
    assert list(held.columns) == ["user_id", "movie_id", "rating"]
    expected = data.frame.iloc[val]
    assert held["user_id"].tolist() == expected["user_id"].tolist()
    assert held["movie_id"].tolist() == expected["movie_id"].tolist()
    assert len(held) == meta["counts"]["val"]


def test_id_rows_match_the_row_by_row_mapping(synth_data):
    data = load_ratings(synth_data[0])
    for column in ("user_id", "movie_id"):
        index = IdIndex.from_ids(data.frame[column])
        assert np.array_equal(train.id_rows(data, column, index), index.rows(data.frame[column]))


def test_each_epoch_reports_elapsed_and_eta(tmp_path, synth_data, capsys, monkeypatch):
    ticks = iter(range(0, 1000, 45))  # every epoch takes 45 s by this clock
    monkeypatch.setattr(fit, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    quick_run(synth_data[0], tmp_path / "eta", "--epochs", "3")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert [line.split("(45.0s, ")[1].split(" ratings/s")[0] for line in lines] == ["60"] * 3  # 2,700 rows
    assert [line.split("; ")[1] for line in lines] == [
        "elapsed 45.0s, ETA 1m30s)",
        "elapsed 1m30s, ETA 45.0s)",
        "elapsed 2m15s, ETA 0.0s)",
    ]
    assert fit.clock(3725) == "1h02m05s"


class Killed(Exception):
    """Stands in for a kill between epochs."""


def kill_after(monkeypatch, last: int) -> None:
    """Make train stop right after epoch `last`'s checkpoint is written."""

    def hook(epoch: int) -> None:
        if epoch == last:
            raise Killed

    monkeypatch.setattr(fit, "epoch_done", hook)


def test_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, synth_data, monkeypatch):
    options = ["--epochs", "3", "--seed", "5", "--p1", "0.3"]  # dropout: the RNG state must be restored too
    whole = quick_run(synth_data[0], tmp_path / "whole", *options)
    cut = tmp_path / "cut"
    kill_after(monkeypatch, 2)
    with pytest.raises(Killed):
        quick_run(synth_data[0], cut, *options)
    assert (cut / "checkpoint" / "state.pt").exists() and not (cut / "metadata.json").exists()
    monkeypatch.undo()

    assert train.main(["--resume", str(cut), "--quiet"]) == 0
    assert torch.equal(all_predictions(whole), all_predictions(cut))
    meta_whole, meta_cut = (json.loads((p / "metadata.json").read_text()) for p in (whole, cut))
    assert meta_cut["train"] == meta_whole["train"] and meta_cut["train"]["seed"] == 5
    assert [h["val_rmse"] for h in meta_cut["metrics"]["history"]] == [
        h["val_rmse"] for h in meta_whole["metrics"]["history"]
    ]
    assert not (cut / "checkpoint").exists()  # removed once the artifact is written


def test_a_new_run_does_not_continue_a_stale_checkpoint(tmp_path, synth_data, monkeypatch):
    out = tmp_path / "out"
    kill_after(monkeypatch, 1)
    with pytest.raises(Killed):
        quick_run(synth_data[0], out, "--epochs", "3", "--seed", "3")
    monkeypatch.undo()
    fresh = quick_run(synth_data[0], out, "--epochs", "3")
    assert torch.equal(
        all_predictions(fresh), all_predictions(quick_run(synth_data[0], tmp_path / "b", "--epochs", "3"))
    )


def test_resume_without_a_checkpoint_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train.parse_args(["--resume", str(tmp_path)])
    assert info.value.code == 2 and "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args([])


def test_the_auto_recipe_keeps_ml100k_exactly_and_scales_the_batch_for_large_data():
    name, small = train.recipe_for(100_000, 90_000)
    assert name == "ml100k"
    assert small == {"batch_size": 256, "lr": 3e-3, "wd": 0.5, "n_factors": 64, "nh": 128, "p1": 0.4, "p2": 0.5}
    name, large = train.recipe_for(25_000_095, 22_500_085)
    assert name == "scale" and large == {"batch_size": 64_000, **train.SCALE_RECIPE}
    assert math.ceil(22_500_085 / large["batch_size"]) == 352  # as many steps per epoch as ML-100K
    assert train.recipe_for(100_000, 90_000, "scale")[0] == "scale"
    assert train.recipe_for(25_000_095, 22_500_085, "ml100k")[1] == small


def test_given_options_override_the_recipe_and_the_artifact_records_what_was_used(tmp_path, synth_data):
    out = quick_run(synth_data[0], tmp_path / "scale", "--recipe", "scale", "--lr", "0.02")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["metrics"]["recipe"] == "scale"
    assert meta["train"]["lr"] == 0.02 and meta["train"]["batch_size"] == 256  # both given (QUICK)
    assert meta["train"]["nh"] == meta["net"]["nh"] == 8  # given (QUICK)
    assert {k: meta["train"][k] for k in ("wd", "p1", "p2")} == {k: train.SCALE_RECIPE[k] for k in ("wd", "p1", "p2")}
    assert art_dropout(out) == (train.SCALE_RECIPE["p1"], train.SCALE_RECIPE["p2"])
    assert meta["net"]["arch"] == train.SCALE_RECIPE["arch"] == "embedding-net"  # the scale recipe's own
    fused = json.loads(
        (quick_run(synth_data[0], tmp_path / "dot", "--recipe", "scale", "--n-dot", "3") / "metadata.json").read_text()
    )
    assert (fused["net"]["arch"], fused["net"]["n_dot"]) == ("fused", 3)  # --n-dot alone means fused


def art_dropout(folder) -> tuple[float, float]:
    """The dropout rates the artifact's network was built with."""
    net = load_artifact(folder).net
    return net.p1, net.p2


@pytest.mark.slow  # torch.compile takes ~30 s on the CPU
def refused_out(tmp_path: Path, out: Path, capsys, monkeypatch) -> str:
    """Run train.main with --out OUT, expecting exit 2 before any data is read; return its stderr."""

    def no_loading(args):
        raise AssertionError("train loaded data despite an unusable --out")

    monkeypatch.setattr(train, "load_data", no_loading)
    assert train.main(["--ratings", str(tmp_path / "never-read.csv"), "--out", str(out), *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err, err
    return err


def test_out_under_a_regular_file_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    err = refused_out(tmp_path, tmp_path / "file" / "sub" / "v1", capsys, monkeypatch)
    assert "is a file, not a directory" in err


def test_out_that_is_an_existing_file_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    err = refused_out(tmp_path, tmp_path / "file", capsys, monkeypatch)
    assert "not a directory" in err
    assert (tmp_path / "file").read_text() == "x"


def test_out_in_a_read_only_directory_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a read-only directory is still writable")
        err = refused_out(tmp_path, locked / "v1", capsys, monkeypatch)
        assert "cannot create files" in err
    finally:
        locked.chmod(0o700)


def test_out_under_proc_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    if not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    refused_out(tmp_path, Path("/proc/movierec/v1"), capsys, monkeypatch)


def test_a_model_no_better_than_the_mean_is_flagged(tmp_path, synth_data, capsys):
    # At lr 1e-7 the net stays at its initial output (the middle of the rating range, 3), while the
    # synthetic ratings average about 3.4: the training mean predicts better.
    out = quick_run(synth_data[0], tmp_path / "flat", "--lr", "1e-7", "--epochs", "1")
    metrics = json.loads((out / "metadata.json").read_text())["metrics"]
    assert metrics["val_rmse"] >= metrics["val_rmse_global_mean"]
    assert metrics["beats_global_mean"] is False
    assert "not better than predicting the training mean" in capsys.readouterr().err


def test_lists_no_better_than_the_most_popular_are_flagged(capsys):
    assert train.check_beats_popular({"val_recall@10": 0.046, "val_recall@10_most_popular": 0.062}) is False
    assert "recall@10 0.0460 is not better than a most-popular list's (0.0620)" in capsys.readouterr().err
    assert train.check_beats_popular({"val_recall@10": 0.33, "val_recall@10_most_popular": 0.29}) is True
    assert capsys.readouterr().err == ""


def test_a_ranker_that_learned_is_not_flagged(tmp_path, synth_data, capsys):
    out = quick_run(synth_data[0], tmp_path / "ranked", "--rank-epochs", "30", "--rank-factors", "16", "--epochs", "1")
    metrics = json.loads((out / "metadata.json").read_text())["metrics"]
    assert metrics["ranker_beats_popular"] is True
    assert "most-popular" not in capsys.readouterr().err


def test_a_model_that_learned_is_not_flagged(tiny_artifact):
    metrics = json.loads((tiny_artifact / "metadata.json").read_text())["metrics"]
    assert metrics["beats_global_mean"] is True


def test_a_ranker_with_encoded_users_is_exported_served_and_flagged_as_learned(tmp_path, synth_data, capsys):
    """--rank-user-factors movies (the default from 5,000 users): the artifact records it and its lists beat popular."""
    out = quick_run(
        synth_data[0], tmp_path / "encoded", "--rank-user-factors", "movies", "--rank-factors", "16", "--epochs", "1"
    )
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["ranker"]["plan"]["user_factors"] == "movies"
    assert meta["ranker"]["export_max_abs_diff"] <= train.PARITY_TOL
    assert meta["metrics"]["ranker_beats_popular"] is True
    assert "most-popular" not in capsys.readouterr().err
