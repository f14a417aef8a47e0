"""Small generated datasets in the real MovieLens file formats (never the real data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deeprec.features import ML1M_AGE_GROUPS, ML1M_GENRES, ML100K_GENRES, ML100K_OCCUPATIONS

SHARED_ML1M = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m"


def synthetic_ratings(n_users: int = 40, n_items: int = 30, per_user: tuple[int, int] = (12, 25), seed: int = 0) -> np.ndarray:
    """Rows of (user, item, rating, timestamp): unique pairs, ids starting at 1, ratings 1..5."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, n_users + 1):
        items = rng.choice(np.arange(1, n_items + 1), size=rng.integers(*per_user), replace=False)
        for item in items:
            rows.append((user, int(item), int(rng.integers(1, 6)), 978300000 + len(rows)))
    return np.array(rows, dtype=np.int64)


def write_lines(path: Path, lines: list[str], encoding: str = "latin-1") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding=encoding)
    return path


def write_ml1m(folder: Path, rows: np.ndarray) -> Path:
    """ratings.dat, users.dat and movies.dat in ML-1M's `::` format."""
    write_lines(folder / "ratings.dat", [f"{u}::{i}::{r}::{t}" for u, i, r, t in rows])
    users = sorted(set(rows[:, 0].tolist()))
    write_lines(folder / "users.dat", [
        f"{u}::{'FM'[u % 2]}::{ML1M_AGE_GROUPS[u % 7]}::{u % 21}::{10000 + u}" for u in users
    ])
    items = sorted(set(rows[:, 1].tolist()))
    write_lines(folder / "movies.dat", [
        f"{i}::Movie {i}: The Sequel (19{50 + i % 50})::{ML1M_GENRES[i % 18]}|{ML1M_GENRES[(i + 5) % 18]}" for i in items
    ])
    return folder


def write_ml100k(folder: Path, rows: np.ndarray) -> Path:
    """u.data (tab-separated), u.user and u.item (pipe-separated) in ML-100K's format."""
    write_lines(folder / "u.data", [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in rows])
    users = sorted(set(rows[:, 0].tolist()))
    write_lines(folder / "u.user", [
        f"{u}|{15 + u}|{'FM'[u % 2]}|{ML100K_OCCUPATIONS[u % 21]}|{10000 + u}" for u in users
    ])
    items = sorted(set(rows[:, 1].tolist()))
    lines = []
    for i in items:
        flags = ["1" if g == i % len(ML100K_GENRES) else "0" for g in range(len(ML100K_GENRES))]
        date = "" if i == items[0] else f"01-Jan-19{60 + i % 40}"
        lines.append("|".join([str(i), f"Movie {i} (19{60 + i % 40})", date, "", f"http://example.invalid/{i}", *flags]))
    write_lines(folder / "u.item", lines)
    return folder


def write_ratings_csv(path: Path, rows: np.ndarray, header: bool = True) -> Path:
    """ratings.csv as in ml-20m / ml-latest-small (with half stars when asked)."""
    head = ["userId,movieId,rating,timestamp"] if header else []
    return write_lines(path, head + [f"{u},{i},{r},{t}" for u, i, r, t in rows], encoding="utf-8")


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private sqlite MLflow store, DEEPREC_DATA_DIR=tmp_path/data and cwd=tmp_path (so MLflow's
    default ./mlruns lands there too). Returns tmp_path."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("DEEPREC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment exports it; undone at teardown
    mlflow.set_experiment("Default")  # forget the previous test's experiment id (a different store)
    return tmp_path


@pytest.fixture
def rows() -> np.ndarray:
    return synthetic_ratings()


@pytest.fixture
def ml1m_dir(tmp_path: Path, rows: np.ndarray) -> Path:
    return write_ml1m(tmp_path / "ml-1m", rows)


@pytest.fixture
def ml100k_dir(tmp_path: Path, rows: np.ndarray) -> Path:
    return write_ml100k(tmp_path / "ml-100k", rows)
