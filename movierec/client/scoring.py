"""Batch scoring of a (user_id, movie_id) CSV through a dedicated TorchServe registration."""

from __future__ import annotations

import csv
import io
import itertools
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from model.data import canonical_column
from model.service import MAX_INSTANCES  # the server's default cap: a bigger chunk would get 413
from movierec.client.api import (
    DEFAULT_MODEL,
    MovieRecClient,
    MovieRecError,
    NotFound,
    ServerError,
)
from movierec.client.jobs import JobLeases

BATCH_MODEL = "movierec-batch"
OUTPUT_HEADER = ("user_id", "movie_id", "rating", "error")
DEFAULT_CHUNK = 5000
DEFAULT_CONCURRENCY = 8
DEFAULT_WORKERS = 2
DEFAULT_BATCH_SIZE = 1
DEFAULT_MAX_BATCH_DELAY_MS = 1
DEFAULT_IDLE_WORKERS = 0
SYNC_INTERVAL_S = 1.0
LOG_INTERVAL_S = 30.0

# (user_id, movie_id, problem): IDs exactly as in the file; problem is "" or why it is not sent.
# Plain tuples, because a million dataclass instances cost more than the HTTP round trips.
Row = tuple[str, str, str]
Record = tuple[str, str, str, str]
Instance = dict[str, str]
Prediction = dict[str, Any]
ScoreChunk = Callable[[list[Instance]], list[Prediction]]


class InputError(MovieRecError):
    """The input or output CSV cannot be used."""


@dataclass
class ScoreSummary:
    """What a scoring run did."""

    rows_scored: int
    rows_with_errors: int
    rows_skipped: int
    elapsed_s: float

    @property
    def rows_per_s(self) -> float:
        """Throughput of this run (resumed rows excluded)."""
        return self.rows_scored / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def __str__(self) -> str:
        resumed = f", {self.rows_skipped:,} already done before resume" if self.rows_skipped else ""
        return (
            f"scored {self.rows_scored:,} rows ({self.rows_with_errors:,} with errors{resumed}) "
            f"in {self.elapsed_s:.1f}s: {self.rows_per_s:,.0f} rows/s"
        )


def read_rows(path: str | os.PathLike[str]) -> Iterator[Row]:
    """Stream the rows of a user_id,movie_id[,...] CSV; extra columns are ignored."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty file, expected a header with user_id,movie_id")
        u, m = find_columns(header, ("user_id", "movie_id"), path)
        need = max(u, m) + 1
        for fields in reader:
            if not fields:
                continue
            if len(fields) < need:
                col = "user_id" if len(fields) <= u else "movie_id"
                yield ("", "", f"line {reader.line_num}: missing {col}")
                continue
            yield (fields[u], fields[m], "")


def find_columns(header: list[str], columns: tuple[str, ...], path: str | os.PathLike[str]) -> list[int]:
    """Index of each wanted column in a header row, with the same aliases as training data."""
    names = [canonical_column(name) for name in header]
    found = {col: names.index(col) if col in names else None for col in columns}
    missing = [col for col, idx in found.items() if idx is None]
    if missing:
        raise InputError(f"{path}: line 1: header {header} lacks column {', '.join(missing)}")
    return [found[col] for col in columns]


def chunked(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    """Group rows into lists of at most `size`."""
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def count_data_lines(path: str | os.PathLike[str]) -> int:
    """Rough number of data rows (newlines minus the header), for the progress bar."""
    lines = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1
    return max(lines - 1, 0)


def completed_rows(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Count complete data rows in an output CSV; return (rows, byte offset where they end).

    A record ends at a newline outside quotes. csv.writer doubles quotes inside
    quoted fields, so an even running quote count means we are outside quotes.
    """
    rows = -1  # the header is not a data row
    offset = 0
    quotes = 0
    pos = 0
    with open(path, "rb") as f:
        for line in f:
            pos += len(line)
            quotes += line.count(b'"')
            if line.endswith(b"\n") and quotes % 2 == 0:
                rows += 1
                offset = pos
                quotes = 0
    return max(rows, 0), offset


def prepare_output(path: str | os.PathLike[str], resume: bool) -> tuple[TextIO, int]:
    """Open the output for appending; on resume drop a partial last line and return rows done."""
    path = Path(path)
    # offset 0: not even the header made it to disk, so start over.
    done, offset = completed_rows(path) if resume and path.exists() else (0, 0)
    if offset > 0:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
        if header != list(OUTPUT_HEADER):
            raise InputError(f"{path}: cannot resume, header is {header}, expected {list(OUTPUT_HEADER)}")
        with open(path, "r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
        return open(path, "a", newline="", encoding="utf-8"), done
    out = open(path, "w", newline="", encoding="utf-8")
    csv.writer(out, lineterminator="\n").writerow(OUTPUT_HEADER)
    out.flush()
    os.fsync(out.fileno())
    return out, 0


def score_chunk_rows(rows: list[Row], score_chunk: ScoreChunk, first_row: int = 1) -> list[Record]:
    """Score one chunk; rows that failed locally are not sent and keep their own error."""
    instances = [{"user_id": u, "movie_id": m} for u, m, problem in rows if not problem]
    predictions = score_chunk(instances) if instances else []
    if len(predictions) != len(instances):
        raise ServerError(
            502,
            f"server returned {len(predictions)} predictions for {len(instances)} instances "
            f"(data rows {first_row}..{first_row + len(rows) - 1})",
        )
    answers = iter(predictions)
    out: list[Record] = []
    for u, m, problem in rows:
        if problem:
            out.append((u, m, "", problem))
            continue
        p = next(answers)
        rating = p.get("rating")
        if rating is not None:
            out.append((u, m, repr(float(rating)), ""))
        else:
            out.append((u, m, "", _one_line(p.get("error") or "no rating in the answer")))
    return out


def _one_line(text: str) -> str:
    # Keep one record per physical line so output files stay easy to inspect.
    return text.replace("\r", " ").replace("\n", " ")


def write_chunk(out: TextIO, records: list[Record], sync: bool = True) -> None:
    """Append whole records in one write and flush; with sync, force them to disk too."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(records)
    out.write(buf.getvalue())
    out.flush()
    if sync:
        os.fsync(out.fileno())


class _Progress:
    """A scoring run's progress: a redrawn bar on a terminal, else a plain line every LOG_INTERVAL_S.

    In a log file a redrawn bar is one endless line of carriage returns.
    """

    def __init__(self, enabled: bool, total: int | None, skipped: int, start: float) -> None:
        self.enabled, self.total, self.skipped, self.start = enabled, total, skipped, start
        self.interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            initial=skipped,
            unit="rows",
            unit_scale=True,
            smoothing=0.1,
            disable=not self.interactive,
            file=sys.stderr,
        )
        self.last_log = time.monotonic()

    def update(self, new_rows: int, scored: int, errors: int) -> None:
        """Count `new_rows` more rows; `scored` and `errors` are this run's totals so far."""
        self.bar.update(new_rows)
        if self.enabled and not self.interactive and time.monotonic() - self.last_log >= LOG_INTERVAL_S:
            self.last_log = time.monotonic()
            done, total = self.skipped + scored, self.total
            rate = scored / max(time.perf_counter() - self.start, 1e-9)
            share = f" ({done / total:.1%})" if total else ""
            print(
                f"progress: {done:,}/{total:,} rows{share}, {errors:,} with errors, {rate:,.0f} rows/s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        """Finish the bar."""
        self.bar.close()


def score_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    score_chunk: ScoreChunk,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    concurrency: int = DEFAULT_CONCURRENCY,
    resume: bool = False,
    progress: bool = True,
) -> ScoreSummary:
    """Score a CSV with `score_chunk`, writing results strictly in input order."""
    if not 1 <= chunk_size <= MAX_INSTANCES:
        raise InputError(f"chunk size must be 1..{MAX_INSTANCES}, got {chunk_size}")
    if concurrency < 1:
        raise InputError(f"concurrency must be at least 1, got {concurrency}")
    if Path(input_path).resolve() == Path(output_path).resolve():
        raise InputError("input and output are the same file")
    start = time.perf_counter()
    rows = read_rows(input_path)
    out, skipped = prepare_output(output_path, resume)
    for _ in itertools.islice(rows, skipped):
        pass
    scored = errors = 0
    shown = _Progress(progress, count_data_lines(input_path) if progress else None, skipped, start)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="score")
    # Queue a second round of chunks so workers never wait for the writer; still bounded.
    pending: deque[Future[list[Record]]] = deque()
    last_sync = time.monotonic()
    try:

        def drain_one() -> None:
            nonlocal scored, errors, last_sync
            records = pending.popleft().result()
            # Flushed data survives a killed process; fsync (costly per chunk) bounds what an OS crash loses.
            sync = time.monotonic() - last_sync >= SYNC_INTERVAL_S
            write_chunk(out, records, sync=sync)
            if sync:
                last_sync = time.monotonic()
            scored += len(records)
            errors += sum(1 for r in records if r[3])
            shown.update(len(records), scored, errors)

        first_row = skipped + 1
        for chunk in chunked(rows, chunk_size):
            pending.append(pool.submit(score_chunk_rows, chunk, score_chunk, first_row))
            first_row += len(chunk)
            if len(pending) >= 2 * concurrency:
                drain_one()
        while pending:
            drain_one()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        shown.close()
        out.flush()
        os.fsync(out.fileno())
        out.close()
    return ScoreSummary(scored, errors, skipped, time.perf_counter() - start)


@dataclass
class BatchSettings:
    """Throughput settings of the bulk-scoring registration."""

    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_delay: int = DEFAULT_MAX_BATCH_DELAY_MS
    workers: int = DEFAULT_WORKERS
    idle_workers: int = DEFAULT_IDLE_WORKERS


def ensure_batch_registration(
    client: MovieRecClient,
    *,
    model: str = DEFAULT_MODEL,
    version: str | None = None,
    batch_model: str = BATCH_MODEL,
    settings: BatchSettings | None = None,
) -> str:
    """Make sure `batch_model` serves the wanted version of `model`'s archive; return that version."""
    settings = settings or BatchSettings()
    version = version or client.default_version(model)
    try:
        present = version in client.versions(batch_model)
    except NotFound:
        present = False
    if not present:
        client.register(
            version,
            model=batch_model,
            batch_size=settings.batch_size,
            max_batch_delay=settings.max_batch_delay,
            initial_workers=settings.workers,
        )
    return version


def score_csv(
    client: MovieRecClient,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    model: str = DEFAULT_MODEL,
    version: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    concurrency: int = DEFAULT_CONCURRENCY,
    settings: BatchSettings | None = None,
    batch_model: str = BATCH_MODEL,
    resume: bool = False,
    progress: bool = True,
    manage: bool = True,
    jobs: JobLeases | None = None,
) -> ScoreSummary:
    """Score a CSV through the movierec-batch registration, scaling its workers for the job.

    Concurrent jobs on one server share the registration through `jobs` (by default leases
    under state_dir()): it runs the most workers any of them asked for, and the last one to
    finish scales it down to `settings.idle_workers`. With manage=False the registration and
    its workers are left as they are.
    """
    settings = settings or BatchSettings()
    if not manage:
        version = version or client.default_version(batch_model)
        return _score(client, input_path, output_path, batch_model, version, chunk_size, concurrency, resume, progress)

    jobs = jobs or JobLeases.for_server(client.endpoints.management_url)
    with jobs.locked():
        # Under the lock, so two jobs starting together do not both register.
        version = ensure_batch_registration(
            client,
            model=model,
            version=version,
            batch_model=batch_model,
            settings=settings,
        )
        target = f"{batch_model}/{version}"
        lease = jobs.add(target, settings.workers)
    try:
        with jobs.locked():
            client.scale(version, jobs.workers(target), model=batch_model)
        return _score(client, input_path, output_path, batch_model, version, chunk_size, concurrency, resume, progress)
    finally:
        # Runs on errors and Ctrl-C too (even during scale-up): idle bulk workers only hold memory,
        # but a job still running keeps the workers it asked for.
        with jobs.locked():
            jobs.remove(lease)
            workers = jobs.workers(target) or settings.idle_workers
            try:
                client.scale(version, workers, model=batch_model)
            except MovieRecError as exc:
                print(f"warning: could not scale {target} to {workers} workers: {exc}", file=sys.stderr)


def _score(
    client: MovieRecClient,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    batch_model: str,
    version: str,
    chunk_size: int,
    concurrency: int,
    resume: bool,
    progress: bool,
) -> ScoreSummary:
    """Run score_file against one version of the bulk registration."""

    def score_chunk(instances: list[Instance]) -> list[Prediction]:
        return client.predict_many(instances, model=batch_model, version=version)["predictions"]

    return score_file(
        input_path,
        output_path,
        score_chunk,
        chunk_size=chunk_size,
        concurrency=concurrency,
        resume=resume,
        progress=progress,
    )
