"""`movierec predict`, `recommend`, `ab` and `ab-eval`: requests to the live endpoint and A/B comparisons."""

from __future__ import annotations

import argparse

import orjson

from model.protocol import MAX_TOP_K
from movierec.client import ab, versions
from movierec.client.cli_common import make_client, model_option, percent, positive, raw_id


def add_predict_and_recommend(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec predict` and `movierec recommend`: one request each."""
    p = sub.add_parser("predict", parents=[server], help="predict one user's rating of one movie")
    model_option(p)
    p.add_argument("--version", help="model version (default: the server's default version)")
    p.add_argument("--user", required=True, type=raw_id, help="user ID")
    p.add_argument("--movie", required=True, type=raw_id, help="movie ID")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("recommend", parents=[server], help="top-K movie recommendations for one user")
    model_option(p)
    p.add_argument("--version", help="model version (default: the server's default version)")
    p.add_argument("--user", required=True, type=raw_id, help="user ID")
    p.add_argument(
        "--top-k", type=positive, default=10, help=f"how many movies (default %(default)s, at most {MAX_TOP_K})"
    )
    p.add_argument("--include-rated", action="store_true", help="let recommendations include rated movies")
    p.set_defaults(func=cmd_recommend)


def add_ab(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec ab`: one request through the sticky A/B split."""
    p = sub.add_parser(
        "ab",
        parents=[server],
        help="ask the sticky A/B split for one user",
        description="Route one user to version A or B by a stable hash of the user ID and print the answer.",
    )
    model_option(p)
    p.add_argument("--a", required=True, help="version A")
    p.add_argument("--b", required=True, help="version B")
    p.add_argument("--split", type=percent, default=50.0, help="percent of users on B (default %(default)s)")
    p.add_argument("--user", required=True, type=raw_id, help="user ID")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--movie", type=raw_id, help="predict this movie's rating")
    what.add_argument(
        "--top-k",
        type=positive,
        help="recommend this many movies (default 10 without --movie)",
    )
    p.add_argument(
        "--include-rated",
        action="store_true",
        help="let recommendations include rated movies",
    )
    p.set_defaults(func=cmd_ab)


def add_ab_eval(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec ab-eval`: compare two versions on held-out ratings."""
    p = sub.add_parser(
        "ab-eval",
        parents=[server],
        help="compare versions A and B on held-out ratings",
        description="Score held-out ratings through the live endpoint with each user on its sticky arm; report "
        "RMSE, latency and errors per version; optionally promote the clearly better version.",
    )
    p.add_argument("heldout", help="CSV with a user_id,movie_id,rating header")
    model_option(p)
    p.add_argument("--a", required=True, help="version A")
    p.add_argument("--b", required=True, help="version B")
    p.add_argument("--split", type=percent, default=50.0, help="percent of users on B (default %(default)s)")
    p.add_argument(
        "--chunk",
        type=positive,
        default=ab.DEFAULT_EVAL_CHUNK,
        help="rows per request (default %(default)s)",
    )
    p.add_argument(
        "--concurrency",
        type=positive,
        default=ab.DEFAULT_EVAL_CONCURRENCY,
        help="requests in flight (default %(default)s)",
    )
    p.add_argument("--plot", help="write a PNG comparison here")
    p.add_argument(
        "--promote",
        action="store_true",
        help="make the clearly better version the default",
    )
    p.add_argument(
        "--min-rows",
        type=positive,
        default=ab.DEFAULT_MIN_ROWS,
        help="scored rows each arm needs (default %(default)s)",
    )
    p.add_argument(
        "--min-improvement",
        type=float,
        default=ab.DEFAULT_MIN_IMPROVEMENT,
        help="RMSE gap needed to promote (default %(default)s)",
    )
    p.add_argument(
        "--max-error-rate-increase",
        type=float,
        default=ab.DEFAULT_MAX_ERROR_RATE_INCREASE,
        help="how much higher the winner's row error rate may be (default %(default)s)",
    )
    p.add_argument(
        "--state-file",
        help="A/B state file (default: ab_state.json next to the key file)",
    )
    p.set_defaults(func=cmd_ab_eval)


def cmd_predict(args: argparse.Namespace) -> int:
    """Run `predict`."""
    with make_client(args) as client:
        answer = client.predict(args.user, args.movie, model=args.model, version=args.version)
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    """Run `recommend`."""
    with make_client(args) as client:
        answer = client.recommend(
            args.user, args.top_k, exclude_rated=not args.include_rated, model=args.model, version=args.version
        )
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_ab(args: argparse.Namespace) -> int:
    """Run `ab`."""
    with make_client(args) as client:
        router = ab.ABRouter(client, args.a, args.b, args.split, model=args.model)
        if args.movie is not None:
            answer = router.predict(args.user, args.movie)
        else:
            answer = router.recommend(args.user, args.top_k or 10, exclude_rated=not args.include_rated)
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_ab_eval(args: argparse.Namespace) -> int:
    """Run `ab-eval`."""
    with make_client(args, pool_size=args.concurrency) as client:
        router = ab.ABRouter(client, args.a, args.b, args.split, model=args.model)
        stats_a, stats_b, bad_input = ab.evaluate(
            router, args.heldout, chunk_size=args.chunk, concurrency=args.concurrency
        )
        print(ab.format_report(stats_a, stats_b, args.split))
        if bad_input:
            print(f"{len(bad_input)} unreadable input rows, e.g. {bad_input[0]}")
        if args.plot:
            ab.plot_report(stats_a, stats_b, args.plot)
            print(f"plot written to {args.plot}")
        decision = ab.decide(
            stats_a,
            stats_b,
            min_rows=args.min_rows,
            min_improvement=args.min_improvement,
            max_error_rate_increase=args.max_error_rate_increase,
        )
        print(f"verdict: {decision.winner or 'no clear winner'}: {decision.reason}")
        if args.promote:
            default = client.default_version(args.model)
            if decision.winner is None:
                print(f"not promoting: default stays {default}")
            elif decision.winner == default:
                print(f"not promoting: {default} is already the default")
            else:
                print(
                    versions.promote(
                        client,
                        decision.winner,
                        model=args.model,
                        state_file=args.state_file,
                    )
                )
    return 0
