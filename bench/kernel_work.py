"""Milliseconds per training step of the work the sparse path does on whole kernels, at a scale
shape's U-AutoRec 500 kernels: Adam's update and the L2 gradient of both kernels and the
penalty's value (the output kernel in the step's transposed layout). This is the part of a sparse
step that grows with users x items instead of with the ratings (see the README's Scale section).

    python bench/kernel_work.py [--shapes ml-10m,ml-20m] [--steps 20]

No data is read: the kernels and gradients are random, with the shapes of bench/scale.py's.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

import numpy as np
import tensorflow as tf

from scale import SHAPES

from deeprec.optimizers import FusedAdam

log = logging.getLogger("bench.kernel_work")
HIDDEN = 500
L2 = 1e-4


def step_milliseconds(n_items: int, steps: int) -> float:
    """Median milliseconds of the whole-kernel work of one U-AutoRec step with n_items columns."""
    rng = np.random.default_rng(0)
    first = tf.Variable(rng.normal(size=(n_items, HIDDEN)).astype(np.float32))
    output_t = tf.Variable(rng.normal(size=(n_items, HIDDEN)).astype(np.float32))  # the step's layout
    optimizer = FusedAdam(learning_rate=1e-3)
    optimizer.build([first, output_t])
    first_grad = tf.constant(rng.normal(size=(n_items, HIDDEN)).astype(np.float32))
    output_grad_t = tf.constant(rng.normal(size=(n_items, HIDDEN)).astype(np.float32))

    @tf.function
    def work() -> tf.Tensor:
        # What deeprec.sparse.SparseStepper._step does on whole kernels, in the same order.
        penalty = 2.0 * L2 * (tf.nn.l2_loss(first) + tf.nn.l2_loss(output_t))
        optimizer.apply([first_grad + 2.0 * L2 * first, output_grad_t + 2.0 * L2 * output_t], [first, output_t])
        return penalty

    work()  # trace
    times = []
    for _ in range(steps):
        tick = time.perf_counter()
        float(work())
        times.append(time.perf_counter() - tick)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="ml-10m,ml-20m", help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes or args.steps < 1:
        print(f"error: unknown shape(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SHAPES)}; steps >= 1", file=sys.stderr)
        return 2
    results = {}
    for shape in shapes:
        n_users, n_items, _ = SHAPES[shape]
        milliseconds = step_milliseconds(n_items, args.steps)
        steps_per_epoch = -(-n_users // 256)
        results[shape] = milliseconds
        print(f"{shape}: {n_items} items x {HIDDEN}: {milliseconds:.1f} ms per step, {milliseconds * steps_per_epoch / 1000:.1f} s per epoch of {steps_per_epoch} steps")
    print("summary: whole-kernel work " + ", ".join(f"{shape} {ms:.1f} ms/step" for shape, ms in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
