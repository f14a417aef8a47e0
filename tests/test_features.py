"""Side information: the report's 30 user columns and the genre/year item columns."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from conftest import write_lines
from deeprec import features
from deeprec.errors import DataFormatError
from deeprec.idmap import IdMap


def test_ml1m_users_are_30_one_hot_columns(ml1m_dir: Path) -> None:
    table = features.ml1m_users(ml1m_dir / "users.dat")
    assert table.shape[1] == 30
    # Exactly one gender, one age group and one occupation per user.
    np.testing.assert_array_equal(table.sum(axis=1).to_numpy(), 3.0)
    user_7 = table.loc[7]  # conftest: gender "FM"[7 % 2] = M, age group index 0 -> 1, occupation 7
    assert user_7["gender=M"] == 1 and user_7["age=1"] == 1 and user_7["occupation=7"] == 1


def test_ml1m_items_genres_and_year(ml1m_dir: Path) -> None:
    table = features.ml1m_items(ml1m_dir / "movies.dat")
    assert table.shape[1] == 18 + 1
    item_3 = table.loc[3]  # "Movie 3: The Sequel (1953)", genres 3 and 8
    assert item_3["release_year"] == 1953
    assert item_3["genre=Children's"] == 1 and item_3["genre=Fantasy"] == 1
    assert item_3.drop("release_year").sum() == 2


def test_ml100k_users_bucket_ages_like_ml1m(ml100k_dir: Path) -> None:
    table = features.ml100k_users(ml100k_dir / "u.user")
    assert table.shape[1] == 30
    np.testing.assert_array_equal(table.sum(axis=1).to_numpy(), 3.0)
    assert table.loc[2, "age=1"] == 1  # age 17 -> "under 18"
    assert table.loc[10, "age=25"] == 1  # age 25
    assert table.loc[10, "occupation=librarian"] == 1  # occupation index 10


def test_ml100k_items_missing_date_gets_median_year(ml100k_dir: Path) -> None:
    table = features.ml100k_items(ml100k_dir / "u.item")
    assert table.shape[1] == 19 + 1
    first = table.index[0]
    others = table["release_year"].drop(first)
    assert table.loc[first, "release_year"] == np.median(others.to_numpy())


def test_unknown_genre_names_the_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "movies.dat", ["1::Toy Story (1995)::Comedy", "2::Jumanji (1995)::Space Opera"])
    with pytest.raises(DataFormatError, match=r"line 2: unknown genre 'Space Opera'"):
        features.ml1m_items(path)


@pytest.mark.parametrize(
    ("name", "lines", "read", "message"),
    [
        # a blank line before the bad one: the line number is the file's, not the row's
        ("users.dat", ["1::F::1::10::48067", "", "2::M::old::16::70072"], features.ml1m_users, "line 3: age 'old' is not an integer"),
        ("users.dat", ["x::F::1::10::48067"], features.ml1m_users, "line 1: user id 'x' is not an integer"),
        ("movies.dat", ["1::Toy Story (1995)::Comedy", "", "", "2a::Jumanji (1995)::Comedy"], features.ml1m_items, "line 4: movie id '2a' is not an integer"),
        ("movies.dat", ["1::Toy Story (1995)::Comedy", "", "2::Jumanji (1995)::Space Opera"], features.ml1m_items, "line 3: unknown genre 'Space Opera'"),
        ("u.user", ["1|24|M|technician|85711", "2|5x|F|writer|94043"], features.ml100k_users, "line 2: age '5x' is not an integer"),
        ("u.item", ["1|Toy Story (1995)|01-Jan-1995||url" + "|0" * 18 + "|y"], features.ml100k_items, "line 1: genre flag 'y' is not a number"),
        ("u.item", ["1|Toy Story (1995)|01-Jan-19x5||url" + "|0" * 19], features.ml100k_items, "line 1: release year '19x5' is not a number"),
    ],
)
def test_malformed_side_information_names_the_file_and_line(tmp_path: Path, name: str, lines: list[str], read, message: str) -> None:
    path = write_lines(tmp_path / name, lines)
    with pytest.raises(DataFormatError, match=re.escape(message)) as err:
        read(path)
    assert str(err.value) == f"{path}, {message}"


def test_unknown_occupation_names_the_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "u.user", ["1|24|M|technician|85711", "2|53|F|astronaut|94043"])
    with pytest.raises(DataFormatError, match=r"line 2: unknown occupation 'astronaut'"):
        features.ml100k_users(path)


def test_align_orders_by_idmap_and_zeroes_absent_ids(ml1m_dir: Path) -> None:
    table = features.ml1m_users(ml1m_dir / "users.dat")
    ids = IdMap.fit([5, 3, 999])
    aligned = features.align(table, ids)
    np.testing.assert_array_equal(aligned[0], table.loc[3].to_numpy())
    np.testing.assert_array_equal(aligned[1], table.loc[5].to_numpy())
    assert not aligned[2].any()
