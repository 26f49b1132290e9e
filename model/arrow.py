"""The Arrow protocol: an IPC stream body to a columnar Request (model/request.py), its answer back to a stream.

Request (Content-Type application/vnd.apache.arrow.stream): one Arrow IPC stream whose record
batches hold a `user_id` and a `movie_id` column, each of an integer or a string type; 196 and
"196" are the same ID and " 196" is a bad row, as in JSON. Answer: an IPC stream with one row
per request row, in order: `rating` (float32, null where the row failed) and `error` (string,
null where it succeeded); the schema metadata carries `model_version`. A bad row fails alone,
with the error text of a bad JSON instance (Scorer.settle writes both); a body that is not such a
stream, or repeats a column or a schema metadata key, is a RequestError, answered in JSON.

Recommendations for many users: a stream whose schema metadata has `top_k` (a decimal string;
optional `exclude_rated`, "true" or "false", default true) and one `user_id` column, or no column
and `user_rows` = "START:STOP" (the model's users START..STOP-1 in its order; STOP is clipped).
Answer, long format, users in request order, each user's movies best first: `user` (int32,
request row or offset in the range), `user_id` (string), `rank` (int32, from 1), `movie_id`,
`title` (strings), `score` (float64, protocol.round_scores) and `error` (string, set only on the
one row of a user that failed, whose other fields are null). A user with no movie left has one
row with only `user` and `user_id`, so every user asked for is in the answer. Metadata: `model_version` and `n_users` (the model's user count).

With the archive option cold_start: fallback, unknown IDs are answered from the average user or movie
and both answers gain a `fallback` column (string): "unknown_user", "unknown_movie" or
"unknown_both", null for a personal answer (and for a failed row).
"""

from __future__ import annotations

import ctypes
import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model.protocol import ARROW_STREAM as ARROW_STREAM  # the protocol's Content-Type, re-exported
from model.protocol import Reply, RequestError, ServiceOptions, check_top_k, check_user_rows, round_scores
from model.request import Request, Scorer

ID_COLUMNS = ("user_id", "movie_id")
ANSWER_SCHEMA = pa.schema([pa.field("rating", pa.float32()), pa.field("error", pa.string())])
VERSION_KEY = b"model_version"
TOP_K_KEY, EXCLUDE_KEY, USER_ROWS_KEY, N_USERS_KEY = b"top_k", b"exclude_rated", b"user_rows", b"n_users"
RECOMMENDATION_SCHEMA = pa.schema(
    [
        pa.field("user", pa.int32()),
        pa.field("user_id", pa.string()),
        pa.field("rank", pa.int32()),
        pa.field("movie_id", pa.string()),
        pa.field("title", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("error", pa.string()),
    ]
)
FALLBACK_FIELD = pa.field("fallback", pa.string())  # only in answers of a cold_start: fallback archive


def _canonical_int(raw: str) -> int | None:
    """The int an ID spelling stands for if it is a canonical decimal that fits int64, else None."""
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if str(value) == raw and -(1 << 63) <= value < (1 << 63) else None


def read_table(body: object, max_instances: int) -> pa.Table:
    """An Arrow IPC stream body as a table (schema metadata kept); more than max_instances rows is a 413."""
    if body is None or len(body) == 0:
        raise RequestError(400, "empty request body; send an Arrow IPC stream with user_id and movie_id columns")
    if isinstance(body, str):
        raise RequestError(400, "an Arrow request body must be binary, got text")
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(body))
        batches, rows = [], 0
        for batch in reader:
            rows += batch.num_rows
            # Checked per batch, so an oversized body is refused before it is all decoded.
            if rows > max_instances:
                raise RequestError(413, f"too many instances: more than {max_instances} rows; split the request")
            batches.append(batch)
        table = pa.Table.from_batches(batches, schema=reader.schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise RequestError(400, f"request body is not a valid Arrow IPC stream: {exc}") from None
    # Like a repeated key in JSON: which one was meant is unknown (pyarrow's metadata dict keeps the first).
    for kind, names in (("column", table.column_names), ("schema metadata key", _metadata_keys(table.schema))):
        repeated = _first_repeat(names)
        if repeated is not None:
            raise RequestError(400, f"duplicate {kind} {repeated!r:.60} in the request body")
    return table


def _first_repeat(names: list) -> str | None:
    """The first name that occurs twice, as text, or None."""
    seen = set()
    for name in names:
        if name in seen:
            return name.decode(errors="replace") if isinstance(name, bytes) else name
        seen.add(name)
    return None


class _CSchemaHead(ctypes.Structure):
    """The first fields of the Arrow C data interface's ArrowSchema struct, up to its metadata."""

    _fields_ = [("format", ctypes.c_char_p), ("name", ctypes.c_char_p), ("metadata", ctypes.c_void_p)]


# Its own prototype, so ctypes.pythonapi's shared function object is left as it is.
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)


def _metadata_keys(schema: pa.Schema) -> list[bytes]:
    """Every key of a schema's metadata in order, repeats included (pyarrow's `schema.metadata` dict drops them).

    Read from the schema's C data interface export: an int32 count, then per entry an int32 length and
    the key, an int32 length and the value (native byte order). About 10 us, and only with metadata.
    """
    if not schema.metadata:
        return []
    capsule = schema.__arrow_c_schema__()  # kept alive while its memory is read
    at = _CSchemaHead.from_address(_capsule_pointer(capsule, b"arrow_schema")).metadata
    (count,) = struct.unpack("=i", ctypes.string_at(at, 4))
    keys, at = [], at + 4
    for _ in range(count):
        (key_len,) = struct.unpack("=i", ctypes.string_at(at, 4))
        keys.append(ctypes.string_at(at + 4, key_len))
        (value_len,) = struct.unpack("=i", ctypes.string_at(at + 4 + key_len, 4))
        at += 8 + key_len + value_len
    return keys


def pair_columns(table: pa.Table) -> tuple[pa.Array, pa.Array]:
    """The user_id and movie_id columns of a pairs request, as int64 or string arrays."""
    names = table.column_names
    for name in names:
        if name not in ID_COLUMNS:
            raise RequestError(400, f"unknown column '{name}' (allowed: {', '.join(sorted(ID_COLUMNS))})")
    return tuple(_id_array(table, name) for name in ID_COLUMNS)


def _id_array(table: pa.Table, name: str) -> pa.Array:
    """One ID column as a single int64 or string array; a column of another type is a 400."""
    if name not in table.column_names:
        raise RequestError(400, f"missing column '{name}' (an Arrow body needs user_id and movie_id columns)")
    column = table.column(name)
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_integer(kind) and kind != pa.uint64():
        target = pa.int64()
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or kind == pa.uint64():
        # uint64 beyond int64 cannot be a numeric key, but it may still spell a string ID.
        target = pa.string()
    else:
        raise RequestError(400, f"column '{name}' must have an integer or string type, got {column.type}")
    return column.cast(target).combine_chunks() if column.num_chunks != 1 else column.chunk(0).cast(target)


def read_answer(body: bytes) -> pa.Table:
    """Decode an answer stream into a (rating, error) table, with model_version in its schema metadata."""
    return pa.ipc.open_stream(pa.py_buffer(body)).read_all()


class ArrowCodec:
    """Decodes Arrow request bodies into Requests and renders their answers as IPC streams."""

    def __init__(self, scorer: Scorer, model_version: str, options: ServiceOptions):
        self.scorer, self.model_version = scorer, model_version
        self.users, self.movies = scorer.rec.artifact.users, scorer.rec.artifact.movies
        self.max_instances, self.max_top_k, self.max_users = options.max_instances, options.max_top_k, options.max_users
        self.titles = pa.array(scorer.rec.artifact.titles, type=pa.string())

    def decode(self, body: object) -> Request:
        """One Arrow body as a Request: pairs to rate, or users to rank when its metadata has `top_k`."""
        table = read_table(body, max(self.max_instances, self.max_users))
        if TOP_K_KEY in (table.schema.metadata or {}):
            return self._decode_users(table)
        if table.num_rows > self.max_instances:
            raise RequestError(413, f"too many instances: more than {self.max_instances} rows; split the request")
        users, movies = pair_columns(table)
        rows = self.users.column_rows(users), self.movies.column_rows(movies)
        # Typically thousands of rows: a pass of its own keeps its answer the same in any batch.
        req = Request(self.ratings_answer, *rows, alone=True)
        self.scorer.settle(req, users, movies)
        return req

    def _decode_users(self, table: pa.Table) -> Request:
        """A request for one top-K list per user: a `user_id` column, or `user_rows` in the metadata."""
        meta = table.schema.metadata
        top_k, exclude = check_top_k(_options(meta), self.max_top_k)
        if USER_ROWS_KEY in meta:
            if table.num_columns:
                raise RequestError(400, "a user_rows request has no columns; send user_id or user_rows, not both")
            start, stop = check_user_rows(_range(meta[USER_ROWS_KEY]), len(self.users), self.max_users)
            rows = np.arange(start, stop, dtype=np.int64)
            return Request(self.lists_answer, rows, top_k=top_k, exclude_rated=exclude, sent=self.users.ids_at(rows))
        extra = [name for name in table.column_names if name != "user_id"]
        if extra:
            raise RequestError(400, f"unknown column '{extra[0]}' (a recommendation request has user_id only)")
        if table.num_rows > self.max_users:
            raise RequestError(413, f"too many users: {table.num_rows} > {self.max_users}; split the request")
        users = _id_array(table, "user_id")
        sent = users.cast(pa.string())
        req = Request(self.lists_answer, self.users.column_rows(users), top_k=top_k, exclude_rated=exclude, sent=sent)
        self.scorer.settle(req, sent)
        return req

    def ratings_answer(self, req: Request) -> Reply:
        """An IPC stream of (rating, error[, fallback]) rows, one per request row."""
        n, failed = len(req.users), req.users < 0 if req.errors else None
        ratings = req.result.astype(np.float32)
        if failed is not None:
            ratings[failed] = 0  # not nan under the null mask: the stream's bytes stay as they always were
        rating = pa.array(ratings, type=pa.float32(), mask=failed)
        error = pa.array(_by_row(req.errors, n), type=pa.string()) if req.errors else pa.nulls(n, pa.string())
        return self._stream([rating, error], ANSWER_SCHEMA, req, {})

    def lists_answer(self, req: Request) -> Reply:
        """One row per recommended movie, one per failed user and one per user with none, in request order."""
        answered = np.array([result is not None for result in req.result], dtype=bool)
        answers = [result for result in req.result if result is not None]
        lengths = np.zeros(len(answered), dtype=np.int64)
        lengths[answered] = [len(movies) for movies, _ in answers]
        counts = np.maximum(lengths, 1)
        user = np.repeat(np.arange(len(answered), dtype=np.int32), counts)
        failed = np.repeat(lengths == 0, counts)  # rows without a movie: a failed user, or one with none left
        starts = np.cumsum(counts) - counts
        rank = (np.arange(len(user)) - np.repeat(starts, counts) + 1).astype(np.int32)
        movie_rows = np.zeros(len(user), dtype=np.int64)
        scores = np.zeros(len(user), dtype=np.float64)
        if answers:
            movie_rows[~failed] = np.concatenate([movies for movies, _ in answers])
            scores[~failed] = round_scores(np.concatenate([s for _, s in answers]))
        mask, no_text = pa.array(failed), pa.scalar(None, pa.string())
        columns = [
            pa.array(user),
            pc.take(req.sent, pa.array(user)),
            pa.array(rank, mask=failed),
            pc.if_else(mask, no_text, self.movies.ids_at(movie_rows)),
            pc.if_else(mask, no_text, pc.take(self.titles, pa.array(movie_rows))),
            pa.array(scores, mask=failed),
            pc.take(pa.array(_by_row(req.errors, len(answered)), pa.string()), pa.array(user)),
        ]
        return self._stream(columns, RECOMMENDATION_SCHEMA, req, {N_USERS_KEY: str(len(self.users)).encode()}, user)

    def _stream(
        self, columns: list, schema: pa.Schema, req: Request, meta: dict, user: np.ndarray | None = None
    ) -> Reply:
        """One record batch as an IPC stream answer; a cold_start: fallback archive adds the fallback column."""
        if self.scorer.fallback:
            kinds = pa.array(_by_row(req.fallbacks, len(req.users)), pa.string())
            columns = [*columns, kinds if user is None else pc.take(kinds, pa.array(user))]
            schema = schema.append(FALLBACK_FIELD)
        schema = schema.with_metadata({VERSION_KEY: self.model_version.encode(), **meta})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_batch(pa.record_batch(columns, schema=schema))
        return Reply(200, sink.getvalue().to_pybytes(), ARROW_STREAM)


def _by_row(values: dict[int, str], n: int) -> list[str | None]:
    """A sparse row -> text dict as one value per row, None where it has none."""
    out = [None] * n
    for i, text in values.items():
        out[i] = text
    return out


def _options(meta: dict[bytes, bytes]) -> dict[str, object]:
    """top_k and exclude_rated from schema metadata, typed as in JSON so the same checks apply."""
    options: dict[str, object] = {}
    raw = meta[TOP_K_KEY].decode(errors="replace")
    options["top_k"] = _canonical_int(raw) if _canonical_int(raw) is not None else raw
    if EXCLUDE_KEY in meta:
        raw = meta[EXCLUDE_KEY].decode(errors="replace")
        options["exclude_rated"] = {"true": True, "false": False}.get(raw, raw)
    return options


def _range(raw: bytes) -> object:
    """A "START:STOP" user_rows value as [START, STOP]; anything else is returned for check_user_rows to name."""
    text = raw.decode(errors="replace")
    parts = [_canonical_int(part) for part in text.split(":")]
    return parts if len(parts) == 2 and None not in parts else text
