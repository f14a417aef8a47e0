"""Wall time from start to a test RMSE target for I-AutoRec on ML-1M (holdout): deeprec against the
notebook-style reference (bench/reference.py), in the same run, same model and hyper-parameters.

The clock starts before the matrices are built (the ratings file is read once, before both) and
stops at the end of the first epoch whose test RMSE (per rating, clipped, over the test ratings of
users and items seen in training) is at or below the target. Both trainers evaluate once per
epoch: deeprec through its usual per-epoch pass, with the test ratings in the validation slot;
the reference with `Model.predict` on the dense matrix. This is a speed benchmark, so it watches
the test split on purpose; no model is selected with it.

    DEEPREC_DATA_DIR=../shared/data python bench/time_to_target.py [--target 0.85] [--max-epochs 150] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time

import keras
import numpy as np
import scipy.sparse as sp

from reference import load_dataset_or_exit, reference_fit

from deeprec import datasets
from deeprec.config import TrainConfig
from deeprec.matrix import build_matrices
from deeprec.splits import make_split
from deeprec.train import TrainingData, fit

log = logging.getLogger("bench.time_to_target")


class TargetReached(Exception):
    """Raised from the epoch callback to stop deeprec's trainer at the target."""


def test_rmse(predictions: np.ndarray, test: sp.csr_matrix, scale: tuple[float, float]) -> float:
    rows = np.repeat(np.arange(test.shape[0]), np.diff(test.indptr))
    errors = np.clip(predictions[rows, test.indices], *scale) - test.data
    return math.sqrt(float(np.mean(errors**2)))


def time_deeprec(cfg: TrainConfig, dataset: datasets.Dataset, split, target: float) -> dict:
    start = time.perf_counter()
    matrices = build_matrices(dataset.ratings, split, cfg.orientation, cfg.fill)
    # The test ratings go in the validation slot, so the per-epoch pass measures them.
    data = TrainingData(dataclasses.replace(matrices, valid=matrices.test), dataset.ratings.scale)
    reached: dict = {}

    def on_epoch(record: dict) -> None:
        if record["valid_rmse"] <= target:
            reached.update(epoch=record["epoch"], rmse=record["valid_rmse"], seconds=time.perf_counter() - start)
            raise TargetReached

    try:
        _, history = fit(cfg, data, on_epoch)
    except TargetReached:
        return reached
    return {"epoch": None, "rmse": min(h["valid_rmse"] for h in history), "seconds": time.perf_counter() - start}


def time_reference(cfg: TrainConfig, dataset: datasets.Dataset, split, target: float) -> dict:
    start = time.perf_counter()
    matrices = build_matrices(dataset.ratings, split, cfg.orientation, cfg.fill, dense_cache=False)
    x = matrices.train.values.toarray()
    reached: dict = {"epoch": None, "rmse": math.inf}

    def on_epoch(epoch: int, model: keras.Model) -> bool:
        rmse = test_rmse(model.predict(x, batch_size=1024, verbose=0), matrices.test, dataset.ratings.scale)
        reached["rmse"] = min(reached["rmse"], rmse)
        if rmse <= target:
            reached.update(epoch=epoch, rmse=rmse, seconds=time.perf_counter() - start)
            return True
        return False

    reference_fit(cfg, matrices.train.values, None, cfg.epochs, on_epoch)
    reached.setdefault("seconds", time.perf_counter() - start)
    return reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--target", type=float, default=0.85, help="test RMSE to reach (default 0.85)")
    parser.add_argument("--max-epochs", type=int, default=150, help="give up after this many epochs (default 150)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("deeprec").setLevel(logging.WARNING)
    if not args.target > 0 or args.max_epochs < 1:
        print("error: --target must be positive and --max-epochs at least 1", file=sys.stderr)
        return 2
    dataset = load_dataset_or_exit(args.dataset)
    split = make_split("holdout", dataset.ratings.users)
    cfg = TrainConfig(orientation="item", epochs=args.max_epochs, patience=0).validate()  # I-AutoRec 500, the defaults
    result = {"target": args.target, "deeprec": time_deeprec(cfg, dataset, split, args.target)}
    log.info("deeprec: %s", result["deeprec"])
    result["reference"] = time_reference(cfg, dataset, split, args.target)
    log.info("reference: %s", result["reference"])
    for name in ("deeprec", "reference"):
        r = result[name]
        status = f"epoch {r['epoch']}" if r["epoch"] else f"not reached in {args.max_epochs} epochs (best {r['rmse']:.4f})"
        print(f"{name:<10} {r['seconds']:7.1f} s to test RMSE <= {args.target} ({status}, RMSE {r['rmse']:.4f})")
    ours, theirs = result["deeprec"], result["reference"]
    if ours["epoch"] and theirs["epoch"]:
        result["speedup"] = round(theirs["seconds"] / ours["seconds"], 2)
        print(f"summary: deeprec reaches {args.target} in {ours['seconds']:.0f} s, the reference in {theirs['seconds']:.0f} s ({result['speedup']:.2f}x)")
    else:
        print(f"summary: target {args.target} not reached by both within {args.max_epochs} epochs")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
