"""Load and validate MovieLens ratings and titles; fetch the embedded default dataset.

Supported layouts:
- ml-latest / ml-25m: `ratings.csv` (userId,movieId,rating,timestamp) + `movies.csv`
  (movieId,title,genres); `user_id,movie_id,rating[,timestamp]` headers work too.
- ML-100K: `u.data` (tab separated, no header) + `u.item` (pipe separated, latin-1).
- RecBole atomic files: `ml-100k.inter` + `ml-100k.item` (tab separated, typed header).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_SCALE = (0.5, 5.0)
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_DIR = "recbole/dataset_example/ml-100k/"
DEFAULT_NAME = "ml-100k (MovieLens 100K from the recbole 1.2.1 wheel)"

COLUMN_ALIASES = {
    "user_id": ("userid", "user_id", "user"),
    "movie_id": ("movieid", "movie_id", "item_id", "itemid", "item", "movie"),
    "rating": ("rating",),
    "timestamp": ("timestamp", "time"),
}
REQUIRED = ("user_id", "movie_id", "rating")


class DataError(ValueError):
    """A problem with an input file, phrased as `file:line: column 'c': problem`."""


@dataclass
class Ratings:
    """Validated ratings: one row per (user, movie), raw IDs as canonical strings."""

    frame: pd.DataFrame  # user_id:str, movie_id:str, rating:float32, timestamp:int64
    source: str
    duplicates_dropped: int = 0

    def fingerprint(self) -> str:
        """A sha256 of the validated rows, so an artifact names the exact data it saw."""
        f = self.frame
        h = hashlib.sha256()
        for col in ("user_id", "movie_id"):
            h.update("\x1f".join(f[col]).encode())
            h.update(b"\x1e")
        h.update(np.ascontiguousarray(f["rating"].to_numpy(np.float32)).tobytes())
        h.update(np.ascontiguousarray(f["timestamp"].to_numpy(np.int64)).tobytes())
        return "sha256:" + h.hexdigest()


def cache_dir() -> Path:
    """Where the default dataset is cached (outside git: MovieLens may not be redistributed)."""
    env = os.environ.get("MOVIEREC_DATA_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return (base if env else base / "movierec") / "ml-100k"


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
    sep = "\t" if "\t" in first else ("|" if "|" in first and "," not in first else ",")
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
    """Read and validate a ratings file; raise DataError naming file, line and column."""
    path = Path(path)
    sep, has_header, names = _sniff(path)
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
    """Read movie titles (movies.csv, u.item or ml-100k.item) into {raw movie ID: title}."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        if path.name == "u.item" or path.suffix == ".item" and "|" in _first_line(path):
            frame = pd.read_csv(path, sep="|", header=None, dtype=str, encoding="latin-1", usecols=[0, 1])
            ids, titles = frame[0], frame[1]
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
