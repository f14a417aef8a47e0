"""Experiment files (`experiments/*.yaml`) and `deeprec sweep`: every row x seed one MLflow run.

An experiment file is one table or figure of the report:

    name: architectures               # the sweep's name (tag deeprec.sweep)
    title: Deep AutoRec architectures
    metric: test_rmse_user_avg        # the metric the published numbers are (or test_rmse)
    base: {orientation: user, ...}    # config fields shared by every row
    rows:
      - name: "[512,256,512] zero"
        published: 0.856              # or null when nothing was published for the row
        params: {arch: "512,256,512"} # config fields of this row (override base)

The whole file is validated (every row's config) before anything runs. Runs are nested under one
parent run per sweep and tagged deeprec.sweep, deeprec.row, deeprec.seed_index and deeprec.smoke;
running the sweep again skips the (row, seed, smoke) runs that already FINISHED with the row's
current config on the same ratings (the ratings file's MD5: a csv: file edited in place is other
data under the same path), a smoke run only with the same `--epochs`. A run counts for a row only
while its logged params still read back as that config: edit a row (or the base) and its old
runs are ignored, by the sweep and by the report, and the row runs again. `--epochs` overrides
every row's epochs for a quick smoke sweep: those runs are tagged smoke and the report never
averages them with full runs.

A row may be a cross-validation instead of one training run (the accuracy tables' fold ensembles):

      - name: "masked, average of 10 fold models"
        published: 0.831
        params: {noise: mask, ...}
        cv: {folds: 10, ensemble: true}   # folds >= 2; ensemble: false scores the refit alone

Its run is `deeprec cv --folds K --refit [--ensemble]` nested under the sweep's parent (the fold
and refit runs under it): the row's number is the fold models' average on the test split
(`ensemble_test_rmse`, ...) with `ensemble: true`, otherwise the refit's `test_rmse`. It counts
for the row only while its logged folds and ensemble are the row's too, and it is never copied
from another sweep's run.

Several tables share rows (each table of the report starts from the same baseline). A (row, seed)
whose exact config already FINISHED as a full run of any sweep, on the same data (the ratings
file's MD5), is not trained again: that run's params, per-epoch metrics, artifacts and wall times
are copied into a run of this sweep tagged deeprec.reused_from. `--no-reuse` trains it anyway (a
GPU run is not bit-reproducible, so a copy and a retraining can differ in the last digits).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, fields
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TYPE_CHECKING

from deeprec import __version__, datasets, interrupts, preparation
from deeprec.config import ConfigError, TrainConfig, check_cv, check_param_names, format_param, parse_bool, read_yaml_file
from deeprec.errors import DeeprecError

if TYPE_CHECKING:
    from mlflow.entities import Run

log = logging.getLogger(__name__)

METRICS = ("test_rmse_user_avg", "test_rmse")
TAG_SWEEP, TAG_ROW, TAG_SEED, TAG_SMOKE, TAG_KIND = "deeprec.sweep", "deeprec.row", "deeprec.seed_index", "deeprec.smoke", "deeprec.kind"
TAG_REUSED = "deeprec.reused_from"


@dataclass(frozen=True)
class RowCV:
    """A row scored by K-fold cross-validation: refit on all non-test ratings, and with
    `ensemble` the average of the K fold models."""

    folds: int
    ensemble: bool

    def metric_key(self, metric: str) -> str:
        """Where the row's value of `metric` is logged on its run."""
        return f"ensemble_{metric}" if self.ensemble else metric


@dataclass(frozen=True)
class Row:
    name: str
    published: float | None
    params: dict[str, str]
    cv: RowCV | None = None

    def metric_key(self, metric: str) -> str:
        return metric if self.cv is None else self.cv.metric_key(metric)

    @property
    def best_epoch_key(self) -> str:
        return "best_epoch" if self.cv is None else "cv_chosen_epochs"


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    metric: str
    base: dict[str, str]
    rows: tuple[Row, ...]
    path: Path

    def config(self, row: Row, seed_index: int = 0, epochs: int | None = None) -> TrainConfig:
        """The row's config; seed i is the base seed + i; `epochs` overrides (smoke sweeps)."""
        params = {**self.base, **row.params}
        cfg = TrainConfig.from_params(params)
        changes = {"seed": cfg.seed + seed_index}
        if epochs is not None:
            changes["epochs"] = epochs
        return cfg.replace(**changes)


def load_experiment(path: str | Path, check_data: bool = True) -> Experiment:
    """Parse and fully validate an experiment file; errors name the file and the row or key.
    `check_data=False` skips checking that csv:PATH ratings files exist (a report reads runs only)."""
    path = Path(path)
    doc = read_yaml_file(path, "experiment")
    if not isinstance(doc, dict):
        raise DeeprecError(f"{path}: expected a mapping with name, metric, base and rows")
    unknown = sorted(set(doc) - {"name", "title", "metric", "base", "rows", "notes"})
    if unknown:
        raise DeeprecError(f"{path}: unknown key {unknown[0]!r}; expected name, title, metric, base, rows, notes")
    name = _name(path, "name", doc.get("name", path.stem))
    if "'" in name:  # MLflow's search filters quote the sweep's name and have no escape for a quote
        raise DeeprecError(f"{path}: name must not contain a single quote, got {name!r}")
    metric = str(doc.get("metric", "test_rmse_user_avg"))
    if metric not in METRICS:
        raise DeeprecError(f"{path}: metric {metric!r} must be one of {', '.join(METRICS)}")
    base = _string_params(path, "base", doc.get("base") or {})
    try:
        check_param_names(base)  # here, or a typo in the base would be blamed on the first row
    except ConfigError as exc:
        raise DeeprecError(f"{path}: base: {exc}") from None
    rows_doc = doc.get("rows")
    if not isinstance(rows_doc, list) or not rows_doc:
        raise DeeprecError(f"{path}: rows must be a non-empty list")
    rows = []
    for i, item in enumerate(rows_doc, start=1):
        if not isinstance(item, dict) or "name" not in item:
            raise DeeprecError(f"{path}: row {i} needs a name")
        row_name = _name(path, f"row {i}: name", item["name"])
        where = f"row {row_name!r}"
        extra = sorted(set(item) - {"name", "published", "params", "cv"})
        if extra:
            raise DeeprecError(f"{path}: {where}: unknown key {extra[0]!r}; expected name, published, params, cv")
        published = item.get("published")
        # bool is an int in Python: `published: yes` is a typo, not 1.0
        if published is not None and (isinstance(published, bool) or not isinstance(published, (int, float)) or not math.isfinite(published)):
            raise DeeprecError(f"{path}: {where}: published must be a number or null, got {published!r}")
        row_cv = None if item.get("cv") is None else _row_cv(path, where, item["cv"])
        rows.append(Row(row_name, None if published is None else float(published), _string_params(path, where, item.get("params") or {}), row_cv))
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise DeeprecError(f"{path}: row names must be unique; {twice!r} names {names.count(twice)} rows")
    experiment = Experiment(name, _name(path, "title", doc.get("title", name)), metric, base, tuple(rows), path)
    present: set[str] = set()
    for row in rows:
        try:
            cfg = experiment.config(row)
            if row.cv is not None:  # the rule `deeprec cv` applies, so a bad row fails now, not after its parent run
                check_cv(cfg, row.cv.folds)
        except DeeprecError as exc:
            raise DeeprecError(f"{path}: row {row.name!r}: {exc}") from None
        if check_data and cfg.dataset not in present:  # a missing csv:PATH file would only fail once each of its runs starts
            try:
                datasets.check_local_file(datasets.get_spec(cfg.dataset))
            except DeeprecError as exc:
                where = f"row {row.name!r}" if "dataset" in row.params else "base"
                raise DeeprecError(f"{path}: {where}: dataset: {exc}") from None
            present.add(cfg.dataset)
    return experiment


def _name(path: Path, where: str, value: object) -> str:
    """A name or title: YAML reads `name: null` or `name: [a, b]` without complaint, and str() of
    it would name runs "None"."""
    if not isinstance(value, str) or not value.strip():
        raise DeeprecError(f"{path}: {where} must be a non-empty string, got {value!r}")
    return value


def _row_cv(path: Path, where: str, doc: object) -> RowCV:
    if not isinstance(doc, dict):
        raise DeeprecError(f"{path}: {where}: cv must be a mapping like {{folds: 10, ensemble: true}}")
    unknown = sorted(set(doc) - {"folds", "ensemble"})
    if unknown:
        raise DeeprecError(f"{path}: {where}: cv: unknown key {unknown[0]!r}; expected folds, ensemble")
    folds, ensemble = doc.get("folds"), doc.get("ensemble", False)
    # bool is an int in Python: `folds: true` is a typo, not one fold
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise DeeprecError(f"{path}: {where}: cv: folds must be a whole number >= 2, got {folds!r}")
    if not isinstance(ensemble, bool):
        raise DeeprecError(f"{path}: {where}: cv: ensemble must be true or false, got {ensemble!r}")
    return RowCV(folds, ensemble)


def _string_params(path: Path, where: str, params: object) -> dict[str, str]:
    if not isinstance(params, dict):
        raise DeeprecError(f"{path}: {where}: params must be a mapping of config fields")
    return {str(k): "" if v is None else format_param(v) for k, v in params.items()}


@dataclass(frozen=True)
class Job:
    experiment: Experiment  # as validated when the sweep started: an edit to the file meanwhile changes no job
    row: str
    seed_index: int
    epochs: int | None
    parent_run_id: str


_stop: Event | None = None  # in a worker process: set once the sweep is interrupted


def _init_worker(threads: int, stop: Event | None = None) -> None:
    """Size the worker's TensorFlow threads and let the sweep, not the terminal, interrupt it:
    Ctrl-C reaches the sweep, which then sends each worker one SIGTERM (see `_interrupt`)."""
    global _stop
    from deeprec.train import limit_threads  # in the worker, before its first TensorFlow op

    limit_threads(threads)
    _stop = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, interrupts.handle)


def _run_job(job: Job, loaded: dict[str, datasets.Dataset] | None = None) -> str:
    """Train one (row, seed) as a run nested under the sweep's parent; runs in a worker process,
    or in the sweep's own process with `loaded`: the last dataset it loaded, by name, which the
    next rows on the same data share instead of reading and checksumming the file again.
    Returns what the run measured, one line for the sweep's progress log ("" if not started)."""
    from deeprec import tracking

    if _stop is not None and _stop.is_set():  # queued before the interrupt: start nothing new
        return ""
    experiment = job.experiment
    row = next(r for r in experiment.rows if r.name == job.row)
    cfg = experiment.config(row, job.seed_index, job.epochs)
    dataset = None
    if loaded is not None:
        dataset = loaded.get(cfg.dataset)
        if dataset is None:
            loaded.clear()  # one dataset held at a time
            dataset = loaded[cfg.dataset] = datasets.load(datasets.get_spec(cfg.dataset))
    tags = {
        TAG_SWEEP: experiment.name, TAG_ROW: row.name, TAG_SEED: str(job.seed_index),
        TAG_SMOKE: str(job.epochs is not None).lower(), TAG_KIND: "sweep-run",
    }
    started = time.perf_counter()
    run_name = f"{row.name} · seed {cfg.seed}"
    if row.cv is None:
        metrics = tracking.train_tracked(cfg, run_name=run_name, tags=tags, parent_run_id=job.parent_run_id, dataset=dataset).metrics
    else:
        _, result, test = tracking.track_cv(
            cfg, row.cv.folds, refit=True, ensemble=row.cv.ensemble, run_name=run_name, tags=tags, parent_run_id=job.parent_run_id,
            dataset=dataset,
        )
        metrics = {**result.metrics(), **test}
    metric = metrics.get(row.metric_key(experiment.metric), float("nan"))
    best_epoch = metrics.get(row.best_epoch_key, float("nan"))
    return f"{run_name}: {row.metric_key(experiment.metric)} {metric:.4f}, best epoch {best_epoch:.0f}, {(time.perf_counter() - started) / 60:.1f} min"


def _check_rows_data(experiment: Experiment, name: str, dataset: datasets.Dataset, epochs: int | None) -> None:
    """Every row on dataset `name` checked against it before the parent run exists (its split or CV
    folds, side information, user groups), once per distinct need: a row the data cannot serve
    would otherwise fail each of its runs, after TensorFlow has loaded."""
    checked = set()
    for row in experiment.rows:
        cfg = experiment.config(row, 0, epochs)
        folds = None if row.cv is None else row.cv.folds
        need = (cfg.split, folds, cfg.side_info, cfg.groups)
        if cfg.dataset != name or need in checked:
            continue
        try:
            preparation.check_data(cfg, dataset, folds)
        except DeeprecError as exc:
            raise DeeprecError(f"{experiment.path}: row {row.name!r}: {exc}") from None
        checked.add(need)


def run_sweep(path: str | Path, seeds: int = 1, max_parallel: int = 1, epochs: int | None = None, reuse: bool = True) -> dict:
    """Run every (row, seed) not already finished, copying those another sweep already trained
    (unless `reuse` is off or the sweep is a smoke sweep); return counts and the parent run id."""
    import mlflow

    if seeds < 1:
        raise DeeprecError(f"--seeds must be at least 1, got {seeds}")
    if max_parallel < 1:
        raise DeeprecError(f"--max-parallel must be at least 1, got {max_parallel}")
    if epochs is not None and epochs < 1:
        raise DeeprecError(f"--epochs must be at least 1, got {epochs}")
    experiment = load_experiment(path)
    for row in experiment.rows:  # the last seed index must still be a valid seed, before the parent run exists
        try:
            experiment.config(row, seeds - 1, epochs)
        except ConfigError as exc:
            raise DeeprecError(f"{experiment.path}: row {row.name!r} with --seeds {seeds}: {exc}") from None
    smoke = epochs is not None
    # Each dataset downloaded and validated here, once, before the parent run: parallel workers
    # would each fetch the same archive into the same cache folder, and a malformed ratings file
    # would otherwise fail every row, leaving an empty parent run. A sequential sweep keeps the
    # last one read for its first rows (one dataset held at a time).
    loaded: dict[str, datasets.Dataset] = {}
    digests: dict[str, str] = {}  # each ratings file's MD5, which runs to reuse must have been trained on
    for name in dict.fromkeys(experiment.config(row, 0, epochs).dataset for row in experiment.rows):
        loaded.clear()
        loaded[name] = datasets.load(datasets.get_spec(name))
        digests[name] = loaded[name].digest
        _check_rows_data(experiment, name, loaded[name], epochs)
    if max_parallel > 1:
        loaded.clear()  # the workers read their own
    parent_id = _parent_run(experiment)
    done = finished_runs(experiment, epochs, digests)
    jobs = [
        Job(experiment, row.name, s, epochs, parent_id)
        for row in experiment.rows for s in range(seeds) if (row.name, s) not in done
    ]
    log.info("sweep %s: %d row(s) x %d seed(s), %d already finished, %d to run%s",
             experiment.name, len(experiment.rows), seeds, len(experiment.rows) * seeds - len(jobs), len(jobs), " (smoke)" if smoke else "")
    reused = 0
    if reuse and not smoke and jobs:
        left = _reuse_trained(experiment, jobs, parent_id, digests)
        reused, jobs = len(jobs) - len(left), left
    failed: list[str] = []

    def progress(done: int, line: str) -> None:
        if line:  # "" for a job that an interrupt kept from starting
            log.info("sweep %s: %d of %d done: %s", experiment.name, done, len(jobs), line)

    if max_parallel == 1:
        for done, job in enumerate(jobs, 1):
            try:
                progress(done, _run_job(job, loaded))
            except DeeprecError as exc:  # a diverged row fails its own run, the sweep goes on
                log.error("%s seed %d failed: %s", job.row, job.seed_index, exc)
                failed.append(job.row)
    else:
        # spawn: TensorFlow does not survive fork; each worker imports it fresh.
        # Each worker gets cores / P TensorFlow threads: P processes at TF's default (all cores
        # each) oversubscribe the machine and run slower than P x fewer threads.
        from deeprec.train import usable_cores

        threads = max(1, usable_cores() // max_parallel)
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        started_ms = int(time.time() * 1000)
        pool = ProcessPoolExecutor(max_workers=max_parallel, mp_context=context, initializer=_init_worker, initargs=(threads, stop))
        try:
            futures = {pool.submit(_run_job, job): job for job in jobs}
            for done, future in enumerate(as_completed(futures), 1):  # in the order they finish
                job = futures[future]
                try:
                    progress(done, future.result())
                except DeeprecError as exc:
                    log.error("%s seed %d failed: %s", job.row, job.seed_index, exc)
                    failed.append(job.row)
        except BaseException:
            # Ctrl-C, SIGTERM, or a row's unexpected error (not a DeeprecError): stop the other
            # workers too. Left running, they kept the sweep from exiting, since the interpreter
            # waits for the pool's jobs at exit.
            _interrupt(pool, stop, parent_id, started_ms)
            raise
        pool.shutdown()
    mlflow.start_run(run_id=parent_id)
    mlflow.set_tag("deeprec.last_completed", str(len(jobs) - len(failed)))
    if jobs and len(failed) == len(jobs):  # this invocation measured nothing
        mlflow.set_tag("failure", f"all {len(jobs)} run(s) of this invocation failed; see their own failure tags")
        mlflow.end_run("FAILED")
    else:
        if "failure" in mlflow.get_run(parent_id).data.tags:  # an earlier invocation's
            mlflow.MlflowClient().delete_tag(parent_id, "failure")
        mlflow.end_run("FINISHED")
    return {"sweep": experiment.name, "parent_run_id": parent_id, "ran": len(jobs) - len(failed), "reused": reused,
            "failed": len(failed), "skipped": len(experiment.rows) * seeds - len(jobs) - reused, "smoke": smoke}


def _interrupt(pool: ProcessPoolExecutor, stop: Event, parent_id: str, started_ms: int) -> None:
    """Stop a parallel sweep: no queued job starts, and each running one ends as a KILLED run (its
    worker ends it; after a second Ctrl-C, which kills the workers, the sweep does)."""
    stop.set()
    # The pool keeps its worker processes in a private mapping; there is no public way to reach them.
    workers = list((getattr(pool, "_processes", None) or {}).values())
    for process in workers:
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    try:
        # Logged inside the try: a second Ctrl-C right after the line (as soon as a user reads it)
        # escaped before it, leaving the workers running and their runs RUNNING.
        log.info("sweep stopped: waiting for the workers to mark their runs KILLED (Ctrl-C again to stop them at once)")
        pool.shutdown(wait=True, cancel_futures=True)
    except KeyboardInterrupt:
        # A second Ctrl-C or SIGTERM: stop now. Cut short, the shutdown left the pool's threads
        # waiting for workers that no longer answer, and the interpreter hung at exit joining them.
        for process in workers:
            if process.is_alive():
                process.kill()  # the pool's thread then finds them gone and ends, so the exit does not wait
        ended = _end_runs_left_running(parent_id, started_ms)
        log.warning("sweep stopped at once: the workers were killed%s", f"; {ended} run(s) they left RUNNING ended KILLED" if ended else "")
        raise


def _end_runs_left_running(parent_id: str, since_ms: int) -> int:
    """End KILLED, with the reason, the runs under the sweep's parent (rows, and a CV row's fold and
    refit runs) that this invocation started and killed workers left RUNNING; return how many."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    ended, parents = 0, [parent_id]
    try:
        experiment_id = client.get_run(parent_id).info.experiment_id
        while parents:
            query = f"tags.`mlflow.parentRunId` = '{parents.pop()}' and attributes.start_time >= {since_ms}"
            for run in client.search_runs([experiment_id], query):
                parents.append(run.info.run_id)
                if run.info.status == "RUNNING":
                    client.set_tag(run.info.run_id, "failure", "interrupted by the user (the sweep was stopped at once)")
                    client.set_terminated(run.info.run_id, "KILLED")
                    ended += 1
    except MlflowException as exc:  # stopping matters more than these statuses
        log.warning("could not end the runs the killed workers left RUNNING: %s", exc)
    return ended


def _parent_run(experiment: Experiment) -> str:
    """The sweep's parent run, created on first use and found again by its tags afterwards."""
    import mlflow

    runs = mlflow.search_runs(filter_string=f"tags.`{TAG_SWEEP}` = '{experiment.name}' and tags.`{TAG_KIND}` = 'sweep'", output_format="list")
    if runs:
        # The file as this invocation read it (overwriting the earlier copy): an edited row's new
        # runs and report sit beside the file that made them.
        mlflow.MlflowClient().log_artifact(runs[0].info.run_id, str(experiment.path))
        return runs[0].info.run_id
    with mlflow.start_run(run_name=f"sweep {experiment.name}", tags={TAG_SWEEP: experiment.name, TAG_KIND: "sweep"}) as run:
        mlflow.log_artifact(str(experiment.path))
        return run.info.run_id


def finished_runs(experiment: Experiment, epochs: int | None, digests: dict[str, str]) -> set[tuple[str, int]]:
    """(row, seed index) pairs with a FINISHED run of this sweep that trained the row's current
    config: a full run, or with `epochs` a smoke run of that many epochs; on the ratings each
    dataset has now (`digests`: the ratings files' MD5). A csv: file edited in place is not the
    data its runs measured, though its path, all the config holds, is the same."""
    import mlflow

    smoke = epochs is not None
    runs = mlflow.search_runs(
        filter_string=f"tags.`{TAG_SWEEP}` = '{experiment.name}' and tags.`{TAG_KIND}` = 'sweep-run' and tags.`{TAG_SMOKE}` = '{str(smoke).lower()}' and attributes.status = 'FINISHED'",
        output_format="list",
    )
    rows = {row.name: row for row in experiment.rows}
    done = set()
    for run in runs:
        row = rows.get(run.data.tags.get(TAG_ROW, ""))
        if row is None or not trained_row_config(run, experiment, row, epochs):
            continue
        if run.data.tags.get("dataset_digest") == digests.get(experiment.config(row, 0, epochs).dataset):
            done.add((row.name, int(run.data.tags[TAG_SEED])))
    return done


def logged_config(run: Run) -> TrainConfig | None:
    """A tracked run's params read back as a config, so "1e-3" and "0.001" agree; a field the run
    predates takes its default, so adding a config field does not orphan older runs."""
    known = {f.name for f in fields(TrainConfig)}
    try:
        return TrainConfig.from_params({k: v for k, v in run.data.params.items() if k in known})
    except (ConfigError, ValueError):
        return None


def logged_cv(run: Run) -> RowCV | None:
    """The folds and ensemble a tracked cross-validation run logged; None for a training run."""
    params = run.data.params
    if "folds" not in params:
        return None
    # As deeprec logged them ("5", "True") or as `mlflow run -e cv` did ("5.0", "true") from -P values.
    try:
        return RowCV(int(float(params["folds"])), parse_bool(params.get("ensemble", "false")))
    except ValueError:
        return None


def trained_row_config(run: Run, experiment: Experiment, row: Row, smoke_epochs: int | None = None) -> bool:
    """Whether a tracked sweep run trained `row`'s current config for its seed index, the
    same way (one training run, or the row's cross-validation). A smoke run's epochs are the
    sweep's `--epochs`: `smoke_epochs` when given, else any."""
    logged = logged_config(run)
    if logged is None or logged_cv(run) != row.cv:
        return False
    smoke = run.data.tags.get(TAG_SMOKE) == "true"
    try:
        expected = experiment.config(row, int(run.data.tags.get(TAG_SEED, "0")), (smoke_epochs or logged.epochs) if smoke else None)
    except (ConfigError, ValueError):
        return False
    return logged == expected


def _reuse_trained(experiment: Experiment, jobs: list[Job], parent_id: str, digests: dict[str, str]) -> list[Job]:
    """Copy every job's run that a full run of any sweep already trained (same config and seed,
    same ratings file, same deeprec version); return the jobs still to train. `digests`: each
    dataset's ratings MD5, as read before the parent run."""
    import mlflow

    runs = mlflow.search_runs(
        filter_string=f"tags.`{TAG_KIND}` = 'sweep-run' and tags.`{TAG_SMOKE}` = 'false' and attributes.status = 'FINISHED'",
        output_format="list",
    )
    # training runs only: a cross-validation run logs the same config but measured something else
    trained = [(config, run) for run in runs if logged_cv(run) is None and (config := logged_config(run)) is not None]
    rows = {row.name: row for row in experiment.rows}
    left = []
    for job in jobs:
        if rows[job.row].cv is not None:  # copies are of single runs, not of a CV run with its nested ones
            left.append(job)
            continue
        cfg = experiment.config(rows[job.row], job.seed_index)
        source = next(
            (run for config, run in trained if config == cfg and run.data.tags.get("dataset_digest") == digests[cfg.dataset]
             and run.data.tags.get("deeprec_version") == __version__),  # another release may evaluate or train differently
            None,
        )
        if source is None:
            left.append(job)
            continue
        _copy_run(source, experiment, job, parent_id)
        log.info("%s seed %d: reused run %s (sweep %s, row %s)", job.row, job.seed_index, source.info.run_id,
                 source.data.tags.get(TAG_SWEEP), source.data.tags.get(TAG_ROW))
    return left


def _copy_run(source: Run, experiment: Experiment, job: Job, parent_id: str) -> str:
    """A FINISHED run of this sweep with the source run's params, metric histories, dataset input,
    artifacts, wall times and source tags (the code that measured it: `mlflow.source.*`). Its
    logged models (the recommender) stay with the source run, which the run's note and its
    `deeprec.reused_from` tag name; the artifacts copied include the Keras model's files."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient()
    source_id = source.info.run_id
    trained_by = source.data.tags.get(TAG_REUSED, source_id)  # a copy's source may be a copy itself: name the run that trained
    name = f"{job.row} · seed {source.data.params.get('seed', job.seed_index)}"
    tags = {k: v for k, v in source.data.tags.items() if not k.startswith("mlflow.") or k.startswith("mlflow.source.") or k == "mlflow.user"}
    tags.update({
        TAG_SWEEP: experiment.name, TAG_ROW: job.row, TAG_SEED: str(job.seed_index), TAG_SMOKE: "false", TAG_KIND: "sweep-run",
        TAG_REUSED: trained_by, "mlflow.parentRunId": parent_id,
        "mlflow.note.content": f"Copied from run {source_id} (sweep {source.data.tags.get(TAG_SWEEP)}, row "
                               f"{source.data.tags.get(TAG_ROW)}): the same config and seed on the same data. Its recommender is logged "
                               f"in run {trained_by}, which trained it.",
    })
    run = client.create_run(client.get_run(parent_id).info.experiment_id, start_time=source.info.start_time, tags=tags, run_name=name)
    run_id = run.info.run_id
    try:
        params = [Param(k, v) for k, v in source.data.params.items()]
        metrics = [point for key in source.data.metrics for point in client.get_metric_history(source_id, key)]
        for start in range(0, max(len(params), len(metrics)), 100):  # MLflow's log_batch takes at most 100 params
            client.log_batch(run_id, metrics=metrics[start : start + 100], params=params[start : start + 100])
        if source.inputs is not None and source.inputs.dataset_inputs:
            client.log_inputs(run_id, datasets=source.inputs.dataset_inputs)
        with tempfile.TemporaryDirectory() as tmp:
            if client.list_artifacts(source_id):
                client.log_artifacts(run_id, mlflow.artifacts.download_artifacts(run_id=source_id, dst_path=tmp))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED", end_time=source.info.end_time)
    return run_id
