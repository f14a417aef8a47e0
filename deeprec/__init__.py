"""deeprec: an MLflow-tracked experiment suite for autoencoder collaborative filtering."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deeprec")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
