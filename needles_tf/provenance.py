"""What produced a result: code version, library versions, devices and CPU-library settings.

Recorded in every run's summary.json so that a number in a results table can be traced to the
code and the machine that made it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Any

import needles_tf


def git_commit(directory: str | None = None) -> str | None:
    """The git commit of the source tree holding `directory` (this package by default), with
    "+dirty" when it has uncommitted changes; None outside a git checkout or without git."""
    directory = directory or os.path.dirname(os.path.abspath(needles_tf.__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=directory, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def describe(strategy: Any = None) -> dict[str, Any]:
    """Versions, devices and settings in force in this process (TensorFlow must be importable).

    Args:
      strategy: the tf.distribute strategy of the run, for its replica count and devices.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    devices = [d.device_type for d in tf.config.list_logical_devices()]
    info = {
        "needles_tf": needles_tf.__version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "devices": {kind: devices.count(kind) for kind in sorted(set(devices))},
        "onednn": needles_tf.ONEDNN_SETTING,
    }
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        info["gpu_names"] = [tf.config.experimental.get_device_details(g).get("device_name")
                             for g in gpus]
    if strategy is not None:
        info["strategy"] = type(strategy).__name__
        info["replicas"] = strategy.num_replicas_in_sync
    return info
