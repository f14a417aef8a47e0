"""Parsers for every MovieLens ratings format, and every bad input named by file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import write_lines, write_ratings_csv
from deeprec.datasets import DATASETS
from deeprec.errors import DataFormatError, DeeprecError
from deeprec.ratings import RatingsFormat, read_ratings

DAT = DATASETS["ml-1m"].ratings_format
UDATA = DATASETS["ml-100k"].ratings_format
CSV = DATASETS["ml-20m"].ratings_format


def test_dat_format(ml1m_dir: Path, rows: np.ndarray) -> None:
    ratings = read_ratings(ml1m_dir / "ratings.dat", DAT, scale=(1, 5))
    assert len(ratings) == len(rows)
    np.testing.assert_array_equal(ratings.users, rows[:, 0])
    np.testing.assert_array_equal(ratings.items, rows[:, 1])
    np.testing.assert_array_equal(ratings.values, rows[:, 2].astype(np.float32))
    np.testing.assert_array_equal(ratings.timestamps, rows[:, 3])
    assert ratings.n_users == len(set(rows[:, 0])) and ratings.n_items == len(set(rows[:, 1]))
    assert sum(ratings.histogram().values()) == len(rows)
    assert ratings.has_timestamps


def test_udata_format(ml100k_dir: Path, rows: np.ndarray) -> None:
    ratings = read_ratings(ml100k_dir / "u.data", UDATA, scale=(1, 5))
    np.testing.assert_array_equal(ratings.users, rows[:, 0])
    np.testing.assert_array_equal(ratings.values, rows[:, 2])


def test_csv_format_with_half_stars(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "ratings.csv", ["userId,movieId,rating,timestamp", "1,31,2.5,1260759144", "1,1029,3.0,1260759179", "2,10,0.5,835355493"])
    ratings = read_ratings(path, CSV, scale=(0.5, 5))
    assert ratings.values.tolist() == [2.5, 3.0, 0.5]
    assert ratings.histogram() == {"0.5": 1, "2.5": 1, "3": 1}


def test_generic_file_detects_separator_header_and_string_ids(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "r.tsv", ["user\titem\tscore", "alice\tbook-1\t4", "bob\tbook-1\t2", "alice\tbook-2\t5"])
    ratings = read_ratings(path)
    assert ratings.users.tolist() == ["alice", "bob", "alice"]
    assert ratings.items.tolist() == ["book-1", "book-1", "book-2"]
    assert ratings.timestamps is None and not ratings.has_timestamps
    assert ratings.scale == (2.0, 5.0)  # inferred from the data when not given


@pytest.mark.parametrize("sep", ["::", "\t", ",", ";", "|"])
def test_every_separator_is_detected(tmp_path: Path, sep: str) -> None:
    path = write_lines(tmp_path / "r.txt", [sep.join(["1", "2", "3", "0"]), sep.join(["1", "3", "4", "0"])])
    assert read_ratings(path).values.tolist() == [3.0, 4.0]


def test_zero_rating_is_a_rating_not_missing(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "r.csv", ["1,1,0", "1,2,5"])
    assert read_ratings(path, scale=(0, 5)).values.tolist() == [0.0, 5.0]


@pytest.mark.parametrize(
    ("lines", "bad_line", "reason"),
    [
        (["1::1::5::0", "1::2::6::0"], 2, "outside the scale 1..5"),
        (["1::1::5::0", "1::2::0::0", "1::3::4::0"], 2, "outside the scale"),
        (["1::1::5::0", "1::2::NaN::0"], 2, "not a finite number"),
        (["1::1::5::0", "1::2::4::0", "1::3::four::0"], 3, "rating 'four' is not a number"),
        (["1::1::5::0", "1::2::4"], 2, "expected 4 fields"),
        (["1::1::5::0", "1::2::4::0::9", "1::3::4::0"], 2, "expected 4 fields"),
        (["1::1::5::0", "1:2::4::0"], 2, "expected 4 fields"),
        (["1::1::5::0", "", "1::3::4::0"], 2, "empty line"),
        (["1::1::5::0", "x::3::4::0"], 2, "user id 'x' is not an integer"),
        (["1::1::5::0", "1::3::4::later"], 2, "timestamp 'later' is not an integer"),
        (["1::1::5::0", "2::1::3::0", "1::1::4::0"], 3, "duplicate rating of item 1 by user 1 (first at line 1)"),
    ],
)
def test_bad_dat_input_names_file_and_line(tmp_path: Path, lines: list[str], bad_line: int, reason: str) -> None:
    path = write_lines(tmp_path / "ratings.dat", lines)
    with pytest.raises(DataFormatError) as err:
        read_ratings(path, DAT, scale=(1, 5))
    assert err.value.line == bad_line
    assert reason in err.value.reason
    assert str(err.value).startswith(f"{path}, line {bad_line}: ")
    assert "\n" not in str(err.value)


def test_bad_line_in_header_file_counts_the_header(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4.0,0", "1,2,abc,0"])
    with pytest.raises(DataFormatError, match=r"line 3: rating 'abc' is not a number"):
        read_ratings(path, CSV, scale=(0.5, 5))


def test_bad_line_deep_in_a_large_file(tmp_path: Path) -> None:
    lines = [f"{u}\t{i}\t3\t0" for u in range(1, 201) for i in range(1, 51)]
    lines[7_777] = "oops"
    path = write_lines(tmp_path / "u.data", lines)
    with pytest.raises(DataFormatError) as err:
        read_ratings(path, UDATA, scale=(1, 5))
    assert err.value.line == 7_778 and "expected 4 fields" in err.value.reason


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("")
    with pytest.raises(DataFormatError, match="the file is empty"):
        read_ratings(path, DAT)


def test_header_only_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "ratings.csv", ["userId,movieId,rating,timestamp"])
    with pytest.raises(DataFormatError, match="header but no ratings"):
        read_ratings(path, CSV)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DeeprecError, match="no such ratings file"):
        read_ratings(tmp_path / "nope.dat", DAT)


def test_duplicates_keep_last(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "ratings.dat", ["1::1::5::0", "2::1::3::0", "1::1::2::0"])
    ratings = read_ratings(path, DAT, scale=(1, 5), duplicates="keep-last")
    assert list(zip(ratings.users.tolist(), ratings.items.tolist(), ratings.values.tolist())) == [(2, 1, 3.0), (1, 1, 2.0)]


def test_unknown_duplicate_policy(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "ratings.dat", ["1::1::5::0"])
    with pytest.raises(DeeprecError, match="unknown duplicate policy"):
        read_ratings(path, DAT, duplicates="keep-first")  # type: ignore[arg-type]


def test_wrong_field_count_on_first_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "r.csv", ["1,2"])
    with pytest.raises(DataFormatError, match="line 1"):
        read_ratings(path, RatingsFormat(sep=","))


def test_csv_without_header_round_trips(tmp_path: Path, rows: np.ndarray) -> None:
    path = write_ratings_csv(tmp_path / "plain.csv", rows, header=False)
    ratings = read_ratings(path, scale=(1, 5))
    np.testing.assert_array_equal(ratings.items, rows[:, 1])


@pytest.mark.parametrize("where", ["first", "later"])
def test_bytes_that_are_not_utf8_name_the_file(tmp_path: Path, where: str) -> None:
    """Where the separator is sniffed from the first line, a bad byte there gets the same one-line
    error as one further down (it used to escape as a UnicodeDecodeError traceback)."""
    good, bad = b"1,10,4,0\n", b"Jos\xe9,5,3,0\n"
    path = tmp_path / "ratings.csv"
    path.write_bytes(bad + good if where == "first" else good + bad)
    with pytest.raises(DataFormatError, match=r"ratings\.csv: not utf-8 text: invalid continuation byte"):
        read_ratings(path, RatingsFormat(encoding="utf-8"))  # what csv:PATH datasets read
