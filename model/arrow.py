"""The Arrow protocol for many pairs: an IPC stream of (user_id, movie_id) in, (rating, error) out.

Request (Content-Type application/vnd.apache.arrow.stream): one Arrow IPC stream whose record
batches hold a `user_id` and a `movie_id` column, each of an integer or a string type; 196 and
"196" are the same ID and " 196" is a bad row, as in JSON. Answer: an IPC stream with one row
per request row, in order: `rating` (float32, null where the row failed) and `error` (string,
null where it succeeded); the schema metadata carries `model_version`. A bad row fails alone
with the JSON path's error text; a body that is not such a stream, or repeats a column or a
schema metadata key, is a RequestError, which the service answers in JSON.

Recommendations for many users: a stream whose schema metadata has `top_k` (a decimal string;
optional `exclude_rated`, "true" or "false", default true) and one `user_id` column, or no column
and `user_rows` = "START:STOP" (the model's users START..STOP-1 in its order; STOP is clipped).
Answer, long format, users in request order, each user's movies best first: `user` (int32,
request row or offset in the range), `user_id` (string), `rank` (int32, from 1), `movie_id`,
`title` (strings), `score` (float64, rounded as in JSON: round_scores) and `error` (string, set only on the
one row of a user that failed, whose other fields are null). A user with no movie left has one
row with only `user` and `user_id`, so every user asked for is in the answer. Metadata: `model_version` and `n_users` (the model's user count).

With the archive option cold_start: fallback, unknown IDs are answered from the average user or movie
and both answers gain a `fallback` column (string): "unknown_user", "unknown_movie" or
"unknown_both", null for a personal answer (and for a failed row).
"""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model.index import IdIndex
from model.protocol import ARROW_STREAM as ARROW_STREAM  # the protocol's Content-Type, re-exported
from model.protocol import (
    MAX_TOP_K,
    MAX_USERS,
    RequestError,
    check_top_k,
    check_user_rows,
    fallback_kind,
    id_error,
    id_problem,
    is_id,
    round_scores,
)

if TYPE_CHECKING:
    from model.core import Recommender
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
DENSE_TABLE = 1 << 21  # int IDs spanning fewer values than this map through a direct table (16 MiB)


def _canonical_int(raw: str) -> int | None:
    """The int an ID spelling stands for if it is a canonical decimal that fits int64, else None."""
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if str(value) == raw and -(1 << 63) <= value < (1 << 63) else None


class ArrowIds:
    """Vectorised raw ID -> row mapping for one IdIndex: ints by binary search, strings by hash lookup."""

    def __init__(self, index: IdIndex):
        numeric = [(value, row) for row, raw in enumerate(index.ids) if (value := _canonical_int(raw)) is not None]
        keys = np.array([value for value, _ in numeric], dtype=np.int64)
        rows = np.array([row for _, row in numeric], dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        self._keys, self._rows = keys[order], rows[order]
        # Dense ID ranges (MovieLens: 1..n) also get a direct table: one gather instead of a
        # binary search per row (measured 10x faster at 10k rows); sparse ranges keep the search.
        self._base, self._table = 0, None
        if len(keys) and int(self._keys[-1]) - int(self._keys[0]) < max(DENSE_TABLE, 4 * len(keys)):
            self._base = int(self._keys[0])
            self._table = np.full(int(self._keys[-1]) - self._base + 1, -1, dtype=np.int64)
            self._table[self._keys - self._base] = self._rows
        # Row order, so a position in this array is the embedding row.
        self._spellings = pa.array(index.ids, type=pa.string())

    def rows(self, column: pa.Array) -> np.ndarray:
        """Rows of an int64 or string column as int64; -1 where null or unknown."""
        if pa.types.is_int64(column.type):
            return self._int_rows(column)
        # The exact spelling only: " 196" is not user 196 but a bad row (protocol.is_id), as in JSON.
        found = pc.index_in(column, value_set=self._spellings)
        return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)

    def _int_rows(self, column: pa.Array) -> np.ndarray:
        values = pc.fill_null(column, 0).to_numpy(zero_copy_only=False)
        if self._table is not None:
            # Compared before subtracting, so IDs near the int64 limits cannot wrap into the table.
            inside = (values >= self._base) & (values < self._base + len(self._table))
            rows = np.full(len(values), -1, dtype=np.int64)
            rows[inside] = self._table[values[inside] - self._base]
        elif len(self._keys):
            pos = np.minimum(np.searchsorted(self._keys, values), len(self._keys) - 1)
            rows = np.where(self._keys[pos] == values, self._rows[pos], -1)
        else:
            return np.full(len(values), -1, dtype=np.int64)
        if column.null_count:
            rows[column.is_null().to_numpy(zero_copy_only=False)] = -1
        return rows


def read_pairs(body: object, max_instances: int) -> tuple[pa.Array, pa.Array]:
    """The user_id and movie_id columns of an Arrow IPC stream body, as int64 or string arrays."""
    return pair_columns(read_table(body, max_instances))


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


def render_answer(
    ratings: np.ndarray, errors: list[str | None] | None, model_version: str, fallbacks: list | None = None
) -> bytes:
    """An IPC stream of (rating, error[, fallback]) rows; `errors` is None when every row succeeded.

    `fallbacks` (one kind or None per row) adds the fallback column; None leaves it out (cold_start: error).
    """
    n = len(ratings)
    failed = None if errors is None else np.array([e is not None for e in errors], dtype=bool)
    rating = pa.array(ratings, type=pa.float32(), mask=failed)
    error = pa.nulls(n, pa.string()) if errors is None else pa.array(errors, type=pa.string())
    columns, schema = [rating, error], ANSWER_SCHEMA
    if fallbacks is not None:
        columns.append(pa.array(fallbacks, type=pa.string()))
        schema = schema.append(FALLBACK_FIELD)
    schema = schema.with_metadata({VERSION_KEY: model_version.encode()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(pa.record_batch(columns, schema=schema))
    return sink.getvalue().to_pybytes()


def read_answer(body: bytes) -> pa.Table:
    """Decode an answer stream into a (rating, error) table, with model_version in its schema metadata."""
    return pa.ipc.open_stream(pa.py_buffer(body)).read_all()


class ArrowScorer:
    """Answers Arrow request bodies: map IDs column-wise, score the known pairs, render the answer."""

    def __init__(
        self,
        recommender: Recommender,
        model_version: str,
        max_instances: int,
        max_top_k: int = MAX_TOP_K,
        max_users: int = MAX_USERS,
        cold_start: str = "error",
    ):
        self.rec = recommender
        self.fallback = cold_start == "fallback"
        self.users = ArrowIds(recommender.artifact.users)
        self.movies = ArrowIds(recommender.artifact.movies)
        self.titles = pa.array(recommender.artifact.titles, type=pa.string())
        self.model_version = model_version
        self.max_instances = max_instances
        self.max_top_k = max_top_k
        self.max_users = max_users

    def answer(self, body: object) -> bytes:
        """The Arrow answer to one request body; raises RequestError for a body it cannot read."""
        table = read_table(body, max(self.max_instances, self.max_users))
        if TOP_K_KEY in (table.schema.metadata or {}):
            return self.recommend(table)
        if table.num_rows > self.max_instances:
            raise RequestError(413, f"too many instances: more than {self.max_instances} rows; split the request")
        users, movies = pair_columns(table)
        urows, mrows = self.users.rows(users), self.movies.rows(movies)
        fallbacks = None
        if self.fallback:
            # Only well-formed IDs fall back; a null or empty one stays an error, as in JSON.
            valid = _valid_ids(users) & _valid_ids(movies)
            unknown_user, unknown_movie = valid & (urows < 0), valid & (mrows < 0)
            urows, mrows = urows.copy(), mrows.copy()  # may be read-only views of Arrow buffers
            urows[unknown_user], mrows[unknown_movie] = self.rec.average_user, self.rec.average_movie
            fallbacks = [None] * len(urows)
            for i in np.flatnonzero(unknown_user | unknown_movie).tolist():
                fallbacks[i] = fallback_kind(bool(unknown_user[i]), bool(unknown_movie[i]))
        bad = (urows < 0) | (mrows < 0)
        ratings = np.zeros(len(urows), dtype=np.float32)
        good = ~bad
        predicted = self.rec.predict_or_fallback(urows[good], mrows[good])
        ratings[good] = round_scores(predicted)
        errors = None
        if bad.any():
            errors = [None] * len(urows)
            for i in np.flatnonzero(bad).tolist():
                errors[i] = row_problem(users[i].as_py(), movies[i].as_py(), urows[i], mrows[i])
        return render_answer(ratings, errors, self.model_version, fallbacks)

    def recommend(self, table: pa.Table) -> bytes:
        """The long-format recommendations answer to a request carrying `top_k` in its metadata."""
        meta = table.schema.metadata
        top_k, exclude = check_top_k(_options(meta), self.max_top_k)
        n_users = len(self.rec.artifact.users)
        if USER_ROWS_KEY in meta:
            if table.num_columns:
                raise RequestError(400, "a user_rows request has no columns; send user_id or user_rows, not both")
            start, stop = check_user_rows(_range(meta[USER_ROWS_KEY]), n_users, self.max_users)
            rows = np.arange(start, stop, dtype=np.int64)
            sent = pc.take(self.users._spellings, pa.array(rows))
        else:
            extra = [name for name in table.column_names if name != "user_id"]
            if extra:
                raise RequestError(400, f"unknown column '{extra[0]}' (a recommendation request has user_id only)")
            if table.num_rows > self.max_users:
                raise RequestError(413, f"too many users: {table.num_rows} > {self.max_users}; split the request")
            users = _id_array(table, "user_id")
            rows, sent = self.users.rows(users), users.cast(pa.string())
        good = rows >= 0
        answers = self.rec.recommend_many(rows[good], top_k, exclude)
        kinds = None
        if self.fallback:
            unknown = ~good & _valid_ids(sent)
            if unknown.any():
                # Every unknown user gets the average user's list, which ranks all eligible movies.
                average = self.rec.recommend(self.rec.average_user, top_k, exclude_rated=False)
                known = iter(answers)
                answers = [average if unknown[i] else next(known) for i in np.flatnonzero(good | unknown).tolist()]
                good = good | unknown
            kinds = [fallback_kind(bool(u), False) for u in unknown]
        errors = [None if ok else id_error("user_id", user) for ok, user in zip(good, sent.to_pylist(), strict=True)]
        return self._render(answers, good, sent, errors, {N_USERS_KEY: str(n_users).encode()}, kinds)

    def _render(
        self, answers: list, good: np.ndarray, sent: pa.Array, errors: list, meta: dict, kinds: list | None = None
    ) -> bytes:
        """One row per recommended movie, one per failed user and one per user with none, in request order."""
        lengths = np.zeros(len(good), dtype=np.int64)
        lengths[good] = [len(movies) for movies, _ in answers]
        counts = np.maximum(lengths, 1)
        user = np.repeat(np.arange(len(good), dtype=np.int32), counts)
        failed = np.repeat(lengths == 0, counts)  # rows without a movie: a failed user, or one with none left
        starts = np.cumsum(counts) - counts
        rank = (np.arange(len(user)) - np.repeat(starts, counts) + 1).astype(np.int32)
        movie_rows = np.zeros(len(user), dtype=np.int64)
        scores = np.zeros(len(user), dtype=np.float64)
        if answers:
            movie_rows[~failed] = np.concatenate([movies for movies, _ in answers])
            scores[~failed] = round_scores(np.concatenate([s for _, s in answers]))
        mask = pa.array(failed)
        columns = [
            pa.array(user),
            pc.take(sent, pa.array(user)),
            pa.array(rank, mask=failed),
            pc.if_else(mask, pa.scalar(None, pa.string()), pc.take(self.movies._spellings, pa.array(movie_rows))),
            pc.if_else(mask, pa.scalar(None, pa.string()), pc.take(self.titles, pa.array(movie_rows))),
            pa.array(scores, mask=failed),
            pc.take(pa.array(errors, pa.string()), pa.array(user)),
        ]
        schema = RECOMMENDATION_SCHEMA
        if kinds is not None:
            columns.append(pc.take(pa.array(kinds, pa.string()), pa.array(user)))
            schema = schema.append(FALLBACK_FIELD)
        schema = schema.with_metadata({VERSION_KEY: self.model_version.encode(), **meta})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_batch(pa.record_batch(columns, schema=schema))
        return sink.getvalue().to_pybytes()


def _valid_ids(column: pa.Array) -> np.ndarray:
    """Where an ID column holds a well-formed ID (protocol.is_id: not null, not empty, no surrounding whitespace)."""
    valid = column.is_valid()
    if pa.types.is_string(column.type):
        # Arrow's whitespace is Python's str.strip() whitespace (all 29 characters; checked in tests).
        valid = pc.and_(valid, pc.greater(pc.utf8_length(column), 0))
        valid = pc.and_(valid, pc.equal(pc.utf8_trim_whitespace(column), column))
    return pc.fill_null(valid, False).to_numpy(zero_copy_only=False)


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


def row_problem(user: object, movie: object, urow: int, mrow: int) -> str:
    """Why a row cannot be scored, worded and ordered as in the JSON path."""
    for name, value in (("user_id", user), ("movie_id", movie)):
        if not is_id(value):
            return id_problem(name, value)
    if urow < 0:
        return f"unknown user_id {user}"
    return f"unknown movie_id {movie}"
