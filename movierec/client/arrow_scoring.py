"""Bulk scoring over the Arrow protocol: Arrow request bodies, answers, and the ordered scoring job."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model.arrow import ARROW_STREAM
from model.protocol import round_scores
from movierec.client.api import MovieRecClient, ServerError, check_version
from movierec.client.columnar import FALLBACK_COLUMN, ID_COLUMNS, count_rows, open_output, read_chunks
from movierec.client.progress import Progress
from movierec.client.score_job import MODE_CHANGED, PROBE_ID, SYNC_INTERVAL_S, ScoreSummary, check_job, v1_path
from movierec.client.settings import DEFAULT_ARROW_CHUNK, DEFAULT_CONCURRENCY


def wire_ids(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """IDs as sent: integers as int64; strings as int64 too when every one is a canonical decimal.

    The server maps int64 columns by binary search and strings by hashing; both give the same rows
    for "196" and 196. "007" or " 7" stay strings, so they are looked up exactly as written.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if pa.types.is_integer(kind):
        return column if kind == pa.int64() or kind == pa.uint64() else column.cast(pa.int64())
    try:
        as_int = pc.cast(column, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return column
    same = pc.equal(pc.cast(as_int, column.type), column)
    return as_int if pc.all(same).as_py() is not False else column


def request_body(users: pa.Array, movies: pa.Array) -> bytes:
    """One Arrow IPC stream of (user_id, movie_id)."""
    batch = pa.record_batch([wire_ids(users), wire_ids(movies)], names=list(ID_COLUMNS))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def read_answer(body: bytes, expected_rows: int, first_row: int) -> tuple[np.ndarray, pa.Array]:
    """Ratings (float64 with NaN where failed, rounded as every answer: round_scores) and error texts of an answer."""
    ratings, errors, _ = read_flagged_answer(body, expected_rows, first_row)
    return ratings, errors


def read_flagged_answer(
    body: bytes, expected_rows: int, first_row: int
) -> tuple[np.ndarray, pa.Array, pa.Array | None]:
    """read_answer plus the fallback flags (None: no fallback column, the server's cold_start is error)."""
    try:
        table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
        rating, error = table.column("rating").combine_chunks(), table.column("error").combine_chunks()
    except (pa.ArrowInvalid, KeyError) as exc:
        raise ServerError(502, f"unreadable Arrow answer for data rows {first_row}..: {exc}") from exc
    if table.num_rows != expected_rows:
        raise ServerError(
            502,
            f"server returned {table.num_rows} ratings for {expected_rows} rows "
            f"(data rows {first_row}..{first_row + expected_rows - 1})",
        )
    values = rating.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    flags = None
    if FALLBACK_COLUMN in table.column_names:
        flags = table.column(FALLBACK_COLUMN).combine_chunks().cast(pa.string())
    return round_scores(values), error.cast(pa.string()), flags


def arrow_answers_with_fallback(post: Callable[[bytes], bytes]) -> bool:
    """Whether the server flags answers from its average user/movie (cold_start: fallback): one probe pair."""
    probe = pa.array([PROBE_ID])
    return read_flagged_answer(post(request_body(probe, probe)), 1, 0)[2] is not None


def post_arrow(
    client: MovieRecClient, body: bytes, *, model: str, version: str | None, route: str = "predictions"
) -> bytes:
    """POST an Arrow body to /predictions/{model}[/{version}] or, on route "v1", /v1/models/{model}:predict.

    Returns the answer's bytes; errors raise, as for JSON.
    """
    if route == "v1":
        path = v1_path(model)
    else:
        path = f"/predictions/{model}" + (f"/{check_version(version)}" if version else "")
    headers = {"Content-Type": ARROW_STREAM, "Accept": ARROW_STREAM}
    return client.send("POST", "inference", path, data=body, headers=headers).content


def score_table(
    chunk: pa.Table, post: Callable[[bytes], bytes], first_row: int = 1, fallback: bool = False
) -> pa.Table:
    """Score one input table; rows with a local problem are not sent and keep it as their error.

    With `fallback` the table gains the answers' fallback column (null for personal predictions).
    """
    problems = chunk.column("problem").combine_chunks()
    users, movies = chunk.column("user_id"), chunk.column("movie_id")
    ratings, flags = np.full(chunk.num_rows, np.nan), pa.nulls(chunk.num_rows, pa.string())

    def ask(users: pa.Array, movies: pa.Array) -> tuple[np.ndarray, pa.Array, pa.Array | None]:
        answer = read_flagged_answer(post(request_body(users, movies)), len(users), first_row)
        if (answer[2] is not None) != fallback:
            raise ServerError(
                502,
                f"server's answer for data rows {first_row}.. {'lacks' if fallback else 'has'} "
                f"a fallback column: {MODE_CHANGED}",
            )
        return answer

    if problems.null_count == len(problems):
        if chunk.num_rows:
            ratings, errors, answered = ask(users, movies)
            flags = answered if fallback else flags
        else:
            errors = pa.nulls(0, pa.string())
    else:
        send = pc.indices_nonzero(problems.is_null())
        errors_list = problems.to_pylist()
        if len(send):
            sent = chunk.take(send)
            answered, answer_errors, answer_flags = ask(sent.column("user_id"), sent.column("movie_id"))
            at = send.to_numpy()
            ratings[at] = answered
            for i, error in zip(at.tolist(), answer_errors.to_pylist(), strict=True):
                errors_list[i] = error
            if fallback:
                flags_list = [None] * chunk.num_rows
                for i, flag in zip(at.tolist(), answer_flags.to_pylist(), strict=True):
                    flags_list[i] = flag
                flags = pa.array(flags_list, pa.string())
        errors = pa.array(errors_list, pa.string())
    # One record per physical line in CSV outputs, as on the JSON path.
    errors = pc.replace_substring(pc.replace_substring(errors, "\r", " "), "\n", " ")
    missing = np.isnan(ratings)
    rating = pa.array(ratings, pa.float64(), mask=missing)
    if errors.null_count and missing.any():
        errors = pc.if_else(pc.and_(pa.array(missing), errors.is_null()), "no rating in the answer", errors)
    records = {"user_id": users, "movie_id": movies, "rating": rating, "error": errors}
    return pa.table({**records, FALLBACK_COLUMN: flags} if fallback else records)


def score_file_arrow(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    post: Callable[[bytes], bytes],
    *,
    chunk_size: int = DEFAULT_ARROW_CHUNK,
    concurrency: int = DEFAULT_CONCURRENCY,
    resume: bool = False,
    progress: bool = True,
    fallback: bool | None = None,
) -> ScoreSummary:
    """Score a CSV or Parquet input with Arrow bodies sent through `post`, writing results in input order.

    The output has a fallback column when `fallback` is true; None asks the server (arrow_answers_with_fallback).
    """
    check_job(input_path, output_path, chunk_size, concurrency)
    start = time.perf_counter()
    if fallback is None:
        fallback = arrow_answers_with_fallback(post)
    out = open_output(output_path, resume, fallback)
    skipped = out.done
    meter = Progress(progress, count_rows(input_path) if progress else None, skipped, start)
    scored = errors = fallbacks = 0
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="score")
    # A second round of chunks queued so workers never wait for the writer; still bounded.
    pending: deque[Future[pa.Table]] = deque()
    last_sync = time.monotonic()
    complete = False

    def drain_one() -> None:
        nonlocal last_sync, scored, errors, fallbacks
        records = pending.popleft().result()
        # Flushed data survives a killed process; a sync (costly per chunk) bounds what an OS crash loses.
        sync = time.monotonic() - last_sync >= SYNC_INTERVAL_S
        out.write(records, sync=sync)
        if sync:
            last_sync = time.monotonic()
        scored += len(records)
        errors += len(records) - records.column("error").null_count
        fallbacks += len(records) - records.column(FALLBACK_COLUMN).null_count if fallback else 0
        meter.update(len(records), scored, errors)

    try:
        first_row = skipped + 1
        for chunk in read_chunks(input_path, chunk_size, skip=skipped):
            pending.append(pool.submit(score_table, chunk, post, first_row, fallback))
            first_row += chunk.num_rows
            if len(pending) >= 2 * concurrency:
                drain_one()
        while pending:
            drain_one()
        complete = True
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        meter.close()
        out.close(complete)
    return ScoreSummary(scored, errors, skipped, time.perf_counter() - start, fallbacks if fallback else None)
