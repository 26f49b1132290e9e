"""`movierec versions`, `promote` and `rollback`: which archive versions serve, and which is the default."""

from __future__ import annotations

import argparse

from movierec.client.cli_common import make_client, model_option, version_option
from movierec.client.settings import STATE_FILE_NAME


def add_versions(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec versions list|set-default`; versions come and go with the model store (movierec-serve reload)."""
    p = sub.add_parser(
        "versions",
        help="list versions, set the default",
        description="List the registered versions or set the default. To add or remove a version, put its "
        "movierec-VERSION.mar into (or take it out of) the server's model store and run "
        "`movierec-serve reload --run-dir RUN_DIR`: the model API is off, so nothing registers over HTTP.",
    )
    vsub = p.add_subparsers(dest="versions_command", required=True, metavar="ACTION")
    v = vsub.add_parser("list", parents=[server], help="list registered versions")
    model_option(v)
    v.set_defaults(func=cmd_versions_list)
    v = vsub.add_parser("set-default", parents=[server], help="make a version the default")
    model_option(v)
    version_option(v, "the version to make the default", required=True)
    v.set_defaults(func=cmd_versions_set_default)


def add_promote_and_rollback(sub: argparse._SubParsersAction, server: argparse.ArgumentParser) -> None:
    """`movierec promote` and `movierec rollback`: switch the default version and back."""
    p = sub.add_parser("promote", parents=[server], help="make VERSION the default, remembering the previous one")
    version_option(p, "the version to make the default", required=True)
    model_option(p)
    p.add_argument("--state-file", help=f"A/B state file (default: {STATE_FILE_NAME} next to the key file)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", parents=[server], help="restore the default replaced by the last promote")
    model_option(p)
    p.add_argument("--state-file", help=f"A/B state file (default: {STATE_FILE_NAME} next to the key file)")
    p.set_defaults(func=cmd_rollback)


def cmd_versions_list(args: argparse.Namespace) -> int:
    """Run `versions list`."""
    from movierec.client import versions

    with make_client(args) as client:
        print(versions.format_versions(args.model, versions.list_versions(client, args.model)))
    return 0


def cmd_versions_set_default(args: argparse.Namespace) -> int:
    """Run `versions set-default` (no rollback record; use promote for that)."""
    with make_client(args) as client:
        answer = client.set_default(args.version, model=args.model)
    print(answer.get("status", answer) if isinstance(answer, dict) else answer)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Run `promote`."""
    from movierec.client import versions

    with make_client(args) as client:
        print(versions.promote(client, args.version, model=args.model, state_file=args.state_file))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Run `rollback`."""
    from movierec.client import versions

    with make_client(args) as client:
        print(versions.rollback(client, model=args.model, state_file=args.state_file))
    return 0
