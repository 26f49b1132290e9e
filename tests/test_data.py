"""Ratings and titles loading: every bad file names its line and column; three layouts load alike."""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import model.data
from model.data import (
    LENSKIT_DIR,
    LENSKIT_SDIST,
    DataError,
    _index_file_url,
    _load_checked,
    _sniff,
    dataset,
    load_ratings,
    load_ratings_fast,
    load_titles,
    split_indices,
)

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


# Pinned from the loader before the fast path (git 237b62a): the artifact's data fingerprint must not move.
PINNED_FINGERPRINTS = {
    "ratings.csv": (
        HEADER + "1,10,4,100\n1,11,3.5,101\n2,10,5,102\n 7 ,x9,0.5,50\n7,x9,2.5,60\n",
        "sha256:cbb75dbf87c81ebd4fc28c3b8bff140800c0e5db49bd9ddd9e999db750ab9700",
    ),
    "u.data": (
        "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t242\t5\t881250949\n",
        "sha256:b73a75cd021acdfe610baa33694db8167bf5d087c978eb5d22404484dbe97441",
    ),
}


@pytest.mark.parametrize("slice_rows", [1 << 20, 1, 2])
@pytest.mark.parametrize("name", sorted(PINNED_FINGERPRINTS))
def test_fingerprint_is_unchanged_from_the_previous_loader(tmp_path, monkeypatch, name, slice_rows):
    monkeypatch.setattr(model.data, "FINGERPRINT_SLICE", slice_rows)  # IDs are hashed in slices of this size
    text, pinned = PINNED_FINGERPRINTS[name]
    (tmp_path / "ml").mkdir()
    ratings = load_ratings(write(tmp_path / "ml" / name, text))
    assert ratings.duplicates_dropped == 1
    assert ratings.fingerprint() == pinned


# Clean files the fast (pyarrow) path must read exactly as the line-by-line checker does.
FAST_GOOD = {
    "spaces_and_ties": HEADER + " 1 , 10 ,4,100\n1,10 ,3, 100\n2,5,1,1\n1,10,2,99\n2,5,5,1\n",
    "no_timestamp": "user_id,movie_id,rating\n1,10,4\n1,10,3\n2,11,2.5\n",
    "latin1_ids": HEADER + "caf\xe9,10,4,100\n2,x,3,1\n",
    "utf8_ids": HEADER + "café,10,4,100\n2,x,3,1\n",
    "bom_header": "\ufeff" + HEADER + "1,10,4,100\n",
    "crlf": HEADER.replace("\n", "\r\n") + "1,10,4,100\r\n2,3,1,1\r\n",
    "leading_zeros_are_other_ids": HEADER + "01,010,4,100\n1,10,3,200\n",
    "reordered_columns": "movieId,rating,userId\n1,4,7\n2,3,7\n",
    "recbole_inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t3\t4\n",
    "headerless_three_fields": "1,10,4\n2,10,3\n",
    "headerless_five_fields": "1,10,4,100,x\n2,10,3,101,y\n",
    "dat": "1::10::4::978300760\n1::11::3.5::978300761\n\n2::10::5::978300762\n1::10::2::978300700\n",
    "dat_crlf": "1::10::4::100\r\n2::x7::3::101\r\n",
    "quoted": '"userId","movieId","rating","timestamp"\n"1","10","4","100"\n',
}
# Files the fast path must hand to the checker (which then reads them as before).
FAST_DOUBTS = {
    "float_timestamp": HEADER + "1,10,4,1e3\n",
    "row_of_empty_fields": HEADER + "1,10,4,100\n,,,\n2,3,1,1\n",
    "short_row_in_unused_column": "userId,movieId,rating,timestamp,x\n1,10,4,100,a\n2,10,4,100\n",
    "space_before_quote": HEADER + '2, "10",3,1\n',
    "u.data_bom_before_first_id": "\ufeff1\t10\t4\t100\n",
    "dat_quoted_id": '"1"::10::4::100\n2::10::3::101\n',
    "dat_with_a_tab": "1::10::4::100\n2::10\t::3::101\n",
}


def checked(path: Path):
    """What the line-by-line checker alone makes of path."""
    return _load_checked(path, *_sniff(path), (0.5, 5.0))


@pytest.mark.parametrize("name", sorted(FAST_GOOD) + sorted(FAST_DOUBTS))
def test_fast_path_reads_as_the_checker_does(tmp_path, name):
    text = FAST_GOOD.get(name) or FAST_DOUBTS[name]
    path = tmp_path / ("u.data" if name.startswith("u.data") else "ratings.csv")
    path.write_bytes(text.encode("latin-1" if name == "latin1_ids" else "utf-8"))
    fast = load_ratings_fast(path, *_sniff(path), (0.5, 5.0))
    assert (fast is not None) == (name in FAST_GOOD)
    ratings, expected = load_ratings(path), checked(path)
    pd.testing.assert_frame_equal(ratings.frame, expected.frame)
    assert ratings.duplicates_dropped == expected.duplicates_dropped
    assert ratings.fingerprint() == expected.fingerprint()


def test_fast_path_over_many_blocks_with_duplicates(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    n = 30_000
    users, movies = rng.integers(1, 400, n), rng.integers(1, 300, n)
    stars, stamps = rng.integers(1, 11, n) / 2, rng.integers(0, 50, n)  # few stamps: many timestamp ties
    text = HEADER + "".join(f"{u},m{m},{r},{t}\n" for u, m, r, t in zip(users, movies, stars, stamps, strict=True))
    path = write(tmp_path / "ratings.csv", text)
    real = model.data.pa_csv.ReadOptions
    # Small blocks: each block gets its own ID dictionary, which the loader must merge.
    monkeypatch.setattr(model.data.pa_csv, "ReadOptions", lambda **kw: real(**{**kw, "block_size": 1 << 14}))
    fast = load_ratings_fast(path, *_sniff(path), (0.5, 5.0))
    expected = checked(path)
    assert fast is not None and expected.duplicates_dropped > 1000
    pd.testing.assert_frame_equal(fast.frame, expected.frame)
    assert fast.duplicates_dropped == expected.duplicates_dropped


@pytest.mark.parametrize("fast", [True, False])
def test_codes_rebuild_the_id_columns(tmp_path, fast):
    path = write(tmp_path / "ratings.csv", HEADER + "1,10,4,100\n 2,11,3,101\n1,11,5,102\n3,10,1,103\n")
    ratings = load_ratings(path) if fast else checked(path)
    assert (ratings.id_codes is not None) == fast
    for column in ("user_id", "movie_id"):
        ids, codes = ratings.codes(column)
        assert codes.dtype == np.int32 and len(set(ids)) == len(ids)
        assert ids[codes].tolist() == ratings.frame[column].tolist()


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


def test_ratings_dat_loads_like_ratings_csv(tmp_path):
    rows = [(1, 1193, 5, 978300760), (1, 661, 3, 978302109), (6040, 1097, 4, 956715518), (2, 1193, 4.5, 1)]
    csv = write(tmp_path / "ratings.csv", HEADER + "".join(f"{u},{m},{r},{t}\n" for u, m, r, t in rows))
    dat = write(tmp_path / "ratings.dat", "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in rows))
    expected, ratings = load_ratings(csv), load_ratings(dat)
    pd.testing.assert_frame_equal(ratings.frame, expected.frame)
    assert ratings.fingerprint() == expected.fingerprint()


# ratings.dat rows the checker must refuse: (file text, line, text the message must name)
BAD_DAT = {
    "non_numeric_rating": ("1::10::4::100\n1::11::abc::101\n", 2, "column 'rating'"),
    "too_many_fields": ("1::10::4::100\n\n1::11::3::101::9\n", 3, "5 fields"),
    "single_colon": ("1::10::4::100\n1::11::3:101\n", 2, "column 'rating': rating is not a number: '3:101'"),
    "empty_movie_id": ("1::10::4::100\n1:: ::3::101\n", 2, "column 'movie_id'"),
}


@pytest.mark.parametrize("name", sorted(BAD_DAT))
def test_bad_ratings_dat_row_names_line_and_column(tmp_path, name):
    text, line, problem = BAD_DAT[name]
    message = load_error(write(tmp_path / "ratings.dat", text))
    assert f"ratings.dat:{line}: " in message and problem in message, message


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])  # ML-1M, ML-10M
def test_titles_movies_dat(tmp_path, encoding):
    text = "1::Toy Story (1995)::Animation|Children's\n73::Misérables, Les (1995)::Drama|War\n\n"
    path = write(tmp_path / "movies.dat", text + "260::Star Wars: Episode IV (1977)::Sci-Fi\n", encoding=encoding)
    titles = load_titles(path)
    assert titles == {"1": "Toy Story (1995)", "73": "Misérables, Les (1995)", "260": "Star Wars: Episode IV (1977)"}


def test_titles_movies_dat_bad_line_is_named(tmp_path):
    with pytest.raises(DataError, match=r"movies.dat:2: column 'Title'"):
        load_titles(write(tmp_path / "movies.dat", "1::Heat (1995)::Action\n2\n"))


def sdist_bytes(files: dict[str, bytes]) -> bytes:
    """A small tar.gz holding files (archive path -> content), like the lenskit sdist."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@pytest.fixture
def fake_sdist(tmp_path, monkeypatch):
    """Point the cache at tmp and make download_sdist write a small fake sdist; return its bytes."""
    monkeypatch.setenv("MOVIEREC_DATA_DIR", str(tmp_path / "cache"))
    data = sdist_bytes(
        {
            LENSKIT_DIR + "ratings.csv": (HEADER + GOOD).encode(),
            LENSKIT_DIR + "movies.csv": b"movieId,title,genres\n10,Heat (1995),Action\n11,Clueless (1995),Comedy\n",
            LENSKIT_DIR + "tags.csv": b"not wanted\n",
            "lenskit-2025.8.1/pyproject.toml": b"",
        }
    )
    downloads = []
    monkeypatch.setattr(model.data, "download_sdist", lambda dest: (downloads.append(dest), dest.write_bytes(data)))
    return data, downloads


def test_latest_small_refuses_an_archive_of_another_hash(tmp_path, fake_sdist):
    with pytest.raises(DataError, match=rf"{LENSKIT_SDIST}: sha256 is .*not the pinned"):
        dataset("ml-latest-small")
    assert not list((tmp_path / "cache" / "ml-latest-small").iterdir())


def test_latest_small_unpacks_ratings_and_movies_once(tmp_path, monkeypatch, fake_sdist):
    data, downloads = fake_sdist
    monkeypatch.setattr(model.data, "LENSKIT_SHA256", hashlib.sha256(data).hexdigest())
    with pytest.raises(DataError, match="make data DATASET=ml-latest-small"):
        dataset("ml-latest-small", fetch=False)
    ratings, movies = dataset("ml-latest-small")
    assert (ratings.parent, ratings.name, movies.name) == (
        tmp_path / "cache" / "ml-latest-small",
        "ratings.csv",
        "movies.csv",
    )
    assert sorted(p.name for p in ratings.parent.iterdir()) == ["movies.csv", "ratings.csv"]
    assert len(load_ratings(ratings).frame) == 3 and load_titles(movies)["11"] == "Clueless (1995)"
    assert dataset("ml-latest-small") == (ratings, movies) and len(downloads) == 1  # cached


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(DataError, match="unknown dataset 'ml-1b' .*ml-100k, ml-latest-small"):
        dataset("ml-1b")


def test_sdist_url_from_a_local_simple_index(tmp_path):
    page = tmp_path / "simple" / "lenskit"
    page.mkdir(parents=True)
    links = ['<a href="../../files/lenskit-2025.8.0.tar.gz#sha256=00">old</a>']
    links.append(f'<a href="../../files/{LENSKIT_SDIST}#sha256=11">it</a>')
    (page / "index.html").write_text("<html><body>" + "".join(links) + "</body></html>")
    index = (tmp_path / "simple").as_uri()
    assert (
        _index_file_url(index, "lenskit", LENSKIT_SDIST, None)
        == (tmp_path / "files").as_uri() + f"/{LENSKIT_SDIST}#sha256=11"
    )
    assert _index_file_url(index, "nothere", LENSKIT_SDIST, None) is None


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
