"""Shared pytest set-up: quiet TensorFlow logs, CPU only, the package's CPU settings first."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# Before any test module imports TensorFlow: the package sets this CPU's oneDNN default
# (needles_tf/runtime.py), which TensorFlow reads once, when it starts.
import needles_tf  # noqa: E402, F401
