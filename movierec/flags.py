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
        setattr(namespace, self.dest, values)


def add_renamed(parser: argparse.ArgumentParser, old: str, new: str, **kwargs: Any) -> None:
    """Keep `old` working as a hidden alias of the flag `new` (pass new's type), warning on stderr when used."""
    dest = new.lstrip("-").replace("-", "_")
    parser.add_argument(old, dest=dest, action=_Renamed, new=new, help=argparse.SUPPRESS, **kwargs)
