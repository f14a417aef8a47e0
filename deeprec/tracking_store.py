"""Checks of the MLflow tracking store that commands run before any expensive work.

A command that trains should fail in seconds, in one line naming the store, when the store cannot
take runs (an MLflow server that is down, a file store MLflow 3 refuses), not after the data is
loaded and a model is compiled. A command that only reads runs should not create a store where
there is none: MLflow's default SQLite store is created by the first query, so `deeprec report`
in the wrong folder would otherwise leave an empty `mlflow.db` behind and report "no runs". And
`deeprec recommend` names a run that has no recommender before it loads one (and TensorFlow).
Imports MLflow only (no TensorFlow), so the checks cost about a second.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

from deeprec.errors import DeeprecError

# How long the reachability probe may wait for an HTTP store. MLflow's own defaults (several
# retries with back-off, a 120 s timeout) suit a long run's logging, not a check that a server is
# up; the user's own settings of these variables win.
PROBE_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def local_store_path(uri: str) -> Path | None:
    """The file or folder of a local store (`sqlite:///PATH`, `file:PATH`, a bare path), else None."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        # sqlite:///relative.db -> path "/relative.db"; sqlite:////absolute.db -> "//absolute.db"
        path = unquote(parsed.path)
        return Path(path[1:]) if path.startswith("/") else Path(path)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):  # a bare path (or a Windows drive)
        return Path(uri)
    return None


def require_existing_store() -> str:
    """The tracking URI, for commands that only read runs; refuse a local store that does not exist."""
    uri = tracking_uri()
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise DeeprecError(
            f"no MLflow tracking store at {uri}; run this from the folder where the runs were made "
            "or set MLFLOW_TRACKING_URI to their store"
        )
    return uri


@contextmanager
def _probe_http_settings() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in PROBE_HTTP_SETTINGS}
    for name, value in PROBE_HTTP_SETTINGS.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_store_usable() -> str:
    """The tracking URI, once one query has shown the store answers; a one-line error otherwise."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    try:
        with _probe_http_settings():
            mlflow.search_experiments(max_results=1)
    except MlflowException as exc:
        message = " ".join(str(exc.message).split())  # one line: MLflow's messages span several
        raise DeeprecError(f"the MLflow tracking store {uri} cannot be used: {message}") from None
    return uri


def recommender_uri(run_id: str) -> str:
    """The model URI of a run's recommender, or a one-line DeeprecError saying why it has none
    (MLflow's own message is a failed artifact download)."""
    import mlflow
    from mlflow.entities import LoggedModelStatus
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise DeeprecError(f"no run {run_id!r} in the tracking store {mlflow.get_tracking_uri()}") from None
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = 'recommender'"
    )
    if any(model.status == LoggedModelStatus.READY for model in models):
        return f"runs:/{run_id}/recommender"
    tags = run.data.tags
    if "deeprec.reused_from" in tags:  # a sweep's copy of another sweep's run (sweep.TAG_REUSED)
        reason = f"it is a copy of run {tags['deeprec.reused_from']}, which holds it; use --run-id {tags['deeprec.reused_from']}"
    elif "deeprec.models" in tags:
        reason = tags["deeprec.models"]
    elif "deeprec.kind" in tags:
        reason = f"it is a {tags['deeprec.kind']} run; recommenders come from `deeprec train` runs and sweep rows"
    elif run.info.status != "FINISHED":
        reason = f"it ended {run.info.status} before one was logged"
    else:
        reason = "none was logged"
    raise DeeprecError(f"run {run_id} has no recommender: {reason}")
