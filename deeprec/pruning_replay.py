"""What a pruning rule would have done to a finished study (`deeprec replay-pruning`).

A study's complete trials hold their whole validation curves (per epoch, per fold, at the steps of
`pruning.epoch_step` / `pruning.fold_step`). Replaying a rule on them answers "would this pruner have
kept the trials that won?" without training anything: for each complete trial, leave-one-out, a
fresh in-memory study holds the *other* complete trials as finished, and the trial's recorded
curve is fed step by step through the same `pruning.TrialReporter` and Optuna pruner that a real
study uses. The trial is pruned where that pruner would have stopped it, or kept.

Leave-one-out is the favourable case for the trial replayed (every other trial had finished before
it, so the pruner compares it with all of them); in a real study the trials that start first face
fewer, and in parallel studies the order differs. What it measures is how well the rule's early
verdicts agree with the trials' final CV RMSE. Only the median pruner is replayed: Hyperband's
verdicts depend on the bracket a trial is assigned to, not only on the curves.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from deeprec.errors import DeeprecError
from deeprec.pruning import TrialReporter, fold_step, make_pruner
from deeprec.study_storage import SETUP_ATTR
from deeprec.tune_options import PrunerSettings


@dataclass(frozen=True)
class Verdict:
    """One trial under one rule: where it would have been pruned (None: kept) and what it trained."""

    trial_number: int
    value: float  # the trial's recorded CV RMSE
    pruned_at: str | None  # "fold F epoch E" or "after fold F", as TrialPruned says it
    epochs_trained: int
    epochs_recorded: int


@dataclass(frozen=True)
class RuleResult:
    rule: PrunerSettings
    verdicts: list[Verdict]  # best trial first

    @property
    def label(self) -> str:
        if self.rule.every == "fold":
            return "median, after each fold"
        return f"median, every epoch, {self.rule.warmup_steps} warm-up steps"

    def kept(self) -> list[int]:
        return [v.trial_number for v in self.verdicts if v.pruned_at is None]

    def epochs_share(self) -> float:
        """Epochs the rule would have trained, as a share of the epochs the trials recorded."""
        return sum(v.epochs_trained for v in self.verdicts) / max(1, sum(v.epochs_recorded for v in self.verdicts))


def study_shape(study: optuna.Study) -> tuple[int, int]:
    """(epochs, folds) the study's steps were numbered with, from the setup it recorded."""
    setup = study.user_attrs.get(SETUP_ATTR)
    if not setup:
        raise DeeprecError(f"study {study.study_name!r} was not made by `deeprec tune` (no {SETUP_ATTR} attribute)")
    return int(float(setup["config"]["epochs"])), int(setup["folds"])


def replay(study: optuna.Study, rules: list[PrunerSettings]) -> list[RuleResult]:
    """Each rule on each complete trial of `study`, leave-one-out (see the module docstring)."""
    epochs, folds = study_shape(study)
    complete = sorted((t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    if len(complete) < 2:
        raise DeeprecError(f"study {study.study_name!r} has {len(complete)} complete trial(s); a replay needs at least 2")
    for rule in rules:
        if rule.name != "median":
            raise DeeprecError(f"replay: only the median pruner can be replayed, got {rule.name!r}")
    return [RuleResult(rule, [_replay_trial(t, [o for o in complete if o is not t], rule, epochs, folds) for t in complete]) for rule in rules]


def _replay_trial(trial: FrozenTrial, others: list[FrozenTrial], rule: PrunerSettings, epochs: int, folds: int) -> Verdict:
    fold_checks = {fold_step(k, epochs) for k in range(folds)}
    study = optuna.create_study(direction="minimize", pruner=make_pruner(rule, folds, epochs))
    for other in others:
        # What the other trial would have recorded under this rule: no per-epoch values when
        # pruning every fold (the pruner compares values at the same step only).
        curve = {s: v for s, v in other.intermediate_values.items() if rule.every == "epoch" or s in fold_checks}
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=other.value, params=other.params, distributions=other.distributions, intermediate_values=curve,
        ))
    reporter = TrialReporter(study.ask(), epochs, folds, every=rule.every)
    fold_means: list[float] = []
    epochs_trained = 0
    epochs_recorded = sum(1 for s in trial.intermediate_values if s not in fold_checks)
    try:
        for step in sorted(trial.intermediate_values):
            value = trial.intermediate_values[step]
            fold, epoch = divmod(step - 1, epochs + 1)
            if step in fold_checks:
                fold_means.append(value)
                # the recorded value is the running mean of the folds' best RMSE: undo the mean
                bests = [fold_means[0]] + [(k + 1) * fold_means[k] - k * fold_means[k - 1] for k in range(1, len(fold_means))]
                reporter.on_fold(fold, bests)
            else:
                epochs_trained += 1
                reporter.on_epoch(fold, {"epoch": epoch + 1, "valid_rmse": value})
    except optuna.TrialPruned as pruned:
        return Verdict(trial.number, trial.value, str(pruned).split(":")[0], epochs_trained, epochs_recorded)
    return Verdict(trial.number, trial.value, None, epochs_trained, epochs_recorded)
