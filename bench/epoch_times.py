"""Seconds per epoch on ML-1M (holdout) for the models of the README's results table.

Prints one JSON line per model (median over epochs 2..N, so graph tracing in epoch 1 is left out;
`train_s` is the training part, the rest is the per-epoch train/validation RMSE pass) and a summary
line. Run on an otherwise idle machine:

    DEEPREC_DATA_DIR=../shared/data python bench/epoch_times.py [EPOCHS]
"""

from __future__ import annotations

import json
import statistics
import sys

from deeprec import datasets
from deeprec.config import TrainConfig
from deeprec.matrix import build_matrices
from deeprec.splits import make_split
from deeprec.train import TrainingData, fit

MODELS = {
    "I-AutoRec 500": dict(orientation="item"),
    "I-AutoRec 500 bfloat16": dict(orientation="item", precision="bfloat16"),
    "U-AutoRec 500": dict(orientation="user"),
    "Deep [512,256,512] SELU": dict(orientation="user", arch="512,256,512", activation="selu", dropout=0.8),
}


def main(epochs: int = 6) -> None:
    dataset = datasets.load(datasets.get_spec("ml-1m"))
    split = make_split("holdout", dataset.ratings.users)
    results = {}
    for name, overrides in MODELS.items():
        cfg = TrainConfig(epochs=epochs, patience=0, **overrides).validate()
        matrices = build_matrices(dataset.ratings, split, cfg.orientation, cfg.fill)
        _, history = fit(cfg, TrainingData(matrices, dataset.ratings.scale))
        later = history[1:] or history
        results[name] = {
            "seconds_per_epoch": round(statistics.median(h["seconds"] for h in later), 3),
            "train_s": round(statistics.median(h["train_seconds"] for h in later), 3),
        }
        print(json.dumps({"model": name, **results[name]}), flush=True)
    print("summary: " + "; ".join(f"{name} {r['seconds_per_epoch']:.2f} s/epoch" for name, r in results.items()))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
