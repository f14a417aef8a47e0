"""`deeprec replay-pruning`: median-pruning rules replayed on a finished study's recorded curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from deeprec import pruning, pruning_replay, study_storage, tune
from deeprec.cli import main
from deeprec.errors import DeeprecError

EPOCHS, FOLDS = 10, 3


def curve(start: float, end: float, rate: float) -> dict[int, float]:
    """Per-epoch validation RMSE falling from `start` towards `end` at `rate` in every fold (fold k
    a little worse than fold 0), and the fold checks' running means of the folds' best, numbered
    as `deeprec tune` numbers them."""
    values: dict[int, float] = {}
    bests = []
    for fold in range(FOLDS):
        epochs = end + 0.002 * fold + (start - end) * np.exp(-rate * np.arange(1, EPOCHS + 1))
        for epoch, value in enumerate(epochs, start=1):
            values[pruning.epoch_step(fold, epoch, EPOCHS)] = float(value)
        bests.append(float(epochs.min()))
        values[pruning.fold_step(fold, EPOCHS)] = float(np.mean(bests))
    return values


def make_study(storage: str, name: str = "replayed") -> optuna.Study:
    """Five complete trials: four that learn fast and end at 0.85-0.89, and one (the best) that
    learns slowly and ends at 0.83."""
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    study.set_user_attr(study_storage.SETUP_ATTR, {"config": {"epochs": str(EPOCHS)}, "folds": FOLDS, "space": {}})
    shapes = [(1.2, 0.83, 0.6)] + [(1.2, end, 1.5) for end in (0.85, 0.86, 0.875, 0.89)]
    for lr, (start, end, rate) in enumerate(shapes):
        values = curve(start, end, rate)
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=values[pruning.fold_step(FOLDS - 1, EPOCHS)], params={"lr": 1e-4 * (lr + 1)},
            distributions={"lr": FloatDistribution(1e-5, 1e-2, log=True)}, intermediate_values=values,
        ))
    return study


def test_early_epochs_prune_the_slow_learner_that_wins_and_fold_checks_keep_it(tmp_path: Path) -> None:
    study = make_study(f"sqlite:///{tmp_path}/optuna.db")
    rules = [tune.PrunerSettings("median", 4, 2), tune.PrunerSettings("median", 4, 0, every="fold")]
    per_epoch, per_fold = pruning_replay.replay(study, rules)
    assert [v.trial_number for v in per_epoch.verdicts] == [0, 1, 2, 3, 4]  # best first
    assert per_epoch.verdicts[0].pruned_at == "fold 1 epoch 2"  # the first step past the warm-up
    assert per_epoch.verdicts[0].epochs_trained == 2
    # after fold 1 the slow learner's best (0.83 + its slow decay) beats the median of the others
    assert per_fold.kept()[0] == 0 and per_fold.verdicts[0].epochs_trained == EPOCHS * FOLDS
    # the two worst end above the median of the others after fold 1, the two best fast ones below
    assert [v.pruned_at for v in per_fold.verdicts[1:]] == [None, None, "after fold 1", "after fold 1"]
    assert per_fold.epochs_share() == pytest.approx((3 * EPOCHS * FOLDS + 2 * EPOCHS) / (5 * EPOCHS * FOLDS))


def test_replay_checks_its_inputs(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    with pytest.raises(DeeprecError, match="no such file"):
        study_storage.load_finished_study("replayed", storage)
    assert not (tmp_path / "optuna.db").exists()  # looking did not create it
    make_study(storage)
    with pytest.raises(DeeprecError, match="'other' not in .* it has: replayed"):
        study_storage.load_finished_study("other", storage)
    foreign = optuna.create_study(study_name="foreign", storage=storage)
    with pytest.raises(DeeprecError, match="not made by `deeprec tune`"):
        pruning_replay.replay(foreign, [tune.PrunerSettings()])
    with pytest.raises(DeeprecError, match="only the median pruner"):
        pruning_replay.replay(study_storage.load_finished_study("replayed", storage), [tune.PrunerSettings("hyperband")])


def test_cli_prints_each_rule_and_a_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    make_study(storage)
    assert main(["replay-pruning", "--study-name", "replayed", "--storage", storage, "--warmup-steps", "2", "--startup-trials", "4", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == "summary: the best trial (0) survives 1 of 2 rules: median, after each fold"
    result = json.loads(out[-1])
    assert [r["rule"] for r in result["rules"]] == ["median, every epoch, 2 warm-up steps", "median, after each fold"]
    assert result["rules"][1]["kept"] == [0, 1, 2]
    assert main(["replay-pruning", "--study-name", "replayed", "--storage", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_replaying_needs_no_tensorflow() -> None:
    """`deeprec replay-pruning` trains nothing: its modules must not load TensorFlow (seconds, and its start-up lines)."""
    import subprocess
    import sys

    code = "import sys; import deeprec.cli, deeprec.pruning_replay, deeprec.study_storage; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
