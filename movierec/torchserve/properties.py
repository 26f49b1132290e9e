"""Read and write java.util.Properties files the way TorchServe's ConfigManager reads them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path


def read_properties(path: Path) -> dict[str, str]:
    """Parse a Java properties file the way TorchServe's ConfigManager reads it."""
    return parse_properties(Path(path).read_text(encoding="utf-8"))


def parse_properties(text: str) -> dict[str, str]:
    """Parse the text of a Java properties file the way TorchServe's ConfigManager reads it."""
    lines = text.splitlines()
    return {key: value for key, value, _, _ in _entries(lines)}


def set_property(text: str, key: str, value: str) -> str:
    """The properties text with the one entry of key replaced by key=value; comments and order are kept."""
    lines = text.splitlines()
    found = [(start, end) for name, _, start, end in _entries(lines) if name == key]
    if len(found) != 1:
        raise ValueError(f"expected exactly one {key} entry, found {len(found)}")
    ((start, end),) = found
    lines[start:end] = [f"{key}={_escape(value)}"]
    return "\n".join(lines) + "\n"


def _entries(lines: list[str]) -> Iterator[tuple[str, str, int, int]]:
    """Each entry's key, value and the range of lines it spans, in file order."""
    i = 0
    while i < len(lines):
        start, line = i, lines[i].lstrip()
        i += 1
        if not line or line[0] in "#!":
            continue
        # A line ending in an odd number of backslashes continues on the next one.
        while _continues(line) and i < len(lines):
            line = line[:-1] + lines[i].lstrip()
            i += 1
        key, value = _split_property(line)
        yield _unescape(key), _unescape(value), start, i


def _continues(line: str) -> bool:
    """Whether a properties line ends with an unescaped backslash."""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _split_property(line: str) -> tuple[str, str]:
    """Split a logical properties line into its raw key and raw value."""
    j, escaped = 0, False
    while j < len(line):
        c = line[j]
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c in "=: \t\f":
            break
        j += 1
    key, rest = line[:j], line[j:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return key, rest


def _unescape(text: str) -> str:
    """Undo Java properties escapes (\\t, \\n, \\uXXXX, \\x -> x)."""
    out, j = [], 0
    while j < len(text):
        c = text[j]
        if c != "\\" or j + 1 == len(text):
            out.append(c)
            j += 1
            continue
        n = text[j + 1]
        if n == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[j + 2 : j + 6]):
            out.append(chr(int(text[j + 2 : j + 6], 16)))
            j += 6
            continue
        out.append({"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(n, n))
        j += 2
    return "".join(out)


def _escape(value: str) -> str:
    """Escape a value so java.util.Properties reads it back unchanged."""
    text = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    text = text.replace("\t", "\\t").replace("\f", "\\f")
    return "\\" + text if text.startswith(" ") else text


def write_properties(path: Path, props: dict[str, str], header: str) -> None:
    """Write properties that Java reads back exactly as given."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key}={_escape(value)}" for key, value in props.items()]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
