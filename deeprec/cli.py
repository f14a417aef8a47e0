"""The `deeprec` command. Every user error ends as one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from deeprec import __version__, datasets, interrupts, preparation, tracking_store
from deeprec.config import DEFAULT_FOLDS, FIELD_DOCS, MAX_FOLDS, MAX_SEED, TrainConfig, check_cv, parse_bool
from deeprec.errors import DeeprecError
from deeprec.idmap import stored_id
from deeprec.ratings import DUPLICATE_POLICIES
from deeprec.splits import REPORT_SEED, SPLIT_NAMES, check_split_for, describe_split
from deeprec.tune_options import PRUNE_EVERY, PRUNERS, PrunerSettings, TuneOptions

log = logging.getLogger("deeprec")

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _scale(text: str) -> tuple[float, float]:
    try:
        return datasets.parse_scale(text)
    except DeeprecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _whole_number(text: str) -> int:
    """An integer; MLflow may pass float-typed parameters as "5.0"."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def _seed(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {MAX_SEED}, got {text!r}")
    return value


def _boolean(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _header(text: str) -> bool | None:
    return datasets.HEADER_VALUES[text]


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="ml-1m", help=f"one of {', '.join(datasets.dataset_names())} (default ml-1m)")
    parser.add_argument("--sep", default=None, help="csv:PATH only: field separator (default: detected)")
    parser.add_argument("--header", choices=tuple(datasets.HEADER_VALUES), default="auto", help="csv:PATH only: is the first line a header")
    parser.add_argument("--scale", type=_scale, default=None, metavar="MIN,MAX", help="csv:PATH only: rating scale (default: from the data)")
    parser.add_argument("--duplicates", choices=DUPLICATE_POLICIES, default=None, help="duplicate (user, item) ratings: error (default) or keep the last")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field. Every option takes a value (`--tied true`), exactly like
    `mlflow run . -P tied=true`."""
    defaults = TrainConfig().to_params()
    for name, doc in FIELD_DOCS.items():
        # argparse formats help with %: the docs' "10%" must be escaped.
        parser.add_argument(f"--{name}", default=defaults[name], metavar=name.upper(), help=f"{doc} (default: {defaults[name]})".replace("%", "%%"))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The validated config of the parsed options, and its csv:PATH file present, checked before
    anything heavy is imported."""
    cfg = TrainConfig.from_params({name: getattr(args, name) for name in FIELD_DOCS})
    datasets.check_local_file(datasets.get_spec(cfg.dataset))
    return cfg


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with its errors in one line: by default it prints the whole usage block (20 lines
    for `deeprec tune`) before the error. `--help` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        line = f"{self.prog}: error: {message}"
        tracking_store.tag_project_run_failure(line)
        self.exit(EXIT_USAGE, line + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="deeprec", description="Autoencoder collaborative filtering experiments, tracked in MLflow.")
    parser.add_argument("--version", action="version", version=f"deeprec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="download, inspect and verify datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    download = data_commands.add_parser("download", help="fetch a dataset into the cache ($DEEPREC_DATA_DIR)")
    download.add_argument("--dataset", default="ml-1m", help=f"one of {', '.join(sorted(datasets.DATASETS))} (default ml-1m)")
    info = data_commands.add_parser("info", help="ratings, users, items, density, histogram and split sizes")
    _add_dataset_args(info)
    info.add_argument("--split", default=None, help=f"also split the data: one of {', '.join(SPLIT_NAMES)}")
    info.add_argument("--seed", type=_seed, default=REPORT_SEED, help=f"split seed (default {REPORT_SEED}, the report's)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    verify = data_commands.add_parser("verify", help="re-check the archive checksum and validate every file")
    _add_dataset_args(verify)

    train = commands.add_parser("train", help="train and evaluate one model, logged as an MLflow run")
    add_config_options(train)
    train.add_argument("--run-name", default=None, help="MLflow run name")
    train.add_argument("--json", action="store_true", help="print one JSON object with the run id and test metrics last")

    cross = commands.add_parser("cv", help="K-fold cross-validation over the non-test ratings, one parent run with a nested run per fold")
    add_config_options(cross)
    cross.add_argument("--folds", type=_whole_number, default=DEFAULT_FOLDS, help=f"number of folds, 2 to {MAX_FOLDS} (default {DEFAULT_FOLDS})")
    cross.add_argument("--refit", nargs="?", const=True, default=False, type=_boolean, metavar="true|false",
                       help="then retrain on all non-test ratings for the CV-chosen epochs and evaluate on test once")
    cross.add_argument("--ensemble", nargs="?", const=True, default=False, type=_boolean, metavar="true|false",
                       help="also score the average of the K fold models on the test split once (ensemble_* metrics)")
    cross.add_argument("--run-name", default=None, help="MLflow run name of the parent run")
    cross.add_argument("--json", action="store_true", help="print one JSON object with the run id and CV (and test) metrics last")

    study, pruner = TuneOptions(), PrunerSettings()  # the defaults, typed once
    tune = commands.add_parser("tune", help="Optuna study over CV folds: a parent MLflow run, a nested run per trial, resumable, parallel")
    add_config_options(tune)
    tune.add_argument("--folds", type=_whole_number, default=DEFAULT_FOLDS, help=f"folds of the CV objective, 2 to {MAX_FOLDS} (default {DEFAULT_FOLDS})")
    tune.add_argument("--space", default=None, metavar="YAML", help="search-space file merged over the default (experiments/search_space.yaml)")
    tune.add_argument("--n-trials", type=_whole_number, default=study.n_trials, help=f"finished trials to add to the study (default {study.n_trials})")
    tune.add_argument("--n-workers", type=_whole_number, default=study.n_workers, help=f"worker processes on this machine sharing the storage (default {study.n_workers})")
    tune.add_argument("--study-name", default=None, help="Optuna study (default deeprec-<dataset>-<orientation>-<arch>); an existing one is resumed")
    tune.add_argument("--storage", default=None, metavar="URL",
                      help="SQLAlchemy URL (sqlite:///PATH, postgresql+psycopg2://USER:PASS@HOST/DB) or journal:PATH (default optuna.db beside an SQLite MLflow store, else ./optuna.db)")
    tune.add_argument("--pruner", choices=PRUNERS, default=pruner.name, help=f"prune on per-epoch and per-fold validation RMSE (default {pruner.name})")
    tune.add_argument("--pruner-startup-trials", type=_whole_number, default=pruner.startup_trials,
                      help=f"median pruner: complete trials before pruning starts (default {pruner.startup_trials})")
    tune.add_argument("--pruner-warmup-steps", type=_whole_number, default=pruner.warmup_steps,
                      help=f"median pruner, per-epoch checks: a trial's steps before it may be pruned (default {pruner.warmup_steps})")
    tune.add_argument("--prune-every", choices=PRUNE_EVERY, default=pruner.every,
                      help=f"epoch: check after every epoch and every fold; fold: only after each fold, for spaces whose configurations learn at different speeds (default {pruner.every})")
    tune.add_argument("--heartbeat-interval", type=_whole_number, default=study.heartbeat_interval, metavar="S",
                      help=f"seconds between a running trial's heartbeats (default {study.heartbeat_interval})")
    tune.add_argument("--grace-period", type=_whole_number, default=study.grace_period, metavar="S",
                      help=f"a running trial without heartbeat for this long is failed (default {study.grace_period})")
    # `--no-refit --refit true` would otherwise be whichever came last. The default is None (read as
    # TuneOptions' default) because argparse counts an option as given only when it differs from its default.
    refit = tune.add_mutually_exclusive_group()
    refit.add_argument("--refit", nargs="?", const=True, default=None, type=_boolean, metavar="true|false",
                       help=f"retrain the best config on all non-test ratings and evaluate on test once (default {str(study.refit).lower()})")
    refit.add_argument("--no-refit", dest="refit", action="store_false", default=None, help="skip the refit")
    tune.add_argument("--json", action="store_true", help="print one JSON summary object last")
    tune.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal: a worker process, spec as JSON on stdin

    replay = commands.add_parser("replay-pruning", help="what median-pruning rules would have done to a finished study's complete trials, without training")
    replay.add_argument("--study-name", required=True, help="a study made by `deeprec tune`")
    replay.add_argument("--storage", default=None, metavar="URL", help="as for `deeprec tune` (default optuna.db beside an SQLite MLflow store, else ./optuna.db)")
    replay.add_argument("--warmup-steps", type=_whole_number, nargs="+", default=[5, 50, 100, 200],
                        help="per-epoch rules to replay, one per warm-up (default 5 50 100 200); a rule that checks after each fold only is always replayed")
    replay.add_argument("--startup-trials", type=_whole_number, default=5, help="complete trials before pruning starts (default 5)")
    replay.add_argument("--json", action="store_true", help="print one JSON object last")

    sweep = commands.add_parser("sweep", help="run every row x seed of an experiment file as MLflow runs under one parent")
    sweep.add_argument("experiment", help="an experiments/*.yaml file")
    sweep.add_argument("--seeds", type=_whole_number, default=1, help="seeds per row (default 1)")
    sweep.add_argument("--max-parallel", type=_whole_number, default=1, help="rows trained at once, in worker processes (default 1)")
    sweep.add_argument("--epochs", type=_whole_number, default=None, help="override every row's epochs: a smoke sweep, tagged as such")
    sweep.add_argument("--no-reuse", dest="reuse", action="store_false",
                       help="train every (row, seed) here, even one whose exact config another sweep already trained")
    sweep.add_argument("--json", action="store_true", help="print one JSON summary object last")

    report = commands.add_parser("report", help="the tracked runs of an experiment file beside the published numbers")
    report.add_argument("experiment", help="an experiments/*.yaml file")
    report.add_argument("--json", action="store_true", help='print {"rows": [...]} as one JSON object last')

    recommend = commands.add_parser("recommend", help="top-N unseen items for a user, from a trained run's recommender")
    recommend.add_argument("--run-id", required=True, help="the MLflow run of `deeprec train`")
    recommend.add_argument("--user", required=True, help="a raw user id from the training data")
    recommend.add_argument("-n", type=int, default=10, help="how many items (default 10)")
    recommend.add_argument("--json", action="store_true", help="print the recommendations as JSON records")
    return parser


def _progress_printer(name: str):
    """Download progress on stderr: a live line on a terminal, a log line every 10% otherwise."""
    last_decile = [-1]

    def show(done: int, total: int | None) -> None:
        if total:
            if sys.stderr.isatty():
                sys.stderr.write(f"\rdownloading {name}: {done / total:6.1%} of {total / 1e6:.1f} MB")
                if done >= total:
                    sys.stderr.write("\n")
            elif done * 10 // total > last_decile[0]:
                last_decile[0] = done * 10 // total
                log.info("downloading %s: %d%% of %.1f MB", name, last_decile[0] * 10, total / 1e6)
        elif sys.stderr.isatty():
            sys.stderr.write(f"\rdownloading {name}: {done / 1e6:.1f} MB")

    return show


def _spec(args: argparse.Namespace) -> datasets.DatasetSpec:
    return datasets.get_spec(args.dataset, sep=args.sep, header=_header(args.header), scale=args.scale, duplicates=args.duplicates)


def cmd_data_download(args: argparse.Namespace) -> int:
    spec = datasets.get_spec(args.dataset)
    if spec.local_path is not None:
        raise DeeprecError("csv:PATH datasets are local files; there is nothing to download")
    found = datasets.find_local(spec)
    if found is not None:
        print(f"{spec.name}: already present in {found}")
        return 0
    folder = datasets.download(spec, progress=_progress_printer(spec.archive_name or spec.name))
    print(f"{spec.name}: downloaded and verified into {folder}")
    return 0


def dataset_summary(dataset: datasets.Dataset) -> dict:
    ratings = dataset.ratings
    n_users, n_items = ratings.n_users, ratings.n_items
    return {
        "dataset": dataset.spec.name,
        "folder": str(dataset.folder),
        "ratings_md5": dataset.digest,
        "ratings": len(ratings),
        "users": n_users,
        "items": n_items,
        "density": len(ratings) / (n_users * n_items),
        "scale": list(ratings.scale),
        "rating_histogram": ratings.histogram(),
        "has_timestamps": ratings.has_timestamps,
    }


def cmd_data_info(args: argparse.Namespace) -> int:
    spec = _spec(args)
    if args.split is not None:
        check_split_for(args.split, spec.name)  # before any loading
    dataset = datasets.load(spec, progress=_progress_printer(spec.archive_name or spec.name))
    summary = dataset_summary(dataset)
    if args.split is not None:
        split = dataset.split(args.split, seed=args.seed)
        summary["split"] = describe_split(dataset.ratings.users, dataset.ratings.items, split)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{summary['dataset']}  ({summary['folder']})")
    print(f"  ratings {summary['ratings']:,}   users {summary['users']:,}   items {summary['items']:,}   density {summary['density']:.4%}")
    print(f"  scale {summary['scale'][0]:g}..{summary['scale'][1]:g}   timestamps {'yes' if summary['has_timestamps'] else 'absent or all equal'}")
    print("  histogram " + "  ".join(f"{k}: {v:,}" for k, v in summary["rating_histogram"].items()))
    if "split" in summary:
        s = summary["split"]
        print(f"  split {s['name']} (seed {s['seed']}): train {s['train']:,}   valid {s['valid']:,}   test {s['test']:,}")
        print(f"  held-out ratings with a user or item unseen in train: valid {s['valid_unseen_in_train']:,}   test {s['test_unseen_in_train']:,}")
        for note in s["notes"]:
            print(f"  note: {note}")
    return 0


def cmd_data_verify(args: argparse.Namespace) -> int:
    spec = _spec(args)
    folder = datasets.find_local(spec)
    if folder is None:
        raise DeeprecError(f"{spec.name} is not in {datasets.data_root()}; run: deeprec data download --dataset {spec.name}")
    ok = True
    archive = folder.parent / spec.archive_name if spec.archive_name else None
    if archive is not None and archive.is_file() and spec.md5 is not None:
        md5 = datasets.archive_md5(archive)
        ok = md5 == spec.md5
        print(f"{archive}: MD5 {md5} {'matches' if ok else 'DOES NOT MATCH'} the published {spec.md5}")
    else:
        print(f"{folder}: extracted files used as they are (no archive with a pinned checksum to re-check)")
    dataset = datasets.load(spec)
    print(f"{dataset.ratings.source}: {len(dataset.ratings):,} ratings valid (MD5 {dataset.digest})")
    if spec.side_info:
        users, items = dataset.user_features(), dataset.item_features()
        print(f"{folder / spec.users_file}: {len(users):,} users, {users.shape[1]} feature columns")
        print(f"{folder / spec.items_file}: {len(items):,} items, {items.shape[1]} feature columns")
    return 0 if ok else EXIT_FAILED


def _warn_unused_settings(cfg: TrainConfig) -> None:
    for note in cfg.unused_settings():
        log.warning("%s", note)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    _warn_unused_settings(cfg)
    tracking_store.check_store_usable()
    dataset = datasets.load(datasets.get_spec(cfg.dataset))  # a bad ratings file is one line, before TensorFlow's start-up lines
    prepared = preparation.prepare(cfg, dataset)  # so are a split it cannot fill, bad side information, too many groups
    from deeprec import tracking  # heavy (TensorFlow, MLflow): imported only once the config, store and data are good

    log.info("%s", tracking.tracking_summary())
    result = tracking.train_tracked(cfg, run_name=args.run_name, prepared=prepared)
    summary = {"run_id": result.run_id, **{k: v for k, v in result.metrics.items()}}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"run {result.run_id}")
        for key in ("test_rmse", "test_mae", "test_rmse_user_avg", "baseline_user_item_bias_rmse", "precision_at_10", "recall_at_10", "ndcg_at_10", "best_valid_rmse", "best_epoch", "seconds_per_epoch"):
            if key in result.metrics:
                print(f"  {key:<30} {result.metrics[key]:.4f}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    _warn_unused_settings(cfg)
    check_cv(cfg, args.folds)
    tracking_store.check_store_usable()
    dataset = datasets.load(datasets.get_spec(cfg.dataset))  # a bad ratings file is one line, before TensorFlow's start-up lines
    base, folds = preparation.check_data(cfg, dataset, args.folds)  # so are folds it cannot fill and bad side information
    from deeprec import tracking  # heavy: imported only once the config, store and data are good

    log.info("%s", tracking.tracking_summary())
    run_id, result, test = tracking.track_cv(
        cfg, args.folds, refit=args.refit, run_name=args.run_name, ensemble=args.ensemble, dataset=dataset, prepared_folds=(base, folds),
    )
    summary = {"run_id": run_id, **result.metrics(), "fold_valid_rmse": result.scores.tolist(), **test}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"run {run_id}")
    print(f"  validation RMSE over {args.folds} folds: {result.mean:.4f} ± {result.std:.4f}  (folds: {', '.join(f'{x:.4f}' for x in result.scores)})")
    print(f"  CV-chosen epochs: {result.chosen_epochs}")
    for key in ("test_rmse", "test_rmse_user_avg", "test_mae"):
        if key in test:
            print(f"  refit {key:<22} {test[key]:.4f}")
    for key in ("test_rmse", "test_rmse_user_avg", "test_mae"):
        if f"ensemble_{key}" in test:
            print(f"  {args.folds}-fold ensemble {key:<13} {test[f'ensemble_{key}']:.4f}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from deeprec import sweep

    sweep.load_experiment(args.experiment)  # every row validated before anything runs
    tracking_store.check_store_usable()
    summary = sweep.run_sweep(args.experiment, seeds=args.seeds, max_parallel=args.max_parallel, epochs=args.epochs, reuse=args.reuse)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"sweep {summary['sweep']}: {summary['ran']} run(s) done, {summary['reused']} copied from other sweeps, "
              f"{summary['skipped']} already finished, "
              f"{summary['failed']} failed (parent run {summary['parent_run_id']})")
    return EXIT_FAILED if summary["failed"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    from deeprec import report, sweep

    experiment = sweep.load_experiment(args.experiment, check_data=False)  # the runs are read, never the data
    tracking_store.require_existing_store()  # a query would create an empty store in the wrong folder
    tracking_store.check_store_usable()  # the table is logged to the sweep's parent run
    rows, table = report.report(experiment)
    if not any(row.runs for row in rows):  # most likely the wrong folder or tracking store
        import mlflow

        raise DeeprecError(
            f"no finished runs of experiment {experiment.name!r} in the tracking store {tracking_store.shown_uri(mlflow.get_tracking_uri())}; "
            f"run `deeprec sweep {args.experiment}` first, from the same folder or with the same MLFLOW_TRACKING_URI "
            "(runs of an earlier version of a row, or on other data, do not count)"
        )
    print(table)
    if args.json:
        print(json.dumps(report.as_json(rows)))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    if args.worker:
        from deeprec import tune

        for handler in logging.getLogger().handlers:  # several workers share the terminal
            handler.setFormatter(logging.Formatter("[worker %(process)d] %(message)s"))
        tune.run_worker(tune.WorkerSpec.from_json(sys.stdin.read()))
        return 0
    cfg = config_from_args(args)
    check_cv(cfg, args.folds)
    options = TuneOptions(
        folds=args.folds, n_trials=args.n_trials, n_workers=args.n_workers, study_name=args.study_name or None, storage=args.storage or None,
        pruner=PrunerSettings(args.pruner, args.pruner_startup_trials, args.pruner_warmup_steps, args.prune_every), refit=TuneOptions.refit if args.refit is None else args.refit,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
    ).validate()
    from deeprec.search_space import load_space

    space = load_space(args.space or None)  # every key and range checked before anything heavy
    base = space.base_config(cfg, log_overrides=False)  # run_study logs them
    space.check(base)  # a searched value no trial could use
    check_cv(base, args.folds)
    tracking_store.check_store_usable()
    dataset = datasets.load(datasets.get_spec(base.dataset))  # a bad ratings file is one line, before TensorFlow's start-up lines
    from deeprec import study_storage

    # An unusable --storage (unknown scheme, missing driver, unwritable journal) is one line too.
    storage_url = options.storage or study_storage.default_storage()
    storage = study_storage.open_storage(storage_url, heartbeat_interval=None, grace_period=None)
    study_name = options.study_name or study_storage.default_study_name(base, space)
    if options.n_trials == 0:
        study_storage.require_existing_study(storage, study_name, study_storage.display_storage(storage_url))
    # A study resumed with other options than it was created with (say --epochs) is refused here too.
    study_storage.check_existing_setup(storage, study_name, study_storage.study_setup(base, args.folds, space))
    preparation.check_data(base, dataset, args.folds)  # folds the ratings cannot fill, bad side information: one line too
    from deeprec import tune  # heavy: imported only once the config, options, space, store, data and storage are good

    result = tune.run_study(cfg, space, options, dataset=dataset)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print("\n".join(tune.summary_lines(result)))
    return EXIT_FAILED if any(result.worker_exit_codes) else 0


def cmd_replay_pruning(args: argparse.Namespace) -> int:
    if any(w < 0 for w in args.warmup_steps) or args.startup_trials < 0:
        raise DeeprecError("--warmup-steps and --startup-trials must be >= 0")
    import optuna  # only for this command (no TensorFlow: a replay trains nothing)

    from deeprec import pruning_replay, study_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "new study" line per replayed trial otherwise
    study = study_storage.load_finished_study(args.study_name, args.storage or study_storage.default_storage())
    rules = [PrunerSettings("median", args.startup_trials, w) for w in args.warmup_steps]
    rules.append(PrunerSettings("median", args.startup_trials, 0, every="fold"))
    results = pruning_replay.replay(study, rules)
    best = results[0].verdicts[0].trial_number
    print(f"study {args.study_name}: {len(results[0].verdicts)} complete trials, leave-one-out, best first")
    for result in results:
        print(f"\n{result.label}: would train {result.epochs_share():.0%} of the recorded epochs")
        for v in result.verdicts:
            print(f"  trial {v.trial_number:>3}  CV RMSE {v.value:.4f}  {'kept' if v.pruned_at is None else 'pruned ' + v.pruned_at}")
    kept_best = [r.label for r in results if best in r.kept()]
    print(f"summary: the best trial ({best}) survives {len(kept_best)} of {len(results)} rules"
          + (f": {'; '.join(kept_best)}" if kept_best else ""))
    if args.json:
        print(json.dumps({"study": args.study_name, "rules": [
            {"rule": r.label, "epochs_share": round(r.epochs_share(), 4), "kept": r.kept(),
             "verdicts": [{"trial": v.trial_number, "value": v.value, "pruned_at": v.pruned_at, "epochs_trained": v.epochs_trained} for v in r.verdicts]}
            for r in results]}))
    return 0


def _require_known_user(model_uri: str, user: str, folder: Path) -> None:
    """An unknown `--user` refused from the model's user ids alone, before TensorFlow loads with
    the model. Where they cannot be read, the model itself reports it once loaded."""
    import numpy as np
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    try:
        users = np.load(download_artifacts(artifact_uri=f"{model_uri}/artifacts/users.npy", dst_path=str(folder)), allow_pickle=False)
    except (MlflowException, OSError, ValueError) as exc:
        log.debug("could not read the model's user ids before loading it: %s", exc)
        return
    if stored_id(user, integer_ids=users.dtype.kind == "i") not in set(users.tolist()):
        raise DeeprecError(f"unknown user id {user!r}: the model knows the {len(users):,} users of its training data")


def cmd_recommend(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise DeeprecError(f"-n must be at least 1, got {args.n}")
    tracking_store.require_existing_store()  # a query would create an empty store in the wrong folder
    tracking_store.check_store_usable(writes=False)  # a server that is down: one line, not minutes of retries
    model_uri = tracking_store.recommender_uri(args.run_id)  # a run without one is named before TensorFlow loads
    import tempfile

    import mlflow  # heavy: only for this command
    import pandas as pd
    from mlflow.exceptions import MlflowException

    # The model's files go to a folder removed afterwards; MLflow's own default is a new temporary
    # folder per call that nobody removes.
    with tempfile.TemporaryDirectory(prefix="deeprec-recommend-") as folder:
        _require_known_user(model_uri, args.user, Path(folder) / "ids")
        try:
            recommender = mlflow.pyfunc.load_model(model_uri, dst_path=str(Path(folder) / "model"))
            top = recommender.predict(pd.DataFrame({"user": [args.user], "n": [args.n]}))
        except MlflowException as exc:
            raise DeeprecError(tracking_store.hide_password(str(exc.message).splitlines()[0], mlflow.get_tracking_uri())) from None
    if args.json:
        print(top.to_json(orient="records"))
        return 0
    for row in top.itertuples(index=False):
        print(f"{row.rank:>3}. {row.predicted_rating:4.2f}  {row.title or row.item}")
    return 0


COMMANDS = {
    ("data", "download"): cmd_data_download,
    ("data", "info"): cmd_data_info,
    ("data", "verify"): cmd_data_verify,
    ("train", None): cmd_train,
    ("cv", None): cmd_cv,
    ("sweep", None): cmd_sweep,
    ("report", None): cmd_report,
    ("tune", None): cmd_tune,
    ("replay-pruning", None): cmd_replay_pruning,
    ("recommend", None): cmd_recommend,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # MLflow draws a progress bar each time it copies artifacts out of the tracking store: seven
    # while a trained model is logged (checking its input example) and one of 40-odd files per
    # `recommend`. For these local copies they are only noise on stderr; the environment still wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    command = COMMANDS[(args.command, getattr(args, f"{args.command}_command", None))]
    try:
        with interrupts.installed():  # SIGTERM ends a run KILLED, as Ctrl-C does
            return command(args)
    except DeeprecError as exc:
        print(f"deeprec: error: {exc}", file=sys.stderr)
        tracking_store.tag_project_run_failure(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("deeprec: interrupted (the MLflow run, if any, is marked KILLED)", file=sys.stderr)
        return EXIT_INTERRUPTED

