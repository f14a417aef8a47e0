"""Seconds per epoch on ML-1M: deeprec's trainer against the notebook-style reference, and both
against the machine's measured matrix-multiply rate.

For U-AutoRec 500, I-AutoRec 500 and Deep [256,512,256] (SELU, dropout 0.8), in float32 and
bfloat16, it trains each model with deeprec (`deeprec.train.fit`) and with the reference
(`bench/reference.py`: plain Keras `Model.fit` on the dense full matrix with its 0-means-missing
loss), one after the other in a process of its own that first measures the matmul rates, and
prints the median seconds per epoch after a warm-up epoch. Both epochs include a pass over the
validation ratings (deeprec also computes the training RMSE). Each process probes the matmul rates
before and after training and keeps the higher of the two: a probe that caught the machine in a
slow moment (probes of 213 and 420 GFLOP/s came minutes apart on one host) would otherwise make
that model's efficiency read far too high. The top-level matmul rates are the medians of the
processes' rates; each model's efficiency uses its own process's rate.

    DEEPREC_DATA_DIR=../shared/data python bench/speed.py [--epochs 6] [--quick] [--json]

`--quick` (under two minutes): float32 only, 4 epochs (3 timed); the same 2048³ probe, so its
efficiencies compare with a full run's (a 1024³ probe runs slower and made them read higher).
`--json` ends with one JSON object: {"matmul_gflops": {"float32", "bfloat16"}, "models": {NAME: {...}}}.
Run it on an otherwise idle machine: both trainers use every core.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys

from reference import SPEED_MODELS, load_dataset_or_exit, gflop_per_epoch, matmul_gflops, median_after_warmup, reference_fit

from deeprec import datasets
from deeprec.config import TrainConfig
from deeprec.matrix import build_matrices
from deeprec.splits import make_split
from deeprec.train import TrainingData, fit

log = logging.getLogger("bench.speed")

MODELS = SPEED_MODELS
PRECISIONS = ("float32", "bfloat16")


def measure_model(dataset: datasets.Dataset, name: str, precision: str, epochs: int, matmul_n: int) -> dict:
    """One model in one precision: the matmul rates, deeprec and the reference, then the rates again,
    in this process."""
    before = {p: matmul_gflops(p, matmul_n) for p in PRECISIONS}
    split = make_split("holdout", dataset.ratings.users)
    cfg = TrainConfig(epochs=epochs, patience=0, precision=precision, **MODELS[name]).validate()
    matrices = build_matrices(dataset.ratings, split, cfg.orientation, cfg.fill)
    _, history = fit(cfg, TrainingData(matrices, dataset.ratings.scale))
    ours = median_after_warmup([h["seconds"] for h in history])
    _, reference_seconds = reference_fit(cfg, matrices.train.values, matrices.valid, epochs)
    reference = median_after_warmup(reference_seconds)
    after = {p: matmul_gflops(p, matmul_n) for p in PRECISIONS}
    rates = {p: max(before[p], after[p]) for p in PRECISIONS}  # the machine's rate in these minutes
    gflop = gflop_per_epoch(cfg, matrices.train.shape)
    return {
        "seconds_per_epoch": round(ours, 4),
        "reference_seconds_per_epoch": round(reference, 4),
        "speedup": round(reference / ours, 2),
        "gflop_per_epoch": round(gflop, 1),
        "efficiency": round(gflop / ours / rates[precision], 3),
        "reference_efficiency": round(gflop / reference / rates[precision], 3),
        "matmul_gflops": {p: round(r, 1) for p, r in rates.items()},
        "matmul_probes": {p: [round(before[p], 1), round(after[p], 1)] for p in PRECISIONS},
    }


def measure(dataset_name: str, epochs: int, precisions: tuple[str, ...], matmul_n: int) -> dict:
    """Every model and precision, each in a fresh process.

    In one process, later models ran up to 35% slower than the same model run alone (I-AutoRec:
    1.35 s against 1.00 s per epoch), so each (model, precision) gets its own process, and its own
    matmul probe right before it: efficiency is measured against the rate of the same minutes.
    """
    models = {}
    for name in MODELS:
        for precision in precisions:
            child = subprocess.run(
                [sys.executable, __file__, "--dataset", dataset_name, "--epochs", str(epochs), "--matmul-n", str(matmul_n), "--child", name, precision],
                capture_output=True, text=True,
            )
            if child.returncode != 0:
                raise SystemExit(f"error: {name} ({precision}) failed:\n{child.stderr[-2000:]}")
            key = name if precision == "float32" else f"{name} {precision}"
            models[key] = json.loads(child.stdout.strip().splitlines()[-1])
            log.info("%s: %s", key, models[key])
    rates = {p: round(statistics.median(m["matmul_gflops"][p] for m in models.values()), 1) for p in PRECISIONS}
    return {"matmul_gflops": rates, "models": models}


def print_table(result: dict) -> None:
    rates = result["matmul_gflops"]
    print(f"matmul rate: float32 {rates['float32']:.1f} GFLOP/s, bfloat16 {rates['bfloat16']:.1f} GFLOP/s")
    print(f"{'model':<30} {'deeprec s/epoch':>16} {'reference s/epoch':>18} {'speedup':>8} {'GFLOP/epoch':>12} {'efficiency':>10}")
    for name, m in result["models"].items():
        print(
            f"{name:<30} {m['seconds_per_epoch']:>16.2f} {m['reference_seconds_per_epoch']:>18.2f} "
            f"{m['speedup']:>7.2f}x {m['gflop_per_epoch']:>12.1f} {m['efficiency']:>10.0%}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trainer; the first is warm-up (default 6)")
    parser.add_argument("--quick", action="store_true", help="float32 only, 4 epochs: under two minutes")
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    parser.add_argument("--matmul-n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("deeprec").setLevel(logging.WARNING)  # per-epoch lines would drown the figures
    epochs = 4 if args.quick else args.epochs
    if epochs < 2:
        print("error: --epochs must be at least 2 (one warm-up epoch, then timed ones)", file=sys.stderr)
        return 2
    dataset = load_dataset_or_exit(args.dataset)  # here too: a bad name fails before any child starts
    if args.child:
        print(json.dumps(measure_model(dataset, *args.child, epochs, args.matmul_n)))
        return 0
    precisions = PRECISIONS[:1] if args.quick else PRECISIONS
    result = measure(args.dataset, epochs, precisions, matmul_n=2048)
    print_table(result)
    speedups = [m["speedup"] for m in result["models"].values()]
    efficiencies = [m["efficiency"] for m in result["models"].values()]
    print(f"summary: deeprec {min(speedups):.2f}-{max(speedups):.2f}x faster than the notebook-style reference; "
          f"{min(efficiencies):.0%}-{max(efficiencies):.0%} of the measured matmul rate")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
