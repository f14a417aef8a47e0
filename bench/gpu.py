"""Seconds per epoch on a GPU, or on whatever device the Keras backend uses: the registry's models
trained by plain Keras `Model.fit`, float32 and mixed bfloat16, on synthetic data at MovieLens shapes.

Why plain Keras and not deeprec's trainer: the trainer is TensorFlow's (compiled steps over a dense
cache, deeprec/train.py), and the GPU machine lent to this project (one H200 with a CUDA 13 image,
JAX and PyTorch, and no package registry) cannot run TensorFlow 2.21, which needs CUDA 12
libraries. The notebook-style reference of bench/reference.py is plain Keras, so it runs on any
backend and measures what these models cost on the device:

    KERAS_BACKEND=jax python bench/gpu.py [--shapes ml-1m,ml-10m] [--epochs 5] [--batch-size N] [--json]
    KERAS_BACKEND=torch python bench/gpu.py --device-data ...

With TensorFlow on the CPU it times what bench/speed.py's reference column times. `Model.fit` keeps
NumPy data in host memory and copies every batch to the device; `--device-data` (PyTorch or
TensorFlow backend) gives it the matrices as tensors in the device's memory instead, which Keras
slices there, to tell the cost of those copies from the training's own.

The data: bench/scale.py's synthetic MovieLens-like ratings (no dataset has to travel to the
machine), split by deeprec's holdout split and made into matrices by deeprec.matrix, as in a real
run. For each shape, model and precision it prints the median seconds per epoch after a warm-up
epoch (training plus the validation pass), GFLOP per epoch and the efficiency against this device's
matmul rate in the same precision, measured in the same run, and the validation RMSE after the last
epoch (bfloat16 should train as well as float32). `--json` ends with one JSON object:
{"backend", "device", "matmul_gflops": {"float32", "bfloat16"}, "device_peak_gib", "cases": {NAME: {...}}}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import keras
import scipy.sparse as sp

from reference import SPEED_MODELS, gflop_per_epoch, matmul_gflops, median_after_warmup, reference_fit
from scale import SHAPES, synthetic_ratings

from deeprec import metrics
from deeprec.config import TrainConfig
from deeprec.errors import DeeprecError
from deeprec.matrix import SplitMatrices, build_matrices
from deeprec.ratings import Ratings
from deeprec.splits import make_split

log = logging.getLogger("bench.gpu")

PRECISIONS = ("float32", "bfloat16")
SCALE = (1.0, 5.0)


def device_name() -> str:
    """The device Keras computes on, as its backend names it ("cpu" when there is no accelerator)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return "cpu" if device.platform == "cpu" else f"{device.platform}: {device.device_kind}"
    if backend == "torch":
        import torch

        return f"cuda: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"gpu: {tf.config.experimental.get_device_details(gpus[0]).get('device_name', gpus[0].name)}" if gpus else "cpu"
    return backend


def device_peak_gib() -> float | None:
    """The accelerator's peak memory in use by this process so far, GiB; None on the CPU."""
    backend, peak = keras.backend.backend(), None
    if backend == "jax":
        import jax

        peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    elif backend == "torch":
        import torch

        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    elif backend == "tensorflow":
        import tensorflow as tf

        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] if tf.config.list_logical_devices("GPU") else None
    return None if peak is None else round(peak / 2**30, 2)


def validation_rmse(model: keras.Model, train: sp.csr_matrix, valid: sp.csr_matrix) -> float:
    """Per-rating RMSE of the held-out ratings, predicted from the training rows, clipped to 1..5."""
    predictions = model.predict(train.toarray(), batch_size=4096, verbose=0)
    held_out = valid.tocoo()
    return metrics.rmse(held_out.data, metrics.clip(predictions[held_out.row, held_out.col], SCALE))


def measure_case(matrices: SplitMatrices, cfg: TrainConfig, rates: dict[str, float], device_data: bool) -> dict:
    """Train one model with the reference for cfg.epochs epochs: its time, rate and accuracy."""
    tick = time.perf_counter()
    model, seconds = reference_fit(cfg, matrices.train.values, matrices.valid, cfg.epochs, device_data=device_data)
    total = time.perf_counter() - tick
    per_epoch = median_after_warmup(seconds)
    gflop = gflop_per_epoch(cfg, matrices.train.shape)
    case = {
        "seconds_per_epoch": round(per_epoch, 4),
        "first_epoch_seconds": round(seconds[0], 2),  # compiling the steps, on top of an epoch
        "gflop_per_epoch": round(gflop, 1),
        "efficiency": round(gflop / per_epoch / rates[cfg.precision], 4),
        "valid_rmse": round(validation_rmse(model, matrices.train.values, matrices.valid), 4),
        "batch_size": cfg.batch_size,
        "epochs": cfg.epochs,
        "data": "device tensors" if device_data else "host arrays",
        "wall_seconds": round(total, 1),
    }
    keras.backend.clear_session()  # free the model and its optimizer state before the next case
    return case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="ml-1m", help=f"comma-separated, from {', '.join(SHAPES)} (default ml-1m)")
    parser.add_argument("--model", action="append", choices=list(SPEED_MODELS), help="repeatable; default: all three")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated, from float32, bfloat16")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per case; the first is warm-up (default 5)")
    parser.add_argument("--batch-size", type=int, default=0, help="rows per step (default: the config's, 256)")
    parser.add_argument("--matmul-n", type=int, default=0, help="size of the matmul probe (default 8192 on an accelerator, 2048 on the CPU)")
    parser.add_argument("--device-data", action="store_true", help="hold the matrices in the device's memory (PyTorch or TensorFlow backend)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("deeprec").setLevel(logging.WARNING)

    # Every bad option fails here, before the data is generated or anything is compiled.
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    models = args.model or list(SPEED_MODELS)
    problems = [f"unknown shape {s!r} (choose from {', '.join(SHAPES)})" for s in shapes if s not in SHAPES]
    problems += [f"unknown precision {p!r} (choose from {', '.join(PRECISIONS)})" for p in precisions if p not in PRECISIONS]
    problems += ["--epochs must be at least 2 (one warm-up epoch, then timed ones)"] * (args.epochs < 2)
    problems += ["--batch-size and --matmul-n must not be negative"] * (min(args.batch_size, args.matmul_n) < 0)
    problems += ["--shapes and --precisions must name at least one each"] * (not shapes or not precisions)
    # Keras turns JAX arrays back into NumPy before it slices them, so there --device-data would
    # measure the host path under another name.
    problems += ["--device-data needs KERAS_BACKEND=torch or tensorflow (Keras copies JAX arrays to the host)"] * (args.device_data and keras.backend.backend() == "jax")
    configs = {}
    for name in models:
        for precision in precisions:
            overrides = dict(SPEED_MODELS[name], epochs=args.epochs, patience=0, precision=precision)
            if args.batch_size:
                overrides["batch_size"] = args.batch_size
            try:
                configs[name, precision] = TrainConfig(**overrides).validate()
            except DeeprecError as exc:
                problems.append(str(exc))
    if problems:
        print(f"error: {problems[0]}", file=sys.stderr)
        return 2

    device = device_name()
    matmul_n = args.matmul_n or (2048 if device == "cpu" else 8192)
    rates = {p: matmul_gflops(p, matmul_n) for p in PRECISIONS}
    log.info("backend %s on %s; matmul %d^3: %s GFLOP/s", keras.backend.backend(), device, matmul_n, {p: round(r, 1) for p, r in rates.items()})
    cases: dict[str, dict] = {}
    for shape in shapes:
        tick = time.perf_counter()
        users, items, values = synthetic_ratings(*SHAPES[shape])
        ratings = Ratings(users, items, values, None, SCALE, Path(f"synthetic-{shape}"))
        split = make_split("holdout", ratings.users)
        by_orientation: dict[str, SplitMatrices] = {}
        log.info("%s: %d ratings generated and split in %.1f s", shape, len(values), time.perf_counter() - tick)
        for (name, precision), cfg in configs.items():
            if cfg.orientation not in by_orientation:
                by_orientation[cfg.orientation] = build_matrices(ratings, split, cfg.orientation, cfg.fill)
            key = f"{shape} {name} {precision}"
            cases[key] = measure_case(by_orientation[cfg.orientation], cfg, rates, args.device_data)
            log.info("%s: %s", key, json.dumps(cases[key]))
    result = {
        "backend": keras.backend.backend(),
        "device": device,
        "matmul_gflops": {p: round(r, 1) for p, r in rates.items()},
        "device_peak_gib": device_peak_gib(),
        "cases": cases,
    }
    print(f"{result['backend']} on {device}: matmul float32 {rates['float32']:,.0f} GFLOP/s, bfloat16 {rates['bfloat16']:,.0f} GFLOP/s")
    print(f"{'case':<42} {'s/epoch':>8} {'1st epoch s':>11} {'GFLOP/epoch':>12} {'efficiency':>10} {'valid RMSE':>10}")
    for key, case in cases.items():
        print(
            f"{key:<42} {case['seconds_per_epoch']:>8.3f} {case['first_epoch_seconds']:>11.1f} {case['gflop_per_epoch']:>12.1f}"
            f" {case['efficiency']:>10.1%} {case['valid_rmse']:>10.4f}"
        )
    print(
        f"summary: {len(cases)} cases on {device} ({result['backend']}), {min(c['seconds_per_epoch'] for c in cases.values()):.3f}-"
        f"{max(c['seconds_per_epoch'] for c in cases.values()):.3f} s per epoch, best efficiency "
        f"{max(c['efficiency'] for c in cases.values()):.1%}"
        + ("" if result["device_peak_gib"] is None else f", device peak {result['device_peak_gib']} GiB")
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
