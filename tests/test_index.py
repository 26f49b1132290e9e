"""IdIndex: raw IDs (ints or strings) <-> contiguous embedding rows."""

from __future__ import annotations

import numpy as np
import pytest

from model.index import IdIndex, canonical_id


def test_round_trip_with_int_and_str_ids():
    index = IdIndex.from_ids([196, "186", 5])
    assert len(index) == 3
    assert sorted(index.get(i) for i in (196, 186, 5)) == [0, 1, 2]
    for raw in (196, "186", 5):
        row = index.get(raw)
        assert index.id_of(row) == str(raw)
        assert index.get(str(raw)) == row and index.get(int(raw)) == row
    assert index.get(196) == index.get("196")


def test_from_ids_deduplicates_spellings():
    index = IdIndex.from_ids([196, "196", " 196 ", 5, 5])
    assert index.ids == ["5", "196"]


def test_unknown_ids():
    index = IdIndex.from_ids([1, 2, 3])
    assert index.get(4) == -1 and index.get("4") == -1 and index.get("") == -1
    assert index.get(4, default=-7) == -7


@pytest.mark.parametrize("raw", [True, False, 1.0, 2.0, None, [1], (1,), b"1"])
def test_bools_floats_and_other_types_are_not_ids(raw):
    index = IdIndex.from_ids(["0", "1", "2"])
    assert index.get(raw) == -1


def test_string_ids():
    index = IdIndex.from_ids(["u-17", "alice", "u-2"])
    assert index.id_of(index.get("u-17")) == "u-17"
    assert index.get(" u-17 ") == index.get("u-17")
    assert index.get("U-17") == -1
    assert index.ids == ["alice", "u-17", "u-2"]


def test_leading_zeros_are_distinct():
    index = IdIndex.from_ids(["007", 7])
    assert len(index) == 2
    assert index.get("007") != index.get(7)
    assert index.get(7) == index.get("7")
    assert index.id_of(index.get("007")) == "007"
    only_padded = IdIndex.from_ids(["007"])
    assert only_padded.get(7) == -1 and only_padded.get("7") == -1


def test_other_int_spellings_do_not_alias():
    index = IdIndex(["+5", "1_000", "-3"])
    assert index.get(5) == -1 and index.get(1000) == -1
    assert index.get(-3) == index.get("-3") == 2


def test_numeric_order_is_numeric_then_text():
    index = IdIndex.from_ids(["10", 2, "b", 1, "a", "-4"])
    assert index.ids == ["-4", "1", "2", "10", "a", "b"]


def test_rows_is_vectorised_with_minus_one_for_unknown():
    index = IdIndex.from_ids([10, 20, "x"])
    rows = index.rows([20, "10", 99, "x", True, 10.0, "y"])
    assert rows.dtype == np.int64
    assert rows.tolist() == [index.get(20), index.get(10), -1, index.get("x"), -1, -1, -1]
    assert index.rows([]).shape == (0,)


def test_duplicate_ids_in_constructor_raise():
    with pytest.raises(ValueError, match="duplicate"):
        IdIndex(["1", "2", "1"])


def test_canonical_id():
    assert canonical_id(196) == "196"
    assert canonical_id(" 196 ") == "196"
    assert canonical_id("u-17") == "u-17"


@pytest.mark.parametrize("raw", [1.0, float("nan"), True, False, None, b"1", [1]])
def test_canonical_id_rejects_non_ids(raw):
    with pytest.raises(TypeError):
        canonical_id(raw)
