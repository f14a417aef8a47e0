"""The data a config trains on: its split (or CV folds), matrices, side features and user groups.

Nothing here imports TensorFlow, on purpose: `train`, `cv`, `tune` and `sweep` prepare (or check)
their data before TensorFlow loads, so that data the config cannot use is a one-line error before
TensorFlow's start-up lines and seconds of import, not after them: a split or folds the ratings
cannot fill, a malformed or missing side-information file, more k-means groups than users.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from deeprec import datasets, features
from deeprec.config import TrainConfig, check_cv
from deeprec.errors import DeeprecError
from deeprec.matrix import RatingMatrix, SplitMatrices, build_matrices
from deeprec.splits import KFolds, Split, kfold_splits


@dataclass(frozen=True)
class TrainingData:
    """What a model trains and is evaluated on: the split's matrices and optional side features."""

    matrices: SplitMatrices
    scale: tuple[float, float]
    side: np.ndarray | None = None  # (n_rows, n_features) float32, aligned with the matrix rows

    @property
    def train(self) -> RatingMatrix:
        return self.matrices.train

    @property
    def n_inputs(self) -> int:
        return self.train.shape[1] + (0 if self.side is None else self.side.shape[1])


@dataclass(frozen=True)
class Prepared:
    dataset: datasets.Dataset
    split: Split
    data: TrainingData
    groups: dict[str, np.ndarray] | None = None  # {label: raw user ids} of a grouped config, found when it is prepared


def side_table(cfg: TrainConfig, dataset: datasets.Dataset) -> pd.DataFrame | None:
    """The side-information table `cfg.side_info` asks for (read and validated), or None."""
    if cfg.side_info == "none":
        return None
    return dataset.user_features() if cfg.side_info == "user" else dataset.item_features()


def prepare(cfg: TrainConfig, dataset: datasets.Dataset | None = None, split: Split | None = None) -> Prepared:
    """Load, split and build the matrices a config asks for (the expensive part).

    A loaded `dataset` and a ready `split` (a CV fold, a refit on all non-test data) can be given
    so that several trainings share one load. A grouped config prepared on its own split gets its
    user groups here too, so that a group the data cannot make (more k-means clusters than users)
    fails before a tracked run starts, not inside it.
    """
    if dataset is None:
        dataset = datasets.load(datasets.get_spec(cfg.dataset))
    is_own_split = split is None  # not a fold, a refit or a group's part of a split
    if split is None:
        split = dataset.split(cfg.split)
    # The side file and the groups before the matrices: what the data cannot give fails fast.
    table = side_table(cfg, dataset)
    groups = None
    if cfg.groups != "none" and is_own_split:
        from deeprec.groups import user_groups

        groups = user_groups(cfg.groups, dataset, split, cfg.seed)
    matrices = build_matrices(dataset.ratings, split, orientation=cfg.orientation, fill=cfg.fill)
    side = None
    if table is not None:
        side = _scaled(features.align(table, matrices.users if cfg.side_info == "user" else matrices.items))
    return Prepared(dataset, split, TrainingData(matrices=matrices, scale=dataset.ratings.scale, side=side), groups)


def _scaled(table: np.ndarray) -> np.ndarray:
    """Min-max scale each feature column to [0, 1] (release years would otherwise dwarf the ratings)."""
    low, high = table.min(axis=0), table.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return ((table - low) / span).astype(np.float32)


class FoldSplits(Sequence[Split]):
    """The K fold splits, each built when a fold is run (see splits.KFolds)."""

    def __init__(self, name: str, seed: int, pairs: KFolds, test: np.ndarray) -> None:
        self.name, self.seed, self.pairs, self.test = name, seed, pairs, test

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, fold: int) -> Split:  # type: ignore[override]
        train, valid = self.pairs[fold]
        return Split(f"{self.name}-fold{fold % len(self) + 1}of{len(self)}", self.seed, train, valid, self.test)


def fold_splits(cfg: TrainConfig, dataset: datasets.Dataset, folds: int) -> tuple[Split, FoldSplits]:
    """The base split (whose test part is held out) and K fold splits of its non-test ratings."""
    check_cv(cfg, folds)
    base = dataset.split(cfg.split)
    pool = np.concatenate([base.train, base.valid])  # kfold_splits sorts it
    pairs = kfold_splits(dataset.ratings.users, folds, seed=cfg.seed, pool=pool)
    _check_folds_can_validate(dataset, pairs)
    return base, FoldSplits(cfg.split, cfg.seed, pairs, base.test)


def _check_folds_can_validate(dataset: datasets.Dataset, pairs: KFolds) -> None:
    """Refuse folds with no validation rating a fold model can predict. `build_matrices` leaves out
    held-out ratings whose user or item has no training rating; a fold left with none would
    train without early stopping and have no validation RMSE to report. (Every user keeps a
    training rating in every fold; an item rated only a few times need not.)"""
    users, items = pd.factorize(dataset.ratings.users)[0], pd.factorize(dataset.ratings.items)[0]
    n_users, n_items = users.max() + 1, items.max() + 1
    for fold, (train, valid) in enumerate(pairs):
        seen_users = np.bincount(users[train], minlength=n_users) > 0
        seen_items = np.bincount(items[train], minlength=n_items) > 0
        if not (seen_users[users[valid]] & seen_items[items[valid]]).any():
            raise DeeprecError(
                f"fold {fold + 1} of {len(pairs)} cannot be validated: each of its {len(valid):,} validation ratings is of a "
                "user or an item with no rating in the fold's training part; use fewer folds or data with more ratings per item"
            )


def check_data(cfg: TrainConfig, dataset: datasets.Dataset, folds: int | None = None) -> tuple[Split, FoldSplits | None]:
    """Refuse, in one line, data that `cfg` cannot train on, without building any matrix: its
    split (with `folds`, its CV folds), its side-information file and its user groups. Returns
    the split and the folds, for a caller that trains on them next (`deeprec cv`)."""
    if folds is None:
        split, splits = dataset.split(cfg.split), None
    else:
        split, splits = fold_splits(cfg, dataset, folds)
    side_table(cfg, dataset)
    if cfg.groups != "none":
        from deeprec.groups import user_groups

        user_groups(cfg.groups, dataset, split, cfg.seed)
    return split, splits
