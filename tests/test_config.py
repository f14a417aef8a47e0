"""The training config: validation, params round trip, and agreement with MLproject and the CLI."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deeprec.cli import build_parser
from deeprec.config import FIELD_DOCS, ConfigError, TrainConfig, read_yaml_file
from deeprec.errors import DeeprecError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_valid_and_documented() -> None:
    cfg = TrainConfig().validate()
    assert [f.name for f in dataclasses.fields(cfg)] == list(FIELD_DOCS)
    assert cfg.hidden_sizes == (500,)
    assert cfg.decoder_l2 == cfg.l2


def test_params_round_trip() -> None:
    cfg = TrainConfig(arch="256,512,256", tied=True, l2_decoder=0.002, noise="mask", noise_level=0.25, orientation="user").validate()
    params = cfg.to_params()
    assert params["tied"] == "true" and params["arch"] == "256,512,256" and params["l2_decoder"] == "0.002"
    assert TrainConfig.from_params(params) == cfg
    assert TrainConfig().to_params()["l2_decoder"] == "same"
    assert TrainConfig.from_params(TrainConfig().to_params()).l2_decoder is None  # "same" means "as l2"
    assert TrainConfig.from_params({"l2_decoder": ""}).l2_decoder is None


def test_from_params_accepts_mlflow_float_strings() -> None:
    cfg = TrainConfig.from_params({"epochs": "3.0", "batch_size": 64, "tied": "False", "refeed": "1"})
    assert (cfg.epochs, cfg.batch_size, cfg.tied, cfg.refeed) == (3, 64, False, 1)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"arch": "256,abc"}, "arch: expected comma-separated positive integers"),
        ({"arch": "256,0"}, "arch: every hidden size must be a positive integer"),
        ({"dropout": "1.5"}, "dropout: must be a fraction in [0, 1), got 1.5"),
        ({"lr": "0"}, "lr: must be > 0"),
        ({"activation": "swish"}, "activation: unknown value 'swish'"),
        ({"last_activation": "softmax"}, "last_activation: unknown value"),
        ({"fill": "average"}, "fill: unknown fill 'average'"),
        ({"fill": "nan"}, "fill: fill 'nan' is not a finite number"),
        ({"fill": "-inf"}, "fill: fill '-inf' is not a finite number"),
        ({"noise": "salt"}, "noise: unknown value"),
        ({"noise": "dropout", "noise_level": "1"}, "noise_level: must be a fraction"),
        ({"noise": "gaussian", "noise_level": "-0.1"}, "noise_level: must be >= 0"),
        ({"noise": "none", "noise_level": "nan"}, "noise_level: must be >= 0, got nan"),
        ({"tied": "true", "arch": "256,512"}, "tied: a tied (constrained) decoder mirrors the encoder"),
        ({"arch": "100000,100000"}, "arch: 10,000,000,000 weights between the hidden layers (40 GB of float32); at most 2,500,000,000"),
        ({"tied": "true", "arch": "64,64"}, "tied: a tied (constrained) decoder mirrors the encoder around the code layer, so arch must be an odd number of layers reading the same both ways (500, or 256,512,256), got 64,64"),
        ({"tied": "true", "arch": "256,512,512,256"}, "tied: a tied (constrained) decoder mirrors the encoder around the code layer"),
        ({"tied": "true", "side_info": "item"}, "tied: side information widens the input"),
        ({"side_info": "user", "orientation": "item"}, "side_info: user features describe the rows"),
        ({"optimizer": "adamw"}, "optimizer: unknown value"),
        ({"groups": "kmeans:1"}, "groups: K must be at least 2"),
        ({"groups": "kmeans:x"}, "groups: kmeans:K needs a whole number K"),
        ({"groups": "gender"}, "groups: expected none, age-gender"),
        ({"groups": "age-gender", "dataset": "ml-20m"}, "groups: ml-20m has no user demographics"),
        ({"side_info": "item", "dataset": "ml-20m"}, "side_info: ml-20m has no item side information"),
        ({"side_info": "user", "orientation": "user", "dataset": "csv:r.csv"}, "side_info: csv:r.csv has no user side information"),
        ({"momentum": "1"}, "momentum: must be in [0, 1)"),
        ({"batch_size": "0"}, "batch_size: must be an integer >= 1"),
        ({"epochs": "2.5"}, "epochs: expected int"),
        ({"precision": "float16"}, "precision: unknown value"),
        ({"dataset": "ml-3m"}, "dataset: unknown value"),
        ({"split": "random"}, "split: unknown value"),
        ({"split": "u1"}, "split: split u1 is ML-100K's canonical fold"),
        ({"model": "vae"}, "model: unknown value"),
        ({"l2": "nan"}, "l2: must be >= 0"),
        ({"learning_rate": "0.1"}, "learning_rate: unknown parameter"),
        ({"refeed": "11"}, "refeed: must be an integer <= 10, got 11"),
        ({"seed": str(2**32)}, "seed: must be an integer <= 4294967295"),
        ({"arch": "500,100001"}, "arch: a hidden layer may have at most 100000 units"),
        ({"groups": "age-gender:X-99"}, "groups: unknown age-gender group 'X-99'; groups: F-1, F-18"),
    ],
)
def test_impossible_values_name_the_parameter(params: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_params(params)
    assert str(err.value).startswith(message.split(":")[0] + ":")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_mlproject_main_parameters_are_the_config_fields() -> None:
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    main = project["entry_points"]["main"]
    defaults = TrainConfig().to_params()
    assert list(main["parameters"]) == list(defaults)
    for name, spec in main["parameters"].items():
        assert str(spec["default"]) == defaults[name], name
        assert f"--{name} {{{name}}}" in main["command"], name
    assert main["command"].startswith("deeprec train ")


def test_cli_train_options_are_the_config_fields() -> None:
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    options = {a.dest for a in train._actions if a.option_strings and a.dest not in ("help", "run_name", "json")}
    assert options == set(FIELD_DOCS)
    args = build_parser().parse_args(["train", "--arch", "256,512,256", "--tied", "true"])
    cfg = TrainConfig.from_params({name: getattr(args, name) for name in FIELD_DOCS})
    assert cfg.hidden_sizes == (256, 512, 256) and cfg.tied


def test_bad_parameter_is_one_line_before_any_work(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deeprec", "train", "--dropout", "1.5"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={"PATH": "/usr/bin:/bin", "DEEPREC_DATA_DIR": str(tmp_path / "empty"), "HOME": str(tmp_path)},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "deeprec: error: dropout: must be a fraction in [0, 1), got 1.5"
    assert list(tmp_path.iterdir()) == []  # no tracking store, no download, nothing written


def test_readme_documents_every_parameter_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, value in TrainConfig().to_params().items():
        assert f"| `{name}` | `{value}` |" in readme, name


def test_a_key_given_twice_in_a_yaml_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("base: {epochs: 1, arch: 8, epochs: 2}\n")
    with pytest.raises(DeeprecError, match=r"twice.yaml: not valid YAML \(key 'epochs' is given twice") as err:
        read_yaml_file(path, "experiment")
    assert "\n" not in str(err.value)
    path.write_text("base: &b {epochs: 1}\nrow: {<<: *b, epochs: 2}\n")  # a merge key may still be overridden
    assert read_yaml_file(path, "experiment")["row"] == {"epochs": 2}


def test_a_yaml_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "utf16.yaml"
    path.write_bytes("name: x\n".encode("utf-16"))
    with pytest.raises(DeeprecError, match=r"utf16.yaml: not a UTF-8 text file \(byte 0\); save the search-space file as UTF-8"):
        read_yaml_file(path, "search-space")


def test_settings_the_config_never_reads_are_named() -> None:
    assert TrainConfig().unused_settings() == []
    assert TrainConfig(noise="mask", noise_level=0.2, optimizer="momentum", momentum=0.5, l2_decoder=0.1).unused_settings() == []
    assert TrainConfig(noise_level=0.2, momentum=0.5, tied=True, l2_decoder=0.0).unused_settings() == [
        "noise_level 0.2 has no effect with noise=none (choose gaussian, dropout or mask)",
        "momentum 0.5 has no effect with optimizer=adam (it applies to optimizer=momentum)",
        "l2_decoder has no effect with tied=true (the decoder is the encoder's kernel transposed)",
    ]
    # the reverse: a noise without its level was silently no noise
    assert TrainConfig(noise="mask").unused_settings() == ["noise=mask has no effect with noise_level 0 (give --noise_level, e.g. 0.2)"]
