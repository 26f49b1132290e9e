"""`make bench-accuracy` end to end on synthetic data (--quick, no Surprise), and its EASE^R and top-K pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from movierec.bench import accuracy
from tests.synth import write_ratings

SOAK = "## Soak\n\nWritten by `make soak`; the accuracy report must leave it alone.\n"


def test_lists_skip_seen_and_ineligible_movies_and_keep_score_order():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]])
    seen = np.array([[True, False, False, False, False], [False, False, False, False, True], [False] * 5])
    eligible = np.array([True, True, False, True, True])
    lists = accuracy.lists_from_scores(scores, np.array([0, 1]), seen, eligible, k=3)
    assert lists[0].tolist() == [1, 3, 4]
    assert lists[1].tolist() == [3, 1, 0]
    # Fewer candidates than k: a shorter list, never a seen or ineligible movie.
    short = accuracy.lists_from_scores(scores[:1], np.array([0]), seen, eligible, k=5)
    assert short[0].tolist() == [1, 3, 4]


def test_ease_weights_have_a_zero_diagonal_and_score_co_rated_movies_higher():
    # Users who rate movie 0 also rate movie 1; movie 2 goes with movie 3.
    x = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [1, 0, 0, 0]], dtype=np.float32)
    b = accuracy.ease_weights(x, lam=0.5)
    assert np.allclose(np.diag(b), 0)
    scores = x[4] @ b
    assert scores[1] > max(scores[2], scores[3])


@pytest.mark.slow  # two train.py runs (Python + torch start-ups)
def test_quick_run_writes_every_row_and_keeps_other_sections(tmp_path):
    ratings, titles = write_ratings(tmp_path / "data", n_users=60, n_movies=80, n_ratings=3000)
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# movierec benchmarks\n\n" + SOAK)
    argv = ["--ratings", str(ratings), "--movies", str(titles), "--quick", "--no-surprise"]
    assert accuracy.main([*argv, "--work-dir", str(tmp_path / "work"), "--report", str(out)]) == 0

    text = out.read_text()
    assert SOAK.strip() in text and text.index("## Soak") < text.index("## Accuracy")
    assert (tmp_path / "BENCHMARKS-accuracy.png").stat().st_size > 0
    section = text[text.index("## Accuracy") :]
    assert "![recall@10 by model](BENCHMARKS-accuracy.png)" in section
    for name in ("global_mean", "popular", "ease", "lesson", "previous", "default"):
        assert f"| {accuracy.ROWS[name]}" in section
    assert "--epochs 1 --rank-epochs 1" in section and "--epochs 3" not in section

    data = json.loads((tmp_path / "work" / "accuracy.json").read_text())["datasets"]["ratings"]
    rows = data["rows"]
    # The new default against EASE^R, paired by user: the difference of the two rows, inside its interval.
    gap = data["default_vs_ease"]
    assert gap["users"] == rows["default"]["users"] == rows["ease"]["users"]
    assert gap["recall"][0] == pytest.approx(rows["default"]["recall@10"] - rows["ease"]["recall@10"], abs=1e-4)
    for diff, low, high in (gap["recall"], gap["ndcg"]):
        assert low <= diff <= high and low < high
    assert f"New default − EASE^R, paired over the {gap['users']:,} users" in section
    assert set(rows) == {"global_mean", "popular", "ease", "lesson", "previous", "default"}
    for name, row in rows.items():
        assert "error" not in row, name
        if name != "global_mean":
            assert 0 <= row["recall@10"] <= 1 and 0 <= row["ndcg@10"] <= 1, name
        if name not in ("popular", "ease"):
            assert 0.3 < row["rmse"] < 2.0, name
    # The previous default is its own run (the lesson's network, the old decay), served by rating.
    assert "--arch embedding-net" in rows["previous"]["command"] and "--arch" not in rows["default"]["command"]
    assert rows["ease"]["lambda"] in accuracy.EASE_LAMBDAS
    # --report-only rewrites the same section from accuracy.json, measuring nothing.
    assert accuracy.main(["--report-only", "--work-dir", str(tmp_path / "work"), "--report", str(out)]) == 0
    assert out.read_text() == text
