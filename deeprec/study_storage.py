"""Where Optuna studies live: the default storage, opening one, a study's default name and setup,
and finding an existing or finished study.

Kept apart from `deeprec.tune` because it needs Optuna and SQLAlchemy only, not TensorFlow:
`deeprec replay-pruning` and `deeprec tune` with a wrong storage or study name, or a study resumed
with other options than it was created with, answer in a second or two, in one line, before the
tuning code (and TensorFlow) is imported.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial

from deeprec.config import TrainConfig
from deeprec.datasets import parse_csv_name
from deeprec.errors import DeeprecError
from deeprec.search_space import SearchSpace
from deeprec.tracking_store import shown_uri
from deeprec.tune_options import DEFAULT_GRACE_PERIOD, DEFAULT_HEARTBEAT_INTERVAL

log = logging.getLogger(__name__)

SETUP_ATTR = "deeprec_setup"  # study user attr: what `deeprec tune` created the study with (checked on resume)
SQLITE_BUSY_TIMEOUT_S = 60  # several worker processes write to one SQLite file
SCHEMA_RACE_ATTEMPTS = 5
SCHEMA_RACE_SIGNS = ("already exists", "unique constraint failed", "duplicate key", "duplicate entry")


@contextmanager
def using_experimental_optuna_features() -> Iterator[None]:
    """Around the calls that use Optuna features marked experimental, chosen on purpose: heartbeats
    (how stale trials of killed workers are failed) and the matplotlib plots logged per study.
    Optuna's ExperimentalWarning would otherwise print on every `deeprec tune`, once per worker,
    about an interface change no user of deeprec can act on. Other warnings still show."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        yield


def default_storage(tracking_uri: str | None = None) -> str:
    """`optuna.db` beside an SQLite MLflow store, else in the working directory (absolute URL)."""
    if tracking_uri is None:
        import mlflow

        tracking_uri = mlflow.get_tracking_uri()
    folder = Path(".")
    if tracking_uri.startswith("sqlite:///"):
        db_path = tracking_uri[len("sqlite:///"):].split("?")[0]
        if db_path and db_path != ":memory:":
            folder = Path(db_path).parent
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def display_storage(url: str) -> str:
    """The URL with any password hidden (it is logged and printed)."""
    return shown_uri(url)


# What to install when SQLAlchemy cannot import a URL's driver, by dialect.
DRIVER_HINTS = {
    "postgresql": "e.g. pip install psycopg2-binary, with postgresql+psycopg2:// URLs",
    "mysql": "e.g. pip install PyMySQL, with mysql+pymysql:// URLs",
    "mariadb": "e.g. pip install PyMySQL, with mariadb+pymysql:// URLs",
}


def open_storage(
    url: str,
    heartbeat_interval: int | None = DEFAULT_HEARTBEAT_INTERVAL,
    grace_period: int | None = DEFAULT_GRACE_PERIOD,
    on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats for a SQLAlchemy URL, a journal storage for `journal:PATH`.
    `heartbeat_interval=None` opens it without heartbeats, for reading a study that no trial of
    this process will run in."""
    shown = display_storage(url)
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if not path.parent.is_dir():
            raise DeeprecError(f"storage {shown}: folder {path.parent} does not exist")
        if path.is_dir() or not path.name:
            raise DeeprecError(f"storage {shown}: {path} is a folder; journal: needs a file path (it is created if missing)")
        try:
            storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
            storage.get_all_studies()  # replays the journal now, so that a file that is not one fails here
        # What Optuna's replay raises on a file that is not a journal: JSON or UTF-8 errors
        # (ValueError), an unknown operation (AssertionError), a record without its fields.
        except (ValueError, AssertionError, KeyError, TypeError) as exc:
            raise DeeprecError(f"storage {shown}: {path} is not an Optuna journal file ({type(exc).__name__}: {exc})") from None
        except OSError as exc:
            raise DeeprecError(f"storage {shown}: {path}: {exc.strerror or exc}") from None
        return storage
    try:
        dialect = sqlalchemy.engine.make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        raise DeeprecError(f"storage {shown}: not a SQLAlchemy URL (sqlite:///PATH, postgresql+psycopg2://USER@HOST/DB) or journal:PATH") from None
    engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}} if dialect == "sqlite" else {"pool_pre_ping": True}
    for attempt in range(1, SCHEMA_RACE_ATTEMPTS + 1):
        try:
            with using_experimental_optuna_features():
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                    heartbeat_stale_trial_callback=on_stale,
                )
        except ImportError as exc:
            hint = DRIVER_HINTS.get(dialect, "install the driver the URL names")
            raise DeeprecError(f"storage {shown}: database driver missing ({exc}); {hint}") from None
        except sqlalchemy.exc.SQLAlchemyError as exc:
            message = " ".join(str(exc.orig if getattr(exc, "orig", None) else exc).split())
            # Workers (or machines) that start together on a new database race to create Optuna's
            # tables; the losers see "already exists" / a duplicate key. The tables are there by
            # then, so opening again succeeds.
            if attempt < SCHEMA_RACE_ATTEMPTS and any(sign in message.lower() for sign in SCHEMA_RACE_SIGNS):
                log.info("storage %s: another process is creating the tables; retrying", shown)
                time.sleep(0.5 * attempt)
                continue
            raise DeeprecError(f"storage {shown}: {message[:300]}") from None
    raise AssertionError("unreachable")


def default_study_name(cfg: TrainConfig, space: SearchSpace) -> str:
    """deeprec-<dataset>-<orientation>-<arch>, plus the space file's name when it is not the default."""
    dataset = cfg.dataset if not cfg.dataset.startswith("csv:") else "csv-" + Path(parse_csv_name(cfg.dataset)[0]).stem
    orientation = "any" if "orientation" in space.params else cfg.orientation
    arch = "any" if "arch" in space.params else cfg.arch.replace(",", "-")
    name = f"deeprec-{dataset}-{orientation}-{arch}"
    return name if space.is_default else f"{name}-{space.name}"


def require_existing_study(storage: optuna.storages.BaseStorage, study_name: str, shown_storage: str) -> None:
    """`--n-trials 0` re-logs and refits an existing study; creating an empty one would only fix
    its setup early."""
    if study_name not in optuna.get_all_study_names(storage):
        raise DeeprecError(f"n-trials: 0 adds no trial to an existing study, and there is no study {study_name!r} in {shown_storage}")


def study_setup(base: TrainConfig, folds: int, space: SearchSpace) -> dict[str, Any]:
    """What a study is created with and must be resumed with: its base config, folds and search
    space, as they read back from the storage (JSON)."""
    return json.loads(json.dumps({"config": base.to_params(), "folds": folds, "space": space.to_dict()["params"]}))


def check_setup(study: optuna.Study, setup: dict[str, Any], record: bool = False) -> None:
    """A resumed study must have been created with the same config, folds and space: trials of
    different setups are not comparable, and the sampler would learn from both. `record`: a study
    that has no setup yet (a new one) is given this one."""
    stored = study.user_attrs.get(SETUP_ATTR)
    if stored is None:
        if record:
            study.set_user_attr(SETUP_ATTR, setup)
        return
    hint = f"resume study {study.study_name!r} with the options it was created with, or choose another --study-name"
    if stored.get("folds") != setup["folds"]:
        raise DeeprecError(f"folds: the study was created with {stored.get('folds')}, this command has {setup['folds']}; {hint}")
    old_config = stored.get("config", {})
    for key, value in setup["config"].items():
        if old_config.get(key) != value:
            raise DeeprecError(f"{key}: the study was created with {old_config.get(key)}, this command has {value}; {hint}")
    if stored.get("space") != setup["space"]:
        raise DeeprecError(f"search space: the study was created with {json.dumps(stored.get('space'))}, this command has {json.dumps(setup['space'])}; {hint}")


def check_existing_setup(storage: optuna.storages.BaseStorage, study_name: str, setup: dict[str, Any]) -> None:
    """`check_setup` for the study of that name, if the storage has one; nothing is written."""
    if study_name in optuna.get_all_study_names(storage):
        check_setup(optuna.load_study(study_name=study_name, storage=storage), setup)


def load_finished_study(study_name: str, storage_url: str) -> optuna.Study:
    """A study that already exists, without creating a storage or a study that is not there."""
    shown = display_storage(storage_url)
    if storage_url.startswith("sqlite:///") and not Path(storage_url[len("sqlite:///"):]).is_file():
        raise DeeprecError(f"storage {shown}: no such file")
    if storage_url.startswith("journal:") and not Path(storage_url[len("journal:"):]).expanduser().is_file():
        raise DeeprecError(f"storage {shown}: no such file")
    storage = open_storage(storage_url, heartbeat_interval=None, grace_period=None)  # read only: no trial runs here
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if study_name not in names:
        raise DeeprecError(f"study {study_name!r} not in {shown}; it has: {', '.join(sorted(names)) or 'no studies'}")
    return optuna.load_study(study_name=study_name, storage=storage)
