"""`tf.function`s that belong to one model.

Each model deeprec trains (a run, a CV fold, a tuning trial, a group's model) gets its own compiled
steps: they hold that model's variables, so tracing them once per model is needed. TensorFlow
counts traces per code object, across all instances, and after a few folds or trials logs that
"excessive retracing" may be a bug (creating functions in a loop, changing shapes). Compiling a
`functools.partial` of the method keys the count to the instance (a partial has no code object
of its own), so the warning still fires if one model's functions ever retrace, and not for the
one trace each new model needs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import tensorflow as tf


def per_instance(method: Callable, **options: Any) -> Callable:
    """`tf.function(method, **options)` for a bound method, its traces counted for its instance only."""
    if hasattr(method, "__self__"):
        return tf.function(functools.partial(method.__func__, method.__self__), **options)
    return tf.function(functools.partial(method), **options)
