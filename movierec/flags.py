"""Command-line pieces every movierec command shares: --version, and old flag spellings that still work."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from movierec.defaults import package_version


class _Version(argparse.Action):
    """Print "PROG VERSION" and exit; the version is looked up only when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        print(f"{parser.prog} {package_version()}")
        parser.exit()


def add_version_option(parser: argparse.ArgumentParser) -> None:
    """--version: print the installed package's version and exit."""
    parser.add_argument("--version", nargs=0, action=_Version, help="print the package version and exit")


class _Renamed(argparse.Action):
    """An old spelling of a flag: stores into the new flag's destination and says so on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_renamed(parser: argparse.ArgumentParser, old: str, new: str, **kwargs: Any) -> None:
    """Keep `old` working as a hidden alias of the flag `new` (pass new's type, or nargs=0 for a switch), warning on
    stderr when used."""
    dest = new.lstrip("-").replace("-", "_")
    parser.add_argument(old, dest=dest, action=_Renamed, new=new, help=argparse.SUPPRESS, **kwargs)


class _Retired(argparse.Action):
    """A flag whose setting no longer exists: still parsed, so old scripts run, and named on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, instead: str, **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)
        self.instead = instead

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        print(f"{parser.prog}: {option_string} is no longer used: {self.instead}", file=sys.stderr)


def add_retired(parser: argparse.ArgumentParser, old: str, instead: str, **kwargs: Any) -> None:
    """Accept `old` (pass its type) without effect, saying on stderr what to use `instead`."""
    parser.add_argument(old, action=_Retired, instead=instead, help=argparse.SUPPRESS, **kwargs)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """Seconds from "90", "90s", "20m" or "1.5h": every command's length-of-time flags take this."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90, 90s, 20m or 1.5h") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration cannot be negative")
    return seconds


def whole_seconds(text: str) -> int:
    """A duration rounded to whole seconds, for tools such as wrk that take no fractions."""
    return round(duration(text))


def minutes(text: str) -> float:
    """Seconds from a plain number of minutes (the old --minutes spellings)."""
    return float(text) * 60
