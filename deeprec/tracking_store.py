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

import logging
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


def shown_uri(uri: str) -> str:
    """The URI with any password hidden (`postgresql://user:***@host/db`): it goes into messages."""
    parsed = urlparse(uri)
    if not parsed.password:
        return uri
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)).geturl()


def hide_password(text: str, uri: str) -> str:
    """An error message with the URI's password hidden wherever the message quotes the URI (MLflow's
    HTTP errors repeat the whole request URL), as typed or percent-decoded."""
    password = urlparse(uri).password
    if not password:
        return text
    for form in {password, unquote(password)}:
        text = text.replace(f":{form}@", ":***@")
    return text


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
def probe_http_settings() -> Iterator[None]:
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


def tag_project_run_failure(message: str) -> None:
    """Under `mlflow run`, MLflow Projects creates the run before deeprec starts; a command that then
    stops on bad input leaves it FAILED with no reason shown in `mlflow ui`. Give it the `failure`
    tag a run that deeprec ends FAILED has (unless it has one already). Best effort: the store
    may be what failed."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        from mlflow import MlflowClient

        with probe_http_settings():
            client = MlflowClient()
            if "failure" not in client.get_run(run_id).data.tags:
                client.set_tag(run_id, "failure", message)
    except Exception as exc:  # the error being reported matters more than this tag
        logging.getLogger(__name__).debug("could not tag run %s with its failure: %s", run_id, exc)


def check_store_usable(writes: bool = True) -> str:
    """The tracking URI, once the store has answered a query and the experiment that runs will go to
    (MLFLOW_EXPERIMENT_ID / MLFLOW_EXPERIMENT_NAME, else the default) can take them; a one-line
    error otherwise: an unreachable server, a file that is not a database, a missing database
    driver, a deleted experiment, an artifact folder that cannot be written (which would only
    fail once training had finished; checked when `writes`)."""
    import mlflow

    uri = tracking_uri()
    path = local_store_path(uri)
    if urlparse(uri).scheme == "sqlite" and path is not None and path.exists() and not path.is_file():
        # MLflow would retry opening it for about two minutes before its traceback
        raise DeeprecError(f"the MLflow tracking store {shown_uri(uri)} cannot be used: {path} is not a file")
    try:
        with probe_http_settings():
            mlflow.search_experiments(max_results=1)
            experiment = _target_experiment()
    except DeeprecError:
        raise
    except Exception as exc:  # MlflowException, SQLAlchemy's errors, ModuleNotFoundError for a driver
        raise DeeprecError(f"the MLflow tracking store {shown_uri(uri)} cannot be used: {hide_password(_one_line(exc), uri)}") from None
    if writes and experiment is not None:
        _check_artifact_location(experiment.name, experiment.artifact_location)
    return uri


def _one_line(exc: Exception) -> str:
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return " ".join(str(exc.message).split())  # MLflow's messages span several lines
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _target_experiment():
    """The experiment new runs go to, if it exists yet (a new name is created by the first run)."""
    from mlflow import MlflowClient
    from mlflow.entities import LifecycleStage
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    experiment_id, name = os.environ.get("MLFLOW_EXPERIMENT_ID"), os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if experiment_id:
        try:
            experiment = client.get_experiment(experiment_id)
        except MlflowException:
            raise DeeprecError(f"MLFLOW_EXPERIMENT_ID={experiment_id}: no such experiment in the tracking store {shown_uri(tracking_uri())}") from None
        named = client.get_experiment_by_name(name) if name else None
        if named is not None and named.experiment_id != experiment_id:  # MLflow refuses the pair once the run starts
            raise DeeprecError(f"MLFLOW_EXPERIMENT_ID={experiment_id} and MLFLOW_EXPERIMENT_NAME={name} (id {named.experiment_id}) "
                               "name different experiments; unset one of them")
        if name and named is None:  # MLflow would create the named one and ignore the id
            raise DeeprecError(f"MLFLOW_EXPERIMENT_ID={experiment_id} (experiment {experiment.name!r}) and MLFLOW_EXPERIMENT_NAME={name} "
                               "name different experiments; unset one of them")
    elif name:
        experiment = client.get_experiment_by_name(name)
    else:
        try:
            experiment = client.get_experiment("0")  # MLflow's Default experiment
        except MlflowException:
            return None
    if experiment is not None and experiment.lifecycle_stage == LifecycleStage.DELETED:
        raise DeeprecError(
            f"experiment {experiment.name!r} (id {experiment.experiment_id}) is deleted in {shown_uri(tracking_uri())}; restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` or choose another experiment"
        )
    return experiment


def _check_artifact_location(experiment_name: str, location: str) -> None:
    """A local artifact folder must be a folder, or creatable in a writable one. Nothing is created."""
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file") and not (len(parsed.scheme) == 1 and os.name == "nt"):
        return  # s3://, mlflow-artifacts:/ and the like: the server's business
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else location)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return
    raise DeeprecError(f"experiment {experiment_name!r} keeps its artifacts in {location}, where none can be written: {problem}")


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
        raise DeeprecError(f"no run {run_id!r} in the tracking store {shown_uri(mlflow.get_tracking_uri())}") from None
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
    elif "folds" in run.data.params:  # a cross-validation, also as a sweep's row (kind sweep-run)
        reason = "it is a cross-validation run; recommenders come from `deeprec train` runs and sweep rows of one training run"
    elif tags.get("deeprec.kind", "sweep-run") != "sweep-run":
        reason = f"it is a {tags['deeprec.kind']} run; recommenders come from `deeprec train` runs and sweep rows"
    elif run.info.status != "FINISHED":
        reason = f"it ended {run.info.status} before one was logged"
    else:
        reason = "none was logged"
    raise DeeprecError(f"run {run_id} has no recommender: {reason}")
