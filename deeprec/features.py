"""Side information for hybrid models: user and item feature tables of ML-1M and ML-100K.

Users → 30 one-hot columns, as in the report: gender (2), age group (7, ML-1M's buckets) and
occupation (21). Items → one column per genre (18 in ML-1M, 19 in ML-100K, which has "unknown")
plus the release year. Tables are indexed by raw id; `align()` orders them by an IdMap.
All MovieLens metadata files are latin-1.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from deeprec.errors import DataFormatError
from deeprec.idmap import IdMap

log = logging.getLogger(__name__)

ML1M_AGE_GROUPS = (1, 18, 25, 35, 45, 50, 56)  # "1" = under 18, "56" = 56+ (ML-1M README)
GENDERS = ("F", "M")
ML1M_OCCUPATIONS = 21  # codes 0..20 (ML-1M README)
ML1M_GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
    "Western",
)
ML100K_GENRES = ("unknown",) + ML1M_GENRES
ML100K_OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
)
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


def _read_table(path: Path, sep: str, n_fields: int) -> tuple[list[int], list[list[str]]]:
    """(the line number of each row, its fields); blank lines are skipped, not counted as rows."""
    if not path.is_file():
        raise DataFormatError(path, None, "side-information file not found")
    lines, rows = [], []
    with path.open(encoding="latin-1", newline="") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split(sep)
            if len(fields) != n_fields:
                raise DataFormatError(path, line_no, f"expected {n_fields} fields separated by {sep!r}, got {len(fields)}")
            lines.append(line_no)
            rows.append(fields)
    if not rows:
        raise DataFormatError(path, None, "the file is empty")
    return lines, rows


def _numbers(path: Path, lines: list[int], texts: list[str], what: str, kind: type = int) -> list:
    """Each text as an int (or float), or a DataFormatError naming the file, line and field."""
    values = []
    for line, text in zip(lines, texts):
        try:
            values.append(kind(text))
        except ValueError:
            raise DataFormatError(path, line, f"{what} {text!r} is not {'an integer' if kind is int else 'a number'}") from None
    return values


def _one_hot(path: Path, values: list, categories: tuple, prefix: str, lines: list[int]) -> pd.DataFrame:
    lookup = {c: i for i, c in enumerate(categories)}
    codes = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        if value not in lookup:
            raise DataFormatError(path, lines[row], f"unknown {prefix} {value!r}")
        codes[row] = lookup[value]
    onehot = np.eye(len(categories), dtype=np.float32)[codes]
    return pd.DataFrame(onehot, columns=[f"{prefix}={c}" for c in categories])


def _age_group(age: int) -> int:
    """ML-1M's age bucket for an exact age (ML-100K gives exact ages)."""
    return max(g for g in ML1M_AGE_GROUPS if g <= max(age, 1))


def ml1m_users(path: Path) -> pd.DataFrame:
    """users.dat (UserID::Gender::Age::Occupation::Zip) → 30 one-hot columns, indexed by user id."""
    lines, rows = _read_table(path, "::", 5)
    ids = _numbers(path, lines, [r[0] for r in rows], "user id")
    ages = _numbers(path, lines, [r[2] for r in rows], "age")
    occupations = _numbers(path, lines, [r[3] for r in rows], "occupation")
    table = pd.concat(
        [
            _one_hot(path, [r[1] for r in rows], GENDERS, "gender", lines),
            _one_hot(path, ages, ML1M_AGE_GROUPS, "age", lines),
            _one_hot(path, occupations, tuple(range(ML1M_OCCUPATIONS)), "occupation", lines),
        ],
        axis=1,
    )
    return table.set_axis(pd.Index(ids, name="user"))


def ml100k_users(path: Path) -> pd.DataFrame:
    """u.user (id|age|gender|occupation|zip) → the same 30 columns as ML-1M (ages bucketed)."""
    lines, rows = _read_table(path, "|", 5)
    ids = _numbers(path, lines, [r[0] for r in rows], "user id")
    ages = [_age_group(age) for age in _numbers(path, lines, [r[1] for r in rows], "age")]
    table = pd.concat(
        [
            _one_hot(path, [r[2] for r in rows], GENDERS, "gender", lines),
            _one_hot(path, ages, ML1M_AGE_GROUPS, "age", lines),
            _one_hot(path, [r[3] for r in rows], ML100K_OCCUPATIONS, "occupation", lines),
        ],
        axis=1,
    )
    return table.set_axis(pd.Index(ids, name="user"))


def ml1m_items(path: Path) -> pd.DataFrame:
    """movies.dat (MovieID::Title (Year)::Genre|Genre) → 18 genre columns + release_year."""
    lines, rows = _read_table(path, "::", 3)
    ids = _numbers(path, lines, [f[0] for f in rows], "movie id")
    genres = pd.DataFrame(0.0, index=range(len(rows)), columns=[f"genre={g}" for g in ML1M_GENRES], dtype=np.float32)
    for row, fields in enumerate(rows):
        for genre in fields[2].split("|"):
            if genre not in ML1M_GENRES:
                raise DataFormatError(path, lines[row], f"unknown genre {genre!r}")
            genres.iat[row, ML1M_GENRES.index(genre)] = 1.0
    years = [_YEAR_IN_TITLE.search(f[1]) for f in rows]
    genres["release_year"] = _fill_missing_years(path, [float(m.group(1)) if m else np.nan for m in years])
    return genres.set_axis(pd.Index(ids, name="item"))


def ml100k_items(path: Path) -> pd.DataFrame:
    """u.item (id|title|release date|video date|url|19 genre flags) → 19 genre columns + release_year."""
    lines, rows = _read_table(path, "|", 5 + len(ML100K_GENRES))
    ids = _numbers(path, lines, [f[0] for f in rows], "movie id")
    flags = np.array([_numbers(path, [line] * len(ML100K_GENRES), f[5:], "genre flag", float) for line, f in zip(lines, rows)], dtype=np.float32)
    table = pd.DataFrame(flags, columns=[f"genre={g}" for g in ML100K_GENRES])
    # Release dates look like "01-Jan-1995"; one movie has none.
    dated = [(line, f[2]) for line, f in zip(lines, rows) if f[2].strip()]
    years = dict(zip((line for line, _ in dated), _numbers(path, [line for line, _ in dated], [d[-4:] for _, d in dated], "release year", float)))
    table["release_year"] = _fill_missing_years(path, [years.get(line, np.nan) for line in lines])
    return table.set_axis(pd.Index(ids, name="item"))


def _fill_missing_years(path: Path, years: list[float]) -> np.ndarray:
    """Missing years become the median year, so the column stays numeric; the count is logged."""
    values = np.asarray(years, dtype=np.float32)
    missing = np.isnan(values)
    if missing.any():
        log.info("%s: %d item(s) without a release year get the median year", path, int(missing.sum()))
        values[missing] = np.nanmedian(values)
    return values


def align(table: pd.DataFrame, ids: IdMap) -> np.ndarray:
    """Feature rows in IdMap index order (float32); ids absent from the table get all-zero rows."""
    aligned = table.reindex(ids.ids)
    absent = aligned.isna().all(axis=1)
    if absent.any():
        log.warning("%d id(s) have no side information; their feature rows are zero", int(absent.sum()))
    return aligned.fillna(0.0).to_numpy(dtype=np.float32)


def item_titles(path: Path, sep: str) -> dict[str, str]:
    """{raw item id as text: title} from a movie file (`movies.dat` or `u.item`), or {} without one."""
    if not path.is_file():
        log.warning("%s: no titles file, recommendations will have empty titles", path)
        return {}
    titles, skipped = {}, 0
    with path.open(encoding="latin-1", newline="") as handle:
        for line in handle:
            fields = line.rstrip("\r\n").split(sep)
            if len(fields) < 2 or not fields[0].strip():
                skipped += line.strip() != ""
                continue
            titles[fields[0].strip()] = fields[1]
    if skipped:
        # Titles are a convenience: a damaged line must not stop a trained model from being logged.
        log.warning("%s: %d line(s) without an id and a title were skipped", path, skipped)
    return titles
