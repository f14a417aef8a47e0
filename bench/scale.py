"""Seconds per epoch and peak memory of U- and I-AutoRec 500 on synthetic MovieLens-like data at the
shapes of ML-100K, ML-1M, ML-10M and ML-20M.

The data: item popularity follows a power law, user activity a log-normal with at least 20 ratings
per user (as MovieLens guarantees), and ratings are a rank-10 user x item product plus user and item
biases and Gaussian noise, rounded to the 1..5 scale. Each (shape, orientation) trains in its own
process, so its peak resident memory (ru_maxrss) is its own: it includes reading the ratings, the
holdout split, the CSR matrices, the model with its optimizer state and the per-epoch RMSE pass.
Above deeprec's dense-cache budget (1 GiB) no dense user x item matrix is built: batches are
densified from the CSR one at a time.

    python bench/scale.py [--shapes ml-100k,ml-1m,ml-10m,ml-20m] [--epochs 2] [--quick] [--json]

`--quick`: ML-100K and ML-1M shapes only. ML-20M takes several minutes per orientation on 2 cores.

It also counts what an epoch's optimizer updates must touch, which bounds how time can grow: Adam
updates every column of both kernels (their rows of the first kernel, columns of the output one)
at every step, (rows / batch) x columns per epoch; a lazy optimizer that updated only the columns
a batch has ratings in would still touch the sum over batches of those, which this counts on the
epoch's shuffled batches.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

log = logging.getLogger("bench.scale")

# (users, items, ratings) of the MovieLens releases.
SHAPES = {
    "ml-100k": (943, 1_682, 100_000),
    "ml-1m": (6_040, 3_706, 1_000_209),
    "ml-10m": (69_878, 10_677, 10_000_054),
    "ml-20m": (138_493, 26_744, 20_000_263),
}
ORIENTATIONS = ("user", "item")
RANK = 10


def synthetic_ratings(n_users: int, n_items: int, n_ratings: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, ratings) with unique pairs, MovieLens-like (see the module docstring)."""
    rng = np.random.default_rng(seed)
    # Per-user counts: log-normal activity, at least 20, at most half the catalogue, summing to ~n_ratings.
    activity = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    counts = np.clip(np.round(20 + activity / activity.sum() * (n_ratings - 20 * n_users)), 20, n_items // 2).astype(np.int64)
    popularity = 1.0 / (np.arange(n_items) + 10.0) ** 0.9
    popularity = popularity[rng.permutation(n_items)]
    popularity /= popularity.sum()
    # Drawing with replacement and dropping repeated pairs is far faster than per-user sampling
    # without replacement; drawing 50% extra makes up for the repeats.
    users = np.repeat(np.arange(n_users, dtype=np.int64), np.ceil(counts * 1.5).astype(np.int64))
    items = rng.choice(n_items, size=len(users), p=popularity)
    keys = np.unique(users * n_items + items)
    keys = keys[np.sort(rng.choice(len(keys), size=min(n_ratings, len(keys)), replace=False))]
    users, items = keys // n_items, keys % n_items
    user_factors = rng.normal(0, 1 / math.sqrt(RANK), (n_users, RANK)).astype(np.float32)
    item_factors = rng.normal(0, 1 / math.sqrt(RANK), (n_items, RANK)).astype(np.float32)
    user_bias = rng.normal(0, 0.35, n_users).astype(np.float32)
    item_bias = rng.normal(0, 0.45, n_items).astype(np.float32)
    ratings = np.empty(len(users), dtype=np.float32)
    for start in range(0, len(users), 2_000_000):  # chunked: the gathered factors of 20M pairs would be 1.6 GB
        u, i = users[start : start + 2_000_000], items[start : start + 2_000_000]
        signal = 3.6 + user_bias[u] + item_bias[i] + 1.2 * np.einsum("nk,nk->n", user_factors[u], item_factors[i])
        ratings[start : start + len(u)] = np.clip(np.round(signal + rng.normal(0, 0.8, len(u))), 1, 5)
    return users, items, ratings


def columns_per_epoch(csr: sp.csr_matrix, batch_size: int, seed: int = 0) -> tuple[int, int]:
    """(kernel columns a dense optimizer updates, columns the batches have ratings in), summed
    over one epoch of shuffled batches of `batch_size` rows of the training matrix."""
    order = np.random.default_rng(seed).permutation(csr.shape[0])
    touched = sum(int(np.unique(csr[order[start : start + batch_size]].indices).size) for start in range(0, len(order), batch_size))
    steps = -(-csr.shape[0] // batch_size)
    return steps * csr.shape[1], touched


def run_case(data_file: Path, orientation: str, epochs: int) -> dict:
    """Train in this process (the child): seconds per epoch and peak RSS."""
    from deeprec.config import TrainConfig
    from deeprec.matrix import build_matrices
    from deeprec.ratings import Ratings
    from deeprec.splits import make_split
    from deeprec.train import TrainingData, fit

    tick = time.perf_counter()
    arrays = np.load(data_file)
    ratings = Ratings(arrays["users"], arrays["items"], arrays["ratings"], None, (1.0, 5.0), data_file)
    split = make_split("holdout", ratings.users)
    cfg = TrainConfig(orientation=orientation, epochs=epochs, patience=0).validate()
    matrices = build_matrices(ratings, split, cfg.orientation, cfg.fill)
    setup = time.perf_counter() - tick
    setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    updated, touched = columns_per_epoch(matrices.train.values, cfg.batch_size)
    _, history = fit(cfg, TrainingData(matrices, ratings.scale))
    later = history[1:] or history
    return {
        "seconds_per_epoch": round(float(np.median([h["seconds"] for h in later])), 2),
        "train_seconds_per_epoch": round(float(np.median([h["train_seconds"] for h in later])), 2),
        "setup_seconds": round(setup, 1),
        "dense_cache": matrices.train.dense_arrays is not None,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "setup_peak_rss_gib": round(setup_peak, 2),  # reading, splitting and building the matrices
        "valid_rmse": round(history[-1]["valid_rmse"], 4),
        "updated_columns_per_epoch": updated,  # Adam: every column at every step
        "touched_columns_per_epoch": touched,  # a lazy optimizer's least
    }


def growth_exponent(sizes: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) on log(size): 1 means linear growth."""
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0]) if len(sizes) > 1 else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--epochs", type=int, default=0, help="epochs per case (default: 3 up to ML-1M size, 1 above)")
    parser.add_argument("--quick", action="store_true", help="ML-100K and ML-1M shapes only")
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    parser.add_argument("--child", nargs=3, metavar=("DATA", "ORIENTATION", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(run_case(Path(args.child[0]), args.child[1], int(args.child[2]))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    shapes = ["ml-100k", "ml-1m"] if args.quick else [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes or args.epochs < 0:
        print(f"error: unknown shape(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SHAPES)}; epochs >= 0", file=sys.stderr)
        return 2
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="deeprec-scale-") as tmp:
        for shape in shapes:
            n_users, n_items, n_ratings = SHAPES[shape]
            tick = time.perf_counter()
            users, items, ratings = synthetic_ratings(n_users, n_items, n_ratings)
            data_file = Path(tmp) / f"{shape}.npz"
            np.savez(data_file, users=users, items=items, ratings=ratings)
            log.info("%s: %d users x %d items, %d ratings generated in %.1f s", shape, n_users, n_items, len(ratings), time.perf_counter() - tick)
            epochs = args.epochs or (3 if n_ratings <= 1_500_000 else 1)
            for orientation in ORIENTATIONS:
                child = subprocess.run(
                    [sys.executable, __file__, "--child", str(data_file), orientation, str(epochs)],
                    capture_output=True, text=True,
                )
                if child.returncode != 0:
                    print(f"error: {shape} {orientation} failed:\n{child.stderr[-2000:]}", file=sys.stderr)
                    return 1
                case = json.loads(child.stdout.strip().splitlines()[-1])
                case.update(ratings=len(ratings), cells=n_users * n_items)
                results[f"{shape} {orientation}"] = case
                log.info("%s %s-AutoRec: %s", shape, orientation[0].upper(), case)
            data_file.unlink()
    print(f"{'shape':<16} {'ratings':>11} {'s/epoch':>9} {'train s':>8} {'peak GiB':>9} {'dense cache':>12} {'updated cols':>13} {'touched cols':>13}")
    for name, case in results.items():
        print(
            f"{name:<16} {case['ratings']:>11,} {case['seconds_per_epoch']:>9.2f} {case['train_seconds_per_epoch']:>8.2f} {case['peak_rss_gib']:>9.2f}"
            f" {case['dense_cache']!s:>12} {case['updated_columns_per_epoch']:>13,} {case['touched_columns_per_epoch']:>13,}"
        )
    summary = []
    for orientation in ORIENTATIONS:
        cases = [c for n, c in results.items() if n.endswith(orientation)]
        sizes = [c["ratings"] for c in cases]
        growth = {
            f"{quantity}_vs_ratings": round(growth_exponent(sizes, [c[key] for c in cases]), 2)
            for quantity, key in [
                ("time", "seconds_per_epoch"),
                ("memory", "peak_rss_gib"),
                ("updated_columns", "updated_columns_per_epoch"),
                ("touched_columns", "touched_columns_per_epoch"),
            ]
        }
        results[f"growth {orientation}"] = growth
        summary.append(
            f"{orientation[0].upper()}-AutoRec time ~ ratings^{growth['time_vs_ratings']:.2f}, memory ~ ratings^{growth['memory_vs_ratings']:.2f}"
            f" (updated columns ^{growth['updated_columns_vs_ratings']:.2f}, touched ^{growth['touched_columns_vs_ratings']:.2f})"
        )
    peak = max(c["peak_rss_gib"] for n, c in results.items() if not n.startswith("growth"))
    print(f"summary: {'; '.join(summary)}; peak memory {peak:.2f} GiB")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
