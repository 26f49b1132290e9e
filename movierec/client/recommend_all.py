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
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model.arrow import RECOMMENDATION_SCHEMA
from model.protocol import DEFAULT_TOP_K, MAX_USERS
from movierec.client.api import DEFAULT_MODEL, MovieRecClient, ServerError, recovering
from movierec.client.arrow_scoring import post_arrow, wire_ids
from movierec.client.columnar import InputError, ParquetOutput, find_columns, is_parquet
from movierec.client.jobs import JobLeases
from movierec.client.scoring import (
    BATCH_MODEL,
    DEFAULT_CONCURRENCY,
    SYNC_INTERVAL_S,
    BatchLease,
    BatchSettings,
    Progress,
    leased_batch_version,
)
from movierec.client.settings import DEFAULT_USERS_PER_REQUEST

OUTPUT_HEADER = ("user_id", "rank", "movie_id", "title", "score", "error")
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


class CsvRecommendations:
    """The CSV output: header, whole users appended in order; resume keeps all but the last user written."""

    def __init__(self, path: str | os.PathLike[str], resume: bool):
        path = Path(path)
        self.done = 0
        if resume and path.exists():
            self.done, offset = _users_written(path)
            if self.done:
                with open(path, "r+b") as f:
                    f.truncate(offset)
                    os.fsync(f.fileno())
        if not self.done:
            with open(path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f, lineterminator="\n").writerow(OUTPUT_HEADER)
        self.file = open(path, "ab")  # noqa: SIM115 - open for the whole job, closed in close()

    def write(self, records: pa.Table, sync: bool) -> None:
        """Append records; with sync, force them to disk."""
        buf = io.StringIO()
        columns = [records.column(name).to_pylist() for name in OUTPUT_HEADER]
        columns[4] = ["" if s is None else repr(s) for s in columns[4]]
        csv.writer(buf, lineterminator="\n").writerows(zip(*columns, strict=True))
        self.file.write(buf.getvalue().encode())
        self.file.flush()
        if sync:
            os.fsync(self.file.fileno())

    def close(self, complete: bool) -> None:
        """Flush to disk and close."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def _users_written(path: Path) -> tuple[int, int]:
    """(users kept, byte offset where they end) of a CSV output: complete records, the last user dropped."""
    header_line = (",".join(OUTPUT_HEADER) + "\n").encode()
    with open(path, "rb") as f:
        head = f.read(len(header_line))
        if head != header_line:
            if header_line.startswith(head):
                return 0, 0  # not even the header reached the disk
            raise InputError(f"{path}: cannot resume, it does not start with the header {','.join(OUTPUT_HEADER)}")
        starts: list[int] = []  # byte offset of each user's first record
        pos, record, quotes = len(header_line), b"", 0
        for line in f:
            record += line
            quotes += line.count(b'"')
            # A record ends at a newline outside quotes (csv.writer doubles quotes inside fields).
            if line.endswith(b"\n") and quotes % 2 == 0:
                fields = next(csv.reader(io.StringIO(record.decode("utf-8"), newline="")))
                if len(fields) > 1 and fields[1] in ("1", ""):
                    starts.append(pos)
                pos += len(record)
                record, quotes = b"", 0
    # The last user may have been cut short by a crash, so it is written again.
    return max(len(starts) - 1, 0), starts[-1] if starts else len(header_line)


class ParquetRecommendations(ParquetOutput):
    """The Parquet output (parts merged at the end); parts hold whole users, so every user in them counts."""

    def __init__(self, path: str | os.PathLike[str], resume: bool):
        super().__init__(path, resume)
        parts = sorted(self.parts.glob("part-*.parquet"))
        self.done = sum(pc.sum(user_starts(pq.read_table(p, columns=["rank"]))).as_py() or 0 for p in parts)

    def close(self, complete: bool) -> None:
        """Keep what was written; when complete, merge the parts (an empty job still gets its columns)."""
        if complete and not self.buffer and not any(self.parts.glob("part-*.parquet")):
            self.buffer.append(OUTPUT_SCHEMA.empty_table())
        super().close(complete)


def open_recommendations(path: str | os.PathLike[str], resume: bool) -> CsvRecommendations | ParquetRecommendations:
    """The output for a path by extension; `.done` is how many users it already holds."""
    return ParquetRecommendations(path, resume) if is_parquet(path) else CsvRecommendations(path, resume)


def plan(
    post: Post, options: RecommendOptions, listed: pa.Array | None, per_request: int, start: int
) -> tuple[int, Iterator]:
    """(users in the job, one (first user, body, ids) per request from user `start` on)."""
    if listed is not None:
        total = len(listed)
        firsts = range(start, total, per_request)
        return total, ((i, request_body(options, users=listed[i : i + per_request]), listed) for i in firsts)
    # The model's user count comes with any answer; an empty range asks for nothing else.
    _, total = read_recommendations(post(request_body(options, rows=(0, 0))), 0, 0)
    if total < 0:
        raise ServerError(502, "the server's answer does not say how many users the model has")
    firsts = range(start, total, per_request)
    return total, ((i, request_body(options, rows=(i, min(i + per_request, total))), None) for i in firsts)


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
    check_recommend_job(users_path, output_path, per_request, concurrency)
    options = options or RecommendOptions()
    start = time.perf_counter()
    listed = read_user_ids(users_path) if users_path is not None else None
    out = open_recommendations(output_path, resume)
    skipped = out.done
    complete = False
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="recommend")
    pending: deque[Future[pa.Table]] = deque()
    done = errors = 0
    meter = None
    try:
        total, requests = plan(post, options, listed, per_request, skipped)
        meter = Progress(progress, total, skipped, start, unit="users")
        last_sync = time.monotonic()
        for first, body, ids in requests:
            n = min(per_request, total - first)
            pending.append(pool.submit(_answer, post, body, n, first, ids))
            while len(pending) >= 2 * concurrency or (pending and first + n >= total):
                records = pending.popleft().result()
                # Flushed data survives a killed process; a sync (costly) bounds what an OS crash loses.
                sync = time.monotonic() - last_sync >= SYNC_INTERVAL_S
                out.write(records, sync=sync)
                last_sync = time.monotonic() if sync else last_sync
                starts = user_starts(records)
                users = pc.sum(starts).as_py() or 0
                done += users
                errors += pc.sum(pc.and_(starts, pc.is_valid(records.column("error")))).as_py() or 0
                meter.update(users, done, errors)
        complete = True
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if meter is not None:
            meter.close()
        out.close(complete)
    return RecommendSummary(done, errors, skipped, time.perf_counter() - start)


def _answer(post: Post, body: bytes, n_users: int, first: int, ids: pa.Array | None) -> pa.Table:
    answer, _ = read_recommendations(post(body), n_users, first)
    return to_output(answer, None if ids is None else ids.slice(first, n_users))


def check_recommend_job(
    users_path: str | os.PathLike[str] | None, output_path: str | os.PathLike[str], per_request: int, concurrency: int
) -> None:
    """Refuse job settings that cannot work, before any file is touched."""
    if not 1 <= per_request <= MAX_USERS:
        raise InputError(f"users per request must be 1..{MAX_USERS}, got {per_request}")
    if concurrency < 1:
        raise InputError(f"concurrency must be at least 1, got {concurrency}")
    if users_path is not None and Path(users_path).resolve() == Path(output_path).resolve():
        raise InputError("users file and output are the same file")


def recommend_all(
    client: MovieRecClient,
    output_path: str | os.PathLike[str],
    *,
    users_path: str | os.PathLike[str] | None = None,
    options: RecommendOptions | None = None,
    model: str = DEFAULT_MODEL,
    version: str | None = None,
    per_request: int = DEFAULT_USERS_PER_REQUEST,
    concurrency: int = DEFAULT_CONCURRENCY,
    settings: BatchSettings | None = None,
    batch_model: str = BATCH_MODEL,
    resume: bool = False,
    progress: bool = True,
    manage: bool = True,
    jobs: JobLeases | None = None,
) -> RecommendSummary:
    """Run the job through the movierec-batch registration, under a worker lease like `score` (manage=False: as is)."""
    settings = settings or BatchSettings()
    check_recommend_job(users_path, output_path, per_request, concurrency)
    job = {"users_path": users_path, "options": options, "per_request": per_request, "concurrency": concurrency}
    job.update(resume=resume, progress=progress)

    def run(lease: BatchLease) -> RecommendSummary:
        def post(body: bytes) -> bytes:
            # Idempotent: a request lost with its worker (or a restart) is sent again once workers are back.
            send = functools.partial(post_arrow, client, body, model=batch_model, version=lease.version)
            return recovering(send, revive=lease.revive)

        return recommend_file(output_path, post, **job)

    if not manage:
        return run(BatchLease(version or client.default_version(batch_model)))
    leased = leased_batch_version(
        client, model=model, version=version, batch_model=batch_model, settings=settings, jobs=jobs
    )
    with leased as lease:
        return run(lease)
