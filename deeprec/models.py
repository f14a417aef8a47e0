"""Model registry: name -> builder(cfg, n_inputs, n_outputs) -> keras.Model.

A new model is one builder plus one MODELS entry; the tests build and train every registered
model for one epoch. Models map an input row (ratings with fill, then any side features) to
predicted ratings for the row's n_outputs columns. Input noise lives in the training step
(it needs the observed mask), not in the model, so an exported model is a plain Keras model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from deeprec.config import TrainConfig

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

# Keras names for the config's activation names.
KERAS_ACTIVATIONS = {
    "sigmoid": "sigmoid",
    "identity": "linear",
    "relu": "relu",
    "elu": "elu",
    "selu": "selu",
    "lrelu": "leaky_relu",
    "tanh": "tanh",
}


def build_autoencoder(cfg: TrainConfig, n_inputs: int, n_outputs: int) -> keras.Model:
    """AutoRec (one hidden layer) or Deep AutoRec (several): Dense layers, the middle one the code.

    Encoder = layers up to and including the code layer (L2 `l2`); decoder = the layers after it
    and the output layer (L2 `l2_decoder`). Dropout follows the code layer. With `tied`, each
    decoder layer uses the mirrored encoder layer's kernel transposed.
    """
    # Keras is imported here, not at module level, so that validating a config (which checks
    # the model name against MODELS) stays instant and prints nothing from TensorFlow.
    import keras
    from keras import layers

    from deeprec.layers import DenseTransposed

    sizes = cfg.hidden_sizes
    code = len(sizes) // 2
    activation = KERAS_ACTIVATIONS[cfg.activation]
    inputs = keras.Input(shape=(n_inputs,), name="ratings")
    x = inputs
    encoder: list[layers.Dense] = []
    for depth, units in enumerate(sizes[: code + 1]):
        dense = layers.Dense(units, activation=activation, kernel_regularizer=_l2(cfg.l2), name=f"encoder_{depth}")
        x = dense(x)
        encoder.append(dense)
    if cfg.dropout > 0:
        x = layers.Dropout(cfg.dropout, seed=cfg.seed, name="code_dropout")(x)
    decoder_sizes = list(sizes[code + 1 :]) + [n_outputs]
    for depth, units in enumerate(decoder_sizes):
        last = depth == len(decoder_sizes) - 1
        act = KERAS_ACTIVATIONS[cfg.last_activation] if last else activation
        name = "output" if last else f"decoder_{depth}"
        if cfg.tied:
            # Mirror: the first decoder layer ties to the last encoder layer below the code, etc.
            x = DenseTransposed(encoder[code - depth], activation=act, name=name, dtype="float32" if last else None)(x)
        else:
            regularizer = _l2(cfg.decoder_l2)
            x = layers.Dense(units, activation=act, kernel_regularizer=regularizer, name=name, dtype="float32" if last else None)(x)
    # With `tied`, decoder kernels are the encoder's, so only `l2` penalises them.
    return keras.Model(inputs, x, name=cfg.model)


def _l2(value: float):
    import keras

    return keras.regularizers.L2(value) if value > 0 else None


def l2_penalties(model: keras.Model) -> list[tuple[keras.Variable, float]]:
    """(kernel, λ) for each L2-penalised kernel: the models' only penalties (`l2`, `l2_decoder`).

    The training steps add the penalty's gradient, 2·λ·W, to each kernel's by hand instead of
    differentiating `model.losses`: through the tape, Keras's λ·ΣW² costs a squared copy of every
    kernel and several element-wise passes (about 10% of the deep model's step on ML-1M; three
    kernel-sized buffers at the ML-10M shape).
    """
    import keras

    penalties = []
    for layer in model.layers:
        regularizer = getattr(layer, "kernel_regularizer", None)
        if regularizer is None:
            continue
        if not isinstance(regularizer, keras.regularizers.L2):
            raise ValueError(f"layer {layer.name}: only L2 kernel penalties are supported, got {type(regularizer).__name__}")
        penalties.append((layer.kernel, float(regularizer.l2)))
    return penalties


def penalty_value(penalties: list[tuple[keras.Variable, float]]) -> tf.Tensor:
    """Σ λ·ΣW² over `l2_penalties(model)`: what `model.losses` sums, as one reduction per kernel
    (l2_loss is ΣW²/2) without a squared copy of it."""
    import tensorflow as tf

    return tf.add_n([2.0 * l2 * tf.nn.l2_loss(kernel.value) for kernel, l2 in penalties]) if penalties else tf.constant(0.0)


def untie(model: keras.Model, cfg: TrainConfig) -> keras.Model:
    """A plain-Dense copy of `model` computing the same function (tied kernels transposed)."""
    if not cfg.tied:
        return model
    import keras

    from deeprec.layers import DenseTransposed

    n_inputs, n_outputs = model.input_shape[-1], model.output_shape[-1]
    # Under the model's own precision policy: built in float32, a bfloat16 model's copy computed
    # other predictions than those evaluated (by up to 4e-3).
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if cfg.precision == "bfloat16" else "float32")
    try:
        plain = MODELS[cfg.model](cfg.replace(tied=False), n_inputs, n_outputs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for layer in plain.layers:
        if not layer.weights:
            continue
        source = model.get_layer(layer.name)
        if isinstance(source, DenseTransposed):
            layer.set_weights([keras.ops.convert_to_numpy(source.source.kernel).T, keras.ops.convert_to_numpy(source.bias)])
        else:
            layer.set_weights(source.get_weights())
    return plain


MODELS: dict[str, Callable[[TrainConfig, int, int], keras.Model]] = {
    "autoencoder": build_autoencoder,
}
