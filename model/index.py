"""Contiguous index maps from raw user/movie IDs to embedding rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_TABLE = 1 << 24
INT64 = (-(1 << 63), 1 << 63)


def canonical_id(raw: object) -> str:
    """The one spelling of a raw ID: 196 and "196" are the same ID; bools and floats are not IDs."""
    if type(raw) is int:
        return str(raw)
    if type(raw) is str:
        return raw.strip()
    raise TypeError(f"ID must be an integer or a string, got {type(raw).__name__}")


def _order_key(raw: str) -> tuple:
    """Numeric IDs sort numerically, then the rest as text, so row order is predictable."""
    try:
        return (0, int(raw), "")
    except ValueError:
        return (1, 0, raw)


class IdIndex:
    """Raw ID <-> row; lookups accept an int or its decimal string spelling."""

    def __init__(self, ids: Sequence[str]):
        self.ids = list(ids)
        lookup: dict[object, int] = {}
        for row, raw in enumerate(self.ids):
            if raw in lookup:
                raise ValueError(f"duplicate ID {raw!r} in index")
            lookup[raw] = row
            # Both spellings as keys makes the hot path one dict.get with no str() per request item.
            try:
                as_int = int(raw)
            except ValueError:
                continue
            if str(as_int) == raw:
                lookup[as_int] = row
        # Public for the serving hot path: keys are each ID's str spelling and, if numeric, its int.
        self.lookup = lookup
        # Numeric IDs sorted, for mapping arrays of ints by binary search; dense ranges (MovieLens: 1..n)
        # also get a direct table, one numpy gather instead of a search per ID (10x faster at 10k IDs).
        ints = sorted(k for k in lookup if type(k) is int and INT64[0] <= k < INT64[1])
        self._keys = np.array(ints, dtype=np.int64)
        self._key_rows = np.array([lookup[k] for k in ints], dtype=np.int64)
        self._int_base, self._int_table = 0, None
        if ints and ints[-1] - ints[0] < max(MAX_TABLE, 4 * len(ints)):
            self._int_base = ints[0]
            self._int_table = np.full(ints[-1] - self._int_base + 1, -1, dtype=np.int64)
            self._int_table[self._keys - self._int_base] = self._key_rows
        # Every ID in row order for Arrow columns (a position in it is the row): strings map by hash lookup.
        self.spellings = pa.array(self.ids, type=pa.string())

    @classmethod
    def from_ids(cls, raw_ids: Iterable[object]) -> IdIndex:
        """Build an index over the distinct IDs, in a stable order."""
        return cls(sorted({canonical_id(r) for r in raw_ids}, key=_order_key))

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, raw: object, default: int = -1) -> int:
        """Row of one raw ID (int or str), or `default` when unknown. Callers reject bools first."""
        if type(raw) is str:
            row = self.lookup.get(raw, -1)
            return row if row >= 0 else self.lookup.get(raw.strip(), default)
        return self.lookup.get(raw, default) if type(raw) is int else default

    def rows(self, raw_ids: Iterable[object]) -> np.ndarray:
        """Rows of many raw IDs as int64, -1 where unknown."""
        get = self.get
        return np.fromiter((get(r) for r in raw_ids), dtype=np.int64)

    def rows_exact(self, raw_ids: list) -> np.ndarray:
        """Rows of a list of raw IDs by exact spelling as int64; -1 where unknown or not an int or a str.

        The serving path: " 196", True and 196.0 find no row here, and the caller names what is wrong with them.
        """
        kinds = set(map(type, raw_ids))
        if kinds == {int}:
            try:
                return self._int_rows(np.fromiter(raw_ids, dtype=np.int64, count=len(raw_ids)))
            except OverflowError:
                pass  # beyond int64: the dict below still knows such an ID
        get = self.lookup.get
        if kinds <= {int, str}:
            return np.array([get(r, -1) for r in raw_ids], dtype=np.int64)
        return np.array([get(r, -1) if type(r) is int or type(r) is str else -1 for r in raw_ids], dtype=np.int64)

    def _int_rows(self, values: np.ndarray) -> np.ndarray:
        """Rows of an int64 array, -1 where unknown."""
        rows = np.full(len(values), -1, dtype=np.int64)
        if self._int_table is not None:
            # Compared before subtracting, so IDs near the int64 limits cannot wrap into the table.
            inside = (values >= self._int_base) & (values < self._int_base + len(self._int_table))
            rows[inside] = self._int_table[values[inside] - self._int_base]
        elif len(self._keys):
            pos = np.minimum(np.searchsorted(self._keys, values), len(self._keys) - 1)
            rows = np.where(self._keys[pos] == values, self._key_rows[pos], -1)
        return rows

    def column_rows(self, column: pa.Array) -> np.ndarray:
        """Rows of an Arrow int64 or string column by exact spelling as int64, -1 where null or unknown."""
        if pa.types.is_int64(column.type):
            rows = self._int_rows(pc.fill_null(column, 0).to_numpy(zero_copy_only=False))
            if column.null_count:
                rows[column.is_null().to_numpy(zero_copy_only=False)] = -1
            return rows
        found = pc.index_in(column, value_set=self.spellings)
        return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)

    def ids_at(self, rows: np.ndarray) -> pa.Array:
        """The IDs stored at these rows, as an Arrow string array."""
        return pc.take(self.spellings, pa.array(rows))

    def id_of(self, row: int) -> str:
        """The raw ID stored at a row."""
        return self.ids[row]
