"""`movierec versions`, `promote` and `rollback`: which archive versions serve, and which is the default."""

from __future__ import annotations

import argparse

from movierec.client import versions
from movierec.client.cli_common import make_client, model_option, non_negative, positive


def add_versions(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec versions list|register|set-default|unregister`."""
    p = sub.add_parser("versions", help="list, register, set-default, unregister model versions")
    vsub = p.add_subparsers(dest="versions_command", required=True, metavar="ACTION")
    v = vsub.add_parser("list", parents=[server], help="list registered versions")
    model_option(v)
    v.set_defaults(func=cmd_versions_list)
    v = vsub.add_parser(
        "register",
        parents=[server],
        help="register movierec-VERSION.mar from the model store",
    )
    model_option(v)
    v.add_argument(
        "--version",
        required=True,
        help="archive version, e.g. 2.0 for movierec-2.0.mar",
    )
    v.add_argument("--batch-size", type=positive, help="TorchServe batch size (default: the archive's YAML)")
    v.add_argument("--max-batch-delay", type=non_negative, help="batch delay, ms (default: the archive's YAML)")
    v.add_argument("--workers", type=non_negative, default=1, help="initial workers (default %(default)s)")
    v.set_defaults(func=cmd_versions_register)
    v = vsub.add_parser(
        "set-default",
        parents=[server],
        help="make a version the default",
    )
    model_option(v)
    v.add_argument("version")
    v.set_defaults(func=cmd_versions_set_default)
    v = vsub.add_parser(
        "unregister",
        parents=[server],
        help="unregister a version (not the default while others exist)",
    )
    model_option(v)
    v.add_argument("version")
    v.set_defaults(func=cmd_versions_unregister)


def add_promote_and_rollback(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec promote` and `movierec rollback`: switch the default version and back."""
    p = sub.add_parser(
        "promote",
        parents=[server],
        help="make VERSION the default, remembering the previous one",
    )
    p.add_argument("version")
    model_option(p)
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
    model_option(p)
    p.add_argument(
        "--state-file",
        help="A/B state file (default: ab_state.json next to the key file)",
    )
    p.set_defaults(func=cmd_rollback)


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


def cmd_rollback(args: argparse.Namespace) -> int:
    """Run `rollback`."""
    with make_client(args) as client:
        print(versions.rollback(client, model=args.model, state_file=args.state_file))
    return 0
