"""Milliseconds per training step and seconds per evaluation of the sparse path
(`deeprec/sparse.py`) at a scale shape, on bench/scale.py's synthetic data.

    python bench/sparse_step.py [--shape ml-10m] [--orientation user] [--steps 30]

It builds the holdout split and the CSR matrices like bench/scale.py, then times `--steps`
training steps of 256 rows (after one that traces the step) and one pass of the per-epoch
train/validation RMSE. Used to measure each change to the sparse path.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from scale import ORIENTATIONS, SHAPES, synthetic_ratings

from deeprec import sparse
from deeprec.config import TrainConfig
from deeprec.matrix import build_matrices
from deeprec.optimizers import make_optimizer
from deeprec.ratings import Ratings
from deeprec.splits import make_split
from deeprec.train import TrainingData, build_model

log = logging.getLogger("bench.sparse_step")


def measure(shape: str, orientation: str, steps: int) -> dict[str, float]:
    n_users, n_items, n_ratings = SHAPES[shape]
    users, items, values = synthetic_ratings(n_users, n_items, n_ratings)
    ratings = Ratings(users, items, values, None, (1.0, 5.0), Path(f"synthetic-{shape}"))
    cfg = TrainConfig(orientation=orientation, epochs=1, patience=0).validate()
    matrices = build_matrices(ratings, make_split("holdout", ratings.users), cfg.orientation, cfg.fill, dense_cache=False)
    data = TrainingData(matrices, ratings.scale)
    model = build_model(cfg, data)
    rows = sparse.RaggedRows(data.train.values)
    stepper = sparse.SparseStepper(cfg, model, rows, make_optimizer(cfg))
    step = stepper.step
    n_rows = data.train.shape[0]
    order = np.random.default_rng(0).permutation(n_rows)
    batches = [order[start : start + cfg.batch_size] for start in range(0, n_rows, cfg.batch_size)]
    float(step(tf.constant(batches[0])))  # trace
    timed = [batches[1 + i % (len(batches) - 1)] for i in range(steps)] if len(batches) > 1 else batches * steps
    tick = time.perf_counter()
    for batch in timed:
        float(step(tf.constant(batch)))
    step_seconds = (time.perf_counter() - tick) / steps
    evaluate = sparse.SparseEvaluator(model, rows, {"train_rmse": data.train.values, "valid_rmse": matrices.valid}, ratings.scale)
    tick = time.perf_counter()
    stepper.write_back()  # as fit does before each evaluation
    evaluate(n_rows, stepper.output_kernel_t)
    return {"ms_per_step": 1000 * step_seconds, "steps_per_epoch": len(batches), "eval_seconds": time.perf_counter() - tick, "train_ratings": data.train.nnz}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="ml-10m", help=f"one of {', '.join(SHAPES)}")
    parser.add_argument("--orientation", default="user", help=f"one of {', '.join(ORIENTATIONS)}")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.shape not in SHAPES or args.orientation not in ORIENTATIONS or args.steps < 1:
        print(f"error: --shape from {', '.join(SHAPES)}, --orientation from {', '.join(ORIENTATIONS)}, --steps >= 1", file=sys.stderr)
        return 2
    result = measure(args.shape, args.orientation, args.steps)
    epoch = result["ms_per_step"] * result["steps_per_epoch"] / 1000
    print(f"{args.shape} {args.orientation}: {result['ms_per_step']:.1f} ms per step x {result['steps_per_epoch']} steps = {epoch:.1f} s of training per epoch; "
          f"evaluation {result['eval_seconds']:.1f} s ({result['train_ratings']:,} training ratings)")
    print(f"summary: {args.shape} {args.orientation}-AutoRec sparse step {result['ms_per_step']:.1f} ms, evaluation {result['eval_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
