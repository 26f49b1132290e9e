"""One meaning per flag name: durations read one way everywhere, old spellings still work with a warning."""

from __future__ import annotations

import argparse

import pytest

from movierec.bench import accuracy, scale, soak
from movierec.flags import duration, whole_seconds


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("20m", 1200.0), ("1.5h", 5400.0)])
def test_a_duration_reads_seconds_minutes_and_hours(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "ten", "5d", "-3s"])
def test_a_bad_duration_names_itself(text):
    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        duration(text)


def test_whole_seconds_rounds_for_tools_without_fractions():
    assert whole_seconds("2.4s") == 2 and whole_seconds("0.5m") == 30


def test_old_bench_spellings_keep_their_meaning_and_warn(capsys, tmp_path):
    args = soak.parse_args(["--minutes", "0.5", "--warmup-minutes", "0.1", "--sample-s", "2", "--out", "R.md"])
    assert (args.duration, args.warmup, args.sample_every, str(args.report)) == (30.0, 6.0, 2.0, "R.md")
    args = scale.parse_args(["--repeat", "7", "--seconds", "3", "--work", str(tmp_path)])
    assert (args.calls, args.duration, args.work_dir) == (7, 3, tmp_path)
    args = accuracy.parse_args(["--work", str(tmp_path), "--out", "R.md"])
    assert (args.work_dir, str(args.report)) == (tmp_path, "R.md")
    err = capsys.readouterr().err
    for old, new in [("--minutes", "--duration"), ("--sample-s", "--sample-every"), ("--repeat", "--calls")]:
        assert f"{old} is deprecated, use {new}" in err
    assert err.count("is deprecated") == 9


def test_new_bench_spellings_say_nothing(capsys):
    args = soak.parse_args(["--duration", "2m", "--warmup", "30s", "--sample-every", "5s", "--report", "R.md"])
    assert (args.duration, args.warmup, args.sample_every) == (120.0, 30.0, 5.0)
    assert capsys.readouterr().err == ""
