"""Helpers for evaluation / serving tests: tiny run directories and the binaries as processes."""

import os
import pathlib
import signal
import subprocess
import sys

import keras
import numpy as np

from needles_tf import run_dir
from needles_tf.generation import nmnist
from needles_tf.models import build_classifier

WORKTREE = str(pathlib.Path(__file__).resolve().parents[1])


def make_run_dir(path: pathlib.Path, channels: int = 1,
                 calibration_images: np.ndarray | None = None) -> tuple[keras.Model, str]:
    """A tiny RF-9 classifier saved as <path>/best.keras.

    Its logits are scaled down so that probabilities stay away from 0 and 1; with
    `calibration_images`, the bias is set so that half of them are predicted positive.
    """
    keras.utils.set_random_seed(0)
    model = build_classifier(channels, receptive_field=9, width_scale=1 / 16, blocks=(1, 1, 1, 1))
    dense = model.get_layer("logits")
    dense.kernel.assign(dense.kernel * 0.05)
    if calibration_images is not None:
        logits = np.asarray(model(calibration_images, training=False))
        margin = np.median(logits[:, 1] - logits[:, 0])
        dense.bias.assign(np.array([0.0, -margin], np.float32))
    path.mkdir(parents=True, exist_ok=True)
    model.save(os.path.join(path, run_dir.BEST_MODEL))
    return model, str(path)


def tiny_nmnist(out: str, num_clutter: int, duplicates: dict[str, int]) -> str:
    """A one-shard nMNIST dataset on 32 x 32 canvases in `out` (no progress bar)."""
    nmnist.generate_nmnist(out, canvas_size=32, num_clutter=num_clutter, num_shards=1,
                           progress=False, duplicates=duplicates)
    return out


class Interrupt(keras.callbacks.Callback):
    """Stands in for Ctrl-C at the start of an epoch."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def keras_probabilities(model: keras.Model, images: np.ndarray) -> np.ndarray:
    logits = np.asarray(model(images, training=False), np.float64)
    return np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)


def start(args: list[str], env_pythonpath: bool = True,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    """Starts a process (several may run at once on the 2 cores); finish it with `finish`.
    `env`: variables to set besides this process's own."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    if env_pythonpath:
        env["PYTHONPATH"] = WORKTREE
    # A suite started in the background of a script inherits SIGINT ignored, and Python keeps
    # it ignored: give the child the default, so Ctrl-C (the CLI test) reaches it.
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_binary(name: str, *flags: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m needles_tf.bin.<name> FLAGS...` with this worktree first on the path."""
    return start([sys.executable, "-m", f"needles_tf.bin.{name}", *flags], env=env)


def finish(process: subprocess.Popen, timeout: float = 180) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
