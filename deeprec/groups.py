"""Per-group models (the report's section 7 and its future work): users split into groups, one
model trained per group on that group's ratings only.

- `age-gender`: ML-1M's (or ML-100K's) gender x age group, labels like `M-25` (men 25-34);
  `age-gender:M-25` trains that one group only (the report's "largest group" experiment).
- `kmeans:K`: users clustered on their training rating vectors (scikit-learn's KMeans on the
  sparse user x item matrix, seeded), labels `cluster-1` .. `cluster-K` — the report's proposal.

Clusters are fitted on training ratings only, so the test split never shapes the groups.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from deeprec.datasets import Dataset
from deeprec.errors import DeeprecError
from deeprec.features import GENDERS, ML1M_AGE_GROUPS
from deeprec.idmap import IdMap
from deeprec.splits import Split

# Every label the user features can give (ML-100K's exact ages are put in ML-1M's buckets), so a
# mistyped one is refused before the data is read.
AGE_GENDER_LABELS = tuple(f"{gender}-{age}" for gender in GENDERS for age in ML1M_AGE_GROUPS)


def parse_groups(text: str) -> tuple[str, str | int | None]:
    """("none", None) | ("age-gender", None or one label) | ("kmeans", K); ValueError if malformed."""
    if text == "none":
        return "none", None
    if text == "age-gender":
        return "age-gender", None
    if text.startswith("age-gender:") and len(text) > len("age-gender:"):
        label = text.split(":", 1)[1]
        if label not in AGE_GENDER_LABELS:
            raise ValueError(f"unknown age-gender group {label!r}; groups: {', '.join(AGE_GENDER_LABELS)}")
        return "age-gender", label
    if text.startswith("kmeans:"):
        try:
            k = int(text.split(":", 1)[1])
        except ValueError:
            raise ValueError("kmeans:K needs a whole number K") from None
        if k < 2:
            raise ValueError("K must be at least 2")
        return "kmeans", k
    raise ValueError("expected none, age-gender, age-gender:LABEL (e.g. M-25) or kmeans:K")


def user_groups(groups: str, dataset: Dataset, split: Split, seed: int) -> dict[str, np.ndarray]:
    """{group label: raw user ids}, in label order; only the named group for `age-gender:LABEL`."""
    kind, arg = parse_groups(groups)
    if kind == "age-gender":
        table = dataset.user_features()
        gender = table.filter(like="gender=").idxmax(axis=1).str.removeprefix("gender=")
        age = table.filter(like="age=").idxmax(axis=1).str.removeprefix("age=")
        labels = gender + "-" + age
        found = {label: labels.index[labels == label].to_numpy() for label in sorted(labels.unique())}
        if arg is not None:
            if arg not in found:
                raise DeeprecError(f"groups: no age-gender group {arg!r}; groups: {', '.join(found)}")
            return {arg: found[arg]}
        return found
    if kind == "kmeans":
        from sklearn.cluster import KMeans

        ratings = dataset.ratings
        users = IdMap.fit(ratings.users[split.train])
        items = IdMap.fit(ratings.items[split.train])
        matrix = sp.csr_matrix(
            (ratings.values[split.train], (users.transform(ratings.users[split.train]), items.transform(ratings.items[split.train]))),
            shape=(len(users), len(items)),
        )
        if matrix.shape[0] < arg:
            raise DeeprecError(f"groups: kmeans:{arg} needs at least {arg} users, the training data has {matrix.shape[0]}")
        clusters = KMeans(n_clusters=arg, random_state=seed, n_init=3).fit_predict(matrix)
        return {f"cluster-{c + 1}": users.ids[clusters == c] for c in range(arg)}
    raise DeeprecError("groups: none has no groups")
