"""Training steps and per-epoch RMSE straight from the CSR rows, for zero-filled data too large to
densify (ML-10M/20M shapes).

A dense batch costs rows x columns x hidden multiply-adds in the first and the last layer, although
only the observed entries carry information: with a zero fill the input is sparse, and the masked
loss needs the output only where a rating was observed. This path computes exactly those:

- first layer: a sparse x dense product of the batch's observed ratings with the kernel
  (TensorFlow's CSR kernels, which differentiate to another CSR product);
- middle layers: the model's own Keras layers (dropout included), unchanged;
- output layer: for each observed (row, column), the dot product of the row's last hidden vector
  with that column of the output kernel; its gradients are two CSR products with the sparse
  matrix of the loss's gradient at those entries.

The loss (masked MSE per rating), the L2 penalties (the models' kernel regularizers, with their
gradient 2·λ·W added by hand) and hence the gradients are the dense path's; only the random draws
of input noise differ. The two outer layers' work grows with the number of ratings instead of
users x items; the optimizer's update still covers every weight at every step, which is what
grows faster than the ratings at ML-20M's shape (README, "Scale"). It applies to zero fill, no or
dropout/mask input noise, no dense re-feeding, no side information, untied float32 models
(`supports`); anything else trains densely.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from deeprec import compiled
from deeprec.config import TrainConfig
from deeprec.models import l2_penalties, penalty_value


# Per-rating tensors are (ratings x hidden) floats: 2^15 ratings x 500 units = 66 MB each, and a
# step's chunk or an evaluation block holds several at once (the two gathers and their product).
EVAL_CHUNK_RATINGS = 1 << 14  # smaller: evaluation also holds a transposed copy of the output kernel
STEP_CHUNK_RATINGS = 1 << 15  # ratings whose output is computed at once in a training step
# Ratings per evaluation block (its rows' flat indices and values): large, since a block's Python
# round trip costs more than its per-rating work is worth below about a million ratings.
EVAL_BLOCK_RATINGS = 1 << 21


def _blocks(per_row: np.ndarray, max_rows: int, max_ratings: int) -> list[tuple[int, int]]:
    """Consecutive (start, stop) row ranges of at most `max_rows` rows and, unless a single row
    has more, at most `max_ratings` ratings."""
    blocks, start, total = [], 0, 0
    for row, count in enumerate(per_row.tolist()):
        if row > start and (row - start >= max_rows or total + count > max_ratings):
            blocks.append((start, row))
            start, total = row, 0
        total += count
    if start < len(per_row):
        blocks.append((start, len(per_row)))
    return blocks


def supports(cfg: TrainConfig, fill_name: str, has_side: bool) -> bool:
    """Whether the sparse path computes what the dense path would for this config and the
    training matrix's fill (`RatingMatrix.fill_name`)."""
    return (
        fill_name == "zero"
        and cfg.noise in ("none", "dropout", "mask")
        and cfg.refeed == 0
        and not has_side
        and not cfg.tied
        and cfg.precision == "float32"
        and cfg.loss == "rating"  # its chunked loss sums over ratings, not rows
    )


class RaggedRows:
    """A CSR matrix in TensorFlow: any set of rows as flat (position in batch, column, value).
    Built once per matrix: the training step and the evaluation share the training matrix's."""

    def __init__(self, csr: sp.csr_matrix) -> None:
        self.csr = csr
        # Sorted columns within each row: the first layer's CSR product takes entries in row-major order.
        csr = csr if csr.has_sorted_indices else csr.sorted_indices()
        splits = tf.constant(csr.indptr.astype(np.int64))
        self.values = tf.RaggedTensor.from_row_splits(tf.constant(csr.data.astype(np.float32)), splits)
        self.columns = tf.RaggedTensor.from_row_splits(tf.constant(csr.indices.astype(np.int64)), splits)

    def take(self, rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        return take_rows(self.values, self.columns, rows)


def take_rows(values: tf.RaggedTensor, columns: tf.RaggedTensor, rows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The entries of `rows` (int64) of a ragged CSR matrix as flat (position in `rows`, column,
    value), in time and memory proportional to those entries.

    Not `tf.gather` on the ragged tensors and `value_rowids()`: that repeats each position with
    `tf.repeat`, which builds a (rows x longest row) mask. For 3,000 of ML-20M's items, whose most
    popular has tens of thousands of ratings, that was 1.6 GiB and 180-220 ms for 1.9 million
    ratings; this is 50 MiB and 34 ms.
    """
    splits = values.row_splits
    starts = tf.gather(splits, rows)
    counts = tf.gather(splits, rows + 1) - starts
    offsets = tf.cumsum(counts, exclusive=True)  # where each row's entries start in the output
    flat = tf.range(tf.reduce_sum(counts))
    # The row of each output entry: the last row starting at or before it (empty rows share the
    # next row's offset, so "right" skips them).
    positions = tf.searchsorted(offsets, flat, side="right", out_type=tf.int64) - 1
    index = tf.gather(starts - offsets, positions) + flat
    return positions, tf.gather(columns.flat_values, index), tf.gather(values.flat_values, index)


def csr_product(positions: tf.Tensor, columns: tf.Tensor, values: tf.Tensor, shape: tf.Tensor, dense: tf.Tensor, transpose: bool = False) -> tf.Tensor:
    """A·dense (or Aᵀ·dense) for the sparse matrix A with `values` at (positions, columns), given
    in row-major order, of `shape` (int64 [rows, columns]).

    TensorFlow's CSR kernels (tf.linalg's CSRSparseMatrix ops) multiplied 6x faster than
    `sparse_dense_matmul` here. Aᵀ is transposed as a CSR matrix (O(ratings)) before a plain
    product: the kernel's own transposed product kept per-thread copies of its output, which at
    ML-20M's shape is 277 MB each.
    """
    matrix = tf.raw_ops.SparseTensorToCSRSparseMatrix(indices=tf.stack([positions, columns], axis=1), values=values, dense_shape=shape)
    if transpose:
        matrix = tf.raw_ops.SparseMatrixTranspose(input=matrix, type=tf.float32)
    return tf.raw_ops.SparseMatrixMatMul(a=matrix, b=dense)


def _first_layer_product(positions: tf.Tensor, columns: tf.Tensor, values: tf.Tensor, shape: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """X·W for the batch's sparse input X, differentiable in W only (dW = Xᵀ·upstream); the
    gradient TensorFlow registers would also differentiate the sparse values (unused here) and
    use the transposed product."""

    @tf.custom_gradient
    def product(weights: tf.Tensor):
        def gradient(upstream: tf.Tensor) -> tf.Tensor:
            return csr_product(positions, columns, values, shape, upstream, transpose=True)

        return csr_product(positions, columns, values, shape, weights), gradient

    return product(kernel)


def observed_squared_errors(
    predict_at: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], rows: tf.Tensor, values: tf.RaggedTensor, columns: tf.RaggedTensor, scale: tuple[float, float]
) -> tf.Tensor:
    """[sum of squared errors, count], float64, of the clipped predictions at the observed entries
    of `rows` of a ragged CSR matrix; `predict_at(positions, columns)` gives the predictions at
    (position in `rows`, column) pairs. The cached dense evaluation has its entries found once instead
    (`train.EvaluationBlocks`)."""
    positions, wanted_columns, wanted = take_rows(values, columns, rows)
    predictions = predict_at(positions, wanted_columns)
    errors = tf.cast(tf.clip_by_value(predictions, scale[0], scale[1]) - wanted, tf.float64)
    return tf.stack([tf.reduce_sum(tf.square(errors)), tf.cast(tf.size(errors), tf.float64)])


class SparseModel:
    """The sparse forward pass of an autoencoder built by `models.build_autoencoder`."""

    def __init__(self, model: keras.Model) -> None:
        dense_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        self.first, self.output = dense_layers[0], dense_layers[-1]
        first_at, output_at = model.layers.index(self.first), model.layers.index(self.output)
        self.middle = model.layers[first_at + 1 : output_at]

    def hidden(self, positions: tf.Tensor, columns: tf.Tensor, values: tf.Tensor, n_rows: tf.Tensor, training: bool) -> tf.Tensor:
        """The last hidden layer's output for `n_rows` rows given their observed inputs."""
        shape = tf.stack([n_rows, tf.cast(tf.shape(self.first.kernel)[0], tf.int64)])
        x = self.first.activation(_first_layer_product(positions, columns, values, shape, tf.convert_to_tensor(self.first.kernel.value)) + self.first.bias)
        for layer in self.middle:
            x = layer(x, training=training)
        return x

    def at(self, hidden: tf.Tensor, positions: tf.Tensor, columns: tf.Tensor, kernel_t: tf.Tensor | None = None, chunk: int | None = None) -> tf.Tensor:
        """Predictions at (row position, column) pairs only. `kernel_t` is the output kernel
        transposed, when the caller already has it (it is a full copy of the kernel); `chunk`, see
        `products`."""
        kernel_t = tf.transpose(self.output.kernel) if kernel_t is None else kernel_t
        return self.output.activation(self.products(hidden, positions, columns, kernel_t, chunk) + tf.gather(self.output.bias, columns))

    @staticmethod
    def products(hidden: tf.Tensor, positions: tf.Tensor, columns: tf.Tensor, kernel_t: tf.Tensor, chunk: int | None = None) -> tf.Tensor:
        """h·w at each (row position, column): the output layer before its bias and activation.

        Each rating gathers a hidden vector and a kernel column; with `chunk`, that many ratings at
        a time, as a training batch of popular items holds hundreds of thousands of ratings."""

        def dots(p: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
            return tf.reduce_sum(tf.gather(hidden, p) * tf.gather(kernel_t, c), axis=1)

        if chunk is None:
            return dots(positions, columns)
        n_ratings = tf.size(positions)

        def body(start: tf.Tensor, parts: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
            stop = tf.minimum(start + chunk, n_ratings)
            return stop, parts.write(parts.size(), dots(positions[start:stop], columns[start:stop]))

        empty = tf.TensorArray(tf.float32, size=1, dynamic_size=True, infer_shape=False, element_shape=[None]).write(0, tf.zeros([0]))
        # One chunk at a time. With tf.while_loop's default of up to 10 iterations at once, the
        # peak memory of I-AutoRec at the ML-20M shape varied between runs of the same epoch from
        # 5.1 to 7.1 GiB, the extra reached in the evaluation after a training epoch (the
        # allocator's growth; one chunk at a time in the evaluation alone did not help). One at a
        # time everywhere: 4.8-5.3 GiB, for about 7% on I-AutoRec's step at the ML-10M shape.
        _, parts = tf.while_loop(lambda start, _: start < n_ratings, body, [tf.constant(0), empty], parallel_iterations=1)
        return parts.concat()


class SparseStepper:
    """The compiled training step on CSR rows (see the module docstring).

    The output kernel trains as a transposed copy, `output_kernel_t` (columns x hidden), with its
    optimizer state in that layout: each rating gathers a row of it, and its gradient Eᵀ·H comes
    out in that layout, so a step transposes no kernel. In the model's layout each step transposed
    the kernel and its gradient: 2 x 44 ms of I-AutoRec's step at the ML-20M shape (264 MB each).
    Adam is element-wise, so the updates are the same. `write_back()` copies it into the model;
    `fit` calls it after each epoch's steps, before the evaluation and the best-weights copy.
    """

    def __init__(self, cfg: TrainConfig, model: keras.Model, train: RaggedRows, optimizer: keras.optimizers.Optimizer) -> None:
        self.cfg = cfg
        self.model = model
        self.sparse = SparseModel(model)
        self.rows = train
        self.optimizer = optimizer
        self.noise_rng = tf.random.Generator.from_seed(cfg.seed)
        self.chunk_ratings = STEP_CHUNK_RATINGS
        output = self.sparse.output
        self.output_kernel_t = keras.Variable(tf.transpose(output.kernel), name="output_kernel_t")
        # The weights the step updates: the model's, with the output kernel's transposed copy.
        self.weights = [self.output_kernel_t if weight is output.kernel else weight for weight in model.trainable_weights]
        # their gradient is added by hand (see l2_penalties); the output kernel's is the copy's
        self.penalties = [(self.output_kernel_t if kernel is output.kernel else kernel, l2) for kernel, l2 in l2_penalties(model)]
        self.optimizer.build(self.weights)
        self.step = compiled.per_instance(self._step)

    def write_back(self) -> None:
        """Put the trained output kernel into the model."""
        self.sparse.output.kernel.assign(tf.transpose(self.output_kernel_t))

    def _corrupt(self, values: tf.Tensor) -> tf.Tensor:
        level = self.cfg.noise_level
        if self.cfg.noise == "none" or level == 0:
            return values
        keep = self.noise_rng.uniform(tf.shape(values)) >= level
        # dropout rescales the kept inputs like Keras's Dropout; mask (CDAE) reverts dropped ratings
        # to the zero fill. Unobserved inputs are 0 either way, as in the dense path.
        return tf.where(keep, values / (1.0 - level) if self.cfg.noise == "dropout" else values, 0.0)

    def _step(self, rows: tf.Tensor) -> tf.Tensor:
        positions, columns, values = self.rows.take(rows)
        output = self.sparse.output
        lower = [v for v in self.weights if v is not self.output_kernel_t and v is not output.bias]
        n_rows = tf.cast(tf.shape(rows)[0], tf.int64)
        with tf.GradientTape() as tape:
            hidden = self.sparse.hidden(positions, columns, self._corrupt(values), n_rows, training=True)
        penalty = penalty_value(self.penalties)
        kernel_t = tf.convert_to_tensor(self.output_kernel_t.value)
        raw = self.sparse.products(hidden, positions, columns, kernel_t, chunk=self.chunk_ratings)
        with tf.GradientTape() as inner:
            inner.watch(raw)
            predictions = output.activation(raw + tf.gather(output.bias, columns))
            data_loss = tf.reduce_sum(tf.square(values - predictions)) / tf.cast(tf.maximum(tf.size(values), 1), tf.float32)
        d_raw, d_bias = inner.gradient(data_loss, [raw, output.bias])
        # The loss's gradient at the observed entries is a sparse (rows x columns) matrix E, so
        # the output layer's gradients are two CSR products, dH = E·Wᵀ and dWᵀ = Eᵀ·H: no copy of
        # a hidden vector or a kernel column per rating, and no scatter of them into W's shape.
        shape = tf.stack([n_rows, tf.cast(tf.shape(kernel_t)[0], tf.int64)])
        d_hidden = csr_product(positions, columns, d_raw, shape, kernel_t)
        d_kernel_t = csr_product(positions, columns, d_raw, shape, hidden, transpose=True)
        # One backward pass from the hidden layer; every kernel also gets its penalty's gradient.
        # All gradients are dense, so the optimizer's update is the dense path's.
        grads = tape.gradient(hidden, lower, output_gradients=d_hidden)
        by_variable = {id(v): tf.zeros(v.shape) if g is None else tf.convert_to_tensor(g) for v, g in zip(lower, grads)}
        by_variable[id(self.output_kernel_t)] = d_kernel_t
        by_variable[id(output.bias)] = tf.convert_to_tensor(d_bias)
        for kernel, l2 in self.penalties:
            by_variable[id(kernel)] += (2.0 * l2) * kernel.value  # the penalty's gradient
        self.optimizer.apply([by_variable[id(v)] for v in self.weights], self.weights)
        return data_loss + penalty


class SparseEvaluator:
    """Per-rating RMSE of clipped predictions at the observed entries of several CSR matrices, in
    one pass over the rows (each block's hidden layer is computed once for all of them)."""

    def __init__(
        self,
        model: keras.Model,
        train: RaggedRows,
        targets_by_name: dict[str, sp.csr_matrix],
        scale: tuple[float, float],
        block_rows: int = 4096,
        block_ratings: int = EVAL_BLOCK_RATINGS,
    ) -> None:
        self.sparse = SparseModel(model)
        self.inputs = train
        self.targets = {name: train if csr is train.csr else RaggedRows(csr) for name, csr in targets_by_name.items()}
        self.scale = scale
        # Each rating gathers a hidden vector and a kernel column, EVAL_CHUNK_RATINGS at a time; a
        # block's ratings are bounded too (an item-major block of popular items holds millions).
        per_row = sum(np.diff(csr.indptr) for csr in targets_by_name.values()) if targets_by_name else np.zeros(train.csr.shape[0], np.int64)
        self.blocks = _blocks(np.asarray(per_row), block_rows, block_ratings)
        # One trace for every block: blocks hold different numbers of rows.
        self.hidden = compiled.per_instance(self._hidden, input_signature=[tf.TensorSpec([None], tf.int64)])
        self.squared_errors = compiled.per_instance(self._squared_errors, reduce_retracing=True)

    def _hidden(self, rows: tf.Tensor) -> tf.Tensor:
        positions, columns, values = self.inputs.take(rows)
        return self.sparse.hidden(positions, columns, values, tf.cast(tf.shape(rows)[0], tf.int64), training=False)

    def _squared_errors(self, hidden: tf.Tensor, rows: tf.Tensor, values: tf.RaggedTensor, columns: tf.RaggedTensor, kernel_t: tf.Tensor) -> tf.Tensor:
        return observed_squared_errors(
            lambda positions, cols: self.sparse.at(hidden, positions, cols, kernel_t, chunk=EVAL_CHUNK_RATINGS), rows, values, columns, self.scale
        )

    def __call__(self, n_rows: int, output_kernel_t: keras.Variable | None = None) -> dict[str, float]:
        """The RMSE per target. `output_kernel_t`: the output kernel transposed, when the caller
        holds one (`SparseStepper.output_kernel_t`), instead of another copy (264 MB at ML-20M)."""
        targets = self.targets
        totals = {name: [0.0, 0.0] for name in targets}
        kernel_t = tf.transpose(self.sparse.output.kernel) if output_kernel_t is None else tf.convert_to_tensor(output_kernel_t.value)
        for start, stop in self.blocks:
            rows = tf.range(start, min(stop, n_rows), dtype=tf.int64)
            hidden = self.hidden(rows)
            for name, target in targets.items():
                squared, count = self.squared_errors(hidden, rows, target.values, target.columns, kernel_t).numpy()
                totals[name][0] += float(squared)
                totals[name][1] += float(count)
        return {name: math.sqrt(total / count) if count else float("nan") for name, (total, count) in totals.items()}
