"""The pyfunc recommender: a trained autoencoder plus the training matrix, served by MLflow.

`log_recommender()` saves everything needed to recommend without the training data (Keras model,
training matrix in the model's orientation, fill, side features, raw ids, titles, rating scale)
and logs it as an MLflow pyfunc model; `mlflow models serve -m <uri>` then answers requests.

Input: one DataFrame (`dataframe_records` / `dataframe_split` over HTTP), one row per request,
in one of three forms chosen by its columns:

- `user` [+ `n`]: the top-`n` (default 10) items each known user has *not* rated in training.
  Output columns: user, rank, item, title, predicted_rating.
- `user` + `item`: the predicted rating of each (known user, known item) pair.
  Output columns: user, item, title, predicted_rating.
- `ratings` [+ `n`]: a new user, not in training, given as a JSON object (a string, or an
  object) mapping raw item id -> rating, e.g. '{"1": 5, "48": 3}'; returns the top-`n` items they
  have not rated. Output columns: request (0-based input row), rank, item, title,
  predicted_rating. Only a user-oriented model can do this (an item-oriented model's input is
  an item's ratings by the *training* users, so a new user has no row to feed). A new user's
  side features are unknown: they are fed as zeros, which the model never saw in training for
  one-hot features, so such recommendations rely on the ratings alone.

Semantics: the model input of a known row is its training ratings with the fill (exactly as in
training and evaluation); a new user's input uses the same fill, with the row-mean fill taken as
the mean of the given ratings. Predicted ratings are clipped to the rating scale; ranking uses
the unclipped scores (ties in the clipped value keep the model's order). Titles are the dataset's
(ML-1M, ML-100K), else empty strings. Raw ids may be sent as ints or strings: with integer ids a
digit string such as "12" matches 12; with string ids an int 12 matches "12".

Bad input raises MlflowException(INVALID_PARAMETER_VALUE) with a one-line message, which
`mlflow models serve` answers with HTTP 400. Columns outside the signature are dropped by MLflow's
schema enforcement (with a warning) before `predict` sees them; called directly, `predict`
rejects them.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import mlflow
import numpy as np
import pandas as pd
import scipy.sparse as sp
import tensorflow as tf
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, ColSpec, Schema

from deeprec.idmap import stored_id

if TYPE_CHECKING:  # only for hints: serving needs neither the training data nor its code
    from deeprec.config import TrainConfig
    from deeprec.preparation import Prepared

log = logging.getLogger(__name__)

DEFAULT_N = 10
CACHE_BYTES = 1 << 30  # item orientation: keep the full prediction matrix while it fits in this
BATCH_BYTES = 64 << 20  # rows per forward batch: about this much input or output at a time
USER_BATCH = 256  # users scored at once for top-N (bounds the dense score block per request)
FORMAT_VERSION = 1

# Columns of the three request forms; AnyType because raw ids may be ints or strings and
# `ratings` may be a JSON string or an object. The values are checked in `predict`.
COLUMNS = ("user", "item", "n", "ratings")
SIGNATURE = ModelSignature(inputs=Schema([ColSpec(AnyType(), name, required=False) for name in COLUMNS]))
FORMS = "use columns `user` [+ `n`] (top-N), `user` + `item` (pair ratings) or `ratings` [+ `n`] (new user)"

# The file MLflow runs to build a logged recommender (models from code; see that file).
MODEL_CODE = Path(__file__).resolve().with_name("recommender_model.py")

# Serving needs only these (deeprec itself travels with the model as code).
RUNTIME_PACKAGES = ("mlflow", "keras", "tensorflow-cpu", "tensorflow", "numpy", "pandas", "scipy")


def log_recommender(model: keras.Model, prepared: Prepared, cfg: TrainConfig, name: str = "recommender") -> None:
    """Log a pyfunc `Recommender` for `model` (a plain Keras model) into the active MLflow run."""
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = save_artifacts(model, prepared, cfg, Path(tmp))
        users = np.load(artifacts["users"])
        example = pd.DataFrame({"user": [users[0].item()], "n": [3]})
        mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts=artifacts,
            signature=SIGNATURE,
            input_example=example,
            # The model code imports deeprec.serve.Recommender: ship the package beside it.
            code_paths=[str(MODEL_CODE.parent)],
            pip_requirements=runtime_requirements(),
        )


def save_artifacts(model: keras.Model, prepared: Prepared, cfg: TrainConfig, folder: Path) -> dict[str, str]:
    """Write the recommender's files into `folder`; return {artifact name: path}."""
    data, matrices = prepared.data, prepared.data.matrices
    paths = {
        "model": folder / "model.keras",
        "train": folder / "train.npz",
        "fill": folder / "fill.npz",
        "users": folder / "users.npy",
        "items": folder / "items.npy",
        "meta": folder / "meta.json",
    }
    model.save(paths["model"])
    sp.save_npz(paths["train"], data.train.values.tocsr())
    fill = data.train.fill
    optional = {k: v for k, v in (("per_row", fill.per_row), ("per_col", fill.per_col)) if v is not None}
    np.savez(paths["fill"], constant=np.float32(fill.constant), **{k: np.asarray(v, np.float32) for k, v in optional.items()})
    np.save(paths["users"], _id_array(matrices.users.ids), allow_pickle=False)
    np.save(paths["items"], _id_array(matrices.items.ids), allow_pickle=False)
    if data.side is not None:
        paths["side"] = folder / "side.npy"
        np.save(paths["side"], np.asarray(data.side, np.float32), allow_pickle=False)
    titles = prepared.dataset.item_titles()
    if titles:
        known = {str(i) for i in matrices.items.ids}  # only recommendable items need a title
        paths["titles"] = folder / "titles.json"
        paths["titles"].write_text(json.dumps({k: v for k, v in titles.items() if k in known}, ensure_ascii=False), encoding="utf-8")
    meta = {
        "format": FORMAT_VERSION,
        "orientation": matrices.orientation,
        "scale": [float(s) for s in data.scale],
        "fill": cfg.fill,
        "side_info": cfg.side_info,
        "dataset": prepared.dataset.spec.name,
    }
    paths["meta"].write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return {k: str(v) for k, v in paths.items()}


def _id_array(ids: np.ndarray) -> np.ndarray:
    """Raw ids as int64 or as a unicode array, so that np.load never needs pickle."""
    ids = np.asarray(ids)
    return ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str)


def runtime_requirements() -> list[str]:
    """Pinned versions of the installed runtime packages (skips the slow import-capturing inference)."""
    pins = []
    for package in RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:  # tensorflow-cpu or tensorflow, whichever is installed
            continue
    return pins


def _bad(message: str) -> MlflowException:
    """The error for input the caller must fix: `mlflow models serve` answers it with HTTP 400."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isnan(value))


def _shown(values: list) -> str:
    return ", ".join(repr(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")


class Recommender(mlflow.pyfunc.PythonModel):
    """Top-N and rating predictions from a logged autoencoder (see the module docstring).

    No state is set before `load_context`: `recommender_model.py` builds the instance empty, and
    the logged artifacts fill it.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the artifacts, build the compiled forward pass and, if small, cache item-major output."""
        files = context.artifacts
        meta = json.loads(Path(files["meta"]).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            raise MlflowException(f"recommender files of format {meta.get('format')!r}; this deeprec reads format {FORMAT_VERSION}")
        self.orientation_: str = meta["orientation"]
        self.scale_: tuple[float, float] = (float(meta["scale"][0]), float(meta["scale"][1]))
        self.train_ = sp.load_npz(files["train"]).tocsr().astype(np.float32)
        with np.load(files["fill"]) as fill:
            self.fill_constant_ = float(fill["constant"])
            self.fill_row_ = fill["per_row"] if "per_row" in fill else None
            self.fill_col_ = fill["per_col"] if "per_col" in fill else None
        self.side_ = np.load(files["side"]) if "side" in files else None
        self.user_ids_ = np.load(files["users"], allow_pickle=False)
        self.item_ids_ = np.load(files["items"], allow_pickle=False)
        self.integer_users_ = self.user_ids_.dtype.kind == "i"
        self.integer_items_ = self.item_ids_.dtype.kind == "i"
        self.user_index_ = {key: i for i, key in enumerate(self.user_ids_.tolist())}
        self.item_index_ = {key: i for i, key in enumerate(self.item_ids_.tolist())}
        self.titles_ = np.full(len(self.item_ids_), "", dtype=object)
        if "titles" in files:
            for raw, title in json.loads(Path(files["titles"]).read_text(encoding="utf-8")).items():
                index = self.item_index_.get(stored_id(raw, self.integer_items_))
                if index is not None:
                    self.titles_[index] = title
        # Which items each user rated in training (user-major whatever the model's orientation).
        self.rated_ = self.train_ if self.orientation_ == "user" else self.train_.T.tocsr()
        model = keras.saving.load_model(files["model"], compile=False)
        n_inputs = self.train_.shape[1] + (0 if self.side_ is None else self.side_.shape[1])
        self.n_inputs_ = n_inputs
        # No Python control flow to convert, so no AutoGraph (it cannot parse a lambda's source anyway).
        self.forward_: Callable = tf.function(
            lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, n_inputs], tf.float32)], autograph=False
        )
        self.item_major_: np.ndarray | None = None
        n_rows, n_cols = self.train_.shape
        if self.orientation_ == "item" and n_rows * n_cols * 4 <= CACHE_BYTES:
            # The model is fixed once loaded, so every user's scores can be computed once here.
            self.item_major_ = self._forward_rows(np.arange(n_rows))

    # -- model evaluation ---------------------------------------------------------------------

    def _row_inputs(self, rows: np.ndarray) -> np.ndarray:
        """Model input of training-matrix rows: observed ratings, the fill elsewhere, side features."""
        block = self.train_[rows]
        dense = self._fill(len(rows), self.fill_row_[rows] if self.fill_row_ is not None else None)
        dense[np.repeat(np.arange(len(rows)), np.diff(block.indptr)), block.indices] = block.data
        if self.side_ is not None:
            dense = np.concatenate([dense, self.side_[rows]], axis=1)
        return dense

    def _fill(self, n_rows: int, per_row: np.ndarray | None) -> np.ndarray:
        dense = np.full((n_rows, self.train_.shape[1]), self.fill_constant_, dtype=np.float32)
        if per_row is not None:
            dense += per_row[:, None]
        if self.fill_col_ is not None:
            dense += self.fill_col_[None, :]
        return dense

    def _batch_rows(self) -> int:
        width = max(self.n_inputs_, self.train_.shape[1])
        return max(1, min(1024, BATCH_BYTES // (4 * width)))

    def _forward(self, inputs: np.ndarray) -> np.ndarray:
        """Unclipped model output for dense inputs, in batches."""
        step = self._batch_rows()
        parts = [np.asarray(self.forward_(tf.constant(inputs[s : s + step], tf.float32)), dtype=np.float32) for s in range(0, len(inputs), step)]
        return np.concatenate(parts) if parts else np.empty((0, self.train_.shape[1]), np.float32)

    def _forward_rows(self, rows: np.ndarray) -> np.ndarray:
        step = self._batch_rows()
        return np.concatenate([self._forward(self._row_inputs(rows[s : s + step])) for s in range(0, len(rows), step)])

    def _user_scores(self, users: np.ndarray) -> np.ndarray:
        """(len(users), n_items) unclipped predictions of known user indices."""
        if self.orientation_ == "user":
            return self._forward_rows(users)
        if self.item_major_ is not None:
            return self.item_major_[:, users].T
        # Too big to cache: one pass over every item row, keeping only the asked users' columns.
        n_items, step = self.train_.shape[0], self._batch_rows()
        scores = np.empty((len(users), n_items), dtype=np.float32)
        for start in range(0, n_items, step):
            rows = np.arange(start, min(start + step, n_items))
            scores[:, rows] = self._forward(self._row_inputs(rows))[:, users].T
        return scores

    # -- requests -----------------------------------------------------------------------------

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Answer one request frame (top-N, pair ratings or new-user top-N; see the module docstring).

        `params` is unused: `n` travels in the frame, so each request row can ask for its own.
        """
        frame = _check_frame(model_input)
        columns = set(frame.columns)
        if "ratings" in columns:
            if columns & {"user", "item"}:
                raise _bad(f"`ratings` (a new user) cannot be combined with `user` or `item` in one request; {FORMS}")
            return self._new_users(frame)
        if "item" in columns:
            if "n" in columns:
                raise _bad("`n` applies to top-N requests, not to `user` + `item` pairs; drop the `n` column")
            return self._pairs(frame)
        return self._top_n(frame)

    def _pairs(self, frame: pd.DataFrame) -> pd.DataFrame:
        users = self._lookup(frame["user"], "user")
        items = self._lookup(frame["item"], "item")
        unique, position = np.unique(users, return_inverse=True)
        scores = np.empty(len(users), np.float32)
        # A block of USER_BATCH users' scores at a time, as for top-N: a request naming every user
        # of a large dataset must not build the whole users x items matrix.
        for start in range(0, len(unique), USER_BATCH):
            in_block = (position >= start) & (position < start + USER_BATCH)
            block_scores = self._user_scores(unique[start : start + USER_BATCH])
            scores[in_block] = block_scores[position[in_block] - start, items[in_block]]
        return pd.DataFrame({
            "user": self.user_ids_[users],
            "item": self.item_ids_[items],
            "title": self.titles_[items].astype(str),
            "predicted_rating": np.clip(scores, *self.scale_).astype(np.float64),
        })

    def _top_n(self, frame: pd.DataFrame) -> pd.DataFrame:
        users = self._lookup(frame["user"], "user")
        counts = _counts(frame)
        parts = []
        for start in range(0, len(users), USER_BATCH):
            block = users[start : start + USER_BATCH]
            unique, position = np.unique(block, return_inverse=True)
            scores = self._user_scores(unique)
            for offset, row in enumerate(position):
                user = block[offset]
                seen = self.rated_.indices[self.rated_.indptr[user] : self.rated_.indptr[user + 1]]
                parts.append(self._ranked(scores[row], seen, counts[start + offset], "user", self.user_ids_[user]))
        return _concat(parts, ["user", "rank", "item", "title", "predicted_rating"])

    def _new_users(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self.orientation_ != "user":
            raise _bad(
                "new users (`ratings`) need a user-oriented model (orientation=user): this model is item-oriented, "
                "its input is an item's ratings by the training users; ask for known users with `user` instead"
            )
        counts = _counts(frame)
        parsed = [self._parse_ratings(cell, row) for row, cell in enumerate(frame["ratings"])]
        inputs = np.empty((len(parsed), self.n_inputs_), dtype=np.float32)
        for row, (items, values) in enumerate(parsed):
            # A new user's row-mean fill is the mean of their ratings, as a training row's is.
            per_row = np.array([values.mean()], np.float32) if self.fill_row_ is not None else None
            dense = self._fill(1, per_row)[0]
            dense[items] = values
            inputs[row, : len(dense)] = dense
            inputs[row, len(dense) :] = 0.0  # unknown side features (see the module docstring)
        scores = self._forward(inputs)
        parts = [self._ranked(scores[row], items, counts[row], "request", row) for row, (items, _) in enumerate(parsed)]
        return _concat(parts, ["request", "rank", "item", "title", "predicted_rating"])

    def _ranked(self, scores: np.ndarray, seen: np.ndarray, n: int, key: str, value: Any) -> pd.DataFrame:
        """The top-n unseen items of one score row, best first (ties: lower item index first)."""
        candidates = np.setdiff1d(np.arange(len(scores)), seen, assume_unique=True)
        order = candidates[np.lexsort((candidates, -scores[candidates]))][:n]
        return pd.DataFrame({
            key: [value] * len(order),
            "rank": np.arange(1, len(order) + 1, dtype=np.int64),
            "item": self.item_ids_[order],
            "title": self.titles_[order].astype(str),
            "predicted_rating": np.clip(scores[order], *self.scale_).astype(np.float64),
        })

    def _lookup(self, column: pd.Series, kind: str) -> np.ndarray:
        """Indices of the raw ids in `column`; every unknown id is reported in one message."""
        index, integer = (self.user_index_, self.integer_users_) if kind == "user" else (self.item_index_, self.integer_items_)
        found = np.empty(len(column), dtype=np.int64)
        unknown = []
        for row, value in enumerate(column.tolist()):
            if _is_missing(value):
                raise _bad(f"row {row}: `{kind}` is missing")
            position = index.get(stored_id(value, integer))
            if position is None:
                unknown.append(value)
            else:
                found[row] = position
        if unknown:
            raise _bad(f"unknown {kind} id(s) {_shown(unknown)}: the model knows the {len(index)} {kind}s of its training data")
        return found

    def _parse_ratings(self, cell: Any, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(item indices, ratings) of one new user's `ratings` cell, validated."""
        if isinstance(cell, str):
            try:
                cell = json.loads(cell)
            except json.JSONDecodeError as exc:
                raise _bad(f"row {row}: `ratings` is not valid JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(cell, dict) or not cell:
            raise _bad(f'row {row}: `ratings` must be a non-empty JSON object of item id -> rating, e.g. {{"1": 5, "48": 3}}')
        low, high = self.scale_
        items, values, unknown = [], [], []
        for raw, rating in cell.items():
            if isinstance(rating, bool) or not isinstance(rating, numbers.Real) or not low <= float(rating) <= high:
                raise _bad(f"row {row}: rating {rating!r} of item {raw!r} is not a number in the rating scale {low:g}..{high:g}")
            index = self.item_index_.get(stored_id(raw, self.integer_items_))
            if index is None:
                unknown.append(raw)
                continue
            items.append(index)
            values.append(float(rating))
        if unknown:
            raise _bad(f"row {row}: unknown item id(s) {_shown(unknown)} in `ratings`: the model knows the {len(self.item_index_)} items of its training data")
        if len(set(items)) != len(items):
            raise _bad(f"row {row}: `ratings` rates the same item twice")
        return np.asarray(items, dtype=np.int64), np.asarray(values, dtype=np.float32)


def _check_frame(model_input: Any) -> pd.DataFrame:
    if not isinstance(model_input, pd.DataFrame):
        raise _bad(f"expected a DataFrame (dataframe_records or dataframe_split), got {type(model_input).__name__}")
    frame = model_input.copy()
    frame.columns = [str(c) for c in frame.columns]
    unknown = sorted(set(frame.columns) - set(COLUMNS))
    if unknown:
        raise _bad(f"unknown column(s) {', '.join(unknown)}; {FORMS}")
    # Before the row check: MLflow hands over a frame of only unknown columns as an empty one.
    if not set(frame.columns) & {"user", "ratings"}:
        raise _bad(f"missing column `user` or `ratings`; {FORMS}")
    if len(frame.index) == 0:
        raise _bad(f"the request has no rows; {FORMS}")
    return frame


def _counts(frame: pd.DataFrame) -> list[int]:
    """The `n` of each row (DEFAULT_N where absent); anything but a positive integer is an error."""
    if "n" not in frame.columns:
        return [DEFAULT_N] * len(frame)
    counts = []
    for row, value in enumerate(frame["n"].tolist()):
        if _is_missing(value):
            counts.append(DEFAULT_N)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer() and value >= 1:
            counts.append(int(value))
        else:
            raise _bad(f"row {row}: `n` must be a positive integer, got {value!r}")
    return counts


def _concat(parts: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    return frame[columns]
