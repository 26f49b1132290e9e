"""Ratings and titles loading: every bad file names its line and column; three layouts load alike."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.data import DataError, load_ratings, load_titles, split_indices

REPO = Path(__file__).resolve().parents[1]
HEADER = "userId,movieId,rating,timestamp\n"
GOOD = "1,10,4,100\n1,11,3.5,101\n2,10,5,102\n"

# name -> (file text, line, text the message must name: the column or the problem)
BAD_RATINGS = {
    "non_numeric_rating": (HEADER + "1,10,4,100\n1,11,3,101\n1,12,abc,102\n", 4, "rating"),
    "nan_rating": (HEADER + GOOD + "3,10,nan,103\n", 5, "rating"),
    "rating_above_scale": (HEADER + GOOD + "3,10,7,103\n", 5, "rating"),
    "rating_below_scale": (HEADER + "1,10,0,100\n" + GOOD, 2, "rating"),
    "non_numeric_timestamp": (HEADER + GOOD + "3,10,4,yesterday\n", 5, "timestamp"),
    "infinite_timestamp": (HEADER + GOOD + "3,10,4,inf\n", 5, "timestamp"),
    "empty_user_id": (HEADER + "1,10,4,100\n,11,3,101\n", 3, "userid"),
    "empty_movie_id": (HEADER + "1,10,4,100\n2, ,3,101\n", 3, "movieid"),
    "too_many_fields": (HEADER + "1,10,4,100\n1,11,3,101,9\n", 3, "5 fields"),
    "too_many_fields_first_row": (HEADER + "1,10,4,100,9\n1,11,3,101\n", 2, "5 fields"),
    "bad_rating_after_blank_lines": (HEADER + "1,10,4,100\n\n\n1,11,x,101\n", 5, "rating"),
    "too_many_fields_after_blank_line": (HEADER + "1,10,4,100\n\n1,11,3,101,9\n", 4, "5 fields"),
}


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write text to path and return the path."""
    path.write_text(text, encoding=encoding)
    return path


def load_error(path: Path) -> str:
    """The DataError message load_ratings raises for path (fails the test if it loads)."""
    with pytest.raises(DataError) as info:
        load_ratings(path)
    message = str(info.value)
    assert "\n" not in message, f"message is not one line: {message!r}"
    assert str(path) in message, f"message does not name the file: {message!r}"
    return message


@pytest.mark.parametrize("name", sorted(BAD_RATINGS))
def test_bad_row_names_file_line_and_column(tmp_path, name):
    text, line, column = BAD_RATINGS[name]
    message = load_error(write(tmp_path / "ratings.csv", text))
    assert f":{line}:" in message, message
    assert column in message.lower(), message


def test_bad_rating_message_quotes_the_value(tmp_path):
    text, _, _ = BAD_RATINGS["non_numeric_rating"]
    message = load_error(write(tmp_path / "ratings.csv", text))
    assert re.search(r":4: column 'rating': .*'abc'", message), message


def test_missing_file(tmp_path):
    message = load_error(tmp_path / "nope.csv")
    assert "not found" in message


def test_directory_instead_of_file(tmp_path):
    message = load_error(tmp_path)
    assert "directory" in message


def test_empty_file(tmp_path):
    message = load_error(write(tmp_path / "ratings.csv", ""))
    assert ":1:" in message and "empty" in message


def test_header_only(tmp_path):
    message = load_error(write(tmp_path / "ratings.csv", HEADER))
    assert ":2:" in message and "no ratings rows" in message


def test_missing_column_is_named(tmp_path):
    message = load_error(write(tmp_path / "ratings.csv", "userId,movieId,timestamp\n1,10,100\n"))
    assert ":1:" in message and "missing column(s) rating" in message


def test_scale_is_configurable(tmp_path):
    path = write(tmp_path / "ratings.csv", HEADER + "1,10,7,100\n1,11,10,101\n")
    assert load_ratings(path, scale=(1, 10)).frame["rating"].tolist() == [7.0, 10.0]
    with pytest.raises(DataError, match=r":3: column 'rating'"):
        load_ratings(path, scale=(1, 9))


def test_many_bad_rows_counted(tmp_path):
    message = load_error(write(tmp_path / "ratings.csv", HEADER + "1,10,x,1\n1,11,y,2\n1,12,z,3\n"))
    assert ":2:" in message and "2 more row(s)" in message


def test_valid_rows_are_typed_and_ids_canonical(tmp_path):
    ratings = load_ratings(write(tmp_path / "ratings.csv", HEADER + " 1 , 10 ,4,100\n1,11,3.5,101\n"))
    frame = ratings.frame
    assert frame["user_id"].tolist() == ["1", "1"]
    assert frame["movie_id"].tolist() == ["10", "11"]
    assert frame["rating"].dtype == np.float32 and frame["rating"].tolist() == [4.0, 3.5]
    assert frame["timestamp"].dtype == np.int64 and frame["timestamp"].tolist() == [100, 101]
    assert ratings.duplicates_dropped == 0


@pytest.mark.parametrize("later_first", [False, True])
def test_duplicates_keep_latest_by_timestamp(tmp_path, later_first):
    early, late = "7,10,2,100\n", "7,10,5,200\n"
    rows = (late + early) if later_first else (early + late)
    text = HEADER + "1,10,4,50\n" + rows + "7,11,1,300\n7,11,3,250\n"
    ratings = load_ratings(write(tmp_path / "ratings.csv", text))
    frame = ratings.frame.set_index(["user_id", "movie_id"])
    assert ratings.duplicates_dropped == 2
    assert len(frame) == 3 and frame.index.is_unique
    assert frame.loc[("7", "10"), "rating"] == 5.0
    assert frame.loc[("7", "10"), "timestamp"] == 200
    assert frame.loc[("7", "11"), "rating"] == 1.0
    assert frame.loc[("1", "10"), "rating"] == 4.0


def test_three_layouts_load_to_the_same_frame(tmp_path):
    rows = [(196, 242, 3, 881250949), (186, 302, 3, 891717742), (22, 377, 1, 878887116), (196, 51, 2, 880606923)]
    csv = write(tmp_path / "ratings.csv", HEADER + "".join(f"{u},{m},{r}.0,{t}\n" for u, m, r, t in rows))
    (tmp_path / "ml").mkdir()
    udata = write(tmp_path / "ml" / "u.data", "".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in rows))
    inter_header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter = write(tmp_path / "x.inter", inter_header + "".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in rows))
    loaded = [load_ratings(p) for p in (csv, udata, inter)]
    expected = pd.DataFrame(
        {
            "user_id": [str(r[0]) for r in rows],
            "movie_id": [str(r[1]) for r in rows],
            "rating": np.array([r[2] for r in rows], dtype=np.float32),
            "timestamp": np.array([r[3] for r in rows], dtype=np.int64),
        }
    )
    for ratings in loaded:
        pd.testing.assert_frame_equal(ratings.frame, expected)
    assert len({r.fingerprint() for r in loaded}) == 1


def test_fingerprint_changes_with_the_data(tmp_path):
    a = load_ratings(write(tmp_path / "a.csv", HEADER + GOOD))
    b = load_ratings(write(tmp_path / "b.csv", HEADER + GOOD.replace("3.5", "4.5")))
    assert a.fingerprint() != b.fingerprint()


def test_blank_lines_are_skipped_not_rows(tmp_path):
    ratings = load_ratings(write(tmp_path / "r.csv", HEADER + "\n1,10,4,100\n\n\n2,10,5,102\n\n"))
    assert len(ratings.frame) == 2


def test_bad_row_in_headerless_layout_counts_lines_from_one(tmp_path):
    (tmp_path / "ml").mkdir()
    path = write(tmp_path / "ml" / "u.data", "196\t242\t3\t881250949\n186\t302\t9\t891717742\n")
    message = load_error(path)
    assert ":2:" in message and "rating" in message


def test_titles_movies_csv_with_quoted_comma(tmp_path):
    path = write(
        tmp_path / "movies.csv",
        'movieId,title,genres\n1,"American President, The (1995)",Comedy\n2,Heat (1995),Action\n',
    )
    assert load_titles(path) == {"1": "American President, The (1995)", "2": "Heat (1995)"}


def test_titles_u_item_latin1(tmp_path):
    text = "1|Toy Story (1995)|01-Jan-1995||http://x|0|1\n2|Café au lait (1994)|01-Jan-1994||http://y|0|0\n"
    path = write(tmp_path / "u.item", text, encoding="latin-1")
    assert load_titles(path) == {"1": "Toy Story (1995)", "2": "Café au lait (1994)"}


def test_titles_recbole_item_adds_year(tmp_path):
    text = "item_id:token\tmovie_title:token_seq\trelease_year:token\n1\tToy Story\t1995\n2\tUnknown\t\n"
    path = write(tmp_path / "x.item", text)
    assert load_titles(path) == {"1": "Toy Story (1995)", "2": "Unknown"}


def test_titles_missing_file_and_column(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_titles(tmp_path / "movies.csv")
    with pytest.raises(DataError, match=r":1: missing column"):
        load_titles(write(tmp_path / "movies.csv", "movieId,name\n1,Heat\n"))


@pytest.mark.parametrize(("n", "frac"), [(1000, 0.1), (101, 0.1), (10, 0.25)])
def test_split_indices_is_a_deterministic_partition(n, frac):
    train, val = split_indices(n, frac, seed=3)
    assert len(val) == int(round(n * frac)) and len(train) == n - len(val)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(n))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    again = split_indices(n, frac, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])


def test_split_indices_depends_on_seed():
    assert not np.array_equal(split_indices(1000, 0.1, 0)[1], split_indices(1000, 0.1, 1)[1])


@pytest.mark.slow  # three Python + torch start-ups
def test_cli_bad_data_exits_2_with_one_line(tmp_path):
    bad = {
        "missing": (tmp_path / "missing.csv", ""),
        "rating": (write(tmp_path / "rating.csv", HEADER + "1,10,4,100\n1,11,3,101\n1,12,abc,102\n"), ":4:"),
        "fields": (write(tmp_path / "fields.csv", HEADER + "1,10,4,100,9\n"), ":2:"),
    }
    # Started together: each run pays torch's import time, so overlap them.
    procs = {
        name: subprocess.Popen(
            [sys.executable, "train.py", "--ratings", str(path), "--out", str(tmp_path / f"out-{name}")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (path, _) in bad.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        path, where = bad[name]
        lines = err.strip().splitlines()
        assert proc.returncode == 2, (name, out, err)
        assert len(lines) == 1, (name, err)
        assert lines[0].startswith("error: ") and str(path) in lines[0] and where in lines[0], (name, err)
        assert "Traceback" not in err + out
        assert not (tmp_path / f"out-{name}").exists()
