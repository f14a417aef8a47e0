"""compiled.per_instance: one model's traces counted apart from another's, its own retracing still reported."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import tensorflow as tf

from deeprec import compiled


class Scaler:
    def __init__(self, factor: float, wrap: Callable) -> None:
        self.factor = tf.Variable(factor)  # each instance its own variable: each needs its own trace
        self.apply = wrap(self._apply)

    def _apply(self, x: tf.Tensor) -> tf.Tensor:
        return x * self.factor


@pytest.mark.parametrize(("wrap", "warned"), [(tf.function, True), (compiled.per_instance, False)])
def test_one_trace_per_model_is_not_taken_for_excessive_retracing(wrap: Callable, warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        values = [float(Scaler(float(k), wrap).apply(tf.constant(2.0))) for k in range(8)]
    assert values == [2.0 * k for k in range(8)]
    assert any("retracing" in r.getMessage() for r in caplog.records) is warned


def test_a_model_that_retraces_is_still_reported(caplog: pytest.LogCaptureFixture) -> None:
    scaler = Scaler(3.0, compiled.per_instance)
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for n in range(1, 9):  # a new shape each call: a retrace each time
            scaler.apply(tf.ones([n] * min(n, 4) + [n]))
    assert any("retracing" in r.getMessage() for r in caplog.records)
