"""Command line for movierec: batch scoring, version management, A/B routing and evaluation."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from movierec.client.cli_ab import add_ab, add_ab_eval, add_ab_report, add_predict_and_recommend
from movierec.client.cli_common import make_client as make_client  # re-exported for callers of the old module
from movierec.client.cli_common import resume_command, server_options
from movierec.client.cli_score import add_recommend_all, add_score
from movierec.client.cli_versions import add_promote_and_rollback, add_versions
from movierec.flags import add_version_option
from movierec.torchserve.errors import ConfigError, MovieRecError


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    server = server_options()
    parser = argparse.ArgumentParser(prog="movierec", description=__doc__)
    add_version_option(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_score(sub, server)
    add_recommend_all(sub, server)
    add_predict_and_recommend(sub, server)
    add_versions(sub, server)
    add_promote_and_rollback(sub, server)
    add_ab(sub, server)
    add_ab_eval(sub, server)
    add_ab_report(sub, server)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `movierec`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "needs_version", False) and not args.version:
        parser.error(f"{args.command}: --version is required")
    args.argv = argv  # bulk jobs print the exact command that resumes them
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MovieRecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command in ("score", "recommend-all"):
            print(f"interrupted; continue with: {resume_command(args)}", file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        return 130
