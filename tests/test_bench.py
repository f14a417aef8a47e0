"""The benchmark scripts' own logic: FLOP counts, the synthetic data, and the --json contracts.

They are not timed here (speed belongs in bench/, not in tests); the end-to-end runs use tiny
ML-1M-format data so they check that the scripts work and print what they promise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import synthetic_ratings, write_ml1m
from deeprec.config import TrainConfig

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import reference  # noqa: E402
import scale  # noqa: E402


def test_gflop_per_epoch_against_hand_count() -> None:
    cfg = TrainConfig(arch="500")
    rows, cols = 6040, 3706
    forward = 2 * cols * 500 * 2  # two layers, 2 FLOP per multiply-add
    train = 3 * forward - 2 * cols * 500  # the first layer's input needs no gradient
    assert reference.gflop_per_epoch(cfg, (rows, cols)) == pytest.approx(rows * (train + forward) / 1e9)
    deep = TrainConfig(arch="256,512,256")
    assert reference.layer_sizes(deep, 10) == [10, 256, 512, 256, 10]


def test_notebook_loss_ignores_zeros_and_averages_per_rating() -> None:
    y = np.array([[5.0, 0.0, 3.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    p = np.array([[4.0, 9.0, 3.0], [9.0, 9.0, 3.0]], dtype=np.float32)
    assert float(reference.notebook_masked_mse(y, p)) == pytest.approx((1 + 0 + 4) / 3)


def test_synthetic_ratings_are_movielens_like() -> None:
    users, items, ratings = scale.synthetic_ratings(300, 200, 12_000, seed=1)
    assert len(ratings) == 12_000
    assert len(np.unique(users * 200 + items)) == 12_000  # unique (user, item) pairs
    assert set(np.unique(ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0} and 3.2 < ratings.mean() < 3.9
    popularity = np.sort(np.bincount(items, minlength=200))[::-1]
    assert popularity[:20].sum() > 3 * popularity[-20:].sum()  # a long tail, not uniform
    assert users.max() < 300 and items.max() < 200


def test_growth_exponent_is_the_log_log_slope() -> None:
    assert scale.growth_exponent([1e5, 1e6, 1e7], [1.0, 10.0, 100.0]) == pytest.approx(1.0)
    assert scale.growth_exponent([1e5, 1e6], [1.0, 100.0]) == pytest.approx(2.0)


@pytest.fixture
def tiny_ml1m(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_ml1m(tmp_path / "data" / "ml-1m", synthetic_ratings(n_users=60, n_items=40, per_user=(12, 25), seed=3))
    monkeypatch.setenv("DEEPREC_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_speed_quick_json_contract(tiny_ml1m: Path, capsys: pytest.CaptureFixture) -> None:
    import speed

    assert speed.main(["--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["matmul_gflops"]) == {"float32", "bfloat16"} and result["matmul_gflops"]["float32"] > 0
    assert set(result["models"]) == set(speed.MODELS)
    for figures in result["models"].values():
        assert {"seconds_per_epoch", "reference_seconds_per_epoch", "speedup", "gflop_per_epoch", "efficiency"} <= set(figures)
        assert figures["speedup"] == pytest.approx(figures["reference_seconds_per_epoch"] / figures["seconds_per_epoch"], rel=0.05)
        # efficiency against the higher of the process's two probes, never a slow moment's
        assert figures["matmul_gflops"]["float32"] == max(figures["matmul_probes"]["float32"])


def test_speed_rejects_an_unknown_dataset(tiny_ml1m: Path, capsys: pytest.CaptureFixture) -> None:
    import speed

    with pytest.raises(SystemExit) as stop:
        speed.main(["--dataset", "ml-99m"])
    assert stop.value.code == 2
    assert "ml-99m" in capsys.readouterr().err


def test_columns_per_epoch_counts_every_column_per_step_and_the_touched_ones() -> None:
    dense = np.array([[1, 0, 0, 0, 0], [0, 2, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 3, 0], [0, 0, 0, 0, 0]], np.float32)
    csr = sp.csr_matrix(dense)
    assert scale.columns_per_epoch(csr, batch_size=5) == (5, 3)  # one step; columns 0, 1 and 3 have ratings
    assert scale.columns_per_epoch(csr, batch_size=1) == (25, 5)  # five steps; each row's own columns
    updated, touched = scale.columns_per_epoch(csr, batch_size=2)
    assert updated == 15 and 3 <= touched <= 5  # three steps; a shared column counts once per step


def test_scale_rejects_an_unknown_shape(capsys: pytest.CaptureFixture) -> None:
    assert scale.main(["--shapes", "ml-5m"]) == 2
    assert "ml-5m" in capsys.readouterr().err


def test_kernel_work_times_each_shape(capsys: pytest.CaptureFixture) -> None:
    import kernel_work

    assert kernel_work.main(["--shapes", "ml-100k,ml-1m", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("ml-")]
    assert [line.split(":")[0] for line in lines] == ["ml-100k", "ml-1m"]
    assert "1682 items" in lines[0] and "4 steps" in lines[0]  # 943 users / 256, rounded up
    milliseconds = [float(line.split(": ")[2].split(" ms")[0]) for line in lines]
    assert all(ms > 0 for ms in milliseconds)
    assert out.strip().splitlines()[-1].startswith("summary: whole-kernel work ml-100k")


def test_kernel_work_rejects_an_unknown_shape(capsys: pytest.CaptureFixture) -> None:
    import kernel_work

    assert kernel_work.main(["--shapes", "ml-5m"]) == 2
    assert "ml-5m" in capsys.readouterr().err


def test_sparse_step_times_a_step_and_an_evaluation(capsys: pytest.CaptureFixture) -> None:
    import sparse_step

    assert sparse_step.main(["--shape", "ml-100k", "--orientation", "item", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "ml-100k item:" in out and "x 7 steps" in out  # 1,682 items / 256, rounded up
    assert out.strip().splitlines()[-1].startswith("summary: ml-100k item-AutoRec sparse step")


def test_sparse_step_rejects_an_unknown_orientation(capsys: pytest.CaptureFixture) -> None:
    import sparse_step

    assert sparse_step.main(["--orientation", "diagonal"]) == 2
    assert "--orientation" in capsys.readouterr().err


def test_epoch_parts_takes_the_step_apart(tiny_ml1m: Path, capsys: pytest.CaptureFixture) -> None:
    import epoch_parts

    assert epoch_parts.main(["--model", "user", "--repeats", "1", "--matmul-n", "256", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith("summary: U-AutoRec 500 epoch ")
    result = json.loads(out[-1])
    seconds, costs = result["seconds"], result["costs"]
    assert set(seconds) == {"forward", "+ backward", "+ loss", "full step", "evaluation"} and min(seconds.values()) > 0
    assert costs["backward"] == pytest.approx(seconds["+ backward"] - seconds["forward"], abs=2e-4)
    assert result["epoch_seconds"] == pytest.approx(seconds["full step"] + seconds["evaluation"], abs=2e-4)
    # U-AutoRec 500 on rows x columns: a forward pass is 2 x (columns x 500) x 2 FLOP per row;
    # training adds the weight gradients of both layers and the input gradient of the second
    rows, columns = result["shape"]
    assert result["gflop"]["forward"] == pytest.approx(rows * 4 * columns * 500 / 1e9, rel=1e-4)
    assert result["gflop"]["training"] == pytest.approx(2.5 * result["gflop"]["forward"], rel=1e-4)


def test_epoch_parts_rejects_an_unknown_model(capsys: pytest.CaptureFixture) -> None:
    import epoch_parts

    with pytest.raises(SystemExit) as stop:
        epoch_parts.main(["--model", "wide"])
    assert stop.value.code == 2 and "invalid choice: 'wide'" in capsys.readouterr().err


@pytest.mark.parametrize("device_data", [False, True])
def test_gpu_bench_json_contract_on_the_cpu(device_data: bool, capsys: pytest.CaptureFixture) -> None:
    import gpu

    args = ["--shapes", "ml-100k", "--model", "U-AutoRec 500", "--precisions", "float32", "--epochs", "2", "--matmul-n", "256", "--json"]
    assert gpu.main(args + ["--device-data"] * device_data) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith("summary: 1 cases on cpu (tensorflow)")
    result = json.loads(out[-1])
    assert result["backend"] == "tensorflow" and result["device"] == "cpu" and result["device_peak_gib"] is None
    assert set(result["matmul_gflops"]) == {"float32", "bfloat16"} and min(result["matmul_gflops"].values()) > 0
    (name, case), = result["cases"].items()
    assert name == "ml-100k U-AutoRec 500 float32" and case["batch_size"] == 256 and case["epochs"] == 2
    assert case["data"] == ("device tensors" if device_data else "host arrays")
    # U-AutoRec 500 on the users' rows (943 at the ML-100K shape): forward 4 x columns x 500 FLOP a row,
    # training 2.5 forward passes, plus the validation forward pass
    columns = round(case["gflop_per_epoch"] * 1e9 / (943 * 3.5 * 4 * 500))
    assert 1_600 <= columns <= 1_682
    assert case["efficiency"] == pytest.approx(case["gflop_per_epoch"] / case["seconds_per_epoch"] / result["matmul_gflops"]["float32"], rel=0.02)
    assert 0.7 < case["valid_rmse"] < 2.0  # ratings on a 1..5 scale, after two epochs


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shapes", "ml-5m"], "unknown shape 'ml-5m'"),
        (["--precisions", "float16"], "unknown precision 'float16'"),
        (["--epochs", "1"], "--epochs must be at least 2"),
        (["--batch-size", "-4"], "must not be negative"),
    ],
)
def test_gpu_bench_rejects_bad_options_before_any_work(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    import gpu

    assert gpu.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
