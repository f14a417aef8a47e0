"""Optuna hyper-parameter tuning over cross-validation folds, tracked in MLflow (`deeprec tune`).

Search space. By default `l2` (log-uniform 1e-6..1e-2), `dropout` (uniform 0..0.9) and `lr`
(log-uniform 1e-4..1e-2), as written out in experiments/search_space.yaml. A `--space` YAML file
is merged over that default: its `params` add parameters or replace their specs (`name: null`
drops one, which then keeps its command-line value), its `fixed` mapping sets config fields on top
of the command-line options (a fixed field is not searched), unless the command line gives a field a
value other than its default, which then wins. dataset, split, seed and epochs are
never searched: the folds, the test split and the pruning steps must be the same for every trial.
The whole file is validated before any training: an unknown field, a malformed spec, or a value
that no combination of the other searched values makes valid is one DeeprecError naming the file
and the key. A trial's config is the base config (command line + `fixed`) with the trial's values,
parsed and validated by TrainConfig; a sampled combination that is still invalid (say
side_info=user with orientation=item) ends that trial FAILED with the reason, without training.

Objective. The mean over `folds` folds of each fold's best validation RMSE (per rating), exactly as
`deeprec cv` computes it (preparation.fold_splits + cv.run_fold): the folds partition the non-test ratings
and the test split is never touched while tuning. Lower is better.

Pruning (`median`, `hyperband` or `none`). Fold k (from 0) owns the intermediate steps
k*(epochs+1)+1 .. (k+1)*(epochs+1): epoch e of the fold reports its validation RMSE at step
k*(epochs+1)+e, and once the fold is done, the running mean of the completed folds' best RMSE is
reported at the fold's last step (k+1)*(epochs+1), the fold-level check. This is the plain
fold*epochs+epoch numbering with one step per fold kept for the fold check, so that steps only
grow (Optuna's pruners look at a trial's last step) and each step means the same thing in every
trial. After each report `trial.should_prune()` is asked, except after the last fold (the trial is
complete by then). The median pruner's startup trials and warm-up steps are options; Hyperband uses
the whole trial (folds*(epochs+1) steps) as its maximum resource.

`every="fold"` (`--prune-every fold`) reports and checks only the fold-level steps (the per-epoch
curves still go to MLflow). Early epochs rank configurations by how fast they learn, not by where
they end: in a 5-fold study of I-AutoRec on ML-1M (bench/README.md, "Accuracy beyond the
papers"), a leave-one-out replay of the recorded curves (`deeprec replay-pruning`) has the per-epoch median
rule with 5 warm-up steps pruning the best of six trials at epoch 25, where checking after each
fold kept the best three and pruned the worst three. With fold checks only, the median pruner's
warm-up steps do not apply (a whole fold is the warm-up) and Hyperband's minimum resource is one
fold (epochs+1 steps).

States. Optuna's COMPLETE / PRUNED / FAIL are the MLflow trial run's tag `trial_state` =
complete / pruned / failed and its status FINISHED / KILLED / FAILED. A trial fails on an invalid
combination, a diverged training (NaN loss) or a worker that stopped sending heartbeats. Failed
trials do not count towards --n-trials; once this invocation has as many failed trials as
--n-trials asked for (at least 5), its workers stop instead of sampling forever.

MLflow. One parent run per study (tags `optuna_study=<name>`, `deeprec.kind=tune`), found again by
those tags in the current experiment when the study is resumed (resuming a study whose parent is
in another experiment is refused, naming it); params = the base config
(`searched` for the fields the trials sample), `folds`, `optuna_storage` (password hidden) and
`search_space`, logged once. Under `mlflow run`, whose -P values are logged before deeprec starts
and cannot change, the tag `params_overridden` holds the values the study uses where they differ
(the space's fixed fields, `searched`). Tags `pruner` and `n_workers` are this invocation's. One
nested run per trial (tag `mlflow.parentRunId` = the parent, also from worker processes) with the
trial's full config, `trial_number`, per-epoch validation curves (step = the pruning step), per-fold
metrics (step = fold, from 1), the CV metrics, and tags `worker_pid` / `worker_host` and `pruner`
(the rule it ran under). At the end of every
invocation the parent gets metrics `best_value`, `trials_complete`, `trials_pruned`,
`trials_failed`, `wall_seconds` (this invocation), `wall_seconds_total` and `trial_seconds_total`
(all with step = finished trials so far, so resuming extends their history instead of colliding),
tags `best_trial_number` and `best_params`, a `best_params.json` artifact (overwritten), and
Optuna's optimization history, parallel coordinate and parameter importance plots under
`optuna/` (importances need two complete trials; a skipped plot leaves a `note.<plot>` tag).
Unless refit is off, the best trial's config is then retrained on all non-test ratings for its
CV-chosen epochs and evaluated on the test split once, as its own top-level run tagged
`optuna_study`, `study_parent_run_id` and `best_trial_number`; its test metrics are copied to the
parent as `refit_<metric>`, with the tag `refit_trial_number`. A study resumed without a refit
whose best trial changed tags its parent `refit_stale` (those metrics are an earlier trial's).

Storage. Default: an SQLite Optuna database `optuna.db` beside the MLflow store when the tracking
URI is `sqlite:///…/x.db`, else `./optuna.db`. Any SQLAlchemy URL works
(`postgresql+psycopg2://user:pass@host/db`, `mysql+pymysql://…`), and `journal:PATH` is Optuna's
journal file backend. RDB storages record a heartbeat every `heartbeat_interval` seconds for each
running trial; a RUNNING trial whose heartbeat is older than `grace_period` seconds (its worker was
killed) is set to FAIL by the next worker that looks, and its MLflow run is marked FAILED. The
journal backend has no heartbeat: a killed worker's trial stays RUNNING there (never counted).
`study_name` defaults to deeprec-<dataset>-<orientation>-<arch> (plus the space file's name for a
non-default space); an existing study of that name is resumed. The study records the base config,
folds and search space it was created with (user attr `deeprec_setup`), and resuming it with
different ones is refused: their trials would not be comparable.

Counting. `n_trials` = that many more finished (COMPLETE or PRUNED) trials than the study had when
the command started: target = finished_at_start + n_trials. Optuna's MaxTrialsCallback(target)
checks only after a trial ends, so N workers could each start one more trial past the target;
instead every worker, before each trial, counts finished trials plus the trials started during
this invocation that are still RUNNING, and starts one only if that is below the target (with
heartbeats it waits while the remaining slots are held by running trials: they finish, or go stale
and fail and free their slot). A trial failed as stale whose worker later reports a result is not
counted (Optuna refuses to update a finished trial), so nothing is counted twice. Several machines
running the same command against one storage and one tracking server cooperate on the same
target (each computes it when it starts) and share the study and its parent run: between them
they add about n_trials, not n_trials each. Each trial carries its invocation's id (user attr
`invocation`), so each invocation reports the trials it added itself (`trials_added`). Start the
first one before the others, since two invocations creating a new study at the same instant could
each create a parent run.

Workers. With one worker the trials run in this process. With N > 1, N worker processes
`python -m deeprec tune --worker` are started (fresh processes: TensorFlow does not survive a
fork); each reads its spec as JSON on stdin (the storage URL may hold a password, which must not
show in the process list), gives TensorFlow cores/N threads, and nests its trial runs under the
parent by id. On Ctrl-C the workers are interrupted, so their trials end FAILED rather than stale.
Resuming, the coordinator fails any stale trial (with its run) and queues again, once each, the
values of every trial that was cut short rather than failed on its own account (`_retry_cut_short`),
so that an interrupted study does not leave those values untried; the queued trials count towards
`n_trials` like any other.

Reproducibility. The TPE sampler is seeded from the config seed, the number of trials the study
had at the start and the worker index (so a resumed study or a second worker does not replay the
first one's random start-up points). With one worker, the same command on a fresh study gives the
same trials; with several workers the order in which trials finish (and so what TPE has seen when
it samples) varies from run to run, so exact reproducibility is not possible.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import optuna
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from deeprec import __version__, cv, datasets, interrupts, preparation, tracking
from deeprec.config import ConfigError, TrainConfig, check_cv, format_param, parse_bool
from deeprec.errors import DeeprecError
from deeprec.search_space import SearchSpace, load_space, trial_config
from deeprec.splits import Split
from deeprec.pruning import TrialReporter, make_pruner
from deeprec.study_storage import (
    check_setup,
    default_storage,
    default_study_name,
    display_storage,
    open_storage,
    require_existing_study,
    study_setup,
    using_experimental_optuna_features,
)
from deeprec.tune_options import PrunerSettings, TuneOptions

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
TAG_STUDY, TAG_KIND, TAG_STATE = "optuna_study", "deeprec.kind", "trial_state"
TAG_REFIT_TRIAL = "refit_trial_number"  # parent-run tag: whose refit the refit_* metrics are
TAG_STALE_REFIT = "refit_stale"  # parent-run tag while the best trial has changed since the refit
TAG_PRUNER = "pruner"  # trial runs: the rule they ran under; the parent: this invocation's
TAG_OVERRIDDEN = "params_overridden"  # parent-run tag: params `mlflow run` logged that the study does not use
RETRY_OF = "retry_of"  # trial user attr and run tag: the number of the cut-short trial whose values it runs again
INVOCATION = "invocation"  # trial user attr: which `deeprec tune` invocation ran it (its count of trials added)
SEARCHED = "searched"  # the parent's param for a field the trials sample
MIN_FAILURE_BUDGET = 5

# --------------------------------------------------------------------------- options, worker spec


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs, sent to it as JSON on stdin (the storage URL may hold a
    password, which must not show in the process list)."""

    study_name: str
    storage: str
    config: dict[str, str]  # the base config: command line + fixed
    space: dict[str, Any]
    folds: int
    pruner: dict[str, Any]
    heartbeat_interval: int
    grace_period: int
    parent_run_id: str
    experiment_id: str
    target: int  # stop once the study has this many finished trials
    baseline: int  # trials numbered from here on were started by this invocation
    max_failures: int
    sampler_seed: int
    index: int
    threads: int | None = None  # TensorFlow thread pools of a worker process (None: TF's default)
    invocation: str = ""  # the coordinator's id, set on every trial this worker runs

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        try:
            return cls(**json.loads(text))
        except (json.JSONDecodeError, TypeError) as exc:
            raise DeeprecError(f"tune --worker expects the worker spec as JSON on stdin ({exc})") from None


def sampler_seed(seed: int, baseline: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, baseline, index]).generate_state(1)[0])


# --------------------------------------------------------------------------- one worker


class _InterruptWithoutTraceback(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C or SIGTERM with the whole traceback of wherever the
    signal landed; the trial's one-line warning and deeprec's own notice say all there is."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info, record.exc_text = None, None
        return True


# Optuna's logger of failed trials (optuna/study/_optimize.py); addFilter ignores a second add.
OPTUNA_TRIAL_LOGGER = "optuna.study._optimize"
INTERRUPT_FILTER = _InterruptWithoutTraceback()


class _Objective:
    """The Optuna objective of one worker: a nested MLflow run per trial around K folds."""

    def __init__(self, spec: WorkerSpec, base: TrainConfig, space: SearchSpace, dataset: datasets.Dataset, splits: list[Split]) -> None:
        self.spec = spec
        self.base = base
        self.space = space
        self.dataset = dataset
        self.splits = splits
        self.current_run_id: str | None = None
        self.last_state: str | None = None
        self.counts = {"complete": 0, "pruned": 0, "failed": 0}

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker_pid", os.getpid())
        trial.set_user_attr(INVOCATION, self.spec.invocation)
        trial.set_user_attr("worker_host", socket.gethostname())
        values = {name: spec.suggest(trial, name) for name, spec in self.space.params.items()}
        run, self.current_run_id, self.last_state = None, None, None
        try:
            # A signal while the run starts is raised once it has started, so that the handlers
            # below end it KILLED; left to MLflow's exit handler, it would end FINISHED.
            with interrupts.deferred():
                run = mlflow.start_run(
                    run_name=f"trial {trial.number}", experiment_id=self.spec.experiment_id, nested=True, parent_run_id=self.spec.parent_run_id,
                    tags={TAG_STUDY: self.spec.study_name, TAG_KIND: "tune-trial", "trial_number": str(trial.number),
                          "worker_pid": str(os.getpid()), "worker_host": socket.gethostname(),
                          TAG_PRUNER: PrunerSettings(**self.spec.pruner).label(),
                          **({RETRY_OF: str(trial.user_attrs[RETRY_OF])} if RETRY_OF in trial.user_attrs else {})},
                )
                self.current_run_id = run.info.run_id
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            value = self._evaluate(trial, values)
        except optuna.TrialPruned as exc:
            self._end("pruned", "KILLED", "pruned_at", str(exc))
            raise
        except KeyboardInterrupt:
            if run is not None:
                self._end("failed", "KILLED", "failure", "interrupted by the user")
            raise
        except BaseException as exc:
            if run is None:  # the run could not start: there is nothing to end
                raise
            reason = str(exc) if isinstance(exc, DeeprecError) else f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("failure", reason)
            self._end("failed", "FAILED", "failure", reason)
            raise
        self._end("complete", "FINISHED")
        return value

    def _evaluate(self, trial: optuna.Trial, values: dict[str, Any]) -> float:
        try:
            cfg = trial_config(self.base, values)
        except ConfigError as exc:
            mlflow.log_params({**{k: format_param(v) for k, v in values.items()}, "trial_number": trial.number})
            raise ConfigError(f"invalid combination of sampled values: {exc}") from None
        tracking.log_config(cfg)
        mlflow.log_param("trial_number", trial.number)
        mlflow.set_tags(tracking.run_tags(cfg, self.dataset))
        trial.set_user_attr("config", cfg.to_params())
        reporter = TrialReporter(trial, cfg.epochs, len(self.splits), sink=_log_epoch, every=self.spec.pruner.get("every", "epoch"))
        results: list[cv.FoldResult] = []
        try:
            for fold, split in enumerate(self.splits):
                result = cv.run_fold(cfg, self.dataset, split, fold, on_epoch=reporter.on_epoch)
                results.append(result)
                mlflow.log_metrics({"fold_valid_rmse": result.best_valid_rmse, "fold_best_epoch": float(result.best_epoch)}, step=fold + 1)
                reporter.on_fold(fold, [r.best_valid_rmse for r in results])
        finally:
            mlflow.log_metric("folds_completed", float(len(results)))
        summary = cv.CVResult(results)
        mlflow.log_metrics(summary.metrics())
        trial.set_user_attr("chosen_epochs", summary.chosen_epochs)
        trial.set_user_attr("fold_valid_rmse", summary.scores.tolist())
        return summary.mean

    def _end(self, state: str, status: str, reason_tag: str | None = None, reason: str | None = None) -> None:
        self.counts[state] += 1
        self.last_state = state
        tags = {TAG_STATE: state, **({reason_tag: reason[:5000]} if reason_tag and reason else {})}
        # Held until the run has ended: cut short, the write left the run active, and MLflow's exit
        # handler ended it FINISHED with no state. (A signal held here still fails the trial in
        # Optuna, whose `tell` comes after; the run keeps what it measured.)
        with interrupts.deferred():
            mlflow.set_tags(tags)
            mlflow.end_run(status)


def _log_epoch(record: dict, step: int) -> None:
    tracking.log_epoch({k: v for k, v in record.items() if k in ("valid_rmse", "train_rmse", "train_loss")}, step)


def _stale_run_marker(study_name: str, experiment_id: str) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Heartbeat-stale callback: mark the MLflow run of a trial whose worker died as FAILED."""

    def mark(study: optuna.Study, trial: FrozenTrial) -> None:
        client = MlflowClient()
        try:
            run_id = trial.user_attrs.get("mlflow_run_id")
            if run_id is None:  # the worker died before it started the run, or between the two calls
                runs = client.search_runs([experiment_id], f"tags.{TAG_STUDY} = '{study_name}' and tags.trial_number = '{trial.number}'")
                run_id = runs[0].info.run_id if runs else None
            if run_id is not None:
                who = f"worker {trial.user_attrs.get('worker_pid', '?')} on {trial.user_attrs.get('worker_host', '?')}"
                client.set_tag(run_id, TAG_STATE, "failed")
                client.set_tag(run_id, "failure", f"{who} stopped sending heartbeats (killed?); failed by worker {os.getpid()}")
                client.set_terminated(run_id, "FAILED")
        except MlflowException as exc:  # Optuna's state is what counts; the run only mirrors it
            log.warning("trial %d failed as stale, but its MLflow run could not be updated: %s", trial.number, exc)
        log.warning("trial %d: its worker stopped sending heartbeats; marked FAILED", trial.number)

    return mark


def run_worker(spec: WorkerSpec, dataset: datasets.Dataset | None = None) -> dict[str, int]:
    """Run trials of the study until it has `spec.target` finished trials (see the module
    docstring for how running trials reserve slots); return this worker's trial counts."""
    if spec.threads is not None:
        from deeprec.train import limit_threads  # only worker processes, before their first TensorFlow op

        limit_threads(spec.threads)
    base = TrainConfig.from_params(spec.config)
    space = SearchSpace.from_dict(spec.space)
    storage = open_storage(spec.storage, spec.heartbeat_interval, spec.grace_period, on_stale=_stale_run_marker(spec.study_name, spec.experiment_id))
    pruner = make_pruner(PrunerSettings(**spec.pruner), spec.folds, base.epochs)
    study = optuna.load_study(study_name=spec.study_name, storage=storage, sampler=optuna.samplers.TPESampler(seed=spec.sampler_seed), pruner=pruner)
    dataset = dataset or datasets.load(datasets.get_spec(base.dataset))
    _, splits = preparation.fold_splits(base, dataset, spec.folds)
    objective = _Objective(spec, base, space, dataset, splits)
    heartbeat = isinstance(storage, optuna.storages.RDBStorage)
    logging.getLogger(OPTUNA_TRIAL_LOGGER).addFilter(INTERRUPT_FILTER)
    log.info("worker %d (pid %d): study %s, until %d finished trials", spec.index, os.getpid(), spec.study_name, spec.target)
    while True:
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        if finished >= spec.target:
            break
        ours = [t for t in trials if t.number >= spec.baseline]
        failed = sum(t.state == TrialState.FAIL for t in ours)
        if failed >= spec.max_failures:
            log.error("worker %d: %d trials of this run failed; stopping (see the failed trials' `failure` tags)", spec.index, failed)
            break
        running = sum(t.state == TrialState.RUNNING for t in ours)
        if finished + running >= spec.target:
            if not heartbeat or running == 0:
                break
            # The remaining slots are held by running trials: wait until they finish, or until
            # their heartbeat is stale (a dead worker) and they are failed here, freeing the slot.
            # (Before each trial Optuna itself fails stale trials.)
            with using_experimental_optuna_features():
                optuna.storages.fail_stale_trials(study)
            time.sleep(min(spec.heartbeat_interval, 5))
            continue
        try:
            study.optimize(objective, n_trials=1, catch=(DeeprecError,), gc_after_trial=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker failed this trial as stale (its heartbeat was late): the result is
            # dropped rather than counted, and the MLflow run follows Optuna's state.
            log.warning("worker %d: the trial was already marked FAILED by another worker; its result is dropped", spec.index)
            if objective.last_state is not None:
                objective.counts[objective.last_state] -= 1
                objective.counts["failed"] += 1
            if objective.current_run_id is not None:
                try:
                    MlflowClient().set_tag(objective.current_run_id, TAG_STATE, "failed")
                    MlflowClient().set_terminated(objective.current_run_id, "FAILED")
                except MlflowException as exc:
                    log.warning("could not mark MLflow run %s failed: %s", objective.current_run_id, exc)
    return objective.counts


# --------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class TuneResult:
    study_name: str
    storage: str  # password hidden
    parent_run_id: str
    trials_complete: int
    trials_pruned: int
    trials_failed: int
    trials_added: int  # finished trials added by this invocation
    best_value: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    refit_run_id: str | None
    refit_metrics: dict[str, float]
    refit_error: str | None
    wall_seconds: float
    worker_exit_codes: list[int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_study(cfg: TrainConfig, space: SearchSpace | None = None, options: TuneOptions | None = None,
              dataset: datasets.Dataset | None = None) -> TuneResult:
    """Create or resume the study, run `options.n_trials` more trials in `options.n_workers`
    workers, log the study on its parent run, then refit the best config (see the module docstring).
    `dataset`: the base config's ratings, if the caller has read them already."""
    started = time.perf_counter()
    space = space or load_space()
    options = (options or TuneOptions()).validate()
    base = space.base_config(cfg.validate())
    space.check(base)
    check_cv(base, options.folds)
    study_name = options.study_name or default_study_name(base, space)
    storage_url = options.storage or default_storage()
    shown = display_storage(storage_url)
    dataset = dataset or datasets.load(datasets.get_spec(base.dataset))
    preparation.check_data(base, dataset, options.folds)  # folds the data cannot fill, bad side information: fail before any study exists

    storage = open_storage(storage_url, options.heartbeat_interval, options.grace_period)
    if options.n_trials == 0:
        require_existing_study(storage, study_name, shown)
    # This process only creates (or finds) the study and reads it; the workers sample and prune.
    study = optuna.create_study(study_name=study_name, storage=storage, direction="minimize", load_if_exists=True)
    check_setup(study, study_setup(base, options.folds, space), record=True)
    trials = study.get_trials(deepcopy=False)
    existing = sum(t.state in FINISHED for t in trials)
    # This invocation's trials: the new ones, and any queued retry an earlier invocation left.
    baseline = min([t.number for t in trials if t.state == TrialState.WAITING] + [len(trials)])
    target = existing + options.n_trials
    n_workers = max(1, min(options.n_workers, options.n_trials))  # a worker per trial at most
    # Other invocations of the study (other machines) share the target: together they run
    # until it is reached, so each adds its share of the trials, not n_trials each.
    log.info("study %s in %s: %d finished trials, running until it has %d, with %d worker(s)", study_name, shown, existing, target, n_workers)

    parent_id = _parent_run(study_name, base, options, space, shown, len(trials))
    # Per invocation (a resumed study may use others): tags, which the next invocation overwrites.
    MlflowClient().log_batch(parent_id, tags=[RunTag(TAG_PRUNER, options.pruner.label()), RunTag("n_workers", str(n_workers))])
    experiment_id = MlflowClient().get_run(parent_id).info.experiment_id
    if options.n_trials > 0:
        # Trials of killed workers are failed now (where heartbeats tell), with their MLflow runs,
        # so that their values are queued again below with those of interrupted trials.
        marking = open_storage(storage_url, options.heartbeat_interval, options.grace_period, on_stale=_stale_run_marker(study_name, experiment_id))
        with using_experimental_optuna_features():
            optuna.storages.fail_stale_trials(optuna.load_study(study_name=study_name, storage=marking))
        _retry_cut_short(study, study.get_trials(deepcopy=False))
    from deeprec.train import usable_cores

    cores = usable_cores()
    if n_workers > cores:
        log.warning("%d workers on %d usable cores: each gets one thread, and they slow each other down", n_workers, cores)
    invocation = uuid.uuid4().hex
    specs = [
        WorkerSpec(
            study_name=study_name, storage=storage_url, config=base.to_params(), space=space.to_dict(), folds=options.folds,
            pruner=dataclasses.asdict(options.pruner), heartbeat_interval=options.heartbeat_interval, grace_period=options.grace_period,
            parent_run_id=parent_id, experiment_id=experiment_id, target=target, baseline=baseline,
            max_failures=max(MIN_FAILURE_BUDGET, options.n_trials), sampler_seed=sampler_seed(base.seed, baseline, i), index=i,
            threads=None if n_workers == 1 else max(1, cores // n_workers), invocation=invocation,
        )
        for i in range(n_workers)
    ]
    exit_codes: list[int] = []
    mlflow.start_run(run_id=parent_id)
    try:
        if options.n_trials > 0:
            if n_workers == 1:
                run_worker(specs[0], dataset)
                exit_codes = [0]
            else:
                exit_codes = _run_worker_processes(specs)
        counts, best = _log_study(study, parent_id, time.perf_counter() - started)
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")

    refit_run_id, refit_metrics, refit_error = None, {}, None
    if options.refit and best is not None:
        refit_run_id, refit_metrics, refit_error = _refit(best, dataset, study_name, parent_id)
    elif options.refit:
        log.warning("no complete trial yet: nothing to refit")
    elif best is not None:
        _mark_stale_refit(parent_id, best.number)
    return TuneResult(
        study_name=study_name, storage=shown, parent_run_id=parent_id,
        trials_complete=counts["complete"], trials_pruned=counts["pruned"], trials_failed=counts["failed"],
        trials_added=sum(t.state in FINISHED and t.user_attrs.get(INVOCATION) == invocation for t in study.get_trials(deepcopy=False)),
        best_value=None if best is None else float(best.value), best_trial=None if best is None else best.number,
        best_params={} if best is None else dict(best.params),
        refit_run_id=refit_run_id, refit_metrics=refit_metrics, refit_error=refit_error,
        wall_seconds=time.perf_counter() - started, worker_exit_codes=exit_codes,
    )


def _retry_cut_short(study: optuna.Study, trials: list[FrozenTrial]) -> list[int]:
    """Queue, once each, the values of every failed trial that was cut short (Ctrl-C, SIGTERM, a
    worker killed and failed as stale) rather than failed on its own account (those carry a
    `failure` user attr: an invalid combination, a diverged loss), so that a resumed study runs
    them first instead of leaving those values untried. Returns the trial numbers queued."""
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    cut_short = [t for t in trials if t.state == TrialState.FAIL and t.params and "failure" not in t.user_attrs and t.number not in retried]
    for trial in cut_short:
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
    if cut_short:
        log.info("study %s: running again first the values of %d trial(s) cut short earlier: %s",
                 study.study_name, len(cut_short), ", ".join(str(t.number) for t in cut_short))
    return [t.number for t in cut_short]


def parent_params(base: TrainConfig, space: SearchSpace) -> dict[str, str]:
    """The study's config as its parent run's params: the base config (command line + the space's
    fixed fields), with `searched` for the fields each trial samples (no trial used their base value)."""
    return {**base.to_params(), **{name: SEARCHED for name in space.params}}


def _same_param(logged: str, ours: str) -> bool:
    """`mlflow run` logs -P values as typed (1e-3 is 0.001, 5.0 is 5, True is true), and
    shell-quoted where they hold characters such as ? & ; ('csv:r.txt?sep=;' is csv:r.txt?sep=;)."""
    if logged == ours:
        return True
    try:
        if shlex.split(logged) == [ours]:
            return True
    except ValueError:  # an unbalanced quote: not a quoted value
        pass
    try:
        return float(logged) == float(ours)
    except ValueError:
        pass
    try:
        return parse_bool(logged) == parse_bool(ours)
    except ValueError:
        return False


def _parent_run(study_name: str, base: TrainConfig, options: TuneOptions, space: SearchSpace, shown_storage: str, n_trials: int) -> str:
    """The study's parent run: found by its tags in the current experiment, else created. A study
    with trials (`n_trials`) whose parent is in another experiment is refused: a second parent
    would log the whole study's counts and best trial over only this invocation's trial runs."""
    # `mlflow run` hands its own run to the command through MLFLOW_RUN_ID. That run becomes the
    # parent of a new study; when resuming, it only points at the study's parent, and it must not
    # be picked up by the trials' start_run calls (MLflow would resume it instead of nesting).
    project_run = os.environ.pop("MLFLOW_RUN_ID", None)
    parents = f"tags.{TAG_STUDY} = '{study_name}' and tags.`{TAG_KIND}` = 'tune'"
    found = mlflow.search_runs(filter_string=parents, order_by=["attributes.start_time ASC"], output_format="list")
    tags = {TAG_STUDY: study_name, TAG_KIND: "tune"}
    if found:
        parent_id = found[0].info.run_id
        if project_run is not None and project_run != parent_id:
            MlflowClient().log_batch(project_run, tags=[RunTag(TAG_STUDY, study_name), RunTag("study_parent_run_id", parent_id), RunTag(TAG_KIND, "tune-invocation")])
        log.info("resuming the study's MLflow parent run %s", parent_id)
        return parent_id
    if n_trials:
        elsewhere = [run for run in mlflow.search_runs(search_all_experiments=True, filter_string=parents, output_format="list")
                     if run.data.params.get("optuna_storage") == shown_storage]
        if elsewhere:
            other = MlflowClient().get_experiment(elsewhere[0].info.experiment_id)
            raise DeeprecError(f"study {study_name}: its MLflow parent run {elsewhere[0].info.run_id} is in experiment '{other.name}', "
                               f"not this command's; resume it there (MLFLOW_EXPERIMENT_NAME={other.name}) or give another --study-name")
        log.warning("study %s has %d trial(s) but no MLflow parent run in this tracking store: a new one logs the study, "
                    "and only this invocation's trials are nested under it", study_name, n_trials)
    with mlflow.start_run(run_id=project_run, run_name=f"tune {study_name}", tags=tags) as run:
        # Not named like the MLproject parameters (storage, space): `mlflow run` logs those as typed.
        params = {**parent_params(base, space), "folds": str(options.folds), "optuna_storage": shown_storage,
                  "search_space": json.dumps(space.to_dict())}
        existing = mlflow.get_run(run.info.run_id).data.params
        tracking.log_new_params(params)
        overridden = {k: params[k] for k in params if k in existing and not _same_param(existing[k], params[k])}
        if overridden:
            # MLflow params cannot change: the -P values `mlflow run` logged stay, and this tag says
            # what the study uses instead (fixed: fields of the space, searched fields).
            mlflow.set_tag(TAG_OVERRIDDEN, json.dumps(overridden))
            log.warning("the parent run's params %s are mlflow run's; the study uses %s (tag %s)",
                        ", ".join(f"{k}={existing[k]}" for k in overridden), json.dumps(overridden), TAG_OVERRIDDEN)
        mlflow.set_tags({"dataset": base.dataset, "split": base.split, "seed": str(base.seed), "deeprec_version": __version__})
        log.info("created the study's MLflow parent run %s", run.info.run_id)
        return run.info.run_id


# What the coordinator sends a worker it stops. A worker that has started handles SIGTERM as it
# does Ctrl-C (`interrupts`: its trial ends FAILED, its run KILLED); one still importing, before
# the handler exists, just ends, where SIGINT printed a KeyboardInterrupt traceback of the import.
WORKER_STOP_SIGNAL = signal.SIGTERM


def _run_worker_processes(specs: list[WorkerSpec]) -> list[int]:
    """`python -m deeprec tune --worker` per spec (fresh processes: TensorFlow does not survive a
    fork); wait for all; on Ctrl-C, interrupt them so their trials end FAILED rather than stale."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()  # also when it was set in code, not in the environment
    procs: list[subprocess.Popen] = []
    try:
        for spec in specs:
            # A session of its own: Ctrl-C in the terminal (or a signal to the whole process group)
            # reaches the coordinator only, which passes it on once below. Signalled twice, a
            # worker was cut short while it told the storage its trial failed, leaving it RUNNING.
            proc = subprocess.Popen([sys.executable, "-m", "deeprec", "tune", "--worker"], stdin=subprocess.PIPE, env=env, text=True,
                                    start_new_session=True)
            procs.append(proc)
            proc.stdin.write(spec.to_json())
            proc.stdin.close()
        codes = [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(WORKER_STOP_SIGNAL)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for spec, code in zip(specs, codes):
        if code != 0:
            log.warning("worker %d exited with status %d", spec.index, code)
    return codes


def _log_study(study: optuna.Study, parent_id: str, wall_seconds: float) -> tuple[dict[str, int], FrozenTrial | None]:
    """Counts, best trial, timings and plots on the (active) parent run."""
    trials = study.get_trials(deepcopy=False)
    counts = {name: sum(t.state == state for t in trials) for state, name in STATE_NAMES.items()}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    step = counts["complete"] + counts["pruned"]
    previous_total = MlflowClient().get_run(parent_id).data.metrics.get("wall_seconds_total", 0.0)
    trial_seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials if t.datetime_complete and t.datetime_start)
    metrics = {
        "trials_complete": counts["complete"], "trials_pruned": counts["pruned"], "trials_failed": counts["failed"],
        "wall_seconds": wall_seconds, "wall_seconds_total": previous_total + wall_seconds, "trial_seconds_total": trial_seconds,
    }
    if best is not None:
        metrics["best_value"] = float(best.value)
        mlflow.set_tags({"best_trial_number": str(best.number), "best_params": json.dumps(best.params)})
        mlflow.log_dict({
            "trial": best.number, "value": best.value, "params": best.params,
            "config": best.user_attrs.get("config"), "chosen_epochs": best.user_attrs.get("chosen_epochs"),
        }, "best_params.json")
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
    _log_plots(study, len(complete))
    log.info("study %s: %d complete, %d pruned, %d failed; best %s", study.study_name, counts["complete"], counts["pruned"], counts["failed"],
             "none yet" if best is None else f"{best.value:.4f} (trial {best.number}: {best.params})")
    return counts, best


def _log_plots(study: optuna.Study, n_complete: int) -> None:
    # Optuna draws with pyplot; nothing is ever shown, and each figure is closed once logged.
    from optuna.visualization import matplotlib as optuna_plots

    plots = (
        ("optimization_history", optuna_plots.plot_optimization_history, 1),
        ("parallel_coordinate", optuna_plots.plot_parallel_coordinate, 1),
        ("param_importances", optuna_plots.plot_param_importances, 2),
    )
    for name, plot, needed in plots:
        if n_complete < needed:
            note = f"skipped: needs {needed} complete trial(s), the study has {n_complete}"
        else:
            try:
                with using_experimental_optuna_features():
                    axes = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances of parameters that never varied
                note = f"skipped: {exc}"
            else:
                figure = np.ravel(axes)[0].figure
                mlflow.log_figure(figure, f"optuna/{name}.png")
                plt.close(figure)
                continue
        log.info("plot %s %s", name, note)
        mlflow.set_tag(f"note.{name}", note)


def _refit(best: FrozenTrial, dataset: datasets.Dataset, study_name: str, parent_id: str) -> tuple[str | None, dict[str, float], str | None]:
    """Retrain the best config on all non-test ratings and evaluate on test once (its own run)."""
    cfg = TrainConfig.from_params(best.user_attrs["config"])
    epochs = int(best.user_attrs["chosen_epochs"])
    log.info("refit of trial %d (%d epochs) on all non-test ratings, evaluated on the test split once", best.number, epochs)
    tags = {TAG_STUDY: study_name, "study_parent_run_id": parent_id, "best_trial_number": str(best.number)}
    try:
        run_id, metrics = tracking.tracked_refit(cfg, epochs, dataset, tags=tags)
    except DeeprecError as exc:
        log.error("refit failed: %s", exc)
        return None, {}, str(exc)
    now = int(time.time() * 1000)
    client = MlflowClient()
    client.log_batch(
        parent_id, metrics=[Metric(f"refit_{k}", float(v), now, best.number) for k, v in metrics.items()],
        tags=[RunTag("refit_run_id", run_id), RunTag(TAG_REFIT_TRIAL, str(best.number))],
    )
    if TAG_STALE_REFIT in client.get_run(parent_id).data.tags:
        client.delete_tag(parent_id, TAG_STALE_REFIT)
    return run_id, metrics, None


def _mark_stale_refit(parent_id: str, best_trial: int) -> None:
    """A study resumed without a refit may have a new best trial, while the parent still holds the
    refit_* metrics of an earlier one: say so on the parent (tag) and in the log."""
    client = MlflowClient()
    run = client.get_run(parent_id)
    refitted = run.data.tags.get(TAG_REFIT_TRIAL)
    if refitted is None and "refit_test_rmse" in run.data.metrics:  # parents logged before the tag: the metric's step
        refitted = str(max(client.get_metric_history(parent_id, "refit_test_rmse"), key=lambda m: m.timestamp).step)
    if refitted is None or int(refitted) == best_trial:
        return
    note = f"the refit_* metrics are trial {refitted}'s; the best trial is now {best_trial}: run again with --n-trials 0 to refit it"
    client.set_tag(parent_id, TAG_STALE_REFIT, note)
    log.warning("study parent run %s: %s", parent_id, note)


def summary_lines(result: TuneResult) -> list[str]:
    """A human-readable summary (the CLI prints it)."""
    lines = [
        f"study {result.study_name} ({result.storage})",
        f"  parent run {result.parent_run_id}",
        f"  trials: {result.trials_complete} complete, {result.trials_pruned} pruned, {result.trials_failed} failed ({result.trials_added} added)",
    ]
    if result.best_value is not None:
        lines.append(f"  best CV validation RMSE {result.best_value:.4f} (trial {result.best_trial}): {json.dumps(result.best_params)}")
    if result.refit_run_id:
        lines.append(f"  refit run {result.refit_run_id}")
        for key in ("test_rmse", "test_rmse_user_avg", "test_mae"):
            if key in result.refit_metrics:
                lines.append(f"    {key:<22} {result.refit_metrics[key]:.4f}")
    if result.refit_error:
        lines.append(f"  refit failed: {result.refit_error}")
    lines.append(f"  wall time {result.wall_seconds:.1f} s")
    return lines

