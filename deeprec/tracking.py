"""MLflow tracking for training runs (one run, a cross-validation, a refit).

A run gets: params = every config field (same names as MLproject); tags for dataset, digest,
split, seed and package version; the dataset as an MLflow input; per-epoch metrics with
step=epoch; final test metrics and baselines; learning-curve PNGs, the history CSV and the
resolved config; the Keras model (plain layers, reloads without custom objects) and a pyfunc
recommender. A NaN loss ends the run FAILED, Ctrl-C ends it KILLED, with what was logged kept.
Where runs go is MLflow's business: MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME are honoured.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure  # Figure, not pyplot: files only, never a window or a global backend
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.types import ColSpec, Schema

from deeprec import __version__, cv, datasets, experiment, interrupts, preparation, serve
from deeprec.config import TrainConfig, format_param
from deeprec.models import untie
from deeprec.splits import Split
from deeprec.train import TrainingDiverged, model_inputs

log = logging.getLogger(__name__)

CURVES = (("rmse", ("train_rmse", "valid_rmse"), "RMSE (per rating, clipped)"), ("loss", ("train_loss",), "training loss (masked MSE + L2)"))


@dataclass(frozen=True)
class RunResult:
    run_id: str
    metrics: dict[str, float]
    history: list[dict]


def log_new_params(params: dict) -> None:
    """Log the params the active run does not have yet. Under `mlflow run` the -P values (and the
    entry point's defaults) are already logged, as the user typed them (lr=1e-3, ensemble=true);
    MLflow forbids logging a param again with another value, so only the rest are added."""
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})


def log_config(cfg: TrainConfig) -> None:
    """Log every config field as a param (those `mlflow run` has not logged already)."""
    log_new_params(cfg.to_params())


RATINGS_SCHEMA = Schema([ColSpec("string", "user"), ColSpec("string", "item"), ColSpec("float", "rating")])


class RatingsDataset(MetaDataset):
    """The ratings as MLflow records a dataset input: name, digest, source, schema and size, the
    entry `mlflow.data.from_pandas` makes, without the DataFrame it would need. That frame, with
    the ids as text, took 0.5-1 s and 218 MB on ML-1M at the start of every run, about 20 times
    that on ML-20M; the schema it inferred is RATINGS_SCHEMA (ids are labels)."""

    def __init__(self, source: DatasetSource, name: str, digest: str, n_ratings: int) -> None:
        super().__init__(source, name=name, digest=digest, schema=RATINGS_SCHEMA)
        self.n_ratings = n_ratings

    @property
    def profile(self) -> dict[str, int]:
        return {"num_rows": self.n_ratings, "num_elements": 3 * self.n_ratings}

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def dataset_input(prepared: preparation.Prepared) -> RatingsDataset:
    """The ratings as an MLflow dataset: name, our digest (MD5 of the ratings file), and the
    GroupLens URL as source for registered datasets (the local file for csv: datasets)."""
    ratings, spec = prepared.dataset.ratings, prepared.dataset.spec
    source = HTTPDatasetSource(spec.url) if spec.url else _local_file_source(ratings.source)
    return RatingsDataset(source, name=spec.name, digest=prepared.dataset.digest[:16], n_ratings=len(ratings.values))


def _local_file_source(path: Path) -> DatasetSource:
    """MLflow's source for a local file. It registers one local source class for the "" and one
    for the "file" scheme, both named LocalArtifactDatasetSource, and warns on every local path
    that it "can be interpreted in multiple ways" before taking the last; asking for that one
    directly gives the same source without the warning."""
    local = [source for source in get_registered_sources() if source.__name__ == "LocalArtifactDatasetSource"]
    return resolve_dataset_source(str(path), candidate_sources=local[-1:] or None)


def curve_figures(history: list[dict]) -> dict[str, Figure]:
    frame = pd.DataFrame(history)
    parts = frame.groupby("group") if "group" in frame else [("", frame)]
    figures = {}
    for name, columns, label in CURVES:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for group, part in parts:
            for column in columns:
                if column in part:
                    ax.plot(part["epoch"], part[column], marker="o", markersize=3, label=f"{group} {column}".strip())
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        figures[name] = fig
    return figures


def log_epoch(metrics: dict[str, float], epoch: int) -> None:
    """One epoch's metrics, written with interrupts held back (see deeprec.interrupts)."""
    with interrupts.deferred():
        mlflow.log_metrics(metrics, step=epoch)


def _log_record(record: dict) -> None:
    """An epoch record of the trainer (its "epoch" key is the step)."""
    log_epoch({k: v for k, v in record.items() if k != "epoch"}, record["epoch"])


def log_training_input(dataset: mlflow.data.dataset.Dataset) -> None:
    """`mlflow.log_input(dataset, context="training")`, tried once more when a parallel run
    inserted the same dataset first. MLflow's SQL store looks the dataset up and then inserts it,
    so two sweep workers starting together can both insert it; the second then fails on the
    store's unique key (IntegrityError) and, tried again, finds the first one's row."""
    import sqlalchemy.exc

    try:
        mlflow.log_input(dataset, context="training")
    except MlflowException as exc:
        if not isinstance(exc.__cause__, sqlalchemy.exc.IntegrityError):
            raise
        log.info("dataset %s was logged by a parallel run at the same time; linking to it", dataset.name)
        mlflow.log_input(dataset, context="training")


def log_history(history: list[dict]) -> None:
    for name, fig in curve_figures(history).items():
        mlflow.log_figure(fig, f"curves/{name}.png")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.csv"
        pd.DataFrame(history).to_csv(path, index=False)
        mlflow.log_artifact(str(path))


def log_models(model: keras.Model, prepared: preparation.Prepared, cfg: TrainConfig) -> None:
    """The Keras model (plain layers) with signature and example, and the pyfunc recommender.

    Ctrl-C or SIGTERM waits until both are written (a few seconds): MLflow marks a logged model
    FAILED only on an Exception, so an interrupt inside `log_model` would leave a PENDING model
    without files that `deeprec recommend` then trips over."""
    with interrupts.deferred():
        _log_models(model, prepared, cfg)


def _log_models(model, prepared: preparation.Prepared, cfg: TrainConfig) -> None:
    plain = untie(model, cfg)
    example = model_inputs(prepared.data, np.arange(min(2, prepared.data.train.shape[0])))
    signature = infer_signature(example, np.asarray(plain(example, training=False)))
    # mlflow.keras.log_model(input_example=...) fails in MLflow 3.17: the Keras flavor writes the
    # example before it creates the model folder. Saving into a folder that exists, then logging
    # it, gives the same artifacts (MLmodel, signature, example) under the run's "model" path.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        path.mkdir()
        # Pinned requirements, as the recommender's: MLflow's inference runs a subprocess, which a
        # Ctrl-C from the terminal reaches too, leaving requirements of keras alone.
        mlflow.keras.save_model(plain, str(path), signature=signature, input_example=example, pip_requirements=serve.runtime_requirements())
        mlflow.log_artifacts(str(path), "model")
    serve.log_recommender(plain, prepared, cfg, name="recommender")


def run_tags(cfg: TrainConfig, dataset: datasets.Dataset, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "dataset": cfg.dataset, "dataset_digest": dataset.digest, "split": cfg.split, "seed": str(cfg.seed),
        # the range predictions are clipped to: a csv: file's is inferred from its ratings unless given
        "rating_scale": "{:g},{:g}".format(*dataset.ratings.scale),
        "deeprec_version": __version__, **(extra or {}),
    }


def fold_figure(folds: list[cv.FoldResult]) -> Figure:
    """Validation RMSE per epoch, one line per fold, with each fold's best marked."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for fold in folds:
        epochs = [h["epoch"] for h in fold.history]
        ax.plot(epochs, [h["valid_rmse"] for h in fold.history], label=f"fold {fold.fold + 1}")
        ax.scatter([fold.best_epoch], [fold.best_valid_rmse], s=20)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation RMSE")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def track_cv(
    cfg: TrainConfig,
    folds: int,
    refit: bool = False,
    run_name: str | None = None,
    ensemble: bool = False,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    dataset: datasets.Dataset | None = None,
    prepared_folds: tuple[Split, preparation.FoldSplits] | None = None,
) -> tuple[str, cv.CVResult, dict[str, float]]:
    """One parent run (mean ± std over folds, per-fold metrics with step=fold, a fold plot) and one
    nested run per fold with its per-epoch curves; with `refit`, a nested "refit" run trained on
    all non-test ratings for the CV-chosen epochs and evaluated on the test split once; with
    `ensemble`, the fold models' average scored on the test split (`ensemble_*` on the parent).
    `tags` are added to the parent's (a sweep's row); `parent_run_id` nests it under that run;
    `dataset` is cfg's dataset already loaded (else it is loaded here); `prepared_folds`: its base split
    and folds already made (preparation.check_data), else they are made here."""
    cfg.validate()
    if dataset is None:
        dataset = datasets.load(datasets.get_spec(cfg.dataset))
    base, splits = prepared_folds or preparation.fold_splits(cfg, dataset, folds)
    results: list[cv.FoldResult] = []
    with interruptible_run(run_name=run_name or f"cv {folds} folds", parent_run_id=parent_run_id) as parent:
        log_config(cfg)
        log_new_params({"folds": folds, "refit": format_param(refit), "ensemble": format_param(ensemble)})
        mlflow.set_tags(run_tags(cfg, dataset, {"deeprec.kind": "cv", **(tags or {})}))
        for fold, split in enumerate(splits):
            with interruptible_run(run_name=f"fold {fold + 1}/{folds}", nested=True):
                log_config(cfg)
                mlflow.log_param("fold", fold + 1)
                mlflow.set_tags(run_tags(cfg, dataset, {"deeprec.kind": "cv-fold"}))
                result = cv.run_fold(
                    cfg, dataset, split, fold, ensemble=ensemble,
                    on_epoch=lambda _, record: _log_record(record),
                )
                mlflow.log_metrics({"best_valid_rmse": result.best_valid_rmse, "best_epoch": float(result.best_epoch)})
                log_history(result.history)
            results.append(result)
            mlflow.log_metrics({"fold_valid_rmse": result.best_valid_rmse, "fold_best_epoch": float(result.best_epoch)}, step=fold + 1)
        summary = cv.CVResult(results)
        mlflow.log_metrics(summary.metrics())
        mlflow.log_figure(fold_figure(results), "curves/folds.png")
        test_metrics: dict[str, float] = {}
        if ensemble:
            test_metrics.update(cv.ensemble_metrics(summary, dataset, base.test))
            mlflow.log_metrics(test_metrics)
        if refit:
            _, refit_metrics = tracked_refit(cfg, summary.chosen_epochs, dataset)
            mlflow.log_metrics(refit_metrics)
            test_metrics.update(refit_metrics)
        return parent.info.run_id, summary, test_metrics


@contextmanager
def interruptible_run(**start_run_args: Any) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run(**start_run_args)` as a context that ends the run FINISHED, FAILED on an
    error, or KILLED when Ctrl-C or SIGTERM (`interrupts`) stops it (MLflow's own context would
    end it FAILED). A signal that arrives while the run is being created is held until the run
    exists and raised then, here: raised inside `start_run`, it left a RUNNING run that no handler
    knew of. Inside nested runs, each level ends its own."""
    run = None
    try:
        with interrupts.deferred():
            run = mlflow.start_run(**start_run_args)
        yield run
    except KeyboardInterrupt:
        _end_if_active(run, "KILLED", failure="interrupted by the user")
        raise
    except BaseException:
        _end_if_active(run, "FAILED")
        raise
    _end_if_active(run, "FINISHED")


def _end_if_active(run: mlflow.ActiveRun | None, status: str, failure: str | None = None) -> None:
    active = mlflow.active_run()
    if run is None or active is None or active.info.run_id != run.info.run_id:
        return  # not started, or already ended by the block
    with interrupts.deferred():  # a second Ctrl-C here would leave the run RUNNING
        if failure is not None:
            mlflow.set_tag("failure", failure)
        mlflow.end_run(status)


def tracked_refit(cfg: TrainConfig, epochs: int, dataset: datasets.Dataset, tags: dict[str, str] | None = None) -> tuple[str, dict[str, float]]:
    """A run (nested under the active one, if any): train on all non-test ratings for `epochs`,
    evaluate on the test split once. Returns its run id and test metrics."""
    with interruptible_run(run_name="refit", nested=True) as run:
        refit_cfg = cfg.replace(epochs=epochs, patience=0)
        log_config(refit_cfg)
        mlflow.set_tags(run_tags(cfg, dataset, {"deeprec.kind": "refit", **(tags or {})}))
        outcome = cv.refit(cfg, epochs, dataset, on_epoch=_log_record)
        test = {k: v for k, v in outcome.metrics.items() if k.startswith(("test_", "baseline_", "precision", "recall", "ndcg"))}
        mlflow.log_metrics(outcome.metrics)
        log_history(outcome.history)
        return run.info.run_id, test


def train_tracked(
    cfg: TrainConfig, run_name: str | None = None, tags: dict[str, str] | None = None, nested: bool = False, parent_run_id: str | None = None,
    dataset: datasets.Dataset | None = None, prepared: preparation.Prepared | None = None,
) -> RunResult:
    """Prepare data, train, evaluate and log one run; return its id, final metrics and history.
    `dataset`: cfg's dataset already loaded (else it is loaded here); `prepared`: cfg's data
    already prepared (else it is prepared here)."""
    cfg.validate()
    prepared = prepared or preparation.prepare(cfg, dataset=dataset)
    with interruptible_run(run_name=run_name, nested=nested, parent_run_id=parent_run_id) as run:
        log_config(cfg)
        mlflow.set_tags(run_tags(cfg, prepared.dataset, tags))
        log_training_input(dataset_input(prepared))
        history: list[dict] = []

        def on_epoch(record: dict) -> None:
            history.append(record)
            # Grouped runs train one model per group: each group gets its own curves.
            prefix = f"group_{record['group']}_" if "group" in record else ""
            log_epoch({prefix + k: v for k, v in record.items() if k not in ("epoch", "group")}, record["epoch"])

        try:
            outcome = experiment.run(cfg, prepared, on_epoch=on_epoch)
        except TrainingDiverged as exc:
            mlflow.set_tag("failure", str(exc))
            _log_partial(history)
            mlflow.end_run("FAILED")
            raise
        except KeyboardInterrupt:
            _log_partial(history)  # interruptible_run ends the run KILLED
            raise
        mlflow.log_metrics(outcome.metrics)
        log_history(outcome.history)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(cfg.to_params(), sort_keys=False))
            mlflow.log_artifact(str(path))
        if cfg.groups == "none":
            log_models(outcome.model, prepared, cfg)
        else:
            mlflow.set_tag("deeprec.models", "one model per group; none logged")
        return RunResult(run.info.run_id, outcome.metrics, outcome.history)


def _log_partial(history: list[dict]) -> None:
    if history:
        try:
            log_history(history)
        except Exception:  # the run is ending anyway; never hide the original error
            log.exception("could not log the partial history")


def tracking_summary() -> str:
    """Where the runs go: the tracking URI and the experiment, as the environment names it
    (`mlflow run --experiment-name` passes the experiment's id)."""
    name, experiment_id = os.environ.get("MLFLOW_EXPERIMENT_NAME"), os.environ.get("MLFLOW_EXPERIMENT_ID")
    experiment_text = name if name else f"id {experiment_id}" if experiment_id else "Default"
    return f"tracking URI {mlflow.get_tracking_uri()}, experiment {experiment_text}"
