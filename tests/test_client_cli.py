"""The command line: --help on every subcommand and argument checks; no server needed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from movierec.client import recommend_all, scoring
from movierec.client.cli import build_parser, main

SUBCOMMANDS = [
    ["score"],
    ["recommend-all"],
    ["versions"],
    ["versions", "list"],
    ["versions", "set-default"],
    ["promote"],
    ["rollback"],
    ["ab"],
    ["ab-eval"],
    ["ab-report"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: movierec " + " ".join(words))


def test_module_entry_point_prints_help():
    done = subprocess.run([sys.executable, "-m", "movierec", "--help"], capture_output=True, text=True, check=True)
    for name in ("score", "recommend-all", "versions", "promote", "rollback", "ab", "ab-eval", "ab-report"):
        assert name in done.stdout


def test_score_defaults_and_server_flags():
    args = build_parser().parse_args(
        ["score", "in.csv", "out.csv", "--key-file", "k.json", "--management-url", "http://127.0.0.1:9081"]
    )
    assert (args.model, args.version, args.chunk, args.concurrency, args.workers) == (
        "movierec",
        None,
        None,  # chosen by protocol: scoring.default_chunk
        scoring.DEFAULT_CONCURRENCY,
        scoring.DEFAULT_WORKERS,
    )
    assert (args.idle_workers, args.resume) == (scoring.DEFAULT_IDLE_WORKERS, False)
    assert args.key_file == "k.json" and args.inference_url is None


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "in.csv", "out.csv", "--chunk", "0"],
        ["recommend-all", "out.csv", "--top-k", "0"],
        ["recommend-all", "out.csv", "--users-per-request", "0"],
        ["ab", "--a", "1.0", "--b", "2.0", "--user", "1", "--split", "101"],
        ["ab", "--a", "1.0", "--b", "2.0", "--user", "1", "--movie", "2", "--top-k", "3"],
        # Registration is the server's (movierec-serve start/reload), so the client offers none.
        ["versions", "register", "--version", "2.0"],
        ["versions", "unregister", "2.0"],
        ["score", "in.csv", "out.csv", "--batch-size", "4"],
    ],
)
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_client_errors_print_one_line_and_exit_nonzero(tmp_path, capsys):
    code = main(["promote", "--version", "../1.0", "--key-file", str(tmp_path / "k.json")])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: bad model version")


def test_versions_are_named_by_one_flag_and_the_old_positional_still_works(capsys):
    for argv in (
        ["promote"],
        ["versions", "set-default"],
        ["predict", "--user", "1", "--movie", "2"],
        ["score", "i", "o"],
    ):
        assert build_parser().parse_args([*argv, "--version", "2.0"]).version == "2.0"
    assert capsys.readouterr().err == ""
    assert build_parser().parse_args(["versions", "set-default", "1.0"]).version == "1.0"
    assert "VERSION as an argument is deprecated, use --version 1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["promote"])
    assert "promote: --version is required" in capsys.readouterr().err


def test_recommend_all_defaults():
    args = build_parser().parse_args(["recommend-all", "out.parquet"])
    assert (args.output, args.users, args.top_k, args.include_rated, args.resume) == (
        "out.parquet",
        None,
        10,
        False,
        False,
    )
    assert (args.users_per_request, args.concurrency, args.workers, args.batch_model) == (
        recommend_all.DEFAULT_USERS_PER_REQUEST,
        scoring.DEFAULT_CONCURRENCY,
        scoring.DEFAULT_WORKERS,
        scoring.BATCH_MODEL,
    )


def test_recommend_all_refuses_more_users_per_request_than_the_server_takes(tmp_path, capsys):
    code = main(["recommend-all", str(tmp_path / "out.csv"), "--users-per-request", "1001", "--no-manage"])
    assert code == 1
    assert "users per request must be 1..1000" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def test_quiet_means_no_progress_everywhere_and_the_old_switch_still_works(capsys):
    assert build_parser().parse_args(["score", "i", "o", "--quiet"]).quiet is True
    assert build_parser().parse_args(["recommend-all", "o.parquet"]).quiet is False
    assert build_parser().parse_args(["recommend-all", "o.parquet", "--no-progress"]).quiet is True
    assert "--no-progress is deprecated, use --quiet" in capsys.readouterr().err
