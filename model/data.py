"""Load and validate MovieLens ratings and titles; fetch the embedded default dataset.

Supported layouts:
- ml-latest / ml-25m: `ratings.csv` (userId,movieId,rating,timestamp) + `movies.csv`
  (movieId,title,genres); `user_id,movie_id,rating[,timestamp]` headers work too.
- ML-100K: `u.data` (tab separated, no header) + `u.item` (pipe separated, latin-1).
- ML-1M / ML-10M: `ratings.dat` (`UserID::MovieID::Rating::Timestamp`, no header) + `movies.dat`
  (`MovieID::Title::Genres`; latin-1 in ML-1M, UTF-8 in ML-10M).
- RecBole atomic files: `ml-100k.inter` + `ml-100k.item` (tab separated, typed header).
"""

from __future__ import annotations

import ast
import hashlib
import html
import os
import re
import ssl
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

DEFAULT_SCALE = (0.5, 5.0)
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_DIR = "recbole/dataset_example/ml-100k/"
LENSKIT_SDIST = "lenskit-2025.8.1.tar.gz"  # its data/ml-latest-small/ is the 2016 edition
LENSKIT_SHA256 = "954b22a81e8a0d2012a173340079aa3d0c68dcc8cb9954e488fc228d77d4cb55"
LENSKIT_DIR = "lenskit-2025.8.1/data/ml-latest-small/"
DATASETS = {  # name -> the source an artifact records
    "ml-100k": "ml-100k (MovieLens 100K from the recbole 1.2.1 wheel)",
    "ml-latest-small": "ml-latest-small (the 2016 edition, 100,004 ratings, from the lenskit 2025.8.1 sdist)",
}

COLUMN_ALIASES = {
    "user_id": ("userid", "user_id", "user"),
    "movie_id": ("movieid", "movie_id", "item_id", "itemid", "item", "movie"),
    "rating": ("rating",),
    "timestamp": ("timestamp", "time"),
}
REQUIRED = ("user_id", "movie_id", "rating")
FINGERPRINT_SLICE = 1 << 20  # IDs per hashed slice


class DataError(ValueError):
    """A problem with an input file, phrased as `file:line: column 'c': problem`."""


@dataclass
class Ratings:
    """Validated ratings: one row per (user, movie), raw IDs as canonical strings."""

    frame: pd.DataFrame  # user_id:str, movie_id:str, rating:float32, timestamp:int64
    source: str
    duplicates_dropped: int = 0
    # column -> (distinct IDs, int32 code per frame row), when the loader already has them
    id_codes: dict[str, tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False, compare=False)

    def codes(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(distinct IDs, int32 code per row) of user_id or movie_id: `ids[codes]` is the column.

        Lets a caller map 25M rows by their distinct IDs (one numpy gather) instead of row by row.
        """
        if self.id_codes is None or column not in self.id_codes:
            codes, distinct = pd.factorize(self.frame[column])
            self.id_codes = {
                **(self.id_codes or {}),
                column: (np.asarray(distinct, dtype=object), codes.astype(np.int32)),
            }
        return self.id_codes[column]

    def fingerprint(self) -> str:
        """A sha256 of the validated rows, so an artifact names the exact data it saw."""
        f = self.frame
        h = hashlib.sha256()
        step = FINGERPRINT_SLICE
        for col in ("user_id", "movie_id"):
            ids = f[col].to_numpy()
            # The bytes of "\x1f".join(ids), hashed a slice at a time so 25M IDs never sit in one string.
            for start in range(0, len(ids), step):
                h.update((b"\x1f" if start else b"") + "\x1f".join(ids[start : start + step].tolist()).encode())
            h.update(b"\x1e")
        h.update(np.ascontiguousarray(f["rating"].to_numpy(np.float32)).tobytes())
        h.update(np.ascontiguousarray(f["timestamp"].to_numpy(np.int64)).tobytes())
        return "sha256:" + h.hexdigest()


def cache_dir(name: str = "ml-100k") -> Path:
    """Where a downloaded dataset is cached (outside git: MovieLens may not be redistributed)."""
    env = os.environ.get("MOVIEREC_DATA_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return (base if env else base / "movierec") / name


def dataset(name: str = "ml-100k", fetch: bool = True) -> tuple[Path, Path]:
    """Return (ratings, titles) paths of a dataset named in DATASETS, downloading it once."""
    if name == "ml-100k":
        return default_dataset(fetch)
    if name == "ml-latest-small":
        return latest_small_dataset(fetch)
    raise DataError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")


def default_dataset(fetch: bool = True) -> tuple[Path, Path]:
    """Return (ratings, titles) paths of MovieLens 100K, downloading the recbole wheel once."""
    target = cache_dir()
    inter, item = target / "ml-100k.inter", target / "ml-100k.item"
    if inter.exists() and item.exists():
        return inter, item
    if not fetch:
        raise DataError(f"{inter}: default dataset not downloaded (run `make data`)")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", RECBOLE_WHEEL, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if done.returncode != 0 or not wheels:
            raise DataError(f"could not download {RECBOLE_WHEEL}: {done.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for path in (inter, item):
                tmp_path = path.with_suffix(path.suffix + ".part")
                tmp_path.write_bytes(wheel.read(RECBOLE_DIR + path.name))
                tmp_path.replace(path)
    return inter, item


def latest_small_dataset(fetch: bool = True) -> tuple[Path, Path]:
    """Return (ratings.csv, movies.csv) of ml-latest-small (2016), downloading the lenskit sdist once."""
    target = cache_dir("ml-latest-small")
    ratings, movies = target / "ratings.csv", target / "movies.csv"
    if ratings.exists() and movies.exists():
        return ratings, movies
    if not fetch:
        raise DataError(f"{ratings}: dataset not downloaded (run `make data DATASET=ml-latest-small`)")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = Path(tmp) / LENSKIT_SDIST
        download_sdist(sdist)
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != LENSKIT_SHA256:
            raise DataError(f"{LENSKIT_SDIST}: sha256 is {digest}, not the pinned {LENSKIT_SHA256}; not unpacked")
        try:
            with tarfile.open(sdist, "r:gz") as archive:
                for path in (ratings, movies):
                    member = archive.extractfile(LENSKIT_DIR + path.name)
                    tmp_path = path.with_suffix(path.suffix + ".part")
                    tmp_path.write_bytes(member.read())
                    tmp_path.replace(path)
        except (KeyError, AttributeError, tarfile.TarError) as exc:
            raise DataError(
                f"{LENSKIT_SDIST}: cannot unpack ratings.csv and movies.csv of {LENSKIT_DIR}: {exc}"
            ) from None
    return ratings, movies


def download_sdist(dest: Path) -> None:
    """Download LENSKIT_SDIST to dest from the first index pip is configured with that has it.

    `pip download` would try to build the sdist (Rust), so the file is found on the indexes' simple pages.
    """
    indexes, cert = _pip_indexes()
    context = ssl.create_default_context(cafile=cert) if cert else None
    for index in indexes:
        url = _index_file_url(index, "lenskit", LENSKIT_SDIST, context)
        if url is None:
            continue
        try:
            with urllib.request.urlopen(url, timeout=180, context=context) as reply, open(dest, "wb") as out:
                while chunk := reply.read(1 << 20):
                    out.write(chunk)
        except OSError as exc:
            raise DataError(f"could not download {url}: {exc}") from None
        return
    raise DataError(f"could not download {LENSKIT_SDIST}: not found on {', '.join(indexes)}")


def _pip_indexes() -> tuple[list[str], str | None]:
    """(index URLs in pip's order: index-url, PyPI unless set, then extra-index-url; CA bundle) from pip's config."""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    options: dict[str, str] = {}
    for line in done.stdout.splitlines():  # `global.index-url='...'`, in pip's order: later lines win
        key, _, value = line.partition("=")
        section, _, option = key.partition(".")
        if section in ("global", "download", ":env:"):
            try:
                options[option] = str(ast.literal_eval(value))
            except (ValueError, SyntaxError):
                options[option] = value
    index = options.get("index-url", "https://pypi.org/simple")
    return [index, *options.get("extra-index-url", "").split()], options.get("cert")


def _index_file_url(index: str, project: str, filename: str, context: ssl.SSLContext | None) -> str | None:
    """The URL of filename on a PEP 503 simple index's page for project, or None if it is not there."""
    page = f"{index.rstrip('/')}/{project}/"
    parts = urllib.parse.urlparse(page)
    if parts.scheme == "file" and Path(urllib.request.url2pathname(parts.path)).is_dir():
        page += "index.html"  # as pip reads a local index
    try:
        with urllib.request.urlopen(page, timeout=180, context=context) as reply:
            text = reply.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    for href in re.findall(r'href="([^"]+)"', text):
        url = urllib.parse.urljoin(page, html.unescape(href))
        if urllib.parse.urlparse(url).path.rsplit("/", 1)[-1] == filename:
            return url
    return None


def _sniff(path: Path) -> tuple[str, bool, list[str] | None]:
    """Guess (separator, has_header, header names) from the first line."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a ratings file")
    with open(path, "rb") as fh:
        first = fh.readline().decode("latin-1").rstrip("\r\n")
    if not first.strip():
        raise DataError(f"{path}:1: file is empty")
    sep = "\t" if "\t" in first else "::" if "::" in first else ("|" if "|" in first and "," not in first else ",")
    fields = [f.strip().strip('"') for f in first.split(sep)]
    has_header = any(not _is_number(f) for f in fields[:3]) and not path.name.startswith("u.")
    if sep == "\t" and all(_is_number(f) for f in fields):
        has_header = False
    names = [f.split(":")[0].lower() for f in fields] if has_header else None
    return sep, has_header, names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def canonical_column(name: str) -> str | None:
    """Our name for a header field ("userId", "item_id:token", "\ufeffuser_id", ...), or None.

    The one alias table for every reader of user/movie files: training, batch scoring, A/B replay.
    """
    # A UTF-8 byte-order mark (Excel writes one) reads as "\ufeff", or as "ï»¿" in Latin-1.
    key = str(name).removeprefix("\ufeff").removeprefix("\xef\xbb\xbf").split(":")[0]
    key = key.strip().replace(" ", "").lower()
    return next((ours for ours, aliases in COLUMN_ALIASES.items() if key in aliases), None)


def _column_map(path: Path, names: list[str]) -> dict[str, str]:
    """Map our column names to the file's header names, or name the missing one."""
    found = {}
    for name in names:
        ours = canonical_column(name)
        if ours is not None and ours not in found:
            found[ours] = name
    missing = [c for c in REQUIRED if c not in found]
    if missing:
        raise DataError(
            f"{path}:1: missing column(s) {', '.join(missing)} "
            f"(header has {', '.join(names)}; expected userId,movieId,rating[,timestamp])"
        )
    return found


def load_ratings(path: str | os.PathLike, scale: tuple[float, float] = DEFAULT_SCALE) -> Ratings:
    """Read and validate a ratings file; raise DataError naming file, line and column.

    A well-formed file takes the fast path (pyarrow, typed columns, IDs dictionary-encoded); anything the
    fast path doubts is re-read by the line-by-line checker, which gives the same result or names the bad row.
    """
    path = Path(path)
    sep, has_header, names = _sniff(path)
    ratings = load_ratings_fast(path, sep, has_header, names, scale)
    if ratings is None:
        ratings = _load_checked(path, sep, has_header, names, scale)
    return ratings


def _fast_columns(path: Path, has_header: bool, names: list[str] | None, sep: str) -> tuple[dict[str, int], int] | None:
    """(positions of our columns, fields per row), or None when the layout needs the checker."""
    with open(path, "rb") as fh:
        first = fh.readline()
    if first.startswith(b"\xef\xbb\xbf") and not has_header:
        return None  # a BOM glued to the first ID: keep the checker's spelling of it
    if has_header:
        try:
            found = _column_map(path, names or [])
        except DataError:
            return None
        return {ours: names.index(name) for ours, name in found.items()}, len(names)
    n_fields = len(first.decode("latin-1").rstrip("\r\n").split(sep))
    if n_fields < 3:
        return None
    return dict(zip(("user_id", "movie_id", "rating", "timestamp"), range(min(n_fields, 4)), strict=False)), n_fields


def _canonical_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray] | None:
    """(distinct canonical IDs as an object array, int32 row codes) of a dictionary column, or None if odd."""
    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    raw = column.dictionary.to_pylist()
    # The checker reads Latin-1 and strips each ID; doing the same to the distinct values is cheap.
    ids = [b.decode("latin-1").strip() for b in raw]
    if any(not i or '"' in i for i in ids):
        return None  # empty IDs and quoting quirks: the checker names or reproduces them
    codes = column.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    if len(set(ids)) < len(ids):  # " 7" and "7" are one ID
        distinct, inverse = np.unique(np.array(ids, dtype=object), return_inverse=True)
        return distinct, inverse.astype(np.int32)[codes]
    distinct = np.empty(len(ids), dtype=object)
    distinct[:] = ids
    return distinct, codes


def load_ratings_fast(
    path: Path, sep: str, has_header: bool, names: list[str] | None, scale: tuple[float, float]
) -> Ratings | None:
    """The fast path: a clean file as typed columns in one pyarrow pass, or None to defer to the checker."""
    layout = _fast_columns(path, has_header, names, sep)
    if layout is None:
        return None
    cols, ncol = layout
    source, delimiter = path, sep
    if sep == "::":  # pyarrow splits on one byte: `::` becomes a tab, in a file with no tab of its own
        raw = path.read_bytes()
        if b"\t" in raw:
            return None
        source, delimiter = pa.BufferReader(raw.replace(b"::", b"\t")), "\t"
        del raw
    dict_type = pa.dictionary(pa.int32(), pa.binary())
    types = {"user_id": dict_type, "movie_id": dict_type, "rating": pa.float64(), "timestamp": pa.int64()}
    try:
        table = pa_csv.read_csv(
            source,
            read_options=pa_csv.ReadOptions(
                skip_rows=int(has_header), column_names=[f"c{i}" for i in range(ncol)], block_size=1 << 24
            ),
            # The checker splits `::` with a regex, which keeps quotes as they are: so must this read.
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter, quote_char='"' if len(sep) == 1 else False, ignore_empty_lines=True
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={f"c{i}": types[ours] for ours, i in cols.items()},
                include_columns=[f"c{i}" for i in cols.values()],
                null_values=[],
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowException, UnicodeDecodeError):  # any doubt: the checker decides
        return None
    if table.num_rows == 0:
        return None
    users, movies = (_canonical_codes(table[f"c{cols[c]}"]) for c in ("user_id", "movie_id"))
    rating = table[f"c{cols['rating']}"].to_numpy()
    lo, hi = scale
    if users is None or movies is None or not (np.isfinite(rating).all() and lo <= rating.min() and rating.max() <= hi):
        return None
    if "timestamp" in cols:
        timestamp = table[f"c{cols['timestamp']}"].to_numpy()
    else:
        timestamp = np.arange(len(rating), dtype=np.int64)
    del table
    pa.default_memory_pool().release_unused()  # hand the parse buffers back before the frame is built
    n_rows = len(rating)
    keep = _latest_per_pair(users[1], movies[1], len(movies[0]), timestamp)
    if keep is not None:
        users, movies = (users[0], users[1][keep]), (movies[0], movies[1][keep])
        rating, timestamp = rating[keep], timestamp[keep]
    frame = pd.DataFrame(
        {
            "user_id": users[0][users[1]],
            "movie_id": movies[0][movies[1]],
            "rating": rating.astype(np.float32),
            "timestamp": timestamp,
        },
        copy=False,  # the default copies, and would consolidate the two object columns into a new block
    )
    return Ratings(frame, str(path), n_rows - len(frame), {"user_id": users, "movie_id": movies})


def _latest_per_pair(users: np.ndarray, movies: np.ndarray, n_movies: int, timestamp: np.ndarray) -> np.ndarray | None:
    """Mask of rows to keep so each (user, movie) has only its latest rating (ties: the later row), or None."""
    pair = users.astype(np.int64) * n_movies + movies
    ordered = np.sort(pair)  # a sort needs less memory than a 25M-entry hash table
    same = ordered[1:] == ordered[:-1]  # also true of pair[order] below: equal pairs sort alike
    del ordered
    if not same.any():
        return None
    order = np.argsort(pair, kind="stable")  # grouped by pair, file order within a group
    rows = order[np.r_[same, False] | np.r_[False, same]]  # only the rows of repeated pairs
    del order, same
    # Sorted by pair, then time, then file order (lexsort is stable): each group's last row is the latest.
    rows = rows[np.lexsort((timestamp[rows], pair[rows]))]
    later = pair[rows[1:]] == pair[rows[:-1]]
    keep = np.ones(len(pair), dtype=bool)
    keep[rows[:-1][later]] = False
    return keep


def _read_rows(path: Path, sep: str, has_header: bool) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """The checker's read: (rows as text, file line of each row, our column -> file column)."""
    try:
        # header=None even with a header: the field count then comes from line 1, so a longer row is an
        # error instead of pandas silently turning the first column into an index and shifting the rest.
        raw = pd.read_csv(
            path,
            sep=sep,
            header=None,
            dtype=str,
            keep_default_na=False,
            encoding="latin-1",
            skipinitialspace=True,
            engine="python" if len(sep) > 1 else "c",  # `::` is a regex separator, which only Python's reads
            # Kept, then dropped below: skipping them in the parser shifts every later line number.
            skip_blank_lines=False,
        )
    except pd.errors.ParserError as exc:
        where = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if where:
            expected, line, saw = where.groups()
            raise DataError(f"{path}:{line}: column {saw}: row has {saw} fields, expected {expected}") from None
        raise DataError(f"{path}: malformed row: {str(exc).strip()}") from None
    # A blank line reads as a row of empty fields; only rows with an empty first field can be one.
    blank = raw.iloc[:, 0].fillna("").eq("").to_numpy()
    if blank.any():
        blank[blank] = raw[blank].fillna("").eq("").all(axis=1).to_numpy()
    lines = np.flatnonzero(~blank) + 1  # the file line of each remaining row
    raw = raw[~blank].reset_index(drop=True)
    line0 = 2 if has_header else 1
    if has_header:
        header, raw, lines = raw.iloc[0], raw.iloc[1:].reset_index(drop=True), lines[1:]
        raw.columns = [str(c).split(":")[0].strip().lower() for c in header]
        cols = _column_map(path, list(raw.columns))
    else:
        if raw.shape[1] < 3:
            raise DataError(f"{path}:1: expected user,movie,rating[,timestamp], got {raw.shape[1]} column(s)")
        cols = {"user_id": 0, "movie_id": 1, "rating": 2}
        if raw.shape[1] >= 4:
            cols["timestamp"] = 3
    if raw.empty:
        raise DataError(f"{path}:{line0}: no ratings rows after the header")
    return raw, lines, cols


def _load_checked(
    path: Path, sep: str, has_header: bool, names: list[str] | None, scale: tuple[float, float]
) -> Ratings:
    """The line-by-line checker: slow, but names the first bad row as `file:line: column 'c': problem`."""
    raw, lines, cols = _read_rows(path, sep, has_header)

    def column(ours: str) -> pd.Series:
        return raw[cols[ours]]

    def fail(mask: np.ndarray, ours: str, problem: str) -> None:
        row = int(np.flatnonzero(mask)[0])
        value = column(ours).iloc[row]
        label = cols[ours] if has_header else ours
        n = int(mask.sum())
        more = f" ({n - 1} more row(s) like it)" if n > 1 else ""
        raise DataError(f"{path}:{lines[row]}: column '{label}': {problem} {value!r}{more}")

    frame = pd.DataFrame(index=raw.index)
    for ours in ("user_id", "movie_id"):
        ids = column(ours)
        missing = ids.isna().to_numpy() | (ids.fillna("").str.strip() == "").to_numpy()
        if missing.any():
            fail(missing, ours, "empty ID")
        frame[ours] = ids.str.strip()
    rating = pd.to_numeric(column("rating").str.strip(), errors="coerce")
    bad = rating.isna().to_numpy() | ~np.isfinite(rating.to_numpy(dtype=float, na_value=np.nan))
    if bad.any():
        fail(bad, "rating", "rating is not a number:")
    lo, hi = scale
    out = ((rating < lo) | (rating > hi)).to_numpy()
    if out.any():
        fail(out, "rating", f"rating outside the scale [{lo:g}, {hi:g}]:")
    frame["rating"] = rating.astype(np.float32)
    if "timestamp" in cols:
        ts = pd.to_numeric(column("timestamp").str.strip(), errors="coerce")
        bad = ts.isna().to_numpy() | ~np.isfinite(ts.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            fail(bad, "timestamp", "timestamp is not a number:")
        frame["timestamp"] = ts.astype(np.int64)
    else:
        frame["timestamp"] = np.arange(len(frame), dtype=np.int64)

    # Keep the latest rating of each (user, movie): a re-rating replaces the earlier one.
    before = len(frame)
    frame = frame.sort_values("timestamp", kind="stable")
    frame = frame.drop_duplicates(["user_id", "movie_id"], keep="last").sort_index()
    return Ratings(frame.reset_index(drop=True), str(path), before - len(frame))


def load_titles(path: str | os.PathLike) -> dict[str, str]:
    """Read movie titles (movies.csv, movies.dat, u.item or ml-100k.item) into {raw movie ID: title}."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        if path.name == "u.item" or path.suffix == ".item" and "|" in _first_line(path):
            frame = pd.read_csv(path, sep="|", header=None, dtype=str, encoding="latin-1", usecols=[0, 1])
            ids, titles = frame[0], frame[1]
        elif "::" in _first_line(path):
            ids, titles = _dat_titles(path)
        elif path.suffix == ".item":
            frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8")
            frame.columns = [c.split(":")[0] for c in frame.columns]
            year = frame.get("release_year", pd.Series([""] * len(frame)))
            ids = frame["item_id"]
            titles = frame["movie_title"].str.cat(year.map(lambda y: f" ({y})" if y else ""))
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
            frame.columns = [c.strip().lower() for c in frame.columns]
            key = next((c for c in frame.columns if c in COLUMN_ALIASES["movie_id"]), None)
            if key is None or "title" not in frame.columns:
                raise DataError(f"{path}:1: missing column(s) movieId,title (header has {', '.join(frame.columns)})")
            ids, titles = frame[key], frame["title"]
    except (pd.errors.ParserError, UnicodeDecodeError, KeyError) as exc:
        raise DataError(f"{path}: cannot read titles: {exc}") from None
    return dict(zip(ids.str.strip(), titles.fillna("").str.strip(), strict=False))


def _dat_titles(path: Path) -> tuple[pd.Series, pd.Series]:
    """(IDs, titles) of a `MovieID::Title::Genres` file: UTF-8 (ML-10M), else latin-1 (ML-1M)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    ids, titles = [], []
    # split("\n"), not splitlines(): latin-1 byte 0x85 decodes to a character splitlines() breaks at.
    for line_no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("::")
        if not fields[0].strip():
            raise DataError(f"{path}:{line_no}: column 'MovieID': empty ID in {line!r}")
        if len(fields) < 2:
            raise DataError(f"{path}:{line_no}: column 'Title': missing, expected MovieID::Title::Genres: {line!r}")
        ids.append(fields[0])
        titles.append(fields[1])
    return pd.Series(ids, dtype=object), pd.Series(titles, dtype=object)


def _first_line(path: Path) -> str:
    with open(path, "rb") as fh:
        return fh.readline().decode("latin-1")


def split_indices(n: int, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random train/validation split of n rows: validation is the permutation's tail.

    With seed 0 and 10% this is the "P1" split of the accuracy notes, so numbers compare directly.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_train = n - int(round(n * val_frac))
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])
