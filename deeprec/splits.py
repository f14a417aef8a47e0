"""Train/validation/test splits as seeded, deterministic index arrays into a Ratings object.

Protocols:
- `holdout` (the report's): 10% of the ratings as test, stratified by user, then 10% of the rest
  as validation, stratified by user, both with `random_state=999613182` (scikit-learn's
  `train_test_split`).
- `u1`..`u5` (ML-100K's canonical folds): the ratings of the `u$i.test` file GroupLens ships
  beside `u.data` (`Dataset.split` finds them), u$i.base = the rest. Without that file, the fold
  is made as GroupLens's mku.sh makes it from `u.data`: lines (i-1)*20000+1 .. i*20000 in file
  order. The shipped files were not made from the shipped `u.data`'s order (u1.test holds about
  half of user 1's ratings, a block of u.data's lines about a fifth of anyone's), so only the
  first matches published results. Validation is then 10% of the base, stratified by user, as
  in `holdout`.
- `kfold_splits`: K folds stratified by user (scikit-learn's `StratifiedKFold`), used for CV.

Users too small to stratify (never a crash): stratifying by user needs each user to get at
least one held-out and one kept rating, i.e. ceil(1/fraction) and ceil(1/(1 - fraction)) ratings
in the pool being split (K for K folds). Smaller users with 2 or more ratings are stratified
together as one pooled group, each keeping one rating (drawn with the split's seed) in training;
a user's only rating always stays in training. Holding out all of a user's ratings would make the
user unknown to the model, so their held-out ratings could not be scored. Both counts are
recorded in `Split.notes`. On ML-1M (every user has at least 20 ratings) no user is affected and
the split is exactly scikit-learn's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from deeprec.errors import DeeprecError
from deeprec.idmap import MISSING, IdMap

REPORT_SEED = 999613182
HOLDOUT_TEST_FRACTION = 0.1
HOLDOUT_VALID_FRACTION = 0.1
CANONICAL_FOLD_SIZE = 20_000
CANONICAL_SPLITS = ("u1", "u2", "u3", "u4", "u5")
SPLIT_NAMES = ("holdout",) + CANONICAL_SPLITS


@dataclass(frozen=True)
class Split:
    """Disjoint, sorted index arrays covering every rating exactly once."""

    name: str
    seed: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    notes: tuple[str, ...] = ()

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


def _check_fraction(fraction: float, what: str) -> None:
    if not 0.0 < fraction < 1.0:
        raise DeeprecError(f"{what} must be between 0 and 1 (exclusive), got {fraction}")


def _strata(pool_users: np.ndarray, minimum: int, seed: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Stratum label of every pooled rating, and which ratings can be held out at all.

    Users with at least `minimum` ratings are their own stratum. Users with 2..minimum-1 are
    pooled into one shared stratum (-1): alone they would get less than one held-out rating.
    Neither a user's only rating nor one rating of each pooled user (drawn with `seed`) is ever
    held out: the shared stratum alone does not stop all of a small user's ratings being held out,
    which would make the user unknown to training.
    Returns (labels, splittable mask, pooled user count, single-rating user count).
    """
    _, inverse, counts = np.unique(pool_users, return_inverse=True, return_counts=True)
    per_rating = counts[inverse]
    labels = np.where(per_rating >= minimum, inverse, -1)
    splittable = per_rating >= 2
    pooled = np.flatnonzero(splittable & (labels == -1))
    if len(pooled):
        by_user = pooled[np.lexsort((np.random.default_rng(seed).random(len(pooled)), inverse[pooled]))]
        first_of_user = np.r_[True, inverse[by_user][1:] != inverse[by_user][:-1]]
        splittable[by_user[first_of_user]] = False
    if (labels[splittable] == -1).sum() < 2:  # a pooled stratum of one rating cannot be split
        splittable &= labels != -1
    return labels, splittable, int(((counts >= 2) & (counts < minimum)).sum()), int((counts == 1).sum())


def stratified_holdout(
    pool: np.ndarray, users: np.ndarray, fraction: float, seed: int, part: str = "held-out"
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Split the rating indices `pool` into (kept, held_out), stratified by user; `part` names the
    held-out share in the error when none can be held out.

    `users` is the user of every rating (indexed by rating index, not by pool position). The two
    arrays come back in scikit-learn's order (so the report's two-stage protocol chains exactly);
    the notes say how users too small to stratify were handled.
    """
    _check_fraction(fraction, "the held-out fraction")
    pool = np.asarray(pool, dtype=np.int64)
    # Each user of its own stratum needs a held-out and a kept rating (scikit-learn's condition).
    minimum = max(2, math.ceil(1.0 / fraction), math.ceil(1.0 / (1.0 - fraction)))
    labels, splittable, n_pooled, n_single = _strata(users[pool], minimum, seed)
    if splittable.sum() < 2:
        raise DeeprecError(
            f"too few ratings to hold out a {fraction:.0%} {part} share: {int(splittable.sum())} of the {len(pool):,} it is taken from "
            "may be held out, and it takes 2 (every user keeps a rating in training)"
        )
    kept, held_out = train_test_split(
        pool[splittable], test_size=fraction, stratify=labels[splittable], random_state=seed, shuffle=True
    )
    notes = []
    if n_pooled:
        notes.append(f"{n_pooled} user(s) with fewer than {minimum} ratings stratified together as one group, each keeping one rating in training")
    if n_single:
        notes.append(f"{n_single} user(s) with a single rating kept in training")
    return np.concatenate([kept, pool[~splittable]]), np.asarray(held_out, dtype=np.int64), tuple(notes)


def holdout_split(
    users: np.ndarray,
    test_fraction: float = HOLDOUT_TEST_FRACTION,
    valid_fraction: float = HOLDOUT_VALID_FRACTION,
    seed: int = REPORT_SEED,
) -> Split:
    """The report's protocol: test, then validation from the rest, both stratified by user."""
    everything = np.arange(len(users), dtype=np.int64)
    rest, test, test_notes = stratified_holdout(everything, users, test_fraction, seed, part="test")
    train, valid, valid_notes = stratified_holdout(rest, users, valid_fraction, seed, part="validation")
    return Split("holdout", seed, np.sort(train), np.sort(valid), np.sort(test), _notes(test=test_notes, validation=valid_notes))


def canonical_split(
    users: np.ndarray, name: str, seed: int = REPORT_SEED, valid_fraction: float = HOLDOUT_VALID_FRACTION, test: np.ndarray | None = None
) -> Split:
    """ML-100K's u1..u5: test = `test` (the rows of the shipped u$i.test file), or without it the
    name's 20,000-line block of u.data in file order, as mku.sh makes it."""
    if name not in CANONICAL_SPLITS:
        raise DeeprecError(f"unknown canonical split {name!r}; choose one of {', '.join(CANONICAL_SPLITS)}")
    n = len(users)
    if test is not None:
        test, source = np.unique(np.asarray(test, dtype=np.int64)), f"the ratings of the shipped {name}.test"
    elif n != 5 * CANONICAL_FOLD_SIZE:
        raise DeeprecError(
            f"split {name} is ML-100K's canonical fold and needs exactly {5 * CANONICAL_FOLD_SIZE:,} ratings "
            f"in u.data's file order; this dataset has {n:,}"
        )
    else:
        fold = int(name[1:])
        test = np.arange((fold - 1) * CANONICAL_FOLD_SIZE, fold * CANONICAL_FOLD_SIZE, dtype=np.int64)
        source = f"lines {test[0] + 1:,}-{test[-1] + 1:,} of u.data, as mku.sh makes {name}.test (no shipped {name}.test found)"
    base = np.setdiff1d(np.arange(n, dtype=np.int64), test)
    train, valid, notes = stratified_holdout(base, users, valid_fraction, seed, part="validation")
    return Split(name, seed, np.sort(train), np.sort(valid), test, (f"test: {source}", *_notes(validation=notes)))


def check_split_for(name: str, dataset: str) -> None:
    """Fail before loading anything when a split cannot apply to a dataset (u1..u5 are ML-100K's)."""
    if name not in SPLIT_NAMES:
        raise DeeprecError(f"unknown split {name!r}; choose one of: {', '.join(SPLIT_NAMES)}")
    if name in CANONICAL_SPLITS and dataset != "ml-100k" and not dataset.startswith("csv:"):
        raise DeeprecError(f"split {name} is ML-100K's canonical fold; use dataset ml-100k (or a csv: copy of its u.data)")


def make_split(name: str, users: np.ndarray, seed: int = REPORT_SEED, canonical_test: np.ndarray | None = None) -> Split:
    """A split by name (see SPLIT_NAMES); `canonical_test` is the test rows of u1..u5 where the
    dataset ships them (`Dataset.split` passes them)."""
    if name == "holdout":
        return holdout_split(users, seed=seed)
    if name in CANONICAL_SPLITS:
        return canonical_split(users, name, seed=seed, test=canonical_test)
    raise DeeprecError(f"unknown split {name!r}; choose one of: {', '.join(SPLIT_NAMES)}")


class KFolds(Sequence[tuple[np.ndarray, np.ndarray]]):
    """K (train, valid) index pairs, each built when it is asked for from one fold number per
    pooled rating: all K training arrays at once would hold the pool K-1 times over (1.3 GB of
    indices for 10 folds of ML-20M)."""

    def __init__(self, pool: np.ndarray, fold_of: np.ndarray, k: int) -> None:
        self.pool = pool  # sorted
        self.fold_of = fold_of  # the fold each pooled rating validates in; -1: always in training
        self.k = k

    def __len__(self) -> int:
        return self.k

    def __getitem__(self, fold: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        if not -self.k <= fold < self.k:
            raise IndexError(f"fold {fold} of {self.k}")
        in_valid = self.fold_of == fold % self.k
        return self.pool[~in_valid], self.pool[in_valid]


def kfold_splits(users: np.ndarray, k: int, seed: int, pool: np.ndarray | None = None) -> KFolds:
    """K (train, valid) index pairs over `pool` (default: every rating), stratified by user.

    Each pooled rating is in exactly one validation fold, except where a user is too small to
    stratify: users with 2 to K-1 pooled ratings are stratified together as one group (validated
    when that group holds at least K ratings), each keeping one rating (drawn with `seed`) in
    training in every fold, and a user's only rating stays in training in every fold. Both arrays
    of a pair are sorted.
    """
    if k < 2:
        raise DeeprecError(f"k-fold needs at least 2 folds, got {k}")
    pool = np.arange(len(users), dtype=np.int64) if pool is None else np.sort(np.asarray(pool, dtype=np.int64))
    labels, splittable, _, _ = _strata(users[pool], k, seed)
    if (labels[splittable] == -1).sum() < k:  # the pooled group too must reach every fold
        splittable &= labels != -1
    if splittable.sum() < k:
        raise DeeprecError(f"too few ratings for {k} folds: {int(splittable.sum())} can be validated")
    candidates = np.flatnonzero(splittable)
    fold_of = np.full(len(pool), -1, dtype=np.int32)
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, valid_pos) in enumerate(folds.split(candidates, labels[splittable])):
        fold_of[candidates[valid_pos]] = fold
    return KFolds(pool, fold_of, k)


def _notes(**by_part: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{part}: {note}" for part, notes in by_part.items() for note in notes)


def describe_split(users: np.ndarray, items: np.ndarray, split: Split) -> dict:
    """Sizes of a split and how many held-out ratings have a user or item unseen in training."""
    user_map, item_map = IdMap.fit(users[split.train]), IdMap.fit(items[split.train])

    def unseen(rows: np.ndarray) -> int:
        u = user_map.transform(users[rows], unknown="missing")
        i = item_map.transform(items[rows], unknown="missing")
        return int(((u == MISSING) | (i == MISSING)).sum())

    return {
        "name": split.name,
        "seed": split.seed,
        **split.sizes(),
        "train_users": len(user_map),
        "train_items": len(item_map),
        "valid_unseen_in_train": unseen(split.valid),
        "test_unseen_in_train": unseen(split.test),
        "notes": list(split.notes),
    }
