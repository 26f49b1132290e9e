"""`movierec recommend-all`: top-K recommendations for every user (or a listed set) as one resumable job.

Requests are Arrow multi-user recommendation bodies (model/arrow.py): a `user_id` column for
listed users, or a `user_rows` range that pages through the model's own users in its order. The
output (CSV, or Parquet by extension) holds `user_id,rank,movie_id,title,score,error`: one row per
recommended movie, best first, or one row with only user_id and error for a user who gets none
(an unknown listed user, or one with no movie left). Users are written whole and in order, so a
resumed job counts the users already written (a row with rank 1 or an error starts a user), drops
the last one, which a crash may have cut short, and goes on from there.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model.arrow import RECOMMENDATION_SCHEMA
from model.protocol import DEFAULT_TOP_K, MAX_USERS
from movierec.client.api import MovieRecClient, ServerError
from movierec.client.arrow_scoring import post_arrow, wire_ids
from movierec.client.batch import BatchJob, BatchLease, run_on_batch
from movierec.client.columnar import InputError, Layout, complete_records, find_columns, is_parquet
from movierec.client.runner import Task, check_job, run_job
from movierec.client.settings import DEFAULT_CONCURRENCY, DEFAULT_USERS_PER_REQUEST

OUTPUT_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("rank", pa.int32()),
        ("movie_id", pa.string()),
        ("title", pa.string()),
        ("score", pa.float64()),
        ("error", pa.string()),
    ]
)
OUTPUT_HEADER = tuple(OUTPUT_SCHEMA.names)
NOTHING_LEFT = "no movies left to recommend"
Post = Callable[[bytes], bytes]


@dataclass
class RecommendSummary:
    """What a recommend-all run did."""

    users_done: int
    users_with_errors: int
    users_skipped: int
    elapsed_s: float

    @property
    def users_per_s(self) -> float:
        """Throughput of this run (users done before a resume excluded)."""
        return self.users_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def __str__(self) -> str:
        resumed = f", {self.users_skipped:,} already done before resume" if self.users_skipped else ""
        return (
            f"recommended for {self.users_done:,} users ({self.users_with_errors:,} with errors{resumed}) "
            f"in {self.elapsed_s:.2f}s: {self.users_per_s:,.0f} users/s"
        )


@dataclass(frozen=True)
class RecommendOptions:
    """What every request of a job asks for."""

    top_k: int = DEFAULT_TOP_K
    exclude_rated: bool = True


def read_user_ids(path: str | os.PathLike[str]) -> pa.Array:
    """The user_id column of a CSV or Parquet file (same header aliases as `score`), IDs as written."""
    if is_parquet(path):
        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{path}: cannot read Parquet: {exc}") from exc
        (col,) = find_columns(names, ("user_id",), path)
        return pq.read_table(path, columns=[names[col]]).column(0).combine_chunks().cast(pa.string())
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty file, expected a header with user_id")
        (col,) = find_columns(header, ("user_id",), path)
        # A short row keeps its place as an empty ID, which the server answers with an error row.
        return pa.array([fields[col] if len(fields) > col else "" for fields in reader if fields], pa.string())


def request_body(
    options: RecommendOptions, users: pa.Array | None = None, rows: tuple[int, int] | None = None
) -> bytes:
    """A multi-user Arrow request: listed `users`, or the model's users rows[0]..rows[1]-1."""
    meta = {b"top_k": str(options.top_k).encode(), b"exclude_rated": str(options.exclude_rated).lower().encode()}
    if rows is not None:
        meta[b"user_rows"] = f"{rows[0]}:{rows[1]}".encode()
        schema = pa.schema([], metadata=meta)
        batch = None
    else:
        batch = pa.record_batch([wire_ids(users)], names=["user_id"])
        schema = batch.schema.with_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        if batch is not None:
            writer.write_batch(batch.replace_schema_metadata(meta))
    return sink.getvalue().to_pybytes()


def read_recommendations(body: bytes, n_users: int, first: int) -> tuple[pa.Table, int]:
    """An answer as output records for n_users users (request order), and the model's user count."""
    try:
        answer = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
        total = int((answer.schema.metadata or {}).get(b"n_users", b"-1"))
        answer = answer.select(RECOMMENDATION_SCHEMA.names).cast(RECOMMENDATION_SCHEMA.remove_metadata())
    except (pa.ArrowInvalid, KeyError, ValueError) as exc:
        raise ServerError(502, f"unreadable recommendations for users {first + 1}..: {exc}") from exc
    user = answer.column("user").to_numpy()
    # Every user asked for is answered, in order: its movies, or one row without a movie.
    if len(user) and (user.min() < 0 or user.max() >= n_users or (np.diff(user) < 0).any()):
        raise ServerError(502, f"answer names users outside the {n_users} asked for (users {first + 1}..)")
    if len(np.unique(user)) != n_users:
        raise ServerError(502, f"answer leaves out some of the {n_users} users asked for (users {first + 1}..)")
    return answer, total


def to_output(answer: pa.Table, ids: pa.Array | None) -> pa.Table:
    """Output records: user_id as listed in the users file (or as the server names it), no `user` column."""
    user_id = answer.column("user_id") if ids is None else pc.take(ids, answer.column("user"))
    error = pc.replace_substring(pc.replace_substring(answer.column("error"), "\r", " "), "\n", " ")
    # A row without a movie and without an error: the server had no movie left for that user.
    empty = pc.and_(pc.is_null(answer.column("rank")), pc.is_null(error))
    error = pc.if_else(empty, NOTHING_LEFT, error)
    columns = [user_id, answer.column("rank"), answer.column("movie_id"), answer.column("title")]
    return pa.Table.from_arrays([*columns, answer.column("score"), error], schema=OUTPUT_SCHEMA)


def user_starts(records: pa.Table) -> pa.Array:
    """Per record, whether it starts a user: rank 1, or a user's single error row."""
    rank = records.column("rank")
    return pc.or_kleene(pc.is_null(rank), pc.equal(rank, 1))


def users_written(path: Path) -> tuple[int, int]:
    """(users kept, byte offset where they end) of a CSV output: complete records, the last user dropped."""
    records = complete_records(path)
    _, header_end = next(records)  # CsvOutput checked the header
    starts: list[int] = []  # byte offset of each user's first record
    begin = header_end
    for record, end in records:
        fields = next(csv.reader(io.StringIO(record.decode("utf-8"), newline="")))
        if len(fields) > 1 and fields[1] in ("1", ""):
            starts.append(begin)
        begin = end
    # The last user may have been cut short by a crash, so it is written again.
    return max(len(starts) - 1, 0), starts[-1] if starts else header_end


def users_in_part(part: Path) -> int:
    """Users in a Parquet part file: parts hold whole users, so every user in them counts."""
    return pc.sum(user_starts(pq.read_table(part, columns=["rank"]))).as_py() or 0


LAYOUT = Layout(OUTPUT_SCHEMA, starts=user_starts, kept_csv=users_written, kept_parquet=users_in_part)


def plan(
    post: Post, options: RecommendOptions, listed: pa.Array | None, per_request: int, start: int
) -> tuple[int, Iterator[Task]]:
    """(users in the job, one task per request from user `start` on)."""
    if listed is not None:
        total = len(listed)
    else:
        # The model's user count comes with any answer; an empty range asks for nothing else.
        _, total = read_recommendations(post(request_body(options, rows=(0, 0))), 0, 0)
        if total < 0:
            raise ServerError(502, "the server's answer does not say how many users the model has")

    def tasks() -> Iterator[Task]:
        for first in range(start, total, per_request):
            end = min(first + per_request, total)
            if listed is None:
                body, ids = request_body(options, rows=(first, end)), None
            else:
                ids = listed[first:end]
                body = request_body(options, users=ids)
            yield functools.partial(_answer, post, body, first, end, ids)

    return total, tasks()


def _answer(post: Post, body: bytes, first: int, end: int, ids: pa.Array | None) -> pa.Table:
    answer, _ = read_recommendations(post(body), end - first, first)
    return to_output(answer, ids)


def recommend_file(
    output_path: str | os.PathLike[str],
    post: Post,
    *,
    users_path: str | os.PathLike[str] | None = None,
    options: RecommendOptions | None = None,
    per_request: int = DEFAULT_USERS_PER_REQUEST,
    concurrency: int = DEFAULT_CONCURRENCY,
    resume: bool = False,
    progress: bool = True,
) -> RecommendSummary:
    """Write top-K lists for all users (or those in users_path) with Arrow bodies sent through `post`."""
    check_job(per_request, MAX_USERS, "users per request", concurrency, users_path, output_path, "users file")
    options = options or RecommendOptions()
    start = time.perf_counter()
    listed = read_user_ids(users_path) if users_path is not None else None

    tally = run_job(
        output_path,
        LAYOUT,
        functools.partial(plan, post, options, listed, per_request),
        resume=resume,
        concurrency=concurrency,
        progress=progress,
        start=start,
        unit="users",
    )
    return RecommendSummary(tally.done, tally.errors, tally.skipped, time.perf_counter() - start)


def recommend_all(
    client: MovieRecClient,
    output_path: str | os.PathLike[str],
    job: BatchJob | None = None,
    *,
    users_path: str | os.PathLike[str] | None = None,
    options: RecommendOptions | None = None,
    per_request: int = DEFAULT_USERS_PER_REQUEST,
    **fields: Any,
) -> RecommendSummary:
    """Run the job through the movierec-batch registration, under a worker lease like `score` (manage=False: as is).

    `job` (or its fields as keywords) says where and how (BatchJob).
    """
    job = replace(job or BatchJob(), **fields)
    check_job(per_request, MAX_USERS, "users per request", job.concurrency, users_path, output_path, "users file")

    def run(lease: BatchLease) -> RecommendSummary:
        def post(body: bytes) -> bytes:
            return lease.resend(lambda: post_arrow(client, body, model=job.batch_model, version=lease.version))

        return recommend_file(
            output_path,
            post,
            users_path=users_path,
            options=options,
            per_request=per_request,
            concurrency=job.concurrency,
            resume=job.resume,
            progress=job.progress,
        )

    return run_on_batch(client, job, run)
