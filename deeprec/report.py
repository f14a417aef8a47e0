"""`deeprec report`: the tracked runs of a sweep beside the published numbers.

For each row: the published value, ours as mean ± std over seeds (population std, ddof=0) of
`test_rmse_user_avg` (the report's per-user-averaged metric) and `test_rmse` (per rating), and
the difference on the experiment's metric (ours − published; negative is better), and what the
runs cost here: their mean best epoch and wall minutes, and the total run time of the table. A
cross-validation row (`cv:` in the experiment file) reports its fold ensemble's test metrics, or
its refit's without `ensemble`, and its CV-chosen epochs as the best epoch. Full
runs are used when a row has any; otherwise its smoke runs, marked as such — the two are never
averaged together.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from deeprec.sweep import TAG_KIND, TAG_ROW, TAG_SMOKE, TAG_SWEEP, Experiment, trained_row_config

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportRow:
    name: str
    published: float | None
    measured_user_avg: float | None
    measured_rmse: float | None
    std: float | None  # spread over seeds of the experiment's metric
    runs: int
    smoke: bool
    best_epoch: float | None = None  # mean over the runs
    minutes: float | None = None  # mean wall minutes per run (start to end, evaluation included)

    def difference(self, metric: str) -> float | None:
        ours = self.measured_user_avg if metric == "test_rmse_user_avg" else self.measured_rmse
        return None if ours is None or self.published is None else ours - self.published


def collect(experiment: Experiment) -> list[ReportRow]:
    """One ReportRow per experiment row, from the FINISHED runs of its sweep."""
    import mlflow

    runs = mlflow.search_runs(
        filter_string=f"tags.`{TAG_SWEEP}` = '{experiment.name}' and tags.`{TAG_KIND}` = 'sweep-run' and attributes.status = 'FINISHED'",
        output_format="list",
    )
    rows = []
    for row in experiment.rows:
        named = [r for r in runs if r.data.tags.get(TAG_ROW) == row.name]
        mine = [r for r in named if trained_row_config(r, experiment, row)]
        if len(mine) < len(named):
            log.warning("%s: %d finished run(s) trained an earlier config of this row; left out", row.name, len(named) - len(mine))
        full = [r for r in mine if r.data.tags.get(TAG_SMOKE) != "true"]
        chosen, smoke = (full, False) if full else (mine, bool(mine))
        chosen = _latest_alike(row.name, chosen)
        user_avg = _logged(chosen, row.metric_key("test_rmse_user_avg"))
        rmse = _logged(chosen, row.metric_key("test_rmse"))
        spread = user_avg if experiment.metric == "test_rmse_user_avg" else rmse
        best_epochs = _logged(chosen, row.best_epoch_key)
        minutes = [(r.info.end_time - r.info.start_time) / 60_000 for r in chosen if r.info.end_time and r.info.start_time]
        rows.append(ReportRow(
            row.name, row.published, _mean(user_avg), _mean(rmse), float(np.std(spread)) if spread else None, len(chosen), smoke,
            _mean(best_epochs), _mean(minutes),
        ))
    return rows


def _latest_alike(row: str, runs: list) -> list:
    """The runs measured on the same ratings (MD5) and, for smoke runs, with the same epochs as
    the latest one: a csv: file edited in place keeps its path, the config's only trace of it,
    and smoke sweeps of different --epochs are not one measurement."""
    if not runs:
        return runs
    latest = max(runs, key=lambda r: r.info.end_time or 0)

    def key(run) -> tuple:
        return run.data.tags.get("dataset_digest"), run.data.params.get("epochs")

    alike = [r for r in runs if key(r) == key(latest)]
    if len(alike) < len(runs):
        log.warning("%s: %d finished run(s) measured other ratings or another smoke --epochs than the latest; left out", row, len(runs) - len(alike))
    return alike


def _logged(runs: list, key: str) -> list[float]:
    return [r.data.metrics[key] for r in runs if key in r.data.metrics]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(experiment: Experiment, rows: list[ReportRow]) -> str:
    metric_name = "per-user avg" if experiment.metric == "test_rmse_user_avg" else "per rating"
    lines = [
        f"### {experiment.title}",
        "",
        f"Published metric: {metric_name} test RMSE. Ours: mean ± std over seeds.",
        "",
        "| row | published | ours, per-user avg | ours, per rating | difference | runs | best epoch | minutes per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        std = f" ± {_fmt(r.std)}" if r.std is not None and r.runs > 1 else ""
        user_avg = _fmt(r.measured_user_avg) + (std if experiment.metric == "test_rmse_user_avg" else "")
        rmse = _fmt(r.measured_rmse) + (std if experiment.metric == "test_rmse" else "")
        diff = r.difference(experiment.metric)
        runs = f"{r.runs}" + (" (smoke)" if r.smoke else "")
        lines.append(
            f"| {r.name} | {_fmt(r.published)} | {user_avg} | {rmse} | {'—' if diff is None else f'{diff:+.4f}'} | {runs} "
            f"| {_fmt(r.best_epoch, 0)} | {_fmt(r.minutes, 1)} |"
        )
    hours, minutes = divmod(round(sum(r.minutes * r.runs for r in rows if r.minutes is not None)), 60)
    lines += ["", f"{sum(r.runs for r in rows)} runs, {hours} h {minutes} min of run time in all."]
    return "\n".join(lines) + "\n"


def figure(experiment: Experiment, rows: list[ReportRow]) -> Figure:
    """Published vs measured per row (the experiment's metric), with the seed spread as error bars."""
    from matplotlib.figure import Figure  # not pyplot: no window, no global backend

    ours = [r.measured_user_avg if experiment.metric == "test_rmse_user_avg" else r.measured_rmse for r in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(max(6, 0.9 * len(rows) + 2), 4))
    ax = fig.subplots()
    ax.scatter(x, [np.nan if r.published is None else r.published for r in rows], marker="s", label="published")
    ax.errorbar(x, [np.nan if v is None else v for v in ours], yerr=[0 if r.std is None else r.std for r in rows], fmt="o", capsize=3, label="ours")
    ax.set_xticks(x, [r.name + (" *" if r.smoke else "") for r in rows], rotation=30, ha="right")
    ax.set_ylabel(experiment.metric)
    ax.set_title(experiment.title + ("  (* smoke runs)" if any(r.smoke for r in rows) else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def report(experiment: Experiment) -> tuple[list[ReportRow], str]:
    """Collect the rows, and log the table and the plot to the sweep's parent run when it exists
    and some row has runs (an empty table would replace a good one). Logged by run id, so the
    parent's status stays as the sweep left it (a run context would end it FINISHED)."""
    import mlflow

    rows = collect(experiment)
    table = markdown(experiment, rows)
    parents = mlflow.search_runs(filter_string=f"tags.`{TAG_SWEEP}` = '{experiment.name}' and tags.`{TAG_KIND}` = 'sweep'", output_format="list")
    if parents and any(row.runs for row in rows):
        client, run_id = mlflow.MlflowClient(), parents[0].info.run_id
        client.log_text(run_id, table, f"report/{experiment.name}.md")
        client.log_figure(run_id, figure(experiment, rows), f"report/{experiment.name}.png")
    return rows, table


def as_json(rows: list[ReportRow]) -> dict:
    return {"rows": [{k: v for k, v in asdict(r).items()} for r in rows]}
