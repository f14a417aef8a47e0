"""deeprec: an MLflow-tracked experiment suite for autoencoder collaborative filtering."""

import os
from importlib.metadata import PackageNotFoundError, version

# TensorFlow's BFC allocator for CPU tensors, which keeps freed buffers for reuse. The default one
# gives large buffers back to the system (glibc maps every block over 32 MB afresh), so each step
# of the sparse path page-faulted its kernel-sized gradients and temporaries in again: one
# `bench/scale.py` run took 135 million page faults and 245 s of system time, against 5 million and
# 40 s with this, and its epochs 23-38% longer (bench/README.md, "The CPU memory allocator").
# TensorFlow reads the variable once, at its first CPU allocation, so it is set here, before any
# deeprec module imports TensorFlow; a value already in the environment (false restores
# TensorFlow's default) is kept.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

try:
    __version__ = version("deeprec")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
