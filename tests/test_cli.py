"""The `deeprec data` commands as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_lines, write_ml1m, write_ratings_csv
from deeprec.cli import main


def run_cli(*args: str, env_data_dir: Path | None = None, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    environment = {**os.environ, **(env or {})}
    if env_data_dir is not None:
        environment["DEEPREC_DATA_DIR"] = str(env_data_dir)
    return subprocess.run([sys.executable, "-m", "deeprec", *args], capture_output=True, text=True, env=environment, cwd=cwd, timeout=120)


def test_info_json_on_a_csv_file(tmp_path: Path, rows: np.ndarray, capsys: pytest.CaptureFixture) -> None:
    path = write_ratings_csv(tmp_path / "ratings.csv", rows)
    assert main(["data", "info", "--dataset", f"csv:{path}", "--split", "holdout", "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["ratings"] == len(rows)
    assert info["users"] == len(set(rows[:, 0])) and info["items"] == len(set(rows[:, 1]))
    assert info["density"] == pytest.approx(len(rows) / (info["users"] * info["items"]))
    assert info["rating_histogram"] == {str(v): int((rows[:, 2] == v).sum()) for v in range(1, 6) if (rows[:, 2] == v).any()}
    split = info["split"]
    assert split["train"] + split["valid"] + split["test"] == len(rows)
    assert split["test"] == int(np.ceil(0.1 * len(rows)))  # scikit-learn rounds the test share up


def test_info_on_a_registered_dataset_from_the_data_dir(tmp_path: Path, rows: np.ndarray, monkeypatch, capsys) -> None:
    write_ml1m(tmp_path / "ml-1m", rows)
    monkeypatch.setenv("DEEPREC_DATA_DIR", str(tmp_path))
    assert main(["data", "info", "--dataset", "ml-1m", "--split", "holdout"]) == 0
    out = capsys.readouterr().out
    assert f"ratings {len(rows):,}" in out and "split holdout (seed 999613182)" in out


def test_verify_reports_every_file(tmp_path: Path, rows: np.ndarray, monkeypatch, capsys) -> None:
    write_ml1m(tmp_path / "ml-1m", rows)
    monkeypatch.setenv("DEEPREC_DATA_DIR", str(tmp_path))
    assert main(["data", "verify", "--dataset", "ml-1m"]) == 0
    out = capsys.readouterr().out
    assert f"{len(rows):,} ratings valid" in out
    assert "30 feature columns" in out and "19 feature columns" in out


def test_malformed_line_is_one_line_on_stderr(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "ratings.dat", ["1::1::5::0", "1::2::4::0", "1::3::x::0", "1::4::2::0"])
    result = run_cli("data", "info", "--dataset", f"csv:{path}", "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == f"deeprec: error: {path}, line 3: rating 'x' is not a number"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "info", "--dataset", "ml-3m"], "unknown dataset 'ml-3m'"),
        (["data", "info", "--dataset", "ml-1m", "--split", "random"], "unknown split 'random'"),
        (["data", "info", "--dataset", "ml-1m", "--split", "u1"], "split u1 is ML-100K's canonical fold"),
        (["data", "info", "--dataset", "ml-1m", "--sep", ","], "apply to csv:PATH datasets"),
        (["data", "info", "--dataset", "csv:does/not/exist.csv"], "no such ratings file"),
        (["data", "verify", "--dataset", "ml-100k"], "is not in"),
        (["cv", "--groups", "kmeans:3", "--folds", "2"], "groups: cross-validation and tuning train one model per fold"),
        (["tune", "--groups", "age-gender", "--n-trials", "1"], "groups: cross-validation and tuning train one model per fold"),
        (["cv", "--folds", "1"], "folds: need at least 2, got 1"),
        (["cv", "--folds", "100000"], "folds: at most 100"),
        (["tune", "--folds", "101", "--n-trials", "1"], "folds: at most 100"),
        (["train", "--dataset", "csv:does/not/exist.csv"], "no such ratings file"),
        (["cv", "--dataset", "csv:does/not/exist.csv"], "no such ratings file"),
        (["train", "--dataset", "csv:r.csv?dupes=keep-last"], "dataset: csv:r.csv?dupes=keep-last: unknown option 'dupes'"),
        (["tune", "--dataset", "csv:r.csv?scale=5", "--n-trials", "1"], "dataset: csv:r.csv?scale=5: scale: expected MIN,MAX"),
        (["data", "info", "--dataset", "csv:r.csv?sep=,", "--sep", ";"], "--sep repeats the sep= option of csv:r.csv?sep=,"),
        (["tune", "--n-workers", "0"], "n-workers: must be >= 1, got 0"),
        (["tune", "--n-trials", "-1"], "n-trials: must be >= 0, got -1"),
        (["tune", "--space", "does/not/exist.yaml"], "does/not/exist.yaml: no such search-space file"),
    ],
)
def test_bad_names_fail_before_any_work(tmp_path: Path, args: list[str], message: str) -> None:
    # An empty data dir: a registered dataset would need a download, so these must fail first.
    result = run_cli(*args, env_data_dir=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing was downloaded or written


def test_bad_scale_is_an_argument_error(tmp_path: Path) -> None:
    result = run_cli("data", "info", "--dataset", "csv:x.csv", "--scale", "5,1")
    assert result.returncode == 2 and "MIN must be below MAX" in result.stderr
    result = run_cli("data", "info", "--dataset", "csv:x.csv", "--scale=1,1e400")
    assert result.returncode == 2 and "MIN and MAX must be finite numbers, got '1,1e400'" in result.stderr


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_a_split_seed_out_of_range_is_an_argument_error(seed: str) -> None:
    result = run_cli("data", "info", "--dataset", "csv:x.csv", "--split", "holdout", "--seed", seed)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"deeprec data info: error: argument --seed: expected a seed from 0 to 4294967295, got '{seed}'"


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "args",
    [["report", str(ROOT / "experiments" / "autorec_paper.yaml")], ["recommend", "--run-id", "0123abcd", "--user", "1"]],
)
def test_read_only_commands_create_no_tracking_store(tmp_path: Path, args: list[str]) -> None:
    # MLflow's default store is ./mlflow.db, created by the first query: in the wrong folder that
    # would leave an empty store behind and answer "no runs".
    env = {"MLFLOW_TRACKING_URI": ""}  # MLflow's default, whatever the calling shell set
    result = run_cli(*args, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("deeprec: error: no MLflow tracking store at sqlite:///")
    assert result.stderr.strip().endswith("mlflow.db; run this from the folder where the runs were made or set MLFLOW_TRACKING_URI to their store")
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# Runs the CLI and exits 99 if TensorFlow was imported along the way.
CLI_WITHOUT_TENSORFLOW = """
import sys
from deeprec.cli import main
code = main(sys.argv[1:])
sys.exit(99 if "tensorflow" in sys.modules else code)
"""


def test_bad_data_an_unknown_run_or_study_or_a_bad_space_is_named_before_tensorflow_loads(tmp_path: Path) -> None:
    import mlflow
    import optuna

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri).search_experiments()  # an existing store without the run
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    from deeprec.config import TrainConfig
    from deeprec.search_space import load_space
    from deeprec.study_storage import SETUP_ATTR, study_setup

    space = load_space(None)  # a study created with --epochs 7, resumed with the default
    created = space.base_config(TrainConfig(dataset="csv:good.csv?scale=1,5", epochs=7).validate(), log_overrides=False)
    resumed = optuna.create_study(study_name="resumed", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    resumed.set_user_attr(SETUP_ATTR, study_setup(created, 5, space))
    (tmp_path / "space.yaml").write_text("params:\n  dropout: [0.1, 1.5]\n")
    (tmp_path / "bad.csv").write_text("1,1,5\n1,2,x\n")
    (tmp_path / "twice.csv").write_text("1,1,5\n1,2,4\n1,1,3\n")
    (tmp_path / "good.csv").write_text("1,1,5\n1,2,4\n2,1,3\n2,2,1\n")
    (tmp_path / "bad_sweep.yaml").write_text("name: bad\nbase: {dataset: 'csv:bad.csv'}\nrows: [{name: a}]\n")
    cases = [
        (["sweep", "bad_sweep.yaml"], "bad.csv, line 2: rating 'x' is not a number"),  # before the parent run, too
        (["tune", "--dataset", "csv:bad.csv", "--n-trials", "1"], "bad.csv, line 2: rating 'x' is not a number"),
        (["tune", "--dataset", "csv:good.csv?scale=1,5", "--storage", "garbage://x", "--n-trials", "1"], "storage garbage://x: "),
        (["tune", "--dataset", "csv:good.csv?scale=1,5", "--study-name", "resumed", "--n-trials", "1"],
         f"epochs: the study was created with 7, this command has {TrainConfig().epochs}; resume study 'resumed' with the options it was created with"),
        (["tune", "--dataset", "csv:good.csv?scale=1,5", "--n-trials", "0"], "n-trials: 0 adds no trial to an existing study, and there is no study 'deeprec-csv-good-item-500'"),
        (["train", "--dataset", "csv:bad.csv"], "bad.csv, line 2: rating 'x' is not a number"),
        (["train", "--dataset", "csv:twice.csv"], "twice.csv, line 3: duplicate rating of item 1 by user 1 (first at line 1)"),
        (["cv", "--dataset", "csv:bad.csv"], "bad.csv, line 2: rating 'x' is not a number"),
        (["tune", "--space", "space.yaml"], "space.yaml: params.dropout: value 1.5 can never be used (dropout: must be a fraction in [0, 1), got 1.5)"),
        (["recommend", "--run-id", "0" * 32, "--user", "1"], f"no run '{'0' * 32}' in the tracking store {tracking_uri}"),
        (["replay-pruning", "--study-name", "missing"], "study 'missing' not in sqlite:///"),
        (["replay-pruning", "--study-name", "missing", "--storage", f"sqlite:///{tmp_path / 'nothing.db'}"], "nothing.db: no such file"),
    ]
    for args, message in cases:
        result = subprocess.run([sys.executable, "-c", CLI_WITHOUT_TENSORFLOW, *args], capture_output=True, text=True, cwd=tmp_path,
                                env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}, timeout=120)
        assert result.returncode == 2, (args, result.returncode, result.stderr[-500:])
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("deeprec: error: ") and message in line, line
    assert not (tmp_path / "nothing.db").exists()
    assert mlflow.MlflowClient(tracking_uri).search_runs(["0"]) == []  # no sweep parent run left behind


def test_data_a_config_cannot_use_is_named_before_tensorflow_loads(tmp_path: Path, rows: np.ndarray) -> None:
    """A split or folds the ratings cannot fill, a broken side-information file, more k-means groups
    than users: one line each, before TensorFlow's start-up lines and before any run exists."""
    import mlflow

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = write_ml1m(tmp_path / "data" / "ml-1m", rows)
    users = (folder / "users.dat").read_text(encoding="latin-1").splitlines()
    (folder / "users.dat").write_text("\n".join(users[:3] + ["4::F::25"] + users[4:]) + "\n", encoding="latin-1")
    (tmp_path / "pair.csv").write_text("1,1,5\n1,2,4\n")  # one user, two ratings: one stays in training, one cannot be split
    (tmp_path / "few.csv").write_text("".join(f"{u},{i},{1 + (u + i) % 5}\n" for u in range(1, 4) for i in range(1, 4)))
    (tmp_path / "once.csv").write_text("".join(f"{u},{10 * u + j},{1 + j % 5}\n" for u in range(1, 21) for j in range(10)))  # each item rated once
    (tmp_path / "groups.yaml").write_text("name: g\nbase: {dataset: ml-1m, epochs: 1}\nrows: [{name: ok}, {name: many, params: {groups: 'kmeans:41'}}]\n")
    (tmp_path / "sides.yaml").write_text("name: s\nbase: {dataset: ml-1m}\nrows: [{name: side, params: {side_info: user, orientation: user}, cv: {folds: 2}}]\n")
    broken = "users.dat, line 4: expected 5 fields separated by '::', got 3"
    cases = [
        (["train", "--dataset", "csv:pair.csv?scale=1,5"], "too few ratings to hold out a 10% test share: 0 of the 2 it is taken from may be held out, and it takes 2"),
        (["train", "--dataset", "ml-1m", "--side_info", "user", "--orientation", "user"], broken),
        (["train", "--dataset", "ml-1m", "--groups", "kmeans:41"], "groups: kmeans:41 needs at least 41 users, the training data has 40"),
        (["cv", "--dataset", "csv:few.csv?scale=1,5", "--folds", "10"], "too few ratings for 10 folds"),
        (["tune", "--dataset", "csv:once.csv?scale=1,5", "--folds", "2", "--n-trials", "1"], "fold 1 of 2 cannot be validated: each of its"),
        (["cv", "--dataset", "ml-1m", "--side_info", "user", "--orientation", "user", "--folds", "2"], broken),
        (["tune", "--dataset", "ml-1m", "--side_info", "user", "--orientation", "user", "--folds", "2", "--n-trials", "1"], broken),
        (["sweep", "groups.yaml"], "groups.yaml: row 'many': groups: kmeans:41 needs at least 41 users"),
        (["sweep", "sides.yaml"], "sides.yaml: row 'side': /"),  # then the path of the broken users.dat
    ]
    environment = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "DEEPREC_DATA_DIR": str(tmp_path / "data")}
    for args, message in cases:
        result = subprocess.run([sys.executable, "-c", CLI_WITHOUT_TENSORFLOW, *args], capture_output=True, text=True, cwd=tmp_path,
                                env=environment, timeout=120)
        assert result.returncode == 2, (args, result.returncode, result.stderr[-500:])
        line = result.stderr.strip().splitlines()[-1]  # after "rating scale inferred" and the like
        assert line.startswith("deeprec: error: ") and message in line, (args, line)
    client = mlflow.MlflowClient(tracking_uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []  # no run, no sweep parent


def test_stores_and_experiments_that_cannot_take_runs_fail_in_one_line_before_the_data_is_read(tmp_path: Path, rows: np.ndarray,
                                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)  # the new store's Default experiment keeps its artifacts in ./mlruns/0
    write_ratings_csv(tmp_path / "ratings.csv", rows)
    (tmp_path / "junk.db").write_text("not a database\n")
    (tmp_path / "folder.db").mkdir()
    good = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(good)
    client.delete_experiment(client.create_experiment("gone"))
    cases = [
        ({"MLFLOW_TRACKING_URI": "sqlite:///junk.db"}, "sqlite:///junk.db cannot be used: DatabaseError: (sqlite3.DatabaseError) file is not a database"),
        ({"MLFLOW_TRACKING_URI": "sqlite:///folder.db"}, "sqlite:///folder.db cannot be used: folder.db is not a file"),  # not minutes of retries
        ({"MLFLOW_TRACKING_URI": "postgresql://me:secret@127.0.0.1:9/db"}, "postgresql://me:***@127.0.0.1:9/db cannot be used: "),
        ({"MLFLOW_TRACKING_URI": "http://me:secret@127.0.0.1:9"}, "http://me:***@127.0.0.1:9 cannot be used: "),  # MLflow's message repeats the URL
        ({"MLFLOW_TRACKING_URI": good, "MLFLOW_EXPERIMENT_NAME": "gone"}, "experiment 'gone' (id 1) is deleted in"),
        ({"MLFLOW_TRACKING_URI": good, "MLFLOW_EXPERIMENT_ID": "987"}, "MLFLOW_EXPERIMENT_ID=987: no such experiment in the tracking store"),
        ({"MLFLOW_TRACKING_URI": good, "MLFLOW_EXPERIMENT_ID": "0", "MLFLOW_EXPERIMENT_NAME": "gone"},
         "MLFLOW_EXPERIMENT_ID=0 and MLFLOW_EXPERIMENT_NAME=gone (id 1) name different experiments; unset one of them"),
        ({"MLFLOW_TRACKING_URI": good, "MLFLOW_EXPERIMENT_ID": "0", "MLFLOW_EXPERIMENT_NAME": "new"},  # MLflow made 'new', ignoring the id
         "MLFLOW_EXPERIMENT_ID=0 (experiment 'Default') and MLFLOW_EXPERIMENT_NAME=new name different experiments; unset one of them"),
    ]
    # mlflow.set_experiment in an earlier test of this process exports MLFLOW_EXPERIMENT_ID
    base_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
    for env, message in cases:
        result = subprocess.run([sys.executable, "-c", CLI_WITHOUT_TENSORFLOW, "train", "--dataset", "csv:ratings.csv", "--epochs", "1"],
                                capture_output=True, text=True, cwd=tmp_path, env={**base_env, **env}, timeout=120)
        assert result.returncode == 2, (env, result.returncode, result.stderr[-800:])
        (line,) = result.stderr.strip().splitlines()
        assert message in line and "secret" not in line, line
    # An artifact folder that cannot be made would fail only once training had finished.
    (tmp_path / "mlruns").write_text("")
    result = subprocess.run([sys.executable, "-c", CLI_WITHOUT_TENSORFLOW, "train", "--dataset", "csv:ratings.csv"], capture_output=True,
                            text=True, cwd=tmp_path, env={**base_env, "MLFLOW_TRACKING_URI": good}, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"deeprec: error: experiment 'Default' keeps its artifacts in {tmp_path / 'mlruns' / '0'}, "
                                     f"where none can be written: {tmp_path / 'mlruns'} is not a folder")


@pytest.mark.parametrize(
    ("uri", "message"),
    [("http://127.0.0.1:9", "Connection refused"), ("file:./mlruns", "maintenance mode")],
)
def test_a_store_that_cannot_take_runs_fails_in_one_line_before_the_data_is_read(tmp_path: Path, rows: np.ndarray, uri: str, message: str) -> None:
    path = write_ratings_csv(tmp_path / "ratings.csv", rows)
    result = run_cli("train", "--dataset", f"csv:{path}", "--epochs", "1", cwd=tmp_path,
                     env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_ALLOW_FILE_STORE": "false"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"deeprec: error: the MLflow tracking store {uri} cannot be used: ")
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratings.csv"]
