"""The search space of `deeprec tune`: which config fields a study searches, over what ranges or
choices, and which it fixes; the default space and YAML space files.

Kept apart from the tuning code because it needs Optuna's trial interface only, not TensorFlow:
a bad `--space` file is refused in one line before anything heavy is imported. Every error names
the file and key (`params.lr.low`, `fixed.arch`), and a value that no combination with the other
searched values could ever make a valid config is refused here rather than failing trials.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from deeprec.config import ConfigError, TrainConfig, format_param, read_yaml_file
from deeprec.errors import DeeprecError

log = logging.getLogger(__name__)

MAX_COMBINATIONS = 4096  # cap on the combinations tried when checking a space value

NOT_SEARCHABLE = {
    "dataset": "every trial must see the same data",
    "split": "every trial must hold out the same test ratings",
    "seed": "the folds depend on it; fix it instead",
    "epochs": "the pruning steps depend on it; early stopping (patience) picks the epochs",
}
SPEC_KEYS = {"float": ("type", "low", "high", "log", "step"), "int": ("type", "low", "high", "log", "step"), "categorical": ("type", "choices")}
FIELD_KINDS = {f.name: str(f.type).split("|")[0].strip() for f in dataclasses.fields(TrainConfig)}


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: a float or int range (optionally log-scaled or stepped) or choices."""

    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.kind == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(name, list(self.choices))

    def candidates(self) -> tuple[Any, ...]:
        """The values checked against the config before any training: the bounds or the choices."""
        if self.kind == "categorical":
            return self.choices
        cast = int if self.kind == "int" else float
        return (cast(self.low), cast(self.high))

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        spec: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            spec["step"] = self.step
        return spec


DEFAULT_PARAMS: dict[str, ParamSpec] = {
    "l2": ParamSpec("float", 1e-6, 1e-2, log=True),
    "dropout": ParamSpec("float", 0.0, 0.9),
    "lr": ParamSpec("float", 1e-4, 1e-2, log=True),
}


@dataclass(frozen=True)
class SearchSpace:
    """Searched parameters and fixed config fields; `source` names the file in error messages."""

    params: dict[str, ParamSpec]
    fixed: dict[str, Any] = field(default_factory=dict)
    source: str = "default search space"

    @property
    def is_default(self) -> bool:
        return self.params == DEFAULT_PARAMS and not self.fixed

    @property
    def name(self) -> str:
        return "default" if self.source == "default search space" else Path(self.source).stem

    def to_dict(self) -> dict[str, Any]:
        return {"params": {n: s.to_dict() for n, s in self.params.items()}, "fixed": {k: format_param(v) for k, v in self.fixed.items()}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], source: str = "default search space") -> SearchSpace:
        """Rebuild from `to_dict()` output (how a worker process receives the space)."""
        return parse_space({"params": dict(doc["params"]), "fixed": dict(doc.get("fixed") or {})}, source, merge_default=False)

    def base_config(self, cfg: TrainConfig, log_overrides: bool = True) -> TrainConfig:
        """The command-line config with `fixed` applied on top, except where the command line set a
        field to something other than its default: that value wins (a smoke run of a tuned space
        with `--epochs 2` trains 2 epochs). Only non-default values count as set, because
        `mlflow run -e tune` passes every option, most of them at their defaults. `log_overrides=False`
        for a check ahead of the call that logs them (the CLI's, before TensorFlow loads)."""
        params = cfg.to_params()
        defaults = TrainConfig().to_params()
        for key, value in self.fixed.items():
            if params[key] != defaults[key]:
                if log_overrides and params[key] != format_param(value):
                    log.info("%s: fixed.%s = %s overridden by the command line's %s", self.source, key, format_param(value), params[key])
                continue
            try:
                TrainConfig.from_params({**params, key: value})
            except ConfigError as exc:
                raise DeeprecError(f"{self.source}: fixed.{key}: {exc}") from None
            params[key] = value
        try:
            return TrainConfig.from_params(params)
        except ConfigError as exc:
            raise DeeprecError(f"{self.source}: fixed: {exc}") from None

    def check(self, base: TrainConfig) -> None:
        """Every bound and choice must be valid with the base config and some combination of the
        other searched parameters' bounds or choices; otherwise no trial could ever use it."""
        for name, spec in self.params.items():
            other_names = [n for n in self.params if n != name]
            for value in spec.candidates():
                error = _config_error(base, {name: value})
                if error is None:
                    continue
                combos = itertools.islice(itertools.product(*(self.params[n].candidates() for n in other_names)), MAX_COMBINATIONS)
                if all(_config_error(base, {name: value, **dict(zip(other_names, combo))}) for combo in combos):
                    raise DeeprecError(f"{self.source}: params.{name}: value {value!r} can never be used ({error})")


def trial_config(base: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    """The base config with a trial's values, parsed to the fields' types and validated."""
    return TrainConfig.from_params({**base.to_params(), **values})


def _config_error(base: TrainConfig, values: Mapping[str, Any]) -> ConfigError | None:
    try:
        trial_config(base, values)
    except ConfigError as exc:
        return exc
    return None


def load_space(path: str | Path | None = None) -> SearchSpace:
    """The default space, or a YAML file merged over it; every error names the file and key."""
    if path is None or str(path) == "":
        return SearchSpace(dict(DEFAULT_PARAMS))
    return parse_space(read_yaml_file(path, "search-space"), str(path))


def parse_space(doc: Any, source: str, merge_default: bool = True) -> SearchSpace:
    """Validate a space document (`params`, `fixed`); with `merge_default`, merge it over the default."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise DeeprecError(f"{source}: expected a mapping with params and fixed, got {type(doc).__name__}")
    unknown = sorted(set(map(str, doc)) - {"params", "fixed"})
    if unknown:
        raise DeeprecError(f"{source}: unknown key {unknown[0]!r}; expected params, fixed")
    params_doc = doc.get("params") or {}
    fixed_doc = doc.get("fixed") or {}
    if not isinstance(params_doc, dict):
        raise DeeprecError(f"{source}: params: expected a mapping of config field to spec")
    if not isinstance(fixed_doc, dict):
        raise DeeprecError(f"{source}: fixed: expected a mapping of config field to value")
    params = dict(DEFAULT_PARAMS) if merge_default else {}
    for name, spec in params_doc.items():
        name = str(name)
        _check_field(source, f"params.{name}", name)
        if name in NOT_SEARCHABLE:
            raise DeeprecError(f"{source}: params.{name}: cannot be searched ({NOT_SEARCHABLE[name]})")
        if spec is None:
            params.pop(name, None)
        else:
            params[name] = _parse_spec(source, name, spec)
    fixed: dict[str, Any] = {}
    for name, value in fixed_doc.items():
        name = str(name)
        _check_field(source, f"fixed.{name}", name)
        if name in params_doc and params_doc[name] is not None:
            raise DeeprecError(f"{source}: fixed.{name}: also under params; a parameter is either searched or fixed")
        if isinstance(value, (dict, list)):
            raise DeeprecError(f"{source}: fixed.{name}: expected a single value, got a {type(value).__name__}")
        params.pop(name, None)
        fixed[name] = value
    return SearchSpace(params, fixed, source)


def _check_field(source: str, key: str, name: str) -> None:
    if name not in FIELD_KINDS:
        raise DeeprecError(f"{source}: {key}: unknown config field; known: {', '.join(FIELD_KINDS)}")


def _parse_spec(source: str, name: str, spec: Any) -> ParamSpec:
    where = f"{source}: params.{name}"
    if isinstance(spec, list):  # shorthand for a categorical
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise DeeprecError(f"{where}: expected a spec mapping such as {{type: float, low: 0.0, high: 0.5}} or a list of choices")
    kind = spec.get("type")
    if kind not in SPEC_KEYS:
        raise DeeprecError(f"{where}.type: must be float, int or categorical, got {kind!r}")
    extra = sorted(set(map(str, spec)) - set(SPEC_KEYS[kind]))
    if extra:
        raise DeeprecError(f"{where}: unknown key {extra[0]!r} for a {kind} spec; expected {', '.join(SPEC_KEYS[kind])}")
    field_kind = FIELD_KINDS[name]
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise DeeprecError(f"{where}.choices: must be a non-empty list")
        for choice in choices:
            if not isinstance(choice, (str, int, float, bool)):
                raise DeeprecError(f"{where}.choices: each choice must be a single value, got {choice!r}")
        if len(set(map(format_param, choices))) != len(choices):
            raise DeeprecError(f"{where}.choices: choices must be distinct")
        return ParamSpec("categorical", choices=tuple(choices))
    if kind != field_kind:
        raise DeeprecError(f"{where}.type: {name} takes {field_kind} values; use type {field_kind} or categorical")
    if "low" not in spec or "high" not in spec:
        raise DeeprecError(f"{where}: a {kind} spec needs low and high")
    low, high = _number(f"{where}.low", spec["low"], kind), _number(f"{where}.high", spec["high"], kind)
    if not low < high:
        raise DeeprecError(f"{where}: low ({low}) must be below high ({high})")
    use_log = spec.get("log", False)
    if not isinstance(use_log, bool):
        raise DeeprecError(f"{where}.log: expected true or false, got {use_log!r}")
    if use_log and low <= 0:
        raise DeeprecError(f"{where}: a log scale needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(f"{where}.step", step, kind)
        if step <= 0:
            raise DeeprecError(f"{where}.step: must be > 0, got {step}")
        if use_log:
            raise DeeprecError(f"{where}: step and log cannot be combined")
    return ParamSpec(kind, low, high, use_log, step)


def _number(where: str, value: Any, kind: str) -> float:
    # YAML 1.1 reads 1e-6 (no dot) as a string, so numeric strings are accepted.
    if isinstance(value, bool):
        raise DeeprecError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DeeprecError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DeeprecError(f"{where}: expected a finite number, got {value!r}")
    if kind == "int":
        if not number.is_integer():
            raise DeeprecError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    return number
