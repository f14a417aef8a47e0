"""Parsers for every MovieLens ratings format, and every bad input named by file and line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from conftest import write_lines, write_ratings_csv
from deeprec.datasets import DATASETS, check_local_file, get_spec
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


@pytest.mark.parametrize("sep", ["||", "ab", "<->"])
def test_a_separator_of_several_characters(tmp_path: Path, sep: str) -> None:
    """pandas' C parser takes one character (`::` is read by splitting on `:`); these were an error."""
    path = write_lines(tmp_path / "r.txt", [sep.join(["1", "2", "3"]), sep.join(["1", "3", "4"])])
    ratings = read_ratings(path, RatingsFormat(sep=sep), scale=(1, 5))
    assert ratings.items.tolist() == [2, 3] and ratings.values.tolist() == [3.0, 4.0]
    short = write_lines(tmp_path / "short.txt", [sep.join(["1", "2", "3"]), sep.join(["1", "3"])])
    with pytest.raises(DataFormatError, match=rf"line 2: expected 3 fields separated by '{re.escape(sep)}', got 2"):
        read_ratings(short, RatingsFormat(sep=sep), scale=(1, 5))


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


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("99999999999999999999::3::4::0", "user id 99999999999999999999 is out of range for a 64-bit integer"),
        ("18446744073709551615::3::4::0", "user id 18446744073709551615 is out of range"),  # read as uint64
        ("5::-99999999999999999999::4::0", "item id -99999999999999999999 is out of range"),
        ("5::3::4::99999999999999999999", "timestamp 99999999999999999999 is out of range"),
    ],
)
def test_ids_and_timestamps_beyond_int64_name_the_line(tmp_path: Path, line: str, reason: str) -> None:
    """They used to escape as an OverflowError traceback when converted to int64."""
    path = write_lines(tmp_path / "ratings.dat", ["1::1::5::0", line])
    with pytest.raises(DataFormatError) as err:
        read_ratings(path, DAT, scale=(1, 5))
    assert err.value.line == 2 and reason in err.value.reason


def test_generic_file_keeps_huge_ids_as_text_but_refuses_huge_timestamps(tmp_path: Path) -> None:
    ids = write_lines(tmp_path / "ids.csv", ["1,1,4", "18446744073709551615,1,3", "99999999999999999999,2,5"])
    assert read_ratings(ids).users.tolist() == ["1", "18446744073709551615", "99999999999999999999"]
    stamps = write_lines(tmp_path / "stamps.csv", ["1,1,4,0", "1,2,3,99999999999999999999"])
    with pytest.raises(DataFormatError, match=r"line 2: timestamp 99999999999999999999 is out of range"):
        read_ratings(stamps)


def test_generic_ids_that_differ_as_text_stay_different(tmp_path: Path) -> None:
    """Type inference read "0012" and "12" (or "7" and "7.0") as one id: ISBN- or zip-style ids
    merged, or a duplicate rating was reported that the file does not hold."""
    zeros = write_lines(tmp_path / "zeros.csv", ["user,item,rating", "u01,0012,5", "001,12,3", "1,777,4"])
    ratings = read_ratings(zeros)
    assert ratings.users.tolist() == ["u01", "001", "1"] and ratings.items.tolist() == ["0012", "12", "777"]
    assert ratings.n_items == 3
    isbn = write_lines(tmp_path / "isbn.csv", ["007,0195153448,5", "7,195153448,3"])
    assert read_ratings(isbn).users.tolist() == ["007", "7"]  # not a duplicate rating
    floats = write_lines(tmp_path / "floats.csv", ["1.0,2,5", "2, 3 ,4"])
    ratings = read_ratings(floats)
    assert ratings.users.tolist() == ["1.0", "2"]  # not "2.0": user 2 keeps its id
    assert ratings.items.tolist() == [2, 3] and ratings.items.dtype == np.int64  # plain integers, spaces dropped


@pytest.mark.parametrize("scale", [None, (1, 5)])
def test_rating_beyond_float32_is_refused(tmp_path: Path, scale: tuple[float, float] | None) -> None:
    """1e308 is finite as text but inf as the stored float32; it used to give the scale 1..inf."""
    path = write_lines(tmp_path / "r.csv", ["1,1,4", "1,2,1e308", "1,3,2"])
    with pytest.raises(DataFormatError) as err:
        read_ratings(path, scale=scale)
    assert err.value.line == 2 and err.value.reason == "rating '1e308' is too large for a 32-bit float"


def test_inferred_scale_refuses_timestamps_in_the_rating_column(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "r.dat", ["1::25::5", "1::27::978300125", "2::25::978300223"])
    with pytest.raises(DataFormatError) as err:
        read_ratings(path)
    assert err.value.line == 2
    assert "values such as 978300125 that look like timestamps or ids" in err.value.reason
    assert "--scale MIN,MAX" in err.value.reason and "scale=" in err.value.reason
    # Given explicitly, any scale is the user's to choose.
    assert read_ratings(path, scale=(0, 1e10)).scale == (0, 1e10)


@pytest.mark.parametrize(
    ("values", "scale"),
    [(["-9.5", "10", "0.25"], (-9.5, 10.0)), (["0", "100", "37"], (0.0, 100.0)), (["1", "10000", "5"], (1.0, 10000.0))],
)
def test_inferred_scale_accepts_wide_but_real_scales(tmp_path: Path, values: list[str], scale: tuple[float, float]) -> None:
    path = write_lines(tmp_path / "r.csv", [f"{u},1,{v}" for u, v in enumerate(values)])
    assert read_ratings(path).scale == scale


def test_duplicate_error_offers_only_options_that_exist(tmp_path: Path) -> None:
    """`deeprec train` has no --duplicates option (the csv dataset's query says it), so the message
    must not tell trainers to use it."""
    path = write_lines(tmp_path / "ratings.dat", ["1::1::5::0", "1::1::4::0"])
    with pytest.raises(DataFormatError) as err:
        read_ratings(path, DAT, scale=(1, 5))
    assert err.value.reason == (
        "duplicate rating of item 1 by user 1 (first at line 1); training needs one rating per (user, item), "
        "so remove the duplicates, or keep the last of each: --dataset 'csv:PATH?duplicates=keep-last' "
        "(--duplicates keep-last in `deeprec data info/verify`)"
    )


def test_quoted_ids_are_the_same_as_unquoted(tmp_path: Path) -> None:
    generic = write_lines(tmp_path / "r.csv", ['"user","item","rating"', '"5",3,4', "5,4,3", '"alice","3","2"'])
    ratings = read_ratings(generic)
    assert ratings.users.tolist() == ["5", "5", "alice"] and ratings.n_users == 2
    assert ratings.items.tolist() == [3, 4, 3] and ratings.values.tolist() == [4.0, 3.0, 2.0]
    dat = write_lines(tmp_path / "ratings.dat", ["1::3::4::0", '"5"::3::4::0', "5::4::3::0"])
    assert read_ratings(dat, DAT, scale=(1, 5)).users.tolist() == [1, 5, 5]


def test_unmatched_quote_names_the_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "r.csv", ["1,3,4", '"5,3,4', "6,3,2"])
    with pytest.raises(DataFormatError, match=r"r\.csv, line 2: unmatched double quote: '\"5,3,4'"):
        read_ratings(path)


def test_csv_options_follow_the_path_as_a_query() -> None:
    spec = get_spec("csv:data/r.tsv?sep=tab&header=no&scale=0.5,10&duplicates=keep-last")
    assert spec.local_path == Path("data/r.tsv") and spec.ratings_file == "r.tsv"
    assert spec.ratings_format == RatingsFormat(sep="\t", header=False, encoding="utf-8")
    assert spec.scale == (0.5, 10.0) and spec.duplicates == "keep-last"
    assert spec.name == "csv:data/r.tsv?sep=tab&header=no&scale=0.5,10&duplicates=keep-last"  # the MLflow dataset name
    assert get_spec("csv:r.csv?sep=%3B").ratings_format.sep == ";"  # percent-encoded
    assert get_spec("csv:r.csv?sep=;").ratings_format.sep == ";"  # only & separates options
    assert get_spec("csv:r.csv?sep=+").ratings_format.sep == "+"  # not a space, as in HTML forms
    assert get_spec("csv:r.csv?header=auto").ratings_format.header is None
    plain = get_spec("csv:r.csv")
    assert (plain.ratings_format.sep, plain.ratings_format.header, plain.scale, plain.duplicates) == (None, None, None, "error")
    assert get_spec("csv:r.csv", sep="|", scale=(1, 5), duplicates="keep-last").ratings_format.sep == "|"  # the data commands' flags
    assert get_spec("ml-1m", duplicates="keep-last").duplicates == "keep-last" and DATASETS["ml-1m"].duplicates == "error"


def test_a_missing_relative_csv_under_mlflow_run_names_the_folder_it_was_looked_for_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    with pytest.raises(DeeprecError, match=r"^r\.csv: no such ratings file$"):
        check_local_file(get_spec("csv:r.csv"))
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)  # as `mlflow run` sets it for its entry point
    with pytest.raises(DeeprecError) as err:
        check_local_file(get_spec("csv:r.csv?sep=,"))
    assert str(err.value) == f"r.csv: no such ratings file in {tmp_path}, the folder `mlflow run` runs the project in; give csv: an absolute path"
    with pytest.raises(DeeprecError, match=r"no such ratings file$"):
        check_local_file(get_spec(f"csv:{tmp_path / 'r.csv'}"))  # an absolute path is not the folder's fault
    with pytest.raises(DeeprecError, match=r"is a folder; csv: needs the ratings file itself$"):
        check_local_file(get_spec(f"csv:{tmp_path}"))


@pytest.mark.parametrize(
    ("name", "flags", "message"),
    [
        ("csv:?sep=,", {}, "csv: needs a path"),
        ("csv:r.csv?sepp=,", {}, "csv:r.csv?sepp=,: unknown option 'sepp'; choose from sep, header, scale, duplicates"),
        ("csv:r.csv?sep", {}, "expected key=value after '?', got 'sep'"),
        ("csv:r.csv?sep=", {}, "expected key=value after '?', got 'sep='"),
        ("csv:r.csv?sep=,&sep=;", {}, "option 'sep' is given twice"),
        ("csv:r.csv?header=maybe", {}, "header must be one of auto, yes, no, got 'maybe'"),
        ("csv:r.csv?scale=5,1", {}, "scale: MIN must be below MAX, got '5,1'"),
        ("csv:r.csv?scale=1", {}, "scale: expected MIN,MAX such as 1,5, got '1'"),
        ("csv:r.csv?scale=1,inf", {}, "scale: MIN and MAX must be finite numbers"),
        ("csv:r.csv?duplicates=first", {}, "duplicates must be one of error, keep-last, got 'first'"),
        ("csv:r.csv?scale=1,5", {"scale": (1.0, 10.0)}, "--scale repeats the scale= option of csv:r.csv?scale=1,5; give it once"),
        ("csv:r.csv", {"duplicates": "keep-first"}, "unknown duplicate policy 'keep-first'"),
    ],
)
def test_bad_csv_options_are_one_line_errors(name: str, flags: dict, message: str) -> None:
    with pytest.raises(DeeprecError) as err:
        get_spec(name, **flags)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_empty_separator_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(DeeprecError, match=r"^--sep is empty; give the field separator"):
        get_spec("csv:ratings.csv", sep="")
    path = write_lines(tmp_path / "r.csv", ["1,3,4"])
    with pytest.raises(DeeprecError, match="the field separator is empty"):
        read_ratings(path, RatingsFormat(sep=""))


@pytest.mark.parametrize("fmt", [DAT, RatingsFormat(encoding="utf-8")], ids=["ml-1m dat, latin-1", "csv, utf-8"])
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_id(tmp_path: Path, fmt: RatingsFormat) -> None:
    path = tmp_path / "ratings.dat"
    path.write_bytes(b"\xef\xbb\xbf" + "1::3::4::0\n2::3::5::0\n".encode().replace(b"::", b"::" if fmt is DAT else b","))
    ratings = read_ratings(path, fmt, scale=(1, 5))
    assert ratings.users.tolist() == [1, 2] and ratings.values.tolist() == [4.0, 5.0]


def test_ratings_that_are_all_equal_leave_no_scale_to_infer(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "r.csv", ["1,1,3", "2,1,3", "2,2,3"])
    with pytest.raises(DataFormatError, match=r"r\.csv: every rating is 3, so no rating scale can be inferred; give it \(csv:PATH\?scale=MIN,MAX"):
        read_ratings(path)
    assert read_ratings(path, scale=(1, 5)).scale == (1, 5)  # given, it is fine
