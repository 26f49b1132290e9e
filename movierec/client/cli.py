"""Command line for movierec: batch scoring, version management, A/B routing and evaluation."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import orjson

from model.service import MAX_TOP_K
from movierec.client import ab, scoring, versions
from movierec.client.api import (
    DEFAULT_KEY_FILE,
    DEFAULT_MODEL,
    ENV_INFERENCE_URL,
    ENV_KEY_FILE,
    ENV_MANAGEMENT_URL,
    ConfigError,
    MovieRecClient,
    MovieRecError,
)


def _server_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("server")
    group.add_argument(
        "--inference-url",
        help=f"inference API (env {ENV_INFERENCE_URL}; default http://127.0.0.1:8080)",
    )
    group.add_argument(
        "--management-url",
        help=f"management API (env {ENV_MANAGEMENT_URL}; default http://127.0.0.1:8081)",
    )
    group.add_argument(
        "--key-file",
        help=f"TorchServe key_file.json (env {ENV_KEY_FILE}; default {DEFAULT_KEY_FILE})",
    )
    group.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    group.add_argument(
        "--retries",
        type=int,
        default=5,
        help="retries on 503 and connection errors (default 5)",
    )
    return parent


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name (default %(default)s)")


def _percent(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be within 0..100, got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def _raw_id(text: str) -> int | str:
    """IDs typed on the command line: decimal ones go out as JSON numbers, the rest as strings."""
    return int(text) if text.isdigit() and str(int(text)) == text else text


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    server = _server_options()
    parser = argparse.ArgumentParser(prog="movierec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_score(sub, server)
    _add_predict_and_recommend(sub, server)
    _add_versions(sub, server)
    _add_promote_and_rollback(sub, server)
    _add_ab(sub, server)
    _add_ab_eval(sub, server)
    return parser


def _add_score(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec score`: bulk scoring of a CSV or Parquet file."""
    p = sub.add_parser(
        "score",
        parents=[server],
        help="score a user_id,movie_id CSV or Parquet file in bulk",
        description="Score every (user_id, movie_id) row of a CSV or Parquet file (.parquet, .pq) through the "
        "movierec-batch registration; writes user_id,movie_id,rating,error in input order, as CSV or Parquet "
        "by the output's extension.",
    )
    p.add_argument("input", help="CSV with a user_id,movie_id[,...] header, or a Parquet file with those columns")
    p.add_argument("output", help="CSV or Parquet (.parquet, .pq) file to write")
    _model_option(p)
    p.add_argument(
        "--version",
        help="archive version to score with (default: the default version of --model)",
    )
    p.add_argument(
        "--chunk",
        type=_positive,
        default=scoring.DEFAULT_CHUNK,
        help=f"rows per request (max {scoring.MAX_INSTANCES}) (default %(default)s)",
    )
    p.add_argument(
        "--concurrency",
        type=_positive,
        default=scoring.DEFAULT_CONCURRENCY,
        help="requests in flight (default %(default)s)",
    )
    _add_batch_registration_options(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted job from the output's last row",
    )
    p.add_argument(
        "--no-manage",
        action="store_true",
        help="use the batch registration as is: no register/scale",
    )
    p.add_argument(
        "--protocol",
        choices=scoring.PROTOCOLS,
        default=scoring.DEFAULT_PROTOCOL,
        help="request bodies: arrow (columnar, fastest) or json (CSV only; for JSON-only routes such as "
        "KServe's) (default %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (or, off a terminal, progress lines)")
    p.set_defaults(func=cmd_score)


def _add_batch_registration_options(p: argparse.ArgumentParser) -> None:
    """How `movierec score` sizes the batch registration it scores through."""
    p.add_argument(
        "--workers",
        type=_positive,
        default=scoring.DEFAULT_WORKERS,
        help="workers during the job; jobs running side by side get the largest ask (default %(default)s)",
    )
    p.add_argument(
        "--idle-workers",
        type=_non_negative,
        default=scoring.DEFAULT_IDLE_WORKERS,
        help="workers after the last running job ends (default %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=scoring.DEFAULT_BATCH_SIZE,
        help="TorchServe batch size (default %(default)s)",
    )
    p.add_argument(
        "--max-batch-delay",
        type=_non_negative,
        default=scoring.DEFAULT_MAX_BATCH_DELAY_MS,
        help="batch delay, ms (default %(default)s)",
    )
    p.add_argument(
        "--batch-model",
        default=scoring.BATCH_MODEL,
        help="name of the bulk-scoring registration (default %(default)s)",
    )


def _add_predict_and_recommend(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec predict` and `movierec recommend`: one request each."""
    p = sub.add_parser("predict", parents=[server], help="predict one user's rating of one movie")
    _model_option(p)
    p.add_argument("--version", help="model version (default: the server's default version)")
    p.add_argument("--user", required=True, type=_raw_id, help="user ID")
    p.add_argument("--movie", required=True, type=_raw_id, help="movie ID")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("recommend", parents=[server], help="top-K movie recommendations for one user")
    _model_option(p)
    p.add_argument("--version", help="model version (default: the server's default version)")
    p.add_argument("--user", required=True, type=_raw_id, help="user ID")
    p.add_argument(
        "--top-k", type=_positive, default=10, help=f"how many movies (default %(default)s, at most {MAX_TOP_K})"
    )
    p.add_argument("--include-rated", action="store_true", help="let recommendations include rated movies")
    p.set_defaults(func=cmd_recommend)


def _add_versions(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec versions list|register|set-default|unregister`."""
    p = sub.add_parser("versions", help="list, register, set-default, unregister model versions")
    vsub = p.add_subparsers(dest="versions_command", required=True, metavar="ACTION")
    v = vsub.add_parser("list", parents=[server], help="list registered versions")
    _model_option(v)
    v.set_defaults(func=cmd_versions_list)
    v = vsub.add_parser(
        "register",
        parents=[server],
        help="register movierec-VERSION.mar from the model store",
    )
    _model_option(v)
    v.add_argument(
        "--version",
        required=True,
        help="archive version, e.g. 2.0 for movierec-2.0.mar",
    )
    v.add_argument("--batch-size", type=_positive, help="TorchServe batch size (default: the archive's YAML)")
    v.add_argument("--max-batch-delay", type=_non_negative, help="batch delay, ms (default: the archive's YAML)")
    v.add_argument("--workers", type=_non_negative, default=1, help="initial workers (default %(default)s)")
    v.set_defaults(func=cmd_versions_register)
    v = vsub.add_parser(
        "set-default",
        parents=[server],
        help="make a version the default",
    )
    _model_option(v)
    v.add_argument("version")
    v.set_defaults(func=cmd_versions_set_default)
    v = vsub.add_parser(
        "unregister",
        parents=[server],
        help="unregister a version (not the default while others exist)",
    )
    _model_option(v)
    v.add_argument("version")
    v.set_defaults(func=cmd_versions_unregister)


def _add_promote_and_rollback(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec promote` and `movierec rollback`: switch the default version and back."""
    p = sub.add_parser(
        "promote",
        parents=[server],
        help="make VERSION the default, remembering the previous one",
    )
    p.add_argument("version")
    _model_option(p)
    p.add_argument(
        "--state-file",
        help="A/B state file (default: ab_state.json next to the key file)",
    )
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser(
        "rollback",
        parents=[server],
        help="restore the default replaced by the last promote",
    )
    _model_option(p)
    p.add_argument(
        "--state-file",
        help="A/B state file (default: ab_state.json next to the key file)",
    )
    p.set_defaults(func=cmd_rollback)


def _add_ab(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec ab`: one request through the sticky A/B split."""
    p = sub.add_parser(
        "ab",
        parents=[server],
        help="ask the sticky A/B split for one user",
        description="Route one user to version A or B by a stable hash of the user ID and print the answer.",
    )
    _model_option(p)
    p.add_argument("--a", required=True, help="version A")
    p.add_argument("--b", required=True, help="version B")
    p.add_argument("--split", type=_percent, default=50.0, help="percent of users on B (default %(default)s)")
    p.add_argument("--user", required=True, type=_raw_id, help="user ID")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--movie", type=_raw_id, help="predict this movie's rating")
    what.add_argument(
        "--top-k",
        type=_positive,
        help="recommend this many movies (default 10 without --movie)",
    )
    p.add_argument(
        "--include-rated",
        action="store_true",
        help="let recommendations include rated movies",
    )
    p.set_defaults(func=cmd_ab)


def _add_ab_eval(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec ab-eval`: compare two versions on held-out ratings."""
    p = sub.add_parser(
        "ab-eval",
        parents=[server],
        help="compare versions A and B on held-out ratings",
        description="Score held-out ratings through the live endpoint with each user on its sticky arm; report "
        "RMSE, latency and errors per version; optionally promote the clearly better version.",
    )
    p.add_argument("heldout", help="CSV with a user_id,movie_id,rating header")
    _model_option(p)
    p.add_argument("--a", required=True, help="version A")
    p.add_argument("--b", required=True, help="version B")
    p.add_argument("--split", type=_percent, default=50.0, help="percent of users on B (default %(default)s)")
    p.add_argument(
        "--chunk",
        type=_positive,
        default=ab.DEFAULT_EVAL_CHUNK,
        help="rows per request (default %(default)s)",
    )
    p.add_argument(
        "--concurrency",
        type=_positive,
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
        type=_positive,
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


def make_client(args: argparse.Namespace, pool_size: int = 16) -> MovieRecClient:
    """A client from the server options of a parsed command line."""
    return MovieRecClient(
        args.inference_url,
        args.management_url,
        args.key_file,
        model=getattr(args, "model", DEFAULT_MODEL),
        timeout=args.timeout,
        retries=args.retries,
        pool_size=pool_size,
    )


def cmd_score(args: argparse.Namespace) -> int:
    """Run `score`."""
    settings = scoring.BatchSettings(args.batch_size, args.max_batch_delay, args.workers, args.idle_workers)
    with make_client(args, pool_size=args.concurrency) as client:
        summary = scoring.score_csv(
            client,
            args.input,
            args.output,
            model=args.model,
            version=args.version,
            chunk_size=args.chunk,
            concurrency=args.concurrency,
            settings=settings,
            batch_model=args.batch_model,
            resume=args.resume,
            progress=not args.no_progress,
            manage=not args.no_manage,
            protocol=args.protocol,
        )
    print(summary)
    return 0


def cmd_versions_list(args: argparse.Namespace) -> int:
    """Run `versions list`."""
    with make_client(args) as client:
        print(versions.format_versions(args.model, versions.list_versions(client, args.model)))
    return 0


def cmd_versions_register(args: argparse.Namespace) -> int:
    """Run `versions register`."""
    with make_client(args) as client:
        answer = client.register(
            args.version,
            model=args.model,
            batch_size=args.batch_size,
            max_batch_delay=args.max_batch_delay,
            initial_workers=args.workers,
        )
    print(answer.get("status", answer) if isinstance(answer, dict) else answer)
    return 0


def cmd_versions_set_default(args: argparse.Namespace) -> int:
    """Run `versions set-default` (no rollback record; use promote for that)."""
    with make_client(args) as client:
        answer = client.set_default(args.version, model=args.model)
    print(answer.get("status", answer) if isinstance(answer, dict) else answer)
    return 0


def cmd_versions_unregister(args: argparse.Namespace) -> int:
    """Run `versions unregister`."""
    with make_client(args) as client:
        answer = client.unregister(args.version, model=args.model)
    print(answer.get("status", answer) if isinstance(answer, dict) else answer)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Run `promote`."""
    with make_client(args) as client:
        print(versions.promote(client, args.version, model=args.model, state_file=args.state_file))
    return 0


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


def cmd_rollback(args: argparse.Namespace) -> int:
    """Run `rollback`."""
    with make_client(args) as client:
        print(versions.rollback(client, model=args.model, state_file=args.state_file))
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `movierec`; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MovieRecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue a score job", file=sys.stderr)
        return 130
