"""Shared fixtures: synthetic data and one tiny trained artifact per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

import train
from tests.synth import write_ratings

TINY_TRAIN_ARGS = ["--epochs", "6", "--batch-size", "64", "--n-factors", "8", "--nh", "16", "--lr", "1e-2",
                   "--wd", "0.01", "--p1", "0.05", "--p2", "0.1", "--seed", "1", "--quiet", "--threads", "1"]


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
