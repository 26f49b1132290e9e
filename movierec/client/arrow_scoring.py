"""Bulk scoring over the Arrow protocol: the Arrow codec (request bodies, answers) and its scoring job."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model.arrow import ARROW_STREAM
from model.protocol import round_scores
from movierec.client.api import MovieRecClient, ServerError, check_version
from movierec.client.columnar import FALLBACK_COLUMN, ID_COLUMNS, read_chunks
from movierec.client.score_job import MODE_CHANGED, PROBE_ID, ScoreSummary, score_records, score_with, v1_path
from movierec.client.settings import DEFAULT_ARROW_CHUNK


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
    ratings, errors = np.full(chunk.num_rows, np.nan), problems
    flags = pa.nulls(chunk.num_rows, pa.string()) if fallback else None
    send = problems.is_null()
    sent = chunk.filter(send)
    if sent.num_rows:
        body = request_body(sent.column("user_id"), sent.column("movie_id"))
        answered, answer_errors, answer_flags = read_flagged_answer(post(body), sent.num_rows, first_row)
        if (answer_flags is not None) != fallback:
            raise ServerError(
                502,
                f"server's answer for data rows {first_row}.. {'lacks' if fallback else 'has'} "
                f"a fallback column: {MODE_CHANGED}",
            )
        ratings[send.to_numpy(zero_copy_only=False)] = answered
        errors = pc.replace_with_mask(errors, send, answer_errors)
        if fallback:
            flags = pc.replace_with_mask(flags, send, answer_flags)
    return score_records(chunk.column("user_id"), chunk.column("movie_id"), ratings, errors, flags)


class ArrowCodec:
    """Scoring over Arrow: CSV or Parquet input read in tables, Arrow IPC bodies sent through `post`."""

    default_chunk = DEFAULT_ARROW_CHUNK

    def __init__(self, post: Callable[[bytes], bytes]) -> None:
        self.post = post

    def probe(self) -> bool:
        """Whether the server flags answers from its average user/movie (cold_start: fallback): one probe pair."""
        probe = pa.array([PROBE_ID])
        return read_flagged_answer(self.post(request_body(probe, probe)), 1, 0)[2] is not None

    def chunks(self, path: str | os.PathLike[str], size: int, skip: int) -> Iterator[pa.Table]:
        """Tables of at most `size` input rows after the first `skip` (columnar.read_chunks)."""
        return read_chunks(path, size, skip=skip)

    def score(self, chunk: pa.Table, first_row: int, fallback: bool) -> pa.Table:
        """Score one table (score_table)."""
        return score_table(chunk, self.post, first_row, fallback)


def score_file_arrow(
    input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], post: Callable[[bytes], bytes], **job: Any
) -> ScoreSummary:
    """Score a CSV or Parquet input with Arrow bodies sent through `post`, writing results in input order (score_with)."""
    return score_with(ArrowCodec(post), input_path, output_path, **job)
