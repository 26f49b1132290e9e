"""`movierec predict`, `recommend`, `ab`, `ab-eval` and `ab-report`: requests to the live endpoint and A/B comparisons."""

from __future__ import annotations

import argparse
import math
import os
from typing import TYPE_CHECKING

import orjson

from model.protocol import DEFAULT_TOP_K, MAX_TOP_K, MAX_USERS
from movierec.client import settings
from movierec.client.cli_common import (
    make_client,
    model_option,
    non_negative,
    percent,
    positive,
    raw_id,
    version_option,
)
from movierec.torchserve.errors import ConfigError

if TYPE_CHECKING:
    from movierec.client.ab import ArmStats, RankingEval
    from movierec.client.abstats import Comparison, Decision, Interval, RankingComparison
    from movierec.client.api import MovieRecClient


def add_predict_and_recommend(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec predict` and `movierec recommend`: one request each."""
    p = sub.add_parser("predict", parents=[server], help="predict one user's rating of one movie")
    model_option(p)
    version_option(p, "model version (default: the server's default version)")
    p.add_argument("--user", required=True, type=raw_id, help="user ID")
    p.add_argument("--movie", required=True, type=raw_id, help="movie ID")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("recommend", parents=[server], help="top-K movie recommendations for one user")
    model_option(p)
    version_option(p, "model version (default: the server's default version)")
    p.add_argument("--user", required=True, type=raw_id, help="user ID")
    p.add_argument(
        "--top-k",
        type=positive,
        default=DEFAULT_TOP_K,
        help=f"how many movies (default %(default)s, at most {MAX_TOP_K})",
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
        "--top-k", type=positive, help=f"recommend this many movies (default {DEFAULT_TOP_K} without --movie)"
    )
    p.add_argument("--include-rated", action="store_true", help="let recommendations include rated movies")
    p.add_argument("--exposures", help="append this request to an exposure log (JSON lines) for `ab-report`")
    p.set_defaults(func=cmd_ab)


def add_ab_eval(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec ab-eval`: compare two versions on held-out ratings."""
    p = sub.add_parser(
        "ab-eval",
        parents=[server],
        help="compare versions A and B on held-out ratings",
        description="Score held-out ratings through the live endpoint, by default with both versions on every "
        "row (paired); report RMSE per version and the difference B - A with an interval from resampling users, "
        "latency and errors; optionally promote the clearly better version. Also ask each version for the top-K "
        "lists of the users with a relevant held-out rating and report recall@K and NDCG@K the same way, with a "
        "verdict of its own (promotion stays on RMSE).",
    )
    p.add_argument("heldout", help="CSV with a user_id,movie_id,rating header")
    model_option(p)
    p.add_argument("--a", required=True, help="version A")
    p.add_argument("--b", required=True, help="version B")
    p.add_argument(
        "--split",
        type=percent,
        nargs="?",
        const=50.0,
        metavar="PERCENT",
        help="instead of pairing, route each user to one arm as live traffic would, PERCENT of users on B "
        "(default 50); compares latency and errors under the split",
    )
    p.add_argument(
        "--chunk", type=positive, default=settings.DEFAULT_EVAL_CHUNK, help="rows per request (default %(default)s)"
    )
    p.add_argument(
        "--concurrency",
        type=positive,
        default=settings.DEFAULT_EVAL_CONCURRENCY,
        help="requests in flight (default %(default)s)",
    )
    p.add_argument(
        "--top-k",
        type=positive,
        help=f"length of the top-K lists judged by recall@K and NDCG@K (default: K of model/metrics.py; "
        f"at most {MAX_TOP_K})",
    )
    p.add_argument(
        "--users-per-request",
        type=positive,
        default=settings.DEFAULT_USERS_PER_REQUEST,
        help=f"users per top-K request (max {MAX_USERS}) (default %(default)s)",
    )
    p.add_argument("--plot", help="write a PNG comparison here")
    p.add_argument("--promote", action="store_true", help="make the clearly better version the default (paired only)")
    verdict_options(p)
    p.add_argument(
        "--max-error-rate-increase",
        type=float,
        default=settings.DEFAULT_MAX_ERROR_RATE_INCREASE,
        help="how much higher the winner's row error rate may be (default %(default)s)",
    )
    p.add_argument("--state-file", help=f"A/B state file (default: {settings.STATE_FILE_NAME} next to the key file)")
    p.set_defaults(func=cmd_ab_eval)


def verdict_options(p: argparse.ArgumentParser) -> None:
    """Options of the verdict shared by `ab-eval` and `ab-report`."""
    p.add_argument(
        "--min-rows",
        type=positive,
        default=settings.DEFAULT_MIN_ROWS,
        help="scored rows each arm needs (default %(default)s)",
    )
    p.add_argument(
        "--min-improvement",
        type=float,
        default=settings.DEFAULT_MIN_IMPROVEMENT,
        help="RMSE gap needed for a winner (default %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=non_negative,
        default=settings.DEFAULT_SEED,
        help="seed of the user bootstrap (default %(default)s)",
    )
    p.add_argument(
        "--reps", type=positive, default=settings.DEFAULT_REPS, help="bootstrap resamples (default %(default)s)"
    )


def add_ab_report(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec ab-report`: the online A/B result from an exposure log and later ratings (no server needed)."""
    p = sub.add_parser(
        "ab-report",
        help="online A/B result: join logged exposures to later ratings",
        description="Join the exposures logged by `movierec ab --exposures` (or ABRouter) to ratings collected "
        "later, by user and movie, and report each arm's online RMSE with intervals over users and the verdict.",
    )
    p.add_argument("--exposures", required=True, help="exposure log (JSON lines)")
    p.add_argument("--outcomes", required=True, help="ratings CSV (user_id,movie_id,rating[,timestamp])")
    p.add_argument("--plot", help="write a PNG comparison here")
    verdict_options(p)
    p.set_defaults(func=cmd_ab_report)


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
    from movierec.client import ab  # numpy, pandas and pyarrow: only once a command runs

    with (
        make_client(args) as client,
        ab.ABRouter(client, args.a, args.b, args.split, model=args.model, exposures=args.exposures) as router,
    ):
        if args.movie is not None:
            answer = router.predict(args.user, args.movie)
        else:
            answer = router.recommend(args.user, args.top_k or DEFAULT_TOP_K, exclude_rated=not args.include_rated)
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_ab_eval(args: argparse.Namespace) -> int:
    """Run `ab-eval`."""
    from model.metrics import K
    from movierec.client import ab, abstats

    if args.promote and args.split is not None:
        raise ConfigError("--promote needs the paired comparison: drop --split")
    top_k = K if args.top_k is None else args.top_k
    if top_k > MAX_TOP_K:
        raise ConfigError(f"--top-k must be at most {MAX_TOP_K}, got {top_k}")
    if args.users_per_request > MAX_USERS:
        raise ConfigError(f"--users-per-request must be at most {MAX_USERS}, got {args.users_per_request}")
    with make_client(args, pool_size=args.concurrency) as client:
        router = ab.ABRouter(client, args.a, args.b, 50.0 if args.split is None else args.split, model=args.model)
        options = {"chunk_size": args.chunk, "concurrency": args.concurrency}
        if args.split is None:
            paired = ab.evaluate_paired(router, args.heldout, **options)
            stats_a, stats_b, bad_input = paired.a, paired.b, paired.bad_input
            cmp = paired.comparison(seed=args.seed, reps=args.reps)
            shares = ("all", "all")
        else:
            stats_a, stats_b, bad_input = ab.evaluate(router, args.heldout, **options)
            cmp = ab.compare_split(stats_a, stats_b, seed=args.seed, reps=args.reps)
            shares = (f"{100 - args.split:.0f}%", f"{args.split:.0f}%")
        ranking = ab.evaluate_ranking(
            router,
            args.heldout,
            paired=args.split is None,
            top_k=top_k,
            users_per_request=args.users_per_request,
            concurrency=args.concurrency,
        )
        ranked = ranking.comparison(seed=args.seed, reps=args.reps)
        print(format_report(stats_a, stats_b, cmp, shares))
        print(format_ranking(ranking, ranked))
        if bad_input:
            print(f"{len(bad_input)} unreadable input rows, e.g. {bad_input[0]}")
        if args.plot:
            labels = (f"A {stats_a.version}", f"B {stats_b.version}")
            plot_report(cmp, labels, args.plot, latency=(stats_a, stats_b))
            print(f"plot written to {args.plot}")
        decision = ab.decide(
            stats_a,
            stats_b,
            comparison=cmp,
            min_rows=args.min_rows,
            min_improvement=args.min_improvement,
            max_error_rate_increase=args.max_error_rate_increase,
        )
        print(f"verdict: {decision.verdict}: {decision.reason}")
        ranking_decision = abstats.decide_ranking(ranked, stats_a.version, stats_b.version)
        print(f"top-{top_k} verdict: {ranking_decision.verdict}: {ranking_decision.reason}")
        if args.promote:
            promote_winner(client, decision, args)
    return 0


def promote_winner(client: MovieRecClient, decision: Decision, args: argparse.Namespace) -> None:
    """Make the verdict's winner the default, or say why the default stays."""
    from movierec.client import versions

    default = client.default_version(args.model)
    if decision.winner is None:
        print(f"not promoting: default stays {default}")
    elif decision.winner == default:
        print(f"not promoting: {default} is already the default")
    else:
        print(versions.promote(client, decision.winner, model=args.model, state_file=args.state_file))


def cmd_ab_report(args: argparse.Namespace) -> int:
    """Run `ab-report`."""
    from movierec.client import abstats, exposures

    result = exposures.join_outcomes(exposures.read_exposures(args.exposures), args.outcomes)
    cmp = result.comparison(seed=args.seed, reps=args.reps)
    print(exposures.format_online_report(result, cmp))
    if args.plot:
        ex = result.exposures
        labels = (f"A {ex.versions.get('a', '-')}", f"B {ex.versions.get('b', '-')}")
        plot_report(cmp, labels, args.plot, title="later ratings, online")
        print(f"plot written to {args.plot}")
    decision = abstats.decide(
        cmp,
        result.exposures.versions.get("a", "A"),
        result.exposures.versions.get("b", "B"),
        min_rows=args.min_rows,
        min_improvement=args.min_improvement,
    )
    print(f"verdict: {decision.verdict}: {decision.reason}")
    return 0


def format_report(a: ArmStats, b: ArmStats, cmp: Comparison, shares: tuple[str, str]) -> str:
    """A text table of RMSE with its interval, latency and errors per arm, then the difference B - A."""
    ci_head = f"{cmp.level:.0%} CI"
    head = (
        f"{'arm':<4}{'version':<10}{'share':>7}{'rows':>9}{'scored':>9}{'users':>7}{'RMSE':>8}{ci_head:>19}"
        f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'row err':>9}{'req err':>9}"
    )
    lines = [head]
    arms = (
        ("A", a, shares[0], cmp.rmse_a, cmp.ci_a, cmp.users_a),
        ("B", b, shares[1], cmp.rmse_b, cmp.ci_b, cmp.users_b),
    )
    for name, s, share, rmse, ci, users in arms:
        lines.append(
            f"{name:<4}{s.version:<10}{share:>7}{s.rows:>9}{s.scored:>9}{users:>7}{rmse:>8.4f}{_bracket(ci):>19}"
            f"{s.latency(50):>9.1f}{s.latency(90):>9.1f}{s.latency(99):>9.1f}{s.row_errors:>9}{s.request_errors:>9}"
        )
    lines.append(cmp.describe())
    for name, s in (("A", a), ("B", b)):
        for example in s.error_examples:
            lines.append(f"  {name} error example: {example}")
    return "\n".join(lines)


def format_ranking(ranking: RankingEval, cmp: RankingComparison) -> str:
    """A text table of each arm's top-K lists: users asked and judged, mean recall@K and NDCG@K with intervals."""
    from model.metrics import RELEVANT_RATING

    k, ci_head = cmp.k, f"{cmp.level:.0%} CI"
    lines = [
        f"top-{k} lists of the {ranking.relevant_users} users with a "
        f"held-out rating >= {RELEVANT_RATING:g} (rated movies excluded), judged against those ratings",
        f"{'arm':<4}{'version':<10}{'asked':>7}{'judged':>8}{'not judged':>12}"
        f"{f'recall@{k}':>11}{ci_head:>19}{f'NDCG@{k}':>10}{ci_head:>19}",
    ]
    arms = (
        ("A", ranking.a, cmp.recall.a, cmp.recall.ci_a, cmp.ndcg.a, cmp.ndcg.ci_a),
        ("B", ranking.b, cmp.recall.b, cmp.recall.ci_b, cmp.ndcg.b, cmp.ndcg.ci_b),
    )
    for name, arm, recall, recall_ci, ndcg, ndcg_ci in arms:
        lines.append(
            f"{name:<4}{arm.version:<10}{arm.asked:>7}{len(arm.lists):>8}{arm.not_judged:>12}"
            f"{recall:>11.4f}{_bracket(recall_ci):>19}{ndcg:>10.4f}{_bracket(ndcg_ci):>19}"
        )
    lines.append(cmp.describe())
    if cmp.users_a and cmp.users_b and cmp.recall.a == cmp.recall.b == 0:
        lines.append(
            "  no list holds a relevant held-out movie: ratings the served model was built from are excluded "
            "from its lists as rated (train.py's validation.csv is one); judge on ratings it never saw"
        )
    for name, arm in (("A", ranking.a), ("B", ranking.b)):
        for example in arm.error_examples:
            lines.append(f"  {name} top-{k} error example: {example}")
    return "\n".join(lines)


def _bracket(ci: Interval) -> str:
    """An interval as a report column shows it."""
    return f"[{ci.low:.4f}, {ci.high:.4f}]"


def _finite(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def plot_report(
    cmp: Comparison,
    labels: tuple[str, str],
    path: str | os.PathLike[str],
    *,
    latency: tuple[ArmStats, ArmStats] | None = None,
    title: str = "held-out ratings",
) -> None:
    """Save a PNG: RMSE per arm and the difference B - A with their intervals, and latency if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if latency else 2, figsize=(14 if latency else 9, 4))
    ax_rmse, ax_diff = axes[0], axes[1]
    level = f"{cmp.level:.0%}"
    rmse = [_finite(cmp.rmse_a), _finite(cmp.rmse_b)]
    err = [
        [_finite(r - ci.low) for r, ci in zip(rmse, (cmp.ci_a, cmp.ci_b), strict=True)],
        [_finite(ci.high - r) for r, ci in zip(rmse, (cmp.ci_a, cmp.ci_b), strict=True)],
    ]
    ax_rmse.bar(labels, rmse, yerr=err, capsize=6, color=["tab:blue", "tab:orange"])
    ax_rmse.set_title(f"RMSE on {title} ({level} CI)")
    ax_rmse.set_ylabel("RMSE")
    diff = _finite(cmp.diff)
    ax_diff.errorbar(
        [0], [diff], yerr=[[_finite(diff - cmp.ci_diff.low)], [_finite(cmp.ci_diff.high - diff)]], fmt="o", capsize=8
    )
    ax_diff.axhline(0, color="grey", linewidth=1)
    # Keep zero in view: whether the interval crosses it is the point of this panel.
    low, high = min(0.0, _finite(cmp.ci_diff.low)), max(0.0, _finite(cmp.ci_diff.high))
    pad = 0.15 * (high - low) or 0.01
    ax_diff.set_ylim(low - pad, high + pad)
    ax_diff.annotate(
        f"{diff:+.4f}\n[{cmp.ci_diff.low:+.4f}, {cmp.ci_diff.high:+.4f}]",
        (0, diff),
        xytext=(12, 0),
        textcoords="offset points",
    )
    ax_diff.set_xticks([0], ["B - A"])
    ax_diff.set_title(f"RMSE difference ({'paired' if cmp.paired else 'split'}, {level} CI over users)")
    ax_diff.set_ylabel("RMSE(B) - RMSE(A)")
    if latency:
        width = 0.25
        for i, q in enumerate((50, 90, 99)):
            values = [_finite(s.latency(q)) for s in latency]
            axes[2].bar([x + (i - 1) * width for x in range(2)], values, width, label=f"p{q}")
        axes[2].set_xticks(range(2), labels)
        axes[2].set_title("Latency per request")
        axes[2].set_ylabel("ms")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
