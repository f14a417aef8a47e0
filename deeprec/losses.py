"""Masked reconstruction loss. The mask is an explicit input from the data, never `value != 0`:
with a non-zero fill (or a 0 rating) the zeros of the input say nothing about what was observed."""

from __future__ import annotations

import tensorflow as tf


def masked_mse(targets: tf.Tensor, predictions: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean squared error over the observed entries of the batch (per rating, not per row)."""
    predictions = tf.cast(predictions, tf.float32)
    squared = tf.square(targets - predictions) * mask
    return tf.reduce_sum(squared) / tf.maximum(tf.reduce_sum(mask), 1.0)
