"""Masked reconstruction losses. The mask is an explicit input from the data, never `value != 0`:
with a non-zero fill (or a 0 rating) the zeros of the input say nothing about what was observed.

Two ways to average the squared errors of a batch (config field `loss`):
- `rating` (the default): every observed rating of the batch weighs the same.
- `row`: each row's errors are averaged first, then the rows: every user (U-AutoRec) or item
  (I-AutoRec) weighs the same, however many ratings it has. This is what the original Keras
  notebooks computed (a per-row `K.sum(..., axis=-1) / K.sum(mask, axis=-1)` that Keras then
  averages over the batch), and it matches a per-user-averaged RMSE. Rows without an observed
  rating are left out of the average instead of counting as zero error.
"""

from __future__ import annotations

import tensorflow as tf


def masked_mse(targets: tf.Tensor, predictions: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean squared error over the observed entries of the batch (per rating, not per row)."""
    predictions = tf.cast(predictions, tf.float32)
    # l2_loss (sum of squares / 2) is one kernel whose gradient is its input: fewer full passes
    # over the batch's rows x columns, forward and backward, than square, multiply and sum.
    errors = (predictions - targets) * mask
    return 2.0 * tf.nn.l2_loss(errors) / tf.maximum(tf.reduce_sum(mask), 1.0)


def masked_row_mse(targets: tf.Tensor, predictions: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean over the batch's rows (those with an observed entry) of each row's masked MSE."""
    predictions = tf.cast(predictions, tf.float32)
    per_row_count = tf.reduce_sum(mask, axis=1)
    per_row = tf.reduce_sum(tf.square(targets - predictions) * mask, axis=1) / tf.maximum(per_row_count, 1.0)
    rows_with_ratings = tf.reduce_sum(tf.cast(per_row_count > 0, tf.float32))
    return tf.reduce_sum(per_row) / tf.maximum(rows_with_ratings, 1.0)


LOSSES = {"rating": masked_mse, "row": masked_row_mse}
