"""`deeprec tune`: search spaces, pruning steps, storage, and tiny studies end to end through MLflow.

Every study runs on generated ML-1M-format data (40 users x 25 items), arch 4, 2 epochs, 2 folds,
with a private MLflow store and Optuna storage under tmp_path (the PostgreSQL test starts its own
server on 127.0.0.1).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import synthetic_ratings, write_ml1m
from deeprec import pruning, search_space, study_storage, tune
from deeprec.cli import build_parser, main
from deeprec.config import TrainConfig
from deeprec.errors import DeeprecError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--arch", "4", "--orientation", "user", "--epochs", "2", "--batch_size", "16", "--folds", "2"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture
def workspace(mlflow_store: Path) -> Path:
    """Tiny ML-1M-format data, a private MLflow store (sqlite) and cwd, all under tmp_path."""
    write_ml1m(mlflow_store / "data" / "ml-1m", synthetic_ratings(n_users=40, n_items=25, per_user=(10, 20), seed=2))
    return mlflow_store


def tune_json(capsys: pytest.CaptureFixture, *args: str) -> dict:
    assert main(["tune", *TINY, *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def trial_runs(parent_id: str) -> list:
    client = MlflowClient()
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


# --------------------------------------------------------------------------- search space


def test_default_space_file_is_the_built_in_default() -> None:
    space = search_space.load_space(ROOT / "experiments" / "search_space.yaml")
    assert space.params == search_space.DEFAULT_PARAMS and space.is_default
    assert set(space.params) == {"l2", "dropout", "lr"}
    assert space.params["l2"].log and space.params["lr"].log and not space.params["dropout"].log
    assert search_space.load_space().params == search_space.DEFAULT_PARAMS


@pytest.mark.parametrize(("space_file", "l2_range", "noises"), [
    ("accuracy_space", (1e-5, 1e-3), {"none", "mask"}),
    ("accuracy_space_tuned", (2e-5, 4e-4), {"mask"}),  # the hand search's masked inputs, always on
])
def test_accuracy_spaces_yield_valid_item_configs(space_file: str, l2_range: tuple[float, float], noises: set[str]) -> None:
    space = search_space.load_space(ROOT / "experiments" / f"{space_file}.yaml")
    assert space.fixed["orientation"] == "item" and {"l2", "lr", "dropout", "arch"} <= set(space.params)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        base = space.base_config(TrainConfig())
        cfg = search_space.trial_config(base, {name: spec.suggest(trial, name) for name, spec in space.params.items()})
        assert cfg.orientation == "item" and l2_range[0] <= cfg.l2 <= l2_range[1] and cfg.arch in ("500", "1000")
        assert cfg.noise in noises and 0.0 <= cfg.noise_level <= 0.35


def test_command_line_values_other_than_defaults_win_over_fixed_fields(caplog: pytest.LogCaptureFixture) -> None:
    space = search_space.load_space(ROOT / "experiments" / "accuracy_space_tuned.yaml")
    # mlflow run -e tune passes every option at its default: the space's fixed values apply.
    base = space.base_config(TrainConfig().validate())
    assert (base.epochs, base.patience, base.noise, base.orientation) == (600, 20, "mask", "item")
    # A smoke run of the tuned space: --epochs 2 is not the default, so it wins (and says so).
    with caplog.at_level(logging.INFO, logger="deeprec.search_space"):
        smoke = space.base_config(TrainConfig(epochs=2, noise="dropout").validate())
    assert (smoke.epochs, smoke.noise, smoke.patience) == (2, "dropout", 20)
    assert caplog.text.count("fixed.epochs = 600 overridden by the command line's 2") == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="deeprec.search_space"):  # the CLI's check ahead of run_study's call
        assert space.base_config(TrainConfig(epochs=2, noise="dropout").validate(), log_overrides=False) == smoke
    assert caplog.text == ""


def test_space_file_adds_drops_and_fixes(tmp_path: Path) -> None:
    path = tmp_path / "my_space.yaml"
    path.write_text(yaml.safe_dump({
        "params": {"arch": ["4", "8,4,8"], "activation": {"type": "categorical", "choices": ["sigmoid", "selu"]},
                   "batch_size": {"type": "int", "low": 8, "high": 32, "step": 8}, "l2": None, "noise_level": {"type": "float", "low": 0.0, "high": 0.5}},
        "fixed": {"lr": "1e-3", "noise": "dropout"},
    }))
    space = search_space.load_space(path)
    assert set(space.params) == {"dropout", "arch", "activation", "batch_size", "noise_level"}  # lr fixed, l2 dropped
    assert space.params["arch"].choices == ("4", "8,4,8")
    base = space.base_config(TrainConfig(epochs=2).validate())
    assert (base.lr, base.noise, base.l2) == (0.001, "dropout", 0.0001)
    space.check(base)
    assert study_storage.default_study_name(base, space) == "deeprec-ml-1m-item-any-my_space"
    assert study_storage.default_study_name(TrainConfig(arch="256,512,256"), search_space.load_space()) == "deeprec-ml-1m-item-256-512-256"
    cfg = search_space.trial_config(base, {"arch": "8,4,8", "batch_size": 16, "dropout": 0.25})
    assert (cfg.hidden_sizes, cfg.batch_size, cfg.dropout) == ((8, 4, 8), 16, 0.25)
    assert search_space.SearchSpace.from_dict(space.to_dict(), str(path)).params == space.params


def test_values_valid_only_in_combination_are_accepted(tmp_path: Path) -> None:
    # side_info=user needs orientation=user: fine while orientation is searched too.
    path = tmp_path / "combo.yaml"
    path.write_text("params:\n  orientation: [user, item]\n  side_info: [none, user, item]\n")
    space = search_space.load_space(path)
    space.check(space.base_config(TrainConfig()))


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("params: {learning_rate: {type: float, low: 0.1, high: 1.0}}", "params.learning_rate", "unknown config field"),
        ("params: {lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}}", "params.lr.type", "must be float, int or categorical"),
        ("params: {lr: {type: float, low: abc, high: 1.0}}", "params.lr.low", "expected a number, got 'abc'"),
        ("params: {lr: {type: float, low: 0.1, high: 0.01}}", "params.lr", "low (0.1) must be below high (0.01)"),
        ("params: {lr: {type: float, low: 0.0, high: 0.1, log: true}}", "params.lr", "a log scale needs low > 0"),
        ("params: {lr: {type: float, lo: 0.1, high: 0.2}}", "params.lr", "unknown key 'lo'"),
        ("params: {batch_size: {type: float, low: 8, high: 64}}", "params.batch_size.type", "batch_size takes int values"),
        ("params: {batch_size: {type: int, low: 8, high: 64.5}}", "params.batch_size.high", "expected an integer"),
        ("params: {arch: {type: categorical, choices: []}}", "params.arch.choices", "must be a non-empty list"),
        ("params: {epochs: [1, 2]}", "params.epochs", "cannot be searched"),
        ("params: [lr]", "params", "expected a mapping"),
        ("search: {lr: [0.1]}", "unknown key 'search'", "expected params, fixed"),
        ("fixed: {colour: red}", "fixed.colour", "unknown config field"),
        ("fixed: {lr: 0.1}\nparams: {lr: {type: float, low: 0.001, high: 0.1}}", "fixed.lr", "also under params"),
        ("params: {lr: {type: float, low: 0.1, high: 0.5", "not valid YAML", "("),
    ],
)
def test_bad_space_files_are_one_line_naming_file_and_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(DeeprecError) as err:
        search_space.load_space(path)
    assert str(err.value).startswith(f"{path}: {key}")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("params: {dropout: {type: float, low: 0.0, high: 1.0}}", "params.dropout: value 1.0 can never be used (dropout: must be a fraction"),
        ("params: {activation: [sigmoid, swish]}", "params.activation: value 'swish' can never be used (activation: unknown value 'swish'"),
        ("fixed: {lr: -1}", "fixed.lr: lr: must be > 0"),
    ],
)
def test_values_invalid_for_the_config_are_refused_before_training(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    space = search_space.load_space(path)
    with pytest.raises(DeeprecError) as err:
        space.check(space.base_config(TrainConfig()))
    assert str(err.value).startswith(f"{path}: {message}")


def test_cli_bad_space_fails_in_one_line_before_any_study(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    (workspace / "bad.yaml").write_text("params: {dropout: {type: float, low: 0.0, high: 1.5}}\n")
    assert main(["tune", *TINY, "--space", "bad.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("deeprec: error: bad.yaml: params.dropout: value 1.5 can never be used")
    assert not (workspace / "optuna.db").exists()


def test_zero_trials_on_a_new_study_is_refused_before_it_exists(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    """--n-trials 0 re-logs and refits an existing study; on a new name it used to create an empty
    study whose setup then refused the next command's options."""
    assert main(["tune", *TINY, "--n-trials", "0"]) == 2
    storage = f"sqlite:///{workspace / 'optuna.db'}"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"deeprec: error: n-trials: 0 adds no trial to an existing study, and there is no study 'deeprec-ml-1m-user-4' in {storage}"
    )
    assert optuna.get_all_study_names(storage) == []


class _Records(logging.Handler):
    """Keeps what reaches it. Attached to Optuna's logger itself: Optuna's loggers do not propagate
    to the root, where caplog listens; pytest 9.1 and later also attach caplog to non-propagating
    loggers, pytest 9.0 and earlier do not (a caplog version of the test below failed on CI's)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_trial_stopped_by_ctrl_c_is_logged_without_a_traceback() -> None:
    logger = logging.getLogger(tune.OPTUNA_TRIAL_LOGGER)
    kept = _Records()
    logger.addFilter(tune.INTERRUPT_FILTER)
    logger.addHandler(kept)
    try:
        for error in (KeyboardInterrupt("signal 2"), ValueError("a bug")):
            try:
                raise error
            except BaseException as exc:
                logger.warning("Trial 3 failed because of the following error: %r.", exc, exc_info=exc)
    finally:
        logger.removeHandler(kept)
        logger.removeFilter(tune.INTERRUPT_FILTER)
    interrupted, bug = kept.records
    assert interrupted.getMessage() == "Trial 3 failed because of the following error: KeyboardInterrupt('signal 2')."
    assert interrupted.exc_info is None  # no traceback for Ctrl-C / SIGTERM
    assert bug.exc_info is not None  # every other error keeps its traceback


# --------------------------------------------------------------------------- pruning steps


class FakeTrial:
    """Records reports; says "prune" from `prune_from_step` on."""

    def __init__(self, prune_from_step: int | None = None) -> None:
        self.reports: list[tuple[int, float]] = []
        self.prune_from_step = prune_from_step
        self.asked: list[int] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        step = self.reports[-1][0]
        self.asked.append(step)
        return self.prune_from_step is not None and step >= self.prune_from_step


def test_trials_cut_short_are_queued_again_once_and_trials_failed_for_a_reason_are_not() -> None:
    from optuna.distributions import FloatDistribution

    from deeprec.tune import _retry_cut_short

    study = optuna.create_study()
    space = {"x": FloatDistribution(0.0, 1.0)}
    for x, state, attrs in [(0.1, TrialState.COMPLETE, {}), (0.2, TrialState.FAIL, {"failure": "invalid combination"}),
                            (0.3, TrialState.FAIL, {}), (0.4, TrialState.FAIL, {}), (0.4, TrialState.COMPLETE, {"retry_of": 3})]:
        study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions=space, state=state, user_attrs=attrs,
                                                  value=1.0 if state == TrialState.COMPLETE else None))
    assert _retry_cut_short(study, study.get_trials()) == [2]  # 1 failed on its own account, 3 was retried already
    (queued,) = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert queued.user_attrs == {"retry_of": 2}
    assert _retry_cut_short(study, study.get_trials()) == []  # queued once only
    study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=1)
    assert study.trials[queued.number].params == {"x": 0.3}


def test_reporter_steps_grow_through_epochs_and_fold_checks() -> None:
    trial = FakeTrial()
    seen: list[int] = []
    reporter = pruning.TrialReporter(trial, epochs=3, folds=2, sink=lambda record, step: seen.append(step))
    for fold, scores in ((0, [1.5]), (1, [1.5, 1.1])):
        for epoch in (1, 2):  # early stopping: epoch 3 never comes
            reporter.on_epoch(fold, {"epoch": epoch, "valid_rmse": 2.0 - epoch / 10})
        reporter.on_fold(fold, scores)
    assert [s for s, _ in trial.reports] == [1, 2, 4, 5, 6, 8]  # fold k owns steps k*4+1 .. k*4+4
    assert trial.reports[2] == (4, 1.5) and trial.reports[5] == (8, pytest.approx(1.3))  # running mean of the folds
    assert seen == [1, 2, 5, 6]
    assert trial.asked == [1, 2, 4, 5, 6]  # no pruning question once the last fold is done


def test_reporter_every_fold_reports_and_asks_only_at_the_fold_checks() -> None:
    trial = FakeTrial(prune_from_step=1)  # would prune at any step it is asked about
    seen: list[int] = []
    reporter = pruning.TrialReporter(trial, epochs=3, folds=2, sink=lambda record, step: seen.append(step), every="fold")
    for epoch in (1, 2, 3):
        reporter.on_epoch(0, {"epoch": epoch, "valid_rmse": 1.0})
    assert seen == [1, 2, 3] and trial.reports == [] and trial.asked == []  # the curve is still logged
    with pytest.raises(optuna.TrialPruned, match="after fold 1"):
        reporter.on_fold(0, [0.9])
    assert trial.reports == [(4, 0.9)] and trial.asked == [4]


def test_hyperband_first_checks_after_a_fold_when_pruning_every_fold() -> None:
    per_epoch = pruning.make_pruner(tune.PrunerSettings("hyperband"), folds=3, epochs=9)
    per_fold = pruning.make_pruner(tune.PrunerSettings("hyperband", every="fold"), folds=3, epochs=9)
    assert (per_epoch._min_resource, per_epoch._max_resource) == (1, 30)
    assert (per_fold._min_resource, per_fold._max_resource) == (10, 30)


def test_reporter_raises_trial_pruned_when_told() -> None:
    reporter = pruning.TrialReporter(FakeTrial(prune_from_step=2), epochs=2, folds=2)
    reporter.on_epoch(0, {"epoch": 1, "valid_rmse": 3.0})
    with pytest.raises(optuna.TrialPruned, match="fold 1 epoch 2"):
        reporter.on_epoch(0, {"epoch": 2, "valid_rmse": 3.0})
    with pytest.raises(optuna.TrialPruned, match="after fold 1"):
        pruning.TrialReporter(FakeTrial(prune_from_step=3), epochs=2, folds=2).on_fold(0, [2.5])


# --------------------------------------------------------------------------- storage and options


def test_default_storage_sits_beside_an_sqlite_mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert study_storage.default_storage(f"sqlite:///{tmp_path}/runs/mlflow.db") == f"sqlite:///{tmp_path}/runs/optuna.db"
    monkeypatch.chdir(tmp_path)
    assert study_storage.default_storage("http://127.0.0.1:5000") == f"sqlite:///{tmp_path}/optuna.db"
    assert study_storage.default_storage("file:///somewhere/mlruns") == f"sqlite:///{tmp_path}/optuna.db"


OPEN_AT = """
import sys, time
from deeprec import study_storage
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # every process opens the fresh database at the same moment
study_storage.open_storage(sys.argv[1])
"""


def test_workers_starting_together_on_a_new_database_all_open_it(tmp_path: Path) -> None:
    # Optuna creates its tables on first open; processes that start together race on that
    # (sqlite: "table alembic_version already exists"). Every one of them must still get in.
    for round_ in range(2):
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        start = time.time() + 6.0  # after every interpreter has imported optuna
        workers = [subprocess.Popen([sys.executable, "-c", OPEN_AT, url, str(start)], stderr=subprocess.PIPE, text=True) for _ in range(4)]
        failures = [w.stderr.read() for w in workers if w.wait(timeout=120) != 0]
        assert not failures, failures[0][-500:]


def test_opening_a_storage_with_heartbeats_prints_no_experimental_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study_storage.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
        warnings.warn("still shown", UserWarning)  # only Optuna's ExperimentalWarning is left out
    assert [type(w.message) for w in caught] == [UserWarning]


def test_storage_urls_hide_passwords_and_bad_ones_fail_in_one_line(tmp_path: Path) -> None:
    assert study_storage.display_storage("postgresql+psycopg2://me:secret@db.example:5432/optuna") == "postgresql+psycopg2://me:***@db.example:5432/optuna"
    assert study_storage.display_storage("journal:/x/j.log") == "journal:/x/j.log"
    (tmp_path / "ratings.csv").write_text("user,item,rating\n1,2,5\n")
    for url, message in (("nonsense", "not a SQLAlchemy URL"), (f"sqlite:///{tmp_path}/missing/dir/optuna.db", "unable to open database file"),
                         (f"journal:{tmp_path}/missing/j.log", "does not exist"),
                         (f"journal:{tmp_path}", f"{tmp_path} is a folder; journal: needs a file path"),  # was IsADirectoryError
                         (f"journal:{tmp_path}/ratings.csv", "ratings.csv is not an Optuna journal file (JSONDecodeError"),  # was a traceback
                         *((("mysql://me:pw@localhost/db", "e.g. pip install PyMySQL"),)  # not psycopg2's hint
                           if importlib.util.find_spec("MySQLdb") is None else ())):
        with pytest.raises(DeeprecError) as err:
            study_storage.open_storage(url)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_options_are_checked() -> None:
    for options, message in ((tune.TuneOptions(folds=1), "folds"), (tune.TuneOptions(n_workers=0), "n-workers"),
                             (tune.TuneOptions(heartbeat_interval=5, grace_period=5), "grace-period"),
                             (tune.TuneOptions(study_name="it's"), "study-name"), (tune.TuneOptions(pruner=tune.PrunerSettings("asha")), "pruner"),
                             (tune.TuneOptions(pruner=tune.PrunerSettings(every="batch")), "prune-every")):
        with pytest.raises(DeeprecError, match=message):
            options.validate()


def test_mlproject_tune_entry_point_is_cv_plus_the_study_options() -> None:
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    cv_entry, tune_entry = project["entry_points"]["cv"], project["entry_points"]["tune"]
    extra = {"n_trials", "n_workers", "pruner", "prune_every", "space", "storage", "study_name"}
    cv_only = {"ensemble"}  # a study refits its best trial; fold ensembles are a `cv` option
    assert set(tune_entry["parameters"]) == (set(cv_entry["parameters"]) - cv_only) | extra
    for name, spec in cv_entry["parameters"].items():
        if name not in {"refit", *cv_only}:
            assert tune_entry["parameters"][name] == spec, name
    values = {name: shlex.quote(str(spec["default"])) for name, spec in tune_entry["parameters"].items()}
    argv = shlex.split(tune_entry["command"].format(**values))
    assert argv[:2] == ["deeprec", "tune"]
    args = build_parser().parse_args(argv[1:])
    assert (args.n_trials, args.n_workers, args.pruner, args.prune_every, args.refit, args.folds) == (20, 1, "median", "epoch", True, 5)
    assert args.storage == "" and args.study_name == ""  # empty means the default
    assert search_space.load_space(ROOT / args.space).is_default
    assert build_parser().parse_args(["tune", "--no-refit"]).refit is False
    assert build_parser().parse_args(["tune"]).refit is None  # TuneOptions' default (true) applies


@pytest.mark.parametrize("argv", [["--no-refit", "--refit", "true"], ["--refit", "--no-refit"], ["--refit", "false", "--no-refit"]])
def test_refit_and_no_refit_together_are_refused(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["tune", *argv])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("deeprec tune: error: argument --") and "not allowed with argument --" in line


# --------------------------------------------------------------------------- studies end to end


def test_tiny_study_end_to_end_then_resumed(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    first = tune_json(capsys, "--n-trials", "4")
    name, storage = "deeprec-ml-1m-user-4", f"sqlite:///{workspace / 'optuna.db'}"
    assert first["study_name"] == name and first["storage"] == storage  # beside mlflow.db
    assert first["trials_complete"] + first["trials_pruned"] == 4 and first["trials_added"] == 4
    assert set(first["best_params"]) == {"l2", "dropout", "lr"} and first["best_value"] > 0

    client = MlflowClient()
    parent = client.get_run(first["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna_study"] == name and parent.data.tags["deeprec.kind"] == "tune"
    assert parent.data.params["folds"] == "2" and parent.data.params["arch"] == "4"
    assert [parent.data.params[k] for k in ("l2", "dropout", "lr")] == ["searched"] * 3  # no trial used the base values
    assert parent.data.tags["pruner"] == "median(startup_trials=5, warmup_steps=5, every=epoch)" and parent.data.tags["n_workers"] == "1"
    assert "params_overridden" not in parent.data.tags
    assert parent.data.metrics["best_value"] == pytest.approx(first["best_value"])
    assert parent.data.metrics["trials_complete"] == first["trials_complete"] and parent.data.metrics["trials_failed"] == 0
    assert parent.data.metrics["wall_seconds"] > 0
    assert json.loads(parent.data.tags["best_params"]) == first["best_params"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/parallel_coordinate.png", "optuna/param_importances.png"} <= artifacts
    best_file = json.loads(Path(client.download_artifacts(parent.info.run_id, "best_params.json", str(workspace))).read_text())
    assert best_file["params"] == first["best_params"] and best_file["config"]["arch"] == "4"

    trials = trial_runs(parent.info.run_id)
    assert len(trials) == 4
    study = load(storage, name)
    for run in trials:
        number = int(run.data.params["trial_number"])
        frozen = study.trials[number]
        assert run.data.tags["trial_state"] == {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}[frozen.state]
        assert run.data.tags["optuna_study"] == name and run.data.tags["worker_pid"] == str(os.getpid())
        assert run.data.tags["pruner"] == parent.data.tags["pruner"]
        assert frozen.user_attrs["mlflow_run_id"] == run.info.run_id
        assert float(run.data.params["lr"]) == pytest.approx(frozen.params["lr"]) and run.data.params["epochs"] == "2"
        if frozen.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED"
            folds = client.get_metric_history(run.info.run_id, "fold_valid_rmse")
            assert [m.step for m in folds] == [1, 2]
            assert run.data.metrics["cv_valid_rmse_mean"] == pytest.approx(frozen.value)
            assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_rmse")] == [1, 2, 4, 5]

    refit = client.get_run(first["refit_run_id"])
    assert refit.data.tags["optuna_study"] == name and refit.data.tags["study_parent_run_id"] == parent.info.run_id
    assert "mlflow.parentRunId" not in refit.data.tags  # its own run, linked by tags
    assert refit.data.metrics["test_rmse"] == pytest.approx(first["refit_metrics"]["test_rmse"])
    assert refit.data.tags["best_trial_number"] == str(first["best_trial"])
    assert client.get_run(parent.info.run_id).data.metrics["refit_test_rmse"] == pytest.approx(refit.data.metrics["test_rmse"])

    # The same command again resumes: same study, same parent run, two more trials.
    second = tune_json(capsys, "--n-trials", "2", "--no-refit")
    assert second["parent_run_id"] == first["parent_run_id"] and second["trials_added"] == 2
    assert second["trials_complete"] + second["trials_pruned"] == 6 and second["refit_run_id"] is None
    assert len([t for t in load(storage, name).trials if t.state in FINISHED]) == 6
    assert len(trial_runs(parent.info.run_id)) == 6
    history = client.get_metric_history(parent.info.run_id, "trials_complete")
    assert [m.step for m in history] == [4, 6]  # each invocation logs at "finished trials so far"
    assert len(client.search_runs([parent.info.experiment_id], "tags.`deeprec.kind` = 'tune'")) == 1
    again = tune_json(capsys, "--n-trials", "0", "--no-refit")  # an existing study: logged again, nothing trained
    assert again["trials_added"] == 0 and again["trials_complete"] + again["trials_pruned"] == 6
    # The parent's refit_* are the first best trial's; a new best without a refit is flagged.
    parent_tags = client.get_run(parent.info.run_id).data.tags
    assert parent_tags["refit_trial_number"] == str(first["best_trial"])
    assert ("refit_stale" in parent_tags) == (second["best_trial"] != first["best_trial"])
    tune._mark_stale_refit(parent.info.run_id, first["best_trial"] + 100)  # as if a later trial had won
    stale = client.get_run(parent.info.run_id).data.tags["refit_stale"]
    assert stale == (f"the refit_* metrics are trial {first['best_trial']}'s; the best trial is now {first['best_trial'] + 100}: "
                     "run again with --n-trials 0 to refit it")
    refitted = tune_json(capsys, "--n-trials", "0")  # refits the best trial: the flag goes
    parent_tags = client.get_run(parent.info.run_id).data.tags
    assert "refit_stale" not in parent_tags and parent_tags["refit_trial_number"] == str(refitted["best_trial"])

    # Resuming with a different setup is refused before anything runs.
    assert main(["tune", *TINY, "--epochs", "3", "--n-trials", "1"]) == 2  # the last --epochs wins
    assert "epochs: the study was created with 2, this command has 3" in capsys.readouterr().err
    # ... and so is resuming it from another experiment than its parent run's (a second parent
    # would log the whole study over only some of its trial runs).
    mlflow.set_experiment("elsewhere")
    try:
        assert main(["tune", *TINY, "--n-trials", "1"]) == 2
    finally:
        mlflow.set_experiment("Default")
    assert f"its MLflow parent run {parent.info.run_id} is in experiment '" in capsys.readouterr().err


def test_trials_added_are_this_invocations_own(workspace: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Invocations sharing a study (other machines) share its target; each counted every trial
    finished meanwhile as one it added. The n_workers tag is the count started, not asked for."""
    run_worker = tune.run_worker

    def another_machine_finishes_one_first(spec: tune.WorkerSpec, dataset: object = None) -> dict:
        study = optuna.load_study(study_name=spec.study_name, storage=spec.storage)
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=9.0, user_attrs={"invocation": "another"}))
        return run_worker(spec, dataset)

    monkeypatch.setattr(tune, "run_worker", another_machine_finishes_one_first)
    result = tune_json(capsys, "--n-trials", "2", "--no-refit")
    assert result["trials_complete"] + result["trials_pruned"] == 2 and result["trials_added"] == 1  # was 2
    monkeypatch.setattr(tune, "run_worker", run_worker)
    result = tune_json(capsys, "--n-trials", "1", "--n-workers", "5", "--no-refit")
    assert result["trials_added"] == 1
    assert MlflowClient().get_run(result["parent_run_id"]).data.tags["n_workers"] == "1"  # at most one per trial; was 5


def test_under_mlflow_run_the_parent_names_the_params_the_study_does_not_use(workspace: Path, capsys: pytest.CaptureFixture,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`mlflow run -e tune` logs its -P values (defaults included) before deeprec starts; the
    space's fixed fields and the searched ones then differ from them, and params cannot change."""
    import mlflow

    (workspace / "space.yaml").write_text("params:\n  lr: [0.01, 0.001]\nfixed:\n  arch: '4'\n")
    with mlflow.start_run() as project_run:  # what MLflow Projects creates and hands over
        # -P values as typed, shell-quoted where they need it (as MLflow 3 logs them)
        mlflow.log_params({"arch": "500", "lr": "1e-3", "epochs": "2.0", "orientation": "user", "dataset": "'ml-1m'"})
    monkeypatch.setenv("MLFLOW_RUN_ID", project_run.info.run_id)
    assert main(["tune", "--orientation", "user", "--epochs", "2", "--batch_size", "16", "--folds", "2", "--space", "space.yaml",
                 "--n-trials", "1", "--no-refit", "--pruner", "none", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    parent = MlflowClient().get_run(result["parent_run_id"])
    assert parent.info.run_id == project_run.info.run_id
    assert (parent.data.params["arch"], parent.data.params["lr"]) == ("500", "1e-3")  # as MLflow logged them
    assert json.loads(parent.data.tags["params_overridden"]) == {"arch": "4", "lr": "searched"}  # epochs 2.0 is 2, 'ml-1m' is ml-1m
    assert (parent.data.params["dropout"], parent.data.params["noise"]) == ("searched", "none")  # not logged before: deeprec's values


def test_two_worker_processes_share_one_study(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    result = tune_json(capsys, "--n-trials", "4", "--n-workers", "2", "--no-refit", "--pruner", "none")
    assert result["worker_exit_codes"] == [0, 0]
    study = load(result["storage"], result["study_name"])
    finished = [t for t in study.trials if t.state in FINISHED]
    assert len(finished) == 4 and len(study.trials) == 4  # running trials reserve their slot: no overshoot
    pids = {t.user_attrs["worker_pid"] for t in finished}
    assert len(pids) == 2 and os.getpid() not in pids
    runs = trial_runs(result["parent_run_id"])
    assert {r.data.tags["worker_pid"] for r in runs} == {str(p) for p in pids}
    assert {r.data.tags["pruner"] for r in runs} == {"none"}  # the workers' trials say which rule they ran under
    assert MlflowClient().get_run(result["parent_run_id"]).data.tags["n_workers"] == "2"
    assert all(r.data.tags["trial_state"] == "complete" and r.info.status == "FINISHED" for r in runs)


def test_pruning_on_a_crafted_study_with_the_journal_storage(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    # lr 0.3 learns within an epoch on this data, lr 1e-5 does not: once the 0.3 trial is
    # complete, the median pruner (1 start-up trial, no warm-up) stops the others at epoch 1.
    (workspace / "lr_space.yaml").write_text("params:\n  lr: [0.3, 1.0e-5]\nfixed:\n  l2: 0.0001\n  dropout: 0.0\n")
    journal = workspace / "journal.log"
    name = "crafted"
    study = optuna.create_study(study_name=name, storage=study_storage.open_storage(f"journal:{journal}"))
    for lr in (0.3, 1e-5, 1e-5):
        study.enqueue_trial({"lr": lr})
    result = tune_json(capsys, "--space", "lr_space.yaml", "--storage", f"journal:{journal}", "--study-name", name, "--n-trials", "3",
                       "--pruner", "median", "--pruner-startup-trials", "1", "--pruner-warmup-steps", "0", "--no-refit")
    assert (result["trials_complete"], result["trials_pruned"]) == (1, 2)
    assert result["best_params"] == {"lr": 0.3}
    states = {int(r.data.params["trial_number"]): r for r in trial_runs(result["parent_run_id"])}
    for number in (1, 2):
        assert states[number].data.tags["trial_state"] == "pruned" and states[number].info.status == "KILLED"
        assert states[number].data.tags["pruned_at"].startswith("fold 1 epoch 1")
        assert states[number].data.metrics["folds_completed"] == 0
    assert states[0].data.tags["trial_state"] == "complete"


def test_pruning_every_fold_lets_each_trial_finish_its_first_fold(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    # The crafted study above, checked after each fold only: the slow trials are stopped after
    # their first fold instead of at epoch 1, and Optuna holds no per-epoch values for them. The
    # default 5 warm-up steps do not delay the fold check at step 3: a fold is the warm-up.
    (workspace / "lr_space.yaml").write_text("params:\n  lr: [0.3, 1.0e-5]\nfixed:\n  l2: 0.0001\n  dropout: 0.0\n")
    name, storage = "per-fold", f"sqlite:///{workspace / 'per_fold.db'}"
    study = optuna.create_study(study_name=name, storage=storage)
    for lr in (0.3, 1e-5, 1e-5):
        study.enqueue_trial({"lr": lr})
    result = tune_json(capsys, "--space", "lr_space.yaml", "--storage", storage, "--study-name", name, "--n-trials", "3",
                       "--pruner-startup-trials", "1", "--prune-every", "fold", "--no-refit")
    assert (result["trials_complete"], result["trials_pruned"]) == (1, 2)
    runs = {int(r.data.params["trial_number"]): r for r in trial_runs(result["parent_run_id"])}
    epochs = int(TINY[TINY.index("--epochs") + 1])
    for trial in load(storage, name).trials[1:]:
        assert runs[trial.number].data.tags["pruned_at"].startswith("after fold 1")
        assert runs[trial.number].data.metrics["folds_completed"] == 1
        assert list(trial.intermediate_values) == [pruning.fold_step(0, epochs)]


def test_invalid_sampled_combination_fails_that_trial_cleanly(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    (workspace / "combo.yaml").write_text("params:\n  side_info: [user, none]\n  orientation: [item, user]\nfixed: {l2: 0.0001, dropout: 0.0, lr: 0.01}\n")
    name, storage = "combos", f"sqlite:///{workspace / 'combos.db'}"
    study = optuna.create_study(study_name=name, storage=storage)
    study.enqueue_trial({"side_info": "user", "orientation": "item"})  # side features of users on item rows: invalid
    study.enqueue_trial({"side_info": "none", "orientation": "item"})
    result = tune_json(capsys, "--space", "combo.yaml", "--storage", storage, "--study-name", name, "--n-trials", "1", "--no-refit")
    assert (result["trials_complete"], result["trials_failed"]) == (1, 1)
    failed = next(t for t in load(storage, name).trials if t.state == TrialState.FAIL)
    assert "invalid combination of sampled values: side_info" in failed.user_attrs["failure"]
    run = MlflowClient().get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["trial_state"] == "failed"
    assert run.data.params["side_info"] == "user" and "invalid combination" in run.data.tags["failure"]


def _running_trial(storage: str | optuna.storages.BaseStorage, name: str, timeout: float = 120.0) -> optuna.trial.FrozenTrial:
    """Wait for a RUNNING trial that has its MLflow run. Optuna is only asked once the study's
    parent run exists: by then the other process has created the tables, which the first
    RDBStorage opened here would otherwise race to create."""
    deadline = time.monotonic() + timeout
    while not mlflow.search_runs(filter_string=f"tags.optuna_study = '{name}'", output_format="list"):
        assert time.monotonic() < deadline, "the study's parent run never appeared"
        time.sleep(0.2)
    while time.monotonic() < deadline:
        running = [t for t in load(storage, name).get_trials(states=(TrialState.RUNNING,)) if "mlflow_run_id" in t.user_attrs]
        if running:
            return running[0]
        time.sleep(0.1)
    raise AssertionError("no trial started running in time")


def test_killed_worker_leaves_its_trial_failed_and_the_study_usable(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    name, storage = "killed", f"sqlite:///{workspace / 'optuna.db'}"
    heartbeat = ["--heartbeat-interval", "1", "--grace-period", "2", "--study-name", name, "--no-refit", "--pruner", "none"]
    worker = subprocess.Popen([sys.executable, "-m", "deeprec", "tune", *TINY, *heartbeat, "--n-trials", "3"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        victim = _running_trial(storage, name)
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
    before = [t for t in load(storage, name).trials if t.state in FINISHED]
    time.sleep(3.5)  # let its last heartbeat grow older than the grace period

    result = tune_json(capsys, *heartbeat, "--n-trials", "2")
    study = load(storage, name)
    assert study.trials[victim.number].state == TrialState.FAIL
    finished = [t for t in study.trials if t.state in FINISHED]
    assert len(finished) == len(before) + 2 and result["trials_added"] == 2
    assert result["trials_failed"] == 1
    assert all(t.user_attrs["worker_pid"] == os.getpid() for t in finished if t.number > victim.number)
    client = MlflowClient()
    victim_run = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert victim_run.info.status == "FAILED" and victim_run.data.tags["trial_state"] == "failed"
    assert "stopped sending heartbeats" in victim_run.data.tags["failure"]
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED" and victim_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert len(trial_runs(parent.info.run_id)) == len(study.trials)  # one run per trial, none twice


def test_a_signal_to_the_whole_group_stops_two_workers_cleanly(workspace: Path) -> None:
    """Ctrl-C in a terminal signals every process of the group: afterwards no trial is RUNNING and
    every trial's run says how it ended. (Signalled twice, once by the terminal and once by the
    coordinator, a worker was cut short while it told the journal its trial failed, which then
    stayed RUNNING; cut short while ending its run, a run was ended FINISHED by MLflow's exit
    handler. The workers now run in sessions of their own. The race is timing-dependent, so this
    test checks the end state rather than reproducing it.)"""
    name, storage = "grouped", f"journal:{workspace / 'journal.log'}"
    coordinator = subprocess.Popen([sys.executable, "-m", "deeprec", "tune", *TINY, "--epochs", "200", "--n-trials", "8", "--n-workers", "2",
                             "--study-name", name, "--storage", storage, "--no-refit", "--pruner", "none"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _running_trial(study_storage.open_storage(storage), name)
        os.killpg(coordinator.pid, signal.SIGINT)
        _, err = coordinator.communicate(timeout=120)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
    assert coordinator.returncode == 130, err
    study = load(study_storage.open_storage(storage), name)
    assert study.trials and all(t.state != TrialState.RUNNING for t in study.trials)
    (parent,) = mlflow.search_runs(filter_string=f"tags.optuna_study = '{name}' and tags.`deeprec.kind` = 'tune'", output_format="list")
    runs = trial_runs(parent.info.run_id)
    assert runs and all((r.info.status, r.data.tags.get("trial_state")) in {("KILLED", "failed"), ("FINISHED", "complete")} for r in runs)


@pytest.mark.parametrize("delay", [0.2, 0.6])
def test_a_worker_stopped_while_it_starts_ends_without_a_traceback(delay: float) -> None:
    """On Ctrl-C the coordinator stops its workers; one still importing deeprec, before its signal
    handler exists, printed a KeyboardInterrupt traceback of the import when that was SIGINT."""
    worker = subprocess.Popen([sys.executable, "-m", "deeprec", "tune", "--worker"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)  # importing deeprec's command line takes longer
    worker.send_signal(tune.WORKER_STOP_SIGNAL)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode != 0 and "Traceback" not in err, err


# --------------------------------------------------------------------------- PostgreSQL


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@contextmanager
def private_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (trust auth); yields its SQLAlchemy URL.
    Skips the test, with the reason, where one cannot be started."""
    bin_dir = _postgres_bin()
    if bin_dir is None or not (bin_dir / "pg_ctl").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin")
    if importlib.util.find_spec("psycopg2") is None:
        pytest.skip("psycopg2 is not installed (pip install psycopg2-binary)")
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")
        if runuser is None:
            pytest.skip("running as root and `runuser` is missing, so the server cannot run as the postgres user")
        as_user = [runuser, "-u", "postgres", "--"]
    # Not under tmp_path: pytest's base temp folder is private to its user; /tmp is not.
    folder = Path(tempfile.mkdtemp(prefix="deeprec-pg-"))
    if owner is not None:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data, port = folder / "data", _free_port()
    started = False
    try:
        init = subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                              capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {(init.stderr or init.stdout).strip().splitlines()[-1:]}")
        options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off"
        start = subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", options, "-w", "-t", "60", "start"],
                               capture_output=True, text=True, timeout=120)
        if start.returncode != 0:
            log_tail = (folder / "server.log").read_text().strip().splitlines()[-1:] if (folder / "server.log").exists() else []
            pytest.skip(f"the PostgreSQL server did not start: {start.stderr.strip() or start.stdout.strip()} {log_tail}")
        started = True
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_on_one_postgresql_study(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    with private_postgres() as url:
        result = tune_json(capsys, "--storage", url, "--study-name", "pg", "--n-trials", "4", "--n-workers", "2", "--no-refit", "--pruner", "none")
        assert result["storage"] == url and result["worker_exit_codes"] == [0, 0]
        study = load(url, "pg")
        finished = [t for t in study.trials if t.state in FINISHED]
        assert len(finished) == 4
        assert len({t.user_attrs["worker_pid"] for t in finished}) == 2
        assert len(trial_runs(result["parent_run_id"])) == 4
