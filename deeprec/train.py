"""fit(cfg, data) -> (model, history): compiled training steps over dense batches. No MLflow here.

Speed notes: batches are dense (TensorFlow's sparse kernels were 2-8x slower at ML-1M size on
this CPU); when the training matrix fits in memory it lives in TensorFlow once and each step
gathers its rows inside the compiled function, so no batch is copied from Python. Input noise is
applied inside the step because the CDAE-style mask noise needs the observed mask. Data too large
for that cache trains on its CSR rows when the config allows it (deeprec/sparse.py), and densifies
one batch at a time otherwise.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable

import keras
import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from deeprec import compiled, interrupts, sparse
from deeprec.config import TrainConfig
from deeprec.errors import DeeprecError
from deeprec.losses import LOSSES
from deeprec.models import MODELS, l2_penalties, penalty_value
from deeprec.optimizers import make_optimizer
from deeprec.preparation import TrainingData

log = logging.getLogger(__name__)

# A block of predictions is densified with its inputs: cap its cells so a wide matrix (ML-20M's
# item-major rows have 138,493 columns) evaluates in a few hundred MB, not gigabytes. Below the
# cap, larger blocks run the forward pass's matrix multiplies faster (ML-1M fits in one block).
EVAL_BATCH_ROWS = 8192
EVAL_BLOCK_CELLS = 1 << 25


def eval_block_rows(n_cols: int) -> int:
    """Rows per evaluation block: EVAL_BATCH_ROWS, fewer for wide matrices (at least 64)."""
    return max(64, min(EVAL_BATCH_ROWS, EVAL_BLOCK_CELLS // max(n_cols, 1)))


class TrainingDiverged(DeeprecError):
    """The loss became NaN or infinite."""


EpochCallback = Callable[[dict], None]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def limit_threads(threads: int) -> None:
    """Size TensorFlow's thread pools so that N worker processes share the cores instead of
    oversubscribing them; call it in the worker before its first TensorFlow op."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.debug("TensorFlow is already initialised; its thread pools keep their size")


# CPU flags (Linux's /proc/cpuinfo) of native bfloat16 arithmetic: x86's AVX-512 BF16 and AMX, Arm's BF16.
NATIVE_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU lists a bfloat16 instruction flag; None where the flags cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86, Arm
                    return not NATIVE_BFLOAT16_FLAGS.isdisjoint(value.split())
    except OSError:
        return None
    return None


@functools.cache
def warn_if_bfloat16_is_emulated() -> None:
    """Warn (once per process) that mixed bfloat16 will be slow: without bfloat16 instructions its
    matrix products run no faster than float32's while the policy adds casts, and on an AVX2 host
    every model's epoch took 8-23% longer than in float32 (README, Performance)."""
    if tf.config.list_physical_devices("GPU"):
        return
    if cpu_has_native_bfloat16() is False:
        log.warning("precision bfloat16 on a CPU without bfloat16 instructions (no %s flag): expect slower epochs than float32", "/".join(sorted(NATIVE_BFLOAT16_FLAGS)))


def build_model(cfg: TrainConfig, data: TrainingData) -> keras.Model:
    """The registry model for this data, under the config's precision policy."""
    if cfg.precision == "bfloat16":
        warn_if_bfloat16_is_emulated()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if cfg.precision == "bfloat16" else "float32")
    try:
        return MODELS[cfg.model](cfg, data.n_inputs, data.train.shape[1])
    finally:
        keras.mixed_precision.set_global_policy("float32")


class EvaluationBlocks:
    """The observed entries of each target matrix, per block of rows, as flat indices into the
    block's (rows x columns) predictions and their ratings: found once, not in every epoch's
    evaluation (finding them per block and target took 14 ms of the deep model's 0.36 s epoch on
    ML-1M, 4%)."""

    def __init__(self, targets_by_name: dict[str, sp.csr_matrix], block_rows: int) -> None:
        self.names = list(targets_by_name)
        n_rows, n_cols = next(iter(targets_by_name.values())).shape
        self.blocks: list[tuple[int, int, list[tuple[tf.Tensor, tf.Tensor]]]] = []
        for start in range(0, n_rows, block_rows):
            stop = min(start + block_rows, n_rows)
            entries = []
            for csr in targets_by_name.values():
                part = csr[start:stop]
                rows = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(part.indptr))
                entries.append((tf.constant(rows * n_cols + part.indices), tf.constant(part.data, tf.float32)))
            self.blocks.append((start, stop, entries))


class _Stepper:
    """The compiled training step, with noise and dense re-feeding, for one model and dataset."""

    def __init__(self, cfg: TrainConfig, model: keras.Model, data: TrainingData) -> None:
        self.cfg = cfg
        self.model = model
        self.optimizer = make_optimizer(cfg)
        self.penalties = l2_penalties(model)
        self.weight_index = {id(weight): at for at, weight in enumerate(model.trainable_weights)}
        fill = data.train.fill
        n_rows, n_cols = data.train.shape
        self.fill_constant = tf.constant(fill.constant, tf.float32)
        self.fill_row = tf.constant(fill.per_row if fill.per_row is not None else np.zeros(n_rows, np.float32))
        self.fill_col = tf.constant(fill.per_col if fill.per_col is not None else np.zeros(n_cols, np.float32))
        self.side = None if data.side is None else tf.constant(data.side)
        self.noise_rng = tf.random.Generator.from_seed(cfg.seed)
        cached = data.train.dense_arrays
        if cached is not None:
            self.inputs, self.targets, self.mask = (tf.constant(a) for a in cached)
        # The optimizer's state is created now: a compiled loop cannot create variables.
        self.optimizer.build(model.trainable_weights)
        self.epoch_rows = compiled.per_instance(self._epoch_rows)
        self.block_errors = compiled.per_instance(self._block_errors, reduce_retracing=True)
        self.step_batch = compiled.per_instance(self._step_batch)

    def epoch_cached(self, order: np.ndarray) -> float:
        """One epoch on the cached matrices: the batches of `order` in one compiled loop, as
        Keras's `steps_per_execution` runs them, so no step waits on Python (3-5% of an ML-1M
        epoch). Returns the mean training loss per row."""
        # The dense matrices are passed in, not captured: a traced graph that captured them would
        # keep them alive after training (about 300 MB per model on ML-1M).
        return float(self.epoch_rows(tf.constant(order), self.inputs, self.targets, self.mask))

    def cached_errors(self, targets: EvaluationBlocks, scale: tuple[float, float]) -> dict[str, float]:
        """`observed_errors` on the cached matrix, inside TensorFlow: each block's predictions are
        computed from the cached inputs and read at the targets' observed entries, with no copy of
        inputs or predictions through NumPy (0.188 -> 0.162 s for the deep model on ML-1M)."""
        totals = np.zeros((len(targets.names), 2))
        bounds = tf.constant(scale, tf.float32)
        for start, stop, entries in targets.blocks:
            totals += self.block_errors(tf.constant(start, tf.int64), tf.constant(stop, tf.int64), self.inputs, entries, bounds).numpy()
        return {name: math.sqrt(total / count) if count else float("nan") for name, (total, count) in zip(targets.names, totals)}

    def _block_errors(self, start: tf.Tensor, stop: tf.Tensor, inputs: tf.Tensor, entries: list, scale: tf.Tensor) -> tf.Tensor:
        """(sum of squared errors, count) per target for the rows start..stop, in float64."""
        predictions = self.model(self._with_side(inputs[start:stop], tf.range(start, stop)), training=False)
        flat = tf.reshape(tf.cast(predictions, tf.float32), [-1])
        sums = []
        for cells, values in entries:
            errors = tf.cast(tf.clip_by_value(tf.gather(flat, cells), scale[0], scale[1]) - values, tf.float64)
            sums.append(tf.stack([tf.reduce_sum(tf.square(errors)), tf.cast(tf.size(errors), tf.float64)]))
        return tf.stack(sums)

    def _epoch_rows(self, order: tf.Tensor, inputs: tf.Tensor, targets: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        batch, n_rows = self.cfg.batch_size, tf.size(order)

        def body(start: tf.Tensor, total: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            rows = order[start : start + batch]
            loss = self._step(tf.gather(inputs, rows), tf.gather(targets, rows), tf.gather(mask, rows), rows)
            return start + batch, total + tf.cast(loss, tf.float32) * tf.cast(tf.size(rows), tf.float32)

        _, total = tf.while_loop(lambda start, _: start < n_rows, body, [tf.constant(0), tf.constant(0.0)])
        return total / tf.cast(n_rows, tf.float32)

    def _step_batch(self, x: tf.Tensor, y: tf.Tensor, m: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        return self._step(x, y, m, rows)

    def _with_side(self, x: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        return x if self.side is None else tf.concat([x, tf.gather(self.side, rows)], axis=1)

    def _corrupt(self, x: tf.Tensor, m: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        noise, level = self.cfg.noise, self.cfg.noise_level
        if noise == "none" or level == 0:
            return x
        if noise == "gaussian":
            return x + self.noise_rng.normal(tf.shape(x), stddev=level)
        keep = self.noise_rng.uniform(tf.shape(x)) >= level
        if noise == "dropout":  # any input entry, rescaled like Keras's Dropout
            return tf.where(keep, x / (1.0 - level), 0.0)
        # mask (CDAE): a dropped *observed* rating reverts to the fill value, unscaled (a 5 must stay a rating)
        fill = self.fill_constant + tf.gather(self.fill_row, rows)[:, None] + self.fill_col[None, :]
        return tf.where(keep | (m == 0), x, fill)

    def _apply(self, inputs: tf.Tensor, loss_fn: Callable[[tf.Tensor], tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        weights = self.model.trainable_weights
        with tf.GradientTape() as tape:
            predictions = self.model(inputs, training=True)
            data_loss = loss_fn(predictions)
        grads = tape.gradient(data_loss, weights)
        # The L2 penalties and their gradients, 2·λ·W, by hand (see models.l2_penalties); both
        # read the weights before the update.
        loss = data_loss + penalty_value(self.penalties)
        for kernel, l2 in self.penalties:
            at = self.weight_index[id(kernel)]
            grads[at] = grads[at] + (2.0 * l2) * kernel.value
        self.optimizer.apply(grads, weights)
        return loss, tf.cast(predictions, tf.float32)

    def _step(self, x: tf.Tensor, y: tf.Tensor, m: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        inputs = self._with_side(self._corrupt(x, m, rows), rows)
        loss, predictions = self._apply(inputs, lambda p: LOSSES[self.cfg.loss](y, p, m))
        # Dense re-feeding (Kuchaiev & Ginsburg 2017): f(x) is a dense, fully "observed" rating
        # vector, so it is fed back as both input and target of an extra update.
        for _ in range(self.cfg.refeed):
            dense = tf.stop_gradient(predictions)
            _, predictions = self._apply(self._with_side(dense, rows), lambda p, d=dense: tf.reduce_mean(tf.square(d - tf.cast(p, tf.float32))))
        return loss


def model_inputs(data: TrainingData, rows: np.ndarray) -> np.ndarray:
    """The model's input for matrix rows: training ratings with the fill, then any side features."""
    inputs = data.train.inputs(rows)
    return inputs if data.side is None else np.concatenate([inputs, data.side[rows]], axis=1)


def predict_rows(model: keras.Model, data: TrainingData, rows: np.ndarray, forward: Callable | None = None) -> np.ndarray:
    """Predicted ratings (unclipped, float32) for matrix rows; the input is the training matrix."""
    inputs = model_inputs(data, rows)
    out = forward(inputs) if forward is not None else model(inputs, training=False)
    return np.asarray(keras.ops.convert_to_numpy(out), dtype=np.float32)


def compiled_forward(model: keras.Model, n_inputs: int) -> Callable:
    return compiled.per_instance(lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, n_inputs], tf.float32)])


def observed_errors(predict: Callable[[np.ndarray], np.ndarray], targets_by_name: dict, n_rows: int, scale: tuple[float, float]) -> dict[str, float]:
    """Global per-rating RMSE of clipped predictions at each CSR's stored entries, in one pass."""
    sums = {name: 0.0 for name in targets_by_name}
    counts = {name: 0 for name in targets_by_name}
    block_rows = eval_block_rows(next(iter(targets_by_name.values())).shape[1])
    for start in range(0, n_rows, block_rows):
        rows = np.arange(start, min(start + block_rows, n_rows))
        predictions = predict(rows)
        for name, csr in targets_by_name.items():
            block = csr[start : start + len(rows)]
            if block.nnz == 0:
                continue
            row_pos = np.repeat(np.arange(len(rows)), np.diff(block.indptr))
            # Clipped where a rating was observed only, not across the whole block of predictions.
            errors = np.clip(predictions[row_pos, block.indices], *scale) - block.data
            sums[name] += float(np.dot(errors, errors))
            counts[name] += block.nnz
    return {name: math.sqrt(sums[name] / counts[name]) if counts[name] else float("nan") for name in targets_by_name}


class BestWeights:
    """A copy of the model's weights at its best epoch, for early stopping to restore.

    Small models keep it in memory. Above `SPILL_BYTES` it goes to a temporary folder instead, as
    Keras's ModelCheckpoint(save_best_only=True) would: at the ML-10M shape I-AutoRec's weights are
    280 MB, and a copy in memory would sit on top of the training step's peak. The files are
    written and read a block of rows at a time, so neither direction holds a whole kernel.
    """

    SPILL_BYTES = 128 << 20
    BLOCK_BYTES = 16 << 20

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self.in_memory = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights) <= self.SPILL_BYTES
        self.copy: list[np.ndarray] | None = None
        self.folder: tempfile.TemporaryDirectory | None = None

    def save(self) -> None:
        self.copy = None  # the old copy goes first, or the weights would be held three times at once
        if self.in_memory:
            self.copy = self.model.get_weights()
            return
        if self.folder is None:
            self.folder = tempfile.TemporaryDirectory(prefix="deeprec-best-")
        for index, variable in enumerate(self.model.weights):
            with open(self._path(index), "wb") as file:
                for start, stop in self._blocks(variable):
                    file.write(variable.value[start:stop].numpy().tobytes())

    def restore(self) -> None:
        """Put the saved weights back (nothing saved: the model keeps its weights)."""
        if self.copy is not None:
            self.model.set_weights(self.copy)
        elif self.folder is not None:
            for index, variable in enumerate(self.model.weights):
                with open(self._path(index), "rb") as file:
                    for start, stop in self._blocks(variable):
                        shape = (stop - start, *variable.shape[1:])
                        block = np.fromfile(file, dtype=variable.dtype, count=int(np.prod(shape)))
                        variable.value[start:stop].assign(block.reshape(shape))
            self.folder.cleanup()
            self.folder = None

    def discard(self) -> None:
        """Drop the saved weights (training ended without restoring them)."""
        self.copy = None
        if self.folder is not None:
            self.folder.cleanup()
            self.folder = None

    def _path(self, index: int) -> str:
        return os.path.join(self.folder.name, f"{index}.bin")

    def _blocks(self, variable: keras.Variable) -> list[tuple[int, int]]:
        """Row ranges of about BLOCK_BYTES each (the weights of Dense layers: kernels and biases)."""
        row_bytes = int(np.prod(variable.shape[1:])) * np.dtype(variable.dtype).itemsize
        rows = max(1, self.BLOCK_BYTES // row_bytes)
        return [(start, min(start + rows, variable.shape[0])) for start in range(0, variable.shape[0], rows)]


def fit(cfg: TrainConfig, data: TrainingData, on_epoch: EpochCallback | None = None) -> tuple[keras.Model, list[dict]]:
    """Train with early stopping on validation RMSE; return the model with its best weights.

    `on_epoch` receives each epoch's record; it may raise (e.g. optuna.TrialPruned) to stop early.
    """
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg, data)
    n_rows = data.train.shape[0]
    has_valid = data.matrices.valid.nnz > 0
    targets = {"train_rmse": data.train.values, **({"valid_rmse": data.matrices.valid} if has_valid else {})}
    # Data too large for the dense cache trains on its CSR rows when the config allows (see sparse.py):
    # the outer layers' work then grows with the ratings, not with users x items.
    use_sparse = data.train.dense_arrays is None and sparse.supports(cfg, data.train.fill_name, data.side is not None)
    cached = data.train.dense_arrays is not None  # the dense cache: one compiled call per epoch
    if use_sparse:
        log.info("training on sparse rows: %d x %d, %d ratings", *data.train.shape, data.train.nnz)
        train_rows = sparse.RaggedRows(data.train.values)
        sparse_stepper = sparse.SparseStepper(cfg, model, train_rows, make_optimizer(cfg))
        sparse_errors = sparse.SparseEvaluator(model, train_rows, targets, data.scale)
    else:
        stepper = _Stepper(cfg, model, data)
        forward = compiled_forward(model, data.n_inputs)
        cached_targets = EvaluationBlocks(targets, eval_block_rows(data.train.shape[1])) if cached else None
    rng = np.random.default_rng(cfg.seed)
    history: list[dict] = []
    best_weights = BestWeights(model)
    best_rmse, best_epoch, started = math.inf, 0, time.perf_counter()
    try:
        for epoch in range(1, cfg.epochs + 1):
            interrupts.check()  # a Ctrl-C dropped by Python (inside a weakref callback) still stops training
            tick = time.perf_counter()
            order = rng.permutation(n_rows)
            if cached:
                # One TensorFlow call per epoch: a Ctrl-C or SIGTERM (under `deeprec`'s handler) waits
                # for it to return instead of landing inside TensorFlow's Python wrapper of the call.
                with interrupts.deferred():
                    train_loss = stepper.epoch_cached(order)
            else:
                losses, weights = [], []
                for start in range(0, n_rows, cfg.batch_size):
                    rows = order[start : start + cfg.batch_size]
                    if use_sparse:
                        loss = sparse_stepper.step(tf.constant(rows))
                    else:
                        b = data.train.batch(rows)
                        loss = stepper.step_batch(tf.constant(b.inputs), tf.constant(b.targets), tf.constant(b.mask), tf.constant(rows))
                    losses.append(float(loss))
                    weights.append(len(rows))
                train_loss = float(np.average(losses, weights=weights))
            if not math.isfinite(train_loss):
                raise TrainingDiverged(f"training loss became {train_loss} at epoch {epoch}; try a lower lr, a smaller l2 or float32 precision")
            train_seconds = time.perf_counter() - tick
            if use_sparse:
                sparse_stepper.write_back()  # the step trains a transposed copy of the output kernel
                errors = sparse_errors(n_rows, sparse_stepper.output_kernel_t)
            elif cached:
                errors = stepper.cached_errors(cached_targets, data.scale)
            else:
                errors = observed_errors(lambda r: predict_rows(model, data, r, forward), targets, n_rows, data.scale)
            seconds = time.perf_counter() - tick
            record = {"epoch": epoch, "train_loss": train_loss, **errors, "seconds": seconds, "train_seconds": train_seconds}
            history.append(record)
            # Without validation data (a refit on all non-test ratings) the last weights are kept.
            if has_valid and errors["valid_rmse"] < best_rmse:
                best_rmse, best_epoch = errors["valid_rmse"], epoch
                best_weights.save()
            elapsed = time.perf_counter() - started
            left = elapsed / epoch * (cfg.epochs - epoch)
            valid = f"{errors['valid_rmse']:.4f}" if "valid_rmse" in errors else "-"  # a refit has no validation ratings
            log.info(
                "epoch %d/%d  loss %.4f  train_rmse %.4f  valid_rmse %s  %.1fs  ~%s left",
                epoch, cfg.epochs, train_loss, errors["train_rmse"], valid, seconds, _duration(left),
            )
            if on_epoch is not None:
                on_epoch(record)
            if has_valid and cfg.patience and epoch - best_epoch >= cfg.patience:
                log.info("early stop at epoch %d: no better validation RMSE since epoch %d", epoch, best_epoch)
                break
    except BaseException:
        best_weights.discard()  # a diverged, pruned or interrupted fit leaves no spilled weights on disk
        raise
    # The training step's optimizer state (twice the weights, for Adam) is not needed any more: it
    # goes before the best weights come back. The compiled step refers to its owner, a reference
    # cycle, hence the collection.
    sparse_stepper = stepper = None
    gc.collect()
    best_weights.restore()
    return model, history


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
