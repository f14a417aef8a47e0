"""The `deeprec data` commands as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_lines, write_ml1m, write_ratings_csv
from deeprec.cli import main


def run_cli(*args: str, env_data_dir: Path | None = None) -> subprocess.CompletedProcess:
    env = None
    if env_data_dir is not None:
        import os

        env = {**os.environ, "DEEPREC_DATA_DIR": str(env_data_dir)}
    return subprocess.run([sys.executable, "-m", "deeprec", *args], capture_output=True, text=True, env=env, timeout=120)


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
