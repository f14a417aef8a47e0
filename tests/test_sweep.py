"""Experiment files, `deeprec sweep` and `deeprec report` on tiny generated data."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from conftest import synthetic_ratings, write_ml1m
from deeprec import datasets
from deeprec.cli import main
from deeprec.errors import DeeprecError
from deeprec.sweep import TAG_REUSED, TAG_ROW, TAG_SMOKE, TAG_SWEEP, Job, _copy_run, load_experiment

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_FILES = sorted(p for p in (ROOT / "experiments").glob("*.yaml") if "rows:" in p.read_text())


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=[p.stem for p in EXPERIMENT_FILES])
def test_every_experiment_file_is_valid(path: Path) -> None:
    experiment = load_experiment(path)
    assert experiment.rows and experiment.metric in ("test_rmse_user_avg", "test_rmse")
    assert any(r.published is not None for r in experiment.rows)


def test_the_report_tables_are_all_there() -> None:
    names = {p.stem for p in EXPERIMENT_FILES}
    assert {"activations", "fills", "architectures", "noise", "side_info", "deeprec_tf", "autorec_paper", "refeed", "mask_noise", "groups"} <= names
    assert len(load_experiment(ROOT / "experiments" / "architectures.yaml").rows) == 8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nrows: []\n", "rows must be a non-empty list"),
        ("name: x\nmetric: mae\nrows: [{name: a}]\n", "metric 'mae' must be one of"),
        ("name: x\nrows: [{name: a, params: {dropout: 1.5}}]\n", "row 'a': dropout: must be a fraction"),
        ("name: x\nrows: [{name: a, params: {learning_rate: 1}}]\n", "row 'a': learning_rate: unknown parameter"),
        ("name: x\nrows: [{name: a, published: high}]\n", "published must be a number"),
        ("name: x\nrows: [{name: a}, {name: a}]\n", "row names must be unique; 'a' names 2 rows"),
        ("name: x\nrows: [{name: a, seeds: 3}]\n", "unknown key 'seeds'"),
        ("name: [unclosed\n", "not valid YAML"),
        ("name: x\nrows: [{name: a, cv: 5}]\n", "row 'a': cv must be a mapping"),
        ("name: x\nrows: [{name: a, cv: {folds: 1}}]\n", "row 'a': cv: folds must be a whole number >= 2, got 1"),
        ("name: x\nrows: [{name: a, cv: {folds: true}}]\n", "cv: folds must be a whole number >= 2, got True"),
        ("name: x\nrows: [{name: a, cv: {ensemble: true}}]\n", "cv: folds must be a whole number >= 2, got None"),
        ("name: x\nrows: [{name: a, cv: {folds: 3, ensemble: maybe}}]\n", "cv: ensemble must be true or false, got 'maybe'"),
        ("name: x\nrows: [{name: a, cv: {folds: 3, repeats: 2}}]\n", "cv: unknown key 'repeats'"),
        ("name: x\nrows: [{name: a, params: {groups: age-gender}, cv: {folds: 3}}]\n", "row 'a': groups: cross-validation and tuning train one model per fold; use groups=none"),
        ("name: x\nrows: [{name: a, cv: {folds: 100000}}]\n", "row 'a': folds: at most 100 (each fold trains a model; 5 or 10 are usual), got 100000"),
        ("name: x\nrows: [{name: a, published: yes}]\n", "row 'a': published must be a number or null, got True"),
        ("name: x\nrows: [{name: a, published: .nan}]\n", "row 'a': published must be a number or null, got nan"),
        ("name: x\nrows: [{name: null}]\n", "row 1: name must be a non-empty string, got None"),
        ("name: x\nrows: [{name: a}, {name: ' '}]\n", "row 2: name must be a non-empty string, got ' '"),
        ("name: x\nrows: [{name: [a, b]}]\n", "row 1: name must be a non-empty string, got ['a', 'b']"),
        ("name: null\nrows: [{name: a}]\n", ": name must be a non-empty string, got None"),
        ("name: x\ntitle: null\nrows: [{name: a}]\n", ": title must be a non-empty string, got None"),
        ("name: \"it's\"\nrows: [{name: a}]\n", ": name must not contain a single quote, got \"it's\""),
        ("name: x\nbase: {learning_rate: 0.01}\nrows: [{name: a}]\n", "bad.yaml: base: learning_rate: unknown parameter; known: model, dataset,"),
    ],
)
def test_bad_experiment_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DeeprecError, match=re.escape(message)) as err:
        load_experiment(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_a_missing_csv_dataset_is_refused_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # csv:PATH is relative to the current folder, as when the row trains
    (tmp_path / "ratings.csv").write_text("user,item,rating\n1,1,5\n1,2,3\n2,1,4\n")
    path = tmp_path / "csv.yaml"
    path.write_text("name: x\nbase: {dataset: 'csv:ratings.csv'}\nrows: [{name: a}, {name: b, params: {dataset: 'csv:other.csv'}}]\n")
    with pytest.raises(DeeprecError) as err:
        load_experiment(path)
    assert str(err.value) == f"{path}: row 'b': dataset: other.csv: no such ratings file"
    path.write_text("name: x\nbase: {dataset: 'csv:missing.csv'}\nrows: [{name: a}]\n")
    with pytest.raises(DeeprecError) as err:
        load_experiment(path)
    assert str(err.value) == f"{path}: base: dataset: missing.csv: no such ratings file"
    assert load_experiment(path, check_data=False).base["dataset"] == "csv:missing.csv"  # `deeprec report` reads runs only
    path.write_text("name: x\nbase: {dataset: 'csv:ratings.csv'}\nrows: [{name: a}, {name: b, params: {arch: '4'}}]\n")
    assert [r.name for r in load_experiment(path).rows] == ["a", "b"]


def test_a_seed_past_the_last_is_refused_before_the_parent_run(mlflow_store: Path, capsys: pytest.CaptureFixture) -> None:
    (mlflow_store / "seed.yaml").write_text("name: seedy\nbase: {seed: 4294967295}\nrows: [{name: a}]\n")
    assert main(["sweep", "seed.yaml", "--seeds", "2"]) == 2  # seed index 1 would be 2**32
    err = capsys.readouterr().err.strip()
    assert err == "deeprec: error: seed.yaml: row 'a' with --seeds 2: seed: must be an integer <= 4294967295, got 4294967296"
    assert MlflowClient().search_runs(["0"]) == []  # no parent run left behind


def test_a_sweep_whose_every_run_failed_ends_its_parent_failed(mlflow_store: Path, capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from deeprec import sweep
    from deeprec.errors import DeeprecError

    write_ml1m(mlflow_store / "data" / "ml-1m", synthetic_ratings(n_users=20, n_items=12, per_user=(6, 10), seed=3))
    (mlflow_store / "one.yaml").write_text("name: one\nbase: {orientation: user, arch: '4', batch_size: 8, epochs: 1}\nrows: [{name: a}]\n")

    def diverged(job, loaded=None):
        raise DeeprecError("training diverged")

    with monkeypatch.context() as patched:
        patched.setattr(sweep, "_run_job", diverged)
        assert main(["sweep", "one.yaml", "--json"]) == 1
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    parent = MlflowClient().get_run(summary["parent_run_id"])
    assert parent.info.status == "FAILED" and parent.data.tags["failure"].startswith("all 1 run(s) of this invocation failed")
    assert main(["report", "one.yaml"]) == 2  # nothing to report: the parent stays FAILED, no empty table on it (it was FINISHED)
    assert MlflowClient().get_run(summary["parent_run_id"]).info.status == "FAILED"
    assert not MlflowClient().list_artifacts(summary["parent_run_id"], "report")
    assert main(["sweep", "one.yaml", "--json"]) == 0  # run again: the row trains, the parent is FINISHED again
    parent = MlflowClient().get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and "failure" not in parent.data.tags


@pytest.fixture
def workspace(mlflow_store: Path) -> Path:
    """Tiny ML-1M-format data, a private tracking store and a two-row experiment file."""
    write_ml1m(mlflow_store / "data" / "ml-1m", synthetic_ratings(n_users=30, n_items=20, per_user=(10, 16), seed=8))
    (mlflow_store / "tiny.yaml").write_text(
        "name: tiny\ntitle: Tiny table\nmetric: test_rmse_user_avg\n"
        "base: {orientation: user, arch: '4', batch_size: 8, epochs: 3, patience: 0}\n"
        "rows:\n  - {name: zero, published: 0.9, params: {fill: zero}}\n  - {name: average, published: 0.8, params: {fill: row-mean}}\n"
    )
    return mlflow_store


def test_sweep_resume_and_report(workspace: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["report", "tiny.yaml"]) == 2  # before any sweep: one line, not a table of dashes
    err = capsys.readouterr().err.strip()
    assert err.startswith("deeprec: error: no finished runs of experiment 'tiny' in the tracking store ") and "\n" not in err
    assert err.endswith("run `deeprec sweep tiny.yaml` first, from the same folder or with the same MLFLOW_TRACKING_URI "
                        "(runs of an earlier version of a row, or on other data, do not count)")
    loads = []
    load = datasets.load
    monkeypatch.setattr(datasets, "load", lambda *a, **k: loads.append(a) or load(*a, **k))
    with caplog.at_level(logging.INFO, logger="deeprec.sweep"):
        assert main(["sweep", "tiny.yaml", "--seeds", "2", "--epochs", "1", "--json"]) == 0
    assert len(loads) == 1  # four runs on one dataset: read and checksummed once
    progress = [r.getMessage() for r in caplog.records if " done: " in r.getMessage()]
    assert [line.split(": ")[1] for line in progress] == ["1 of 4 done", "2 of 4 done", "3 of 4 done", "4 of 4 done"]
    assert re.fullmatch(r"sweep tiny: 1 of 4 done: zero · seed 42: test_rmse_user_avg [0-9.]+, best epoch 1, [0-9.]+ min", progress[0])
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["ran"], first["skipped"], first["smoke"]) == (4, 0, True)
    client = MlflowClient()
    runs = client.search_runs(["0"], f"tags.`{TAG_SWEEP}` = 'tiny' and tags.`mlflow.parentRunId` = '{first['parent_run_id']}'")
    assert len(runs) == 4 and {r.data.tags[TAG_SMOKE] for r in runs} == {"true"}
    assert {r.data.params["epochs"] for r in runs} == {"1"} and {r.data.params["seed"] for r in runs} == {"42", "43"}
    assert {r.info.run_name for r in runs} == {"zero · seed 42", "zero · seed 43", "average · seed 42", "average · seed 43"}

    assert main(["sweep", "tiny.yaml", "--seeds", "2", "--epochs", "1", "--json"]) == 0  # again: nothing left to do
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["ran"], again["skipped"], again["parent_run_id"]) == (0, 4, first["parent_run_id"])

    assert main(["report", "tiny.yaml", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rows = json.loads(out[-1])["rows"]
    assert [r["name"] for r in rows] == ["zero", "average"] and all(r["smoke"] and r["runs"] == 2 for r in rows)
    smoke_values = [
        r.data.metrics["test_rmse_user_avg"] for r in runs if r.data.tags[TAG_ROW] == "zero"
    ]
    assert rows[0]["measured_user_avg"] == pytest.approx(sum(smoke_values) / 2)
    assert rows[0]["best_epoch"] == 1.0  # one epoch each
    minutes = [(r.info.end_time - r.info.start_time) / 60_000 for r in runs if r.data.tags[TAG_ROW] == "zero"]
    assert rows[0]["minutes"] == pytest.approx(sum(minutes) / 2)
    assert any("| zero | 0.9000 |" in line and "2 (smoke) | 1 |" in line for line in out)
    assert any(re.fullmatch(r"4 runs, 0 h [0-9]+ min of run time in all\.", line) for line in out)

    # A full run of the same sweep (no --epochs) is never averaged with the smoke runs.
    assert main(["sweep", "tiny.yaml", "--seeds", "1", "--json"]) == 0
    capsys.readouterr()
    assert main(["report", "tiny.yaml", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert all(not r["smoke"] and r["runs"] == 1 for r in rows)
    parent_artifacts = {a.path for a in client.list_artifacts(first["parent_run_id"], "report")}
    assert {"report/tiny.md", "report/tiny.png"} <= parent_artifacts


def test_an_edited_row_runs_again_and_its_old_runs_leave_the_report(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["sweep", "tiny.yaml", "--epochs", "1", "--json"]) == 0
    capsys.readouterr()
    path = workspace / "tiny.yaml"
    path.write_text(path.read_text().replace("params: {fill: row-mean}", "params: {fill: row-mean, l2: 0.01}"))

    assert main(["sweep", "tiny.yaml", "--epochs", "1", "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["ran"], again["skipped"]) == (1, 1)  # only the edited row
    logged = mlflow.artifacts.download_artifacts(run_id=again["parent_run_id"], artifact_path="tiny.yaml", dst_path=str(workspace / "got"))
    assert "l2: 0.01" in Path(logged).read_text()  # the parent keeps the file as it is now, not as first swept
    runs = MlflowClient().search_runs(["0"], f"tags.`{TAG_SWEEP}` = 'tiny' and tags.`{TAG_ROW}` = 'average'")
    assert sorted(r.data.params["l2"] for r in runs) == ["0.0001", "0.01"]

    assert main(["report", "tiny.yaml", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]}
    assert rows["average"]["runs"] == 1 and rows["zero"]["runs"] == 1
    edited = next(r for r in runs if r.data.params["l2"] == "0.01")
    assert rows["average"]["measured_user_avg"] == pytest.approx(edited.data.metrics["test_rmse_user_avg"])


def test_other_smoke_epochs_or_other_ratings_are_not_finished_runs(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    """A smoke sweep with another --epochs, or any sweep after the ratings file changed in place,
    found every row finished and trained nothing; the report then showed the old numbers."""
    def sweep_json(*args: str) -> dict:
        assert main(["sweep", "tiny.yaml", *args, "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    def report_rows() -> dict:
        assert main(["report", "tiny.yaml", "--json"]) == 0
        return {r["name"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]}

    assert sweep_json("--epochs", "1")["ran"] == 2
    assert (sweep_json("--epochs", "2")["ran"], sweep_json("--epochs", "2")["ran"]) == (2, 0)  # was 0: "finished" at 1 epoch
    rows = report_rows()
    assert all(r["runs"] == 1 and r["smoke"] for r in rows.values())  # the latest --epochs, not 1 and 2 averaged
    runs = MlflowClient().search_runs(["0"], f"tags.`{TAG_SWEEP}` = 'tiny' and tags.`{TAG_ROW}` = 'zero' and params.epochs = '2'")
    assert rows["zero"]["measured_user_avg"] == pytest.approx(runs[0].data.metrics["test_rmse_user_avg"])

    ratings = workspace / "data" / "ml-1m" / "ratings.dat"
    ratings.write_text("".join(ratings.read_text().splitlines(keepends=True)[:-3]))  # the same path, other ratings
    assert sweep_json("--epochs", "2")["ran"] == 2  # was 0
    assert all(r["runs"] == 1 for r in report_rows().values())


def test_a_row_another_sweep_trained_is_copied_not_trained_again(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["sweep", "tiny.yaml", "--json"]) == 0
    capsys.readouterr()
    # A second table that starts from the same baseline (same config, other name), as the report's do.
    (workspace / "other.yaml").write_text(
        "name: other\ntitle: Other table\nmetric: test_rmse_user_avg\n"
        "base: {orientation: user, arch: '4', batch_size: 8, epochs: 3, patience: 0}\n"
        "rows:\n  - {name: baseline, published: null, params: {fill: zero}}\n  - {name: wider, published: null, params: {arch: '6'}}\n"
    )
    assert main(["sweep", "other.yaml", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["ran"], summary["reused"], summary["skipped"]) == (1, 1, 0)

    client = MlflowClient()
    source = client.search_runs(["0"], f"tags.`{TAG_SWEEP}` = 'tiny' and tags.`{TAG_ROW}` = 'zero'")[0]
    copy = client.search_runs(["0"], f"tags.`{TAG_SWEEP}` = 'other' and tags.`{TAG_ROW}` = 'baseline'")[0]
    assert copy.info.status == "FINISHED" and copy.data.tags[TAG_REUSED] == source.info.run_id
    assert copy.info.run_name == "baseline · seed 42"
    assert copy.data.tags["mlflow.parentRunId"] == summary["parent_run_id"]
    assert copy.data.metrics == source.data.metrics and copy.data.params == source.data.params
    assert [m.value for m in client.get_metric_history(copy.info.run_id, "valid_rmse")] == [
        m.value for m in client.get_metric_history(source.info.run_id, "valid_rmse")] and len(client.get_metric_history(copy.info.run_id, "valid_rmse")) == 3
    assert (copy.info.start_time, copy.info.end_time) == (source.info.start_time, source.info.end_time)
    assert {a.path for a in client.list_artifacts(copy.info.run_id)} == {a.path for a in client.list_artifacts(source.info.run_id)}
    assert [(d.dataset.name, d.dataset.digest) for d in copy.inputs.dataset_inputs] == [(d.dataset.name, d.dataset.digest) for d in source.inputs.dataset_inputs]
    assert copy.data.tags.get("mlflow.source.name") == source.data.tags.get("mlflow.source.name") is not None  # the code that measured it
    capsys.readouterr()
    assert main(["recommend", "--run-id", copy.info.run_id, "--user", "1"]) == 2  # the recommender stays with the source run
    assert capsys.readouterr().err.strip() == (f"deeprec: error: run {copy.info.run_id} has no recommender: it is a copy of run "
                                               f"{source.info.run_id}, which holds it; use --run-id {source.info.run_id}")
    other = load_experiment(workspace / "other.yaml")  # a copy of the copy names the run that trained (and holds the recommender)
    twice = client.get_run(_copy_run(copy, other, Job(other, "baseline", 0, None, summary["parent_run_id"]), summary["parent_run_id"]))
    assert twice.data.tags[TAG_REUSED] == source.info.run_id and f"logged in run {source.info.run_id}" in twice.data.tags["mlflow.note.content"]
    client.delete_run(twice.info.run_id)
    assert main(["report", "other.yaml", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]}
    assert rows["baseline"]["measured_user_avg"] == pytest.approx(source.data.metrics["test_rmse_user_avg"])

    # --no-reuse trains it; on the CPU the same config and seed give the same numbers.
    baseline_only = (workspace / "other.yaml").read_text().split("  - {name: wider")[0]
    (workspace / "third.yaml").write_text(baseline_only.replace("name: other", "name: third"))
    assert main(["sweep", "third.yaml", "--no-reuse", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reused"] == 0
    retrained = client.search_runs(["0"], f"tags.`{TAG_SWEEP}` = 'third' and tags.`{TAG_ROW}` = 'baseline'")[0]
    assert TAG_REUSED not in retrained.data.tags
    assert retrained.data.metrics["test_rmse_user_avg"] == pytest.approx(source.data.metrics["test_rmse_user_avg"], rel=1e-6)

    # Runs of another deeprec version are not reused: it may train or evaluate differently.
    for run in (source, copy, retrained):
        client.set_tag(run.info.run_id, "deeprec_version", "0.0.1")
    (workspace / "fifth.yaml").write_text(baseline_only.replace("name: other", "name: fifth"))
    assert main(["sweep", "fifth.yaml", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reused"] == 0

    # Other data under the same dataset name: nothing is reused.
    write_ml1m(workspace / "data" / "ml-1m", synthetic_ratings(n_users=30, n_items=20, per_user=(10, 16), seed=9))
    (workspace / "fourth.yaml").write_text(baseline_only.replace("name: other", "name: fourth"))
    assert main(["sweep", "fourth.yaml", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reused"] == 0


def test_a_cross_validation_row(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    """A `cv:` row runs `deeprec cv --refit --ensemble` under the sweep's parent, the report shows
    its fold ensemble, and it is neither copied into nor copied from a training row."""
    path = workspace / "tiny.yaml"
    assert main(["sweep", "tiny.yaml", "--json"]) == 0  # the training rows first: they must not stand in for the cv row
    capsys.readouterr()
    path.write_text(path.read_text() + "  - {name: folds, published: 0.85, params: {fill: zero, lr: 0.05, epochs: 8}, cv: {folds: 3, ensemble: true}}\n")
    assert main(["sweep", "tiny.yaml", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["ran"], summary["reused"], summary["skipped"]) == (1, 0, 2)

    client = MlflowClient()
    (run,) = client.search_runs(["0"], f"tags.`{TAG_SWEEP}` = 'tiny' and tags.`{TAG_ROW}` = 'folds'")
    assert run.data.tags["mlflow.parentRunId"] == summary["parent_run_id"] and run.info.run_name == "folds · seed 42"
    assert (run.data.params["folds"], run.data.params["ensemble"], run.data.params["refit"], run.data.params["lr"]) == ("3", "true", "true", "0.05")
    nested = client.search_runs(["0"], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert sorted(r.info.run_name for r in nested) == ["fold 1/3", "fold 2/3", "fold 3/3", "refit"]
    metrics = run.data.metrics
    assert metrics["ensemble_test_rmse"] != metrics["test_rmse"]  # the fold average, not the refit

    assert main(["report", "tiny.yaml", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]}
    assert rows["folds"]["measured_rmse"] == pytest.approx(metrics["ensemble_test_rmse"])
    assert rows["folds"]["measured_user_avg"] == pytest.approx(metrics["ensemble_test_rmse_user_avg"])
    assert rows["folds"]["best_epoch"] == metrics["cv_chosen_epochs"] and rows["folds"]["runs"] == 1
    zero = client.search_runs(["0"], f"tags.`{TAG_SWEEP}` = 'tiny' and tags.`{TAG_ROW}` = 'zero'")[0]
    assert rows["zero"]["measured_user_avg"] == pytest.approx(zero.data.metrics["test_rmse_user_avg"])

    # Without `ensemble` the row is the refit alone: a changed cv block is another row's config.
    path.write_text(path.read_text().replace("cv: {folds: 3, ensemble: true}", "cv: {folds: 2}"))
    assert main(["sweep", "tiny.yaml", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ran"] == 1
    assert main(["report", "tiny.yaml", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]}
    refit_only = next(r for r in client.search_runs(["0"], f"tags.`{TAG_ROW}` = 'folds'") if r.data.params["folds"] == "2")
    assert "ensemble_test_rmse" not in refit_only.data.metrics
    assert rows["folds"]["runs"] == 1 and rows["folds"]["measured_rmse"] == pytest.approx(refit_only.data.metrics["test_rmse"])

    # A training row with the cv row's config, in another sweep, is trained, not copied from it.
    (workspace / "other.yaml").write_text(path.read_text().replace("name: tiny", "name: other").replace(", cv: {folds: 2}", ""))
    assert main(["sweep", "other.yaml", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["reused"], summary["ran"]) == (2, 1)  # zero and average copied; folds, now a training row, trained
    (copy_of_none,) = client.search_runs(["0"], f"tags.`{TAG_SWEEP}` = 'other' and tags.`{TAG_ROW}` = 'folds'")
    assert TAG_REUSED not in copy_of_none.data.tags and "folds" not in copy_of_none.data.params


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_terminated_sweep_marks_its_runs_killed_and_starts_no_more(workspace: Path, parallel: int) -> None:
    """SIGTERM (kill, a scheduler, the end of a session) stops a sweep like Ctrl-C: the runs in
    progress end KILLED, not RUNNING for ever, and no queued row starts. The first row is a
    cross-validation, whose fold run ends KILLED too."""
    import signal
    import subprocess
    import sys
    import time

    path = workspace / "tiny.yaml"
    path.write_text(
        path.read_text().replace("epochs: 3", "epochs: 100000").replace("params: {fill: zero}}", "params: {fill: zero}, cv: {folds: 2}}")
        + "  - {name: third, published: null, params: {arch: '5'}}\n"
    )
    sweep = subprocess.Popen([sys.executable, "-m", "deeprec", "sweep", "tiny.yaml", "--max-parallel", str(parallel)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient()
    query = f"tags.`{TAG_SWEEP}` = 'tiny' and tags.`deeprec.kind` = 'sweep-run'"
    deadline = time.monotonic() + 120
    while len([r for r in client.search_runs(["0"], query) if r.info.status == "RUNNING"]) < parallel:
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        time.sleep(0.5)
    time.sleep(1)  # inside the training loop
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, err
    runs = client.search_runs(["0"], query)
    assert len(runs) == parallel and {r.info.status for r in runs} == {"KILLED"}, err
    (cv_run,) = [r for r in runs if r.data.tags[TAG_ROW] == "zero"]
    (fold,) = client.search_runs(["0"], f"tags.`mlflow.parentRunId` = '{cv_run.info.run_id}'")
    assert fold.info.run_name == "fold 1/2" and fold.info.status == "KILLED" and cv_run.data.tags["failure"] == "interrupted by the user"


def test_a_second_signal_stops_a_parallel_sweep_at_once(workspace: Path) -> None:
    """Ctrl-C again while the sweep waits for its workers (what users do) kills them and exits:
    it used to leave the pool half shut down, and the interpreter waited on it for ever."""
    import signal
    import subprocess
    import sys
    import time

    path = workspace / "tiny.yaml"
    path.write_text(path.read_text().replace("epochs: 3", "epochs: 100000"))
    sweep = subprocess.Popen([sys.executable, "-m", "deeprec", "sweep", "tiny.yaml", "--max-parallel", "2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = MlflowClient()
    query = f"tags.`{TAG_SWEEP}` = 'tiny' and tags.`deeprec.kind` = 'sweep-run'"
    deadline = time.monotonic() + 120
    while len([r for r in client.search_runs(["0"], query) if r.info.status == "RUNNING"]) < 2:
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
    sweep.send_signal(signal.SIGINT)
    for line in sweep.stderr:  # the second signal while the sweep waits for its workers
        if line.startswith("sweep stopped: waiting for the workers"):
            sweep.send_signal(signal.SIGINT)
            break
    rest = sweep.stderr.read()
    assert sweep.wait(timeout=60) == 130, rest
    assert "sweep stopped at once" in rest and "Traceback" not in rest
    # Whether a worker ended its run before it was killed or the sweep ended it, none is left RUNNING.
    runs = client.search_runs(["0"], query)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"KILLED"}, rest
    assert all(r.data.tags["failure"].startswith("interrupted by the user") for r in runs)


def test_parallel_sweep_workers_get_their_share_of_the_cores() -> None:
    """--max-parallel P starts workers with cores/P TensorFlow threads each (the pool's
    initializer); TF's default in each would oversubscribe the machine P times over."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import tensorflow as tf

    from deeprec.sweep import _init_worker

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(1,)) as pool:
        intra = pool.submit(tf.config.threading.get_intra_op_parallelism_threads).result()
        inter = pool.submit(tf.config.threading.get_inter_op_parallelism_threads).result()
    assert (intra, inter) == (1, 1)
