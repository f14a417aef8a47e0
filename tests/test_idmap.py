"""IdMap: raw ids <-> contiguous indices, and the stated policy for unseen ids."""

from __future__ import annotations

import numpy as np
import pytest

from deeprec.idmap import MISSING, IdMap, UnknownIdError


def test_round_trip_int_ids() -> None:
    raw = np.array([42, 7, 42, 1000, 7, 3])
    ids = IdMap.fit(raw)
    assert len(ids) == 4
    assert ids.ids.tolist() == [3, 7, 42, 1000]  # sorted, so the map is deterministic
    indices = ids.transform(raw)
    assert indices.tolist() == [2, 1, 2, 3, 1, 0]
    np.testing.assert_array_equal(ids.inverse(indices), raw)


def test_round_trip_string_ids() -> None:
    raw = np.array(["bob", "alice", "bob"], dtype=object)
    ids = IdMap.fit(raw)
    assert ids.transform(raw).tolist() == [1, 0, 1]
    assert ids.inverse([0, 1]).tolist() == ["alice", "bob"]
    assert "alice" in ids and "carol" not in ids


def test_unseen_ids_raise_by_default() -> None:
    ids = IdMap.fit([1, 2, 3])
    with pytest.raises(UnknownIdError, match=r"2 id\(s\) not seen .*: 9, 8"):
        ids.transform([1, 9, 8, 9])


def test_unseen_ids_can_be_marked_missing() -> None:
    ids = IdMap.fit([1, 2, 3])
    assert ids.transform([3, 9, 1], unknown="missing").tolist() == [2, MISSING, 0]


def test_inverse_rejects_out_of_range() -> None:
    ids = IdMap.fit([1, 2])
    with pytest.raises(UnknownIdError):
        ids.inverse([MISSING])
    with pytest.raises(UnknownIdError):
        ids.inverse([2])
