"""The training configuration: one frozen dataclass whose field names are the MLproject `main`
parameters, the `deeprec train` options and the MLflow params, all three.

Every field is documented in FIELD_DOCS (type and meaning). `TrainConfig.validate()` checks
every value without loading any data, so an impossible parameter fails in milliseconds with one
line naming it. `to_params()` / `from_params()` round-trip through MLflow's string params;
unknown keys are an error.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from deeprec.errors import DeeprecError

ACTIVATIONS = ("sigmoid", "identity", "relu", "elu", "selu", "lrelu", "tanh")
NOISES = ("none", "gaussian", "dropout", "mask")
LOSS_AVERAGES = ("rating", "row")  # deeprec.losses.LOSSES
SIDE_INFO = ("none", "user", "item")
OPTIMIZERS = ("adam", "sgd", "momentum", "rmsprop")
PRECISIONS = ("float32", "bfloat16")
MAX_REFEED = 10  # each re-feeding step is unrolled into the compiled training step
MAX_SEED = 2**32 - 1  # NumPy's and TensorFlow's seeds are 32-bit
MAX_LAYER_SIZE = 100_000  # 100,000 units x 26,744 ML-20M items is already 10.7 GB of float32 weights
MAX_HIDDEN_WEIGHTS = 2_500_000_000  # between hidden layers: 10 GB of float32, before Adam's two moments


class ConfigError(DeeprecError):
    """An impossible parameter value; the message starts with the parameter's name."""


@dataclass(frozen=True)
class TrainConfig:
    model: str = "autoencoder"
    dataset: str = "ml-1m"
    split: str = "holdout"
    orientation: str = "item"
    arch: str = "500"
    activation: str = "sigmoid"
    last_activation: str = "identity"
    fill: str = "zero"
    noise: str = "none"
    noise_level: float = 0.0
    dropout: float = 0.0
    l2: float = 0.0001
    l2_decoder: float | None = None
    tied: bool = False
    refeed: int = 0
    side_info: str = "none"
    optimizer: str = "adam"
    lr: float = 0.001
    momentum: float = 0.9
    batch_size: int = 256
    epochs: int = 100
    patience: int = 10
    seed: int = 42
    precision: str = "float32"
    groups: str = "none"
    loss: str = "rating"

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return parse_arch(self.arch)

    @property
    def decoder_l2(self) -> float:
        return self.l2 if self.l2_decoder is None else self.l2_decoder

    def validate(self) -> TrainConfig:
        """Check every field; raise ConfigError naming the first bad one. Returns self."""
        from deeprec import datasets, matrix, models, splits  # lazy: keeps `import deeprec.config` light

        _choice("model", self.model, tuple(models.MODELS))
        if not self.dataset.startswith("csv:"):
            _choice("dataset", self.dataset, tuple(datasets.DATASETS))
        else:  # its ?options are read here, so a typo in one is found with the other fields
            try:
                datasets.get_spec(self.dataset)
            except DeeprecError as exc:
                raise ConfigError(f"dataset: {exc}") from None
        _choice("split", self.split, splits.SPLIT_NAMES)
        try:
            splits.check_split_for(self.split, self.dataset)
        except DeeprecError as exc:
            raise ConfigError(f"split: {exc}") from None
        _choice("orientation", self.orientation, matrix.ORIENTATIONS)
        sizes = parse_arch(self.arch)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("last_activation", self.last_activation, ACTIVATIONS)
        try:
            matrix.check_fill(self.fill)
        except DeeprecError as exc:
            raise ConfigError(f"fill: {exc}") from None
        _choice("noise", self.noise, NOISES)
        if self.noise in ("dropout", "mask"):
            _fraction("noise_level", self.noise_level)
        else:  # gaussian's std; with noise=none unused, but a negative or nan level is still a mistake
            _positive("noise_level", self.noise_level, allow_zero=True)
        _fraction("dropout", self.dropout)
        _positive("l2", self.l2, allow_zero=True)
        if self.l2_decoder is not None:
            _positive("l2_decoder", self.l2_decoder, allow_zero=True)
        if self.tied and (sizes != sizes[::-1] or len(sizes) % 2 == 0):
            # The decoder mirrors the encoder around one code layer: 64,64 reads the same both ways
            # but has no middle layer, and would tie the output to a 64 x 64 kernel.
            raise ConfigError(f"tied: a tied (constrained) decoder mirrors the encoder around the code layer, so arch must be an odd "
                              f"number of layers reading the same both ways (500, or 256,512,256), got {self.arch}")
        if self.tied and self.side_info != "none":
            raise ConfigError("tied: side information widens the input, so the decoder cannot be the encoder transposed; use tied=false")
        _integer("refeed", self.refeed, minimum=0, maximum=MAX_REFEED)
        _choice("side_info", self.side_info, SIDE_INFO)
        if self.side_info not in ("none", self.orientation):
            raise ConfigError(
                f"side_info: {self.side_info} features describe the rows of a {self.side_info}-major matrix; "
                f"with orientation={self.orientation} use side_info=none or {self.orientation}"
            )
        if self.side_info != "none" and (self.dataset.startswith("csv:") or datasets.DATASETS[self.dataset].side_info is None):
            with_side = ", ".join(name for name, spec in datasets.DATASETS.items() if spec.side_info)
            raise ConfigError(f"side_info: {self.dataset} has no {self.side_info} side information; datasets with it: {with_side}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _positive("lr", self.lr)
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum: must be in [0, 1), got {self.momentum}")
        _integer("batch_size", self.batch_size, minimum=1)
        _integer("epochs", self.epochs, minimum=1)
        _integer("patience", self.patience, minimum=0)
        _integer("seed", self.seed, minimum=0, maximum=MAX_SEED)
        _choice("precision", self.precision, PRECISIONS)
        _choice("loss", self.loss, LOSS_AVERAGES)
        from deeprec.groups import parse_groups

        try:
            kind, _ = parse_groups(self.groups)
        except ValueError as exc:
            raise ConfigError(f"groups: {exc}, got {self.groups!r}") from None
        if kind == "age-gender" and (self.dataset.startswith("csv:") or datasets.DATASETS[self.dataset].side_info is None):
            raise ConfigError(f"groups: {self.dataset} has no user demographics for age-gender groups; use kmeans:K")
        return self

    def unused_settings(self) -> list[str]:
        """Fields set away from their default that this config never reads: a `--noise_level 0.2`
        without `--noise` is most likely a forgotten option, not a wish for no noise. Not an error,
        since a search space may sample `noise` and `noise_level` independently."""
        default = TrainConfig()
        notes = []
        if self.noise == "none" and self.noise_level != default.noise_level:
            notes.append(f"noise_level {format_param(self.noise_level)} has no effect with noise=none (choose gaussian, dropout or mask)")
        if self.noise != "none" and self.noise_level == 0:
            notes.append(f"noise={self.noise} has no effect with noise_level 0 (give --noise_level, e.g. 0.2)")
        if self.optimizer != "momentum" and self.momentum != default.momentum:
            notes.append(f"momentum {format_param(self.momentum)} has no effect with optimizer={self.optimizer} (it applies to optimizer=momentum)")
        if self.l2_decoder is not None and self.tied:
            notes.append("l2_decoder has no effect with tied=true (the decoder is the encoder's kernel transposed)")
        return notes

    def to_params(self) -> dict[str, str]:
        """Flat string params for MLflow (same names as MLproject); an unset l2_decoder is "same"."""
        return {f.name: format_param(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainConfig:
        """Build from strings or typed values (MLflow params, CLI, YAML); unknown keys are an error."""
        check_param_names(params)
        known = {f.name: f for f in fields(cls)}
        values = {name: _parse(name, known[name].type, value) for name, value in params.items()}
        return cls(**values).validate()

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes).validate()


def check_param_names(params: Iterable[str]) -> None:
    """Refuse a name that is not a TrainConfig field (a typo would otherwise be dropped or blamed elsewhere)."""
    known = [f.name for f in fields(TrainConfig)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown parameter; known: {', '.join(known)}")


FIELD_DOCS: dict[str, str] = {
    "model": "str — model builder from the registry (deeprec.models.MODELS); `autoencoder` covers AutoRec and Deep AutoRec",
    "dataset": "str — ml-100k | ml-1m | ml-10m | ml-20m | ml-latest-small | csv:PATH[?sep=,&header=yes|no&scale=MIN,MAX&duplicates=keep-last]",
    "split": "str — holdout (the report's 10%/10% stratified protocol) | u1..u5 (ML-100K canonical folds)",
    "orientation": "str — user (U-AutoRec: a row per user) | item (I-AutoRec: a row per item)",
    "arch": f"str — comma-separated hidden layer sizes, each at most {MAX_LAYER_SIZE}; 500 is AutoRec, 256,512,256 a deep model whose middle layer is the code",
    "activation": f"str — hidden-layer activation: {' | '.join(ACTIVATIONS)} (lrelu = leaky ReLU, slope 0.2)",
    "last_activation": "str — output-layer activation, same choices (identity by default: ratings are unbounded before clipping)",
    "fill": "str — input value of unobserved entries: zero | a number such as 3 | row-mean | col-mean | global-mean",
    "noise": "str — input corruption while training: none | gaussian (std noise_level) | dropout (rate noise_level) | mask (drop that fraction of observed inputs, as in CDAE)",
    "noise_level": "float — strength of `noise` (std for gaussian, a fraction in [0, 1) otherwise)",
    "dropout": "float — dropout rate after the code (middle) layer, in [0, 1)",
    "l2": "float — L2 weight penalty (λ·Σw²) on encoder layers",
    "l2_decoder": "float or `same` — L2 penalty on decoder layers; `same` (the default) means the value of l2; unused with tied (the decoder's kernels are the encoder's)",
    "tied": "bool — constrained decoder: decoder weights are the encoder weights transposed (NVIDIA); arch must be a palindrome of odd length",
    "refeed": f"int — dense re-feeding steps per batch (NVIDIA), 0 to {MAX_REFEED}: the dense output is fed back as input and target",
    "side_info": "str — none | user | item: one-hot side features concatenated to each input row (must match orientation)",
    "optimizer": "str — adam | sgd | momentum (SGD with `momentum`) | rmsprop",
    "lr": "float — learning rate (> 0)",
    "momentum": "float — momentum for the momentum optimizer, in [0, 1)",
    "batch_size": "int — rows per training batch",
    "epochs": "int — maximum number of epochs",
    "patience": "int — stop after this many epochs without a better validation RMSE (0: never stop early); the best weights are restored",
    "seed": f"int — seed of weight initialisation, shuffling and noise, 0 to {MAX_SEED} (the split has its own, the report's)",
    "precision": "str — float32 | bfloat16 (mixed precision: bfloat16 compute, float32 weights; slower than float32 on CPUs without bfloat16 instructions, which training warns about)",
    "groups": "str — none | age-gender | age-gender:LABEL (e.g. M-25) | kmeans:K: one model per user group, evaluated overall and per group",
    "loss": "str — how the masked squared errors of a batch are averaged: rating (every rating weighs the same) | row (per row first, as the original Keras notebooks did; every user or item weighs the same)",
}


def parse_arch(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"arch: expected comma-separated positive integers such as 256,512,256, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"arch: every hidden size must be a positive integer, got {text!r}")
    if max(sizes) > MAX_LAYER_SIZE:
        raise ConfigError(f"arch: a hidden layer may have at most {MAX_LAYER_SIZE} units, got {text!r}")
    hidden_weights = sum(a * b for a, b in zip(sizes, sizes[1:]))
    if hidden_weights > MAX_HIDDEN_WEIGHTS:
        raise ConfigError(f"arch: {hidden_weights:,} weights between the hidden layers ({4 * hidden_weights / 1e9:.0f} GB of float32); "
                          f"at most {MAX_HIDDEN_WEIGHTS:,}, got {text!r}")
    return sizes


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: unknown value {value!r}; choose one of {', '.join(choices)}")


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name}: must be a fraction in [0, 1), got {value}")


# Each fold trains a whole model, and assigning the folds costs a pass over the ratings per fold:
# 100,000 folds ran out of memory, and would have taken hours before the first model.
MAX_FOLDS = 100
DEFAULT_FOLDS = 5


def check_cv(cfg: TrainConfig, folds: int) -> None:
    """What cross-validation (and tuning over its folds) refuses whatever the data, so that it
    is refused before the data is read."""
    if folds < 2:
        raise DeeprecError(f"folds: need at least 2, got {folds}")
    if folds > MAX_FOLDS:
        raise DeeprecError(f"folds: at most {MAX_FOLDS} (each fold trains a model; 5 or 10 are usual), got {folds}")
    if cfg.groups != "none":
        raise DeeprecError("groups: cross-validation and tuning train one model per fold; use groups=none")


def _integer(name: str, value: int, minimum: int, maximum: int | None = None) -> None:
    if value < minimum:
        raise ConfigError(f"{name}: must be an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}: must be an integer <= {maximum}, got {value}")


SAME_AS_L2 = "same"  # how an unset l2_decoder reads in params (MLflow cannot carry an empty value)


def format_param(value: Any) -> str:
    """A config value as an MLflow/MLproject param string (bools lower-case, None as `same`)."""
    if value is None:
        return SAME_AS_L2
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse_bool(value: Any) -> bool:
    """true/false, yes/no or 1/0 in any case (as typed after -P, --flag or in YAML); ValueError otherwise."""
    if isinstance(value, bool):
        return value
    parsed = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(str(value).strip().lower())
    if parsed is None:
        raise ValueError(f"expected true or false, got {value!r}")
    return parsed


def _parse(name: str, annotation: str, value: Any) -> Any:
    """Convert a string (or typed) value to the field's type, with a one-line error naming it."""
    optional = "None" in str(annotation)
    if optional and (value is None or str(value).strip() in ("", SAME_AS_L2)):
        return None
    kind = str(annotation).split("|")[0].strip()
    try:
        if kind == "bool":
            return parse_bool(value)
        if kind == "int":
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {kind}, got {value!r}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: PyYAML would keep the last value
    silently, so `epochs: 1` followed by `epochs: 2` would train something the file does not show."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so below
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml_file(path: str | Path, what: str) -> Any:
    """The parsed YAML document of a config file (experiment, search space); one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise DeeprecError(f"{path}: no such {what} file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DeeprecError(f"{path}: not a UTF-8 text file (byte {exc.start}); save the {what} file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise DeeprecError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
