"""Inputs and outputs of the bulk jobs: CSV or Parquet read as Arrow, CSV or Parquet written.

Inputs stream in record batches (pyarrow.csv.open_csv, ParquetFile.iter_batches) and become
tables of `user_id`, `movie_id` (exactly as in the input) and `problem` (why a row is not sent,
null for rows to score). A CSV that pyarrow cannot parse row by row (a short or long row) goes on
from that point through the csv module, so every row still gets exactly one answer.

Outputs, chosen by extension, hold a job's Layout: CSV exactly as csv.writer writes it (resume
truncates what a crash may have cut short), or Parquet. A Parquet file cannot be appended to or read
without its footer, so a Parquet job writes complete part files under `<output>.parts/` (one per sync
interval, renamed into place) and merges them into `<output>` at the end; resume counts the input units
(rows, users) of the parts already there.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from model.data import canonical_column
from movierec.client.api import MovieRecError

PARQUET_SUFFIXES = (".parquet", ".pq")  # outputs and inputs with these are Parquet, the rest CSV
CSV_BLOCK_BYTES = 1 << 20
ID_COLUMNS = ("user_id", "movie_id")
OUTPUT_HEADER = ("user_id", "movie_id", "rating", "error")
FALLBACK_COLUMN = "fallback"  # only when the server answers unknown IDs from its average user/movie

# (user_id, movie_id, problem): IDs exactly as in the file; problem is "" or why it is not sent.
# Plain tuples, because a million dataclass instances cost more than the HTTP round trips.
Row = tuple[str, str, str]


class InputError(MovieRecError):
    """The input or output file cannot be used."""


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


def is_parquet(path: str | os.PathLike[str]) -> bool:
    """Parquet by extension; anything else is CSV."""
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def count_rows(path: str | os.PathLike[str]) -> int:
    """Data rows of an input, for progress: exact from a Parquet footer, roughly from CSV newlines (less the header)."""
    if is_parquet(path):
        return pq.ParquetFile(path).metadata.num_rows
    lines, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1  # a last line without a newline
    return max(lines - 1, 0)


def _input_table(users: pa.Array, movies: pa.Array, problems: pa.Array | None = None) -> pa.Table:
    if problems is None:
        problems = pa.nulls(len(users), pa.string())
    return pa.table({"user_id": users, "movie_id": movies, "problem": problems})


def read_chunks(path: str | os.PathLike[str], chunk_size: int, skip: int = 0) -> Iterator[pa.Table]:
    """Tables of at most chunk_size input rows, in input order, after the first `skip` rows."""
    batches = _parquet_tables(path, chunk_size) if is_parquet(path) else _csv_tables(path)
    pending: list[pa.Table] = []
    held = 0
    for table in batches:
        if skip:
            dropped = min(skip, table.num_rows)
            table, skip = table.slice(dropped), skip - dropped
        pending.append(table)
        held += table.num_rows
        while held >= chunk_size:
            joined = pa.concat_tables(pending)
            yield joined.slice(0, chunk_size)
            rest = joined.slice(chunk_size)
            pending, held = [rest], rest.num_rows
    if held:
        yield pa.concat_tables(pending)


def _parquet_tables(path: str | os.PathLike[str], batch_size: int) -> Iterator[pa.Table]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: cannot read Parquet: {exc}") from exc
    names = parquet.schema_arrow.names
    u, m = find_columns(names, ID_COLUMNS, path)
    for name in (names[u], names[m]):
        kind = parquet.schema_arrow.field(name).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise InputError(f"{path}: column {name} must hold integers or strings, not {kind}")
    for batch in parquet.iter_batches(batch_size=batch_size, columns=[names[u], names[m]]):
        yield _input_table(batch.column(names[u]), batch.column(names[m]))


def _csv_tables(path: str | os.PathLike[str]) -> Iterator[pa.Table]:
    """CSV rows through pyarrow; from the first row it refuses (a short or long row), through the csv module."""
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), None)
    if header is None:
        raise InputError(f"{path}: empty file, expected a header with user_id,movie_id")
    u, m = find_columns(header, ID_COLUMNS, path)
    names = [f"c{i}" for i in range(len(header))]
    read = pa_csv.ReadOptions(column_names=names, skip_rows=1, block_size=CSV_BLOCK_BYTES, use_threads=False)
    # IDs stay strings, so they are echoed exactly as written ("007" stays "007").
    convert = pa_csv.ConvertOptions(
        include_columns=[names[u], names[m]], column_types={names[u]: pa.string(), names[m]: pa.string()}
    )
    parse = pa_csv.ParseOptions(newlines_in_values=True)
    done = 0
    try:
        for batch in pa_csv.open_csv(path, read_options=read, parse_options=parse, convert_options=convert):
            done += batch.num_rows
            yield _input_table(batch.column(names[u]), batch.column(names[m]))
        return
    except pa.ArrowInvalid:
        pass
    rows = read_rows(path)
    for _ in zip(range(done), rows, strict=False):
        pass
    for group in chunked(rows, 8192):
        users, movies, problems = zip(*group, strict=True)
        yield _input_table(
            pa.array(users, pa.string()),
            pa.array(movies, pa.string()),
            pa.array([p or None for p in problems], pa.string()),
        )


def complete_records(path: str | os.PathLike[str]) -> Iterator[tuple[bytes, int]]:
    """Each complete record of an output CSV, header included, with the byte offset where it ends.

    A record ends at a newline outside quotes. csv.writer doubles quotes inside
    quoted fields, so an even running quote count means we are outside quotes.
    """
    record, end, quotes = b"", 0, 0
    with open(path, "rb") as f:
        for line in f:
            record += line
            quotes += line.count(b'"')
            if line.endswith(b"\n") and quotes % 2 == 0:
                end += len(record)
                yield record, end
                record, quotes = b"", 0


def completed_rows(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Count complete data rows in an output CSV; return (rows, byte offset where they end)."""
    rows, offset = -1, 0  # the header is not a data row
    for _, end in complete_records(path):
        rows, offset = rows + 1, end
    return max(rows, 0), offset


def parquet_rows(part: Path) -> int:
    """Rows of a Parquet file, from its footer."""
    return pq.ParquetFile(part).metadata.num_rows


@dataclass(frozen=True)
class Layout:
    """What a job's output holds: its columns (typed for an empty file), and how it counts input units (rows, users).

    `starts` marks the records that begin a unit (None: each record is one input row); `kept_csv` and
    `kept_parquet` count the units a resume keeps of a CSV (with the byte offset where they end) or a part file.
    """

    schema: pa.Schema
    starts: Callable[[pa.Table], pa.Array] | None = None
    kept_csv: Callable[[Path], tuple[int, int]] = completed_rows
    kept_parquet: Callable[[Path], int] = parquet_rows

    def units(self, records: pa.Table) -> pa.Array:
        """Per record, whether it begins an input unit."""
        if self.starts is None:
            return pa.array(np.ones(records.num_rows, dtype=bool))
        return self.starts(records)


def score_layout(fallback: bool) -> Layout:
    """The output of `score`: user_id,movie_id,rating,error, and the fallback flag only when the server answers
    with one (cold_start: fallback)."""
    names = (*OUTPUT_HEADER, FALLBACK_COLUMN) if fallback else OUTPUT_HEADER
    return Layout(pa.schema([(name, pa.float64() if name == "rating" else pa.string()) for name in names]))


class CsvOutput:
    """A CSV output: the header, then records appended in input order; a resume keeps what `layout.kept_csv` counts."""

    def __init__(self, path: str | os.PathLike[str], resume: bool, layout: Layout):
        path, header = Path(path), (",".join(layout.schema.names) + "\n").encode()
        self.done = 0
        if resume and _holds_header(path, header):
            self.done, offset = layout.kept_csv(path)
            os.truncate(path, offset)
        else:
            path.write_bytes(header)
        # Records are rendered column-wise into one bytes block per chunk (csv.writer per row was
        # 70% of a 1M-row job's client time).
        self.file = open(path, "ab")  # noqa: SIM115 - open for the whole job, closed in close()
        os.fsync(self.file.fileno())

    def write(self, records: pa.Table, sync: bool) -> None:
        """Append records as csv.writer would write them; with sync, force them to disk too."""
        self.file.write(csv_lines(records))
        self.file.flush()
        if sync:
            os.fsync(self.file.fileno())

    def close(self, complete: bool) -> None:
        """Flush to disk and close."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def _holds_header(path: Path, header: bytes) -> bool:
    """Whether an output to resume starts with the whole header; a file with another header is refused."""
    if not path.exists():
        return False
    with open(path, "rb") as f:
        head = f.read(len(header))
    if head == header:
        return True
    if header.startswith(head):
        return False  # not even the header reached the disk, so start over
    with open(path, newline="", encoding="utf-8") as f:
        found = next(csv.reader(f), None)
    raise InputError(f"{path}: cannot resume, header is {found}, expected {header.decode().strip().split(',')}")


def csv_lines(records: pa.Table) -> bytes:
    """Records as csv.writer writes them (minimal quoting, "\n"; None as an empty field, floats as repr())."""
    records = records.combine_chunks()
    fields = [_csv_text(column) for column in records.columns]
    if any(field is None for field in fields):
        buf = io.StringIO()
        rows = zip(*(column.to_pylist() for column in records.columns), strict=True)
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue().encode()
    if records.num_rows == 0:
        return b""
    lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*fields, ","), "", "\n").combine_chunks()
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + len(lines) + 1]
    return lines.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_pybytes()


def _csv_text(column: pa.ChunkedArray | pa.Array) -> pa.Array | None:
    """A column's fields as csv.writer writes them; None for floats Arrow would spell unlike repr()."""
    if not pa.types.is_floating(column.type):
        return _csv_field(column)
    low, high = pc.min_max(column).values()
    if low.is_valid and not (1e-4 <= low.as_py() and high.as_py() < 1e15):
        return None  # outside this range Arrow and repr() spell floats differently (1e-05 vs 0.00001)
    text = pc.fill_null(column.cast(pa.string()), "")
    # repr() writes integral floats as "4.0", Arrow as "4".
    integral = pc.and_(pc.invert(pc.match_substring(text, ".")), pc.not_equal(text, ""))
    return pc.if_else(integral, pc.binary_join_element_wise(text, "0", "."), text)


def _quoted_characters() -> str:
    """A regex of the characters that make this Python's csv.writer quote a field (a lone carriage return varies by version)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(["\r"])
    return '[,"\n\r]' if buf.getvalue().startswith('"') else '[,"\n]'


_QUOTED = _quoted_characters()


def _csv_field(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Values as csv.writer's minimal quoting writes them: quoted (quotes doubled) only if they must be."""
    text = pc.fill_null(column.cast(pa.string()), "")
    quote = pc.match_substring_regex(text, _QUOTED)
    if not pc.any(quote).as_py():
        return text
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
    return pc.if_else(quote, quoted, text)


class ParquetOutput:
    """Records buffered into part files under <output>.parts/, merged into <output> when complete.

    Parts of a run with columns other than `layout`'s are refused on resume.
    """

    def __init__(self, path: str | os.PathLike[str], resume: bool, layout: Layout | None = None):
        self.path, self.layout = Path(path), layout or score_layout(False)
        self.parts = Path(f"{path}.parts")
        self.buffer: list[pa.Table] = []
        if not resume:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.parts, ignore_errors=True)
        self.parts.mkdir(parents=True, exist_ok=True)
        for stale in self.parts.glob("*.tmp"):
            stale.unlink()
        # Checked before anything moves, so a refused resume leaves the files as they were.
        columns = self.layout.schema.names
        for done in [self.path] if self.path.exists() else self._part_files():
            if (found := pq.read_schema(done).names) != columns:
                raise InputError(f"{done}: cannot resume, columns are {found}, expected {columns}")
        if self.path.exists():
            # A finished (or merged) output: its rows become the first part, new rows follow.
            for part in self._part_files():
                part.unlink()
            os.replace(self.path, self.parts / "part-000000.parquet")
        self.done = sum(self.layout.kept_parquet(part) for part in self._part_files())
        self.next_part = len(self._part_files())

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def write(self, records: pa.Table, sync: bool) -> None:
        """Buffer records; with sync, write everything buffered as one part file."""
        self.buffer.append(records)
        if sync:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        part = self.parts / f"part-{self.next_part:06d}.parquet"
        tmp = part.with_suffix(".tmp")
        pq.write_table(pa.concat_tables(self.buffer), tmp)
        _fsync(tmp)
        os.replace(tmp, part)  # a part is there whole or not at all
        self.next_part += 1
        self.buffer = []

    def close(self, complete: bool) -> None:
        """Keep what was written; when complete, merge the parts into the output file."""
        self._flush()
        if not complete:
            return
        parts = self._part_files()
        schemas = {pq.read_schema(part).remove_metadata() for part in parts}
        if len(schemas) > 1:
            raise InputError(
                f"{self.parts}: parts have different columns ({len(schemas)} schemas); rerun without --resume"
            )
        schema = schemas.pop() if schemas else self.layout.schema
        tmp = self.path.with_name(self.path.name + ".tmp")
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in parts:
                writer.write_table(pq.read_table(part, schema=schema))
        _fsync(tmp)
        os.replace(tmp, self.path)
        shutil.rmtree(self.parts)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def open_output(path: str | os.PathLike[str], resume: bool, layout: Layout) -> CsvOutput | ParquetOutput:
    """The output for a path by extension; `.done` is how many input units it already holds."""
    return ParquetOutput(path, resume, layout) if is_parquet(path) else CsvOutput(path, resume, layout)
