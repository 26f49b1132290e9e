"""`movierec score` and `movierec recommend-all`: bulk jobs through the movierec-batch registration."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from model.protocol import DEFAULT_TOP_K, MAX_INSTANCES, MAX_TOP_K, MAX_USERS
from movierec.client import settings
from movierec.client.cli_common import make_client, model_option, non_negative, positive, resumable, version_option
from movierec.flags import add_renamed, add_retired

if TYPE_CHECKING:
    from movierec.client.batch import BatchJob


def add_score(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec score`: bulk scoring of a CSV or Parquet file."""
    p = sub.add_parser(
        "score",
        parents=[server],
        help="score a user_id,movie_id CSV or Parquet file in bulk",
        description="Score every (user_id, movie_id) row of a CSV or Parquet file (.parquet, .pq) through the "
        "movierec-batch registration; writes user_id,movie_id,rating,error in input order, as CSV or Parquet "
        "by the output's extension, plus a fallback column (empty for personal predictions) when the archive "
        "answers unknown IDs with the cold-start fallback.",
    )
    p.add_argument("input", help="CSV with a user_id,movie_id[,...] header, or a Parquet file with those columns")
    p.add_argument("output", help="CSV or Parquet (.parquet, .pq) file to write")
    model_option(p)
    version_option(p, "archive version to score with (default: the default version of --model)")
    p.add_argument(
        "--chunk",
        type=positive,
        default=None,
        help=f"rows per request (max {MAX_INSTANCES}; default {settings.DEFAULT_ARROW_CHUNK} with arrow, "
        f"{settings.DEFAULT_CHUNK} with json)",
    )
    _add_job_options(p, resume="continue an interrupted job from the output's last row")
    p.add_argument(
        "--protocol",
        choices=settings.PROTOCOLS,
        default=settings.DEFAULT_PROTOCOL,
        help="request bodies: arrow (columnar, fastest) or json (CSV only; for JSON-only routes such as "
        "KServe's) (default %(default)s)",
    )
    p.add_argument(
        "--route",
        choices=settings.ROUTES,
        default=settings.DEFAULT_ROUTE,
        help="predictions, or v1: KServe's /v1/models/BATCH_MODEL:predict (needs --no-manage) (default %(default)s)",
    )
    p.set_defaults(func=cmd_score)


def _add_job_options(p: argparse.ArgumentParser, resume: str) -> None:
    """The options of a bulk job (BatchJob) shared by `score` and `recommend-all`; `resume` is --resume's help."""
    p.add_argument(
        "--concurrency",
        type=positive,
        default=settings.DEFAULT_CONCURRENCY,
        help="requests in flight (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=positive,
        default=settings.DEFAULT_WORKERS,
        help="workers during the job; jobs running side by side get the largest ask (default %(default)s)",
    )
    p.add_argument(
        "--idle-workers",
        type=non_negative,
        default=settings.DEFAULT_IDLE_WORKERS,
        help="workers left up after the last running job ends; 1 or more spares the next job their start-up (default %(default)s)",
    )
    p.add_argument(
        "--batch-model",
        default=settings.BATCH_MODEL,
        help="name of the bulk-scoring registration; movierec-serve registers it with batch size 1 and a 1 ms "
        "delay for every version (default %(default)s)",
    )
    add_retired(p, "--linger", "keep workers up with --idle-workers N", type=float)
    p.add_argument("--resume", action="store_true", help=resume)
    p.add_argument("--no-manage", action="store_true", help="use the batch registration as is: no scaling")
    p.add_argument("--quiet", action="store_true", help="no progress bar (or, off a terminal, progress lines)")
    add_renamed(p, "--no-progress", "--quiet", nargs=0)


def batch_job(args: argparse.Namespace) -> BatchJob:
    """The BatchJob of a parsed `score` or `recommend-all` command line."""
    from movierec.client.batch import BatchJob, BatchSettings  # requests: only once a job runs

    return BatchJob(
        model=args.model,
        version=args.version,
        batch_model=args.batch_model,
        settings=BatchSettings(args.workers, args.idle_workers),
        manage=not args.no_manage,
        concurrency=args.concurrency,
        resume=args.resume,
        progress=not args.quiet,
    )


def cmd_score(args: argparse.Namespace) -> int:
    """Run `score`."""
    from movierec.client import scoring  # pandas and pyarrow: only once a job runs

    with make_client(args, pool_size=args.concurrency) as client, resumable(args):
        job = batch_job(args)
        summary = scoring.score_csv(
            client, args.input, args.output, job, chunk_size=args.chunk, protocol=args.protocol, route=args.route
        )
    print(summary)
    return 0


def add_recommend_all(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec recommend-all`: top-K lists for every user the model knows, or for a users file."""
    p = sub.add_parser(
        "recommend-all",
        parents=[server],
        help="top-K recommendations for every user (or a users file) in bulk",
        description="Write user_id,rank,movie_id,title,score,error for every user the model knows (in the model's "
        "user order), or for the users listed in --users, through the movierec-batch registration; CSV or Parquet "
        "(.parquet, .pq) by the output's extension. A user who gets no recommendations (unknown, or no movie left) "
        "has one row with only user_id and error.",
    )
    p.add_argument("output", help="CSV or Parquet (.parquet, .pq) file to write")
    p.add_argument("--users", help="CSV or Parquet file with a user_id column: recommend for these users, in order")
    p.add_argument(
        "--top-k",
        type=positive,
        default=DEFAULT_TOP_K,
        help=f"movies per user (default %(default)s, at most {MAX_TOP_K})",
    )
    p.add_argument("--include-rated", action="store_true", help="let recommendations include rated movies")
    model_option(p)
    version_option(p, "archive version to recommend with (default: the default version of --model)")
    p.add_argument(
        "--users-per-request",
        type=positive,
        default=settings.DEFAULT_USERS_PER_REQUEST,
        help=f"users per request (max {MAX_USERS}) (default %(default)s)",
    )
    _add_job_options(p, resume="continue an interrupted job after its last whole user")
    p.set_defaults(func=cmd_recommend_all)


def cmd_recommend_all(args: argparse.Namespace) -> int:
    """Run `recommend-all`."""
    from movierec.client import recommend_all

    options = recommend_all.RecommendOptions(args.top_k, not args.include_rated)
    with make_client(args, pool_size=args.concurrency) as client, resumable(args):
        job = batch_job(args)
        summary = recommend_all.recommend_all(
            client, args.output, job, users_path=args.users, options=options, per_request=args.users_per_request
        )
    print(summary)
    return 0
