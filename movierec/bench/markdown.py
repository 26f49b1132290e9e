"""Markdown pieces shared by the benchmark reports: number formats, and writing only one's own sections.

BENCHMARKS.md is written by several programs (`make bench`, `make soak`, and the `## Scale` section
pasted from `make bench-scale`); each replaces its own `## ` sections and keeps everyone else's.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

FENCE = "```"


def median(runs: list[dict], key: str) -> float:
    """Median of one field over rounds."""
    return statistics.median(run[key] for run in runs)


def spread(runs: list[dict], key: str, fmt: Callable[[float], str]) -> str:
    """The median, and the min-max over rounds when there was more than one."""
    values = [run[key] for run in runs]
    text = fmt(statistics.median(values))
    return text if len(values) == 1 else f"{text} ({fmt(min(values))}–{fmt(max(values))})"


def rate(x: float) -> str:
    """A throughput with a readable unit."""
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e4:
        return f"{x / 1e3:.0f} k"
    return f"{x:,.0f}"


def ms(x: float) -> str:
    """Milliseconds with precision where it matters."""
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def verdict(ok: bool) -> str:
    """Met / missed, for the targets column."""
    return "met" if ok else "**missed**"


def measured(configs: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The configurations that have at least one run."""
    return {key: runs for key, runs in configs.items() if runs}


def split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The text before the first `## ` heading, and (heading line, section text) for each `## ` section.

    A section runs to the next `## ` heading (its `###` subsections included); headings inside code
    fences do not count.
    """
    preamble: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    fenced = False
    for line in text.splitlines(keepends=True):
        if line.startswith(FENCE):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            sections.append((line.strip(), [line]))
        elif sections:
            sections[-1][1].append(line)
        else:
            preamble.append(line)
    return "".join(preamble), [(heading, "".join(body)) for heading, body in sections]


def join_sections(*parts: str) -> str:
    """Markdown pieces joined with one blank line between them and a final newline."""
    return "\n\n".join(part.strip("\n") for part in parts if part.strip()) + "\n"


def keep_others(old: str, new: str, owns: Callable[[str], bool]) -> str:
    """`new` (a whole report), followed by the sections of `old` whose heading `owns` does not claim."""
    _, sections = split_sections(old)
    return join_sections(new, *(text for heading, text in sections if not owns(heading)))


def put_section(old: str, section: str) -> str:
    """`old` with its section of the same heading replaced by `section`, or with `section` appended."""
    heading = section.lstrip("\n").splitlines()[0].strip()
    preamble, sections = split_sections(old)
    texts = [section if h == heading else text for h, text in sections]
    if heading not in (h for h, _ in sections):
        texts.append(section)
    return join_sections(preamble, *texts)
