"""End to end: `mlflow run .` on tiny generated data, then everything a user sees in MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import synthetic_ratings, write_ml1m
from deeprec import interrupts, tracking
from deeprec.config import TrainConfig
from deeprec.train import TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(mlflow_store: Path) -> Path:
    """Tiny ML-1M-format data and a private tracking store, both under tmp_path."""
    write_ml1m(mlflow_store / "data" / "ml-1m", synthetic_ratings(n_users=40, n_items=25, per_user=(10, 20), seed=2))
    return mlflow_store


def test_mlflow_run_end_to_end(workspace: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_ID"} | {"MLFLOW_EXPERIMENT_NAME": "e2e"}
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local",
         "-P", "epochs=3", "-P", "arch=8", "-P", "orientation=user", "-P", "batch_size=16", "-P", "patience=0", "-P", "fill=row-mean"],
        capture_output=True, text=True, cwd=workspace, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch 3/3" in result.stderr  # one progress line per epoch

    client = MlflowClient()
    experiment = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    expected = TrainConfig(epochs=3, arch="8", orientation="user", batch_size=16, patience=0, fill="row-mean").to_params()
    assert run.data.params == expected  # every config field, same names as MLproject
    assert run.data.tags["dataset"] == "ml-1m" and len(run.data.tags["dataset_digest"]) == 32
    assert run.data.tags["split"] == "holdout" and run.data.tags["deeprec_version"] and run.data.tags["rating_scale"] == "1,5"
    history = client.get_metric_history(run.info.run_id, "valid_rmse")
    assert [m.step for m in history] == [1, 2, 3]
    for key in ("test_rmse", "test_mae", "test_rmse_user_avg", "baseline_global_mean_rmse", "baseline_user_item_bias_rmse", "ndcg_at_10"):
        assert np.isfinite(run.data.metrics[key]), key
    assert 0.0 < run.data.metrics["test_rmse"] < 4.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {a.path for a in client.list_artifacts(run.info.run_id, "curves")}
    assert {"curves/rmse.png", "curves/loss.png", "history.csv", "config.yaml", "model"} <= artifacts
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.name == "ml-1m"

    keras_model = mlflow.keras.load_model(f"runs:/{run.info.run_id}/model")
    requirements = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model/requirements.txt")).read_text().split()
    assert {line.split("==")[0] for line in requirements} >= {"mlflow", "keras", "numpy"}  # pinned, not inferred in a subprocess
    assert any(line.startswith(("tensorflow==", "tensorflow-cpu==")) for line in requirements)
    example = np.zeros((2, keras_model.input_shape[-1]), dtype=np.float32)
    assert keras_model.predict(example, verbose=0).shape == (2, keras_model.output_shape[-1])

    recommender = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/recommender")
    import pandas as pd

    top = recommender.predict(pd.DataFrame({"user": [1], "n": [5]}))
    assert len(top) == 5 and list(top["rank"]) == [1, 2, 3, 4, 5]


def test_mlflow_run_cv_entry_point(workspace: Path) -> None:
    """MLflow Projects logs every -P value and default ("true", "2") before deeprec starts; the cv
    run must not log them again in its own form ("True"), which MLflow refuses."""
    from deeprec.sweep import RowCV, logged_cv

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_ID"} | {"MLFLOW_EXPERIMENT_NAME": "e2e-cv"}
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "cv", "--env-manager", "local", "-P", "folds=2", "-P", "refit=true",
         "-P", "ensemble=true", "-P", "epochs=2", "-P", "arch=8", "-P", "orientation=user", "-P", "batch_size=16", "-P", "patience=0"],
        capture_output=True, text=True, cwd=workspace, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("e2e-cv").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("deeprec.kind") == "cv"]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["ensemble"] == "true" and parent.data.params["folds"] == "2"  # as MLflow Projects logged them
    assert logged_cv(parent) == RowCV(2, True)
    assert np.isfinite(parent.data.metrics["ensemble_test_rmse"]) and np.isfinite(parent.data.metrics["test_rmse"])
    assert sorted(r.data.tags.get("deeprec.kind") for r in runs) == ["cv", "cv-fold", "cv-fold", "refit"]

def test_nan_loss_marks_the_run_failed(workspace: Path) -> None:
    cfg = TrainConfig(orientation="user", arch="6", activation="relu", optimizer="sgd", lr=1e12, epochs=5, batch_size=8, patience=0).validate()
    mlflow.set_experiment("nan")
    with pytest.raises(TrainingDiverged):
        tracking.train_tracked(cfg)
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("nan").experiment_id])
    assert run.info.status == "FAILED"
    assert "training loss became" in run.data.tags["failure"]


def test_ctrl_c_marks_the_run_killed_and_keeps_what_was_logged(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def interrupted_run(cfg, prepared, on_epoch=None):
        on_epoch({"epoch": 1, "train_loss": 1.0, "train_rmse": 1.0, "valid_rmse": 1.1, "seconds": 0.1, "train_seconds": 0.1})
        raise KeyboardInterrupt

    monkeypatch.setattr(tracking.experiment, "run", interrupted_run)
    mlflow.set_experiment("ctrl-c")
    with pytest.raises(KeyboardInterrupt):
        tracking.train_tracked(TrainConfig(epochs=3, arch="4").validate())
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("ctrl-c").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["failure"] == "interrupted by the user"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "valid_rmse")] == [1.1]
    assert "curves/rmse.png" in {a.path for a in client.list_artifacts(run.info.run_id, "curves")}

    from deeprec.cli import main  # a run without a recommender, and no run at all: one line each

    capsys.readouterr()  # MLflow's log of the experiment's creation
    assert main(["recommend", "--run-id", run.info.run_id, "--user", "1"]) == 2
    assert capsys.readouterr().err.strip() == f"deeprec: error: run {run.info.run_id} has no recommender: it ended KILLED before one was logged"
    client.set_tag(run.info.run_id, "deeprec.kind", "sweep-run")  # a sweep's row interrupted the same way: the same reason
    assert main(["recommend", "--run-id", run.info.run_id, "--user", "1"]) == 2
    assert capsys.readouterr().err.strip().endswith("has no recommender: it ended KILLED before one was logged")
    client.log_param(run.info.run_id, "folds", "5")  # a sweep's cross-validation row
    assert main(["recommend", "--run-id", run.info.run_id, "--user", "1"]) == 2
    assert capsys.readouterr().err.strip().endswith("has no recommender: it is a cross-validation run; recommenders come from "
                                                    "`deeprec train` runs and sweep rows of one training run")
    assert main(["recommend", "--run-id", "0" * 32, "--user", "1"]) == 2
    assert capsys.readouterr().err.strip().startswith(f"deeprec: error: no run '{'0' * 32}' in the tracking store ")


def test_ctrl_c_while_the_models_are_logged_waits_for_them(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupt that lands inside MLflow's log_model used to leave a PENDING model with no files."""
    save_artifacts = tracking.serve.save_artifacts

    def interrupted_save(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of logging the recommender
        return save_artifacts(*args, **kwargs)

    monkeypatch.setattr(tracking.serve, "save_artifacts", interrupted_save)
    mlflow.set_experiment("ctrl-c-logging")
    with interrupts.installed(), pytest.raises(KeyboardInterrupt):
        tracking.train_tracked(TrainConfig(epochs=1, arch="4", orientation="user", batch_size=16).validate())
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name("ctrl-c-logging").experiment_id
    (run,) = client.search_runs([experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["failure"] == "interrupted by the user"
    (model,) = client.search_logged_models([experiment_id])
    assert model.name == "recommender" and str(model.status) == "READY"
    top = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/recommender").predict(pd.DataFrame({"user": [1], "n": [3]}))
    assert list(top["rank"]) == [1, 2, 3]


def unset_progress_bar_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset for this test, and unset again after it: `deeprec.cli.main` sets it for its process."""
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")


def test_cli_train_json_last_line(workspace: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from deeprec.cli import main

    unset_progress_bar_setting(monkeypatch)
    assert main(["train", "--epochs", "1", "--arch", "4", "--orientation", "item", "--batch_size", "8", "--noise_level", "0.2", "--json"]) == 0
    captured = capsys.readouterr()
    assert "Downloading artifacts" not in captured.err  # MLflow's progress bars are off
    assert "noise_level 0.2 has no effect with noise=none" in caplog.text  # a forgotten --noise
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert len(summary["run_id"]) == 32 and summary["test_ratings"] > 0
    assert MlflowClient().get_run(summary["run_id"]).info.status == "FINISHED"


def test_cli_train_reads_a_csv_dataset_as_its_query_says(workspace: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Separator, header, scale and duplicates travel in the one `dataset` value, so the run's
    params say how its data was read."""
    from deeprec.cli import main

    unset_progress_bar_setting(monkeypatch)
    rows = synthetic_ratings(n_users=30, n_items=20, per_user=(8, 12), seed=4)
    lines = [f"{u};{i};{2 * r};{t}" for u, i, r, t in rows] + [f"{rows[0][0]};{rows[0][1]};9;0"]  # a 1..10 scale, one pair twice
    (workspace / "r.txt").write_text("\n".join(lines) + "\n")
    dataset = "csv:r.txt?sep=%3B&header=no&scale=1,10&duplicates=keep-last"
    assert main(["train", "--dataset", dataset, "--epochs", "1", "--arch", "4", "--orientation", "user", "--batch_size", "8", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = MlflowClient().get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["dataset"] == dataset and run.data.tags["rating_scale"] == "1,10"
    (logged,) = run.inputs.dataset_inputs
    assert logged.dataset.name == dataset
    assert json.loads(logged.dataset.profile)["num_rows"] == len(rows)  # the repeated pair kept once


def test_a_local_ratings_file_gets_the_source_mlflow_picks_without_its_warning(tmp_path: Path) -> None:
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source

    path = tmp_path / "r.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "can be interpreted in multiple ways" would fail here
        ours = tracking._local_file_source(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow 3.x warns here; a later one may not
        mlflows = resolve_dataset_source(str(path))
    assert type(ours) is type(mlflows) and ours.to_dict() == mlflows.to_dict() == {"uri": str(path)}


def test_bad_input_under_mlflow_run_tags_the_projects_run_with_the_reason(workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """MLflow Projects creates the run before deeprec starts; a bad -P value must not leave it
    FAILED with nothing in `mlflow ui` saying why."""
    from deeprec.cli import main

    client = MlflowClient()
    for argv, reason in [
        (["train", "--arch", "256,abc"], "arch: "),
        (["tune", "--n-trials", "x"], "deeprec tune: error: argument --n-trials: expected a whole number, got 'x'"),  # argparse's, in one line
    ]:
        run_id = client.create_run("0").info.run_id
        monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
        assert code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert reason in line
        assert client.get_run(run_id).data.tags["failure"] in line and reason in "deeprec: error: " + client.get_run(run_id).data.tags["failure"]


def test_cli_recommend_prints_titles(workspace: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from deeprec.cli import main

    unset_progress_bar_setting(monkeypatch)
    assert main(["train", "--epochs", "2", "--arch", "6", "--orientation", "user", "--batch_size", "8", "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"]
    assert main(["recommend", "--run-id", run_id, "--user", "3", "-n", "4"]) == 0
    captured = capsys.readouterr()
    assert "Downloading artifacts" not in captured.err  # MLflow's progress bar is off
    lines = captured.out.strip().splitlines()
    assert len(lines) == 4 and lines[0].lstrip().startswith("1.")
    assert all("Movie " in line for line in lines)  # titles from the generated movies.dat
    # An unknown user is refused from the model's user ids, before the model (and TensorFlow) loads.
    monkeypatch.setattr(mlflow.pyfunc, "load_model", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    assert main(["recommend", "--run-id", run_id, "--user", "99999"]) == 2
    assert capsys.readouterr().err.strip().endswith("deeprec: error: unknown user id '99999': the model knows the 40 users of its training data")


def test_a_dataset_inserted_by_a_parallel_run_is_linked_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sweep workers logging the same new dataset at once: MLflow's SQL store raises for the
    second insert (its unique key); the run tries once more and links the row the first one made."""
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    calls = []

    def racing_log_input(dataset, context):
        calls.append(context)
        if len(calls) == 1:
            try:
                raise sqlalchemy.exc.IntegrityError("INSERT INTO datasets", {}, Exception("UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest"))
            except sqlalchemy.exc.IntegrityError as cause:
                raise MlflowException("UNIQUE constraint failed") from cause

    monkeypatch.setattr(mlflow, "log_input", racing_log_input)
    tracking.log_training_input(mlflow.data.from_numpy(np.zeros(3), name="tiny"))
    assert calls == ["training", "training"]

    def failing_log_input(dataset, context):
        raise MlflowException("the store is read-only")

    monkeypatch.setattr(mlflow, "log_input", failing_log_input)
    with pytest.raises(MlflowException, match="read-only"):
        tracking.log_training_input(mlflow.data.from_numpy(np.zeros(3), name="tiny"))


def test_cli_trains_what_it_prepared_before_tensorflow(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    """`deeprec train` prepares split, side features and groups before TensorFlow loads and trains
    on exactly that: per-group models and side information come through the command line."""
    from deeprec.cli import main

    assert main(["train", "--epochs", "1", "--arch", "4", "--batch_size", "8", "--groups", "age-gender", "--json"]) == 0
    grouped = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    trained = [key for key in grouped if key.startswith("group_") and key.endswith("_test_rmse")]
    assert grouped["groups_trained"] == len(trained) >= 2
    assert MlflowClient().get_run(grouped["run_id"]).data.tags["deeprec.models"] == "one model per group; none logged"
    assert main(["train", "--epochs", "1", "--arch", "4", "--batch_size", "8", "--orientation", "user", "--side_info", "user", "--json"]) == 0
    side = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = mlflow.keras.load_model(f"runs:/{side['run_id']}/model")
    assert model.input_shape[-1] == 25 + 30  # the 25 items' ratings and the 30 one-hot user features


def test_a_signal_while_a_run_is_being_created_ends_that_run_killed(mlflow_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C inside `mlflow.start_run` (after the run is written, before it is returned) left
    the new run RUNNING with no handler to end it; its parent ended KILLED."""
    real_start_run = mlflow.start_run

    def start_run_then_signal(*args, **kwargs):
        run = real_start_run(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # as if it came while the run was being created
        return run

    body_ran = []
    with interrupts.installed(), pytest.raises(KeyboardInterrupt):
        with tracking.interruptible_run(run_name="parent") as parent:
            monkeypatch.setattr(mlflow, "start_run", start_run_then_signal)
            with tracking.interruptible_run(run_name="child", nested=True):
                body_ran.append(True)
    assert not body_ran and mlflow.active_run() is None
    runs = MlflowClient().search_runs([parent.info.experiment_id])
    assert {r.info.run_name: r.info.status for r in runs} == {"parent": "KILLED", "child": "KILLED"}
    assert all(r.data.tags["failure"] == "interrupted by the user" for r in runs)


def test_interruptible_run_ends_finished_or_failed(mlflow_store: Path) -> None:
    with tracking.interruptible_run(run_name="fine") as fine:
        pass
    with pytest.raises(ValueError), tracking.interruptible_run(run_name="broken") as broken:
        raise ValueError("boom")
    client = MlflowClient()
    assert client.get_run(fine.info.run_id).info.status == "FINISHED"
    assert client.get_run(broken.info.run_id).info.status == "FAILED" and mlflow.active_run() is None
