"""Parse and validate ratings files: MovieLens `::` .dat, tab-separated `u.data`, `ratings.csv`,
and any user,item,rating[,timestamp] file.

Parsing is two-speed: pandas' C parser reads a good file at full speed; only when it reports a
problem do we re-read the offending line(s) in Python to say exactly which line is wrong and why.
Blank lines are kept as rows (`skip_blank_lines=False`) so that row r is always line r + 1 + header.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from deeprec.errors import DataFormatError, DeeprecError

log = logging.getLogger(__name__)

DuplicatePolicy = Literal["error", "keep-last"]
DUPLICATE_POLICIES: tuple[str, ...] = ("error", "keep-last")

# Tried in this order when a file's separator is not given: the first that splits the first line
# into 3 or 4 fields wins ("::" before ":" style matches, tab before space).
SEPARATOR_CANDIDATES: tuple[str, ...] = ("::", "\t", ",", ";", "|", " ")

# Ids and timestamps are stored as int64 and ratings as float32; a value beyond them is refused by
# name rather than overflowing (a traceback) or turning into inf.
INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
FLOAT32_MAX = float(np.finfo(np.float32).max)

# The largest rating magnitude accepted when the scale is inferred rather than given. Real scales
# stay far below it (1..5 stars, Jester's -10..10, 0..100 percentages, even 0..1000 points), while
# Unix timestamps (above 1e8 since 1973) and the ids of any sizeable catalogue exceed it: such a
# "rating" column means the file lacks its rating column, or has its columns in another order.
MAX_INFERRED_RATING = 1e4


@dataclass(frozen=True)
class RatingsFormat:
    """How a ratings file is laid out. `None` means "detect from the file"."""

    sep: str | None = None
    header: bool | None = None
    encoding: str = "latin-1"  # MovieLens files are latin-1; ASCII ids/ratings read the same either way
    integer_ids: bool = False  # MovieLens ids are integers; a generic file may use any strings


@dataclass(frozen=True)
class Ratings:
    """All ratings of a dataset in file order, with raw ids (not yet mapped to indices)."""

    users: np.ndarray  # raw user ids (int64, or object for string ids)
    items: np.ndarray  # raw item ids
    values: np.ndarray  # float32 ratings
    timestamps: np.ndarray | None  # int64 seconds, or None when the file has no such column
    scale: tuple[float, float]
    source: Path

    def __len__(self) -> int:
        return len(self.values)

    @property
    def n_users(self) -> int:
        return len(pd.unique(self.users))

    @property
    def n_items(self) -> int:
        return len(pd.unique(self.items))

    @property
    def has_timestamps(self) -> bool:
        """False when there is no timestamp column or every timestamp is the same (e.g. all 0)."""
        return bool(self.timestamps is not None and len(self) > 0 and self.timestamps.min() != self.timestamps.max())

    def histogram(self) -> dict[str, int]:
        """Count of each distinct rating value, keyed by its shortest text form ("4", "3.5")."""
        levels, counts = np.unique(self.values, return_counts=True)
        return {_format_rating(float(v)): int(c) for v, c in zip(levels, counts)}


def _format_rating(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def read_ratings(
    path: str | Path,
    fmt: RatingsFormat = RatingsFormat(),
    scale: tuple[float, float] | None = None,
    duplicates: DuplicatePolicy = "error",
) -> Ratings:
    """Read and validate a ratings file.

    `scale` is the allowed (min, max) rating; None infers it from the data (generic files only).
    Raises DataFormatError naming the file and line for any malformed, out-of-scale or duplicate
    rating, and for an empty file.
    """
    path = Path(path)
    if duplicates not in DUPLICATE_POLICIES:
        raise DeeprecError(f"unknown duplicate policy {duplicates!r}; choose one of {DUPLICATE_POLICIES}")
    if not path.is_file():
        raise DeeprecError(f"{path}: no such ratings file")
    if scale is not None and not scale[0] < scale[1]:
        raise DeeprecError(f"rating scale {scale} is empty: the minimum must be below the maximum")
    if fmt.sep == "":
        raise DeeprecError("the field separator is empty; give one such as ',' or None to detect it")

    with path.open("rb") as handle:
        if handle.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8:  # a file saved "as UTF-8" by Windows tools
            fmt = replace(fmt, encoding="utf-8-sig")  # latin-1 would read the mark into the first user id
    first_line = _first_line(path, fmt.encoding)
    sep = fmt.sep if fmt.sep is not None else sniff_separator(path, first_line)
    header = fmt.header if fmt.header is not None else _looks_like_header(first_line, sep)
    data_line = _nth_line(path, fmt.encoding, 2) if header else first_line
    if data_line is None:
        raise DataFormatError(path, None, "the file has a header but no ratings")
    n_fields = len(data_line.rstrip("\r\n").split(sep))
    if n_fields not in (3, 4):
        raise DataFormatError(
            path, 2 if header else 1, f"expected user{sep}item{sep}rating[{sep}timestamp], got {n_fields} fields"
        )
    layout = _Layout(path, sep, header, n_fields, fmt, scale)

    frame = _read_frame(layout)
    frame = _validated(frame, layout)
    frame = _deduplicated(frame, layout, duplicates)
    values = frame["rating"].to_numpy(dtype=np.float32)
    resolved_scale = scale if scale is not None else (float(values.min()), float(values.max()))
    if resolved_scale[0] == resolved_scale[1]:  # every prediction would clip to that one value
        raise DataFormatError(path, None, f"every rating is {resolved_scale[0]:g}, so no rating scale can be inferred; "
                                          "give it (csv:PATH?scale=MIN,MAX, or --scale MIN,MAX in `deeprec data`)")
    if scale is None:
        log.info("%s: rating scale not given, inferred %s from the data", path, resolved_scale)
    return Ratings(
        users=_ids(frame["user"]),
        items=_ids(frame["item"]),
        values=values,
        timestamps=frame["timestamp"].to_numpy(dtype=np.int64) if n_fields == 4 else None,
        scale=resolved_scale,
        source=path,
    )


@dataclass(frozen=True)
class _Layout:
    path: Path
    sep: str
    header: bool
    n_fields: int
    fmt: RatingsFormat
    scale: tuple[float, float] | None

    @property
    def columns(self) -> list[str]:
        return ["user", "item", "rating", "timestamp"][: self.n_fields]

    def line_of(self, row: int) -> int:
        return int(row) + 1 + int(self.header)


def _first_line(path: Path, encoding: str) -> str:
    line = _nth_line(path, encoding, 1)
    if line is None or not line.strip():
        raise DataFormatError(path, None if line is None else 1, "the file is empty" if line is None else "empty line")
    return line


def _nth_line(path: Path, encoding: str, n: int) -> str | None:
    lines = _lines(path, encoding, skip=n - 1)  # the same one-line error for bytes that do not decode
    try:
        return next(lines, None)
    finally:
        lines.close()


def sniff_separator(path: Path, first_line: str) -> str:
    """The separator that splits `first_line` into 3 or 4 fields (see SEPARATOR_CANDIDATES)."""
    text = first_line.rstrip("\r\n")
    for sep in SEPARATOR_CANDIDATES:
        if len(text.split(sep)) in (3, 4):
            return sep
    raise DataFormatError(path, 1, "cannot tell the separator: no candidate splits this line into user, item, rating[, timestamp]")


def _looks_like_header(first_line: str, sep: str) -> bool:
    """A first line whose rating field is not a number is a header (`userId,movieId,rating,...`)."""
    fields = first_line.rstrip("\r\n").split(sep)
    if len(fields) not in (3, 4):
        return False  # not a header either: the field count check reports line 1
    try:
        float(_unquoted(fields[2]))
    except ValueError:
        return True
    return False


def _read_frame(layout: _Layout) -> pd.DataFrame:
    # pandas' C parser cannot split on "::"; splitting on ":" puts an empty column between fields,
    # which is checked to be empty below, so "1:2::3" cannot slip through.
    if layout.sep == "::":
        names = [n for col in layout.columns for n in (col, f"_gap_{col}")][:-1]
        pandas_sep = ":"
    else:
        names = layout.columns
        pandas_sep = layout.sep
    # Other separators of several characters (`sep=||`) need pandas' Python parser, which reads
    # one as a regular expression; the C parser takes single characters only.
    several = len(pandas_sep) > 1
    try:
        frame = pd.read_csv(
            layout.path,
            sep=re.escape(pandas_sep) if several else pandas_sep,
            header=None,
            names=names,
            skiprows=1 if layout.header else 0,
            index_col=False,
            skip_blank_lines=False,
            encoding=layout.fmt.encoding,
            engine="python" if several else "c",
            # A generic file's ids are text: type inference would make "0012" and "12" (or "7"
            # and "7.0") one id. `_ids` turns a column of plain integers into int64 afterwards.
            dtype=None if layout.fmt.integer_ids else {"user": str, "item": str},
            # Quotes are not parsed as CSV quoting: one stray quote would join every line up to the
            # next one into a single field, silently. Spreadsheet exports quote whole fields
            # ("5" for user 5), so enclosing quotes are removed below instead.
            quoting=csv.QUOTE_NONE,
        )
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
        _raise_first_bad_line(layout, fallback=str(exc).strip())
        raise AssertionError("unreachable") from exc
    if frame.empty:
        raise DataFormatError(layout.path, None, "the file holds no ratings")
    gaps = [c for c in frame.columns if c.startswith("_gap_")]
    if gaps:
        bad = frame[gaps].notna().any(axis=1).to_numpy()
        _raise_at_first(layout, bad)
        frame = frame.drop(columns=gaps)
    return _without_enclosing_quotes(frame, layout)


def _without_enclosing_quotes(frame: pd.DataFrame, layout: _Layout) -> pd.DataFrame:
    """Each text field "x" as x, read as a number when its whole column then is one, so that "5"
    and 5 are the same; a quote left anywhere else is a malformed line. A generic file's ids stay
    text, without surrounding spaces (an id of spaces only is missing), for `_ids`."""
    for col in frame.columns:
        if pd.api.types.is_numeric_dtype(frame[col]):
            continue  # only text columns can hold quotes
        text = frame[col].astype("string")
        text_ids = col in ("user", "item") and not layout.fmt.integer_ids
        if text_ids:
            text = text.str.strip().replace("", pd.NA)  # as number parsing does: "1, 2, 5" rates item 2
        quoted = ((text.str.len() >= 2) & text.str.startswith('"') & text.str.endswith('"')).fillna(False).to_numpy(dtype=bool)
        text = text.where(~quoted, text.str[1:-1])
        _raise_at_first(layout, text.str.contains('"', regex=False).fillna(False).to_numpy(dtype=bool))
        if text_ids:
            frame[col] = text  # ids stay text until `_ids`
            continue
        if not quoted.any():
            continue
        numbers = pd.to_numeric(text, errors="coerce")
        frame[col] = numbers if numbers.notna().all() else frame[col].where(~quoted, text)
    return frame


def _validated(frame: pd.DataFrame, layout: _Layout) -> pd.DataFrame:
    """Check every row; on the first bad one, explain that line of the file."""
    _raise_at_first(layout, frame.isna().any(axis=1).to_numpy())
    rating = pd.to_numeric(frame["rating"], errors="coerce")
    values = rating.to_numpy(dtype=np.float64, na_value=np.nan)
    # Checked in float64: 1e308 is finite here but would become inf as the stored float32.
    bad = ~np.isfinite(values) | (np.abs(values) > FLOAT32_MAX)
    if layout.scale is not None:
        low, high = layout.scale
        with np.errstate(invalid="ignore"):
            bad |= (values < low) | (values > high)
    integer_columns = (["timestamp"] if layout.n_fields == 4 else []) + (["user", "item"] if layout.fmt.integer_ids else [])
    for col in integer_columns:
        bad |= _not_int64(frame[col])
    _raise_at_first(layout, bad)
    if layout.scale is None:
        implausible = np.flatnonzero(np.abs(values) > MAX_INFERRED_RATING)
        if len(implausible):
            row = int(implausible[0])
            raise DataFormatError(
                layout.path,
                layout.line_of(row),
                f"the rating column holds values such as {frame['rating'].iat[row]} that look like timestamps or ids, "
                "not ratings; if they really are ratings, give the scale "
                "(--scale MIN,MAX of `deeprec data info/verify`, or scale= in Python)",
            )
    frame = frame.assign(rating=rating)
    if layout.fmt.integer_ids:
        frame = frame.astype({"user": np.int64, "item": np.int64})
    return frame


def _deduplicated(frame: pd.DataFrame, layout: _Layout, policy: DuplicatePolicy) -> pd.DataFrame:
    dup = frame.duplicated(subset=["user", "item"], keep="last" if policy == "keep-last" else "first")
    if not dup.any():
        return frame
    if policy == "keep-last":
        log.warning("%s: %d duplicate (user, item) ratings dropped, keeping the last of each", layout.path, int(dup.sum()))
        return frame.loc[~dup.to_numpy()].reset_index(drop=True)
    row = int(np.flatnonzero(dup.to_numpy())[0])
    user, item = frame.at[row, "user"], frame.at[row, "item"]
    same = (frame["user"] == user).to_numpy() & (frame["item"] == item).to_numpy()
    first = int(np.flatnonzero(same)[0])
    raise DataFormatError(
        layout.path,
        layout.line_of(row),
        f"duplicate rating of item {item} by user {user} (first at line {layout.line_of(first)}); "
        "training needs one rating per (user, item), so remove the duplicates, or keep the last of each: "
        "--dataset 'csv:PATH?duplicates=keep-last' (--duplicates keep-last in `deeprec data info/verify`)",
    )


def _raise_at_first(layout: _Layout, bad: np.ndarray) -> None:
    if not bad.any():
        return
    line_no = layout.line_of(int(np.flatnonzero(bad)[0]))
    text = _nth_line(layout.path, layout.fmt.encoding, line_no) or ""
    raise DataFormatError(layout.path, line_no, line_problem(text, layout.sep, layout.n_fields, layout.scale, layout.fmt.integer_ids) or "malformed line")


def _raise_first_bad_line(layout: _Layout, fallback: str) -> None:
    """Slow path, only for files the C parser rejected: scan line by line for the first bad one."""
    start = 2 if layout.header else 1
    for line_no, text in enumerate(_lines(layout.path, layout.fmt.encoding, skip=start - 1), start=start):
        problem = line_problem(text, layout.sep, layout.n_fields, layout.scale, layout.fmt.integer_ids)
        if problem:
            raise DataFormatError(layout.path, line_no, problem)
    raise DataFormatError(layout.path, None, f"cannot parse: {fallback}")


def _lines(path: Path, encoding: str, skip: int) -> Iterator[str]:
    with path.open(encoding=encoding, errors="strict", newline="") as handle:
        try:
            yield from itertools.islice(handle, skip, None)
        except UnicodeDecodeError as exc:
            raise DataFormatError(path, None, f"not {encoding} text: {exc.reason}") from exc


def line_problem(
    text: str, sep: str, n_fields: int, scale: tuple[float, float] | None, integer_ids: bool
) -> str | None:
    """What is wrong with one line of a ratings file, or None if it is a valid rating."""
    fields = text.rstrip("\r\n").split(sep)
    if not text.strip():
        return "empty line"
    if len(fields) != n_fields:
        return f"expected {n_fields} fields separated by {sep!r}, got {len(fields)}: {text.strip()!r}"
    if any('"' in _unquoted(f) for f in fields):
        return f"unmatched double quote: {text.strip()!r}"
    user, item, rating = (_unquoted(f) for f in fields[:3])
    for name, value in (("user", user), ("item", item)):
        if not value:
            return f"empty {name} id"
        if integer_ids and (problem := _int64_problem(f"{name} id", value)):
            return problem
    try:
        number = float(rating)
    except ValueError:
        return f"rating {rating!r} is not a number"
    if not math.isfinite(number):
        return f"rating {rating!r} is not a finite number"
    if abs(number) > FLOAT32_MAX:
        return f"rating {rating!r} is too large for a 32-bit float"
    if scale is not None and not scale[0] <= number <= scale[1]:
        return f"rating {rating} is outside the scale {_format_rating(scale[0])}..{_format_rating(scale[1])}"
    if n_fields == 4:
        return _int64_problem("timestamp", _unquoted(fields[3]))
    return None


def _unquoted(field: str) -> str:
    """The field without surrounding blanks and one pair of enclosing double quotes, which pandas drops."""
    field = field.strip()
    return field[1:-1] if len(field) >= 2 and field[0] == field[-1] == '"' else field


def _not_int64(column: pd.Series) -> np.ndarray:
    """Rows that are not whole numbers within int64, which ids and timestamps are stored as."""
    if pd.api.types.is_signed_integer_dtype(column):
        return np.zeros(len(column), dtype=bool)
    if pd.api.types.is_unsigned_integer_dtype(column):  # pandas reads 2**63..2**64-1 as uint64
        return column.to_numpy() > INT64_MAX
    # Larger numbers are read as Python ints or floats. float64 rounds int64's extremes to
    # +-2**63, so values at the very limits are refused too: no real id or timestamp is that big.
    numeric = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        return np.isnan(numeric) | (numeric % 1 != 0) | (np.abs(numeric) >= 2.0**63)


def _int64_problem(what: str, text: str) -> str | None:
    try:
        number = int(text)
    except ValueError:
        return f"{what} {text!r} is not an integer"
    if not INT64_MIN <= number <= INT64_MAX:
        return f"{what} {text} is out of range for a 64-bit integer"
    return None


def _ids(column: pd.Series) -> np.ndarray:
    """Raw ids: int64 where every id of the column is a plain integer ("12", not "0012", "+12" or
    "12.0", each of which would then be the same id as "12"), else the text as in the file
    (without surrounding spaces)."""
    if pd.api.types.is_signed_integer_dtype(column):
        return column.to_numpy(dtype=np.int64)
    text = column.astype(str)
    if text.str.fullmatch(r"0|-?[1-9][0-9]{0,18}").all():
        try:
            return np.array(text.tolist(), dtype=np.int64)
        except OverflowError:  # beyond int64 (2**63 and above): text, rather than wrapped round
            pass
    return text.to_numpy(dtype=object)
