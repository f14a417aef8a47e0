"""What the benchmarks compare deeprec against, and what they measure with.

- The *notebook-style reference*: training the way the original Keras notebook did it, with plain
  `Model.fit` on the dense, full user x item (or item x user) matrix and a masked loss that treats
  0 as "missing". The model itself is built by deeprec's registry, so the two differ only in how
  they train, not in what they train.
- The machine's matrix-multiply rate and a dense autoencoder's FLOPs per epoch, so that seconds per
  epoch can be read as a fraction of what the hardware does.

Both are plain Keras (`keras.ops`, `Model.fit`), so they run on any Keras backend: bench/gpu.py
trains the reference on JAX or PyTorch where a GPU machine has no TensorFlow.

Shared by bench/speed.py, bench/time_to_target.py and bench/gpu.py; not part of the package.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable

import keras
import scipy.sparse as sp

from deeprec import datasets
from deeprec.config import TrainConfig
from deeprec.errors import DeeprecError
from deeprec.models import MODELS

# The models bench/speed.py and bench/gpu.py time: TrainConfig overrides by display name.
SPEED_MODELS = {
    "U-AutoRec 500": dict(orientation="user"),
    "I-AutoRec 500": dict(orientation="item"),
    "Deep [256,512,256]": dict(orientation="user", arch="256,512,256", activation="selu", dropout=0.8),
}


def load_dataset_or_exit(name: str) -> datasets.Dataset:
    """The named dataset, or a one-line error and exit status 2 (before any training starts)."""
    try:
        return datasets.load(datasets.get_spec(name))
    except DeeprecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def notebook_masked_mse(y_true, y_pred):
    """The notebook's loss: squared error where the target is non-zero, per rating."""
    ops = keras.ops
    mask = ops.cast(ops.not_equal(y_true, 0.0), "float32")
    y_pred = ops.cast(y_pred, "float32")
    return ops.sum(ops.square(y_true - y_pred) * mask) / ops.maximum(ops.sum(mask), 1.0)


class EpochClock(keras.callbacks.Callback):
    """Wall seconds of every epoch of `Model.fit` (training plus its validation pass)."""

    def __init__(self, on_epoch: Callable[[int, keras.Model], bool] | None = None) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self.on_epoch = on_epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._tick = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._tick)
        if self.on_epoch is not None and self.on_epoch(epoch + 1, self.model):
            self.model.stop_training = True


def reference_fit(
    cfg: TrainConfig,
    train: sp.csr_matrix,
    valid: sp.csr_matrix | None,
    epochs: int,
    on_epoch: Callable[[int, keras.Model], bool] | None = None,
    device_data: bool = False,
) -> tuple[keras.Model, list[float]]:
    """Train like the notebook: dense matrices, `Model.fit(x, x, validation_data=(x, valid))`.

    Returns the model and the seconds of each epoch. `on_epoch(epoch, model)` returning True stops.
    With `valid=None` there is no validation pass (the caller's `on_epoch` evaluates instead).
    Only zero fill and no input noise: that is all the notebook's loss and input could express.
    With `device_data`, the matrices are the backend's tensors on its default device instead of
    NumPy arrays: Keras slices PyTorch and TensorFlow tensors where they live, so on a GPU no batch
    is copied from the host (it turns JAX arrays back into NumPy, so there it changes nothing).
    """
    keras.utils.set_random_seed(cfg.seed)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if cfg.precision == "bfloat16" else "float32")
    try:
        model = MODELS[cfg.model](cfg, train.shape[1], train.shape[1])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    optimizer = keras.optimizers.Adam(learning_rate=cfg.lr) if cfg.optimizer == "adam" else keras.optimizers.SGD(learning_rate=cfg.lr, momentum=cfg.momentum)
    model.compile(optimizer=optimizer, loss=notebook_masked_mse)
    as_data = keras.ops.convert_to_tensor if device_data else (lambda dense: dense)
    x = as_data(train.toarray())
    clock = EpochClock(on_epoch)
    validation = None if valid is None else (x, as_data(valid.toarray()))
    model.fit(x, x, batch_size=cfg.batch_size, epochs=epochs, validation_data=validation, shuffle=True, verbose=0, callbacks=[clock])
    return model, clock.seconds


def matmul_gflops(dtype: str, n: int = 2048, repeats: int = 10, warmup_seconds: float = 1.0) -> float:
    """The steady-state rate of an n x n x n matrix multiply in `dtype` ("float32", "bfloat16") on
    the Keras backend's default device, GFLOP/s (median of `repeats`).

    The multiplies first run untimed for `warmup_seconds` (at least three): in a fresh process the
    first second's rate was 5-25% below the steady one (356-431 against 468-478 GFLOP/s on one
    host), which made every efficiency measured against it look that much better. Each timed call
    reads one element back, which waits for an accelerator's asynchronous work to finish.
    """
    ops = keras.ops
    a = ops.cast(keras.random.uniform((n, n), seed=1), dtype)
    b = ops.cast(keras.random.uniform((n, n), seed=2), dtype)

    def matmul(x, y):
        return ops.convert_to_numpy(ops.cast(ops.matmul(x, y)[0, :1], "float32"))

    warm_until, calls = time.perf_counter() + warmup_seconds, 0
    while calls < 3 or time.perf_counter() < warm_until:  # the first calls also pick (or compile) kernels
        matmul(a, b)
        calls += 1
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        matmul(a, b)
        times.append(time.perf_counter() - tick)
    return 2 * n**3 / statistics.median(times) / 1e9


def layer_sizes(cfg: TrainConfig, n_cols: int) -> list[int]:
    """Widths from input to output: [n_cols, hidden..., n_cols]."""
    return [n_cols, *cfg.hidden_sizes, n_cols]


def gflop_split(cfg: TrainConfig, shape: tuple[int, int]) -> tuple[float, float]:
    """Dense matrix-multiply GFLOP of (training on every row, one forward pass over every row).

    Training is a forward pass (2*in*out per layer and row), the weight gradient (2*in*out) and the
    input gradient (2*in*out, except for the first layer, whose input needs none). The forward pass
    is the per-epoch train/validation RMSE (deeprec) or validation loss (reference). Element-wise
    work (activations, the optimizer update) is left out: it is small next to these.
    """
    n_rows, n_cols = shape
    sizes = layer_sizes(cfg, n_cols)
    forward = sum(2 * a * b for a, b in zip(sizes, sizes[1:]))
    train = 3 * forward - 2 * sizes[0] * sizes[1]
    return n_rows * train / 1e9, n_rows * forward / 1e9


def gflop_per_epoch(cfg: TrainConfig, shape: tuple[int, int]) -> float:
    """Dense matrix-multiply GFLOP of one epoch: training on every row plus one forward pass."""
    return sum(gflop_split(cfg, shape))


def median_after_warmup(seconds: list[float]) -> float:
    """Median epoch time without the first epoch (it traces the graphs)."""
    later = seconds[1:] or seconds
    return statistics.median(later) if later else math.nan
