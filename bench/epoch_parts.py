"""Where a model's ML-1M epoch goes: the training step taken apart, against the matmul rate.

Each part is a compiled loop over one epoch's batches (the same loop deeprec's trainer runs), each
adding one piece of the step to the one before:

- forward: the model on each batch (training mode: dropout on);
- + backward: the gradients of all weights (what `bench/reference.py` counts as training FLOPs);
- + loss: the masked MSE instead of a stand-in scalar;
- full step: deeprec's own step (`train._Stepper`): also the L2 gradients and the Adam update;
- evaluation: the per-epoch train/validation RMSE pass (a forward pass over every row).

The differences between consecutive parts are what each piece costs. The forward and backward
parts are set against the float32 matmul rate measured in the same process (2048³), before and
after the parts, the higher of the two, as in `bench/speed.py`. Medians over the repeats after one that traces.

    DEEPREC_DATA_DIR=../shared/data python bench/epoch_parts.py [--model deep|user|item] [--repeats 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from reference import gflop_split, load_dataset_or_exit, matmul_gflops

from deeprec.config import TrainConfig
from deeprec.losses import masked_mse
from deeprec.matrix import build_matrices
from deeprec.splits import make_split
from deeprec.train import EvaluationBlocks, TrainingData, _Stepper, build_model, eval_block_rows

MODELS = {
    "deep": ("Deep [256,512,256]", dict(orientation="user", arch="256,512,256", activation="selu", dropout=0.8)),
    "user": ("U-AutoRec 500", dict(orientation="user")),
    "item": ("I-AutoRec 500", dict(orientation="item")),
}


def epoch_loop(body: Callable[[tf.Tensor], tf.Tensor], n_rows: int, batch_size: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """`body(rows)` for every batch of a row order, in one compiled while loop."""

    @tf.function
    def run(order: tf.Tensor) -> tf.Tensor:
        def step(start: tf.Tensor, total: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return start + batch_size, total + body(order[start : start + batch_size])

        return tf.while_loop(lambda start, _: start < n_rows, step, [tf.constant(0), tf.constant(0.0)])[1]

    return run


def measure(dataset_name: str, model_key: str, repeats: int, matmul_n: int = 2048) -> dict:
    name, overrides = MODELS[model_key]
    cfg = TrainConfig(**overrides).validate()
    dataset = load_dataset_or_exit(dataset_name)
    split = make_split("holdout", dataset.ratings.users)
    matrices = build_matrices(dataset.ratings, split, cfg.orientation, cfg.fill)
    data = TrainingData(matrices, dataset.ratings.scale)
    rate = matmul_gflops("float32", matmul_n)
    model = build_model(cfg, data)
    stepper = _Stepper(cfg, model, data)
    inputs, targets, mask = stepper.inputs, stepper.targets, stepper.mask
    weights = model.trainable_weights
    n_rows, n_cols = matrices.train.shape

    def forward(rows: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(model(tf.gather(inputs, rows), training=True)[:, :1])

    def backward(rows: tf.Tensor, with_loss: bool) -> tf.Tensor:
        with tf.GradientTape() as tape:
            predictions = model(tf.gather(inputs, rows), training=True)
            # a stand-in scalar needs no element-wise work on the batch's rows x columns
            loss = masked_mse(tf.gather(targets, rows), predictions, tf.gather(mask, rows)) if with_loss else tf.reduce_sum(predictions[:, :1])
        grads = tape.gradient(loss, weights)
        return loss + tf.add_n([tf.reduce_sum(g[:1]) for g in grads])  # every gradient is used

    def full_step(rows: tf.Tensor) -> tf.Tensor:
        return stepper._step(tf.gather(inputs, rows), tf.gather(targets, rows), tf.gather(mask, rows), rows)

    batch = cfg.batch_size
    parts = {
        "forward": epoch_loop(forward, n_rows, batch),
        "+ backward": epoch_loop(lambda rows: backward(rows, False), n_rows, batch),
        "+ loss": epoch_loop(lambda rows: backward(rows, True), n_rows, batch),
        "full step": epoch_loop(full_step, n_rows, batch),
    }
    eval_targets = EvaluationBlocks({"train": matrices.train.values, "valid": matrices.valid}, eval_block_rows(n_cols))
    rng = np.random.default_rng(0)
    seconds: dict[str, list[float]] = {part: [] for part in [*parts, "evaluation"]}
    for _ in range(repeats + 1):  # the first traces
        for part, run in parts.items():
            order = tf.constant(rng.permutation(n_rows))
            tick = time.perf_counter()
            float(run(order))
            seconds[part].append(time.perf_counter() - tick)
        tick = time.perf_counter()
        stepper.cached_errors(eval_targets, dataset.ratings.scale)
        seconds["evaluation"].append(time.perf_counter() - tick)
    median = {part: statistics.median(times[1:]) for part, times in seconds.items()}
    rate = max(rate, matmul_gflops("float32", matmul_n))  # as bench/speed.py: a slow moment's probe must not flatter the parts

    training_gflop, forward_gflop = gflop_split(cfg, (n_rows, n_cols))
    return {
        "model": name,
        "matmul_gflops": round(rate, 1),
        "seconds": {part: round(value, 4) for part, value in median.items()},
        "costs": {
            "backward": round(median["+ backward"] - median["forward"], 4),
            "loss": round(median["+ loss"] - median["+ backward"], 4),
            "l2_and_optimizer": round(median["full step"] - median["+ loss"], 4),
        },
        "epoch_seconds": round(median["full step"] + median["evaluation"], 4),
        "shape": [n_rows, n_cols],
        "gflop": {"forward": round(forward_gflop, 6), "training": round(training_gflop, 6)},
        "efficiency": {
            "forward": round(forward_gflop / median["forward"] / rate, 3),
            "forward_and_backward": round(training_gflop / median["+ backward"] / rate, 3),
            "evaluation": round(forward_gflop / median["evaluation"] / rate, 3),
            "epoch": round((training_gflop + forward_gflop) / (median["full step"] + median["evaluation"]) / rate, 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--model", choices=sorted(MODELS), default="deep", help="deep (default), user or item")
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs per part, after one that traces (default 7)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    parser.add_argument("--matmul-n", type=int, default=2048, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        print("error: --repeats must be at least 1", file=sys.stderr)
        return 2
    result = measure(args.dataset, args.model, args.repeats, args.matmul_n)
    print(f"{result['model']}: float32 matmul rate {result['matmul_gflops']:.1f} GFLOP/s")
    for part, value in result["seconds"].items():
        print(f"  {part:<12} {value:7.3f} s")
    costs, efficiency = result["costs"], result["efficiency"]
    print(
        f"summary: {result['model']} epoch {result['epoch_seconds']:.3f} s = forward {result['seconds']['forward']:.3f} "
        f"+ backward {costs['backward']:.3f} (matmuls at {efficiency['forward_and_backward']:.0%} of the rate) + loss {costs['loss']:.3f} "
        f"+ L2 and Adam {costs['l2_and_optimizer']:.3f} + evaluation {result['seconds']['evaluation']:.3f} "
        f"({efficiency['evaluation']:.0%}); {efficiency['epoch']:.0%} of the rate in all"
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
