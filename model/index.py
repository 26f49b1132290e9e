"""Contiguous index maps from raw user/movie IDs to embedding rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

MAX_TABLE = 1 << 24


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
        # Numeric IDs also get a dense int -> row table, so a request of 10k int IDs maps in one
        # numpy gather instead of 10k dict lookups (skipped when the ID range is too sparse).
        ints = [k for k in lookup if type(k) is int]
        self._int_base, self._int_table = 0, None
        if ints and max(ints) - min(ints) < max(MAX_TABLE, 4 * len(ints)):
            self._int_base = min(ints)
            self._int_table = np.full(max(ints) - self._int_base + 1, -1, dtype=np.int64)
            self._int_table[np.array(ints) - self._int_base] = [lookup[k] for k in ints]

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

    def rows_exact(self, raw_ids: list) -> np.ndarray | None:
        """Rows of a list of int/str IDs by exact spelling, -1 where not found; None if any is not int/str.

        The serving fast path: callers re-check the -1 entries one by one (whitespace, bad types).
        """
        kinds = set(map(type, raw_ids))
        if kinds == {int} and self._int_table is not None:
            try:
                ids = np.fromiter(raw_ids, dtype=np.int64, count=len(raw_ids)) - self._int_base
            except OverflowError:
                return None
            inside = (ids >= 0) & (ids < len(self._int_table))
            rows = np.full(len(ids), -1, dtype=np.int64)
            rows[inside] = self._int_table[ids[inside]]
            return rows
        if not kinds <= {int, str}:
            return None
        get = self.lookup.get
        return np.array([get(r, -1) for r in raw_ids], dtype=np.int64)

    def id_of(self, row: int) -> str:
        """The raw ID stored at a row."""
        return self.ids[row]
