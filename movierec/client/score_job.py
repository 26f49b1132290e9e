"""The scoring job both codecs run (JSON in scoring.py, Arrow in arrow_scoring.py): checks, the cold-start probe,
input chunks through the codec to output records, written in input order by the job runner, and the summary."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model.protocol import MAX_INSTANCES  # the server's default cap: a bigger chunk would get 413
from movierec.client.columnar import FALLBACK_COLUMN, count_rows, score_layout
from movierec.client.runner import Task, check_job, run_job
from movierec.client.settings import DEFAULT_CONCURRENCY

PROBE_ID = "movierec-cold-start-probe"  # no model knows it: its answer shows the server's cold_start mode
MODE_CHANGED = "its cold_start mode changed since the job started (or the versions differ); score the file again"


@dataclass
class ScoreSummary:
    """What a scoring run did."""

    rows_scored: int
    rows_with_errors: int
    rows_skipped: int
    elapsed_s: float
    rows_fallback: int | None = None  # answered by the cold-start fallback; None: the server has none

    @property
    def rows_per_s(self) -> float:
        """Throughput of this run (resumed rows excluded)."""
        return self.rows_scored / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def __str__(self) -> str:
        resumed = f", {self.rows_skipped:,} already done before resume" if self.rows_skipped else ""
        cold = "" if self.rows_fallback is None else f", {self.rows_fallback:,} cold-start fallbacks"
        return (
            f"scored {self.rows_scored:,} rows ({self.rows_with_errors:,} with errors{cold}{resumed}) "
            f"in {self.elapsed_s:.1f}s: {self.rows_per_s:,.0f} rows/s"
        )


def v1_path(model: str) -> str:
    """KServe's v1 predict route, which TorchServe serves natively for the model's default version."""
    return f"/v1/models/{model}:predict"


class Codec(Protocol):
    """How a scoring job talks to the server: input chunks in, one request per chunk, output records back."""

    default_chunk: int  # rows per request when the job names none

    def probe(self) -> bool:
        """Whether the server flags answers from its average user/movie (cold_start: fallback): one probe pair."""
        ...

    def chunks(self, path: str | os.PathLike[str], size: int, skip: int) -> Iterable[Sized]:
        """Chunks of at most `size` input rows, in input order, after the first `skip`."""
        ...

    def score(self, chunk: Any, first_row: int, fallback: bool) -> pa.Table:
        """Score one chunk (rows with a local problem are not sent) into records (score_records)."""
        ...


def score_records(
    users: pa.Array, movies: pa.Array, ratings: np.ndarray, errors: pa.Array, flags: pa.Array | None
) -> pa.Table:
    """A chunk's output records: NaN ratings become empty, with an error ("no rating in the answer" if none).

    With `flags` (cold_start: fallback) the records end with them, null for a personal prediction.
    """
    # One record per physical line keeps CSV outputs easy to inspect.
    errors = pc.replace_substring(pc.replace_substring(errors, "\r", " "), "\n", " ")
    missing = np.isnan(ratings)
    if errors.null_count and missing.any():
        errors = pc.if_else(pc.and_(pa.array(missing), errors.is_null()), "no rating in the answer", errors)
    rating = pa.array(ratings, pa.float64(), mask=missing)
    records = {"user_id": users, "movie_id": movies, "rating": rating, "error": errors}
    return pa.table(records if flags is None else {**records, FALLBACK_COLUMN: flags})


def score_with(
    codec: Codec,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    chunk_size: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    resume: bool = False,
    progress: bool = True,
    fallback: bool | None = None,
) -> ScoreSummary:
    """Score an input through `codec`, writing results strictly in input order.

    `chunk_size` None is the codec's default_chunk. The output has a fallback column when `fallback` is
    true; None asks the server (codec.probe).
    """
    chunk_size = codec.default_chunk if chunk_size is None else chunk_size
    check_job(chunk_size, MAX_INSTANCES, "chunk size", concurrency, input_path, output_path)
    start = time.perf_counter()
    if fallback is None:
        fallback = codec.probe()

    def tasks(skip: int) -> Iterator[Task]:
        first_row = skip + 1
        for chunk in codec.chunks(input_path, chunk_size, skip):
            yield functools.partial(codec.score, chunk, first_row, fallback)
            first_row += len(chunk)

    def plan(skip: int) -> tuple[int | None, Iterator[Task]]:
        return (count_rows(input_path) if progress else None), tasks(skip)

    layout = score_layout(fallback)
    tally = run_job(output_path, layout, plan, resume=resume, concurrency=concurrency, progress=progress, start=start)
    fallbacks = tally.fallbacks if fallback else None
    return ScoreSummary(tally.done, tally.errors, tally.skipped, time.perf_counter() - start, fallbacks)
