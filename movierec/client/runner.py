"""The one ordered runner of the client: tasks on a thread pool, their results taken strictly in task order.

`score` and `recommend-all` write each answer to a resumable output (run_job); `ab-eval` records each one
(in_order). Resending a request lost with its worker is the transport's part (batch.BatchLease.resend).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from movierec.client.columnar import FALLBACK_COLUMN, InputError, Layout, open_output
from movierec.client.progress import Progress

SYNC_INTERVAL_S = 1.0
T = TypeVar("T")
Task = Callable[[], pa.Table]  # one request, answered as output records
Plan = Callable[[int], tuple[int | None, Iterable[Task]]]  # units already done -> (units in the job, the tasks left)


def check_job(
    size: int,
    limit: int,
    what: str,
    concurrency: int,
    input_path: str | os.PathLike[str] | None,
    output_path: str | os.PathLike[str],
    input_name: str = "input",
) -> None:
    """Refuse job settings that cannot work (`size` units of `what` per request, at most `limit`), before any file
    is touched."""
    if not 1 <= size <= limit:
        raise InputError(f"{what} must be 1..{limit}, got {size}")
    if concurrency < 1:
        raise InputError(f"concurrency must be at least 1, got {concurrency}")
    if input_path is not None and Path(input_path).resolve() == Path(output_path).resolve():
        raise InputError(f"{input_name} and output are the same file")


def in_order(tasks: Iterable[Callable[[], T]], take: Callable[[T], None], concurrency: int, name: str) -> None:
    """Run `tasks` on `concurrency` threads and hand each result to `take` in task order."""
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=name)
    # A second round of tasks queued so the threads never wait for `take`; still bounded.
    pending: deque[Future[T]] = deque()
    try:
        for task in tasks:
            pending.append(pool.submit(task))
            if len(pending) >= 2 * concurrency:
                take(pending.popleft().result())
        while pending:
            take(pending.popleft().result())
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Tally:
    """What one run of a job did, in input units (rows or users)."""

    skipped: int  # already in the output before a resume
    done: int = 0
    errors: int = 0
    fallbacks: int = 0  # answered by the server's cold-start fallback

    def add(self, records: pa.Table, starts: pa.Array) -> int:
        """Count the units in `records` (`starts` marks the first record of each); returns how many."""

        def units_with(column: str) -> int:
            return pc.sum(pc.and_(starts, pc.is_valid(records.column(column)))).as_py() or 0

        units = pc.sum(starts).as_py() or 0
        self.done += units
        self.errors += units_with("error")
        self.fallbacks += units_with(FALLBACK_COLUMN) if FALLBACK_COLUMN in records.column_names else 0
        return units


def run_job(
    output_path: str | os.PathLike[str],
    layout: Layout,
    plan: Plan,
    *,
    resume: bool,
    concurrency: int,
    progress: bool,
    start: float,
    unit: str = "rows",
) -> Tally:
    """Open the output (a resume keeps what it holds), run the tasks of plan(units kept) and write their answers.

    Answers are written in task order and synced at most every SYNC_INTERVAL_S. The output is closed
    whatever happens; only a run that wrote every answer completes it (a Parquet output is merged then).
    """
    out = open_output(output_path, resume, layout)
    tally, meter, complete = Tally(out.done), None, False
    last_sync = time.monotonic()

    def write(records: pa.Table) -> None:
        nonlocal last_sync
        # Flushed data survives a killed process; fsync (costly per chunk) bounds what an OS crash loses.
        sync = time.monotonic() - last_sync >= SYNC_INTERVAL_S
        out.write(records, sync)
        if sync:
            last_sync = time.monotonic()
        meter.update(tally.add(records, layout.units(records)), tally.done, tally.errors)

    try:
        total, tasks = plan(out.done)
        meter = Progress(progress, total, out.done, start, unit)
        in_order(tasks, write, concurrency, "job")
        complete = True
    finally:
        if meter is not None:
            meter.close()
        out.close(complete)
    return tally
