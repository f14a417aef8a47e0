"""The project's packaging files agree with each other and with the code they point at.

pyproject.toml, conda.yaml (MLflow's environment), MLproject, .ci/run and README.md are edited by
hand in different places; these tests catch them drifting apart.
"""

from __future__ import annotations

import re
import shlex
import string
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from deeprec import cli
from deeprec.splits import CANONICAL_SPLITS, SPLIT_NAMES

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pyproject() -> dict:
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


@pytest.fixture(scope="module")
def conda_env() -> dict:
    return yaml.safe_load((REPO / "conda.yaml").read_text())


@pytest.fixture(scope="module")
def mlproject() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text())


def normalized(requirement: str) -> str:
    # Parse rather than compare text, so spacing, quote style, name case and specifier order
    # do not count as differences while any real change to a bound or marker does.
    req = Requirement(requirement)
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{canonicalize_name(req.name)}{extras}{req.specifier}{marker}"


def conda_pip_list(env: dict) -> list[str]:
    pip_sections = [item["pip"] for item in env["dependencies"] if isinstance(item, dict) and "pip" in item]
    assert len(pip_sections) == 1, "conda.yaml should have exactly one `pip:` list"
    return [entry for entry in pip_sections[0] if not entry.strip().startswith("-e")]


# --------------------------------------------------------------------------- dependencies


def test_conda_pip_list_matches_pyproject_dependencies(pyproject: dict, conda_env: dict) -> None:
    declared = [normalized(r) for r in pyproject["project"]["dependencies"]]
    conda = [normalized(r) for r in conda_pip_list(conda_env)]
    assert len(declared) == len(set(declared)), "duplicate entries in pyproject.toml dependencies"
    assert len(conda) == len(set(conda)), "duplicate entries in conda.yaml's pip list"
    assert set(conda) == set(declared)


def test_conda_env_installs_the_project_itself(conda_env: dict) -> None:
    # Without `-e .` the `deeprec` command MLproject runs would not exist in the environment.
    pip_entries = next(item["pip"] for item in conda_env["dependencies"] if isinstance(item, dict))
    assert "-e ." in [entry.strip() for entry in pip_entries]


def test_conda_python_satisfies_requires_python(pyproject: dict, conda_env: dict) -> None:
    pins = [d for d in conda_env["dependencies"] if isinstance(d, str) and re.match(r"python\b", d)]
    assert len(pins) == 1, f"conda.yaml should pin python once, found {pins}"
    version = pins[0].split("=", 1)[1].lstrip("=")
    assert SpecifierSet(pyproject["project"]["requires-python"]).contains(version)


# --------------------------------------------------------------------------- MLproject


def test_mlproject_names_the_project_and_its_conda_env(mlproject: dict) -> None:
    assert mlproject["name"] == "deeprec"
    assert mlproject["conda_env"] == "conda.yaml"
    assert (REPO / mlproject["conda_env"]).is_file()


def test_mlproject_data_entry_point_uses_every_parameter(mlproject: dict) -> None:
    entry = mlproject["entry_points"]["data"]
    command: str = entry["command"]
    parameters = set(entry["parameters"])
    assert command.startswith("deeprec data info")
    placeholders = {name for _, name, _, _ in string.Formatter().parse(command) if name is not None}
    assert parameters, "the data entry point declares no parameters"
    assert placeholders == parameters  # every parameter used, and no placeholder left undeclared
    for name in parameters:
        assert f"{{{name}}}" in command


def test_mlproject_data_command_with_defaults_parses_as_the_cli_expects(mlproject: dict) -> None:
    # MLflow substitutes shell-quoted str(value) for each placeholder; do the same and hand the
    # result to deeprec's own parser, so a renamed option or an impossible default shows up here.
    entry = mlproject["entry_points"]["data"]
    values = {name: shlex.quote(str(spec["default"])) for name, spec in entry["parameters"].items()}
    argv = shlex.split(entry["command"].format(**values))
    assert argv[0] == "deeprec"
    args = cli.build_parser().parse_args(argv[1:])
    assert (args.command, args.data_command) == ("data", "info")
    assert args.dataset == entry["parameters"]["dataset"]["default"]
    assert args.split == entry["parameters"]["split"]["default"]
    assert args.seed == entry["parameters"]["seed"]["default"]
    assert args.split in SPLIT_NAMES
    # cmd_data_info refuses ML-100K's canonical folds for any other registered dataset.
    assert args.split not in CANONICAL_SPLITS or args.dataset == "ml-100k"


# --------------------------------------------------------------------------- CI and README


def readme_test_command() -> str:
    readme = REPO / "README.md"
    if not readme.is_file():
        pytest.fail("README.md is missing: it must give the test command (in a ```bash block) that .ci/run runs")
    blocks = re.findall(r"^```bash[ \t]*\n(.*?)^```", readme.read_text(), flags=re.M | re.S)
    for block in blocks:
        lines = [line.strip().removeprefix("$ ").strip() for line in block.splitlines()]
        commands = [line for line in lines if line and not line.startswith("#") and "pytest" in line]
        if commands:
            return commands[0]
    pytest.fail("README.md has no ```bash code block with a pytest command")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    last = [line for line in lines if line and not line.startswith("#")][-1]
    command = readme_test_command()
    assert command in last


# --------------------------------------------------------------------------- console script


def test_console_script_is_declared_as_cli_main(pyproject: dict) -> None:
    assert pyproject["project"]["scripts"]["deeprec"] == "deeprec.cli:main"


def test_installed_console_script_resolves_to_cli_main() -> None:
    # The editable install's metadata, i.e. what the `deeprec` executable actually calls.
    matches = entry_points(group="console_scripts", name="deeprec")
    assert len(matches) == 1
    assert next(iter(matches)).load() is cli.main
