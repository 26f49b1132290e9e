"""Shared pieces of the movierec command line: server options, argument types and the client."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from movierec.defaults import (
    ENV_INFERENCE_URL,
    ENV_KEY_FILE,
    ENV_MANAGEMENT_URL,
    INFERENCE_URL,
    KEY_FILE,
    MANAGEMENT_URL,
    MODEL,
)
from movierec.torchserve.errors import MovieRecError, ServerError, ServerUnreachable

if TYPE_CHECKING:
    from movierec.client.api import MovieRecClient


class JobFailed(MovieRecError):
    """A bulk job stopped on a server error; the message says how to resume it."""


def server_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("server")
    group.add_argument("--inference-url", help=f"inference API (env {ENV_INFERENCE_URL}; default {INFERENCE_URL})")
    group.add_argument("--management-url", help=f"management API (env {ENV_MANAGEMENT_URL}; default {MANAGEMENT_URL})")
    group.add_argument("--key-file", help=f"TorchServe key_file.json (env {ENV_KEY_FILE}; default {KEY_FILE})")
    group.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    group.add_argument(
        "--retries",
        type=int,
        default=5,
        help="quick retries on 503 and connection errors (default 5); bulk jobs also wait up to 2 min for "
        "lost workers to restart",
    )
    return parent


def model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=MODEL, help="model name (default %(default)s)")


def percent(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be within 0..100, got {text}")
    return value


class _PositionalVersion(argparse.Action):
    """VERSION as a positional argument, as `promote` and `versions set-default` took it: kept one release."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values, option_string=None):
        if values is not None:
            print(f"{parser.prog}: VERSION as an argument is deprecated, use --version {values}", file=sys.stderr)
            namespace.version = values


def version_option(parser: argparse.ArgumentParser, help: str, required: bool = False) -> None:
    """--version V: how every command names a model version (required: the command acts on one)."""
    parser.add_argument("--version", help=help)
    if required:
        parser.add_argument("old_version", nargs="?", action=_PositionalVersion, help=argparse.SUPPRESS)
        parser.set_defaults(needs_version=True)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def raw_id(text: str) -> int | str:
    """IDs typed on the command line: decimal ones go out as JSON numbers, the rest as strings."""
    return int(text) if text.isdigit() and str(int(text)) == text else text


def make_client(args: argparse.Namespace, pool_size: int = 16) -> MovieRecClient:
    """A client from the server options of a parsed command line."""
    from movierec.client.api import MovieRecClient  # requests and urllib3: only once a command runs

    return MovieRecClient(
        args.inference_url,
        args.management_url,
        args.key_file,
        model=getattr(args, "model", MODEL),
        timeout=args.timeout,
        retries=args.retries,
        pool_size=pool_size,
    )


def resume_command(args: argparse.Namespace) -> str:
    """The exact command line that continues this bulk job where it stopped."""
    argv = list(getattr(args, "argv", None) or [args.command, "..."])
    return shlex.join(["movierec", *argv, *([] if "--resume" in argv else ["--resume"])])


@contextmanager
def resumable(args: argparse.Namespace) -> Iterator[None]:
    """Turn a server failure during a bulk job into one line ending with the command that resumes it."""
    try:
        yield
    except (ServerError, ServerUnreachable) as exc:
        reason = " ".join(str(exc).split())
        raise JobFailed(f"{reason}; finished rows are kept, continue with: {resume_command(args)}") from exc
