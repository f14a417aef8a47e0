"""The pyfunc recommender: trained on a tiny generated ML-1M, logged to a local MLflow, reloaded.

Each orientation is trained and logged once per module; the tests compare what the reloaded
pyfunc answers with the Keras model run directly on the training matrix.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from conftest import synthetic_ratings, write_ml1m
from deeprec import datasets, features, preparation, serve, train
from deeprec.config import TrainConfig

# The three logged models cover the per-row, per-column and constant fills and side features in
# both orientations. Five epochs at lr 0.05 put every prediction inside the 1..5 scale, so the
# comparisons below are not between clipped constants; "user-side" stays at one epoch, where
# every output is below 1, to check the clipping.
SETUPS = {
    "user": {"orientation": "user", "fill": "row-mean", "epochs": 5, "lr": 0.05},
    "item": {"orientation": "item", "fill": "col-mean", "side_info": "item", "epochs": 5, "lr": 0.05},
    "user-side": {"orientation": "user", "fill": "3", "side_info": "user", "epochs": 1},
}
SERVER_START_S = 90


@dataclass(frozen=True)
class Logged:
    cfg: TrainConfig
    prepared: preparation.Prepared
    keras_model: keras.Model
    pyfunc: mlflow.pyfunc.PyFuncModel
    uri: str
    run_uri: str
    tracking_uri: str


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """A tiny ML-1M in DEEPREC_DATA_DIR and a sqlite MLflow store, both under one tmp folder."""
    root = tmp_path_factory.mktemp("serve")
    write_ml1m(root / "data" / "ml-1m", synthetic_ratings(n_users=40, n_items=30, seed=3))
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPREC_DATA_DIR", str(root / "data"))
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment exports it; undone on exit
        experiment_id = mlflow.create_experiment("serve-tests", artifact_location=(root / "artifacts").as_uri())
        mlflow.set_experiment(experiment_id=experiment_id)
        try:
            yield root, tracking_uri
        finally:
            mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def logged_models(tracking) -> dict[str, Logged]:
    _, tracking_uri = tracking
    out = {}
    for key, overrides in SETUPS.items():
        cfg = TrainConfig(dataset="ml-1m", arch="8", batch_size=16, patience=0, **overrides).validate()
        prepared = preparation.prepare(cfg)
        model, _ = train.fit(cfg, prepared.data)
        with mlflow.start_run(run_name=key) as run:
            serve.log_recommender(model, prepared, cfg, name="recommender")
        uri = f"models:/{mlflow.last_logged_model().model_id}"
        out[key] = Logged(cfg, prepared, model, mlflow.pyfunc.load_model(uri), uri, f"runs:/{run.info.run_id}/recommender", tracking_uri)
    return out


@pytest.fixture(params=list(SETUPS))
def logged(request, logged_models) -> Logged:
    return logged_models[request.param]


# -- what the answers should be, computed from the training data and the Keras model directly ---


def direct_scores(logged: Logged, clip: bool = True) -> np.ndarray:
    """(n_users, n_items) predictions (clipped unless asked not to), from the training matrix rows."""
    data = logged.prepared.data
    rows = np.arange(data.train.shape[0])
    out = np.asarray(logged.keras_model(train.model_inputs(data, rows), training=False), dtype=np.float32)
    out = out if data.matrices.orientation == "user" else out.T
    return np.clip(out, *data.scale) if clip else out


def rated_in_training(logged: Logged, user: int) -> set[int]:
    ratings, split = logged.prepared.dataset.ratings, logged.prepared.split
    return set(ratings.items[split.train][ratings.users[split.train] == user].tolist())


def expected_title(item: int) -> str:
    return f"Movie {item}: The Sequel (19{50 + item % 50})"  # as conftest.write_ml1m writes it


def user_index(logged: Logged, user) -> int:
    return int(logged.prepared.data.matrices.users.transform([user])[0])


def item_index(logged: Logged, item) -> int:
    return int(logged.prepared.data.matrices.items.transform([item])[0])


# -- the three request forms --------------------------------------------------------------------


def test_top_n_for_a_known_user(logged: Logged) -> None:
    scores = direct_scores(logged)
    for user in (1, 17, 40):
        answer = logged.pyfunc.predict(pd.DataFrame({"user": [user], "n": [3]}))
        assert list(answer.columns) == ["user", "rank", "item", "title", "predicted_rating"]
        assert len(answer) == 3
        assert answer["user"].tolist() == [user] * 3
        assert answer["rank"].tolist() == [1, 2, 3]
        items = answer["item"].tolist()
        assert not set(items) & rated_in_training(logged, user)
        assert answer["predicted_rating"].is_monotonic_decreasing
        assert answer["title"].tolist() == [expected_title(i) for i in items]
        row = scores[user_index(logged, user)]
        np.testing.assert_allclose(answer["predicted_rating"], [row[item_index(logged, i)] for i in items], rtol=1e-5, atol=1e-5)
        # The ranking is by the unclipped scores: the three best unseen items, best first.
        raw = direct_scores(logged, clip=False)[user_index(logged, user)]
        unseen = sorted(set(logged.prepared.data.matrices.items.ids.tolist()) - rated_in_training(logged, user))
        assert items == sorted(unseen, key=lambda i: -raw[item_index(logged, i)])[:3]


def test_top_n_defaults_to_ten_and_stops_at_the_unseen_items(logged: Logged) -> None:
    answer = logged.pyfunc.predict(pd.DataFrame({"user": [5, 6], "n": [None, 1000]}))
    n_items = len(logged.prepared.data.matrices.items)
    assert (answer["user"] == 5).sum() == min(10, n_items - len(rated_in_training(logged, 5)))
    assert (answer["user"] == 6).sum() == n_items - len(rated_in_training(logged, 6))
    assert answer["predicted_rating"].between(1, 5).all()


def test_pair_predictions_equal_the_clipped_keras_output(logged: Logged) -> None:
    rng = np.random.default_rng(0)
    users = rng.choice(logged.prepared.data.matrices.users.ids, size=25)
    items = rng.choice(logged.prepared.data.matrices.items.ids, size=25)
    answer = logged.pyfunc.predict(pd.DataFrame({"user": users, "item": items}))
    assert list(answer.columns) == ["user", "item", "title", "predicted_rating"]
    assert answer["user"].tolist() == users.tolist() and answer["item"].tolist() == items.tolist()
    assert answer["title"].tolist() == [expected_title(int(i)) for i in items]
    scores = direct_scores(logged)
    expected = [scores[user_index(logged, u), item_index(logged, i)] for u, i in zip(users, items)]
    np.testing.assert_allclose(answer["predicted_rating"], expected, rtol=1e-5, atol=1e-5)


def test_predictions_are_clipped_to_the_scale(logged_models: dict[str, Logged]) -> None:
    logged = logged_models["user-side"]  # one epoch: most raw outputs are still below 1
    raw = direct_scores(logged, clip=False)
    users, items = np.nonzero(raw < 1)
    assert len(users) > 0, "the one-epoch model should predict some ratings below the scale"
    matrices = logged.prepared.data.matrices
    request = pd.DataFrame({"user": matrices.users.ids[users[:5]], "item": matrices.items.ids[items[:5]]})
    assert logged.pyfunc.predict(request)["predicted_rating"].tolist() == [1.0] * len(request)


def test_ids_sent_as_digit_strings_match_integer_ids(logged: Logged) -> None:
    as_int = logged.pyfunc.predict(pd.DataFrame({"user": [3, 4], "item": [7, 8]}))
    as_text = logged.pyfunc.predict(pd.DataFrame({"user": ["3", "4"], "item": ["7", "8"]}))
    pd.testing.assert_frame_equal(as_int, as_text)


def test_the_runs_uri_loads_the_same_model(logged_models: dict[str, Logged]) -> None:
    logged = logged_models["user"]
    request = pd.DataFrame({"user": [2], "n": [4]})
    pd.testing.assert_frame_equal(mlflow.pyfunc.load_model(logged.run_uri).predict(request), logged.pyfunc.predict(request))


def test_the_recommender_is_logged_as_code_and_loads_without_pickle(logged_models: dict[str, Logged], monkeypatch) -> None:
    """Models from code: MLflow records the model's code file, not a pickled instance, so the
    recommender loads where unpickling is refused."""
    logged = logged_models["user"]
    flavor = mlflow.models.Model.load(logged.uri).flavors["python_function"]
    assert flavor.get("model_code_path", "").endswith("recommender_model.py") and "python_model" not in flavor
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    again = mlflow.pyfunc.load_model(logged.uri)
    request = pd.DataFrame({"user": [2], "n": [4]})
    pd.testing.assert_frame_equal(again.predict(request), logged.pyfunc.predict(request))


def test_a_new_user_with_a_known_users_ratings_gets_that_users_recommendations(logged_models: dict[str, Logged]) -> None:
    logged = logged_models["user"]  # row-mean fill: a new user's fill is the mean of their ratings
    ratings, split = logged.prepared.dataset.ratings, logged.prepared.split
    user = 9
    mine = ratings.users[split.train] == user
    vector = {str(i): float(r) for i, r in zip(ratings.items[split.train][mine], ratings.values[split.train][mine])}
    new = logged.pyfunc.predict(pd.DataFrame({"ratings": [json.dumps(vector)], "n": [5]}))
    known = logged.pyfunc.predict(pd.DataFrame({"user": [user], "n": [5]}))
    assert list(new.columns) == ["request", "rank", "item", "title", "predicted_rating"]
    assert new["request"].tolist() == [0] * 5
    assert new["item"].tolist() == known["item"].tolist()
    np.testing.assert_allclose(new["predicted_rating"], known["predicted_rating"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", ["user", "user-side"])
def test_new_users_are_ranked_without_their_rated_items(logged_models: dict[str, Logged], key: str) -> None:
    logged = logged_models[key]
    requests = pd.DataFrame({"ratings": ['{"1": 5, "2": 3}', {"4": 1}], "n": [4, 2]})
    answer = logged.pyfunc.predict(requests)
    assert answer["request"].tolist() == [0] * 4 + [1] * 2
    assert not {1, 2} & set(answer.loc[answer["request"] == 0, "item"])
    assert 4 not in set(answer.loc[answer["request"] == 1, "item"])
    for _, part in answer.groupby("request"):
        assert part["predicted_rating"].is_monotonic_decreasing
        assert part["rank"].tolist() == list(range(1, len(part) + 1))


def test_an_item_oriented_model_refuses_new_users(logged_models: dict[str, Logged]) -> None:
    with pytest.raises(MlflowException, match="orientation=user") as caught:
        logged_models["item"].pyfunc.predict(pd.DataFrame({"ratings": ['{"1": 5}']}))
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"


def test_small_batches_and_the_uncached_item_path_give_the_same_answers(logged: Logged, monkeypatch) -> None:
    # Force what large data would do: no cached item-major matrix, tiny forward and user batches.
    monkeypatch.setattr(serve, "CACHE_BYTES", 0)
    monkeypatch.setattr(serve, "BATCH_BYTES", 4 * 4 * logged.prepared.data.n_inputs)
    monkeypatch.setattr(serve, "USER_BATCH", 2)
    batched = mlflow.pyfunc.load_model(logged.uri)
    assert batched.unwrap_python_model().item_major_ is None
    for request in (pd.DataFrame({"user": [1, 2, 3, 2, 40], "n": [3, 3, 3, 5, 2]}), pd.DataFrame({"user": [1, 2, 3, 2, 40, 1], "item": [5, 6, 7, 8, 9, 10]})):
        pd.testing.assert_frame_equal(batched.predict(request), logged.pyfunc.predict(request), rtol=1e-5, atol=1e-5)


def test_string_ids_without_titles(tracking) -> None:
    root, _ = tracking
    rows = synthetic_ratings(n_users=20, n_items=15, per_user=(6, 12), seed=5)
    path = root / "strings.csv"
    path.write_text("user,item,rating\n" + "".join(f"u{u},m{i},{r}\n" for u, i, r, _ in rows), encoding="utf-8")
    cfg = TrainConfig(dataset=f"csv:{path}", epochs=1, arch="4", orientation="user", batch_size=16, patience=0).validate()
    prepared = preparation.prepare(cfg)
    model, _ = train.fit(cfg, prepared.data)
    with mlflow.start_run(run_name="strings"):
        serve.log_recommender(model, prepared, cfg)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{mlflow.last_logged_model().model_id}")
    top = pyfunc.predict(pd.DataFrame({"user": ["u3"], "n": [2]}))
    assert top["user"].tolist() == ["u3", "u3"] and all(str(i).startswith("m") for i in top["item"])
    assert top["title"].tolist() == ["", ""]
    new = pyfunc.predict(pd.DataFrame({"ratings": ['{"m1": 4, "m2": 2}'], "n": [3]}))
    assert len(new) == 3 and not {"m1", "m2"} & set(new["item"])
    with pytest.raises(MlflowException, match="unknown user id"):
        pyfunc.predict(pd.DataFrame({"user": [3]}))  # 3 is not "u3"


# -- bad input: one-line MlflowException(INVALID_PARAMETER_VALUE), i.e. HTTP 400 when served -----

BAD_REQUESTS = {
    "unknown user": ({"user": [99999]}, "unknown user id"),
    "unknown text user": ({"user": ["abc"]}, "unknown user id"),
    "missing user": ({"user": [1, None], "item": [1, 2]}, "row 1: `user` is missing"),
    "unknown item": ({"user": [1], "item": [4242]}, "unknown item id"),
    "no known column": ({"bogus": [1]}, "missing column"),
    "item alone": ({"item": [1]}, "missing column"),
    "n with pairs": ({"user": [1], "item": [1], "n": [3]}, "`n` applies to top-N"),
    "n zero": ({"user": [1], "n": [0]}, "`n` must be a positive integer"),
    "n negative": ({"user": [1], "n": [-2]}, "`n` must be a positive integer"),
    "n fraction": ({"user": [1], "n": [2.5]}, "`n` must be a positive integer"),
    "n text": ({"user": [1], "n": ["three"]}, "`n` must be a positive integer"),
    "ratings not json": ({"ratings": ["{1: 5"]}, "not valid JSON"),
    "ratings not an object": ({"ratings": ["[5, 3]"]}, "non-empty JSON object"),
    "ratings empty": ({"ratings": ["{}"]}, "non-empty JSON object"),
    "rating above scale": ({"ratings": ['{"1": 7}']}, "rating scale 1..5"),
    "rating not a number": ({"ratings": ['{"1": "five"}']}, "rating scale 1..5"),
    "ratings unknown item": ({"ratings": ['{"1": 4, "4242": 3}']}, "unknown item id"),
    "ratings with user": ({"user": [1], "ratings": ['{"1": 4}']}, "cannot be combined"),
    "empty frame": ({"user": []}, "no rows"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_an_invalid_parameter_error(logged_models: dict[str, Logged], case: str) -> None:
    columns, message = BAD_REQUESTS[case]
    with pytest.raises(MlflowException, match=message) as caught:
        logged_models["user"].pyfunc.predict(pd.DataFrame(columns))
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "\n" not in caught.value.message


def test_unknown_columns_are_rejected_when_called_directly(logged_models: dict[str, Logged]) -> None:
    # Through the pyfunc wrapper MLflow drops columns outside the signature before predict runs.
    model = logged_models["user"].pyfunc.unwrap_python_model()
    with pytest.raises(MlflowException, match="unknown column") as caught:
        model.predict(None, pd.DataFrame({"user": [1], "users": [2]}))
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"


def test_titles_of_ml100k_and_of_datasets_without_titles(tmp_path: Path) -> None:
    (tmp_path / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||http://x|0\n2|Caf\xe9 (1990)|||x|1\n", encoding="latin-1")
    assert features.item_titles(tmp_path / "u.item", "|") == {"1": "Toy Story (1995)", "2": "Caf\xe9 (1990)"}
    assert features.item_titles(tmp_path / "movies.dat", "::") == {}  # no file: no titles, no error
    no_titles = datasets.Dataset(datasets.DATASETS["ml-20m"], tmp_path, ratings=None)  # type: ignore[arg-type]
    assert no_titles.item_titles() == {}


# -- the real server ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, payload: dict) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.slow
def test_mlflow_models_serve_answers_requests_and_rejects_bad_ones(logged_models: dict[str, Logged], tmp_path: Path) -> None:
    logged = logged_models["user"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged.tracking_uri}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", logged.uri, "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"]
    with log_path.open("w") as server_log:
        # Own session, so the server and its workers are stopped together by the group id.
        server = subprocess.Popen(command, env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert server.poll() is None, f"the server exited early:\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"no /ping answer within {SERVER_START_S}s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)

        status, body = post(f"{base}/invocations", {"dataframe_records": [{"user": 1, "n": 3}]})
        assert status == 200, body
        rows = json.loads(body)["predictions"]
        assert [r["rank"] for r in rows] == [1, 2, 3]
        assert all(r["user"] == 1 and r["title"] == expected_title(r["item"]) for r in rows)

        status, body = post(f"{base}/invocations", {"dataframe_records": [{"user": 99999}]})
        assert 400 <= status < 500, body
        assert "unknown user id" in body and "99999" in body
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)  # SIGTERM to the group this test started
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
                server.wait(timeout=10)
