"""Raw ids <-> contiguous indices.

Policy for ids unseen when the map was fitted (the map is fitted on the training ratings only):
`transform(ids)` raises UnknownIdError naming how many ids are unknown and a few of them;
`transform(ids, unknown="missing")` maps them to MISSING (-1) so the caller can drop or count
them. Nothing is ever silently given a fresh index, so a test rating of an item never seen in
training can not leak into the training matrix.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from deeprec.errors import DeeprecError

MISSING = -1


class UnknownIdError(DeeprecError):
    """Ids that the map was not fitted on."""


class IdMap:
    """A fitted, immutable mapping from raw ids (ints or strings) to 0..n-1, in sorted id order."""

    __slots__ = ("_index",)

    def __init__(self, index: pd.Index) -> None:
        self._index = index

    @classmethod
    def fit(cls, raw_ids: np.ndarray | Sequence) -> IdMap:
        """Map the distinct ids of `raw_ids`, sorted, to 0..n-1 (deterministic for a given set)."""
        return cls(pd.Index(pd.unique(np.asarray(raw_ids))).sort_values())

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, raw_id: object) -> bool:
        return raw_id in self._index

    @property
    def ids(self) -> np.ndarray:
        """Raw ids in index order: ids[i] is the raw id of index i."""
        return self._index.to_numpy()

    def transform(self, raw_ids: np.ndarray | Sequence, unknown: Literal["error", "missing"] = "error") -> np.ndarray:
        """Indices of `raw_ids` (int64). Unknown ids raise, or become MISSING with unknown="missing"."""
        if unknown not in ("error", "missing"):
            raise ValueError(f"unknown must be 'error' or 'missing', not {unknown!r}")
        indices = self._index.get_indexer(np.asarray(raw_ids)).astype(np.int64)
        if unknown == "error" and (indices == MISSING).any():
            missing = pd.unique(np.asarray(raw_ids)[indices == MISSING])
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise UnknownIdError(f"{len(missing)} id(s) not seen when the map was fitted: {shown}")
        return indices

    def inverse(self, indices: np.ndarray | Sequence) -> np.ndarray:
        """Raw ids of `indices`; an index outside 0..n-1 (MISSING included) is an error."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise UnknownIdError(f"index out of range 0..{len(self) - 1}")
        return self._index.to_numpy()[indices]


def stored_id(value: Any, integer_ids: bool) -> int | str | None:
    """The stored form of a raw id sent as int or string, for a map whose ids are integers or not
    (None when it cannot be one): what a served model and `deeprec recommend` look ids up by."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):
        return int(value) if integer_ids else str(int(value))
    if isinstance(value, numbers.Real):  # pandas turns ints into floats beside missing values
        value = float(value)
        if not value.is_integer():
            return None if integer_ids else str(value)
        return int(value) if integer_ids else str(int(value))
    if isinstance(value, str):
        if not integer_ids:
            return value
        return int(value) if re.fullmatch(r"\s*[+-]?\d+\s*", value) else None
    return None
