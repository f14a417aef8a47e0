"""The code MLflow logs with every recommender ("models from code"): loading a recommender runs
this file, which builds the model from its class (`deeprec.serve.Recommender`, shipped beside it
in the model's code folder) instead of unpickling an instance. MLflow warns about pickled Python
models on every log, and its MLFLOW_ALLOW_PICKLE_DESERIALIZATION switch can refuse to load them.
"""

import mlflow

from deeprec.serve import Recommender

mlflow.models.set_model(Recommender())
